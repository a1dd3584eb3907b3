//! New processes: fork, vfork, and clone without CLONE_THREAD.
//!
//! The parent's runtime writes every dirty ExCache page back, has the home
//! memory manager make a copy-on-write copy of the address space for the
//! child (no page crosses the processor), and then forks its own host
//! process. The host child is the new process's runtime: it starts from the
//! parent's registers (it returns from the very same SIGSYS handler, with
//! 0), keeps the runtime's state (signal dispositions and mask, the file
//! table, the working directory), and inherits every host descriptor as
//! Linux's fork does. Before the program runs again it makes itself a
//! runtime of its own: a new userfaultfd over an emptied arena (every page
//! now comes from the copy), new connections, a fault thread, Syscall User
//! Dispatch (not inherited), and it announces itself to its processor,
//! which lists it and frees its memory when it ends.
//!
//! Because the host child is the host process of the application's child,
//! the kernel keeps the process relations: wait4 and waitid (statuses and
//! rusage), SIGCHLD, getppid, process groups, sessions and the terminal's
//! foreground group, and orphans' reparenting are the host's. Children run
//! on the parent's processor: their inherited pipes, sockets and terminals
//! are that host's kernel objects.

use super::contract::{ok, Call, Ctx, Errno, SysError, SysResult};
use crate::host::raw_syscall;
use crate::host::user;
use crate::process::Runtime;
use lego_proto::{AdoptSpec, Message, ProcessId};
use lego_transport::fdpass::send_fds;
use lego_transport::write_frame;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use crate::task::threads::{
    self, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID, CLONE_PARENT_SETTID, CLONE_SETTLS, CLONE_VM,
};

const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;
const EXIT_SIGNAL: u64 = 0xff;

/// What the new process starts with, from clone's arguments.
struct Request {
    flags: u64,
    stack: u64,
    parent_tid: u64,
    child_tid: u64,
    tls: u64,
}

pub fn fork(cx: &mut Ctx, _c: &Call) -> SysResult {
    new_process(
        cx,
        Request {
            flags: libc::SIGCHLD as u64,
            stack: 0,
            parent_tid: 0,
            child_tid: 0,
            tls: 0,
        },
    )
}

/// vfork: the parent waits until the child execs or ends. The child runs
/// on a copy of the address space, not the parent's memory: what it writes
/// before exec stays its own (programs may only call exec or _exit there).
pub fn vfork(cx: &mut Ctx, _c: &Call) -> SysResult {
    new_process(
        cx,
        Request {
            flags: CLONE_VM | CLONE_VFORK | libc::SIGCHLD as u64,
            stack: 0,
            parent_tid: 0,
            child_tid: 0,
            tls: 0,
        },
    )
}

/// clone without CLONE_THREAD: a new process. CLONE_VM only with
/// CLONE_VFORK (posix_spawn's way), served as vfork.
pub fn clone_process(
    cx: &mut Ctx,
    flags: u64,
    stack: u64,
    parent_tid: u64,
    child_tid: u64,
    tls: u64,
) -> SysResult {
    let known = CLONE_VM
        | CLONE_VFORK
        | CLONE_SETTLS
        | CLONE_PARENT_SETTID
        | CLONE_CHILD_SETTID
        | CLONE_CHILD_CLEARTID
        | EXIT_SIGNAL;
    if flags & !known != 0 || (flags & CLONE_VM != 0 && flags & CLONE_VFORK == 0) {
        tracing::warn!(
            "clone of a process with flags {flags:#x} refused with EINVAL: a new process \
             can share nothing with its parent but a vfork's wait"
        );
        return Err(Errno::EINVAL.into());
    }
    if flags & EXIT_SIGNAL != libc::SIGCHLD as u64 {
        tracing::warn!(
            "clone with exit signal {}: the parent is sent SIGCHLD instead",
            flags & EXIT_SIGNAL
        );
    }
    new_process(
        cx,
        Request {
            flags,
            stack,
            parent_tid,
            child_tid,
            tls,
        },
    )
}

/// A new cluster-wide process id (random, as a processor picks them).
fn new_pid() -> ProcessId {
    let mut bytes = [0u8; 8];
    // Safety: getrandom writes at most 8 bytes into `bytes`.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 8, 0) };
    u64::from_ne_bytes(bytes) >> 1
}

