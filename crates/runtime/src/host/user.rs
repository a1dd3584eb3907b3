//! Copying to and from the application's memory the way the kernel does:
//! a bad or protected address is EFAULT, never a crash of the runtime. The
//! copies go through process_vm_readv/writev on our own process, so the
//! kernel checks protections and serves ExCache misses for us.

use lego_proto::Errno;
use libc::{c_void, iovec};

fn transfer(addr: u64, buf: *mut u8, len: usize, write: bool) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    let local = iovec {
        iov_base: buf.cast::<c_void>(),
        iov_len: len,
    };
    let remote = iovec {
        iov_base: addr as *mut c_void,
        iov_len: len,
    };
    // Safety: `local` describes memory of ours the caller owns for `len`
    // bytes; `remote` is checked by the kernel, which fails with EFAULT
    // rather than touching anything invalid.
    // Addressed by this thread's id, not the process's: after an execve
    // from another thread the first thread may be gone, and the kernel
    // finds no memory through its (zombie) task.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    let done = unsafe {
        if write {
            libc::process_vm_writev(me, &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(me, &local, 1, &remote, 1, 0)
        }
    };
    if done == len as isize {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

/// Copies `out.len()` bytes from application address `addr`.
pub fn read(addr: u64, out: &mut [u8]) -> Result<(), Errno> {
    transfer(addr, out.as_mut_ptr(), out.len(), false)
}

/// Copies `bytes` to application address `addr`.
pub fn write(addr: u64, bytes: &[u8]) -> Result<(), Errno> {
    transfer(addr, bytes.as_ptr() as *mut u8, bytes.len(), true)
}

/// Reads a NUL-terminated string of at most `max` bytes (without the NUL).
pub fn read_cstring(addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    let mut at = addr;
    loop {
        // Read up to the end of the page, so a string ending just before an
        // unmapped page is still read.
        let chunk = (4096 - (at % 4096)) as usize;
        let mut buf = vec![0u8; chunk];
        read(at, &mut buf)?;
        if let Some(nul) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..nul]);
            return Ok(out);
        }
        out.extend_from_slice(&buf);
        if out.len() > max {
            return Err(Errno::ENAMETOOLONG);
        }
        at += chunk as u64;
    }
}
