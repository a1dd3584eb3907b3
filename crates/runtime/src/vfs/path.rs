//! Paths as the runtime classifies them: lexically normalised, and split
//! between the processor's own trees and the storage manager's.

/// The trees the processor serves itself.
const HOST_TREES: [&[u8]; 3] = [b"/dev", b"/proc", b"/sys"];

/// Whether an absolute, normalised path belongs to the processor.
pub fn is_host(abs: &[u8]) -> bool {
    HOST_TREES
        .iter()
        .any(|tree| abs == *tree || (abs.starts_with(tree) && abs.get(tree.len()) == Some(&b'/')))
}

/// `rel` resolved lexically against the absolute directory `base` (`.` and
/// `..` folded, repeated slashes dropped; `..` stops at `/`).
pub fn normalize(base: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let start: &[u8] = if rel.starts_with(b"/") { b"" } else { base };
    for part in start.split(|&b| b == b'/').chain(rel.split(|&b| b == b'/')) {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut out = Vec::with_capacity(rel.len() + base.len() + 1);
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Splits a path into its parent and its last component (`None` for `/`
/// and for paths ending in `.` or `..`, which name no new entry).
pub fn split_last(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let trimmed = {
        let mut end = path.len();
        while end > 1 && path[end - 1] == b'/' {
            end -= 1;
        }
        &path[..end]
    };
    let (parent, name) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => (&trimmed[..1], &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return None;
    }
    Some((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_a_path_walk_without_symlinks() {
        assert_eq!(normalize(b"/home/u", b"a/../b/./c"), b"/home/u/b/c");
        assert_eq!(normalize(b"/home/u", b"/etc//passwd"), b"/etc/passwd");
        assert_eq!(normalize(b"/", b"../../.."), b"/");
        assert_eq!(normalize(b"/tmp", b""), b"/tmp");
    }

    #[test]
    fn host_trees_are_whole_components() {
        assert!(is_host(b"/proc"));
        assert!(is_host(b"/proc/self/maps"));
        assert!(is_host(b"/dev/null"));
        assert!(!is_host(b"/devices"));
        assert!(!is_host(b"/tmp/proc"));
        assert!(!is_host(b"/"));
    }

    #[test]
    fn splits_the_last_component() {
        assert_eq!(split_last(b"/a/b"), Some((&b"/a"[..], &b"b"[..])));
        assert_eq!(split_last(b"/a"), Some((&b"/"[..], &b"a"[..])));
        assert_eq!(split_last(b"a/"), Some((&b""[..], &b"a"[..])));
        assert_eq!(split_last(b"b"), Some((&b""[..], &b"b"[..])));
        assert_eq!(split_last(b"/"), None);
        assert_eq!(split_last(b"a/.."), None);
    }
}
