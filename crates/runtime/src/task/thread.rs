//! Application threads on the host: each runs on a runtime thread of its
//! own with a control block ([`ThreadCtl`], found through the GS base),
//! an alternate signal stack for the runtime's handlers, and Syscall User
//! Dispatch turned on with the control block's selector. This module
//! starts a thread in application code and brings it back when the
//! application thread ends.
//!
//! The moving parts, and why each exists:
//! - The selector byte: BLOCK while application code runs, ALLOW while the
//!   runtime runs, so the runtime's own syscalls go straight to the kernel.
//! - The FS base: the application's is saved in the control block while
//!   the runtime runs (the trap stubs swap it); the runtime's own is
//!   restored, so Rust code touching thread-locals never writes into the
//!   application's memory.
//! - The allowed region: the one code range the kernel never dispatches
//!   from, holding only the `rt_sigreturn` restorer.
//!
//! May call: `host`, `task::signals`.

use super::dispatch::{enable_dispatch, ThreadCtl, SELECTOR_ALLOW};
use super::signals::kernel_mask;
use crate::host::raw_syscall;
use std::arch::{asm, global_asm};
use std::io;

global_asm!(
    r#"
    // lego_thread_run(resume_sp: *mut u64, body: fn(arg) -> !, arg):
    // saves the callee-saved registers on this stack and the stack pointer
    // in *resume_sp, then runs body(arg), which never returns; it comes
    // back here only through lego_thread_resume(*resume_sp).
    .pushsection .text.lego_thread_run,"ax",@progbits
    .p2align 4
    .globl lego_thread_run
lego_thread_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    sub rsp, 8
    mov qword ptr [rdi], rsp
    mov rdi, rdx
    call rsi
    ud2
    .globl lego_thread_resume
lego_thread_resume:
    mov rsp, rdi
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    .popsection

    "#
);

extern "C" {
    fn lego_thread_run(
        resume_sp: *mut u64,
        body: unsafe extern "C" fn(*mut libc::c_void) -> !,
        arg: *mut libc::c_void,
    );
    fn lego_thread_resume(sp: u64) -> !;
}

/// Size of each application thread's stack for the runtime's handlers
/// (their frames, the kernel's signal frames with the FPU state, and the
/// runtime code they run).
pub const SIGSYS_STACK: usize = 512 << 10;

/// A thread's alternate signal stack for the runtime's handlers (the
/// application's stack is not ours to use). The kernel uses it until
/// [`AltStack::remove`]; a value never removed must be leaked.
pub struct AltStack(Box<[u8]>);

