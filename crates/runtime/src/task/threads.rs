//! The application's threads as the runtime counts them: how many are
//! alive, their host tids, the clear-tid word each one's end writes, and
//! execve's ending of every thread but the caller (as Linux's execve
//! does, with the runtime's own signal; a thread found inside the runtime
//! ends at its next safe point).
//!
//! May call: `host`, `task::thread`, `task::signals`.

use super::dispatch::ThreadCtl;
use super::signals::EXEC_KILL_SIGNAL;
use super::thread::leave_thread;
use crate::host::{gettid, raw_syscall, user};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Application threads alive (the first is the one the program started on).
static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Whether the application has more than one thread: then pages may be
/// written while the runtime evicts.
pub fn several() -> bool {
    THREADS.load(Ordering::SeqCst) > 1
}

/// A new thread is being made (undone by [`not_started`] if it fails).
pub fn starting() -> usize {
    THREADS.fetch_add(1, Ordering::SeqCst) + 1
}

/// A thread that was being made did not start.
pub fn not_started() {
    THREADS.fetch_sub(1, Ordering::SeqCst);
}

/// How many application threads are alive.
pub fn count() -> usize {
    THREADS.load(Ordering::SeqCst)
}

/// The calling thread, a new application thread with host tid `tid`, runs.
pub fn started(tid: i32) {
    app_tids().push(tid);
}

/// The calling application thread ends (exit): `true` if it was the
/// last, and the process ends with it.
pub fn ending() -> bool {
    if THREADS.fetch_sub(1, Ordering::SeqCst) == 1 {
        THREADS.store(1, Ordering::SeqCst);
        return true;
    }
    let me = gettid();
    app_tids().retain(|&t| t != me);
    false
}

pub const CLONE_VM: u64 = libc::CLONE_VM as u64;
pub const CLONE_SIGHAND: u64 = libc::CLONE_SIGHAND as u64;
pub const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;
pub const CLONE_SETTLS: u64 = libc::CLONE_SETTLS as u64;
pub const CLONE_PARENT_SETTID: u64 = libc::CLONE_PARENT_SETTID as u64;
pub const CLONE_CHILD_SETTID: u64 = libc::CLONE_CHILD_SETTID as u64;
pub const CLONE_CHILD_CLEARTID: u64 = libc::CLONE_CHILD_CLEARTID as u64;
/// The host tids of the application's threads.
static APP_TIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn app_tids() -> std::sync::MutexGuard<'static, Vec<i32>> {
    APP_TIDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the thread the program starts on.
pub fn register_main_thread() {
    app_tids().push(gettid());
}

/// The thread that is exec'ing, while it ends the others (0: none).
static EXEC_TID: AtomicI32 = AtomicI32::new(0);

/// execve with several threads: ends every other application thread
/// first, as Linux does. Each is sent the runtime's own signal, again
/// until it is gone (one caught just before a blocking call would
/// otherwise block on). `false` if some thread would not end in time.
pub fn end_other_threads() -> bool {
    let me = gettid();
    if EXEC_TID
        .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // Another thread execs already: this one is about to end.
        return false;
    }
    // Safety: getpid has no preconditions.
    let pid = unsafe { raw_syscall(libc::SYS_getpid as u64, [0; 6]) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while THREADS.load(Ordering::SeqCst) > 1 {
        if std::time::Instant::now() > deadline {
            tracing::warn!(
                "execve: {} other threads did not end within 10 s; refused with EAGAIN",
                THREADS.load(Ordering::SeqCst) - 1
            );
            EXEC_TID.store(0, Ordering::SeqCst);
            return false;
        }
        let others: Vec<i32> = app_tids().iter().copied().filter(|&t| t != me).collect();
        for tid in others {
            // Safety: signals one thread of this process.
            unsafe {
                raw_syscall(
                    libc::SYS_tgkill as u64,
                    [pid as u64, tid as u64, EXEC_KILL_SIGNAL as u64, 0, 0, 0],
                )
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// The exec that ended the other threads is over.
pub fn exec_finished() {
    let _ = EXEC_TID.compare_exchange(gettid(), 0, Ordering::SeqCst, Ordering::SeqCst);
}

/// Ends the calling application thread because another one execs (called
/// where the runtime holds nothing: from its signal entry over
/// application code, or at the end of its SIGSYS handler). A stray
/// request (no exec under way, or the exec'ing thread itself) is dropped.
pub fn end_for_exec(ctl: &mut ThreadCtl) {
    ctl.exit_requested = false;
    let me = gettid();
    let exec_tid = EXEC_TID.load(Ordering::SeqCst);
    if exec_tid == 0 || exec_tid == me {
        return;
    }
    app_tids().retain(|&t| t != me);
    // Its clear-tid word is written now, not by the kernel after the
    // exec'ing thread may have replaced the address space.
    clear_tid_word(ctl);
    THREADS.fetch_sub(1, Ordering::SeqCst);
    // Safety: called where the runtime holds nothing (see above); the
    // exec'ing thread replaces the address space once every other thread
    // is gone.
    unsafe { leave_thread(ctl) }
}

/// What the kernel does with a thread's clear-tid word when it ends: done
/// by hand, now (and the kernel told to leave it).
pub fn clear_tid_word(ctl: &mut ThreadCtl) {
    if ctl.clear_tid == 0 {
        return;
    }
    let word = ctl.clear_tid;
    ctl.clear_tid = 0;
    // Safety: the kernel no longer clears it at this thread's end; then
    // the word is cleared and its waiters woken, as the kernel does.
    unsafe {
        raw_syscall(libc::SYS_set_tid_address as u64, [0; 6]);
    }
    if user::write(word, &0u32.to_ne_bytes()).is_ok() {
        // Safety: FUTEX_WAKE only reads the word's address.
        unsafe {
            raw_syscall(
                libc::SYS_futex as u64,
                [word, libc::FUTEX_WAKE as u64, 1, 0, 0, 0],
            )
        };
    }
}

/// CLONE_CHILD_SETTID and CLONE_CHILD_CLEARTID, on the new thread (or the
/// forked process's only one) whose tid is `tid`.
pub fn child_tids(ctl: &mut ThreadCtl, flags: u64, child_tid: u64, tid: i32) {
    if flags & CLONE_CHILD_SETTID != 0 {
        let _ = user::write(child_tid, &tid.to_ne_bytes());
    }
    if flags & CLONE_CHILD_CLEARTID != 0 {
        ctl.clear_tid = child_tid;
        // Safety: the kernel clears and wakes this application address if
        // the thread ends for real, as for any clone.
        unsafe { raw_syscall(libc::SYS_set_tid_address as u64, [child_tid, 0, 0, 0, 0, 0]) };
    }
}

/// The thread tables held across a fork (see `syscall::fork`).
pub struct ThreadsHold {
    tids: std::sync::MutexGuard<'static, Vec<i32>>,
}

/// Holds the thread tables across a fork, so the forked process finds
/// them free.
pub fn hold_for_fork() -> ThreadsHold {
    ThreadsHold { tids: app_tids() }
}

/// In a forked process: only the thread that forked (`ctl`) runs.
pub fn reset_after_fork(ctl: &mut ThreadCtl, mut held: ThreadsHold) {
    THREADS.store(1, Ordering::SeqCst);
    *held.tids = vec![gettid()];
    drop(held);
    // An exec under way in the parent is not this process's.
    EXEC_TID.store(0, Ordering::SeqCst);
    ctl.exit_requested = false;
}
