//! The ELF loader on hand-built images, corrupted variants, arbitrary bytes,
//! and real static programs built with gcc.

use lego_memory::loader::{load, parse, LoadError, ET_DYN_BASE};
use lego_memory::pool::{PagePool, PAGE};
use lego_memory::vma::{AddressSpace, STACK_SIZE, STACK_TOP};
use lego_proto::{ExecImage, RangeState};
use proptest::prelude::*;
use std::path::PathBuf;
use std::process::Command;

mod common;
use common::*;

fn page(space: &AddressSpace, pool: &PagePool, addr: u64) -> Option<Vec<u8>> {
    space.page(addr).map(|id| pool.get(id).to_vec())
}

fn error(image: &[u8]) -> String {
    match parse(image) {
        Ok(plan) => panic!("loaded a bad image: {plan:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loads_an_exec_image() {
    let image = sample(2);
    let mut pool = PagePool::new(64 << 20);
    let (space, exec) = load(&image, &mut pool).expect("loads");
    space.check_invariants().unwrap();
    assert_eq!(exec.entry, 0x40_0100);
    assert_eq!((exec.phdr, exec.phnum, exec.phent), (0x40_0040, 2, 56));
    assert_eq!(exec.load_bias, 0);
    assert_eq!(exec.brk, 0x40_7000);
    assert_eq!(exec.stack_top, STACK_TOP);
    let ranges: Vec<_> = exec
        .mappings
        .iter()
        .map(|m| (m.start, m.end, m.state))
        .collect();
    let mapped = |prot, populated| RangeState::Mapped { prot, populated };
    assert_eq!(
        ranges,
        vec![
            (0x40_0000, 0x40_2000, mapped(5, true)),
            (0x40_3000, 0x40_7000, mapped(3, true)),
            (STACK_TOP - STACK_SIZE, STACK_TOP, mapped(3, false)),
        ]
    );
    assert_eq!(page(&space, &pool, 0x40_0000).unwrap(), image[..0x1000]);
    let second = page(&space, &pool, 0x40_1000).unwrap();
    assert_eq!(second[..0x800], image[0x1000..0x1800]);
    assert!(
        second[0x800..].iter().all(|&b| b == 0),
        "past p_filesz is zero"
    );
    let data = page(&space, &pool, 0x40_3000).unwrap();
    assert_eq!(
        data[..0x110],
        image[0x2000..0x2110],
        "head of the page comes from the file"
    );
    assert!(data[0x110..].iter().all(|&b| b == 0));
    assert_eq!(
        page(&space, &pool, 0x40_4000),
        None,
        "bss pages are not stored"
    );
    assert_eq!(pool.used(), 3 * PAGE);
    assert_eq!(pool.committed(), 6 * PAGE + STACK_SIZE);
}

#[test]
fn loads_a_static_pie_at_the_dyn_base() {
    let segs = [
        load_seg(PF_R | PF_X, 0, 0, 0x1800, 0x1800),
        load_seg(PF_R | PF_W, 0x2010, 0x3010, 0x100, 0x3000),
    ];
    let image = elf(3, 0x100, &segs, FILE_LEN);
    let mut pool = PagePool::new(64 << 20);
    let (_, exec) = load(&image, &mut pool).expect("loads");
    assert_eq!(exec.load_bias, ET_DYN_BASE);
    assert!(lego_memory::vma::is_aligned(ET_DYN_BASE));
    assert_eq!(exec.entry, ET_DYN_BASE + 0x100);
    assert_eq!(exec.phdr, ET_DYN_BASE + 0x40);
    assert_eq!(exec.brk, ET_DYN_BASE + 0x7000);
    assert_eq!(exec.mappings[0].start, ET_DYN_BASE);
}

#[test]
fn an_interpreter_is_a_typed_error() {
    let path = b"/lib64/ld-linux-x86-64.so.2\0";
    let mut segs = segments().to_vec();
    segs.insert(
        0,
        Ph {
            kind: PT_INTERP,
            flags: PF_R,
            offset: 0x1000,
            vaddr: 0x40_1000,
            filesz: path.len() as u64,
            memsz: path.len() as u64,
        },
    );
    let mut image = elf(2, 0x40_0100, &segs, FILE_LEN);
    image[0x1000..0x1000 + path.len()].copy_from_slice(path);
    assert_eq!(
        parse(&image),
        Err(LoadError::NeedsInterpreter(
            "/lib64/ld-linux-x86-64.so.2".into()
        ))
    );
    let mut segs2 = segs.clone();
    segs2[0].offset = 0x5000;
    assert!(error(&elf(2, 0x40_0100, &segs2, FILE_LEN)).contains("interpreter path at 0x5000"));
}

#[test]
fn corrupted_images_are_refused_with_precise_messages() {
    let good = sample(2);
    assert!(error(&good[..40]).contains("40 bytes, shorter than the 64-byte ELF header"));
    let mut bad = good.clone();
    bad[1] = b'X';
    assert!(error(&bad).contains("not an ELF file: it starts with [7f, 58, 4c, 46]"));
    let mut bad = good.clone();
    bad[4] = 1;
    assert!(error(&bad).contains("ELF class is 1, expected 2 (64-bit)"));
    let mut bad = good.clone();
    bad[5] = 2;
    assert!(error(&bad).contains("data encoding is 2"));
    let mut bad = good.clone();
    bad[18] = 3;
    assert!(error(&bad).contains("e_machine is 3, expected 62 (x86-64)"));
    let mut bad = good.clone();
    bad[16] = 1;
    assert!(error(&bad).contains("e_type is 1"));
    let mut bad = good.clone();
    bad[54] = 32;
    assert!(error(&bad).contains("e_phentsize is 32"));
    let mut bad = good.clone();
    bad[32..40].copy_from_slice(&0x2100u64.to_le_bytes());
    assert_eq!(
        error(&bad),
        "program header table at 0x2100 (2 entries of 56 bytes) extends past the end of the 0x2110-byte file"
    );
    bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(error(&bad).contains("extends past the end"));

    let with = |f: &dyn Fn(&mut [Ph; 2])| {
        let mut segs = segments();
        f(&mut segs);
        error(&elf(2, 0x40_0100, &segs, FILE_LEN))
    };
    assert_eq!(
        with(&|s| s[1].filesz = 0x5000),
        "program header 1: segment file range 0x2010+0x5000 extends past the end of the 0x2110-byte file"
    );
    assert!(with(&|s| s[1].offset = u64::MAX - 10).contains("extends past the end"));
    assert_eq!(
        with(&|s| s[1].memsz = 0x10),
        "program header 1: file size 0x100 is larger than memory size 0x10"
    );
    assert!(with(&|s| s[1].vaddr = 0x40_3020).contains("differ modulo the 4096-byte page"));
    assert!(with(&|s| s[1].vaddr = 0x40_1010).contains("overlap those of program header 0"));
    assert!(with(&|s| s[0].vaddr = 0x1000).contains("does not fit in [0x10000, 0x400000000000)"));
    assert!(with(&|s| s[1].memsz = u64::MAX).contains("does not fit"));
    assert!(with(&|s| s[1].vaddr = STACK_TOP - 0x10_0ff0).contains("overlap the stack"));
    assert!(with(&|s| {
        s[0].kind = 0;
        s[1].kind = 0;
    })
    .contains("no loadable segment"));
    assert!(error(&elf(2, 5, &segments(), FILE_LEN)).contains("entry point 0x5"));
    assert!(error(&elf(2, 0x40_0100, &[], FILE_LEN)).contains("e_phnum is 0"));
}

#[test]
fn an_image_larger_than_the_pool_fails_cleanly() {
    let image = sample(2);
    let mut pool = PagePool::new(STACK_SIZE + 5 * PAGE);
    let message = load(&image, &mut pool).unwrap_err().to_string();
    assert!(
        message.contains(&format!("needs {} bytes of memory", STACK_SIZE + 6 * PAGE)),
        "{message}"
    );
    assert_eq!((pool.used(), pool.committed()), (0, 0));
}

/// Compiles `hello.c` with gcc and the given flags. gcc is a requirement
/// of this test suite: its absence fails the test.
fn gcc(name: &str, flag: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("lego-memory-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let source = dir.join("hello.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    )
    .expect("write hello.c");
    let out: PathBuf = dir.join(name);
    let status = Command::new("gcc")
        .arg(flag)
        .arg("-O1")
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .status()
        .expect("gcc is required by this test (apt-get install gcc)");
    assert!(status.success(), "gcc {flag} failed");
    std::fs::read(&out).expect("read the compiled program")
}

/// Checks what a runtime needs from a real program's image.
fn check_real(image: &[u8], exec: &ExecImage, space: &AddressSpace, pool: &PagePool) {
    space.check_invariants().unwrap();
    let exec_mapping = space.find(exec.entry).expect("entry is mapped");
    assert!(exec_mapping.prot & 4 != 0, "entry is executable");
    let phnum = u16::from_le_bytes([image[56], image[57]]);
    let phoff = u64::from_le_bytes(image[32..40].try_into().unwrap()) as usize;
    assert_eq!(exec.phnum, phnum);
    // The program headers are readable at AT_PHDR, as the C library needs.
    let at = exec.phdr & !(PAGE - 1);
    let offset = (exec.phdr - at) as usize;
    let contents = page(space, pool, at).expect("the page holding the headers is stored");
    let table = usize::from(phnum) * 56;
    assert_eq!(
        contents[offset..offset + table],
        image[phoff..phoff + table]
    );
    assert!(exec.brk > exec.entry && lego_memory::vma::is_aligned(exec.brk));
    assert!(
        space.find(exec.brk).is_none(),
        "nothing mapped at the break"
    );
}

#[test]
fn loads_a_real_static_program() {
    let image = gcc("hello-static", "-static");
    let mut pool = PagePool::new(256 << 20);
    let (mut space, exec) = load(&image, &mut pool).expect("a gcc -static program loads");
    assert_eq!(exec.load_bias, 0);
    check_real(&image, &exec, &space, &pool);
    space.release(&mut pool);
    assert_eq!((pool.used(), pool.committed()), (0, 0));
}

#[test]
fn loads_a_real_static_pie_program() {
    let image = gcc("hello-static-pie", "-static-pie");
    assert_eq!(image[16], 3, "gcc -static-pie makes ET_DYN");
    let mut pool = PagePool::new(256 << 20);
    let (space, exec) = load(&image, &mut pool).expect("a gcc -static-pie program loads");
    assert_eq!(exec.load_bias, ET_DYN_BASE);
    check_real(&image, &exec, &space, &pool);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut pool = PagePool::new(64 << 20);
        let _ = load(&bytes, &mut pool);
    }

    #[test]
    fn mutated_images_never_panic(
        edits in proptest::collection::vec((0usize..0x300, any::<u8>()), 1..12),
        cut in 0usize..=FILE_LEN,
        kind in 2u16..=3,
    ) {
        let mut image = sample(kind);
        for (at, byte) in edits {
            image[at] = byte;
        }
        image.truncate(cut.max(FILE_LEN / 2));
        let mut pool = PagePool::new(64 << 20);
        if let Ok((mut space, _)) = load(&image, &mut pool) {
            prop_assert!(space.check_invariants().is_ok());
            space.release(&mut pool);
        }
        prop_assert_eq!((pool.used(), pool.committed()), (0, 0));
    }
}
