//! The application's signals as the host sees them: which ones it
//! handles (the runtime's entry is then installed for them, a default or
//! ignore action otherwise), the runtime's own SIGSYS and exec-kill
//! signal, and the masks the kernel applies while application code runs.
//! The entry points themselves are the trap layer's, registered once with
//! [`set_entries`].
//!
//! May call: `host`, `task::dispatch`.

use super::dispatch::ThreadCtl;
use crate::host::{raw_syscall, user};
use lego_proto::state::{AltStack, SigAction, SignalsState};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The trap layer's entry points (addresses of its assembly stubs).
static SIGSYS_ENTRY: AtomicUsize = AtomicUsize::new(0);
static SIGNAL_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// Records where the kernel enters the runtime: for SIGSYS, and for the
/// application's handled signals and the runtime's own.
pub fn set_entries(sigsys: usize, signal: usize) {
    SIGSYS_ENTRY.store(sigsys, Ordering::SeqCst);
    SIGNAL_ENTRY.store(signal, Ordering::SeqCst);
}

fn restorer() -> usize {
    super::dispatch::sigreturn_restorer()
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

pub fn sigbit(sig: libc::c_int) -> u64 {
    1 << (sig - 1)
}

/// Application signals with a handler (the runtime's entry on the host):
/// a mirror of the actions installed in the host kernel, which are the
/// host process's, kept for the blocking path to read without a lock;
/// rebuilt from the dispositions whenever one is set.
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// Whether the application handles any signal (else blocking calls need
/// no mask changes at all).
pub fn handles_any() -> bool {
    HANDLED.load(Ordering::Relaxed) != 0
}

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
        handler: SIGSYS_ENTRY.load(Ordering::SeqCst),
        flags: SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
        restorer: restorer(),
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
/// `task::threads::end_for_exec`).
pub const EXEC_KILL_SIGNAL: libc::c_int = 64;

/// Installs the runtime's entry for [`EXEC_KILL_SIGNAL`] (no SA_RESTART:
/// a blocking call it interrupts must return, so the thread can end).
pub fn install_exec_kill_action() -> io::Result<()> {
    let action = KernelSigaction {
        handler: SIGNAL_ENTRY.load(Ordering::SeqCst),
        flags: SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
        restorer: restorer(),
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
            handler: SIGNAL_ENTRY.load(Ordering::SeqCst),
            flags: SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
            restorer: restorer(),
            mask: !synchronous_signals(),
        }
    } else {
        KernelSigaction {
            handler: if ignore { 1 } else { 0 },
            flags: SA_RESTORER,
            restorer: restorer(),
            mask: 0,
        }
    };
    set_action(sig, &action)
}

// ---------------------------------------------------------------- delivery
//
// The application's dispositions, mask and alternate stack are kept here;
// the host kernel sees the runtime's entry (the trap layer's) for every
// signal the application handles, and the default or ignore action itself
// for the others. The runtime's own SIGSYS stays the runtime's: the
// application's SIGSYS disposition is recorded and reported, never
// installed. Delivery builds the frame Linux builds (return address,
// `ucontext`, `siginfo`, saved FPU state) on the application's stack or
// alternate stack and enters the handler; the handler's `rt_sigreturn`
// traps like any syscall and [`sigreturn_frame`] restores what the frame
// holds.

/// The kernel's sigaction layout: handler, flags, restorer, mask.
pub const SIGACTION_LEN: usize = 32;
pub const NSIG: u64 = 64;

const SA_RESTART: u64 = 0x1000_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;

/// The kernel's `struct ucontext` (x86-64): flags, link, stack, the
/// 256-byte sigcontext, then the 8-byte signal mask.
const UC_STACK: usize = 16;
const UC_MCONTEXT: usize = 40;
const MCONTEXT_LEN: usize = 256;
/// Where the sigcontext keeps its FPU state pointer.
const MC_FPSTATE: usize = 23 * 8;
const UC_SIGMASK: usize = 296;
const UC_LEN: usize = 304;
pub const SIGINFO_LEN: usize = 128;
/// `struct rt_sigframe`: the return address, the ucontext, the siginfo.
const FRAME_LEN: usize = 8 + UC_LEN + SIGINFO_LEN;
const FRAME_UC: u64 = 8;
const FRAME_INFO: u64 = 8 + UC_LEN as u64;

