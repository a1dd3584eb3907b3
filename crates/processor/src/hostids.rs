//! The host identity a program's runtime runs as.
//!
//! A runtime whose files come from a storage manager runs in a user
//! namespace of its own (and an IPC namespace, so its SysV semaphores and
//! message queues are its session's): ids 0 to 2^31-2 inside are host ids
//! 2^31 to 2^32-2 outside, so the program's uid, root included, is an
//! unprivileged host uid no host user has. Inside, the program's ids are
//! the ones it has under Lego (root may drop, the kernel decides); outside
//! it owns nothing and may signal, ptrace or read only processes of that
//! same host uid: its own and other Lego programs of its Lego uid.
//!
//! A runtime on the processor's own files (`LEGO_FILES=host`) stays in
//! the processor's namespace with the launching user's ids: those files
//! are checked by the host kernel, as the user's own.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

/// The first host id of the namespace: inside id `n` is host id
/// `OUTSIDE + n`.
pub const OUTSIDE: u32 = 0x8000_0000;
/// How many ids the namespace maps: every id below 2^31-1 (the last
/// host id, 2^32-1, is no id at all).
pub const COUNT: u32 = 0x7fff_ffff;

/// Writes the child's uid and gid maps once it has entered its new user
/// namespace: it sends its pid on `ready` and waits for a byte on `go`.
/// Dropping `go` unwritten (on any failure) makes the child fail.
pub fn map_child(ready: OwnedFd, go: OwnedFd) -> io::Result<()> {
    let mut pid = [0u8; 4];
    std::fs::File::from(ready)
        .read_exact(&mut pid)
        .map_err(|e| io::Error::other(format!("the runtime never entered its namespace: {e}")))?;
    let pid = u32::from_ne_bytes(pid);
    let line = format!("0 {OUTSIDE} {COUNT}\n");
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), &line)
            .map_err(|e| io::Error::other(format!("cannot write the runtime's {map}: {e}")))?;
    }
    std::fs::File::from(go).write_all(&[1])
}

/// One extent of a `uid_map`/`gid_map` as the processor reads it: ids
/// `inside..inside+count` of the namespace are `outside..` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    inside: u32,
    outside: u32,
    count: u32,
}

fn extents(map: &str) -> Option<Vec<Extent>> {
    map.lines()
        .map(|line| {
            let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
            let (inside, outside, count) = (fields.next()??, fields.next()??, fields.next()??);
            Some(Extent {
                inside,
                outside,
                count,
            })
        })
        .collect()
}

/// The id host id `id` is inside the namespace `map` describes.
fn inside(map: &[Extent], id: u32) -> Option<u32> {
    map.iter().find_map(|e| {
        let offset = id.checked_sub(e.outside)?;
        (offset < e.count).then(|| e.inside + offset)
    })
}

/// The ids of a process's own namespace for host ids read from its
/// status (`uid_map` or `gid_map` as the processor sees them); `None`
/// when one has no id there (which never happens to a process's own ids).
pub struct Translation {
    uids: Vec<Extent>,
    gids: Vec<Extent>,
}

impl Translation {
    /// The maps of host process `pid`.
    pub fn of(pid: u32) -> io::Result<Translation> {
        let read = |map: &str| -> io::Result<Vec<Extent>> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/{map}"))?;
            extents(&text).ok_or_else(|| io::Error::other(format!("a malformed {map}: {text:?}")))
        };
        Ok(Translation {
            uids: read("uid_map")?,
            gids: read("gid_map")?,
        })
    }

    pub fn uid(&self, host: u32) -> Option<u32> {
        inside(&self.uids, host)
    }

    pub fn gid(&self, host: u32) -> Option<u32> {
        inside(&self.gids, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_translate_through_the_map_and_others_have_none() {
        let ours = extents(&format!("         0 {OUTSIDE} {COUNT}\n")).unwrap();
        assert_eq!(inside(&ours, OUTSIDE), Some(0));
        assert_eq!(inside(&ours, OUTSIDE + 65534), Some(65534));
        assert_eq!(inside(&ours, 0), None);
        assert_eq!(inside(&ours, u32::MAX), None);
        let init = extents("0 0 4294967295\n").unwrap();
        assert_eq!(inside(&init, 1000), Some(1000));
        assert_eq!(extents("0 0\n"), None);
    }
}
