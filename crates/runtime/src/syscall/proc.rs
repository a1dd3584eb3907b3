//! Process-wide calls: exit, FS base, prctl, resource limits, and Lego's
//! own call that gives a process its whole kernel state.

use super::contract::{ok, returned, Call, Ctx, Errno, Outcome, SysError, SysResult};
use crate::host::raw_syscall;
use crate::host::user;
use lego_proto::state::ProcessState;

const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
const ARCH_GET_GS: u64 = 0x1004;

pub fn arch_prctl(cx: &mut Ctx, c: &Call) -> SysResult {
    match c.args[0] {
        ARCH_SET_FS => {
            // Written back to the FS base by the exit stub.
            cx.thread.app_fs = c.args[1];
            ok(0)
        }
        ARCH_GET_FS => {
            user::write(c.args[1], &cx.thread.app_fs.to_ne_bytes())?;
            ok(0)
        }
        ARCH_GET_GS => {
            user::write(c.args[1], &0u64.to_ne_bytes())?;
            ok(0)
        }
        ARCH_SET_GS => Err(Errno::EINVAL.into()),
        // Safety: the remaining codes (CET status, AMX permission, ...)
        // concern the application's own CPU features, as on Linux.
        _ => returned(unsafe { raw_syscall(c.nr, c.args) }),
    }
}

pub fn exit_group(_cx: &mut Ctx, c: &Call) -> SysResult {
    Ok(Outcome::ExitProcess(c.args[0] as i32))
}

/// Ends the process with `status`, its counters reported first.
pub fn end_process(status: i32) -> ! {
    crate::host::report::finish(None);
    // Safety: ends the process; nothing runs after it.
    unsafe { raw_syscall(libc::SYS_exit_group as u64, [status as u64, 0, 0, 0, 0, 0]) };
    unreachable!("exit_group returned")
}

const PR_SET_SECCOMP: u64 = 22;
const PR_SET_MM: u64 = 35;
const PR_SET_SYSCALL_USER_DISPATCH: u64 = 59;

pub fn prctl(_cx: &mut Ctx, c: &Call) -> SysResult {
    match c.args[0] {
        PR_SET_SECCOMP | PR_SET_MM | PR_SET_SYSCALL_USER_DISPATCH => Err(Errno::EINVAL.into()),
        // Safety: the other options act on the calling thread's or
        // process's own attributes (name, dumpable, ...), as on Linux.
        _ => returned(unsafe { raw_syscall(c.nr, c.args) }),
    }
}

/// Limits the runtime cannot honour without breaking itself: the arena is
/// reserved up front, so an address-space limit would fail every mapping.
fn ignored_limit(resource: u64) -> bool {
    resource == libc::RLIMIT_AS as u64 || resource == libc::RLIMIT_DATA as u64
}

/// The host RLIMIT_NOFILE never goes below this: the runtime's own
/// descriptors live from its floor up (`lego_transport::fdfloor`).
fn nofile_needed() -> u64 {
    lego_transport::fdfloor::floor().max(0) as u64 + 64
}

fn is_self(pid: u64) -> bool {
    // Safety: getpid has no preconditions.
    pid == 0 || pid == unsafe { libc::getpid() } as u64
}

/// The program's RLIMIT_NOFILE: what it set, or the host's.
fn nofile(cx: &Ctx) -> Result<(u64, u64), Errno> {
    if let Some(view) = lock(&cx.rt.process).nofile {
        return Ok(view);
    }
    let mut host = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes one rlimit of ours.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut host) } != 0 {
        return Err(Errno::EFAULT);
    }
    Ok((host.rlim_cur, host.rlim_max))
}

/// Sets the program's RLIMIT_NOFILE: on the host as asked, but never
/// below what the runtime needs there (then the program sees what it set,
/// and may open that many more descriptors than it asked for).
fn set_nofile(cx: &Ctx, (soft, hard): (u64, u64)) -> Result<(), Errno> {
    if soft > hard {
        return Err(Errno::EINVAL);
    }
    let needed = nofile_needed();
    let host = libc::rlimit {
        rlim_cur: soft.max(needed),
        rlim_max: hard.max(needed),
    };
    // Safety: setrlimit reads one rlimit of ours; the kernel decides who
    // may raise a hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &host) } != 0 {
        return Err(Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EPERM),
        ));
    }
    lock(&cx.rt.process).nofile =
        ((host.rlim_cur, host.rlim_max) != (soft, hard)).then_some((soft, hard));
    Ok(())
}

