//! The application's threads as the runtime counts them ([`Threads`]):
//! how many are alive, their host tids, the clear-tid word each one's end
//! writes, execve's ending of every thread but the caller (as Linux's
//! execve does, with the runtime's own signal; a thread found inside the
//! runtime ends at its next safe point), and stopping every thread but
//! one at a boundary, so the process's state can be taken whole.
//!
//! May call: `host`, `task::thread`, `task::signals`.

use super::dispatch::ThreadCtl;
use super::signals::{self, EXEC_KILL_SIGNAL};
use super::thread::leave_thread;
use crate::host::{gettid, raw_syscall, user};
use lego_proto::state::{Stop, ThreadState};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The application's threads. Part of the process's kernel state (see
/// `process::Runtime`), not of any thread.
pub struct Threads {
    /// Application threads alive (the first is the one the program
    /// started on), counted from when clone starts making one.
    count: AtomicUsize,
    /// The host tids of the application's threads that run.
    tids: Mutex<Vec<i32>>,
    /// The thread that is exec'ing, while it ends the others (0: none).
    exec_tid: AtomicI32,
    /// The thread taking the process's state while the others stop (0:
    /// none).
    stopper: AtomicI32,
    /// Stop rounds: odd while the others must stay stopped, even
    /// otherwise; the futex parked threads wait on. A thread parked in one
    /// round runs on when it ends, even if the next begins at once.
    round: AtomicU32,
    /// The states of the threads stopped so far.
    parked: Mutex<Vec<ThreadState>>,
}

/// Why the other threads could not be stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum StopError {
    /// Another thread is stopping them: the caller stops for it first.
    Stopping,
    /// Another thread execs.
    Exec,
    /// Some thread did not stop in time.
    Timeout(usize),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Threads {
    fn default() -> Self {
        Threads::new()
    }
}

impl Threads {
    pub fn new() -> Threads {
        Threads {
            count: AtomicUsize::new(1),
            tids: Mutex::new(Vec::new()),
            exec_tid: AtomicI32::new(0),
            stopper: AtomicI32::new(0),
            round: AtomicU32::new(0),
            parked: Mutex::new(Vec::new()),
        }
    }

    /// Whether the application has more than one thread: then pages may be
    /// written while the runtime evicts.
    pub fn several(&self) -> bool {
        self.count() > 1
    }

    /// A new thread is being made (undone by [`Threads::not_started`] if
    /// it fails).
    pub fn starting(&self) -> usize {
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A thread that was being made did not start.
    pub fn not_started(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }

    /// How many application threads are alive.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The calling thread, a new application thread with host tid `tid`,
    /// runs.
    pub fn started(&self, tid: i32) {
        lock(&self.tids).push(tid);
    }

    /// Records the thread the program starts on.
    pub fn register_main_thread(&self) {
        lock(&self.tids).push(gettid());
    }

    /// The host tids of the threads that run.
    pub fn tids(&self) -> Vec<i32> {
        lock(&self.tids).clone()
    }

    /// The calling application thread ends (exit): `true` if it was the
    /// last, and the process ends with it.
    pub fn ending(&self) -> bool {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.count.store(1, Ordering::SeqCst);
            return true;
        }
        let me = gettid();
        lock(&self.tids).retain(|&t| t != me);
        false
    }

    /// execve with several threads: ends every other application thread
    /// first, as Linux does. Each is sent the runtime's own signal, again
    /// until it is gone (one caught just before a blocking call would
    /// otherwise block on). `false` if some thread would not end in time.
    pub fn end_other_threads(&self) -> bool {
        let me = gettid();
        if self
            .exec_tid
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Another thread execs already: this one is about to end.
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.several() {
            if Instant::now() > deadline {
                tracing::warn!(
                    "execve: {} other threads did not end within 10 s; refused with EAGAIN",
                    self.count() - 1
                );
                self.exec_tid.store(0, Ordering::SeqCst);
                return false;
            }
            let others: Vec<i32> = self.tids().into_iter().filter(|&t| t != me).collect();
            signal_threads(&others);
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The exec that ended the other threads is over.
    pub fn exec_finished(&self) {
        let _ = self
            .exec_tid
            .compare_exchange(gettid(), 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Ends the calling application thread because another one execs
    /// (called where the runtime holds nothing: from its signal entry over
    /// application code, or at the end of its SIGSYS handler). A stray
    /// request (no exec under way, or the exec'ing thread itself) is
    /// dropped.
    pub fn end_for_exec(&self, ctl: &mut ThreadCtl) {
        ctl.take_exit_request();
        let me = gettid();
        let exec_tid = self.exec_tid.load(Ordering::SeqCst);
        if exec_tid == 0 || exec_tid == me {
            return;
        }
        lock(&self.tids).retain(|&t| t != me);
        // Its clear-tid word is written now, not by the kernel after the
        // exec'ing thread may have replaced the address space.
        clear_tid_word(ctl);
        self.count.fetch_sub(1, Ordering::SeqCst);
        // Safety: called where the runtime holds nothing (see above); the
        // exec'ing thread replaces the address space once every other
        // thread is gone.
        unsafe { leave_thread(ctl) }
    }

    /// Stops every other application thread at a boundary (between two
    /// instructions of its own code, or at the start or end of a call) and
    /// returns their states; they stay stopped until
    /// [`Threads::resume_others`]. Each is sent the runtime's own signal,
    /// again until it has stopped (one caught just before a blocking call
    /// would otherwise block on); one waiting in a call makes it again
    /// when it runs on, as Linux restarts a call interrupted without a
    /// handler.
    pub fn stop_others(&self, limit: Duration) -> Result<Vec<ThreadState>, StopError> {
        let me = gettid();
        if self.exec_tid.load(Ordering::SeqCst) != 0 {
            return Err(StopError::Exec);
        }
        if self
            .stopper
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(StopError::Stopping);
        }
        {
            let mut parked = lock(&self.parked);
            parked.clear();
            self.round.fetch_add(1, Ordering::SeqCst);
        }
        let deadline = Instant::now() + limit;
        loop {
            let parked: Vec<i32> = lock(&self.parked).iter().map(|t| t.tid).collect();
            let others: Vec<i32> = self
                .tids()
                .into_iter()
                .filter(|t| *t != me && !parked.contains(t))
                .collect();
            // The caller counts when it is an application thread (taking
            // the state in a call), not when it is the runtime's own.
            let caller = usize::from(self.tids().contains(&me));
            if others.is_empty() && parked.len() + caller >= self.count() {
                return Ok(lock(&self.parked).clone());
            }
            if self.exec_tid.load(Ordering::SeqCst) != 0 {
                self.resume_others();
                return Err(StopError::Exec);
            }
            if Instant::now() > deadline {
                self.resume_others();
                return Err(StopError::Timeout(others.len().max(1)));
            }
            signal_threads(&others);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets the threads [`Threads::stop_others`] stopped run on.
    pub fn resume_others(&self) {
        {
            let mut parked = lock(&self.parked);
            parked.clear();
            self.round.fetch_add(1, Ordering::SeqCst);
        }
        self.stopper.store(0, Ordering::SeqCst);
        // Safety: FUTEX_WAKE only reads the word's address.
        unsafe {
            raw_syscall(
                libc::SYS_futex as u64,
                [
                    self.round.as_ptr() as u64,
                    (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
                    i32::MAX as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
    }

    /// Whether another thread than the caller is stopping the others now.
    pub fn stopping(&self) -> bool {
        let stopper = self.stopper.load(Ordering::SeqCst);
        stopper != 0 && stopper != gettid()
    }

    /// Stops the calling application thread, whose registers are in `uc`,
    /// if another thread is taking the process's state (else returns at
    /// once): records its state and waits until it may run on, or until
    /// another thread execs (then it ends when this returns). Called where
    /// the runtime holds nothing: over application code, or at the end of
    /// a call.
    pub fn park(&self, ctl: &ThreadCtl, uc: &libc::ucontext_t, stop: Stop) {
        let me = gettid();
        let round = {
            let mut parked = lock(&self.parked);
            let round = self.round.load(Ordering::SeqCst);
            let stopper = self.stopper.load(Ordering::SeqCst);
            if round.is_multiple_of(2) || stopper == me || stopper == 0 {
                return;
            }
            if parked.iter().any(|t| t.tid == me) {
                return;
            }
            parked.push(thread_state(ctl, uc, stop));
            round
        };
        let wait = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        while self.round.load(Ordering::SeqCst) == round {
            let exec_tid = self.exec_tid.load(Ordering::SeqCst);
            if exec_tid != 0 && exec_tid != me {
                break;
            }
            // Safety: FUTEX_WAIT reads the word and sleeps at most `wait`;
            // no memory is written.
            unsafe {
                raw_syscall(
                    libc::SYS_futex as u64,
                    [
                        self.round.as_ptr() as u64,
                        (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
                        round as u64,
                        &wait as *const libc::timespec as u64,
                        0,
                        0,
                    ],
                )
            };
        }
    }
}

/// Sends the runtime's own signal to each of `tids`, threads of this
/// process.
fn signal_threads(tids: &[i32]) {
    // Safety: getpid has no preconditions.
    let pid = unsafe { raw_syscall(libc::SYS_getpid as u64, [0; 6]) };
    for &tid in tids {
        // Safety: signals one thread of this process.
        unsafe {
            raw_syscall(
                libc::SYS_tgkill as u64,
                [pid as u64, tid as u64, EXEC_KILL_SIGNAL as u64, 0, 0, 0],
            )
        };
    }
}

/// The calling application thread's state: `ctl`'s, and the registers
/// and FPU state in `uc` (those it resumes with).
pub fn thread_state(ctl: &ThreadCtl, uc: &libc::ucontext_t, stop: Stop) -> ThreadState {
    ThreadState {
        tid: gettid(),
        stop,
        regs: uc.uc_mcontext.gregs.to_vec(),
        fs_base: ctl.app_fs,
        fpu: signals::fpu_state(uc),
        mask: ctl.app_mask,
        suspended_mask: ctl.suspended_mask,
        pending: pending_of("/proc/thread-self/status", "SigPnd:"),
        clear_tid: ctl.clear_tid,
    }
}

/// The application's signals in a `/proc/.../status` line such as
/// `SigPnd:` (0 if it cannot be read): the runtime's own signal, queued
/// to stop or end threads, is not the application's.
pub fn pending_of(status: &str, line: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            let value = s.lines().find(|l| l.starts_with(line))?[line.len()..].trim();
            u64::from_str_radix(value, 16).ok()
        })
        .unwrap_or(0)
        & !signals::sigbit(EXEC_KILL_SIGNAL)
}

pub const CLONE_VM: u64 = libc::CLONE_VM as u64;
pub const CLONE_SIGHAND: u64 = libc::CLONE_SIGHAND as u64;
pub const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;
pub const CLONE_SETTLS: u64 = libc::CLONE_SETTLS as u64;
pub const CLONE_PARENT_SETTID: u64 = libc::CLONE_PARENT_SETTID as u64;
pub const CLONE_CHILD_SETTID: u64 = libc::CLONE_CHILD_SETTID as u64;
pub const CLONE_CHILD_CLEARTID: u64 = libc::CLONE_CHILD_CLEARTID as u64;

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
pub struct ThreadsHold<'a> {
    tids: MutexGuard<'a, Vec<i32>>,
    parked: MutexGuard<'a, Vec<ThreadState>>,
}

impl Threads {
    /// Holds the thread tables across a fork, so the forked process finds
    /// them free.
    pub fn hold_for_fork(&self) -> ThreadsHold<'_> {
        ThreadsHold {
            tids: lock(&self.tids),
            parked: lock(&self.parked),
        }
    }

    /// In a forked process: only the thread that forked (`ctl`) runs.
    pub fn reset_after_fork(&self, ctl: &mut ThreadCtl, mut held: ThreadsHold<'_>) {
        self.count.store(1, Ordering::SeqCst);
        *held.tids = vec![gettid()];
        held.parked.clear();
        drop(held);
        // An exec or a stop under way in the parent is not this process's.
        self.exec_tid.store(0, Ordering::SeqCst);
        self.stopper.store(0, Ordering::SeqCst);
        self.round.store(0, Ordering::SeqCst);
        ctl.clear_requests();
    }
}
