//! Syscall User Dispatch: every syscall the application makes traps into
//! [`sigsys_entry`], which runs the runtime's dispatcher and returns the
//! result in the application's `rax`.
//!
//! The moving parts, and why each exists:
//! - A per-thread [`ThreadCtl`], found through the GS base (the
//!   application never uses GS; `arch_prctl(ARCH_SET_GS)` is refused).
//! - Its selector byte: BLOCK while application code runs, ALLOW while the
//!   runtime runs, so the runtime's own syscalls go straight to the kernel.
//! - The FS base swap: the handler runs on the application's thread with
//!   the application's FS base (its TLS). Rust code touching thread-locals
//!   there would write into the application's memory, so the entry stub
//!   switches to the runtime's FS base and the exit stub switches back.
//! - The allowed region: the one code range the kernel never dispatches
//!   from, holding only the `rt_sigreturn` restorer, which must run after
//!   the selector is BLOCK again.

use std::arch::{asm, global_asm};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

pub const SELECTOR_ALLOW: u8 = 0;
pub const SELECTOR_BLOCK: u8 = 1;

const PR_SET_SYSCALL_USER_DISPATCH: libc::c_int = 59;
const PR_SYS_DISPATCH_ON: libc::c_ulong = 1;

/// Per-application-thread state the entry stub reaches through GS.
/// The stub depends on the field offsets: keep them in sync.
#[repr(C)]
pub struct ThreadCtl {
    /// Offset 0: the Syscall User Dispatch selector.
    pub selector: u8,
    _pad: [u8; 7],
    /// Offset 8: the runtime thread's FS base.
    pub runtime_fs: u64,
    /// Offset 16: the application's FS base (saved on entry, restored on
    /// exit; `arch_prctl(ARCH_SET_FS)` writes it here).
    pub app_fs: u64,
    /// Offset 24: the signal mask as the application sees it. The kernel's mask
    /// while the application runs is this without SIGSYS.
    pub app_mask: u64,
    /// Offset 32: signals that interrupted a blocking call made for the
    /// application (see [`host_syscall`]). Checked by the blocking stub
    /// just before its syscall; the dispatcher decides on restarts from it.
    pub interrupted: u64,
    /// The mask to save in the next signal frame instead of `app_mask`:
    /// set by sigsuspend, whose temporary mask lasts until its signal's
    /// handler starts, and whose handler returns to the mask before it.
    pub suspended_mask: Option<u64>,
    /// The thread's `set_tid_address` / CLONE_CHILD_CLEARTID word, which is
    /// cleared and woken when its application thread ends (0: none).
    pub clear_tid: u64,
    /// Another thread execs: this one ends when the runtime is done with
    /// what it was doing for it.
    pub exit_requested: bool,
    /// Where the runtime thread resumes when its application thread ends
    /// (a stack pointer saved by `lego_thread_run`; 0 for the thread the
    /// program started on, which just exits).
    pub resume_sp: u64,
}

// The assembly stubs address these fields by offset.
const _: () = {
    assert!(std::mem::offset_of!(ThreadCtl, selector) == 0);
    assert!(std::mem::offset_of!(ThreadCtl, runtime_fs) == 8);
    assert!(std::mem::offset_of!(ThreadCtl, app_fs) == 16);
    assert!(std::mem::offset_of!(ThreadCtl, interrupted) == 32);
};

impl ThreadCtl {
    pub fn new() -> ThreadCtl {
        ThreadCtl {
            selector: SELECTOR_ALLOW,
            _pad: [0; 7],
            runtime_fs: 0,
            app_fs: 0,
            app_mask: 0,
            interrupted: 0,
            suspended_mask: None,
            clear_tid: 0,
            exit_requested: false,
            resume_sp: 0,
        }
    }
}

impl Default for ThreadCtl {
    fn default() -> Self {
        ThreadCtl::new()
    }
}

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
    .pushsection .text.lego_sud_allowed,"ax",@progbits
    .p2align 4
    .globl lego_sud_allowed_start
