//! Threads. Every application thread runs on a runtime thread of its own
//! (its own TLS for the runtime's code, its own SIGSYS stack, its own
//! Syscall User Dispatch selector, which a clone does not inherit), and
//! traps its own syscalls. The kernel knows it as an ordinary thread of
//! the process: its tid, futexes (on arena addresses), CLONE_CHILD_CLEARTID
//! and tgkill are the host's.

use super::contract::{ok, returned, Call, Ctx, Errno, Outcome, SysResult};
use crate::host::{gettid, raw_syscall, user};
use crate::process::Runtime;
use crate::task::dispatch::ThreadCtl;
use crate::task::thread as task_thread;
use crate::task::threads::{
    child_tids, clear_tid_word, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID, CLONE_PARENT_SETTID,
    CLONE_SETTLS, CLONE_SIGHAND, CLONE_THREAD, CLONE_VM,
};
use std::sync::mpsc;

/// The runtime's own stack for each application thread: its code only
/// (the application runs on the stack it gave clone).
const RUNTIME_STACK: usize = 256 << 10;

/// Flags a thread may carry that need nothing from the runtime: the
/// thread shares everything of the process already.
/// CLONE_DETACHED is ignored by Linux (musl still passes it).
const SHARED: u64 =
    (libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SYSVSEM | libc::CLONE_DETACHED) as u64;

pub fn clone(cx: &mut Ctx, c: &Call) -> SysResult {
    let [flags, stack, parent_tid, child_tid, tls, _] = c.args;
    if flags & CLONE_THREAD == 0 {
        return super::fork::clone_process(cx, flags, stack, parent_tid, child_tid, tls);
    }
    if flags & (CLONE_VM | CLONE_SIGHAND) != CLONE_VM | CLONE_SIGHAND {
        return Err(Errno::EINVAL.into());
    }
    let known = CLONE_VM
        | CLONE_SIGHAND
        | CLONE_THREAD
        | CLONE_SETTLS
        | CLONE_PARENT_SETTID
        | CLONE_CHILD_SETTID
        | CLONE_CHILD_CLEARTID
        | SHARED;
    if flags & !known != 0 || flags & 0xff != 0 {
        // No exit signal for a thread; other options (CLONE_VFORK,
        // CLONE_PTRACE, namespaces...) are not thread options.
        return Err(Errno::EINVAL.into());
    }
    spawn(cx, flags, stack, parent_tid, child_tid, tls)
}

/// clone3: the same threads and processes as clone, from a `clone_args`
/// structure. What only clone3 can ask (a pidfd, chosen tids, a cgroup)
/// is answered ENOSYS, on which callers (glibc) fall back to clone.
pub fn clone3(cx: &mut Ctx, c: &Call) -> SysResult {
    const CLONE_PIDFD: u64 = libc::CLONE_PIDFD as u64;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let [args, size, ..] = c.args;
    // CLONE_ARGS_SIZE_VER0: flags .. tls, eight u64 words.
    if !(64..=4096).contains(&size) {
        return Err(Errno::EINVAL.into());
    }
    let mut raw = vec![0u8; size as usize];
    user::read(args, &mut raw)?;
    let word = |i: usize| {
        raw.get(i * 8..i * 8 + 8)
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    };
    let (flags, pidfd, child_tid, parent_tid, exit_signal) =
        (word(0), word(1), word(2), word(3), word(4));
    let (stack, stack_size, tls, set_tid_size, cgroup) =
        (word(5), word(6), word(7), word(9), word(10));
    if flags & (CLONE_PIDFD | CLONE_INTO_CGROUP) != 0 || set_tid_size != 0 || cgroup != 0 {
        return Err(Errno::ENOSYS.into());
    }
    // Bytes past the structure this kernel knows must be zero.
    if raw
        .get(88..)
        .is_some_and(|rest| rest.iter().any(|&b| b != 0))
    {
        return Err(Errno::E2BIG.into());
    }
    let _ = pidfd;
    if exit_signal > 0xff || flags & 0xff != 0 || (stack == 0) != (stack_size == 0) {
        return Err(Errno::EINVAL.into());
    }
    let top = if stack == 0 {
        0
    } else {
        stack.wrapping_add(stack_size)
    };
    let call = Call {
        nr: c.nr,
        args: [flags | exit_signal, top, parent_tid, child_tid, tls, 0],
    };
    clone(cx, &call)
}