/// A close-on-exec pipe above the descriptor floor: (read end, write end).
fn pipe_above_floor() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // Safety: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let read = lego_transport::fdfloor::lift_fd(fds[0])?;
    let write = lego_transport::fdfloor::lift_fd(fds[1])?;
    Ok((read, write))
}

fn close(fd: RawFd) {
    // Safety: closes a descriptor of the runtime's own.
    unsafe { libc::close(fd) };
}

/// Every lock of the runtime a forked child needs, taken before the host
/// fork as `pthread_atfork` handlers take theirs: a lock another thread
/// held at the fork would stay held forever in the child, where that
/// thread does not exist. Order: the leaf tables, then the cache, then
/// the connections (the fault path takes the cache, then a connection).
struct ForkLocks<'a> {
    _signals: MutexGuard<'a, crate::task::signals::SignalState>,
    _process: MutexGuard<'a, crate::process::ProcessView>,
    _program: MutexGuard<'a, Vec<u8>>,
    vfs: Option<crate::vfs::VfsHold<'a>>,
    _files: crate::vfs::files::FilesHold<'a>,
    threads: threads::ThreadsHold<'a>,
    _arena: crate::mm::arena::ArenaHold<'a>,
    cache: crate::mm::excache::ForkHold<'a>,
    remote: Vec<lego_transport::ClientHold<'static>>,
    _lifted: lego_transport::fdfloor::LiftedHold,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    fn hold_for_fork(&self) -> ForkLocks<'_> {
        ForkLocks {
            _signals: lock(&self.signals),
            _process: lock(&self.process),
            _program: lock(&self.program),
            vfs: self.vfs.as_ref().map(|v| v.hold_for_fork()),
            _files: self.files.hold_for_fork(),
            threads: self.threads.hold_for_fork(),
            _arena: self.mm.arena.hold_for_fork(),
            cache: self.mm.cache.hold_for_fork(),
            remote: self.mm.remote.hold_for_fork(),
            _lifted: lego_transport::fdfloor::hold_for_fork(),
        }
    }
}

fn new_process(cx: &mut Ctx, req: Request) -> SysResult {
    let rt = cx.rt;
    let child = new_pid();
    let mut forking = lock(&rt.forks.forking);
    // Like Linux's fork, an exclusive hold of the address space from the
    // flush through the host fork: no other thread changes a range (whose
    // pages the flush would write back) or has a fault half served (whose
    // lock the child would inherit held).
    let layout = rt.mm.cache.change_layout();
    // The copy is made from what the memory manager holds.
    rt.mm
        .cache
        .flush(&layout, &rt.mm.arena, &rt.mm.remote)
        .map_err(|e| {
            SysError::fatal(format!(
                "cannot write the address space back for a fork: {e}"
            ))
        })?;
    let (differences, child_key) = rt
        .mm
        .remote
        .fork(child)
        .map_err(SysError::Fatal)?
        .map_err(Errno)?;
    // The child writes a byte here once it is set up; an end of file
    // instead means it could not be, and the fork fails.
    // (No descriptor for it is a fork Linux would make but Lego cannot:
    // EAGAIN, as for a process that cannot be made.)
    let ready = match pipe_above_floor() {
        Ok(pipe) => pipe,
        Err(_) => {
            rt.mm.remote.release(child);
            return Err(Errno::EAGAIN.into());
        }
    };
    let vfork = if req.flags & CLONE_VFORK != 0 {
        match pipe_above_floor() {
            Ok(pipe) => Some(pipe),
            Err(_) => {
                rt.mm.remote.release(child);
                close(ready.0);
                close(ready.1);
                return Err(Errno::EAGAIN.into());
            }
        }
    } else {
        None
    };
    forking.push(ready.1);
    if let Some((_, w)) = vfork {
        forking.push(w);
    }
    let held = rt.hold_for_fork();
    // Safety: glibc's fork, on the runtime's side of this thread (its FS
    // base is the runtime's inside the handler): it takes the runtime's
    // allocator locks across the fork, as `held` does the runtime's own.
    // The child runs only this thread, which rebuilds what it needs of the
    // runtime before the program runs.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Inherited write ends of other threads' forks: not this child's.
        for &w in forking.iter() {
            if Some(w) != vfork.map(|(_, own)| own) && w != ready.1 {
                close(w);
            }
        }
        forking.clear();
        drop(forking);
        close(ready.0);
        become_child(
            cx,
            layout,
            held,
            (child, child_key),
            &req,
            vfork,
            differences,
        )?;
        // Safety: writes one byte of ours to our end of the pipe.
        unsafe { libc::write(ready.1, [1u8].as_ptr().cast(), 1) };
        close(ready.1);
        return ok(0);
    }
    let fork_error = io::Error::last_os_error();
    drop(held);
    drop(layout);
    // Closed before another fork can copy them: only the child holds them.
    forking.retain(|&fd| fd != ready.1 && Some(fd) != vfork.map(|(_, w)| w));
    close(ready.1);
    if let Some((_, w)) = vfork {
        close(w);
    }
    drop(forking);
    if pid < 0 {
        rt.mm.remote.release(child);
        close(ready.0);
        if let Some((r, _)) = vfork {
            close(r);
        }
        return Err(Errno(fork_error.raw_os_error().unwrap_or(libc::EAGAIN)).into());
    }
    let set_up = wait_for_child(cx, ready.0);
    close(ready.0);
    if !set_up {
        // It ended without a program: reaped here (the program never saw
        // its pid), its memory freed, and the fork fails as Linux's does
        // when it cannot make a process.
        let mut status = 0;
        // Safety: waits for our own child, writing one int of ours.
        unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        rt.mm.remote.release(child);
        if let Some((r, _)) = vfork {
            close(r);
        }
        tracing::warn!("forked process {child:x} could not be set up; the fork fails with EAGAIN");
        return Err(Errno::EAGAIN.into());
    }
    if req.flags & CLONE_PARENT_SETTID != 0 {
        let _ = user::write(req.parent_tid, &pid.to_ne_bytes());
    }
    if let Some((r, _)) = vfork {
        // Until the child execs or ends (both close its end).
        wait_for_child(cx, r);
        close(r);
    }
    ok(pid)
}

