//! The trap layer: every way the kernel enters the runtime on an
//! application thread. A syscall the application makes raises SIGSYS
//! (Syscall User Dispatch) and enters [`sigsys_handler`]; a signal the
//! application handles enters the runtime's signal entry, which delivers
//! it on application code or defers it inside the runtime. The assembly
//! stubs switch to the runtime's FS base (its TLS) on entry, set the
//! selector to ALLOW so the runtime's own syscalls go straight to the
//! kernel, and undo both on return.
//!
//! May call: `syscall`, `process`, `task`, `host`.

use crate::host::report::fatal;
use crate::process::{runtime, Runtime};
use crate::task::blocking::blocking_window;
use crate::task::dispatch::current_ctl;
use crate::task::signals::{self, EXEC_KILL_SIGNAL};
use lego_proto::state::Stop;
use std::arch::global_asm;

global_asm!(
    r#"
    // With the control block's address in rax: selector to ALLOW, save the
    // application's FS base, switch to the runtime's.
    .macro LEGO_ENTER_RUNTIME
    mov byte ptr [rax], 0
    rdfsbase rcx
    mov qword ptr [rax + 16], rcx
    mov rcx, qword ptr [rax + 8]
    wrfsbase rcx
    .endm
    // Back to the application's FS base (possibly changed by arch_prctl)
    // and the selector to BLOCK.
    .macro LEGO_LEAVE_RUNTIME
    rdgsbase rax
    mov rcx, qword ptr [rax + 16]
    wrfsbase rcx
    mov byte ptr [rax], 1
    .endm
    .pushsection .text.lego_signal_entry,"ax",@progbits
    .p2align 4
    .globl lego_signal_entry
lego_signal_entry:
    rdgsbase rax
    test rax, rax
    jz 2f
    cmp byte ptr [rax], 0
    je 3f
    LEGO_ENTER_RUNTIME
    sub rsp, 8
    call {app_signal}
    add rsp, 8
    LEGO_LEAVE_RUNTIME
    ret
3:
    sub rsp, 8
    call {runtime_signal}
    add rsp, 8
2:
    ret
    .globl lego_signal_entry_end
lego_signal_entry_end:
    .popsection

    .pushsection .text.lego_sigsys_entry,"ax",@progbits
    .p2align 4
    .globl lego_sigsys_entry
lego_sigsys_entry:
    rdgsbase rax
    LEGO_ENTER_RUNTIME
    sub rsp, 8
    call {handler}
    add rsp, 8
    LEGO_LEAVE_RUNTIME
    ret
    .globl lego_sigsys_entry_end
lego_sigsys_entry_end:
    .popsection
    "#,
    handler = sym sigsys_handler,
    app_signal = sym app_signal_handler,
    runtime_signal = sym runtime_signal_handler,
);

extern "C" {
    fn lego_sigsys_entry();
    fn lego_signal_entry();
    static lego_sigsys_entry_end: u8;
    static lego_signal_entry_end: u8;
}

/// Whether `rip` lies in the runtime's entry stubs or its sigreturn
/// restorer: code that runs with the selector at BLOCK, but is the
/// runtime's (its registers there are not the application's).
fn in_entry_stubs(rip: u64) -> bool {
    // Safety: addresses of our own code labels.
    let (sigsys, signal) = unsafe {
        (
            (lego_sigsys_entry as *const () as u64)..(&lego_sigsys_entry_end as *const u8 as u64),
            (lego_signal_entry as *const () as u64)..(&lego_signal_entry_end as *const u8 as u64),
        )
    };
    sigsys.contains(&rip) || signal.contains(&rip) || crate::task::dispatch::in_allowed_region(rip)
}

/// Installs the kernel's entries into the runtime: the SIGSYS handler
/// and the runtime's own thread-ending signal (application signals get
/// the same entry when the application handles them).
pub fn install() -> Result<(), String> {
    signals::set_entries(
        lego_sigsys_entry as *const () as usize,
        lego_signal_entry as *const () as usize,
    );
    signals::install_sigsys_handler()
        .map_err(|e| format!("cannot install the SIGSYS handler: {e}"))?;
    signals::install_exec_kill_action()
        .map_err(|e| format!("cannot install the runtime's thread-ending signal: {e}"))
}

/// si_code of the SIGSYS that Syscall User Dispatch raises.
const SYS_USER_DISPATCH: i32 = 2;

/// The SIGSYS handler proper, entered from the assembly stub with the
/// runtime's FS base and the selector at ALLOW.
///
/// # Safety
/// Only the kernel calls it (through the stub), with the siginfo and
/// ucontext of a SIGSYS delivered to an application thread.
unsafe extern "C" fn sigsys_handler(
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
        let thread = unsafe { current_ctl() };
        let rt = runtime();
        if let Some(mask) = thread.suspended_mask.take() {
            // A sigsuspend whose signal was not delivered after all (its
            // disposition changed): its temporary mask ends here.
            thread.app_mask = mask;
        }
        // Safety: the kernel passes SA_SIGINFO handlers a full siginfo.
        let code = unsafe { (*info).si_code };
        if code != SYS_USER_DISPATCH {
            // A SIGSYS someone sent: the application's, not a syscall.
            signals::sent_sigsys(&rt.signals, thread, uc, info);
            return;
        }
        crate::syscall::serve(rt, thread, uc);
        // The kernel restores the mask saved in the frame: make it the
        // application's, as the call may have changed it.
        signals::restore_mask_on_return(uc, thread.app_mask);
    });
    if served.is_err() {
        fatal("runtime bug: a panic while serving a syscall (see the log)");
    }
}

