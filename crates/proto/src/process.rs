//! Types of the process protocol: `lego run` asking a processor manager to
//! start a program, and learning how it ended.

use crate::memory::{ExcacheStats, ProcessId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Most argv plus envp entries a launch may carry, and their total size.
pub const MAX_ARGS: usize = 64 * 1024;
pub const MAX_ARGS_BYTES: usize = 2 << 20;

/// What to run, where its memory lives, and how.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The program, as the user named it (resolved by `lego run`).
    pub program: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub envp: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
    /// ExCache quota for this process, in bytes.
    pub excache: u64,
    /// The process's home memory manager.
    pub memory: SocketAddr,
    pub memory_name: String,
    /// The memory manager holding a copy of all of its memory, which takes
    /// over if the home is lost (`None`: no replica).
    pub memory_backup: Option<crate::memory::MemoryHolder>,
    /// Its pool's capacity, and how much of it was not yet promised to
    /// anyone when the process was placed (what /proc/meminfo reports).
    pub memory_capacity: u64,
    pub memory_available: u64,
    /// The storage manager serving its files; `None`: the processor's own
    /// files (host pass-through).
    pub storage: Option<SocketAddr>,
    pub storage_name: String,
    /// How long the program waits for an unreachable storage manager to
    /// come back (a restart) before it fails, in milliseconds.
    pub storage_retry_ms: u64,
    /// The program's stdin is a terminal of its own (a pseudo-terminal
    /// `lego run` relays): make it the controlling terminal of the
    /// program's session.
    pub controlling_tty: bool,
    /// How the program's stdin, stdout and stderr reach it.
    pub stdio: StdioSpec,
}

/// How a launched program's stdin, stdout and stderr reach it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum StdioSpec {
    /// `lego run` passed its descriptors with the request (SCM_RIGHTS on
    /// the same host): the program uses them as they are, and cannot move
    /// to another processor.
    Passed,
    /// Relayed over the launch connection: the processor gives the program
    /// pipes (or a terminal of its own) and copies bytes between them and
    /// `Input`/`Output` frames.
    Relayed(RelayedStdio),
}

/// The program's streams when relayed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RelayedStdio {
    /// A pseudo-terminal of the program's own, opened by the processor
    /// with these settings (the user's terminal's).
    pub terminal: Option<TerminalSettings>,
    /// Where stdin, stdout and stderr go.
    pub routes: [StreamRoute; 3],
}

/// Where one of a relayed program's standard streams goes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRoute {
    /// The program's terminal (`RelayedStdio::terminal`).
    Terminal,
    /// A pipe of its own.
    Pipe,
    /// stderr only: the same pipe as stdout (they were one open file at
    /// `lego run`, as after `2>&1`, so their order is kept).
    Stdout,
}

/// A terminal's settings (`struct termios`) and size.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TerminalSettings {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    /// Control characters (`c_cc`, 32 on Linux).
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
    pub size: WindowSize,
}

/// A terminal's size (`struct winsize`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// Relayed stdio's stream numbers in `Output` and `OutputClosed`: the
/// program's terminal, stdout, stderr.
pub const TERMINAL: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// Most bytes of stdin `lego run` sends ahead of the processor's
/// `InputTaken`: what a program that reads no input makes it hold back.
pub const INPUT_WINDOW: u64 = 256 << 10;

/// How a process ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code & 0xff,
            ExitStatus::Signal(sig) => 128 + sig,
        }
    }
}

/// The end of a process, as its processor saw it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExitReport {
    pub pid: ProcessId,
    pub status: ExitStatus,
    /// Set when the runtime, not the program, ended the process (a lost
    /// memory manager, an unloadable program): what went wrong.
    pub error: Option<String>,
    pub stats: Option<ExcacheStats>,
}

/// A process as its processor reports it to the monitor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: ProcessId,
    /// The runtime's pid on the processor's host.
    pub host_pid: u32,
    pub command: String,
    pub home_memory: String,
    /// The memory manager holding its backup, if it has one.
    pub backup_memory: Option<String>,
    pub excache_quota: u64,
    /// The Lego process that created it; `None` for one `lego run` started.
    pub parent: Option<ProcessId>,
    /// Its pages resident in the ExCache, and its misses so far (fetches
    /// from a memory manager), as its runtime last published them.
    pub resident_bytes: u64,
    pub misses: u64,
}

