//! The one ELF parser of the workspace: reading and checking the x86-64
//! ELF64 file header and program-header table of a program image.
//!
//! It owns the header layout ([`EHDR_LEN`], [`PHDR_LEN`], [`MAX_PHNUM`]),
//! the `ET_*`, `PT_*` and `PF_*` constants its users need, [`parse`] (the
//! checks every loadable image must pass before its segments are looked at)
//! and [`interpreter`] (the `PT_INTERP` path of a dynamically linked
//! program). The memory manager's loader builds address spaces from
//! [`parse`]'s result; the runtime asks [`interpreter`] which dynamic linker
//! to start. Nothing else in the workspace should read ELF headers itself.
//!
//! Images are untrusted: every offset taken from the file is bounds-checked
//! with checked arithmetic, so no input can make this module panic; each
//! [`ElfError`] names the offending field and the numbers from the file.

use thiserror::Error;

/// Length of the ELF64 file header.
pub const EHDR_LEN: usize = 64;
/// Length of one ELF64 program header (the only `e_phentsize` accepted).
pub const PHDR_LEN: usize = 56;
/// Most program headers accepted: Linux refuses tables over 64 KiB.
pub const MAX_PHNUM: usize = 65536 / PHDR_LEN;

/// `e_type` of a position-dependent executable.
pub const ET_EXEC: u16 = 2;
/// `e_type` of a position-independent executable or shared object.
pub const ET_DYN: u16 = 3;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;

/// A loadable segment.
pub const PT_LOAD: u32 = 1;
/// The path of the program's interpreter (dynamic linker).
pub const PT_INTERP: u32 = 3;
/// The program header table itself.
pub const PT_PHDR: u32 = 6;
/// The stack's permissions (`PF_X` asks for an executable stack).
pub const PT_GNU_STACK: u32 = 0x6474_e551;

/// Segment flag: executable.
pub const PF_X: u32 = 1;
/// Segment flag: writable.
pub const PF_W: u32 = 2;
/// Segment flag: readable.
pub const PF_R: u32 = 4;

/// Why an image is not an ELF file this parser accepts. Messages name what
/// is wrong with numbers from the file.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file: the image is {len} bytes, shorter than the 64-byte ELF header")]
    TooShort { len: usize },
    #[error("not an ELF file: it starts with {magic:02x?}, expected 7f 45 4c 46 (\"\\x7fELF\")")]
    BadMagic { magic: [u8; 4] },
    #[error("unsupported ELF file: {field} is {value}, expected {expected}")]
    Unsupported {
        field: &'static str,
        value: u64,
        expected: &'static str,
    },
    #[error(
        "program header table at {offset:#x} ({count} entries of {PHDR_LEN} bytes) extends past \
         the end of the {file_len:#x}-byte file"
    )]
    HeadersPastEnd {
        offset: u64,
        count: usize,
        file_len: usize,
    },
}

/// The raw fields of one program header, as they are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`: `PT_LOAD`, `PT_INTERP`, ...
    pub kind: u32,
    /// `p_flags`: `PF_R`, `PF_W`, `PF_X`.
    pub flags: u32,
    /// `p_offset`: where the segment's bytes start in the file.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// `p_align`.
    pub align: u64,
}

/// A checked ELF header and its program headers. Nothing about the
/// segments themselves has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    /// `e_type`: [`ET_EXEC`] or [`ET_DYN`].
    pub kind: u16,
    /// `e_entry`, without any load bias.
    pub entry: u64,
    /// `e_phoff`: where the program header table starts in the file.
    pub phoff: u64,
    /// The program header table, in file order: 1 to [`MAX_PHNUM`] entries.
    pub headers: Vec<ProgramHeader>,
}

impl Elf {
    /// `e_phnum`: how many program headers there are.
    pub fn phnum(&self) -> u16 {
        // `parse` accepts at most MAX_PHNUM (1170) headers, read from a
        // 16-bit field: the count always fits.
        u16::try_from(self.headers.len()).unwrap_or(u16::MAX)
    }
}

/// `N` bytes at `offset`, if they are all inside `bytes`.
fn read<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    read(bytes, offset).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    read(bytes, offset).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    read(bytes, offset).map(u64::from_le_bytes)
}

fn unsupported(field: &'static str, value: impl Into<u64>, expected: &'static str) -> ElfError {
    ElfError::Unsupported {
        field,
        value: value.into(),
        expected,
    }
}

