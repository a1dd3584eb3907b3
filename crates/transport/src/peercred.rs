//! Who is at the other end of a Unix socket, as the kernel recorded it
//! when the peer connected: its pid, effective uid and gid, and its
//! supplementary groups (`SO_PEERCRED`, `SO_PEERGROUPS`), and whether that
//! process still runs (`SO_PEERPIDFD`).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Sorted, as the kernel keeps them.
    pub groups: Vec<u32>,
}

/// The credentials of `socket`'s peer.
pub fn peer_credentials(socket: &impl AsFd) -> io::Result<PeerCredentials> {
    let fd = socket.as_fd().as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // Safety: getsockopt writes at most `len` bytes into `cred`, a ucred
    // of exactly that size, and sets `len` to what it wrote.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // Safety: getsockopt writes at most `len` bytes into `groups`,
        // which holds that many; on ERANGE it writes none and sets `len`
        // to the size needed.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if ret == 0 {
            groups.truncate(len as usize / 4);
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || len as usize <= groups.len() * 4 {
            return Err(e);
        }
        groups.resize(len as usize / 4, 0);
    }
    Ok(PeerCredentials {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
        groups,
    })
}

/// Whether the process that connected `socket` still runs: asked of its
/// pidfd (`SO_PEERPIDFD`), which follows that process, not its pid number,
/// so a pid reused since says no.
pub fn peer_still_runs(socket: &impl AsFd) -> io::Result<bool> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // Safety: getsockopt writes one int into `pidfd`; the pidfd it makes
    // is new and owned by us (closed when `owned` drops); pidfd_send_signal
    // with signal 0 only checks that the process exists.
    unsafe {
        if libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(pidfd);
        let r = libc::syscall(libc::SYS_pidfd_send_signal, owned.as_raw_fd(), 0, 0, 0);
        Ok(r == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pairs_peer_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let creds = peer_credentials(&a).unwrap();
        // Safety: plain id queries.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(
            (creds.pid, creds.uid, creds.gid),
            (std::process::id(), uid, gid)
        );
        let mut ours = vec![0u32; 65536];
        // Safety: getgroups writes at most 65536 ids into a buffer of as many.
        let n = unsafe { libc::getgroups(65536, ours.as_mut_ptr()) };
        ours.truncate(n.max(0) as usize);
        ours.sort_unstable();
        assert_eq!(creds.groups, ours);
        assert!(peer_still_runs(&a).unwrap());
    }
}
