//! Syscall dispatch, and the one contract every handler follows.
//!
//! Every syscall the application makes arrives in [`sigsys_handler`] and
//! is served according to the table in [`table`]: emulated by the
//! runtime, passed through to the host kernel, or refused with an errno.
//!
//! The calling convention (one shape for every handler): a handler is a
//! [`Handler`], `fn(&mut Ctx, &Call) -> SysResult`. [`Ctx`] gives it the
//! process's kernel state, the calling thread's control block and the
//! registers the thread will resume with; [`Call`] its number and six
//! argument registers. It returns what happens next, an [`Outcome`], or a
//! [`SysError`]: an [`Errno`] the application is given, or a fault of the
//! runtime itself (a lost memory manager, a broken invariant), which ends
//! the process in one place ([`serve`]). No handler writes `rax`, ends a
//! thread or the process, or calls `fatal` itself: [`serve`] turns the
//! result into register state.

pub mod exec;
pub mod file;
pub mod fork;
pub mod mem;
pub mod path;
pub mod proc;
pub mod signal;
pub mod table;
pub mod thread;

use crate::sud::ThreadCtl;
use crate::Runtime;
pub use lego_proto::Errno;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

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

    /// Makes the application's call on the host, with the application's
    /// signal mask if it may block (see `sud::host_syscall`).
    ///
    /// # Safety
    /// As for any syscall: the arguments must be valid for it (the
    /// application's own, or pointers of the runtime's that outlive it).
    pub unsafe fn host(&mut self, nr: u64, args: [u64; 6]) -> SysResult {
        let blocks = wait_of(nr) != Wait::Never;
        // Safety: delegated to the caller; inside the SIGSYS handler.
        returned(unsafe { crate::sud::host_syscall(self.thread, blocks, nr, args) })
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

/// Why a call did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysError {
    /// The application's error: the call returns it.
    Errno(Errno),
    /// The runtime cannot go on (a lost memory manager, a broken
    /// invariant): the process ends, reporting this.
    Fatal(String),
}

impl SysError {
    pub fn fatal(why: impl Into<String>) -> SysError {
        SysError::Fatal(why.into())
    }
}

impl From<Errno> for SysError {
    fn from(e: Errno) -> SysError {
        SysError::Errno(e)
    }
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

/// How `nr` waits (unknown numbers never do).
pub fn wait_of(nr: u64) -> Wait {
    lookup(nr).map_or(Wait::Never, |s| s.wait)
}

/// Largest syscall number the index covers.
const MAX_NR: usize = 512;

fn index() -> &'static [Option<&'static Syscall>; MAX_NR] {
    static INDEX: OnceLock<[Option<&'static Syscall>; MAX_NR]> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = [None; MAX_NR];
        for syscall in table::SYSCALLS {
            index[syscall.nr as usize] = Some(syscall);
        }
        index
    })
}

/// The table entry for `nr`, if Lego knows the number.
pub fn lookup(nr: u64) -> Option<&'static Syscall> {
    index().get(nr as usize).copied().flatten()
}

/// Numbers already logged as refused or unknown: each is logged once.
static LOGGED: [AtomicBool; MAX_NR + 1] = [const { AtomicBool::new(false) }; MAX_NR + 1];

fn log_once(nr: u64, what: impl FnOnce() -> String) {
    let slot = (nr as usize).min(MAX_NR);
    if !LOGGED[slot].swap(true, Ordering::Relaxed) {
        tracing::warn!("{}", what());
    }
}

