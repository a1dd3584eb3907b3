//! The ELF loader: builds a fresh address space from a program image.
//!
//! Loading is two steps. [`parse`] reads and checks the image without
//! allocating anything from the pool: every field is bounds-checked and
//! every sum overflow-checked, so no input can panic it, and each error
//! names the offending header, offsets and sizes. The ELF header and the
//! program header table are read and checked by [`lego_proto::elf::parse`],
//! the workspace's one ELF parser; its errors become the first
//! [`LoadError`] variants. [`Plan::build`] then maps the segments and the
//! stack and copies the file contents into pool pages.
//!
//! Supported: ELF64, little-endian, x86-64, `ET_EXEC` and static-pie
//! `ET_DYN` (no `PT_INTERP`), loaded at [`ET_DYN_BASE`] like Linux's
//! `ELF_ET_DYN_BASE`. Programs with an interpreter fail with
//! [`LoadError::NeedsInterpreter`].
//!
//! Each `PT_LOAD` becomes a populated, accounted mapping with the
//! protections of its `p_flags`. Bytes of its first page before `p_vaddr`
//! come from the file as Linux's file mapping shows them; bytes past
//! `p_filesz` are zero, and pages holding only zeros are not stored.

use crate::pool::{PagePool, PAGE};
use crate::vma::{
    page_align, AddressSpace, OnFork, Vma, PROT_EXEC, PROT_READ, PROT_WRITE, STACK_SIZE, STACK_TOP,
};
use lego_proto::elf::{
    self, ElfError, ProgramHeader, ET_DYN, PF_R, PF_W, PF_X, PHDR_LEN, PT_GNU_STACK, PT_INTERP,
    PT_LOAD, PT_PHDR,
};
use lego_proto::{ExecImage, RangeChange, RangeState, PAGE_SIZE, USER_END, USER_MIN};
use thiserror::Error;

/// Where a static-pie program is loaded: two thirds of the address space,
/// as Linux's `ELF_ET_DYN_BASE`, leaving room below for `brk`.
pub const ET_DYN_BASE: u64 = (USER_END / 3 * 2) & !(PAGE - 1);

/// Longest interpreter path reported (Linux's PATH_MAX).
const MAX_INTERP_LEN: usize = 4096;

/// Why an image cannot be loaded. Messages are shown to the user as they
/// are, so each one names what is wrong with numbers from the file.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LoadError {
    /// The ELF header or program-header table (see `lego_proto::elf`).
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("program header {index}: {problem}")]
    Segment {
        index: usize,
        problem: SegmentProblem,
    },
    #[error("the program has no loadable segment (PT_LOAD)")]
    NoLoadSegment,
    #[error("entry point {entry:#x} is outside the application address space [{USER_MIN:#x}, {USER_END:#x})")]
    EntryOutside { entry: u64 },
    /// A dynamically linked program: its interpreter must be loaded too,
    /// which this loader does not do yet.
    #[error("the program needs the interpreter {0}: dynamically linked programs are not supported yet; link it with -static or -static-pie")]
    NeedsInterpreter(String),
    #[error("the program needs {needed} bytes of memory, but the memory manager's pool has only {free} of {capacity} bytes uncommitted")]
    OutOfMemory {
        needed: u64,
        free: u64,
        capacity: u64,
    },
}

/// What is wrong with one program header.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SegmentProblem {
    #[error("segment file range {offset:#x}+{filesz:#x} extends past the end of the {file_len:#x}-byte file")]
    FilePastEnd {
        offset: u64,
        filesz: u64,
        file_len: usize,
    },
    #[error("file size {filesz:#x} is larger than memory size {memsz:#x}")]
    FileszOverMemsz { filesz: u64, memsz: u64 },
    #[error("file offset {offset:#x} and address {vaddr:#x} differ modulo the 4096-byte page")]
    Misaligned { offset: u64, vaddr: u64 },
    #[error("segment {vaddr:#x}+{memsz:#x} (load bias {bias:#x}) does not fit in [{USER_MIN:#x}, {USER_END:#x})")]
    OutsideUserRange { vaddr: u64, memsz: u64, bias: u64 },
    #[error("pages [{start:#x}, {end:#x}) overlap those of program header {other}")]
    Overlaps { start: u64, end: u64, other: usize },
    #[error("pages [{start:#x}, {end:#x}) overlap the stack")]
    OverlapsStack { start: u64, end: u64 },
    #[error(
        "interpreter path at {offset:#x}+{filesz:#x} is not inside the {file_len:#x}-byte file"
    )]
    InterpreterPastEnd {
        offset: u64,
        filesz: u64,
        file_len: usize,
    },
}

/// One loadable segment, with the load bias applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// Index of its program header.
    index: usize,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    prot: u32,
}

impl Segment {
    /// First page of the mapping.
    fn start(&self) -> u64 {
        self.vaddr & !(PAGE - 1)
    }

    /// End of the mapping (checked not to overflow by `parse`).
    fn end(&self) -> u64 {
        self.vaddr
            .checked_add(self.memsz)
            .and_then(page_align)
            .unwrap_or(USER_END)
    }
}

