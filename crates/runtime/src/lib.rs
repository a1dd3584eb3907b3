//! The Lego runtime: a library OS that lives in the application's process.
//!
//! A processor manager starts one runtime per application process. The
//! runtime reserves the application's whole address space as an arena
//! registered with userfaultfd ([`arena`]), has the home memory manager
//! build the address space from the program ([`remote`]), starts the fault
//! thread that serves ExCache misses ([`fault`], [`excache`]), writes the
//! initial stack ([`stack`]), and jumps to the program with Syscall User
//! Dispatch on ([`sud`]). From then on the runtime runs only when the
//! application makes a syscall ([`syscall`]) or touches a page that is not
//! resident.
//!
//! Must not: touch the application's memory while holding the ExCache
//! lock; make a syscall on an application thread while its selector is
//! BLOCK; let the application reach the runtime's descriptors or SIGSYS.

pub mod arena;
pub mod excache;
pub mod exec;
mod fault;
pub mod interp;
pub mod live;
pub mod procfs;
pub mod ranges;
pub mod remote;
pub mod stack;
pub mod sud;
pub mod syscall;
pub mod uffd;
mod user;
pub mod vfs;

use arena::Arena;
use excache::{ExCache, Fifo};
use lego_proto::{ExcacheStats, ProcessId};
use lego_transport::ClusterSecret;
use remote::RemoteMemory;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

/// Exit status of a runtime that ended the process itself (a lost memory
/// manager, an unloadable program); the report says why.
pub const RUNTIME_FAILURE_EXIT: i32 = 125;

/// Descriptors a processor hands a runtime, besides the program's 0-2.
pub const SPEC_FD: RawFd = 3;
pub const REPORT_FD: RawFd = 4;
pub const LOG_FD: RawFd = 5;

/// Where the report descriptor lives once moved above the floor.
static REPORT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(REPORT_FD);

/// The lowest descriptor number the runtime keeps its own descriptors at:
/// near the top of the soft descriptor limit, so the program's own
/// descriptors start at 3 as natively and its calls on small numbers never
/// reach the runtime's.
fn descriptor_floor() -> RawFd {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes one rlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1024) as RawFd
    } else {
        1024
    };
    (soft - 64).max(64)
}

/// What a processor tells a new runtime (written to [`SPEC_FD`]).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RuntimeSpec {
    pub pid: ProcessId,
    /// Absolute path of the program file.
    pub program: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub envp: Vec<Vec<u8>>,
    pub excache: u64,
    pub memory: SocketAddr,
    pub memory_name: String,
    /// The home memory manager's capacity and what was free of it at launch.
    pub memory_capacity: u64,
    pub memory_available: u64,
    /// The storage manager serving the program's files, if any; else the
    /// processor's own files are used.
    pub storage: Option<SocketAddr>,
    pub storage_name: String,
    /// How long to wait for an unreachable storage manager.
    pub storage_retry_ms: u64,
    /// The working directory the program starts in.
    pub cwd: Vec<u8>,
    pub secret_hex: String,
    /// The processor's launch socket and name: a forked process's runtime
    /// announces itself there.
    pub processor_socket: Vec<u8>,
    pub processor_name: String,
}

/// What a runtime tells its processor when the process ends (written to
/// [`REPORT_FD`]).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RuntimeReport {
    pub stats: ExcacheStats,
    pub error: Option<String>,
}

/// The runtime's state, shared by the fault thread and the syscall handler.
pub struct Runtime {
    pub arena: Arena,
    pub cache: ExCache,
    pub remote: RemoteMemory,
    /// The program's path, for /proc/self/exe.
    pub program: Mutex<Vec<u8>>,
    pub signals: Mutex<syscall::signal::SignalState>,
    /// What /proc/self/{cmdline,auxv,maps} show of the running program.
    pub process: Mutex<procfs::ProcessView>,
    /// The program's files, when a storage manager serves them (else the
    /// processor's own files are passed through).
    pub vfs: Option<vfs::Vfs>,
    /// Descriptors the runtime opened, sorted: not the application's. Set
    /// just before the application starts, and again in a forked process.
    runtime_fds: RwLock<Vec<RawFd>>,
    reported: AtomicBool,
    /// What a forked process needs to announce itself to the processor.
    pub home: Home,
}

/// Where this process lives: its processor and the cluster's secret.
pub struct Home {
    pub secret: ClusterSecret,
    pub processor_socket: Vec<u8>,
    pub processor_name: String,
    pub excache: u64,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime; only called once the application is running.
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
        if self.reported.swap(true, Ordering::SeqCst) {
            return;
        }
        write_report(&RuntimeReport {
            stats: self.cache.stats(),
            error,
        });
    }
}

