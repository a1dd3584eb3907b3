//! Calls made for the application that may wait: while the application
//! handles any signal, such a call runs with the application's signal
//! mask, as natively, so a signal interrupts it. The stub checks, just
//! before its `syscall` instruction, whether a signal was already caught
//! for this call (the control block's `interrupted`, at offset 32): a
//! signal caught before the instruction turns the call into EINTR (see
//! `trap::runtime_signal_handler`), so no wake-up is lost.
//!
//! May call: `host`, `task::thread`, `task::signals`.

use super::dispatch::ThreadCtl;
use super::signals::{handles_any, kernel_mask, sigbit};
use crate::host::raw_syscall;
use std::arch::global_asm;

global_asm!(
    r#"
    .pushsection .text.lego_blocking,"ax",@progbits
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
    "#
);

extern "C" {
    fn lego_blocking(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64;
    static lego_blocking_syscall: u8;
    static lego_blocking_done: u8;
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
    if !blocks || !handles_any() {
        // Safety: delegated to the caller.
        return unsafe { raw_syscall(nr, args) };
    }
    let app = kernel_mask(ctl.app_mask) | sigbit(libc::SIGSYS);
    let mut saved = 0u64;
    ctl.set_interrupted(0);
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
