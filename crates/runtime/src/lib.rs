//! The Lego runtime: a library OS that lives in the application's process.
//!
//! A processor manager starts one runtime per application process. The
//! runtime reserves the application's whole address space as an arena
//! registered with userfaultfd, has the home memory manager build the
//! address space from the program, starts the fault thread that serves
//! ExCache misses, writes the initial stack, and jumps to the program with
//! Syscall User Dispatch on. From then on the runtime runs only when the
//! application makes a syscall or touches a page that is not resident.
//!
//! Layers, arrows one way (a test, `tests/module_graph.rs`, fails on a
//! cycle):
//!
//! ```text
//! lib (start) -> trap -> syscall -> image -> process -> mm, vfs, task -> host
//! ```
//!
//! - [`trap`]: the kernel's entries into the runtime (SIGSYS, signals).
//! - [`syscall`]: one file per family, dispatched through one table.
//! - [`image`]: loading a program (the start, and execve).
//! - [`process`]: the process's kernel state, one value.
//! - [`mm`]: the arena, the ExCache, its fault threads and the memory
//!   manager's client. [`vfs`]: files, the storage client, /proc.
//!   [`task`]: threads, signal state, calls made with the application's
//!   mask.
//! - [`host`]: raw syscalls, kernel interfaces, the report channel.
//!
//! Must not: touch the application's memory while holding the ExCache
//! lock; make a syscall on an application thread while its selector is
//! BLOCK; let the application reach the runtime's descriptors or SIGSYS.

pub mod error;
pub mod host;
pub mod image;
pub mod mm;
pub mod process;
pub mod syscall;
pub mod task;
pub mod trap;
pub mod vfs;

use host::report::fatal;
use lego_proto::runtime::{RuntimeSpec, LOG_FD, SPEC_FD};
use lego_transport::ClusterSecret;
use mm::arena::Arena;
use mm::excache::{ExCache, Fifo};
use mm::remote::RemoteMemory;
use mm::Memory;
use process::{Home, Runtime};
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, RwLock};