const EFLAGS_TF: i64 = 1 << 8;
const EFLAGS_DF: i64 = 1 << 10;
const EFLAGS_RF: i64 = 1 << 16;

pub struct SignalState {
    actions: [[u8; SIGACTION_LEN]; NSIG as usize],
    /// The application's alternate stack (ss_sp, ss_flags, ss_size).
    altstack: [u8; 24],
}

impl SignalState {
    pub fn new() -> Mutex<SignalState> {
        Mutex::new(SignalState {
            actions: [[0; SIGACTION_LEN]; NSIG as usize],
            altstack: no_altstack(),
        })
    }

    /// Sets the application's action for `sig` (1-64) to `new` if given
    /// (SIGKILL and SIGSTOP cannot be blocked while its handler runs; the
    /// host's action follows, except for SIGSYS, which stays the
    /// runtime's) and returns the old one.
    pub fn swap_action(
        &mut self,
        sig: usize,
        new: Option<[u8; SIGACTION_LEN]>,
    ) -> [u8; SIGACTION_LEN] {
        let slot = &mut self.actions[sig - 1];
        let old = *slot;
        if let Some(mut new) = new {
            let mask = blockable(field(&new, 24));
            put(&mut new, 24, mask);
            *slot = new;
            if sig != libc::SIGSYS as usize {
                install(sig as i32, &new);
            }
        }
        old
    }

    /// Sets the application's alternate stack (ss_sp, ss_flags, ss_size)
    /// if given and returns the old one.
    pub fn swap_altstack(&mut self, new: Option<[u8; 24]>) -> [u8; 24] {
        let old = self.altstack;
        if let Some(new) = new {
            self.altstack = new;
        }
        old
    }

    /// The dispositions and the alternate stack as plain values, with the
    /// process's pending signals (`pending`, the host's).
    pub fn state(&self, pending: u64) -> SignalsState {
        SignalsState {
            actions: self
                .actions
                .iter()
                .map(|a| SigAction {
                    handler: field(a, 0),
                    flags: field(a, 8),
                    restorer: field(a, 16),
                    mask: field(a, 24),
                })
                .collect(),
            altstack: AltStack {
                sp: field(&self.altstack, 0),
                flags: i32::from_ne_bytes(self.altstack[8..12].try_into().unwrap_or([0; 4])),
                size: field(&self.altstack, 16),
            },
            pending,
        }
    }

    /// What execve keeps: ignored signals stay ignored, handled ones go
    /// back to their default action, the alternate stack is dropped.
    pub fn reset_for_exec(&mut self) {
        for (index, action) in self.actions.iter_mut().enumerate() {
            if handler_of(action) > 1 {
                *action = [0; SIGACTION_LEN];
                let sig = index as i32 + 1;
                if sig != libc::SIGSYS {
                    install(sig, action);
                }
            }
        }
        self.altstack = no_altstack();
    }
}

fn no_altstack() -> [u8; 24] {
    let mut altstack = [0u8; 24];
    altstack[8..12].copy_from_slice(&(libc::SS_DISABLE as u32).to_ne_bytes());
    altstack
}

pub fn field(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(word)
}