/// A checked image, ready to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    entry: u64,
    phdr: u64,
    phnum: u16,
    load_bias: u64,
    brk: u64,
    stack_prot: u32,
    /// Sorted by address, non-empty, pages disjoint.
    segments: Vec<Segment>,
}

/// Checks an image and plans its address space.
pub fn parse(image: &[u8]) -> Result<Plan, LoadError> {
    let len = image.len();
    let parsed = elf::parse(image)?;
    let phnum = parsed.phnum();
    let elf::Elf {
        kind,
        entry,
        phoff,
        headers,
    } = parsed;
    let count = headers.len();

    for (index, h) in headers.iter().enumerate() {
        if h.kind == PT_INTERP {
            return Err(interpreter(image, index, h));
        }
    }

    // A static-pie goes at ET_DYN_BASE, aligned like its most aligned
    // segment (as Linux does, so huge-page-aligned segments stay aligned).
    let loads = || headers.iter().filter(|h| h.kind == PT_LOAD && h.memsz > 0);
    let load_bias = if kind == ET_DYN {
        let lowest = loads().map(|h| h.vaddr & !(PAGE - 1)).min().unwrap_or(0);
        let align = loads()
            .map(|h| h.align)
            .filter(|a| a.is_power_of_two() && *a <= 1 << 30)
            .fold(PAGE, u64::max);
        ET_DYN_BASE.saturating_sub(lowest) & !(align - 1)
    } else {
        0
    };

    let mut segments = Vec::new();
    for (index, h) in headers.iter().enumerate() {
        if h.kind != PT_LOAD || h.memsz == 0 {
            continue;
        }
        segments.push(check_segment(index, h, len, load_bias)?);
    }
    if segments.is_empty() {
        return Err(LoadError::NoLoadSegment);
    }
    segments.sort_by_key(|s| s.start());
    for pair in segments.windows(2) {
        if pair[1].start() < pair[0].end() {
            return Err(LoadError::Segment {
                index: pair[1].index,
                problem: SegmentProblem::Overlaps {
                    start: pair[1].start(),
                    end: pair[1].end(),
                    other: pair[0].index,
                },
            });
        }
    }
    let stack_bottom = STACK_TOP - STACK_SIZE;
    if let Some(s) = segments.iter().find(|s| s.end() > stack_bottom) {
        return Err(LoadError::Segment {
            index: s.index,
            problem: SegmentProblem::OverlapsStack {
                start: s.start(),
                end: s.end(),
            },
        });
    }

    let entry = entry
        .checked_add(load_bias)
        .filter(|e| (USER_MIN..USER_END).contains(e))
        .ok_or(LoadError::EntryOutside {
            entry: entry.wrapping_add(load_bias),
        })?;
    let phdr = program_headers_address(&headers, phoff, count, load_bias);
    let brk = segments.iter().map(Segment::end).max().unwrap_or(USER_MIN);
    let executable_stack = headers
        .iter()
        .any(|h| h.kind == PT_GNU_STACK && h.flags & PF_X != 0);
    Ok(Plan {
        entry,
        phdr,
        phnum,
        load_bias,
        brk,
        stack_prot: PROT_READ | PROT_WRITE | if executable_stack { PROT_EXEC } else { 0 },
        segments,
    })
}

fn interpreter(image: &[u8], index: usize, h: &ProgramHeader) -> LoadError {
    let range = usize::try_from(h.offset)
        .ok()
        .and_then(|start| Some(start..start.checked_add(usize::try_from(h.filesz).ok()?)?));
    let Some(bytes) = range.and_then(|r| image.get(r)) else {
        return LoadError::Segment {
            index,
            problem: SegmentProblem::InterpreterPastEnd {
                offset: h.offset,
                filesz: h.filesz,
                file_len: image.len(),
            },
        };
    };
    let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
    let path = &path[..path.len().min(MAX_INTERP_LEN)];
    LoadError::NeedsInterpreter(String::from_utf8_lossy(path).into_owned())
}

fn check_segment(
    index: usize,
    h: &ProgramHeader,
    len: usize,
    bias: u64,
) -> Result<Segment, LoadError> {
    let problem = |problem| LoadError::Segment { index, problem };
    if past_end(h.offset.checked_add(h.filesz), len) {
        return Err(problem(SegmentProblem::FilePastEnd {
            offset: h.offset,
            filesz: h.filesz,
            file_len: len,
        }));
    }
    if h.filesz > h.memsz {
        return Err(problem(SegmentProblem::FileszOverMemsz {
            filesz: h.filesz,
            memsz: h.memsz,
        }));
    }
    if h.offset % PAGE != h.vaddr % PAGE {
        return Err(problem(SegmentProblem::Misaligned {
            offset: h.offset,
            vaddr: h.vaddr,
        }));
    }
    let vaddr = h.vaddr.checked_add(bias);
    let end = vaddr
        .and_then(|v| v.checked_add(h.memsz))
        .and_then(page_align);
    let (Some(vaddr), Some(end)) = (vaddr, end) else {
        return Err(problem(SegmentProblem::OutsideUserRange {
            vaddr: h.vaddr,
            memsz: h.memsz,
            bias,
        }));
    };
    if vaddr < USER_MIN || end > USER_END {
        return Err(problem(SegmentProblem::OutsideUserRange {
            vaddr: h.vaddr,
            memsz: h.memsz,
            bias,
        }));
    }
    let prot = [(PF_R, PROT_READ), (PF_W, PROT_WRITE), (PF_X, PROT_EXEC)]
        .iter()
        .filter(|(flag, _)| h.flags & flag != 0)
        .fold(0, |prot, (_, p)| prot | p);
    Ok(Segment {
        index,
        offset: h.offset,
        vaddr,
        filesz: h.filesz,
        memsz: h.memsz,
        prot,
    })
}

