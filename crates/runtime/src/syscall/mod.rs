//! Syscall dispatch, and the one contract every handler follows.
//!
//! Every syscall the application makes arrives, through the trap layer's
//! SIGSYS entry, in [`serve`] and
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

pub mod backstop;
pub mod contract;
pub mod exec;
pub mod file;
pub mod fork;
pub mod mem;
pub mod path;
pub mod proc;
pub mod signal;
pub mod socket;
pub mod table;
pub mod thread;

use crate::process::Runtime;
use crate::task::dispatch::ThreadCtl;
pub use contract::{
    ok, returned, Call, Ctx, Disposition, Errno, Handler, Outcome, SysError, SysResult, Syscall,
    Wait,
};
use lego_proto::state::Stop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

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

/// Serves one call by its table entry (`None`: a number Lego does not
/// know).
fn dispatch(cx: &mut Ctx, call: &Call, entry: Option<&'static Syscall>) -> SysResult {
    match entry {
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
/// Serves the syscall the application thread `thread` trapped on (its
/// registers in `uc`) and turns the result into the state the thread
/// resumes with: the one place a handler's outcome or error takes effect.
/// Called by the trap layer's SIGSYS entry.
pub fn serve(rt: &'static Runtime, thread: &mut ThreadCtl, uc: &mut libc::ucontext_t) {
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
    // One lookup per call: the row gives both the handler and the wait
    // class.
    let entry = lookup(call.nr);
    let wait = entry.map_or(Wait::Never, |s| s.wait);
    let mut cx = Ctx {
        rt,
        wait,
        thread,
        uc,
    };
    // Only a blocking call made for this one may be restarted, or stopped
    // in for a thread taking the process's state.
    cx.thread.set_interrupted(0);
    cx.thread.take_park_request();
    cx.thread.rewound = None;
    let result = dispatch(&mut cx, &call, entry);
    let rax = libc::REG_RAX as usize;
    let mut restarted = false;
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
        Ok(Outcome::ExitProcess(status)) => proc::end_process(status),
        Err(SysError::Errno(e)) => {
            cx.regs()[rax] = e.negated();
            let by_runtime = cx.thread.park_requested() && cx.thread.interrupted() == 0;
            if e == Errno::EINTR && by_runtime && wait != Wait::Never {
                // A wait cut short by the runtime's own signal, not one of
                // the application's: made again, as Linux restarts a call
                // interrupted without a handler (a timed wait waits its
                // whole timeout again). A handled signal that comes first
                // decides as on Linux (see `signals::deliver`); a
                // sigsuspend's temporary mask ends until it is made again.
                if let Some(mask) = cx.thread.suspended_mask.take() {
                    cx.thread.app_mask = mask;
                }
                let g = cx.regs();
                g[libc::REG_RIP as usize] -= 2;
                g[rax] = call.nr as i64;
                cx.thread.rewound =
                    Some((g[libc::REG_RIP as usize] as u64, wait == Wait::Restarted));
                restarted = true;
            } else if e == Errno::EINTR && wait == Wait::Restarted {
                crate::task::signals::maybe_restart(
                    &cx.rt.signals,
                    cx.thread,
                    call.nr,
                    &mut cx.uc.uc_mcontext.gregs,
                );
            }
        }
        Err(SysError::Fatal(why)) => crate::host::report::fatal(&why),
    }
    if cx.thread.take_park_request() {
        // Another thread takes the process's state: this one stops here,
        // at the end of its call (or before making it again).
        let stop = if restarted {
            Stop::CallRestart
        } else {
            Stop::CallDone
        };
        cx.rt.threads.park(cx.thread, cx.uc, stop);
    }
    if cx.thread.exit_requested() {
        // Another thread execs: the runtime holds nothing here.
        cx.rt.threads.end_for_exec(cx.thread);
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