lego_sud_allowed_start:
    .globl lego_sigreturn_restorer
lego_sigreturn_restorer:
    mov eax, 15
    syscall
    ud2
    .globl lego_sud_allowed_end
lego_sud_allowed_end:
    .popsection

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

    .p2align 4
    .globl lego_blocking
lego_blocking:
    mov rax, rdi
    mov rdi, rsi
    mov rsi, rdx
    mov rdx, rcx
    mov r10, r8
    mov r8, r9
    mov r9, qword ptr [rsp + 8]
    rdgsbase r11
    cmp qword ptr [r11 + 32], 0
    jne 4f
    .globl lego_blocking_syscall
lego_blocking_syscall:
    syscall
    .globl lego_blocking_done
lego_blocking_done:
    ret
4:
    mov rax, -4
    ret
    .popsection

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
    .popsection
    "#,
    handler = sym crate::syscall::sigsys_handler,
    app_signal = sym crate::syscall::signal::app_signal_handler,
    runtime_signal = sym crate::syscall::signal::runtime_signal_handler,
);

extern "C" {
    static lego_sud_allowed_start: u8;
    static lego_sud_allowed_end: u8;
    fn lego_sigreturn_restorer();
    fn lego_sigsys_entry();
    fn lego_signal_entry();
    fn lego_blocking(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64;
    fn lego_thread_run(
        resume_sp: *mut u64,
        body: unsafe extern "C" fn(*mut libc::c_void) -> !,
        arg: *mut libc::c_void,
    );
    fn lego_thread_resume(sp: u64) -> !;
    static lego_blocking_syscall: u8;
    static lego_blocking_done: u8;
}

/// The kernel's `struct sigaction` for rt_sigaction(2).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

const SA_SIGINFO: u64 = 0x4;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTORER: u64 = 0x0400_0000;

fn sigbit(sig: libc::c_int) -> u64 {
    1 << (sig - 1)
}

/// Application signals with a handler (the runtime's entry on the host).
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// Installs the SIGSYS handler with a raw rt_sigaction, so its restorer is
/// ours (inside the allowed region) rather than libc's.
pub fn install_sigsys_handler() -> io::Result<()> {
    sigsys_action(HANDLED.load(Ordering::SeqCst))
}

/// Records whether the application handles `sig`. Handled signals wait
/// while the runtime serves a call (delivering one needs the application's
/// context), except inside a blocking call; the others keep their host
/// default or ignore action and take effect at once, as natively — so
/// while nothing is handled, blocking calls need no mask changes at all.
pub fn set_handled(sig: libc::c_int, handled: bool) -> io::Result<()> {
    let bit = sigbit(sig);
    let old = if handled {
        HANDLED.fetch_or(bit, Ordering::SeqCst)
    } else {
        HANDLED.fetch_and(!bit, Ordering::SeqCst)
    };
    if (old & bit != 0) == handled {
        return Ok(());
    }
    sigsys_action(HANDLED.load(Ordering::SeqCst))
}

fn sigsys_action(handled: u64) -> io::Result<()> {
    // Synchronous faults stay deliverable inside the handler. SIGPIPE
    // waits: a write of the runtime's own to a peer that went away must
    // fail with EPIPE and be reported, not end the process unexplained (an
    // application write that raised it still ends it, on return).
    let action = KernelSigaction {
        handler: lego_sigsys_entry as *const () as usize,
        flags: SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
        restorer: lego_sigreturn_restorer as *const () as usize,
        mask: (handled | sigbit(libc::SIGPIPE)) & !synchronous_signals(),
    };
    set_action(libc::SIGSYS, &action)
}

/// Installs `action` as the host's action for `sig`.
fn set_action(sig: libc::c_int, action: &KernelSigaction) -> io::Result<()> {
    // Safety: rt_sigaction reads one KernelSigaction of the kernel's layout
    // (the sigset is 8 bytes, passed as the last argument).
    let ret = unsafe {
        raw_syscall(
            libc::SYS_rt_sigaction as u64,
            [
                sig as u64,
                action as *const KernelSigaction as u64,
                0,
                8,
                0,
                0,
            ],
        )
    };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(())
}

/// The signals the runtime keeps deliverable inside its handlers: faults
/// in runtime code must not wait.
fn synchronous_signals() -> u64 {
    sigbit(libc::SIGSEGV)
        | sigbit(libc::SIGBUS)
        | sigbit(libc::SIGILL)
        | sigbit(libc::SIGFPE)
        | sigbit(libc::SIGTRAP)
}

/// The mask the kernel applies while the application runs with `mask`:
/// SIGSYS is the runtime's, SIGKILL and SIGSTOP cannot be blocked.
pub fn kernel_mask(mask: u64) -> u64 {
    mask & !(sigbit(libc::SIGSYS)
        | sigbit(libc::SIGKILL)
        | sigbit(libc::SIGSTOP)
        | sigbit(EXEC_KILL_SIGNAL))
}

/// The runtime's own signal (SIGRTMAX, not the application's): it ends an
/// application thread when another one execs, as Linux's execve ends every
/// other thread. Never blocked while the application runs nor while the
/// runtime serves it, so it reaches a thread wherever it is; a thread it
/// finds inside the runtime ends at the next safe point (see
/// `syscall::thread::end_for_exec`).
pub const EXEC_KILL_SIGNAL: libc::c_int = 64;

/// Installs the runtime's entry for [`EXEC_KILL_SIGNAL`] (no SA_RESTART:
/// a blocking call it interrupts must return, so the thread can end).
pub fn install_exec_kill_action() -> io::Result<()> {
    let action = KernelSigaction {
        handler: lego_signal_entry as *const () as usize,
        flags: SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
        restorer: lego_sigreturn_restorer as *const () as usize,
        mask: !synchronous_signals(),
    };
    set_action(EXEC_KILL_SIGNAL, &action)
}

/// Installs the host action for application signal `sig`: the runtime's
/// entry when the application handles it, else the default or ignore
/// disposition itself.
pub fn install_app_action(sig: libc::c_int, handled: bool, ignore: bool) -> io::Result<()> {
    set_handled(sig, handled)?;
    let action = if handled {
        // No SA_RESTART: a blocking call made for the application must
        // come back with EINTR so the runtime can deliver first and then
        // restart (or not) as the application's own flags say.
        KernelSigaction {
            handler: lego_signal_entry as *const () as usize,
            flags: SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
            restorer: lego_sigreturn_restorer as *const () as usize,
            mask: !synchronous_signals(),
        }
    } else {
        KernelSigaction {
            handler: if ignore { 1 } else { 0 },
            flags: SA_RESTORER,
            restorer: lego_sigreturn_restorer as *const () as usize,
            mask: 0,
        }
    };
    set_action(sig, &action)
}

/// Where the blocking window starts and where its syscall instruction is:
/// a signal caught with the instruction pointer in `start..=syscall` came
/// before the call was made.
pub fn blocking_window() -> (u64, u64, u64) {
    // Safety: addresses of our own code labels.
    unsafe {
        (
            lego_blocking as *const () as u64,
            &lego_blocking_syscall as *const u8 as u64,
            &lego_blocking_done as *const u8 as u64,
        )
    }
}

/// Makes the application's call on the host: a call that may block
/// (`blocks`, from the syscall table) runs with the application's signal
/// mask, the way it would natively.
///
/// # Safety
/// As [`raw_syscall`]; only inside the SIGSYS handler of the application
/// thread whose control block is `ctl`.
pub unsafe fn host_syscall(ctl: &mut ThreadCtl, blocks: bool, nr: u64, args: [u64; 6]) -> i64 {
    if !blocks || HANDLED.load(Ordering::Relaxed) == 0 {
        // Safety: delegated to the caller.
        return unsafe { raw_syscall(nr, args) };
    }
    let app = kernel_mask(ctl.app_mask) | sigbit(libc::SIGSYS);
    let mut saved = 0u64;
    ctl.interrupted = 0;
    // Safety (all three): rt_sigprocmask reads and writes one 8-byte set
    // of ours; the call in between is delegated to the caller. A signal
    // arriving between the unmask and the syscall instruction is caught
    // by `runtime_signal_handler`, which marks `interrupted` (checked by
    // the stub) or moves the stub past its syscall: either way the call
    // returns EINTR rather than sleeping on a signal already taken.
    unsafe {
        raw_syscall(
            libc::SYS_rt_sigprocmask as u64,
            [
                libc::SIG_SETMASK as u64,
                &app as *const u64 as u64,
                &mut saved as *mut u64 as u64,
                8,
                0,
                0,
            ],
        );
        let ret = lego_blocking(nr, args[0], args[1], args[2], args[3], args[4], args[5]);
        raw_syscall(
            libc::SYS_rt_sigprocmask as u64,
            [
                libc::SIG_SETMASK as u64,
                &saved as *const u64 as u64,
                0,
                8,
                0,
                0,
            ],
        );
        ret
    }
}

/// Blocks every signal on the calling runtime thread: application signals
/// must reach application threads, never the runtime's own.
pub fn block_all_signals() {
    let all = !0u64;
    // Safety: rt_sigprocmask reads one 8-byte set of ours.
    unsafe {
        raw_syscall(
            libc::SYS_rt_sigprocmask as u64,
            [
                libc::SIG_SETMASK as u64,
                &all as *const u64 as u64,
                0,
                8,
                0,
                0,
            ],
        );
    }
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

/// Turns Syscall User Dispatch off on the calling thread, whose
/// application thread has ended, before its control block is freed.
pub fn disable_dispatch() {
    const PR_SYS_DISPATCH_OFF: libc::c_ulong = 0;
    // Safety: prctl with plain integers; the kernel drops its pointer to
    // the selector.
    unsafe { libc::prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0) };
    // Safety: GS pointed at the control block about to be freed; nothing
    // reads it once the thread runs no application code.
    unsafe { asm!("wrgsbase {}", in(reg) 0u64, options(nostack)) };
}

/// Turns Syscall User Dispatch on for the calling thread with `ctl`'s
/// selector: for a new thread, and for a forked process (neither inherits
/// it).
pub fn enable_dispatch(ctl: &mut ThreadCtl) -> io::Result<()> {
    // Safety: taking the addresses of the linker-placed region bounds.
    let start = unsafe { &lego_sud_allowed_start as *const u8 as usize };
    let end = unsafe { &lego_sud_allowed_end as *const u8 as usize };
    // Safety: prctl reads plain integers and keeps a pointer to the
    // selector byte, which lives as long as the thread (control blocks
    // are leaked).
    let ret = unsafe {
        libc::prctl(
            PR_SET_SYSCALL_USER_DISPATCH,
            PR_SYS_DISPATCH_ON,
            start as libc::c_ulong,
            (end - start) as libc::c_ulong,
            &mut ctl.selector as *mut u8,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
        crate::fatal(&format!(
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

/// A raw syscall, for passing the application's calls through. Only valid
/// while the selector is ALLOW (inside the handler, or before the
/// application starts).
///
/// # Safety
/// The caller vouches for the syscall's effect on memory, as with any
/// syscall: pointers in the arguments must be valid for it.
#[inline]
pub unsafe fn raw_syscall(nr: u64, args: [u64; 6]) -> i64 {
    let ret: i64;
    // Safety: delegated to the caller; `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// The calling application thread's control block (GS base).
///
/// # Safety
/// Only valid on a thread that entered the application through
/// [`enter_application`], inside the SIGSYS handler.
pub unsafe fn current_ctl() -> &'static mut ThreadCtl {
    let ctl: u64;
    // Safety: reads the GS base, which `enter_application` pointed at a
    // leaked ThreadCtl for this thread.
    unsafe {
        asm!("rdgsbase {}", out(reg) ctl, options(nomem, nostack));
        &mut *(ctl as *mut ThreadCtl)
    }
}
