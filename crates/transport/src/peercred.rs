//! Who is at the other end of a Unix socket, as the kernel recorded it
//! when the peer connected: its pid, effective uid and gid, and its
//! supplementary groups (`SO_PEERCRED`, `SO_PEERGROUPS`).

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
    }
}
