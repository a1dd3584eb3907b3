//! The calling convention every syscall handler follows (see the
//! `syscall` module): what a handler is given ([`Ctx`], [`Call`]), what
//! it returns ([`Outcome`] or a [`SysError`]), and the shape of the table
//! row that names it ([`Syscall`]).
//!
//! May call: `process`, `task`, `host`.

pub use crate::error::{Errno, SysError};
use crate::process::Runtime;
use crate::task::blocking::host_syscall;
use crate::task::dispatch::ThreadCtl;

/// One trapped syscall: its number and its six argument registers.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub nr: u64,
    pub args: [u64; 6],
}

/// What a handler may use while it serves one call.
pub struct Ctx<'a> {
    /// The process's kernel state.
    pub rt: &'static Runtime,
    /// How the call being served waits (its table row's class).
    pub(super) wait: Wait,
    /// The calling application thread's control block.
    pub thread: &'a mut ThreadCtl,
    /// The interrupted context the thread resumes with when the SIGSYS
    /// handler returns: its registers, FPU state and signal mask.
    pub(super) uc: &'a mut libc::ucontext_t,
}

impl Ctx<'_> {
    /// The registers the calling thread resumes with (glibc's gregs
    /// order); `rax` is set from the outcome afterwards.
    pub fn regs(&mut self) -> &mut [i64; 23] {
        &mut self.uc.uc_mcontext.gregs
    }

    /// The whole interrupted context (signal delivery and return).
    pub fn ucontext(&mut self) -> &mut libc::ucontext_t {
        self.uc
    }

    /// Makes the call being served (number `nr`) on the host, with the
    /// application's signal mask if it may wait (see
    /// `task::blocking::host_syscall`).
    ///
    /// # Safety
    /// As for any syscall: the arguments must be valid for it (the
    /// application's own, or pointers of the runtime's that outlive it).
    pub unsafe fn host(&mut self, nr: u64, args: [u64; 6]) -> SysResult {
        let blocks = self.wait != Wait::Never;
        // Safety: delegated to the caller; inside the SIGSYS handler.
        returned(unsafe { host_syscall(self.thread, blocks, nr, args) })
    }
}

/// What happens after a call was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call returns this value in `rax`.
    Return(i64),
    /// The handler set the registers the thread resumes with
    /// (rt_sigreturn): they are left as they are.
    Resume,
    /// execve succeeded: the new program starts at `entry` with its stack
    /// at `sp`, registers cleared and FS base 0, as Linux starts one.
    Exec { entry: u64, sp: u64 },
    /// The calling thread ends (its clear-tid word already written).
    ExitThread,
    /// The process ends with this status.
    ExitProcess(i32),
}

/// What every handler returns.
pub type SysResult = Result<Outcome, SysError>;

/// A call returning `value`.
pub fn ok(value: impl Into<i64>) -> SysResult {
    Ok(Outcome::Return(value.into()))
}

/// A raw syscall's return value as a result: -4095..=-1 are errnos.
pub fn returned(ret: i64) -> SysResult {
    match Errno::of_return(ret) {
        Some(e) => Err(e.into()),
        None => Ok(Outcome::Return(ret)),
    }
}

/// Signature of an emulating handler (see the module comment).
pub type Handler = fn(&mut Ctx, &Call) -> SysResult;

/// What Lego does with a syscall.
#[derive(Clone, Copy)]
pub enum Disposition {
    /// Served by the runtime's `handler` (named by `path`, e.g.
    /// `file::read`, for the documentation); `partial` when the note
    /// says what differs from Linux.
    Emulate {
        handler: Handler,
        path: &'static str,
        partial: bool,
    },
    /// Made on the host kernel unchanged.
    Pass,
    /// Fails with this errno.
    Refuse(Errno),
}

impl Disposition {
    pub fn label(&self) -> &'static str {
        match self {
            Disposition::Emulate { partial: false, .. } => "emulated",
            Disposition::Emulate { partial: true, .. } => "partly emulated",
            Disposition::Pass => "passed through",
            Disposition::Refuse(_) => "refused",
        }
    }
}

/// Whether a call may wait indefinitely, and what Linux does when a
/// handled signal interrupts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Never waits: made with every signal blocked.
    Never,
    /// May wait: made with the application's signal mask, so a signal
    /// interrupts it; restarted after a handler with SA_RESTART.
    Restarted,
    /// May wait, and is never restarted: EINTR whatever the handler's
    /// flags (signal(7): sleeps, polls, sigsuspend, System V IPC).
    Interrupted,
}

impl Wait {
    pub fn label(self) -> &'static str {
        match self {
            Wait::Never => "-",
            Wait::Restarted => "may wait; restarted (SA_RESTART)",
            Wait::Interrupted => "may wait; never restarted",
        }
    }
}

/// One row of the table: everything Lego knows about a syscall number.
pub struct Syscall {
    pub nr: u32,
    pub name: &'static str,
    pub disposition: Disposition,
    pub wait: Wait,
    pub note: &'static str,
}