/// `true` when an end offset is missing (overflowed) or past the file.
fn past_end(end: Option<u64>, len: usize) -> bool {
    match end {
        Some(end) => end > len as u64,
        None => true,
    }
}

/// AT_PHDR: `PT_PHDR`'s address if there is one, else where the loaded
/// segment holding the table maps it, else 0 (as Linux leaves it).
fn program_headers_address(headers: &[ProgramHeader], phoff: u64, count: usize, bias: u64) -> u64 {
    if let Some(h) = headers.iter().find(|h| h.kind == PT_PHDR) {
        return h.vaddr.wrapping_add(bias);
    }
    let table_end = phoff + (count * PHDR_LEN) as u64;
    headers
        .iter()
        .find(|h| {
            h.kind == PT_LOAD
                && h.offset <= phoff
                && h.offset
                    .checked_add(h.filesz)
                    .is_some_and(|e| table_end <= e)
        })
        .map_or(0, |h| {
            (phoff - h.offset).wrapping_add(h.vaddr).wrapping_add(bias)
        })
}

impl Plan {
    /// Bytes of commit charge the address space will hold.
    pub fn commit_needed(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.end() - s.start())
            .sum::<u64>()
            + STACK_SIZE
    }

    /// Maps the segments and the stack and copies the file contents into
    /// the pool. `image` must be the one `parse` checked.
    pub fn build(
        &self,
        image: &[u8],
        pool: &mut PagePool,
    ) -> Result<(AddressSpace, ExecImage), LoadError> {
        let needed = self.commit_needed();
        let free = pool.capacity_bytes() - pool.committed();
        let out_of_memory = LoadError::OutOfMemory {
            needed,
            free,
            capacity: pool.capacity_bytes(),
        };
        if needed > free {
            return Err(out_of_memory);
        }
        let mut space = AddressSpace::new(self.brk);
        for s in &self.segments {
            let vma = Vma {
                start: s.start(),
                end: s.end(),
                prot: s.prot,
                populated: true,
                accounted: true,
                file: None,
                on_fork: OnFork::Copy,
            };
            if !space.map_new(pool, vma) || !copy_contents(&mut space, pool, image, s) {
                space.release(pool);
                return Err(out_of_memory);
            }
        }
        let stack = Vma {
            start: STACK_TOP - STACK_SIZE,
            end: STACK_TOP,
            prot: self.stack_prot,
            populated: false,
            accounted: true,
            file: None,
            on_fork: OnFork::Copy,
        };
        if !space.map_new(pool, stack) {
            space.release(pool);
            return Err(out_of_memory);
        }
        let mappings = space
            .vmas()
            .map(|v| RangeChange {
                start: v.start,
                end: v.end,
                state: RangeState::Mapped {
                    prot: v.prot,
                    populated: v.populated,
                },
                discard: false,
            })
            .collect();
        let exec = ExecImage {
            entry: self.entry,
            phdr: self.phdr,
            phnum: self.phnum,
            phent: PHDR_LEN as u16,
            load_bias: self.load_bias,
            brk: self.brk,
            stack_top: STACK_TOP,
            mappings,
        };
        Ok((space, exec))
    }
}

/// Copies a segment's file bytes into pages; `false` if the pool ran out.
fn copy_contents(space: &mut AddressSpace, pool: &mut PagePool, image: &[u8], s: &Segment) -> bool {
    // File offset of the segment's first page: p_offset and p_vaddr agree
    // modulo the page size, so this is p_offset rounded down.
    let file_start = s.offset - (s.vaddr - s.start());
    let data_end = s.vaddr + s.filesz;
    let mut page = [0u8; PAGE_SIZE];
    let mut addr = s.start();
    while addr < data_end {
        let take = (data_end - addr).min(PAGE) as usize;
        let from = (file_start + (addr - s.start())) as usize;
        page.fill(0);
        match image.get(from..from + take) {
            Some(bytes) => page[..take].copy_from_slice(bytes),
            // parse checked offset + filesz against the file.
            None => debug_assert!(false, "segment bytes outside the image"),
        }
        if !space.store_page(pool, addr, &page) {
            return false;
        }
        addr += PAGE;
    }
    true
}

/// Parses and builds in one step.
pub fn load(image: &[u8], pool: &mut PagePool) -> Result<(AddressSpace, ExecImage), LoadError> {
    parse(image)?.build(image, pool)
}