/// One program header from its `PHDR_LEN` bytes.
fn program_header(entry: &[u8]) -> Option<ProgramHeader> {
    Some(ProgramHeader {
        kind: u32_at(entry, 0)?,
        flags: u32_at(entry, 4)?,
        offset: u64_at(entry, 8)?,
        vaddr: u64_at(entry, 16)?,
        filesz: u64_at(entry, 32)?,
        memsz: u64_at(entry, 40)?,
        align: u64_at(entry, 48)?,
    })
}

/// Checks an image's ELF header and reads its program header table: a
/// 64-bit little-endian version-1 x86-64 `ET_EXEC` or `ET_DYN` file whose
/// table of 1 to [`MAX_PHNUM`] 56-byte entries lies inside the image.
pub fn parse(image: &[u8]) -> Result<Elf, ElfError> {
    let len = image.len();
    let too_short = ElfError::TooShort { len };
    let Some(header) = image.get(..EHDR_LEN) else {
        return Err(too_short);
    };
    // The header is EHDR_LEN bytes: every field below is inside it, so the
    // `ok_or` fallbacks cannot happen.
    let byte = |at: usize| header.get(at).copied().ok_or(too_short.clone());
    let half = |at: usize| u16_at(header, at).ok_or(too_short.clone());
    let magic = read::<4>(header, 0).ok_or(too_short.clone())?;
    if magic != *b"\x7fELF" {
        return Err(ElfError::BadMagic { magic });
    }
    let class = byte(4)?;
    if class != 2 {
        return Err(unsupported("ELF class", class, "2 (64-bit)"));
    }
    let data = byte(5)?;
    if data != 1 {
        return Err(unsupported("data encoding", data, "1 (little-endian)"));
    }
    let version = byte(6)?;
    if version != 1 {
        return Err(unsupported("ELF version", version, "1"));
    }
    let kind = half(16)?;
    if kind != ET_EXEC && kind != ET_DYN {
        return Err(unsupported("e_type", kind, "2 (ET_EXEC) or 3 (ET_DYN)"));
    }
    let machine = half(18)?;
    if machine != EM_X86_64 {
        return Err(unsupported("e_machine", machine, "62 (x86-64)"));
    }
    let entry = u64_at(header, 24).ok_or(too_short.clone())?;
    let phoff = u64_at(header, 32).ok_or(too_short.clone())?;
    let phentsize = half(54)?;
    if usize::from(phentsize) != PHDR_LEN {
        return Err(unsupported("e_phentsize", phentsize, "56"));
    }
    let phnum = half(56)?;
    let count = usize::from(phnum);
    if count == 0 || count > MAX_PHNUM {
        return Err(unsupported("e_phnum", phnum, "1 to 1170"));
    }
    let past_end = ElfError::HeadersPastEnd {
        offset: phoff,
        count,
        file_len: len,
    };
    let table = usize::try_from(phoff)
        .ok()
        .and_then(|start| image.get(start..start.checked_add(count.checked_mul(PHDR_LEN)?)?));
    let Some(table) = table else {
        return Err(past_end);
    };
    let headers = table
        .chunks_exact(PHDR_LEN)
        .map(program_header)
        .collect::<Option<Vec<_>>>()
        .ok_or(past_end)?;
    Ok(Elf {
        kind,
        entry,
        phoff,
        headers,
    })
}

