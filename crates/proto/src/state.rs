//! A process's whole kernel state as one value: what a runtime holds for
//! the program it serves (threads, signals, files, credentials, limits,
//! the address-space layout and the program image), taken at a syscall
//! boundary with every other thread stopped. It is plain data, so it
//! serializes like every other message; checkpoints and migration save
//! and restore it. The pages themselves are not in it: they live on the
//! memory managers.

use serde::{Deserialize, Serialize};

/// Signals of one thread or of the whole process, bit `n - 1` for signal `n`.
pub type SigSet = u64;

/// One process's kernel state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// The program's image and arguments.
    pub image: ImageState,
    /// Every application thread, the one that took the state first.
    pub threads: Vec<ThreadState>,
    pub signals: SignalsState,
    /// Every descriptor the program holds, by number.
    pub files: Vec<FileState>,
    /// The working directory's absolute path.
    pub cwd: Vec<u8>,
    pub umask: u32,
    pub credentials: Credentials,
    /// Every resource limit, by resource number.
    pub limits: Vec<Limit>,
    /// The address-space layout the runtime mirrors.
    pub memory: MemoryLayout,
}

/// The program being run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageState {
    /// Its path (/proc/self/exe).
    pub program: Vec<u8>,
    /// argv, each NUL-terminated.
    pub cmdline: Vec<u8>,
    /// The auxiliary vector it was given.
    pub auxv: Vec<u8>,
    /// The top of its initial stack.
    pub stack_top: u64,
}

/// One thread, stopped at a syscall boundary or between two instructions
/// of its own code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    /// Its host tid.
    pub tid: i32,
    /// Where it stopped.
    pub stop: Stop,
    /// The general registers in glibc's `gregs` order (r8 .. cr2):
    /// `REG_RAX` is 13, `REG_RIP` 16, `REG_RDI` 8, `REG_R12` 4.
    pub regs: Vec<i64>,
    /// The FS base (its TLS).
    pub fs_base: u64,
    /// The kernel-format FPU state (an xsave area, or a 512-byte fxsave).
    pub fpu: Vec<u8>,
    /// Its signal mask.
    pub mask: SigSet,
    /// The mask sigsuspend replaced, restored when its signal's handler
    /// returns (`None`: not in sigsuspend).
    pub suspended_mask: Option<SigSet>,
    /// Signals pending for this thread alone.
    pub pending: SigSet,
    /// Its clear-tid word (`set_tid_address`, CLONE_CHILD_CLEARTID; 0: none).
    pub clear_tid: u64,
}

/// Where a thread was when its state was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stop {
    /// It took the state: its registers are those of that call.
    Taker,
    /// In the middle of its own code (a signal stopped it there).
    Running,
    /// Returning from a call (the result is in `rax`).
    CallDone,
    /// About to make the call in `rax` again: it was waiting in it, and
    /// makes it again when it runs on, as Linux restarts a call
    /// interrupted without a handler.
    CallRestart,
    /// Inside the call in `rax`, which goes on when it runs on (a vfork
    /// parent waiting for its child to exec or end).
    InCall,
}

/// The signal dispositions and the process-wide signal state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalsState {
    /// Signals 1 to 64, in order.
    pub actions: Vec<SigAction>,
    /// The alternate signal stack.
    pub altstack: AltStack,
    /// Signals pending for the process as a whole.
    pub pending: SigSet,
}

/// One signal's disposition, as `rt_sigaction` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    /// SIG_DFL (0), SIG_IGN (1) or the handler's address.
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: SigSet,
}

/// `stack_t`: where handlers asking for it run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

/// One descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub fd: i32,
    pub cloexec: bool,
    pub open: OpenState,
}

/// What a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenState {
    /// A file of the storage manager's, which keeps no open state: the
    /// handle, offset and flags are all there is.
    Storage {
        handle: Vec<u8>,
        /// The absolute path it was opened by.
        path: Vec<u8>,
        /// Access mode and status flags (`O_ACCMODE | O_APPEND | ...`).
        status: u32,
        offset: u64,
        /// Where `getdents64` goes on.
        dir_cookie: u64,
        directory: bool,
        /// A file the runtime serves itself (/proc/self/maps and the
        /// like): its contents, fixed when it was opened.
        content: Option<Vec<u8>>,
    },
    /// An object of the processor's host kernel (a pipe, a socket, a
    /// terminal, a host file).
    Host {
        /// What /proc/self/fd shows for it (`pipe:[123]`, a path).
        target: Vec<u8>,
        /// Access mode and status flags (F_GETFL).
        status: u32,
        /// Its offset (`None`: not seekable).
        offset: Option<u64>,
    },
}

