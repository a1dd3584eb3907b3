//! Passing descriptors over a Unix socket (SCM_RIGHTS): how `lego run`
//! hands a program's stdin, stdout and stderr to the processor that runs
//! it, so a terminal stays a terminal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 16;

fn cmsg_space() -> usize {
    // Safety: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends `fds` with one marker byte (the byte alone for none: the
/// receiver's `recv_fds` then returns no descriptor).
pub fn send_fds(socket: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "at most 16 descriptors per message",
        ));
    }
    if fds.is_empty() {
        // Safety: send reads one byte of a live buffer.
        let sent = unsafe {
            libc::send(
                socket.as_raw_fd(),
                [0u8].as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        return match sent {
            1 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        };
    }
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = vec![0u8; cmsg_space()];
    let data_len = std::mem::size_of_val(fds);
    // Safety: msghdr is plain data; every pointer in it refers to buffers
    // that live across the sendmsg call, and the control buffer is sized
    // with CMSG_SPACE for up to MAX_FDS descriptors.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(data_len as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        if libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives the marker byte and the descriptors sent with it.
pub fn recv_fds(socket: &UnixStream) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = vec![0u8; cmsg_space()];
    let mut fds = Vec::new();
    // Safety: as in `send_fds`; the kernel writes at most msg_controllen
    // bytes of control data, and each SCM_RIGHTS descriptor it delivers is
    // new and owned by us alone.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed before sending descriptors",
            ));
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many descriptors in one message",
            ));
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn descriptors_cross_a_socket_and_still_work() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pipe_r, pipe_w) = UnixStream::pair().unwrap();
        send_fds(&a, &[pipe_w.as_raw_fd(), pipe_w.as_raw_fd()]).unwrap();
        drop(pipe_w);
        let fds = recv_fds(&b).unwrap();
        assert_eq!(fds.len(), 2);
        let mut w = std::fs::File::from(fds.into_iter().next().unwrap());
        w.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        pipe_r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }
}