/// A process created by a fork, announced to its processor by its own
/// runtime (the processor did not start it: the parent's runtime process
/// forked). The request carries the page the runtime publishes its live
/// counters on, as a descriptor; the connection stays open while the
/// process lives, and its end closes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdoptSpec {
    pub pid: ProcessId,
    pub parent: ProcessId,
    /// The runtime's pid on the processor's host.
    pub host_pid: u32,
    pub command: String,
    /// The home memory manager (the parent's: the copy lives beside it),
    /// and the backup, as the parent's are now.
    pub memory: SocketAddr,
    pub memory_name: String,
    pub memory_backup: Option<crate::memory::MemoryHolder>,
    pub excache: u64,
}

/// Why a program was not started, as a shell would say it: exit status
/// 126 (found, not runnable) or 127 (not found) and the message.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NotRun {
    pub status: u8,
    pub message: String,
}

/// Finds `program` as execvp would: a name with a slash is a path, any
/// other name is looked up in `path_var` (the caller's PATH; a default
/// without one). `stat` tells (is a directory, mode) of a candidate, or
/// `None` if it is not there. The candidate found, as named (relative
/// when the name or the PATH entry was).
pub fn resolve_program(
    program: &[u8],
    path_var: Option<&[u8]>,
    stat: impl Fn(&[u8]) -> Option<(bool, u32)>,
) -> Result<Vec<u8>, NotRun> {
    let shown = String::from_utf8_lossy(program);
    let candidates: Vec<Vec<u8>> = if program.contains(&b'/') {
        vec![program.to_vec()]
    } else {
        path_var
            .unwrap_or(b"/usr/local/bin:/usr/bin:/bin")
            .split(|&b| b == b':')
            .map(|dir| match dir {
                // An empty entry is the working directory.
                b"" => program.to_vec(),
                dir => [dir, b"/", program].concat(),
            })
            .collect()
    };
    let mut denied = None;
    for candidate in &candidates {
        let Some((is_dir, mode)) = stat(candidate) else {
            continue;
        };
        if is_dir {
            denied.get_or_insert((candidate, "Is a directory"));
            continue;
        }
        if mode & 0o111 == 0 {
            denied.get_or_insert((candidate, "Permission denied"));
            continue;
        }
        return Ok(candidate.clone());
    }
    Err(match denied {
        Some((path, why)) => NotRun {
            status: 126,
            message: format!("{}: {why}", String::from_utf8_lossy(path)),
        },
        None if candidates.len() == 1 => NotRun {
            status: 127,
            message: format!("{shown}: No such file or directory"),
        },
        None => NotRun {
            status: 127,
            message: format!("{shown}: command not found"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_as_execvp_finds_them() {
        let files = |p: &[u8]| match p {
            b"/bin/sh" => Some((false, 0o755)),
            b"/usr/bin/data" => Some((false, 0o644)),
            b"/usr/bin/dir" => Some((true, 0o755)),
            b"tool" => Some((false, 0o700)),
            _ => None,
        };
        let path = Some(&b"/usr/bin:/bin"[..]);
        assert_eq!(resolve_program(b"sh", path, files).unwrap(), b"/bin/sh");
        assert_eq!(
            resolve_program(b"./x", path, files).unwrap_err().status,
            127
        );
        let denied = resolve_program(b"data", path, files).unwrap_err();
        assert_eq!(
            (denied.status, &denied.message[..]),
            (126, "/usr/bin/data: Permission denied")
        );
        assert_eq!(
            resolve_program(b"dir", path, files).unwrap_err().status,
            126
        );
        let missing = resolve_program(b"nope", path, files).unwrap_err();
        assert_eq!(missing.message, "nope: command not found");
        assert_eq!(
            resolve_program(b"tool", Some(b":/bin"), files).unwrap(),
            b"tool"
        );
    }
}
