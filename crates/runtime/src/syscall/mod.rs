//! Syscall dispatch. Every syscall the application makes arrives in
//! [`sigsys_handler`] and is served according to the table in [`table`]:
//! emulated by the runtime, passed through to the host kernel, or refused
//! with an errno. One shape for every handler: it takes the runtime and
//! the call, and returns what the application's `rax` gets — a value, or a
//! negated errno.

pub mod exec;
pub mod file;
pub mod fork;
pub mod fs;
pub mod mem;
pub mod path;
pub mod proc;
pub mod signal;
pub mod table;
pub mod thread;

use crate::Runtime;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// One trapped syscall: its number and its six argument registers.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub nr: u64,
    pub args: [u64; 6],
}

pub type Handler = fn(&Runtime, &Call) -> i64;

/// What Lego does with a syscall.
#[derive(Clone, Copy)]
pub enum Disposition {
    /// Served by the runtime.
    Emulate(Handler),
    /// Made on the host kernel unchanged.
    Pass,
    /// Fails with this errno.
    Refuse(i32),
}

impl Disposition {
    pub fn label(&self) -> &'static str {
        match self {
            Disposition::Emulate(_) => "emulated",
            Disposition::Pass => "passed through",
            Disposition::Refuse(_) => "refused",
        }
    }
}

pub struct Syscall {
    pub nr: u32,
    pub name: &'static str,
    pub disposition: Disposition,
    pub note: &'static str,
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

/// Serves one call.
pub fn dispatch(rt: &Runtime, call: &Call) -> i64 {
    match lookup(call.nr) {
        Some(Syscall {
            disposition: Disposition::Emulate(handler),
            ..
        }) => handler(rt, call),
        // Safety: a passed-through call is the application's own, made on
        // its behalf with its arguments, exactly as if it had not trapped;
        // the table passes through only calls that cannot reach runtime
        // state (see the notes in `table`).
        Some(Syscall {
            disposition: Disposition::Pass,
            ..
        }) => unsafe { crate::sud::host_syscall(call.nr, call.args) },
        Some(Syscall {
            disposition: Disposition::Refuse(errno),
            name,
            note,
            ..
        }) => {
            log_once(call.nr, || {
                format!("refused {name} ({}) with errno {errno}: {note}", call.nr)
            });
            -(*errno as i64)
        }
        None => {
            log_once(call.nr, || {
                format!("unknown syscall {} refused with ENOSYS", call.nr)
            });
            -(libc::ENOSYS as i64)
        }
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
        // Safety: inside the SIGSYS handler of an application thread.
        let ctl = unsafe { crate::sud::current_ctl() };
        let rt = crate::runtime();
        if let Some(mask) = ctl.suspended_mask.take() {
            // A sigsuspend whose signal was not delivered after all (its
            // disposition changed): its temporary mask ends here.
            ctl.app_mask = mask;
        }
        // Safety: the kernel passes SA_SIGINFO handlers a full siginfo.
        let code = unsafe { (*info).si_code };
        if code != SYS_USER_DISPATCH {
            // A SIGSYS someone sent: the application's, not a syscall.
            signal::sent_sigsys(rt, ctl, uc, info);
            return;
        }
        if uc.uc_mcontext.gregs[libc::REG_RAX as usize] == libc::SYS_rt_sigreturn {
            signal::sigreturn_frame(rt, ctl, uc);
            return;
        }
        let g = &mut uc.uc_mcontext.gregs;
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
        // Only a blocking call made for this one may be restarted.
        ctl.interrupted = 0;
        ctl.regs = &*g;
        let ret = dispatch(rt, &call);
        ctl.regs = std::ptr::null();
        g[libc::REG_RAX as usize] = ret;
        signal::maybe_restart(rt, ctl, call.nr, g);
        // Only a successful execve changes where the handler returns to.
        let is_exec = call.nr == libc::SYS_execve as u64 || call.nr == libc::SYS_execveat as u64;
        let exec = if is_exec && ret == 0 {
            rt.pending_exec
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        } else {
            None
        };
        if let Some((entry, sp)) = exec {
            // execve succeeded: return into the new program as Linux starts
            // one (registers cleared, rsp at argc, FS base 0).
            let segments = g[libc::REG_CSGSFS as usize];
            for reg in g.iter_mut() {
                *reg = 0;
            }
            g[libc::REG_RIP as usize] = entry as i64;
            g[libc::REG_RSP as usize] = sp as i64;
            g[libc::REG_EFL as usize] = 0x202;
            g[libc::REG_CSGSFS as usize] = segments;
            ctl.app_fs = 0;
        }
        if ctl.exit_requested {
            // Another thread execs: the runtime holds nothing here.
            thread::end_for_exec();
        }
        // The kernel restores the mask saved in the frame: make it the
        // application's, as the call may have changed it.
        signal::restore_mask_on_return(uc, ctl.app_mask);
    });
    if served.is_err() {
        crate::fatal("runtime bug: a panic while serving a syscall (see the log)");
    }
}

/// Renders the compatibility table as Markdown (docs/syscalls.md).
pub fn compatibility_markdown() -> String {
    let mut out = String::from(
        "# Syscall compatibility\n\n\
         Generated from `crates/runtime/src/syscall/table.rs` (itself written by `crates/runtime/tools/gen_table.py`) by \
         `LEGO_UPDATE_DOCS=1 cargo test -p lego-runtime syscall_doc`; do not edit by hand.\n\n\
         Every x86-64 system call an application makes is trapped by the Lego runtime \
         (Syscall User Dispatch) and is either *emulated* by Lego, *passed through* to the \
         processor's host kernel, or *refused* with an errno. Numbers not listed fail with \
         ENOSYS.\n\n",
    );
    let count = |label: &str| {
        table::SYSCALLS
            .iter()
            .filter(|s| s.disposition.label() == label)
            .count()
    };
    out.push_str(&format!(
        "{} syscalls: {} emulated, {} passed through, {} refused.\n\n",
        table::SYSCALLS.len(),
        count("emulated"),
        count("passed through"),
        count("refused")
    ));
    out.push_str("| nr | name | disposition | note |\n|---:|---|---|---|\n");
    for s in table::SYSCALLS {
        let disposition = match s.disposition {
            Disposition::Refuse(errno) => format!("refused ({})", errno_name(errno)),
            other => other.label().to_string(),
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            s.nr, s.name, disposition, s.note
        ));
    }
    out
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOSYS => "ENOSYS",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::ENODEV => "ENODEV",
        libc::EBADF => "EBADF",
        _ => "errno",
    }
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
