//! The signal family: dispositions, the mask, pending signals,
//! sigsuspend, the alternate stack, and rt_sigreturn. The state and the
//! delivery machinery are the task layer's (`task::signals`).

use super::contract::{ok, Call, Ctx, Errno, Outcome, SysResult};
use crate::host::{raw_syscall, user};
use crate::task::signals::{
    bit, blockable, field, kernel_mask, sigreturn_frame, EXEC_KILL_SIGNAL, NSIG, SIGACTION_LEN,
};

pub fn rt_sigaction(cx: &mut Ctx, c: &Call) -> SysResult {
    let [sig, act, oact, sigsetsize, _, _] = c.args;
    if sigsetsize != 8 || sig == 0 || sig > NSIG {
        return Err(Errno::EINVAL.into());
    }
    if act != 0 && (sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64) {
        return Err(Errno::EINVAL.into());
    }
    if sig == EXEC_KILL_SIGNAL as u64 {
        // The runtime's own (as glibc keeps signals 32 and 33 for itself).
        return Err(Errno::EINVAL.into());
    }
    let mut new = [0u8; SIGACTION_LEN];
    if act != 0 {
        user::read(act, &mut new)?;
    }
    let old = cx
        .rt
        .signals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .swap_action(sig as usize, (act != 0).then_some(new));
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
    super::contract::returned(ret)?;
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
    let previous = cx
        .rt
        .signals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .swap_altstack((ss != 0).then_some(new));
    if old != 0 {
        user::write(old, &previous)?;
    }
    ok(0)
}

/// Emulated rt_sigreturn: the frame `deliver` built sits at the
/// application's stack pointer (the handler's `ret` popped the return
/// address); its registers, mask and FPU state become the state the
/// SIGSYS handler returns to.
pub fn rt_sigreturn(cx: &mut Ctx, _c: &Call) -> SysResult {
    let rt = cx.rt;
    let ctl = &mut *cx.thread;
    sigreturn_frame(&rt.signals, ctl, cx.uc);
    Ok(Outcome::Resume)
}