/// Reads `r` until a byte or its end comes: whether a byte did. Parks
/// when another thread takes the process's state meanwhile.
fn wait_for_child(cx: &mut Ctx, r: RawFd) -> bool {
    let mut byte = 0u8;
    loop {
        // Safety: reads at most one byte into `byte` from our pipe.
        let n = unsafe { libc::read(r, (&mut byte as *mut u8).cast(), 1) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return n == 1;
        }
        if cx.thread.take_park_request() {
            // Another thread takes the process's state: this one stops
            // inside its fork, and waits on after.
            cx.rt
                .threads
                .park(cx.thread, cx.uc, lego_proto::state::Stop::InCall);
        }
    }
}

/// In the host child: makes the inherited runtime this process's own.
/// Every failure ends the child (its parent sees it die, as of a fork
/// whose child could not start).
fn become_child(
    cx: &mut Ctx,
    layout: crate::mm::excache::LayoutChange<'_>,
    held: ForkLocks<'_>,
    (pid, key): (ProcessId, lego_transport::ClusterSecret),
    req: &Request,
    vfork: Option<(RawFd, RawFd)>,
    differences: Vec<lego_proto::RangeChange>,
) -> Result<(), SysError> {
    let rt = cx.rt;
    let parent = rt.mm.remote.pid();
    // Reports go to our own processor connection, never the parent's;
    // the parent's control socket is its own.
    crate::host::report::set_report_fd(-1);
    crate::process::control::forget_after_fork();
    let inherited = rt
        .forks
        .vfork_done
        .swap(vfork.map_or(-1, |(_, w)| w), Ordering::SeqCst);
    if inherited >= 0 {
        close(inherited);
    }
    if let Some((r, _)) = vfork {
        close(r);
    }
    let ForkLocks {
        _signals,
        _process,
        _program,
        vfs,
        _files,
        threads,
        _arena,
        cache,
        remote,
        _lifted,
    } = held;
    // The tables were only held so that no other thread had them at the
    // fork: free now, for this thread's use below.
    drop((_signals, _process, _program, _files, _arena, _lifted));
    let failed = |why: String| SysError::fatal(format!("forked process {pid:x}: {why}"));
    rt.mm
        .arena
        .renew_after_fork()
        .map_err(|e| failed(e.to_string()))?;
    cache.reset_for_child();
    rt.threads.reset_after_fork(cx.thread, threads);
    // Its own key from here on, for every connection it makes; its
    // parent's is overwritten where the runtime kept it.
    rt.home.key.set(&key);
    rt.mm.remote.become_child(pid, (&key, rt.home.tree), remote);
    if let Some(vfs) = vfs {
        vfs.storage.disconnect();
    }
    if let Some(vfs) = rt.vfs.as_ref() {
        vfs.storage.speak_as(
            key.clone(),
            lego_transport::Identity::process(rt.home.tree, pid),
        );
    }
    drop(key);
    // Before the fault thread publishes anything: the inherited counters
    // page is shared with the parent's processor view.
    let live = match crate::host::live::get() {
        Some(live) => live.renew(),
        None => lego_proto::live::LiveStats::create().map(|(live, fd)| {
            crate::host::live::set(live);
            fd
        }),
    };
    let live = live.map_err(|e| failed(format!("cannot make its live-counters page: {e}")))?;
    // MADV_WIPEONFORK ranges read zeros here, MADV_DONTFORK ones are gone.
    let done = lego_proto::MemoryOpDone {
        result: 0,
        moves: Vec::new(),
        changes: differences,
        spilled: Vec::new(),
        unspilled: Vec::new(),
    };
    rt.mm.apply(&layout, &done).map_err(failed)?;
    drop(layout);
    crate::mm::fault::spawn(&rt.mm)
        .map_err(|e| failed(format!("cannot start the fault thread: {e}")))?;
    match announce(rt, pid, parent, live) {
        Ok(fd) => crate::host::report::set_report_fd(fd),
        Err(e) => tracing::warn!(
            "forked process {pid:x} could not announce itself to processor {}: {e}; \
             it runs, but is not listed and its memory is freed only with its parent's",
            rt.home.processor_name
        ),
    }
    let inherited = rt.runtime_fds();
    let fds: Vec<RawFd> = crate::host::fds::open_fds()
        .into_iter()
        .filter(|fd| inherited.binary_search(fd).is_ok())
        .collect();
    rt.set_runtime_fds(fds);
    crate::task::dispatch::enable_dispatch(cx.thread)
        .map_err(|e| failed(format!("cannot enable Syscall User Dispatch: {e}")))?;
    if req.stack != 0 {
        // The child resumes on its new stack.
        cx.regs()[libc::REG_RSP as usize] = req.stack as i64;
    }
    if req.flags & CLONE_SETTLS != 0 {
        cx.thread.app_fs = req.tls;
    }
    // Safety: gettid has no preconditions.
    let tid = unsafe { raw_syscall(libc::SYS_gettid as u64, [0; 6]) } as i32;
    threads::child_tids(cx.thread, req.flags, req.child_tid, tid);
    tracing::info!("process {pid:x} forked from {parent:x} (host pid {tid})");
    Ok(())
}