fn put(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn handler_of(action: &[u8; SIGACTION_LEN]) -> u64 {
    field(action, 0)
}

fn flags_of(action: &[u8; SIGACTION_LEN]) -> u64 {
    field(action, 8)
}

pub fn bit(sig: usize) -> u64 {
    1 << (sig - 1)
}

/// A mask as the application may hold it: SIGKILL and SIGSTOP cannot be
/// blocked (SIGSYS can, in the application's view; see `kernel_mask`).
pub fn blockable(mask: u64) -> u64 {
    mask & !(bit(libc::SIGKILL as usize) | bit(libc::SIGSTOP as usize))
}

/// Puts the host's action for `sig` in line with the application's.
fn install(sig: i32, action: &[u8; SIGACTION_LEN]) {
    let handler = handler_of(action);
    if let Err(e) = install_app_action(sig, handler > 1, handler == 1) {
        tracing::warn!("cannot install the host action for signal {sig}: {e}");
    }
}

/// After a call interrupted by a handled signal: rewinds the application
/// to make the call again when the handler returns, if the handler asked
/// for restarts (the caller knows Linux would restart this call).
pub fn maybe_restart(
    signals: &Mutex<SignalState>,
    ctl: &ThreadCtl,
    nr: u64,
    gregs: &mut [i64; 23],
) {
    if ctl.interrupted() == 0 || gregs[libc::REG_RAX as usize] != -(libc::EINTR as i64) {
        return;
    }
    let state = signals.lock().unwrap_or_else(|p| p.into_inner());
    let sig = ctl.interrupted().trailing_zeros() as usize + 1;
    if flags_of(&state.actions[sig - 1]) & SA_RESTART != 0 {
        gregs[libc::REG_RIP as usize] -= 2;
        gregs[libc::REG_RAX as usize] = nr as i64;
    }
}

/// Size of the kernel-format FPU state at `fpstate` (an xsave area whose
/// software-reserved bytes give its length, or a bare 512-byte fxsave).
fn fpstate_len(read: impl Fn(u64, &mut [u8]) -> bool, fpstate: u64) -> usize {
    const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
    let mut sw = [0u8; 8];
    if !read(fpstate + 464, &mut sw) {
        return 512;
    }
    let magic = u32::from_ne_bytes([sw[0], sw[1], sw[2], sw[3]]);
    let extended = u32::from_ne_bytes([sw[4], sw[5], sw[6], sw[7]]) as usize;
    if magic == FP_XSTATE_MAGIC1 && (512..=1 << 16).contains(&extended) {
        extended
    } else {
        512
    }
}

/// The application's FPU state in the kernel's frame `uc` (empty if the
/// frame has none).
pub fn fpu_state(uc: &libc::ucontext_t) -> Vec<u8> {
    let at = uc.uc_mcontext.fpregs as u64;
    if at == 0 {
        return Vec::new();
    }
    let len = fpstate_len(read_own, at);
    // Safety: the kernel's FPU state for the handler that is running,
    // `len` bytes by its own recorded length.
    unsafe { std::slice::from_raw_parts(at as *const u8, len) }.to_vec()
}

/// Reads memory the kernel wrote for us (our own signal frame).
fn read_own(addr: u64, out: &mut [u8]) -> bool {
    // Safety: only called on the FPU state of the frame the kernel built
    // for the handler that is running, which is mapped and ours.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
    true
}

pub fn requeue(sig: usize, info: &[u8; SIGINFO_LEN]) {
    // Safety: rt_tgsigqueueinfo reads one siginfo of ours; queueing to our
    // own thread is always allowed.
    unsafe {
        let tgid = raw_syscall(libc::SYS_getpid as u64, [0; 6]);
        let tid = raw_syscall(libc::SYS_gettid as u64, [0; 6]);
        raw_syscall(
            libc::SYS_rt_tgsigqueueinfo as u64,
            [
                tgid as u64,
                tid as u64,
                sig as u64,
                info.as_ptr() as u64,
                0,
                0,
            ],
        );
    }
}

/// What Linux does when a frame cannot be written: SIGSEGV, by default.
fn force_sigsegv(signals: &Mutex<SignalState>) {
    let sig = libc::SIGSEGV as usize;
    let mut state = signals.lock().unwrap_or_else(|p| p.into_inner());
    state.actions[sig - 1] = [0; SIGACTION_LEN];
    install(sig as i32, &state.actions[sig - 1]);
    let mut info = [0u8; SIGINFO_LEN];
    put(&mut info, 0, sig as u64);
    info[8..12].copy_from_slice(&(libc::SI_KERNEL as u32).to_ne_bytes());
    requeue(sig, &info);
}

pub fn mask_of(uc: &mut libc::ucontext_t) -> &mut u64 {
    // Safety: the kernel's sigset in the ucontext is at least 8 bytes and
    // 8-aligned (the first word of glibc's 128-byte sigset_t).
    unsafe { &mut *(&mut uc.uc_sigmask as *mut libc::sigset_t as *mut u64) }
}

/// Sets the mask the kernel restores when the current handler returns.
pub fn restore_mask_on_return(uc: &mut libc::ucontext_t, app_mask: u64) {
    *mask_of(uc) = kernel_mask(app_mask);
}

/// Enters the application's handler for `sig`: builds Linux's frame from
/// the interrupted state in `uc` and points `uc` at the handler.
pub fn deliver(
    signals: &Mutex<SignalState>,
    ctl: &mut ThreadCtl,
    uc: &mut libc::ucontext_t,
    sig: usize,
    info: &[u8; SIGINFO_LEN],
) {
    let (action, altstack) = {
        let state = signals.lock().unwrap_or_else(|p| p.into_inner());
        (state.actions[sig - 1], state.altstack)
    };
    let handler = handler_of(&action);
    if handler <= 1 {
        // The disposition changed after the kernel queued the signal to
        // us: ignore it, or let the kernel take the default action.
        if handler == 0 {
            install(sig as i32, &action);
            requeue(sig, info);
        }
        return;
    }
    let flags = flags_of(&action);
    if flags & SA_RESTORER == 0 {
        // x86-64 Linux has no fallback return path without a restorer.
        force_sigsegv(signals);
        return;
    }
    if let Some((at, restartable)) = ctl.rewound.take() {
        let g = &mut uc.uc_mcontext.gregs;
        if g[libc::REG_RIP as usize] as u64 == at && !(restartable && flags & SA_RESTART != 0) {
            // The call made again after the runtime's own signal: a
            // handler runs first, so it ends as Linux ends a call a
            // handler interrupted (EINTR, unless SA_RESTART restarts it).
            g[libc::REG_RIP as usize] += 2;
            g[libc::REG_RAX as usize] = -(libc::EINTR as i64);
        }
    }
    let uc_addr = uc as *mut libc::ucontext_t as *const u8;
    let g = &mut uc.uc_mcontext.gregs;
    let mut sp = g[libc::REG_RSP as usize] as u64;
    let ss_sp = field(&altstack, 0);
    let ss_flags = u32::from_ne_bytes(altstack[8..12].try_into().unwrap_or([0; 4])) as i32;
    let ss_size = field(&altstack, 16);
    let alt_enabled = ss_flags & libc::SS_DISABLE == 0 && ss_size != 0;
    let on_alt = alt_enabled && sp > ss_sp && sp - ss_sp <= ss_size;
    if flags & SA_ONSTACK != 0 && alt_enabled && !on_alt {
        sp = ss_sp + ss_size;
    } else {
        sp = sp.wrapping_sub(128);
    }
    let fp_src = uc.uc_mcontext.fpregs as u64;
    let fp_len = if fp_src != 0 {
        fpstate_len(read_own, fp_src)
    } else {
        0
    };
    let mut fp_addr = 0;
    if fp_len != 0 {
        sp = sp.wrapping_sub(fp_len as u64) & !63;
        fp_addr = sp;
    }
    let frame = (sp.wrapping_sub(FRAME_LEN as u64) & !15).wrapping_sub(8);

    let mut bytes = vec![0u8; FRAME_LEN];
    put(&mut bytes, 0, field(&action, 16));
    let ucb = &mut bytes[FRAME_UC as usize..FRAME_UC as usize + UC_LEN];
    // Safety: `uc_addr` is the kernel's ucontext for this handler, at
    // least UC_LEN bytes (glibc's ucontext_t is larger).
    let live = unsafe { std::slice::from_raw_parts(uc_addr, UC_LEN) };
    ucb[0..8].copy_from_slice(&live[0..8]);
    put(ucb, UC_STACK, ss_sp);
    let shown_flags = if on_alt {
        libc::SS_ONSTACK
    } else {
        ss_flags & libc::SS_DISABLE
    };
    ucb[UC_STACK + 8..UC_STACK + 12].copy_from_slice(&(shown_flags as u32).to_ne_bytes());
    put(ucb, UC_STACK + 16, ss_size);
    ucb[UC_MCONTEXT..UC_MCONTEXT + MCONTEXT_LEN]
        .copy_from_slice(&live[UC_MCONTEXT..UC_MCONTEXT + MCONTEXT_LEN]);
    put(ucb, UC_MCONTEXT + MC_FPSTATE, fp_addr);
    put(
        ucb,
        UC_SIGMASK,
        ctl.suspended_mask.take().unwrap_or(ctl.app_mask),
    );
    bytes[FRAME_INFO as usize..].copy_from_slice(info);

    let mut written = user::write(frame, &bytes).is_ok();
    if written && fp_len != 0 {
        // Safety: the kernel's FPU state for this handler, fp_len bytes.
        let fp = unsafe { std::slice::from_raw_parts(fp_src as *const u8, fp_len) };
        written = user::write(fp_addr, fp).is_ok();
    }
    if !written {
        force_sigsegv(signals);
        return;
    }
    g[libc::REG_RIP as usize] = handler as i64;
    g[libc::REG_RSP as usize] = frame as i64;
    g[libc::REG_RDI as usize] = sig as i64;
    g[libc::REG_RSI as usize] = (frame + FRAME_INFO) as i64;
    g[libc::REG_RDX as usize] = (frame + FRAME_UC) as i64;
    g[libc::REG_RAX as usize] = 0;
    g[libc::REG_EFL as usize] &= !(EFLAGS_DF | EFLAGS_TF | EFLAGS_RF);

    let defer = if flags & SA_NODEFER != 0 { 0 } else { bit(sig) };
    ctl.app_mask |= field(&action, 24) | defer;
    restore_mask_on_return(uc, ctl.app_mask);
    if flags & SA_RESETHAND != 0 {
        let mut state = signals.lock().unwrap_or_else(|p| p.into_inner());
        state.actions[sig - 1] = [0; SIGACTION_LEN];
        install(sig as i32, &state.actions[sig - 1]);
    }
}

pub fn sigreturn_frame(
    signals: &Mutex<SignalState>,
    ctl: &mut ThreadCtl,
    uc: &mut libc::ucontext_t,
) {
    let g = &mut uc.uc_mcontext.gregs;
    let at = g[libc::REG_RSP as usize] as u64;
    let mut saved = [0u8; UC_LEN];
    if user::read(at, &mut saved).is_err() {
        force_sigsegv(signals);
        return;
    }
    // r8 .. eflags: the first 18 words of the sigcontext, in the order
    // glibc's gregs use.
    for (index, reg) in g.iter_mut().enumerate().take(libc::REG_EFL as usize + 1) {
        *reg = field(&saved, UC_MCONTEXT + index * 8) as i64;
    }
    let fp_saved = field(&saved, UC_MCONTEXT + MC_FPSTATE);
    let fp_live = uc.uc_mcontext.fpregs as u64;
    if fp_saved != 0 && fp_live != 0 {
        let read_app = |addr: u64, out: &mut [u8]| user::read(addr, out).is_ok();
        let len = fpstate_len(read_app, fp_saved).min(fpstate_len(read_own, fp_live));
        let mut fp = vec![0u8; len];
        if user::read(fp_saved, &mut fp).is_err() {
            force_sigsegv(signals);
            return;
        }
        // Safety: the kernel's FPU state area for this handler holds at
        // least `len` bytes (its own recorded length bounds `len`).
        unsafe { std::ptr::copy_nonoverlapping(fp.as_ptr(), fp_live as *mut u8, len) };
    }
    let mask = field(&saved, UC_SIGMASK);
    ctl.app_mask = blockable(mask);
    restore_mask_on_return(uc, ctl.app_mask);
}

/// A SIGSYS that did not come from Syscall User Dispatch (kill, raise):
/// it goes to the application's handler, or is ignored, or ends the
/// process as SIGSYS's default action does.
pub fn sent_sigsys(
    signals: &Mutex<SignalState>,
    ctl: &mut ThreadCtl,
    uc: &mut libc::ucontext_t,
    info: *mut libc::siginfo_t,
) {
    let sig = libc::SIGSYS as usize;
    let handler = {
        let state = signals.lock().unwrap_or_else(|p| p.into_inner());
        handler_of(&state.actions[sig - 1])
    };
    match handler {
        1 => {}
        0 => {
            // The runtime is done with SIGSYS: the process dies of it once
            // this handler returns and the signal is unblocked.
            // Safety: rt_sigaction reads one zeroed (SIG_DFL) action of ours.
            let default = [0u8; SIGACTION_LEN];
            unsafe {
                raw_syscall(
                    libc::SYS_rt_sigaction as u64,
                    [sig as u64, default.as_ptr() as u64, 0, 8, 0, 0],
                )
            };
            requeue(sig, &signal_info(info));
        }
        _ => deliver(signals, ctl, uc, sig, &signal_info(info)),
    }
    restore_mask_on_return(uc, ctl.app_mask);
}

pub fn signal_info(info: *mut libc::siginfo_t) -> [u8; SIGINFO_LEN] {
    let mut bytes = [0u8; SIGINFO_LEN];
    // Safety: the kernel passes SA_SIGINFO handlers a full siginfo.
    unsafe { std::ptr::copy_nonoverlapping(info as *const u8, bytes.as_mut_ptr(), SIGINFO_LEN) };
    bytes
}
