//! Keeping a process's own descriptors out of the way of the program it
//! hosts. The runtime lives in the application's process and shares its
//! descriptor table; with a floor set, every descriptor the transport
//! opens is moved to a number at or above it, so the application's
//! descriptors start at 3 as they would natively and its calls on small
//! numbers never reach the runtime's sockets.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

static FLOOR: AtomicI32 = AtomicI32::new(0);

/// Descriptors opened from now on are moved to `floor` or above (0: off).
pub fn set_floor(floor: RawFd) {
    FLOOR.store(floor, Ordering::SeqCst);
}

pub fn floor() -> RawFd {
    FLOOR.load(Ordering::SeqCst)
}

/// `fd` moved to the floor or above (close-on-exec), the old number
/// closed; unchanged when no floor is set or it is already above.
pub fn lift_fd(fd: RawFd) -> io::Result<RawFd> {
    let floor = floor();
    if floor <= 0 {
        return Ok(fd);
    }
    if fd >= floor {
        remember(fd);
        return Ok(fd);
    }
    // Safety: F_DUPFD_CLOEXEC duplicates a descriptor we own; closing the
    // original afterwards leaves the new one its only owner.
    unsafe {
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor);
        if high < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(fd);
        remember(high);
        Ok(high)
    }
}

/// Every descriptor lifted so far, with the identity (device, inode) of
/// what it opened: the host process's own (a runtime's connections, opened
/// at any time), never the program's. A number closed since and reused
/// for something else no longer matches and is forgotten.
static LIFTED: std::sync::Mutex<std::collections::BTreeMap<RawFd, (u64, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// What `fd` refers to now, if it is open.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // Safety: fstat writes one struct stat of ours.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn lifted_table() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<RawFd, (u64, u64)>> {
    LIFTED.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember(fd: RawFd) {
    if let Some(id) = identity(fd) {
        lifted_table().insert(fd, id);
    }
}

/// Whether `fd` is a descriptor this process lifted and still holds.
pub fn is_lifted(fd: RawFd) -> bool {
    let floor = floor();
    if floor <= 0 || fd < floor {
        // The program's numbers: no lock on the syscall path.
        return false;
    }
    let mut table = lifted_table();
    match table.get(&fd) {
        None => false,
        Some(&id) if identity(fd) == Some(id) => true,
        Some(_) => {
            table.remove(&fd);
            false
        }
    }
}

/// The table of lifted descriptors, held across a fork.
pub struct LiftedHold {
    _table: std::sync::MutexGuard<'static, std::collections::BTreeMap<RawFd, (u64, u64)>>,
}

/// Holds the table across a fork of the process (nobody updates it
/// meanwhile); dropping the value releases it.
pub fn hold_for_fork() -> LiftedHold {
    LiftedHold {
        _table: lifted_table(),
    }
}

/// The descriptors lifted and still held, sorted.
pub fn lifted() -> Vec<RawFd> {
    let mut table = lifted_table();
    table.retain(|&fd, id| identity(fd) == Some(*id));
    table.keys().copied().collect()
}

/// An owned descriptor object moved above the floor.
pub fn lift<T: IntoRawFd + FromRawFd>(object: T) -> io::Result<T> {
    let fd = lift_fd(object.into_raw_fd())?;
    // Safety: `fd` is the only descriptor for the object now.
    Ok(unsafe { T::from_raw_fd(fd) })
}
