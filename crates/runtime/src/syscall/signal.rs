//! Signals. The application's dispositions, mask and alternate stack are
//! kept here; the host kernel sees the runtime's entry
//! (`lego_signal_entry` in `sud`) for every signal the application
//! handles, and the default or ignore action itself for the others. The
//! runtime's own SIGSYS stays the runtime's: the application's SIGSYS
//! disposition is recorded and reported, never installed.
//!
//! Delivery builds the frame Linux builds (return address, `ucontext`,
//! `siginfo`, saved FPU state) on the application's stack or alternate
//! stack and enters the handler; the handler's `rt_sigreturn` traps like
//! any syscall and [`sigreturn_frame`] restores what the frame holds.

use super::{ok, Call, Ctx, Errno, Outcome, SysResult};
use crate::sud::{self, current_ctl, kernel_mask, raw_syscall, ThreadCtl};
use crate::{fatal, runtime, user, Runtime};
use std::sync::Mutex;

/// The kernel's sigaction layout: handler, flags, restorer, mask.
const SIGACTION_LEN: usize = 32;
const NSIG: u64 = 64;

const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTART: u64 = 0x1000_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
const SA_RESTORER: u64 = 0x0400_0000;

/// The kernel's `struct ucontext` (x86-64): flags, link, stack, the
/// 256-byte sigcontext, then the 8-byte signal mask.
const UC_STACK: usize = 16;
const UC_MCONTEXT: usize = 40;
const MCONTEXT_LEN: usize = 256;
/// Where the sigcontext keeps its FPU state pointer.
const MC_FPSTATE: usize = 23 * 8;
const UC_SIGMASK: usize = 296;
const UC_LEN: usize = 304;
const SIGINFO_LEN: usize = 128;
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

