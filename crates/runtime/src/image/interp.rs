//! Dynamically linked programs, until the memory manager's loader reads
//! them from storage: the runtime starts the program's interpreter (the
//! dynamic linker) as the loaded image and lets it load the program and
//! its libraries itself — `ld.so --argv0 ARGV0 PROGRAM ARGS...`, which
//! glibc's and musl's linkers both support — so the program sees the argv
//! it was given.

/// The PT_INTERP path of an ELF image, if it has one, as read by
/// [`lego_proto::elf`], the workspace's one ELF parser. Malformed images
/// yield `None`: the memory manager's loader reports their defects
/// precisely.
pub fn interpreter(image: &[u8]) -> Option<Vec<u8>> {
    lego_proto::elf::interpreter(image)
}

/// Most nested `#!` interpreters, as Linux allows.
pub const MAX_SCRIPT_DEPTH: usize = 4;

/// A `#!` script's interpreter and its optional single argument, as Linux
/// parses them: the first line (at most 255 bytes), split at the first run
/// of blanks after the interpreter; the rest is one argument.
pub fn shebang(image: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let rest = image.strip_prefix(b"#!")?;
    let line = &rest[..rest.len().min(255)];
    let line = line.split(|&b| b == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = line.iter().position(|b| !blank(b))?;
    let line = &line[start..];
    let end = line.iter().position(blank).unwrap_or(line.len());
    let (interp, tail) = line.split_at(end);
    let arg = tail.iter().position(|b| !blank(b)).map(|i| {
        let arg = &tail[i..];
        let trimmed = arg.len() - arg.iter().rev().take_while(|b| blank(b)).count();
        arg[..trimmed].to_vec()
    });
    Some((interp.to_vec(), arg))
}

/// The argv with which the kernel runs a script's interpreter.
pub fn script_argv(
    interp: &[u8],
    arg: Option<&[u8]>,
    script: &[u8],
    argv: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let mut out = vec![interp.to_vec()];
    out.extend(arg.map(<[u8]>::to_vec));
    out.push(script.to_vec());
    out.extend(argv.iter().skip(1).cloned());
    out
}

/// The argv that makes the dynamic linker run `program` as if the kernel
/// had started it with `argv`.
pub fn linker_argv(interp: &[u8], program: &[u8], argv: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let argv0 = argv.first().cloned().unwrap_or_else(|| program.to_vec());
    let mut out = vec![
        interp.to_vec(),
        b"--argv0".to_vec(),
        argv0,
        program.to_vec(),
    ];
    out.extend(argv.iter().skip(1).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_a_real_dynamic_binary() {
        let ls = std::fs::read("/bin/ls").expect("/bin/ls exists");
        let interp = interpreter(&ls).expect("/bin/ls is dynamically linked");
        assert!(
            interp.ends_with(b"ld-linux-x86-64.so.2"),
            "{}",
            String::from_utf8_lossy(&interp)
        );
    }

    #[test]
    fn hostile_offsets_never_overflow() {
        let mut image = std::fs::read("/bin/ls").unwrap();
        image[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(interpreter(&image), None);
        let mut image = std::fs::read("/bin/ls").unwrap();
        image[54..56].copy_from_slice(&u16::MAX.to_le_bytes());
        image[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(interpreter(&image), None);
    }

    #[test]
    fn static_and_malformed_images_have_none() {
        let ldconfig = std::fs::read("/sbin/ldconfig").expect("/sbin/ldconfig exists");
        assert_eq!(interpreter(&ldconfig), None);
        assert_eq!(interpreter(b""), None);
        assert_eq!(interpreter(b"\x7fELF\x02\x01garbage"), None);
        let mut truncated = std::fs::read("/bin/ls").unwrap();
        truncated.truncate(100);
        assert_eq!(interpreter(&truncated), None);
    }

    #[test]
    fn shebang_lines_parse_like_linux() {
        assert_eq!(
            shebang(b"#!/bin/sh\necho"),
            Some((b"/bin/sh".to_vec(), None))
        );
        assert_eq!(
            shebang(b"#! /usr/bin/env  python3 -u \r\n"),
            Some((b"/usr/bin/env".to_vec(), Some(b"python3 -u".to_vec())))
        );
        assert_eq!(shebang(b"#!"), None);
        assert_eq!(shebang(b"\x7fELF"), None);
        assert_eq!(
            script_argv(b"/bin/sh", None, b"/tmp/s", &[b"s".to_vec(), b"x".to_vec()]),
            vec![b"/bin/sh".to_vec(), b"/tmp/s".to_vec(), b"x".to_vec()]
        );
    }

    #[test]
    fn the_linker_gets_the_original_argv0() {
        let argv = vec![b"ls".to_vec(), b"-l".to_vec()];
        assert_eq!(
            linker_argv(b"/lib64/ld.so", b"/usr/bin/ls", &argv),
            vec![
                b"/lib64/ld.so".to_vec(),
                b"--argv0".to_vec(),
                b"ls".to_vec(),
                b"/usr/bin/ls".to_vec(),
                b"-l".to_vec()
            ]
        );
    }
}