fn read_spec() -> Result<RuntimeSpec, String> {
    // Safety: SPEC_FD is the read end of the processor's pipe, ours alone.
    let mut file = unsafe { std::fs::File::from_raw_fd(SPEC_FD) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the runtime spec: {e}"))?;
    let spec = postcard::from_bytes(&bytes).map_err(|e| format!("malformed runtime spec: {e}"));
    // It holds the process's key: not left in freed memory (a forked
    // child would find its parent's there).
    bytes.fill(0);
    std::hint::black_box(&bytes);
    spec
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

/// The runtime's entry point: reads its spec, loads the program and runs
/// it. Never returns; every failure ends the process through [`fatal`].
pub fn main() -> ! {
    lego_transport::fdfloor::set_floor(host::fds::descriptor_floor());
    host::report::lift_report_fd();
    process::control::lift();
    host::uffd::adopt_device();
    host::live::attach();
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
    let RuntimeSpec {
        pid,
        launch: spec,
        tree,
        key_hex,
        voucher,
        processor_socket,
        processor_name,
    } = spec;
    let program = String::from_utf8_lossy(&spec.program).into_owned();
    // The program runs as who launched it; taken on first, while this is
    // the process's only thread (glibc changes ids on every thread by
    // signalling each, which the runtime's own threads never answer).
    // Nothing below needs more: the processor handed over
    // /dev/userfaultfd.
    process::credentials::assume(&voucher)?;
    if !task::thread::fsgsbase_available() {
        return Err("this CPU or kernel does not allow FSGSBASE, which the runtime needs".into());
    }
    // The process's key, not the cluster secret: all this process may
    // authenticate as is itself.
    let key =
        ClusterSecret::parse_hex(&key_hex).ok_or("malformed process key in the runtime spec")?;
    let mut key_hex = key_hex.into_bytes();
    key_hex.fill(0);
    std::hint::black_box(&key_hex);
    drop(key_hex);
    let identity = lego_transport::Identity::process(tree, pid);
    // The program starts where `lego run` was started (on the processor's
    // host too, so that host paths relative to it mean the same).
    let cwd = std::ffi::OsStr::from_bytes(&spec.cwd);
    let vfs = match spec.storage {
        Some(addr) => {
            let storage = vfs::storage::RemoteStorage::connect(
                addr,
                spec.storage_name.clone(),
                key.clone(),
                identity.clone(),
                voucher.clone(),
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
    // Unless the processor handed it over: the program's forks make
    // their userfaultfds through it after any setuid.
    host::uffd::open_device();
    host::open_proc_root();
    let arena = Arena::reserve().map_err(|e| e.to_string())?;
    let remote = RemoteMemory::connect(
        lego_proto::MemoryHome {
            primary: lego_proto::MemoryHolder {
                name: spec.memory_name.clone(),
                addr: spec.memory,
            },
            backup: spec.memory_backup.clone(),
            epoch: 0,
        },
        key.clone(),
        identity,
        pid,
    );
    let prepared =
        image::prepare(vfs.as_ref(), &spec.program, spec.argv.clone()).map_err(|e| e.message)?;
    let loaded = match remote.exec(&prepared.image)? {
        Ok(loaded) => loaded,
        Err(refusal) => return Err(format!("cannot load {program}: {refusal}")),
    };
    let rt = Runtime {
        mm: Memory {
            arena,
            cache: ExCache::new(spec.excache, Box::new(Fifo::default())),
            remote,
        },
        program: Mutex::new(spec.program.clone()),
        signals: task::signals::SignalState::new(),
        process: Mutex::new(process::ProcessView {
            memory_capacity: spec.memory_capacity,
            memory_available: spec.memory_available,
            ..process::ProcessView::default()
        }),
        vfs,
        files: vfs::FileTable::default(),
        threads: task::threads::Threads::new(),
        forks: process::Forks::default(),
        runtime_fds: RwLock::new(Vec::new()),
        home: Home {
            key: process::KeyCell::new(&key),
            tree,
            processor_socket,
            processor_name,
            excache: spec.excache,
        },
    };
    let rt = process::install(rt)?;
    process::credentials::keep_vouched(rt);
    rt.mm.remote.set_failover(Box::new(move |home, failed| {
        process::processor::fail_over(rt, home, failed)
    }));
    mm::fault::spawn(&rt.mm).map_err(|e| format!("cannot start the fault thread: {e}"))?;
    process::control::serve(rt)?;
    let change = rt.mm.cache.change_layout();
    let sp = image::install(rt, change, &loaded, &prepared, &spec.envp, &spec.program)?;

    // No core dumps of a 64 TiB arena; the application's faults end it.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: setrlimit reads one rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    default_fault_signals();
    trap::install()?;
    rt.threads.register_main_thread();
    // The first thread's stack is never removed: it ends with the process.
    std::mem::forget(
        task::thread::AltStack::install(task::thread::SIGSYS_STACK)
            .map_err(|e| format!("cannot set up the signal stack: {e}"))?,
    );
    rt.mm.remote.open_connections()?;
    // The runtime's descriptors are fixed from here on.
    rt.set_runtime_fds(host::fds::open_fds());
    tracing::info!(
        "starting {program} (pid {:x}): entry {:#x}, stack {:#x}, ExCache {} bytes",
        pid,
        loaded.entry,
        sp,
        spec.excache
    );
    // Last: from here on the runtime makes none of the calls it refuses.
    syscall::backstop::install(syscall::backstop::Keeper::parent())?;
    let ctl = Box::leak(Box::new(task::dispatch::ThreadCtl::new()));
    // Safety: the handler and alternate stack are installed, `ctl` is
    // leaked, and `image`/`sp` describe the program just loaded.
    // The copies the runtime keeps are in its clients and `home`; this
    // one, and what the calls above left on this stack, would stay there
    // for good.
    drop(key);
    lego_transport::handshake::scrub_stack();
    unsafe { task::thread::enter_application(ctl, loaded.entry, sp) }
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