/// User and group ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Real, effective and saved user ids.
    pub uid: [u32; 3],
    /// Real, effective and saved group ids.
    pub gid: [u32; 3],
    pub groups: Vec<u32>,
}

/// One resource limit (`RLIM_INFINITY` is `u64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The ranges of the address space, as the runtime mirrors the memory
/// manager's layout (the mappings' details are the memory manager's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    /// `[start, end)` ranges the memory manager has mapped.
    pub mapped: Vec<(u64, u64)>,
    /// Shared mappings of host objects, outside the ExCache.
    pub host_shared: Vec<(u64, u64)>,
}

impl ProcessState {
    /// The state as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// The state `bytes` hold; an error for anything else, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<ProcessState, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The fields where `other` differs from `self`, by name (empty:
    /// equal): what a round trip is checked with.
    pub fn differences(&self, other: &ProcessState) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, same: bool| {
            if !same {
                out.push(name.to_string());
            }
        };
        field("image", self.image == other.image);
        field("threads.len", self.threads.len() == other.threads.len());
        for (i, (a, b)) in self.threads.iter().zip(&other.threads).enumerate() {
            let name = |f: &str| format!("threads[{i}].{f}");
            field(&name("tid"), a.tid == b.tid);
            field(&name("stop"), a.stop == b.stop);
            field(&name("regs"), a.regs == b.regs);
            field(&name("fs_base"), a.fs_base == b.fs_base);
            field(&name("fpu"), a.fpu == b.fpu);
            field(&name("mask"), a.mask == b.mask);
            field(
                &name("suspended_mask"),
                a.suspended_mask == b.suspended_mask,
            );
            field(&name("pending"), a.pending == b.pending);
            field(&name("clear_tid"), a.clear_tid == b.clear_tid);
        }
        field(
            "signals.actions",
            self.signals.actions == other.signals.actions,
        );
        field(
            "signals.altstack",
            self.signals.altstack == other.signals.altstack,
        );
        field(
            "signals.pending",
            self.signals.pending == other.signals.pending,
        );
        field("files.len", self.files.len() == other.files.len());
        for (a, b) in self.files.iter().zip(&other.files) {
            field(&format!("files[fd {}]", a.fd), a == b);
        }
        field("cwd", self.cwd == other.cwd);
        field("umask", self.umask == other.umask);
        field("credentials", self.credentials == other.credentials);
        field("limits", self.limits == other.limits);
        field("memory", self.memory == other.memory);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProcessState {
        ProcessState {
            image: ImageState {
                program: b"/bin/true".to_vec(),
                cmdline: b"true\0".to_vec(),
                auxv: vec![1, 2, 3],
                stack_top: 0x7fff_0000,
            },
            threads: vec![ThreadState {
                tid: 7,
                stop: Stop::Taker,
                regs: (0..23).collect(),
                fs_base: 0x1000,
                fpu: vec![9; 512],
                mask: 1 << 9,
                suspended_mask: None,
                pending: 0,
                clear_tid: 0x2000,
            }],
            signals: SignalsState {
                actions: vec![
                    SigAction {
                        handler: 0,
                        flags: 0,
                        restorer: 0,
                        mask: 0
                    };
                    64
                ],
                altstack: AltStack {
                    sp: 0,
                    flags: 2,
                    size: 0,
                },
                pending: 0,
            },
            files: vec![FileState {
                fd: 3,
                cloexec: true,
                open: OpenState::Host {
                    target: b"pipe:[1]".to_vec(),
                    status: 0,
                    offset: None,
                },
            }],
            cwd: b"/".to_vec(),
            umask: 0o22,
            credentials: Credentials {
                uid: [0; 3],
                gid: [0; 3],
                groups: vec![],
            },
            limits: vec![Limit {
                resource: 7,
                soft: 1024,
                hard: u64::MAX,
            }],
            memory: MemoryLayout {
                mapped: vec![(0x1000, 0x2000)],
                host_shared: vec![],
            },
        }
    }

    #[test]
    fn a_state_round_trips_and_differences_name_the_field() {
        let state = sample();
        let back = ProcessState::from_bytes(&state.to_bytes().unwrap()).unwrap();
        assert!(state.differences(&back).is_empty());
        assert_eq!(state, back);
        let mut other = back.clone();
        other.threads[0].fpu[100] = 0;
        other.umask = 0o77;
        assert_eq!(
            state.differences(&other),
            vec!["threads[0].fpu".to_string(), "umask".to_string()]
        );
    }

    #[test]
    fn truncated_or_garbage_bytes_are_an_error() {
        let bytes = sample().to_bytes().unwrap();
        for len in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(ProcessState::from_bytes(&bytes[..len]).is_err(), "{len}");
        }
        assert!(ProcessState::from_bytes(&[0xff; 64]).is_err());
    }
}
