//! Signal calls. The runtime's SIGSYS must stay deliverable and handled by
//! the runtime, so the application's view of signal state is recorded here
//! rather than installed; delivering signals to application handlers
//! arrives with the processes issue.

use super::Call;
use crate::sud::raw_syscall;
use crate::{user, Runtime};
use std::sync::Mutex;

/// The kernel's sigaction layout: handler, flags, restorer, mask.
const SIGACTION_LEN: usize = 32;
const NSIG: u64 = 64;

pub struct SignalState {
    actions: [[u8; SIGACTION_LEN]; NSIG as usize],
    /// The application's alternate stack (ss_sp, ss_flags, ss_size).
    altstack: [u8; 24],
}

impl SignalState {
    pub fn new() -> Mutex<SignalState> {
        let mut altstack = [0u8; 24];
        altstack[8..12].copy_from_slice(&(libc::SS_DISABLE as u32).to_ne_bytes());
        Mutex::new(SignalState {
            actions: [[0; SIGACTION_LEN]; NSIG as usize],
            altstack,
        })
    }
}

impl SignalState {
    /// What execve keeps: ignored signals stay ignored, handled ones go
    /// back to their default action, the alternate stack is dropped.
    pub fn reset_for_exec(&mut self) {
        let ignored = (libc::SIG_IGN as u64).to_ne_bytes();
        for action in self.actions.iter_mut() {
            if action[..8] != ignored {
                *action = [0; SIGACTION_LEN];
            }
        }
        *self = SignalState {
            actions: self.actions,
            altstack: SignalState::new()
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .altstack,
        };
    }
}

fn errno(e: i32) -> i64 {
    -(e as i64)
}

pub fn rt_sigaction(rt: &Runtime, c: &Call) -> i64 {
    let [sig, act, oact, sigsetsize, _, _] = c.args;
    if sigsetsize != 8 || sig == 0 || sig > NSIG {
        return errno(libc::EINVAL);
    }
    if act != 0 && (sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64) {
        return errno(libc::EINVAL);
    }
    let mut new = [0u8; SIGACTION_LEN];
    if act != 0 {
        if let Err(e) = user::read(act, &mut new) {
            return errno(e);
        }
    }
    let mut state = rt.signals.lock().unwrap_or_else(|p| p.into_inner());
    let slot = &mut state.actions[sig as usize - 1];
    if oact != 0 {
        if let Err(e) = user::write(oact, slot) {
            return errno(e);
        }
    }
    if act != 0 {
        *slot = new;
    }
    0
}

pub fn rt_sigprocmask(_rt: &Runtime, c: &Call) -> i64 {
    let [how, set, oset, sigsetsize, _, _] = c.args;
    let mut mask = 0u64;
    if set != 0 {
        let mut bytes = [0u8; 8];
        if let Err(e) = user::read(set, &mut bytes) {
            return errno(e);
        }
        mask = u64::from_ne_bytes(bytes) & !(1u64 << (libc::SIGSYS - 1));
    }
    let set_ptr = if set != 0 {
        &mask as *const u64 as u64
    } else {
        0
    };
    // Safety: the new set is read from our copy (which lives across the
    // call); the old set is written to the application's pointer, which
    // the kernel checks.
    unsafe { raw_syscall(c.nr, [how, set_ptr, oset, sigsetsize, 0, 0]) }
}

pub fn sigaltstack(rt: &Runtime, c: &Call) -> i64 {
    let [ss, old, _, _, _, _] = c.args;
    let mut new = [0u8; 24];
    if ss != 0 {
        if let Err(e) = user::read(ss, &mut new) {
            return errno(e);
        }
    }
    let mut state = rt.signals.lock().unwrap_or_else(|p| p.into_inner());
    if old != 0 {
        if let Err(e) = user::write(old, &state.altstack) {
            return errno(e);
        }
    }
    if ss != 0 {
        state.altstack = new;
    }
    0
}