/// The host sees the arena as one reservation, so a touch of an address
/// the memory manager has not mapped faults as a protection error there;
/// Linux reports it as a missing mapping (SEGV_MAPERR).
fn arena_fault_code(rt: &Runtime, info: &mut [u8; signals::SIGINFO_LEN]) {
    const SEGV_MAPERR: i32 = 1;
    const SEGV_ACCERR: i32 = 2;
    let code = i32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
    // si_addr follows si_signo, si_errno, si_code and padding.
    let addr = signals::field(info, 16);
    let in_arena = (lego_proto::USER_MIN..lego_proto::USER_END).contains(&addr);
    if code == SEGV_ACCERR && in_arena && !rt.mm.arena.is_mapped(addr) {
        info[8..12].copy_from_slice(&SEGV_MAPERR.to_ne_bytes());
    }
}

/// A signal that interrupted application code: entered from
/// `lego_signal_entry` with the runtime's FS base and the selector ALLOW.
///
/// # Safety
/// Only the kernel calls it (through the stub), for a signal taken over
/// application code.
unsafe extern "C" fn app_signal_handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uctx: *mut libc::c_void,
) {
    if sig == EXEC_KILL_SIGNAL {
        // It interrupted application code: nothing of the runtime's is
        // held, so the thread can stop here for a thread taking the
        // process's state, or end for one that execs.
        let served = std::panic::catch_unwind(|| {
            // Safety: on an application thread, whose GS base is its
            // control block; the only reference to it while this handler
            // runs. The kernel's ucontext stays alive until the handler
            // returns.
            let (ctl, uc) = unsafe { (current_ctl(), &*(uctx as *const libc::ucontext_t)) };
            let rt = runtime();
            // In the entry stubs the registers are not the application's:
            // the stopper sends again, and the thread stops at the end of
            // its call or over its own code.
            if !in_entry_stubs(uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64) {
                rt.threads.park(ctl, uc, Stop::Running);
            }
            rt.threads.end_for_exec(ctl);
        });
        if served.is_err() {
            fatal("runtime bug: a panic while stopping a thread (see the log)");
        }
        return;
    }
    let served = std::panic::catch_unwind(|| {
        // Safety: inside a signal handler on an application thread; the
        // kernel's ucontext stays alive until the handler returns.
        let ctl = unsafe { current_ctl() };
        let uc = unsafe { &mut *(uctx as *mut libc::ucontext_t) };
        let rt = runtime();
        let mut info = signals::signal_info(info);
        if sig == libc::SIGSEGV {
            arena_fault_code(rt, &mut info);
        }
        signals::deliver(&rt.signals, ctl, uc, sig as usize, &info);
    });
    if served.is_err() {
        fatal("runtime bug: a panic while delivering a signal (see the log)");
    }
}

/// A signal that arrived while the runtime ran, which happens only inside
/// a blocking call made for the application (the only time the runtime
/// unblocks application signals) or as a fault in the runtime itself.
/// The signal is queued again, blocked until the SIGSYS handler returns,
/// and the blocking call is made to fail with EINTR; the application then
/// takes it as it would have natively.
unsafe extern "C" fn runtime_signal_handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uctx: *mut libc::c_void,
) {
    let info = signals::signal_info(info);
    // Safety: the kernel's ucontext stays alive until the handler returns.
    let uc = unsafe { &mut *(uctx as *mut libc::ucontext_t) };
    let code = i32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
    let synchronous = matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
    );
    if synchronous && code > 0 {
        fatal(&format!(
            "runtime bug: signal {sig} in the runtime at {:#x}",
            uc.uc_mcontext.gregs[libc::REG_RIP as usize]
        ));
    }
    // Safety: only the SIGSYS handler of an application thread unblocks
    // signals, and its thread's GS base is its control block.
    let ctl = unsafe { current_ctl() };
    if sig == EXEC_KILL_SIGNAL {
        // Inside the runtime, which may hold locks: the thread ends, or
        // stops, when its SIGSYS handler is done (a blocking call returns
        // EINTR).
        ctl.request_stop_or_exit();
    } else {
        let sig = sig as usize;
        signals::requeue(sig, &info);
        *signals::mask_of(uc) |= signals::bit(sig);
        ctl.set_interrupted(ctl.interrupted() | signals::bit(sig));
    }
    let (start, syscall, done) = blocking_window();
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    if (start..=syscall).contains(&rip) {
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = done as i64;
        uc.uc_mcontext.gregs[libc::REG_RAX as usize] = -(libc::EINTR as i64);
    }
}
