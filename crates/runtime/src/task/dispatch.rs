//! Syscall User Dispatch for one thread: its control block
//! ([`ThreadCtl`], which the trap stubs reach through the GS base and
//! address by offset), the selector byte in it, and the allowed region,
//! the one code range the kernel never dispatches from, which holds only
//! the `rt_sigreturn` restorer (it runs after the selector is BLOCK again).
//!
//! May call: nothing of the runtime's.

use std::arch::{asm, global_asm};
use std::io;

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
    exit_requested: bool,
    /// Another thread takes the process's state: this one stops when the
    /// runtime is done with what it was doing for it (see
    /// `task::threads::Threads::park`).
    park_requested: bool,
    /// The call made again after its wait was cut short by the runtime's
    /// own signal: the address of its `syscall` instruction, and whether an
    /// SA_RESTART handler may let it be made again (else a handler that
    /// runs first makes it fail with EINTR, as on Linux).
    pub rewound: Option<(u64, bool)>,
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
            park_requested: false,
            rewound: None,
            resume_sp: 0,
        }
    }
}

// The runtime's signal handlers write `interrupted`, `park_requested` and
// `exit_requested` while the interrupted code of the same thread holds a
// reference to the block (a signal handler is an interrupt, not a call):
// every access to them is volatile, so none is cached, elided or moved
// across the handler's.
impl ThreadCtl {
    /// The runtime's own signal arrived inside the runtime: the thread
    /// stops, or ends, when its SIGSYS handler is done.
    pub fn request_stop_or_exit(&mut self) {
        // Safety: writes to fields of a live block (see above).
        unsafe {
            std::ptr::write_volatile(&mut self.park_requested, true);
            std::ptr::write_volatile(&mut self.exit_requested, true);
        }
    }

    /// This thread stops for another that takes the process's state, at
    /// the end of its call.
    pub fn request_stop(&mut self) {
        // Safety: a write to a field of a live block (see above).
        unsafe { std::ptr::write_volatile(&mut self.park_requested, true) };
    }

    pub fn park_requested(&self) -> bool {
        // Safety: a read of a field of a live block.
        unsafe { std::ptr::read_volatile(&self.park_requested) }
    }

    pub fn exit_requested(&self) -> bool {
        // Safety: as above.
        unsafe { std::ptr::read_volatile(&self.exit_requested) }
    }

    /// Whether an exit was requested; the request is dropped.
    pub fn take_exit_request(&mut self) -> bool {
        let requested = self.exit_requested();
        // Safety: a write to a field of a live block.
        unsafe { std::ptr::write_volatile(&mut self.exit_requested, false) };
        requested
    }

    /// Whether a stop was requested; the request is dropped.
    pub fn take_park_request(&mut self) -> bool {
        let requested = self.park_requested();
        // Safety: as above.
        unsafe { std::ptr::write_volatile(&mut self.park_requested, false) };
        requested
    }

    /// Drops both requests (a new thread, a forked process).
    pub fn clear_requests(&mut self) {
        self.take_exit_request();
        self.take_park_request();
    }

    /// Application signals that interrupted the current blocking call.
    pub fn interrupted(&self) -> u64 {
        // Safety: a read of a field of a live block.
        unsafe { std::ptr::read_volatile(&self.interrupted) }
    }

    pub fn set_interrupted(&mut self, signals: u64) {
        // Safety: a write to a field of a live block.
        unsafe { std::ptr::write_volatile(&mut self.interrupted, signals) };
    }
}

impl Default for ThreadCtl {
    fn default() -> Self {
        ThreadCtl::new()
    }
}

global_asm!(
    r#"
    // The one code range the kernel never dispatches from: the rt_sigreturn
    // restorer, which runs after the selector is BLOCK again.
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

    "#
);

extern "C" {
    static lego_sud_allowed_start: u8;
    static lego_sud_allowed_end: u8;
    fn lego_sigreturn_restorer();
}

/// The restorer every signal action of the runtime's names (inside the
/// allowed region).
pub fn sigreturn_restorer() -> usize {
    lego_sigreturn_restorer as *const () as usize
}

/// Whether `rip` lies in the allowed region (the restorer).
pub fn in_allowed_region(rip: u64) -> bool {
    // Safety: taking the addresses of the linker-placed region bounds.
    let (start, end) = unsafe {
        (
            &lego_sud_allowed_start as *const u8 as u64,
            &lego_sud_allowed_end as *const u8 as u64,
        )
    };
    (start..end).contains(&rip)
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