/// Serves one call by its table entry.
fn dispatch(cx: &mut Ctx, call: &Call) -> SysResult {
    match lookup(call.nr) {
        Some(Syscall {
            disposition: Disposition::Emulate { handler, .. },
            ..
        }) => handler(cx, call),
        // Safety: a passed-through call is the application's own, made on
        // its behalf with its arguments, exactly as if it had not trapped;
        // the table passes through only calls that cannot reach runtime
        // state (see the notes in `table`).
        Some(Syscall {
            disposition: Disposition::Pass,
            ..
        }) => unsafe { cx.host(call.nr, call.args) },
        Some(Syscall {
            disposition: Disposition::Refuse(errno),
            name,
            note,
            ..
        }) => {
            log_once(call.nr, || {
                format!(
                    "refused {name} ({}) with errno {} ({}): {note}",
                    call.nr,
                    errno.0,
                    errno.name().unwrap_or("unnamed")
                )
            });
            Err((*errno).into())
        }
        None => {
            log_once(call.nr, || {
                format!("unknown syscall {} refused with ENOSYS", call.nr)
            });
            Err(Errno::ENOSYS.into())
        }
    }
}

/// Serves one call and turns its result into the state the thread
/// resumes with: the one place a handler's outcome or error takes effect.
fn serve(cx: &mut Ctx, call: &Call) {
    // Only a blocking call made for this one may be restarted.
    cx.thread.interrupted = 0;
    let result = dispatch(cx, call);
    let rax = libc::REG_RAX as usize;
    match result {
        Ok(Outcome::Return(value)) => cx.regs()[rax] = value,
        Ok(Outcome::Resume) => {}
        Ok(Outcome::Exec { entry, sp }) => {
            let g = cx.regs();
            let segments = g[libc::REG_CSGSFS as usize];
            g.fill(0);
            g[libc::REG_RIP as usize] = entry as i64;
            g[libc::REG_RSP as usize] = sp as i64;
            g[libc::REG_EFL as usize] = 0x202;
            g[libc::REG_CSGSFS as usize] = segments;
            cx.thread.app_fs = 0;
        }
        Ok(Outcome::ExitThread) => thread::end(cx.thread),
        Ok(Outcome::ExitProcess(status)) => proc::end_process(cx.rt, status),
        Err(SysError::Errno(e)) => {
            cx.regs()[rax] = e.negated();
            if e == Errno::EINTR {
                signal::maybe_restart(cx.rt, cx.thread, call.nr, &mut cx.uc.uc_mcontext.gregs);
            }
        }
        Err(SysError::Fatal(why)) => crate::fatal(&why),
    }
    if cx.thread.exit_requested {
        // Another thread execs: the runtime holds nothing here.
        thread::end_for_exec(cx.thread);
    }
}

/// si_code of the SIGSYS that Syscall User Dispatch raises.
const SYS_USER_DISPATCH: i32 = 2;

/// The SIGSYS handler proper, entered from the assembly stub in `sud`
/// with the runtime's FS base and the selector at ALLOW.
///
/// # Safety
/// Only the kernel calls it (through the stub), with the siginfo and
/// ucontext of a SIGSYS delivered to an application thread.
pub unsafe extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uctx: *mut libc::c_void,
) {
    let served = std::panic::catch_unwind(|| {
        // Safety: the kernel passes SA_SIGINFO handlers a valid ucontext,
        // which stays alive until the handler returns.
        let uc = unsafe { &mut *(uctx as *mut libc::ucontext_t) };
        // Safety: inside the SIGSYS handler of an application thread;
        // this is the only reference to its control block while it runs.
        let thread = unsafe { crate::sud::current_ctl() };
        let rt = crate::runtime();
        if let Some(mask) = thread.suspended_mask.take() {
            // A sigsuspend whose signal was not delivered after all (its
            // disposition changed): its temporary mask ends here.
            thread.app_mask = mask;
        }
        // Safety: the kernel passes SA_SIGINFO handlers a full siginfo.
        let code = unsafe { (*info).si_code };
        if code != SYS_USER_DISPATCH {
            // A SIGSYS someone sent: the application's, not a syscall.
            signal::sent_sigsys(rt, thread, uc, info);
            return;
        }
        let g = &uc.uc_mcontext.gregs;
        let call = Call {
            nr: g[libc::REG_RAX as usize] as u64,
            args: [
                g[libc::REG_RDI as usize] as u64,
                g[libc::REG_RSI as usize] as u64,
                g[libc::REG_RDX as usize] as u64,
                g[libc::REG_R10 as usize] as u64,
                g[libc::REG_R8 as usize] as u64,
                g[libc::REG_R9 as usize] as u64,
            ],
        };
        let mut cx = Ctx { rt, thread, uc };
        serve(&mut cx, &call);
        // The kernel restores the mask saved in the frame: make it the
        // application's, as the call may have changed it.
        let mask = cx.thread.app_mask;
        signal::restore_mask_on_return(cx.uc, mask);
    });
    if served.is_err() {
        crate::fatal("runtime bug: a panic while serving a syscall (see the log)");
    }
}