impl AltStack {
    /// Gives the calling thread an alternate signal stack of `size` bytes.
    pub fn install(size: usize) -> io::Result<AltStack> {
        let mut stack = AltStack(vec![0u8; size].into_boxed_slice());
        let ss = libc::stack_t {
            ss_sp: stack.0.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: size,
        };
        // Safety: the kernel keeps a pointer to the buffer, which lives
        // until `remove` turns the stack off, or forever if leaked.
        if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Turns the calling thread's alternate stack off and frees it (no
    /// handler may be running on it: the thread has left its handlers).
    pub fn remove(self) {
        let ss = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // Safety: disabling takes no buffer; the kernel forgets ours
        // before it is freed below.
        unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
        drop(self.0);
    }
}

/// Whether the CPU and kernel let user code read and write FS/GS bases.
pub fn fsgsbase_available() -> bool {
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    // Safety: getauxval has no preconditions.
    (unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_FSGSBASE) != 0
}

/// Enables dispatch on the calling thread, then starts the application at
/// `entry` with stack pointer `sp`. Never returns: from here on this thread
/// runs application code, re-entering the runtime only through SIGSYS.
///
/// # Safety
/// `ctl` must be leaked (it outlives the thread); the SIGSYS handler and an
/// alternate stack must be installed; `entry` and `sp` must be a loaded
/// program's entry point and initial stack.
pub unsafe fn enter_application(ctl: &'static mut ThreadCtl, entry: u64, sp: u64) -> ! {
    // The application starts with the mask `lego run` was started with.
    // Safety: rt_sigprocmask writes one 8-byte set of ours.
    unsafe {
        raw_syscall(
            libc::SYS_rt_sigprocmask as u64,
            [
                libc::SIG_BLOCK as u64,
                0,
                &mut ctl.app_mask as *mut u64 as u64,
                8,
                0,
                0,
            ],
        );
    }
    // Linux starts a process with registers cleared, rsp at argc, rdx = 0
    // (no exit handler) and FS base 0.
    let mut regs = [0i64; 23];
    regs[libc::REG_RIP as usize] = entry as i64;
    regs[libc::REG_RSP as usize] = sp as i64;
    // Safety: delegated to the caller.
    unsafe { start(ctl, &regs, 0, || {}) }
}

/// Starts a new application thread on the calling (fresh) runtime thread:
/// enables its dispatch, tells the creator through `ready`, and resumes
/// the application with `regs` (the creator's, with the child's rax and
/// stack) and FS base `fs`, under the application's mask in `ctl`.
///
/// # Safety
/// As [`enter_application`], with `regs` a valid user register set.
pub unsafe fn enter_thread(
    ctl: &'static mut ThreadCtl,
    regs: &[i64; 23],
    fs: u64,
    ready: impl FnOnce(),
) -> ! {
    // Safety: delegated to the caller.
    unsafe { start(ctl, regs, fs, ready) }
}

/// Runs an application thread on the calling runtime thread: `body(arg)`
/// enters the application and never returns; when the application thread
/// ends, [`leave_thread`] brings the runtime thread back here, out of the
/// SIGSYS handler it ended in, so that it can free what it holds and end
/// as an ordinary thread (its host tid is then never reused by the
/// runtime, as Linux gives every new thread a new tid).
///
/// # Safety
/// `ctl` is the thread's control block and outlives the call; `body`
/// must end only through [`leave_thread`], and the frames it leaves
/// behind must own nothing that needs dropping.
pub unsafe fn run_thread(
    ctl: *mut ThreadCtl,
    body: unsafe extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) {
    // Safety: delegated to the caller; the stub saves the stack pointer
    // in the control block before it calls `body`.
    unsafe { lego_thread_run(&raw mut (*ctl).resume_sp, body, arg) }
}

/// Ends the calling application thread: back to where [`run_thread`]
/// started it, or, for the thread the program started on (which has no
/// such place), the host thread ends here.
///
/// # Safety
/// Inside a handler of an application thread whose runtime holds no lock
/// and no value that needs dropping in the frames being left.
pub unsafe fn leave_thread(ctl: &mut ThreadCtl) -> ! {
    if ctl.resume_sp != 0 {
        // Safety: `resume_sp` was saved by `lego_thread_run` on this
        // thread's own stack, whose frames below it are still live.
        unsafe { lego_thread_resume(ctl.resume_sp) }
    }
    // Safety: ends this thread only.
    unsafe { raw_syscall(libc::SYS_exit as u64, [0; 6]) };
    unreachable!("exit returned")
}

/// Register offsets in glibc's gregs (the kernel's sigcontext order).
const _: () = {
    assert!(libc::REG_R8 == 0 && libc::REG_R15 == 7);
    assert!(libc::REG_RDI == 8 && libc::REG_RSI == 9 && libc::REG_RBP == 10);
    assert!(libc::REG_RBX == 11 && libc::REG_RDX == 12 && libc::REG_RAX == 13);
    assert!(libc::REG_RCX == 14 && libc::REG_RSP == 15 && libc::REG_RIP == 16);
};

unsafe fn start(ctl: &'static mut ThreadCtl, regs: &[i64; 23], fs: u64, ready: impl FnOnce()) -> ! {
    ctl.selector = SELECTOR_ALLOW;
    // Safety (both asm blocks): reading our own FS base and pointing GS at
    // the leaked control block; nothing else in the runtime uses GS.
    unsafe {
        asm!("rdfsbase {}", out(reg) ctl.runtime_fs, options(nomem, nostack));
        asm!("wrgsbase {}", in(reg) ctl as *mut ThreadCtl as u64, options(nostack));
    }
    ctl.app_fs = fs;
    if let Err(e) = enable_dispatch(ctl) {
        crate::host::report::fatal(&format!(
            "cannot enable Syscall User Dispatch: {e} (needs Linux 5.11 or later)"
        ));
    }
    ready();
    let mask = kernel_mask(ctl.app_mask);
    // Safety: rt_sigprocmask reads one 8-byte set of ours. A signal taken
    // between here and the jump finds the selector ALLOW and is queued
    // again for when the application runs (see `runtime_signal_handler`).
    unsafe {
        raw_syscall(
            libc::SYS_rt_sigprocmask as u64,
            [
                libc::SIG_SETMASK as u64,
                &mask as *const u64 as u64,
                0,
                8,
                0,
                0,
            ],
        );
    }
    // Safety: from the selector store on, no syscall is made before the
    // jump; every general register is loaded from `regs` (r11, whose value
    // a syscall clobbers anyway, last holds `regs`), then the jump reads
    // the instruction pointer from it.
    unsafe {
        asm!(
            "mov byte ptr [rdi], 1",
            "wrfsbase rsi",
            "mov r8, qword ptr [r11]",
            "mov r9, qword ptr [r11 + 8]",
            "mov r10, qword ptr [r11 + 16]",
            "mov r12, qword ptr [r11 + 32]",
            "mov r13, qword ptr [r11 + 40]",
            "mov r14, qword ptr [r11 + 48]",
            "mov r15, qword ptr [r11 + 56]",
            "mov rdi, qword ptr [r11 + 64]",
            "mov rsi, qword ptr [r11 + 72]",
            "mov rbp, qword ptr [r11 + 80]",
            "mov rbx, qword ptr [r11 + 88]",
            "mov rdx, qword ptr [r11 + 96]",
            "mov rax, qword ptr [r11 + 104]",
            "mov rcx, qword ptr [r11 + 112]",
            "mov rsp, qword ptr [r11 + 120]",
            "jmp qword ptr [r11 + 128]",
            in("rdi") ctl as *mut ThreadCtl,
            in("rsi") fs,
            in("r11") regs.as_ptr(),
            options(noreturn)
        )
    }
}
