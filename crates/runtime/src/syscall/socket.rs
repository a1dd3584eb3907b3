//! Unix sockets at paths. A socket file is a host file, checked by the
//! host kernel with the runtime's host identity, which is unprivileged
//! (host isolation): it may not create or reach a socket where the
//! program, with its Lego ids, could. So the processor binds or connects
//! the program's own socket for it, acting with the ids the kernel shows
//! for the calling thread (see `process::processor::socket_at`). Every
//! other address (IP, abstract Unix names, unnamed) is the host's, as is
//! sendto/sendmsg to a path (a datagram socket sending to a path the
//! runtime's identity may not write gets EACCES).

use super::contract::{Call, Ctx, Errno, SysResult};
use crate::host::user;

/// Bytes before `sun_path` in a `sockaddr_un`.
const PATH_OFFSET: usize = std::mem::size_of::<libc::sa_family_t>();

pub fn bind(cx: &mut Ctx, c: &Call) -> SysResult {
    at_path(cx, c, false)
}

pub fn connect(cx: &mut Ctx, c: &Call) -> SysResult {
    at_path(cx, c, true)
}

fn at_path(cx: &mut Ctx, c: &Call, connect: bool) -> SysResult {
    let [fd, addr, len, ..] = c.args;
    let Some(path) = socket_path(addr, len)? else {
        // Safety: the application's own call, unchanged.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let Some(vfs) = cx.rt.vfs.as_ref() else {
        // Safety: as above: a program on the processor's files reaches
        // them with the launching user's own host ids.
        return unsafe { cx.host(c.nr, c.args) };
    };
    if cx.rt.is_runtime_fd(fd) || fd > i32::MAX as u64 {
        return Err(Errno::EBADF.into());
    }
    let absolute = crate::vfs::path::normalize(&vfs.cwd().path, &path);
    let errno = crate::process::processor::socket_at(cx.rt, fd as i32, &absolute, connect)
        .map_err(|e| {
            tracing::warn!("cannot have the processor reach a socket at a path: {e}");
            Errno::EACCES
        })?;
    if errno != 0 {
        return Err(Errno(errno).into());
    }
    Ok(super::contract::Outcome::Return(0))
}

/// The path a `sockaddr_un` of `len` bytes at `addr` names, or `None`
/// for any other address (which the kernel judges).
fn socket_path(addr: u64, len: u64) -> Result<Option<Vec<u8>>, Errno> {
    let len = len as usize;
    if len <= PATH_OFFSET || len > std::mem::size_of::<libc::sockaddr_un>() {
        return Ok(None);
    }
    let mut raw = vec![0u8; len];
    user::read(addr, &mut raw)?;
    let family = libc::sa_family_t::from_ne_bytes([raw[0], raw[1]]);
    let name = &raw[PATH_OFFSET..];
    if family != libc::AF_UNIX as libc::sa_family_t || name[0] == 0 {
        return Ok(None);
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(Some(name[..end].to_vec()))
}