/// The `PT_INTERP` path of an image (the dynamic linker it asks for): the
/// first `PT_INTERP` segment's bytes up to their first NUL. `None` when the
/// image fails [`parse`], has no `PT_INTERP`, its segment lies outside the
/// image, or the path is empty.
pub fn interpreter(image: &[u8]) -> Option<Vec<u8>> {
    let elf = parse(image).ok()?;
    let h = elf.headers.iter().find(|h| h.kind == PT_INTERP)?;
    let start = usize::try_from(h.offset).ok()?;
    let end = start.checked_add(usize::try_from(h.filesz).ok()?)?;
    let bytes = image.get(start..end)?;
    let path = bytes.split(|&b| b == 0).next()?;
    (!path.is_empty()).then(|| path.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LD_SO: &[u8] = b"/lib64/ld-linux-x86-64.so.2";

    fn ls() -> Vec<u8> {
        std::fs::read("/bin/ls").expect("/bin/ls exists")
    }

    /// A minimal x86-64 ELF: header, `phdrs` at 64, then `tail`.
    fn image(kind: u16, phdrs: &[ProgramHeader], tail: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; EHDR_LEN];
        out[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        out[16..18].copy_from_slice(&kind.to_le_bytes());
        out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&0x40_1000u64.to_le_bytes());
        out[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        out[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes());
        out[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        out[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for h in phdrs {
            out.extend_from_slice(&h.kind.to_le_bytes());
            out.extend_from_slice(&h.flags.to_le_bytes());
            out.extend_from_slice(&h.offset.to_le_bytes());
            out.extend_from_slice(&h.vaddr.to_le_bytes());
            out.extend_from_slice(&h.vaddr.to_le_bytes());
            out.extend_from_slice(&h.filesz.to_le_bytes());
            out.extend_from_slice(&h.memsz.to_le_bytes());
            out.extend_from_slice(&h.align.to_le_bytes());
        }
        out.extend_from_slice(tail);
        out
    }

    fn interp_header(offset: u64, filesz: u64) -> ProgramHeader {
        ProgramHeader {
            kind: PT_INTERP,
            flags: PF_R,
            offset,
            vaddr: offset.wrapping_add(0x40_0000),
            filesz,
            memsz: filesz,
            align: 1,
        }
    }

    fn load_header() -> ProgramHeader {
        ProgramHeader {
            kind: PT_LOAD,
            flags: PF_R | PF_X,
            offset: 0,
            vaddr: 0x40_0000,
            filesz: 0x100,
            memsz: 0x100,
            align: 0x1000,
        }
    }

    /// An image with a PT_INTERP naming `path` (with its NUL) after the table.
    fn dynamic(path: &[u8]) -> Vec<u8> {
        let at = (EHDR_LEN + 2 * PHDR_LEN) as u64;
        let mut tail = path.to_vec();
        tail.push(0);
        image(
            ET_DYN,
            &[interp_header(at, tail.len() as u64), load_header()],
            &tail,
        )
    }

    #[test]
    fn parses_a_hand_built_image() {
        let elf = parse(&dynamic(LD_SO)).expect("parses");
        assert_eq!(elf.kind, ET_DYN);
        assert_eq!(elf.entry, 0x40_1000);
        assert_eq!(elf.phoff, EHDR_LEN as u64);
        assert_eq!(elf.phnum(), 2);
        assert_eq!(elf.headers[1], load_header());
        assert_eq!(elf.headers[0].kind, PT_INTERP);
        assert_eq!(interpreter(&dynamic(LD_SO)).as_deref(), Some(LD_SO));
    }

    #[test]
    fn a_real_dynamic_binary_names_its_interpreter() {
        let ls = ls();
        let elf = parse(&ls).expect("/bin/ls parses");
        assert!(elf.headers.iter().any(|h| h.kind == PT_LOAD));
        assert_eq!(interpreter(&ls).as_deref(), Some(LD_SO));
    }

    #[test]
    fn truncated_images_give_the_right_errors() {
        let ls = ls();
        assert_eq!(parse(b""), Err(ElfError::TooShort { len: 0 }));
        assert_eq!(parse(&ls[..40]), Err(ElfError::TooShort { len: 40 }));
        assert_eq!(
            parse(&ls[..63]),
            Err(ElfError::TooShort { len: 63 }),
            "one byte short of the header"
        );
        assert_eq!(
            parse(&ls[..40]).unwrap_err().to_string(),
            "not an ELF file: the image is 40 bytes, shorter than the 64-byte ELF header"
        );
        let elf = parse(&ls).unwrap();
        let table_end = elf.phoff as usize + elf.headers.len() * PHDR_LEN;
        for len in [EHDR_LEN, 100, table_end - 1] {
            assert_eq!(
                parse(&ls[..len]),
                Err(ElfError::HeadersPastEnd {
                    offset: elf.phoff,
                    count: elf.headers.len(),
                    file_len: len,
                }),
                "truncated to {len} bytes"
            );
            assert_eq!(interpreter(&ls[..len]), None);
        }
        assert_eq!(parse(&ls[..table_end]).unwrap().headers, elf.headers);
        // The table fits but the interpreter path does not.
        let full = dynamic(LD_SO);
        assert_eq!(interpreter(&full[..full.len() - 1]), None);
        assert_eq!(interpreter(&full[..EHDR_LEN + 2 * PHDR_LEN]), None);
    }

    #[test]
    fn each_header_field_is_checked() {
        let good = dynamic(LD_SO);
        let with = |at: usize, bytes: &[u8]| {
            let mut bad = good.clone();
            bad[at..at + bytes.len()].copy_from_slice(bytes);
            parse(&bad).unwrap_err()
        };
        assert_eq!(with(1, b"X"), ElfError::BadMagic { magic: *b"\x7fXLF" });
        assert_eq!(
            with(1, b"X").to_string(),
            "not an ELF file: it starts with [7f, 58, 4c, 46], expected 7f 45 4c 46 (\"\\x7fELF\")"
        );
        assert_eq!(
            with(4, &[1]).to_string(),
            "unsupported ELF file: ELF class is 1, expected 2 (64-bit)"
        );
        assert_eq!(
            with(5, &[2]),
            unsupported("data encoding", 2u8, "1 (little-endian)")
        );
        assert_eq!(with(6, &[0]), unsupported("ELF version", 0u8, "1"));
        assert_eq!(
            with(16, &1u16.to_le_bytes()),
            unsupported("e_type", 1u16, "2 (ET_EXEC) or 3 (ET_DYN)")
        );
        assert_eq!(
            with(18, &183u16.to_le_bytes()),
            unsupported("e_machine", 183u16, "62 (x86-64)")
        );
        assert_eq!(
            with(54, &64u16.to_le_bytes()),
            unsupported("e_phentsize", 64u16, "56")
        );
        assert_eq!(
            with(56, &0u16.to_le_bytes()),
            unsupported("e_phnum", 0u16, "1 to 1170")
        );
        assert_eq!(
            with(56, &1171u16.to_le_bytes()),
            unsupported("e_phnum", 1171u16, "1 to 1170")
        );
        assert_eq!(
            with(32, &0x100u64.to_le_bytes()).to_string(),
            format!(
                "program header table at 0x100 (2 entries of 56 bytes) extends past the end of \
                 the {:#x}-byte file",
                good.len()
            )
        );
        assert!(parse(&image(ET_EXEC, &[load_header()], &[])).is_ok());
    }

    #[test]
    fn missing_empty_and_hostile_interpreters_are_none() {
        assert_eq!(interpreter(&image(ET_EXEC, &[load_header()], &[])), None);
        assert_eq!(interpreter(&dynamic(b"")), None, "empty path");
        let at = (EHDR_LEN + PHDR_LEN) as u64;
        let no_nul = image(ET_DYN, &[interp_header(at, 4)], b"/ld!");
        assert_eq!(
            interpreter(&no_nul).as_deref(),
            Some(&b"/ld!"[..]),
            "without a NUL the whole segment is the path"
        );
        let cut = image(ET_DYN, &[interp_header(at, 6)], b"/a\0/b\0");
        assert_eq!(interpreter(&cut).as_deref(), Some(&b"/a"[..]));
        for (offset, filesz) in [
            (u64::MAX, 1),
            (at, u64::MAX),
            (u64::MAX - 1, 2),
            (1 << 40, 8),
        ] {
            let hostile = image(ET_DYN, &[interp_header(offset, filesz)], b"/ld\0");
            assert_eq!(interpreter(&hostile), None, "{offset:#x}+{filesz:#x}");
        }
    }

    #[test]
    fn hostile_header_offsets_and_counts_never_panic() {
        let base = ls();
        for phoff in [
            0,
            1,
            63,
            u64::MAX,
            u64::MAX - 55,
            1 << 63,
            base.len() as u64,
        ] {
            for phnum in [0u16, 1, 2, 1170, 1171, u16::MAX] {
                let mut bad = base.clone();
                bad[32..40].copy_from_slice(&phoff.to_le_bytes());
                bad[56..58].copy_from_slice(&phnum.to_le_bytes());
                let _ = parse(&bad);
                let _ = interpreter(&bad);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            let _ = interpreter(&bytes);
        }

        #[test]
        fn arbitrary_tables_and_segments_never_panic(
            phoff in any::<u64>(),
            phnum in any::<u16>(),
            offset in any::<u64>(),
            filesz in any::<u64>(),
            cut in 0usize..400,
        ) {
            let mut img = dynamic(LD_SO);
            if phoff % 2 == 0 {
                img[32..40].copy_from_slice(&phoff.to_le_bytes());
            }
            if phnum % 2 == 0 {
                img[56..58].copy_from_slice(&phnum.to_le_bytes());
            }
            img[EHDR_LEN + 8..EHDR_LEN + 16].copy_from_slice(&offset.to_le_bytes());
            img[EHDR_LEN + 32..EHDR_LEN + 40].copy_from_slice(&filesz.to_le_bytes());
            img.truncate(cut);
            match parse(&img) {
                Ok(elf) => prop_assert!(!elf.headers.is_empty() && elf.headers.len() <= MAX_PHNUM),
                Err(_) => prop_assert_eq!(interpreter(&img), None),
            }
        }
    }
}
