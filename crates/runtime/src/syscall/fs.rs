//! File-descriptor calls the runtime must police (its own descriptors are
//! not the application's to close) and paths it answers itself.

use super::Call;
use crate::sud::raw_syscall;
use crate::{user, Runtime};

fn errno(e: i32) -> i64 {
    -(e as i64)
}

/// Answers readlink of /proc/self/exe with the program's path; passes
/// anything else through.
fn readlink_common(
    rt: &Runtime,
    path_ptr: u64,
    buf: u64,
    size: u64,
    pass: impl FnOnce() -> i64,
) -> i64 {
    let path = match user::read_cstring(path_ptr, libc::PATH_MAX as usize) {
        Ok(path) => path,
        Err(e) => return errno(e),
    };
    let pid = std::process::id().to_string();
    let own = |rest: &[u8]| -> Option<Vec<u8>> {
        let tail = path
            .strip_prefix(b"/proc/self/")
            .or_else(|| path.strip_prefix(format!("/proc/{pid}/").as_bytes()))?;
        (tail == rest).then(Vec::new).or_else(|| {
            let n: u64 = std::str::from_utf8(tail.strip_prefix(rest)?)
                .ok()?
                .parse()
                .ok()?;
            Some(n.to_string().into_bytes())
        })
    };
    let target = if own(b"exe").is_some_and(|v| v.is_empty()) {
        rt.program.lock().unwrap_or_else(|p| p.into_inner()).clone()
    } else if let Some(fd) =
        own(b"fd/").and_then(|n| String::from_utf8(n).ok()?.parse::<u64>().ok())
    {
        // A storage file's descriptor names the file, not its placeholder.
        match rt.vfs.as_ref().and_then(|v| v.file(fd)) {
            Some(file) => file.path.clone(),
            None => return pass(),
        }
    } else {
        return pass();
    };
    if (size as i64) <= 0 {
        return errno(libc::EINVAL);
    }
    let n = target.len().min(size as usize);
    match user::write(buf, &target[..n]) {
        Ok(()) => n as i64,
        Err(e) => errno(e),
    }
}

pub fn readlink(rt: &Runtime, c: &Call) -> i64 {
    readlink_common(rt, c.args[0], c.args[1], c.args[2], || match rt.vfs {
        Some(_) => {
            super::path::readlink_storage(rt, c, libc::AT_FDCWD as u64, 0, c.args[1], c.args[2])
        }
        // Safety: the application's own call, unchanged.
        None => unsafe { raw_syscall(c.nr, c.args) },
    })
}

pub fn readlinkat(rt: &Runtime, c: &Call) -> i64 {
    readlink_common(rt, c.args[1], c.args[2], c.args[3], || match rt.vfs {
        Some(_) => super::path::readlink_storage(rt, c, c.args[0], 1, c.args[2], c.args[3]),
        // Safety: the application's own call, unchanged.
        None => unsafe { raw_syscall(c.nr, c.args) },
    })
}

pub fn close(rt: &Runtime, c: &Call) -> i64 {
    if rt.is_runtime_fd(c.args[0]) {
        return errno(libc::EBADF);
    }
    // Safety: closes an application descriptor.
    unsafe { raw_syscall(c.nr, c.args) }
}

pub fn dup2(rt: &Runtime, c: &Call) -> i64 {
    if rt.is_runtime_fd(c.args[0]) || rt.is_runtime_fd(c.args[1]) {
        return errno(libc::EBADF);
    }
    // Safety: both descriptors are the application's.
    unsafe { raw_syscall(c.nr, c.args) }
}

pub fn dup3(rt: &Runtime, c: &Call) -> i64 {
    dup2(rt, c)
}

pub fn close_range(rt: &Runtime, c: &Call) -> i64 {
    // The kernel's arguments are unsigned ints: truncate as it does.
    let (first, last, flags) = (
        c.args[0] as u32 as u64,
        c.args[1] as u32 as u64,
        c.args[2] as u32 as u64,
    );
    if first > last {
        return errno(libc::EINVAL);
    }
    // Apply the call to each stretch between the runtime's descriptors.
    let mut start = first;
    for fd in rt.runtime_fds() {
        let fd = fd as u64;
        if fd < start || fd > last {
            continue;
        }
        if fd > start {
            // Safety: the stretch holds only application descriptors.
            let ret = unsafe { raw_syscall(c.nr, [start, fd - 1, flags, 0, 0, 0]) };
            if ret < 0 {
                return ret;
            }
        }
        start = fd + 1;
    }
    if start <= last {
        // Safety: as above.
        return unsafe { raw_syscall(c.nr, [start, last, flags, 0, 0, 0]) };
    }
    0
}