/// The vfork parent may go on: the child has a program of its own now.
pub fn exec_done(rt: &Runtime) {
    let fd = rt.forks.vfork_done.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        close(fd);
    }
}

/// Tells the processor about this new process; returns the connection,
/// which stays open while the process lives and takes its report.
fn announce(
    rt: &Runtime,
    pid: ProcessId,
    parent: ProcessId,
    live: std::os::fd::OwnedFd,
) -> Result<RawFd, String> {
    let (mut stream, mut reader) = crate::process::processor::session(rt, pid)?;
    send_fds(&stream, &[live.as_raw_fd()]).map_err(|e| e.to_string())?;
    drop(live);
    let command = {
        let view = rt.process.lock().unwrap_or_else(|p| p.into_inner());
        view.cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let spec = AdoptSpec {
        pid,
        parent,
        // Safety: getpid has no preconditions.
        host_pid: unsafe { libc::getpid() } as u32,
        command,
        memory: rt.mm.remote.addr(),
        memory_name: rt.mm.remote.name(),
        memory_backup: rt.mm.remote.home().backup,
        excache: rt.home.excache,
    };
    write_frame(&mut stream, 1, &Message::Adopt(spec), &[]).map_err(|e| e.to_string())?;
    match reader.read_frame().map_err(|e| e.to_string())?.message {
        Message::Adopted { voucher } => {
            if let Some(vfs) = rt.vfs.as_ref() {
                vfs.storage.set_voucher(voucher);
            }
            Ok(stream.into_raw_fd())
        }
        Message::Error(e) => Err(e.message),
        other => Err(format!("answered Adopt with {}", other.kind())),
    }
}