/// Renders the compatibility table as Markdown (docs/syscalls.md): every
/// row names its handler, linked to the file that holds it.
pub fn compatibility_markdown() -> String {
    let mut out = String::from(
        "# Syscall compatibility\n\n\
         Generated from the table in \
         [`crates/runtime/src/syscall/table.rs`](../crates/runtime/src/syscall/table.rs) by \
         `LEGO_UPDATE_DOCS=1 cargo test -p lego-runtime syscall_doc`; do not edit by hand.\n\n\
         Every x86-64 system call an application makes is trapped by the Lego runtime \
         (Syscall User Dispatch) and is either *emulated* by Lego (by the handler named; \
         *partly emulated* when the note says what differs from Linux), *passed through* to \
         the processor's host kernel, or *refused* with an errno. A call that may wait is \
         made with the application's signal mask, so that a signal interrupts it as on \
         Linux, and is restarted after an SA_RESTART handler unless Linux never restarts \
         it. Numbers not listed fail with ENOSYS.\n\n",
    );
    let count = |label: &str| {
        table::SYSCALLS
            .iter()
            .filter(|s| s.disposition.label() == label)
            .count()
    };
    out.push_str(&format!(
        "{} syscalls: {} emulated, {} partly emulated, {} passed through, {} refused.\n\n",
        table::SYSCALLS.len(),
        count("emulated"),
        count("partly emulated"),
        count("passed through"),
        count("refused")
    ));
    out.push_str(
        "| nr | name | disposition | handler | waits | note |\n|---:|---|---|---|---|---|\n",
    );
    for s in table::SYSCALLS {
        let (disposition, handler) = match s.disposition {
            Disposition::Refuse(errno) => (
                format!("refused ({})", errno.name().unwrap_or("errno")),
                "-".to_string(),
            ),
            Disposition::Emulate { path, .. } => {
                let family = path.split("::").next().unwrap_or(path);
                (
                    s.disposition.label().to_string(),
                    format!("[`{path}`](../crates/runtime/src/syscall/{family}.rs)"),
                )
            }
            Disposition::Pass => (s.disposition.label().to_string(), "host".to_string()),
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} |\n",
            s.nr,
            s.name,
            disposition,
            handler,
            s.wait.label(),
            s.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_unique_and_indexed() {
        let mut last = None;
        for s in table::SYSCALLS {
            assert!(last < Some(s.nr), "{} is out of order", s.name);
            last = Some(s.nr);
            assert!((s.nr as usize) < MAX_NR);
            assert_eq!(lookup(s.nr as u64).map(|e| e.name), Some(s.name));
            assert!(!s.note.is_empty(), "{} has no note", s.name);
        }
        assert_eq!(lookup(libc::SYS_mmap as u64).map(|s| s.name), Some("mmap"));
        assert!(lookup(400).is_none());
    }

    #[test]
    fn syscall_doc_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/syscalls.md");
        let fresh = compatibility_markdown();
        if std::env::var_os("LEGO_UPDATE_DOCS").is_some() {
            std::fs::write(path, &fresh).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "docs/syscalls.md is stale: run `LEGO_UPDATE_DOCS=1 cargo test -p lego-runtime syscall_doc`"
        );
    }
}