/// What a new application thread starts with.
struct Start {
    regs: [i64; 23],
    fs: u64,
    mask: u64,
    flags: u64,
    parent_tid: u64,
    child_tid: u64,
    /// Where to say the thread runs (its tid) or why it could not start.
    ready: mpsc::Sender<Result<i32, Errno>>,
}

/// Stores the new thread's tid where clone was asked to and records its
/// clear-tid word: on the new thread, before it can run (let alone end,
/// which clears the CLEARTID word: the creator's store coming after that
/// would leave a joiner waiting forever).
fn settle_tids(rt: &Runtime, ctl: &mut ThreadCtl, start: &Start, tid: i32) {
    ctl.clear_requests();
    rt.threads.started(tid);
    if start.flags & CLONE_PARENT_SETTID != 0 {
        let _ = user::write(start.parent_tid, &tid.to_ne_bytes());
    }
    child_tids(ctl, start.flags, start.child_tid, tid);
}

fn spawn(
    cx: &mut Ctx,
    flags: u64,
    stack: u64,
    parent_tid: u64,
    child_tid: u64,
    tls: u64,
) -> SysResult {
    let rt = cx.rt;
    if !rt.mm.arena.can_stage() {
        // Eviction would not be safe with threads writing meanwhile.
        tracing::warn!("threads need UFFDIO_MOVE (Linux 6.8 or later); clone refused");
        return Err(Errno::EAGAIN.into());
    }
    rt.mm.cache.set_concurrent();
    crate::mm::fault::add_server(&rt.mm, rt.threads.count() + 1);
    // The new thread starts from this call's registers.
    let mut regs = *cx.regs();
    let ctl = &*cx.thread;
    regs[libc::REG_RAX as usize] = 0;
    if stack != 0 {
        regs[libc::REG_RSP as usize] = stack as i64;
    }
    let fs = if flags & CLONE_SETTLS != 0 {
        tls
    } else {
        ctl.app_fs
    };
    let (tx, rx) = mpsc::channel::<Result<i32, Errno>>();
    let start = Start {
        regs,
        fs,
        mask: ctl.app_mask,
        flags,
        parent_tid,
        child_tid,
        ready: tx,
    };
    rt.threads.starting();
    if let Err(e) = start_runtime_thread(rt, start) {
        rt.threads.not_started();
        tracing::warn!("cannot start a runtime thread for the application: {e}");
        return Err(Errno::EAGAIN.into());
    }
    match rx.recv() {
        Ok(Ok(tid)) => ok(tid),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Errno::EAGAIN.into()),
    }
}

/// The address the kernel clears when the calling thread ends (glibc's
/// own thread-id word of the runtime thread, which tells glibc the
/// thread's stack may be reused), or 0.
fn tid_address() -> u64 {
    const PR_GET_TID_ADDRESS: libc::c_int = 40;
    let mut addr = 0u64;
    // Safety: the kernel writes one pointer-sized value into `addr`.
    if unsafe { libc::prctl(PR_GET_TID_ADDRESS, &mut addr as *mut u64) } != 0 {
        return 0;
    }
    addr
}

