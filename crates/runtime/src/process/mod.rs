//! The process's kernel state: everything the runtime keeps for the
//! process it serves, one value reached by the layers above (`syscall`,
//! `trap`) and made of the subsystems' own state (`mm`, `vfs`, `task`).
//!
//! [`state`] takes all of it as one plain value (for checkpoints and
//! moves). [`procfs`] renders the /proc files that describe the program rather
//! than the runtime's host process.
//!
//! May call: `mm`, `vfs`, `task`, `host`. Invariant: nothing here calls
//! up into `syscall` or `trap`.

pub mod control;
pub mod credentials;
pub mod processor;
pub mod procfs;
pub mod state;

use crate::host::report::fatal;
use crate::mm::Memory;
use crate::task::signals::SignalState;
use crate::task::threads::Threads;
use crate::vfs::{FileTable, Vfs};
use lego_transport::ClusterSecret;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicI32;
use std::sync::{Mutex, OnceLock, RwLock};

/// What the program looks like from /proc.
#[derive(Default)]
pub struct ProcessView {
    /// argv, each NUL-terminated.
    pub cmdline: Vec<u8>,
    /// The environment the program started with, each NUL-terminated.
    pub environ: Vec<u8>,
    /// The auxiliary vector given to the program.
    pub auxv: Vec<u8>,
    pub stack_top: u64,
    /// The home memory manager's pool, and what was unpromised of it when
    /// the process was placed.
    pub memory_capacity: u64,
    pub memory_available: u64,
    /// RLIMIT_NOFILE (soft, hard) as the program set it, where that is
    /// below what the runtime keeps on the host for its own descriptors
    /// (`None`: the host's limit is the program's).
    pub nofile: Option<(u64, u64)>,
}

/// The runtime's state, shared by the fault thread and the syscall handler.
pub struct Runtime {
    /// The address space: arena, ExCache, the memory manager's client.
    pub mm: Memory,
    /// The program's path, for /proc/self/exe.
    pub program: Mutex<Vec<u8>>,
    pub signals: Mutex<SignalState>,
    /// What /proc/self/{cmdline,auxv,maps} show of the running program.
    pub process: Mutex<ProcessView>,
    /// The program's files, when a storage manager serves them (else the
    /// processor's own files are passed through).
    pub vfs: Option<Vfs>,
    /// The open files the runtime keeps (storage files, and the files it
    /// serves itself), whatever the file source.
    pub files: FileTable,
    /// The application's threads.
    pub threads: Threads,
    /// The host descriptors this process's forks keep.
    pub forks: Forks,
    /// Descriptors the runtime opened, sorted: not the application's. Set
    /// just before the application starts, and again in a forked process.
    pub(crate) runtime_fds: RwLock<Vec<RawFd>>,
    /// What a forked process needs to announce itself to the processor.
    pub home: Home,
}

/// The host descriptors of forks under way (see `syscall::fork`).
pub struct Forks {
    /// Forks of this process happen one at a time; the vfork pipes whose
    /// write ends are open are listed here, so a child made by another
    /// thread meanwhile closes those it inherited (it never execs on the
    /// host, so close-on-exec would never close them, and its parent
    /// would wait on).
    pub forking: Mutex<Vec<RawFd>>,
    /// In a vfork child: the write end of the pipe its parent waits on,
    /// closed when the child execs (or, with the process, when it ends);
    /// -1 otherwise.
    pub vfork_done: AtomicI32,
}

impl Default for Forks {
    fn default() -> Forks {
        Forks {
            forking: Mutex::new(Vec::new()),
            vfork_done: AtomicI32::new(-1),
        }
    }
}

/// The process's key. Set at start and, in a forked child, before any
/// other thread exists; read by any thread without a lock (a fork while
/// another thread read it would leave a lock held in the child).
/// On the heap: the `Runtime` it is part of is built on the stack first.
pub struct KeyCell(Box<[std::sync::atomic::AtomicU64; 4]>);

impl KeyCell {
    pub fn new(key: &ClusterSecret) -> KeyCell {
        let cell = KeyCell(Box::default());
        cell.set(key);
        cell
    }

    pub fn get(&self) -> ClusterSecret {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(self.0.iter()) {
            chunk.copy_from_slice(&word.load(std::sync::atomic::Ordering::SeqCst).to_ne_bytes());
        }
        ClusterSecret::from_bytes(bytes)
    }

    /// Replaces the key; the old one is overwritten.
    pub fn set(&self, key: &ClusterSecret) {
        let bytes = key.to_bytes();
        for (chunk, word) in bytes.chunks_exact(8).zip(self.0.iter()) {
            let value = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            word.store(value, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Where this process lives: its processor, its tree, and its own key
/// (never the cluster secret).
pub struct Home {
    pub key: KeyCell,
    pub tree: lego_proto::ProcessId,
    /// The processor's abstract socket name.
    pub processor_socket: Vec<u8>,
    pub processor_name: String,
    pub excache: u64,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Makes `rt` the process's kernel state, once, before the application
/// runs; the trap layer finds it with [`runtime`].
pub fn install(rt: Runtime) -> Result<&'static Runtime, String> {
    RUNTIME
        .set(rt)
        .map_err(|_| "runtime bug: started twice".to_string())?;
    crate::host::report::set_stats_source(|| runtime().mm.cache.stats());
    Ok(runtime())
}

/// The process's kernel state, for the trap layer's entries (everything
/// below them is handed it); only called once the application is running.
pub fn runtime() -> &'static Runtime {
    match RUNTIME.get() {
        Some(rt) => rt,
        None => fatal("runtime bug: used before it was set up"),
    }
}

impl Runtime {
    /// Whether descriptor argument `fd` names one of the runtime's own
    /// descriptors. The kernel reads descriptor arguments as 32-bit
    /// integers, so only the low 32 bits count (high bits cannot alias).
    pub fn is_runtime_fd(&self, fd: u64) -> bool {
        let fd = fd as u32 as i32;
        self.runtime_fds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .binary_search(&fd)
            .is_ok()
            || lego_transport::fdfloor::is_lifted(fd)
    }

    /// The runtime's descriptors, sorted: those it held when the program
    /// started, and every connection it opened since (all above the floor).
    pub fn runtime_fds(&self) -> Vec<RawFd> {
        let mut fds = self
            .runtime_fds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        fds.extend(lego_transport::fdfloor::lifted());
        fds.sort_unstable();
        fds.dedup();
        fds
    }

    /// Fixes which descriptors are the runtime's besides the connections
    /// it opens (see `runtime_fds`): those open now, for a runtime about
    /// to start the program; in a forked process, the inherited ones still
    /// open.
    pub fn set_runtime_fds(&self, fds: Vec<RawFd>) {
        *self.runtime_fds.write().unwrap_or_else(|p| p.into_inner()) = fds;
    }

    /// Reports the ExCache counters (and an error, if the runtime is ending
    /// the process) to the processor, once.
    pub fn finish(&self, error: Option<String>) {
        crate::host::report::finish(error);
    }
}