fn read_rlimit(addr: u64) -> Result<(u64, u64), Errno> {
    let mut raw = [0u8; 16];
    user::read(addr, &mut raw)?;
    let word = |i: usize| u64::from_ne_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
    Ok((word(0), word(8)))
}

fn write_rlimit(addr: u64, (soft, hard): (u64, u64)) -> Result<(), Errno> {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&soft.to_ne_bytes());
    raw[8..].copy_from_slice(&hard.to_ne_bytes());
    user::write(addr, &raw)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn getrlimit(cx: &mut Ctx, c: &Call) -> SysResult {
    if c.args[0] == libc::RLIMIT_NOFILE as u64 {
        write_rlimit(c.args[1], nofile(cx)?)?;
        return ok(0);
    }
    // Safety: the application's own call: one rlimit into its memory,
    // which the kernel checks.
    returned(unsafe { raw_syscall(c.nr, c.args) })
}

pub fn prlimit64(cx: &mut Ctx, c: &Call) -> SysResult {
    let [pid, resource, new, old, _, _] = c.args;
    if resource == libc::RLIMIT_NOFILE as u64 && is_self(pid) {
        let before = nofile(cx)?;
        if new != 0 {
            set_nofile(cx, read_rlimit(new)?)?;
        }
        if old != 0 {
            write_rlimit(old, before)?;
        }
        return ok(0);
    }
    // Safety: rlimits of the host process; the pointers are the
    // application's and the kernel checks them.
    returned(unsafe {
        if new != 0 && ignored_limit(resource) && is_self(pid) {
            // Report the old value, keep the new one unapplied.
            raw_syscall(c.nr, [pid, resource, 0, old, 0, 0])
        } else {
            raw_syscall(c.nr, c.args)
        }
    })
}

pub fn setrlimit(cx: &mut Ctx, c: &Call) -> SysResult {
    if ignored_limit(c.args[0]) {
        return ok(0);
    }
    if c.args[0] == libc::RLIMIT_NOFILE as u64 {
        set_nofile(cx, read_rlimit(c.args[1])?)?;
        return ok(0);
    }
    // Safety: as prlimit64.
    returned(unsafe { raw_syscall(c.nr, c.args) })
}

/// The setuid family and capset: the host kernel changes the ids or
/// capabilities (and decides who may); the runtime then renews the voucher
/// its storage requests carry, before the program runs on.
pub fn set_ids(cx: &mut Ctx, c: &Call) -> SysResult {
    // Safety: the application's own call, unchanged; it changes only this
    // thread's ids (glibc makes it on every thread).
    let result = returned(unsafe { raw_syscall(c.nr, c.args) });
    crate::process::credentials::renew(cx.rt).map_err(SysError::Fatal)?;
    result
}

pub fn sysinfo(cx: &mut Ctx, c: &Call) -> SysResult {
    // Safety: sysinfo fills one struct sysinfo of ours.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return Err(Errno::EFAULT.into());
    }
    crate::process::procfs::sysinfo(cx.rt, &mut info);
    // Safety: struct sysinfo is plain data; we copy its bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            &info as *const libc::sysinfo as *const u8,
            std::mem::size_of::<libc::sysinfo>(),
        )
    };
    user::write(c.args[0], bytes)?;
    ok(0)
}

/// Lego's own call (not Linux's): the calling process's whole kernel
/// state, taken with every other thread stopped at a boundary, as the
/// bytes of a `lego_proto::state::ProcessState`, into `buf` (`len`
/// bytes). Returns the length; ERANGE if `len` is too small. The state is
/// checked to survive its own serialization before it is given out.
pub fn process_state(cx: &mut Ctx, c: &Call) -> SysResult {
    let [buf, len, ..] = c.args;
    let state = cx.rt.take_state(cx.thread, cx.uc)?;
    let bytes = state.to_bytes().map_err(|e| {
        SysError::fatal(format!(
            "runtime bug: cannot serialize the process state: {e}"
        ))
    })?;
    let back = ProcessState::from_bytes(&bytes).map_err(|e| {
        SysError::fatal(format!(
            "runtime bug: cannot read back the process state: {e}"
        ))
    })?;
    let differences = state.differences(&back);
    if !differences.is_empty() {
        return Err(SysError::fatal(format!(
            "runtime bug: the process state changed in serialization: {differences:?}"
        )));
    }
    if (len as usize) < bytes.len() {
        return Err(Errno::ERANGE.into());
    }
    user::write(buf, &bytes)?;
    ok(bytes.len() as i64)
}