/// A new runtime thread for an application thread. It runs the
/// application thread until that ends, then frees its control block and
/// signal stack and ends itself: each application thread is a new host
/// thread, with a tid of its own, as on Linux.
fn start_runtime_thread(rt: &'static Runtime, start: Start) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("app-thread".into())
        .stack_size(RUNTIME_STACK)
        .spawn(move || {
            let runtime_tid_word = tid_address();
            let altstack = match task_thread::AltStack::install(task_thread::SIGSYS_STACK) {
                Ok(altstack) => altstack,
                Err(e) => {
                    let _ = start
                        .ready
                        .send(Err(Errno(e.raw_os_error().unwrap_or(libc::ENOMEM))));
                    rt.threads.not_started();
                    return;
                }
            };
            let ctl = Box::into_raw(Box::new(ThreadCtl::new()));
            let mut body = ThreadBody {
                rt,
                ctl,
                start: Some(start),
            };
            // Safety: `ctl` lives until after the application thread has
            // ended (freed below); `enter_application_thread` ends only
            // through `task_thread::leave_thread`, leaving frames that own nothing.
            unsafe {
                task_thread::run_thread(
                    ctl,
                    enter_application_thread,
                    (&mut body as *mut ThreadBody).cast(),
                )
            };
            // The application thread has ended (its clear-tid word is
            // written). Back to an ordinary thread of the runtime's.
            crate::host::block_all_signals();
            crate::task::dispatch::disable_dispatch();
            // Safety: set_robust_list and set_tid_address take plain
            // values: the ended application thread's robust list is no
            // longer this thread's, and glibc's own tid word is cleared
            // by the kernel when this thread ends, as glibc expects.
            unsafe {
                raw_syscall(libc::SYS_set_robust_list as u64, [0, 24, 0, 0, 0, 0]);
                raw_syscall(
                    libc::SYS_set_tid_address as u64,
                    [runtime_tid_word, 0, 0, 0, 0, 0],
                );
            }
            altstack.remove();
            // Safety: made by Box::into_raw above; no handler runs on
            // this thread any more, so nothing else refers to it.
            drop(unsafe { Box::from_raw(ctl) });
        })
        .map(|_| ())
}

/// What [`enter_application_thread`] starts: on its runtime thread's
/// stack, read once.
struct ThreadBody {
    rt: &'static Runtime,
    ctl: *mut ThreadCtl,
    start: Option<Start>,
}

/// Starts the application thread described by `arg` (a [`ThreadBody`])
/// on the calling runtime thread.
///
/// # Safety
/// `arg` points to a live `ThreadBody` whose control block outlives the
/// application thread, as `start_runtime_thread` makes it.
unsafe extern "C" fn enter_application_thread(arg: *mut libc::c_void) -> ! {
    // Safety: the caller's contract.
    let body = unsafe { &mut *(arg as *mut ThreadBody) };
    // Safety: as above; 'static stands for "until the runtime thread
    // frees it", after the application thread has ended.
    let ctl: &'static mut ThreadCtl = unsafe { &mut *body.ctl };
    let Some(start) = body.start.take() else {
        // Safety: ends this thread only (a runtime bug: entered twice).
        unsafe { raw_syscall(libc::SYS_exit as u64, [0; 6]) };
        unreachable!("exit returned");
    };
    let tid = gettid();
    settle_tids(body.rt, ctl, &start, tid);
    ctl.app_mask = start.mask;
    let Start {
        regs, fs, ready, ..
    } = start;
    // Safety: the SIGSYS handler is process-wide and this thread's
    // alternate stack is installed; `regs` are the creator's at its clone,
    // with the child's rax and stack.
    unsafe {
        task_thread::enter_thread(ctl, &regs, fs, move || {
            let _ = ready.send(Ok(tid));
        })
    }
}

/// set_tid_address: recorded, so that a thread that ends clears and wakes
/// the word as Linux would (the runtime does it, before its runtime thread
/// ends).
pub fn set_tid_address(cx: &mut Ctx, c: &Call) -> SysResult {
    cx.thread.clear_tid = c.args[0];
    // Safety: the kernel only records the address (and returns the tid).
    returned(unsafe { raw_syscall(c.nr, c.args) })
}

/// exit: ends the calling thread, or the process with the last one. The
/// application thread ends as on Linux (its clear-tid word is cleared and
/// woken, so a join returns), and so does its runtime thread.
pub fn exit(cx: &mut Ctx, c: &Call) -> SysResult {
    if cx.rt.threads.ending() {
        return Ok(Outcome::ExitProcess(c.args[0] as i32));
    }
    clear_tid_word(cx.thread);
    Ok(Outcome::ExitThread)
}

/// Ends the calling application thread, once `exit` has done its part
/// (called by the dispatcher, where the runtime holds nothing).
pub fn end(ctl: &mut ThreadCtl) -> ! {
    // Safety: the dispatcher calls this last, holding no lock, from
    // frames that own nothing.
    unsafe { task_thread::leave_thread(ctl) }
}