fn write_report(report: &RuntimeReport) {
    let fd = REPORT.load(std::sync::atomic::Ordering::SeqCst);
    if fd < 0 {
        // A forked process that could not announce itself: nobody to tell.
        return;
    }
    if let Ok(bytes) = postcard::to_stdvec(report) {
        // Safety: REPORT_FD was handed to us by the processor for this; the
        // File is forgotten so the descriptor is not closed twice.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = file.write_all(&bytes);
        std::mem::forget(file);
    }
}

/// Ends the process because the runtime cannot go on, telling the processor
/// why. Safe to call from any runtime thread.
pub fn fatal(message: &str) -> ! {
    tracing::error!("{message}");
    static ENDING: AtomicBool = AtomicBool::new(false);
    if !ENDING.swap(true, Ordering::SeqCst) {
        match RUNTIME.get() {
            Some(rt) => rt.finish(Some(message.to_string())),
            None => write_report(&RuntimeReport {
                stats: ExcacheStats::default(),
                error: Some(message.to_string()),
            }),
        }
    }
    // Safety: ends the whole process at once, application included.
    unsafe { libc::_exit(RUNTIME_FAILURE_EXIT) }
}

fn read_spec() -> Result<RuntimeSpec, String> {
    // Safety: SPEC_FD is the read end of the processor's pipe, ours alone.
    let mut file = unsafe { std::fs::File::from_raw_fd(SPEC_FD) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the runtime spec: {e}"))?;
    postcard::from_bytes(&bytes).map_err(|e| format!("malformed runtime spec: {e}"))
}

/// Makes `fd` the descriptor the end-of-process report goes to (a forked
/// process's connection to its processor), closing the inherited one.
pub fn set_report_fd(fd: RawFd) {
    let old = REPORT.swap(fd, std::sync::atomic::Ordering::SeqCst);
    if old != fd {
        // Safety: the old report descriptor is the runtime's own, and no
        // longer used once swapped out.
        unsafe { libc::close(old) };
    }
}

/// Descriptors open now, other than 0-2 (the application's stdio).
pub fn open_fds() -> Vec<RawFd> {
    // thread-self: the first thread may have ended (an execve from
    // another), and /proc/self then shows no descriptors.
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/thread-self/fd")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    // The listing saw its own directory descriptor, closed by now.
    // Safety: F_GETFD only queries the descriptor table.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    fds.sort_unstable();
    fds
}

/// Restores default dispositions for the synchronous signals: Rust's
/// runtime installs handlers that read thread-locals, which would read the
/// application's memory once it owns the FS base.
fn default_fault_signals() {
    // SIGPIPE too: Rust's start-up ignores it, and the application must
    // start with the default action, as after a Linux exec.
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGPIPE,
    ] {
        // Safety: installing SIG_DFL has no memory effects.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// The shared page the processor reads this process's live counters from.
pub static LIVE: OnceLock<live::LiveStats> = OnceLock::new();

/// Maps the live-counters page handed over as [`live::STATS_FD`] and frees
/// the descriptor number for the program (a runtime started without one
/// just has no live counters).
fn attach_live_stats() {
    if let Ok(stats) = live::LiveStats::map(live::STATS_FD) {
        let _ = LIVE.set(stats);
    }
    // Safety: STATS_FD was handed to us for this mapping only.
    unsafe { libc::close(live::STATS_FD) };
}

/// The runtime's entry point: reads its spec, loads the program and runs
/// it. Never returns; every failure ends the process through [`fatal`].
pub fn main() -> ! {
    lego_transport::fdfloor::set_floor(descriptor_floor());
    if let Ok(fd) = lego_transport::fdfloor::lift_fd(REPORT_FD) {
        REPORT.store(fd, std::sync::atomic::Ordering::SeqCst);
    }
    attach_live_stats();
    init_logging();
    // A panic is a runtime bug: report it to the processor and end the
    // process, never print to the application's stderr.
    std::panic::set_hook(Box::new(|info| fatal(&format!("runtime bug: {info}"))));
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(e) => fatal(&e),
    };
    if let Err(e) = start(spec) {
        fatal(&e);
    }
    unreachable!("start returns only on error")
}

fn start(spec: RuntimeSpec) -> Result<(), String> {
    let program = String::from_utf8_lossy(&spec.program).into_owned();
    if !sud::fsgsbase_available() {
        return Err("this CPU or kernel does not allow FSGSBASE, which the runtime needs".into());
    }
    let secret = ClusterSecret::parse_hex(&spec.secret_hex)
        .ok_or("malformed cluster secret in the runtime spec")?;
    // The program starts where `lego run` was started (on the processor's
    // host too, so that host paths relative to it mean the same).
    let cwd = std::ffi::OsStr::from_bytes(&spec.cwd);
    let vfs = match spec.storage {
        Some(addr) => {
            let storage = vfs::storage::RemoteStorage::connect(
                addr,
                spec.storage_name.clone(),
                secret.clone(),
                spec.pid,
                std::time::Duration::from_millis(spec.storage_retry_ms),
            );
            let _ = std::env::set_current_dir(cwd);
            Some(vfs::Vfs::new(storage, &spec.cwd).map_err(|e| match e {
                vfs::storage::StorageError::Lost(why) => why,
                vfs::storage::StorageError::Errno(errno) => format!(
                    "the storage manager {} refused the export root: {}",
                    spec.storage_name,
                    std::io::Error::from_raw_os_error(errno.0)
                ),
            })?)
        }
        None => {
            if let Err(e) = std::env::set_current_dir(cwd) {
                return Err(format!(
                    "cannot enter the working directory {}: {e}",
                    cwd.to_string_lossy()
                ));
            }
            None
        }
    };
    let arena = Arena::reserve().map_err(|e| e.to_string())?;
    let remote = RemoteMemory::connect(
        spec.memory,
        spec.memory_name.clone(),
        secret.clone(),
        spec.pid,
    );
    let prepared =
        exec::prepare(vfs.as_ref(), &spec.program, spec.argv.clone()).map_err(|e| e.message)?;
    let image = match remote.exec(&prepared.image)? {
        Ok(image) => image,
        Err(refusal) => return Err(format!("cannot load {program}: {refusal}")),
    };
    let rt = Runtime {
        arena,
        cache: ExCache::new(spec.excache, Box::new(Fifo::default())),
        remote,
        program: Mutex::new(spec.program.clone()),
        signals: syscall::signal::SignalState::new(),
        process: Mutex::new(procfs::ProcessView {
            memory_capacity: spec.memory_capacity,
            memory_available: spec.memory_available,
            ..procfs::ProcessView::default()
        }),
        vfs,
        runtime_fds: RwLock::new(Vec::new()),
        reported: AtomicBool::new(false),
        home: Home {
            secret: secret.clone(),
            processor_socket: spec.processor_socket.clone(),
            processor_name: spec.processor_name.clone(),
            excache: spec.excache,
        },
    };
    if RUNTIME.set(rt).is_err() {
        return Err("runtime bug: started twice".into());
    }
    let rt = runtime();
    fault::spawn(rt).map_err(|e| format!("cannot start the fault thread: {e}"))?;
    let sp = exec::install(rt, &image, &prepared, &spec.envp, &spec.program)?;

    // No core dumps of a 64 TiB arena; the application's faults end it.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: setrlimit reads one rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    default_fault_signals();
    sud::install_sigsys_handler().map_err(|e| format!("cannot install the SIGSYS handler: {e}"))?;
    sud::install_exec_kill_action()
        .map_err(|e| format!("cannot install the runtime's thread-ending signal: {e}"))?;
    syscall::thread::register_main_thread();
    // The first thread's stack is never removed: it ends with the process.
    std::mem::forget(
        sud::AltStack::install(sud::SIGSYS_STACK)
            .map_err(|e| format!("cannot set up the signal stack: {e}"))?,
    );
    rt.remote.open_connections()?;
    // The runtime's descriptors are fixed from here on.
    rt.set_runtime_fds(open_fds());
    tracing::info!(
        "starting {program} (pid {:x}): entry {:#x}, stack {:#x}, ExCache {} bytes",
        spec.pid,
        image.entry,
        sp,
        spec.excache
    );
    let ctl = Box::leak(Box::new(sud::ThreadCtl::new()));
    // Safety: the handler and alternate stack are installed, `ctl` is
    // leaked, and `image`/`sp` describe the program just loaded.
    unsafe { sud::enter_application(ctl, image.entry, sp) }
}

/// Logs go to [`LOG_FD`] (the processor's log), never to stderr, which is
/// the application's. Each line is written with one write(2) and no lock,
/// so a fork while another thread logs cannot leave a forked process
/// waiting on a lock forever.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // Safety: LOG_FD was handed to us for logging; the File owns it from
    // here on and lives as long as the subscriber (the whole process).
    let log_fd = lego_transport::fdfloor::lift_fd(LOG_FD).unwrap_or(LOG_FD);
    let log = unsafe { std::fs::File::from_raw_fd(log_fd) };
    let filter = EnvFilter::try_from_env("LEGO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Arc::new(log))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