fn field(bytes: &[u8], at: usize) -> u64 {
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

fn bit(sig: usize) -> u64 {
    1 << (sig - 1)
}

/// A mask as the application may hold it: SIGKILL and SIGSTOP cannot be
/// blocked (SIGSYS can, in the application's view; see `kernel_mask`).
fn blockable(mask: u64) -> u64 {
    mask & !(bit(libc::SIGKILL as usize) | bit(libc::SIGSTOP as usize))
}

/// Puts the host's action for `sig` in line with the application's.
fn install(sig: i32, action: &[u8; SIGACTION_LEN]) {
    let handler = handler_of(action);
    if let Err(e) = sud::install_app_action(sig, handler > 1, handler == 1) {
        tracing::warn!("cannot install the host action for signal {sig}: {e}");
    }
}

pub fn rt_sigaction(cx: &mut Ctx, c: &Call) -> SysResult {
    let [sig, act, oact, sigsetsize, _, _] = c.args;
    if sigsetsize != 8 || sig == 0 || sig > NSIG {
        return Err(Errno::EINVAL.into());
    }
    if act != 0 && (sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64) {
        return Err(Errno::EINVAL.into());
    }
    if sig == crate::sud::EXEC_KILL_SIGNAL as u64 {
        // The runtime's own (as glibc keeps signals 32 and 33 for itself).
        return Err(Errno::EINVAL.into());
    }
    let mut new = [0u8; SIGACTION_LEN];
    if act != 0 {
        user::read(act, &mut new)?;
    }
    let old = {
        let mut state = cx.rt.signals.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut state.actions[sig as usize - 1];
        let old = *slot;
        if act != 0 {
            // SIGKILL and SIGSTOP cannot be blocked while a handler runs.
            let mask = blockable(field(&new, 24));
            put(&mut new, 24, mask);
            *slot = new;
            if sig != libc::SIGSYS as u64 {
                install(sig as i32, &new);
            }
        }
        old
    };
    // Written after the lock is released (application memory may fault),
    // as Linux copies the old action out after changing it.
    if oact != 0 {
        user::write(oact, &old)?;
    }
    ok(0)
}

/// The application's mask is the runtime's record; the kernel's follows it
/// when the SIGSYS handler returns (see `sigsys_handler`).
pub fn rt_sigprocmask(cx: &mut Ctx, c: &Call) -> SysResult {
    let [how, set, oset, sigsetsize, _, _] = c.args;
    if sigsetsize != 8 {
        return Err(Errno::EINVAL.into());
    }
    let old = cx.thread.app_mask;
    let mut new = old;
    if set != 0 {
        let mut bytes = [0u8; 8];
        user::read(set, &mut bytes)?;
        let set = u64::from_ne_bytes(bytes);
        new = match how as i32 {
            libc::SIG_BLOCK => old | set,
            libc::SIG_UNBLOCK => old & !set,
            libc::SIG_SETMASK => set,
            _ => return Err(Errno::EINVAL.into()),
        };
    }
    if oset != 0 {
        user::write(oset, &old.to_ne_bytes())?;
    }
    cx.thread.app_mask = blockable(new);
    ok(0)
}

/// Pending signals the application blocks (the kernel's view inside the
/// handler blocks everything).
pub fn rt_sigpending(cx: &mut Ctx, c: &Call) -> SysResult {
    let [set, sigsetsize, _, _, _, _] = c.args;
    if sigsetsize != 8 {
        return Err(Errno::EINVAL.into());
    }
    let mut pending = 0u64;
    // Safety: rt_sigpending writes one 8-byte set of ours.
    let ret = unsafe { raw_syscall(c.nr, [&mut pending as *mut u64 as u64, 8, 0, 0, 0, 0]) };
    super::returned(ret)?;
    user::write(set, &(pending & cx.thread.app_mask).to_ne_bytes())?;
    ok(0)
}

/// Waits with the application's temporary mask; the signal that ends the
/// wait is delivered when the handler returns.
pub fn rt_sigsuspend(cx: &mut Ctx, c: &Call) -> SysResult {
    let [set, sigsetsize, _, _, _, _] = c.args;
    if sigsetsize != 8 {
        return Err(Errno::EINVAL.into());
    }
    let mut bytes = [0u8; 8];
    user::read(set, &mut bytes)?;
    let temporary = u64::from_ne_bytes(bytes);
    let mask = kernel_mask(temporary) | bit(libc::SIGSYS as usize);
    // Safety: rt_sigsuspend reads one 8-byte set of ours.
    let result = unsafe { cx.host(c.nr, [&mask as *const u64 as u64, 8, 0, 0, 0, 0]) };
    if result == Err(Errno::EINTR.into()) {
        // The waking signal is queued again and blocked until the SIGSYS
        // handler returns; returning with the temporary mask lets the
        // kernel hand it over at once, and its frame keeps the old mask.
        let ctl = &mut *cx.thread;
        ctl.suspended_mask = Some(ctl.app_mask);
        ctl.app_mask = blockable(temporary);
    }
    result
}

pub fn sigaltstack(cx: &mut Ctx, c: &Call) -> SysResult {
    let [ss, old, _, _, _, _] = c.args;
    let mut new = [0u8; 24];
    if ss != 0 {
        user::read(ss, &mut new)?;
        let flags = u32::from_ne_bytes(new[8..12].try_into().unwrap_or([0; 4])) as i32;
        const SS_AUTODISARM: i32 = 1 << 31;
        if flags & !(libc::SS_DISABLE | libc::SS_ONSTACK | SS_AUTODISARM) != 0 {
            return Err(Errno::EINVAL.into());
        }
        if flags & libc::SS_DISABLE == 0 && field(&new, 16) < libc::MINSIGSTKSZ as u64 {
            return Err(Errno::ENOMEM.into());
        }
    }
    let previous = {
        let mut state = cx.rt.signals.lock().unwrap_or_else(|p| p.into_inner());
        let previous = state.altstack;
        if ss != 0 {
            state.altstack = new;
        }
        previous
    };
    if old != 0 {
        user::write(old, &previous)?;
    }
    ok(0)
}

/// After a call interrupted by a handled signal: rewinds the application
/// to make the call again when the handler returns, if the handler asked
/// for restarts and Linux would restart this call.
pub fn maybe_restart(rt: &Runtime, ctl: &ThreadCtl, nr: u64, gregs: &mut [i64; 23]) {
    if ctl.interrupted == 0 || gregs[libc::REG_RAX as usize] != -(libc::EINTR as i64) {
        return;
    }
    if super::wait_of(nr) != super::Wait::Restarted {
        return;
    }
    let state = rt.signals.lock().unwrap_or_else(|p| p.into_inner());
    let sig = ctl.interrupted.trailing_zeros() as usize + 1;
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

/// Reads memory the kernel wrote for us (our own signal frame).
fn read_own(addr: u64, out: &mut [u8]) -> bool {
    // Safety: only called on the FPU state of the frame the kernel built
    // for the handler that is running, which is mapped and ours.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
    true
}

fn requeue(sig: usize, info: &[u8; SIGINFO_LEN]) {
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
fn force_sigsegv(rt: &Runtime) {
    let sig = libc::SIGSEGV as usize;
    let mut state = rt.signals.lock().unwrap_or_else(|p| p.into_inner());
    state.actions[sig - 1] = [0; SIGACTION_LEN];
    install(sig as i32, &state.actions[sig - 1]);
    let mut info = [0u8; SIGINFO_LEN];
    put(&mut info, 0, sig as u64);
    info[8..12].copy_from_slice(&(libc::SI_KERNEL as u32).to_ne_bytes());
    requeue(sig, &info);
}

fn mask_of(uc: &mut libc::ucontext_t) -> &mut u64 {
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
fn deliver(
    rt: &Runtime,
    ctl: &mut ThreadCtl,
    uc: &mut libc::ucontext_t,
    sig: usize,
    info: &[u8; SIGINFO_LEN],
) {
    let (action, altstack) = {
        let state = rt.signals.lock().unwrap_or_else(|p| p.into_inner());
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
        force_sigsegv(rt);
        return;
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
        force_sigsegv(rt);
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
        let mut state = rt.signals.lock().unwrap_or_else(|p| p.into_inner());
        state.actions[sig - 1] = [0; SIGACTION_LEN];
        install(sig as i32, &state.actions[sig - 1]);
    }
}

/// Emulated rt_sigreturn: the frame `deliver` built sits at the
/// application's stack pointer (the handler's `ret` popped the return
/// address); its registers, mask and FPU state become the state the
/// SIGSYS handler returns to.
pub fn rt_sigreturn(cx: &mut Ctx, _c: &Call) -> SysResult {
    let rt = cx.rt;
    let ctl = &mut *cx.thread;
    sigreturn_frame(rt, ctl, cx.uc);
    Ok(Outcome::Resume)
}

fn sigreturn_frame(rt: &Runtime, ctl: &mut ThreadCtl, uc: &mut libc::ucontext_t) {
    let g = &mut uc.uc_mcontext.gregs;
    let at = g[libc::REG_RSP as usize] as u64;
    let mut saved = [0u8; UC_LEN];
    if user::read(at, &mut saved).is_err() {
        force_sigsegv(rt);
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
            force_sigsegv(rt);
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
    rt: &Runtime,
    ctl: &mut ThreadCtl,
    uc: &mut libc::ucontext_t,
    info: *mut libc::siginfo_t,
) {
    let sig = libc::SIGSYS as usize;
    let handler = {
        let state = rt.signals.lock().unwrap_or_else(|p| p.into_inner());
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
        _ => deliver(rt, ctl, uc, sig, &signal_info(info)),
    }
    restore_mask_on_return(uc, ctl.app_mask);
}

/// The host sees the arena as one reservation, so a touch of an address
/// the memory manager has not mapped faults as a protection error there;
/// Linux reports it as a missing mapping (SEGV_MAPERR).
fn arena_fault_code(rt: &Runtime, info: &mut [u8; SIGINFO_LEN]) {
    const SEGV_MAPERR: i32 = 1;
    const SEGV_ACCERR: i32 = 2;
    let code = i32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
    // si_addr follows si_signo, si_errno, si_code and padding.
    let addr = field(info, 16);
    let in_arena = (lego_proto::USER_MIN..lego_proto::USER_END).contains(&addr);
    if code == SEGV_ACCERR && in_arena && !rt.arena.is_mapped(addr) {
        info[8..12].copy_from_slice(&SEGV_MAPERR.to_ne_bytes());
    }
}

fn signal_info(info: *mut libc::siginfo_t) -> [u8; SIGINFO_LEN] {
    let mut bytes = [0u8; SIGINFO_LEN];
    // Safety: the kernel passes SA_SIGINFO handlers a full siginfo.
    unsafe { std::ptr::copy_nonoverlapping(info as *const u8, bytes.as_mut_ptr(), SIGINFO_LEN) };
    bytes
}

/// A signal that interrupted application code: entered from
/// `lego_signal_entry` with the runtime's FS base and the selector ALLOW.
pub extern "C" fn app_signal_handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uctx: *mut libc::c_void,
) {
    if sig == crate::sud::EXEC_KILL_SIGNAL {
        // It interrupted application code: nothing of the runtime's is
        // held, so the thread can end here.
        // Safety: on an application thread, whose GS base is its control
        // block; the only reference to it while this handler runs.
        super::thread::end_for_exec(unsafe { current_ctl() });
        return;
    }
    let served = std::panic::catch_unwind(|| {
        // Safety: inside a signal handler on an application thread; the
        // kernel's ucontext stays alive until the handler returns.
        let ctl = unsafe { current_ctl() };
        let uc = unsafe { &mut *(uctx as *mut libc::ucontext_t) };
        let rt = runtime();
        let mut info = signal_info(info);
        if sig == libc::SIGSEGV {
            arena_fault_code(rt, &mut info);
        }
        deliver(rt, ctl, uc, sig as usize, &info);
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
pub extern "C" fn runtime_signal_handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uctx: *mut libc::c_void,
) {
    let info = signal_info(info);
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
    if sig == crate::sud::EXEC_KILL_SIGNAL {
        // Inside the runtime, which may hold locks: the thread ends when
        // its SIGSYS handler is done (a blocking call returns EINTR).
        ctl.exit_requested = true;
    } else {
        let sig = sig as usize;
        requeue(sig, &info);
        *mask_of(uc) |= bit(sig);
        ctl.interrupted |= bit(sig);
    }
    let (start, syscall, done) = sud::blocking_window();
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    if (start..=syscall).contains(&rip) {
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = done as i64;
        uc.uc_mcontext.gregs[libc::REG_RAX as usize] = -(libc::EINTR as i64);
    }
}
