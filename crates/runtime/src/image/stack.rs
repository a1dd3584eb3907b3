//! The initial stack, laid out as Linux lays it out for a new program:
//! argc, argv pointers, NULL, envp pointers, NULL, the auxiliary vector,
//! then the strings and random bytes they point to.

use lego_proto::ExecImage;

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_EXECFN: u64 = 31;
const AT_SYSINFO_EHDR: u64 = 33;
const AT_MINSIGSTKSZ: u64 = 51;

/// The application must not use FSGSBASE itself: GS belongs to the runtime.
const HWCAP2_FSGSBASE: u64 = 1 << 1;

/// Most bytes the strings and pointers may take (Linux: a quarter of the
/// stack limit).
pub const MAX_STACK_SETUP: u64 = 2 << 20;

/// Builds the stack image in memory and returns it with the initial stack
/// pointer and the auxiliary vector (as /proc/self/auxv shows it). The
/// image is to be copied to `stack_top - image.len()`.
pub fn build(
    image: &ExecImage,
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
    execfn: &[u8],
    random: [u8; 16],
) -> Result<(Vec<u8>, u64, Vec<u8>), String> {
    // Strings go at the top, below a guard word, in the order Linux uses.
    let top = image.stack_top - 8;
    let mut strings: Vec<u8> = Vec::new();
    let mut offsets = Vec::new();
    let mut push = |bytes: &[u8], strings: &mut Vec<u8>| {
        offsets.push(strings.len());
        strings.extend_from_slice(bytes);
        strings.push(0);
    };
    push(execfn, &mut strings);
    for s in argv.iter().chain(envp) {
        push(s, &mut strings);
    }
    push(b"x86_64", &mut strings);
    let random_off = strings.len();
    strings.extend_from_slice(&random);
    let strings_start = (top - strings.len() as u64) & !15;
    let addr_of = |i: usize| strings_start + offsets[i] as u64;
    let execfn_addr = addr_of(0);
    let platform_addr = addr_of(1 + argv.len() + envp.len());
    let random_addr = strings_start + random_off as u64;

    // Safety: getauxval/getuid family have no preconditions.
    let aux = |t| unsafe { libc::getauxval(t) };
    let auxv: Vec<(u64, u64)> = vec![
        (AT_SYSINFO_EHDR, aux(AT_SYSINFO_EHDR)),
        (AT_MINSIGSTKSZ, aux(AT_MINSIGSTKSZ)),
        (AT_HWCAP, aux(AT_HWCAP)),
        (AT_PAGESZ, 4096),
        (AT_CLKTCK, 100),
        (AT_PHDR, image.phdr),
        (AT_PHENT, image.phent as u64),
        (AT_PHNUM, image.phnum as u64),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, image.entry),
        // Safety: no preconditions.
        (AT_UID, unsafe { libc::getuid() } as u64),
        (AT_EUID, unsafe { libc::geteuid() } as u64),
        (AT_GID, unsafe { libc::getgid() } as u64),
        (AT_EGID, unsafe { libc::getegid() } as u64),
        (AT_SECURE, 0),
        (AT_RANDOM, random_addr),
        (AT_HWCAP2, aux(AT_HWCAP2) & !HWCAP2_FSGSBASE),
        (AT_EXECFN, execfn_addr),
        (AT_PLATFORM, platform_addr),
        (AT_NULL, 0),
    ];
    let auxv_bytes: Vec<u8> = auxv
        .iter()
        .flat_map(|&(t, v)| t.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    let words = 1 + argv.len() + 1 + envp.len() + 1 + 2 * auxv.len();
    let sp = (strings_start - words as u64 * 8) & !15;
    let total = image.stack_top - sp;
    if total > MAX_STACK_SETUP {
        return Err(format!(
            "arguments and environment take {total} bytes, over the {MAX_STACK_SETUP}-byte limit (E2BIG)"
        ));
    }
    let mut out = vec![0u8; total as usize];
    let mut put = |addr: u64, bytes: &[u8]| {
        let off = (addr - sp) as usize;
        out[off..off + bytes.len()].copy_from_slice(bytes);
    };
    put(strings_start, &strings);
    let mut at = sp;
    let mut word = |value: u64, put: &mut dyn FnMut(u64, &[u8])| {
        put(at, &value.to_ne_bytes());
        at += 8;
    };
    word(argv.len() as u64, &mut put);
    for i in 0..argv.len() {
        word(addr_of(1 + i), &mut put);
    }
    word(0, &mut put);
    for i in 0..envp.len() {
        word(addr_of(1 + argv.len() + i), &mut put);
    }
    word(0, &mut put);
    for (t, v) in auxv {
        word(t, &mut put);
        word(v, &mut put);
    }
    Ok((out, sp, auxv_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ExecImage {
        ExecImage {
            entry: 0x401000,
            phdr: 0x400040,
            phnum: 8,
            phent: 56,
            load_bias: 0,
            brk: 0x500000,
            stack_top: 0x3fff_ffff_0000,
            mappings: Vec::new(),
        }
    }

    fn word(stack: &[u8], sp: u64, addr: u64) -> u64 {
        let off = (addr - sp) as usize;
        u64::from_ne_bytes(stack[off..off + 8].try_into().unwrap())
    }

    fn string(stack: &[u8], sp: u64, addr: u64) -> Vec<u8> {
        let off = (addr - sp) as usize;
        stack[off..]
            .iter()
            .take_while(|&&b| b != 0)
            .copied()
            .collect()
    }

    #[test]
    fn layout_matches_the_abi() {
        let argv = vec![b"prog".to_vec(), b"a b".to_vec()];
        let envp = vec![b"HOME=/root".to_vec()];
        let (stack, sp, auxv) = build(&image(), &argv, &envp, b"/bin/prog", [7; 16]).unwrap();
        assert_eq!(auxv.len() % 16, 0);
        assert_eq!(
            &auxv[auxv.len() - 16..],
            &[0u8; 16],
            "auxv ends with AT_NULL"
        );
        assert_eq!(sp % 16, 0);
        assert_eq!(sp + stack.len() as u64, image().stack_top);
        assert_eq!(word(&stack, sp, sp), 2);
        assert_eq!(string(&stack, sp, word(&stack, sp, sp + 8)), b"prog");
        assert_eq!(string(&stack, sp, word(&stack, sp, sp + 16)), b"a b");
        assert_eq!(word(&stack, sp, sp + 24), 0);
        assert_eq!(string(&stack, sp, word(&stack, sp, sp + 32)), b"HOME=/root");
        assert_eq!(word(&stack, sp, sp + 40), 0);
        let mut at = sp + 48;
        let mut aux = std::collections::HashMap::new();
        loop {
            let (t, v) = (word(&stack, sp, at), word(&stack, sp, at + 8));
            at += 16;
            if t == AT_NULL {
                break;
            }
            aux.insert(t, v);
        }
        assert_eq!(aux[&AT_ENTRY], 0x401000);
        assert_eq!(aux[&AT_PHDR], 0x400040);
        assert_eq!(aux[&AT_PAGESZ], 4096);
        assert_eq!(string(&stack, sp, aux[&AT_EXECFN]), b"/bin/prog");
        assert_eq!(string(&stack, sp, aux[&AT_PLATFORM]), b"x86_64");
        let r = (aux[&AT_RANDOM] - sp) as usize;
        assert_eq!(&stack[r..r + 16], &[7; 16]);
    }

    #[test]
    fn oversized_arguments_are_refused() {
        let argv = vec![vec![b'x'; 3 << 20]];
        assert!(build(&image(), &argv, &[], b"p", [0; 16])
            .unwrap_err()
            .contains("E2BIG"));
    }
}
