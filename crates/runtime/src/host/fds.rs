//! The runtime's own descriptors live near the top of the descriptor
//! limit, above a floor, so the program's start at 3 as natively.

use std::os::fd::RawFd;

/// The lowest descriptor number the runtime keeps its own descriptors at:
/// near the top of the soft descriptor limit, so the program's own
/// descriptors start at 3 as natively and its calls on small numbers never
/// reach the runtime's.
pub fn descriptor_floor() -> RawFd {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes one rlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1024) as RawFd
    } else {
        1024
    };
    (soft - 64).max(64)
}

/// Descriptors open now, other than 0-2 (the application's stdio).
pub fn open_fds() -> Vec<RawFd> {
    // thread-self: the first thread may have ended (an execve from
    // another), and /proc/self then shows no descriptors.
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/thread-self/fd")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    // The listing saw its own directory descriptor, closed by now.
    // Safety: F_GETFD only queries the descriptor table.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    fds.sort_unstable();
    fds
}
