//! execve: replace the program running in this process.
//!
//! The new image is prepared and loaded by the memory manager before
//! anything of the old program is touched, so a missing, unreadable or
//! malformed program makes execve fail with the old program intact, as on
//! Linux. After that point the arena is rebuilt, close-on-exec descriptors
//! are closed, handled signals revert to their defaults, and the SIGSYS
//! handler returns into the new program's entry point
//! ([`Outcome::Exec`]).

use super::contract::{Call, Ctx, Errno, Outcome, SysError, SysResult};
use crate::host::user;
use crate::image::{install, prepare};
use crate::process::Runtime;
use lego_proto::{MAX_ARGS, MAX_ARGS_BYTES};

/// Reads a NULL-terminated array of string pointers, bounded like Linux's
/// argument limits (E2BIG beyond them).
fn read_strings(mut ptr: u64, total: &mut usize) -> Result<Vec<Vec<u8>>, Errno> {
    let mut out = Vec::new();
    if ptr == 0 {
        return Ok(out);
    }
    loop {
        let mut word = [0u8; 8];
        user::read(ptr, &mut word)?;
        let addr = u64::from_ne_bytes(word);
        if addr == 0 {
            return Ok(out);
        }
        let s = user::read_cstring(addr, MAX_ARGS_BYTES)?;
        *total += s.len() + 1;
        if out.len() >= MAX_ARGS || *total > MAX_ARGS_BYTES {
            return Err(Errno::E2BIG);
        }
        out.push(s);
        ptr += 8;
    }
}

pub fn execve(cx: &mut Ctx, c: &Call) -> SysResult {
    exec_common(cx.rt, c.args[0], c.args[1], c.args[2])
}

pub fn execveat(cx: &mut Ctx, c: &Call) -> SysResult {
    let [dirfd, path, argv, envp, flags, _] = c.args;
    // Only what needs no descriptor-relative lookup: an absolute path, or
    // a path relative to the working directory.
    let path_bytes = user::read_cstring(path, libc::PATH_MAX as usize)?;
    if flags != 0 || (dirfd as i32 != libc::AT_FDCWD && !path_bytes.starts_with(b"/")) {
        return Err(Errno::ENOSYS.into());
    }
    exec_common(cx.rt, path, argv, envp)
}

fn exec_common(rt: &Runtime, path: u64, argv: u64, envp: u64) -> SysResult {
    let result = exec_one(rt, path, argv, envp);
    rt.threads.exec_finished();
    result
}

fn exec_one(rt: &Runtime, path: u64, argv: u64, envp: u64) -> SysResult {
    let path = user::read_cstring(path, libc::PATH_MAX as usize)?;
    if path.is_empty() {
        return Err(Errno::ENOENT.into());
    }
    let mut total = 0;
    let argv = read_strings(argv, &mut total)?;
    let envp = read_strings(envp, &mut total)?;
    check_executable(rt, &path)?;
    let prepared = match prepare(rt.vfs.as_ref(), &path, argv) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!("execve: {}", e.message);
            return Err(e.error);
        }
    };
    // The program is found: the other threads end before the address
    // space is replaced under them, as Linux's execve ends them.
    if rt.threads.several() && !rt.threads.end_other_threads() {
        return Err(Errno::EAGAIN.into());
    }
    // The address-space lock from before the last write-back until the
    // new image is mirrored: no fault still served for an ended thread
    // writes an old page back into the new image.
    let change = rt.mm.cache.change_layout();
    rt.mm
        .cache
        .settle()
        .map_err(|e| SysError::fatal(format!("before execve: {e}")))?;
    let image = match rt
        .mm
        .remote
        .exec(&prepared.image)
        .map_err(SysError::Fatal)?
    {
        Err(refusal) => {
            tracing::info!("execve of {}: {refusal}", String::from_utf8_lossy(&path));
            return Err(Errno::ENOEXEC.into());
        }
        Ok(image) => image,
    };
    // The point of no return: the memory manager holds the new image.
    let exe = match &rt.vfs {
        Some(vfs) => crate::vfs::path::normalize(&vfs.cwd().path, &path),
        None => std::fs::canonicalize(String::from_utf8_lossy(&path).as_ref())
            .map(|p| p.into_os_string().into_encoded_bytes())
            .unwrap_or_else(|_| path.clone()),
    };
    let sp = install(rt, change, &image, &prepared, &envp, &path).map_err(|e| {
        SysError::fatal(format!("execve of {}: {e}", String::from_utf8_lossy(&path)))
    })?;
    close_on_exec(rt);
    crate::process::credentials::exec(rt).map_err(SysError::Fatal)?;
    rt.signals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .reset_for_exec();
    *rt.program.lock().unwrap_or_else(|p| p.into_inner()) = exe;
    super::fork::exec_done(rt);
    if let Some(live) = crate::host::live::get() {
        let view = rt.process.lock().unwrap_or_else(|p| p.into_inner());
        let command = view
            .cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        live.set_command(&command);
    }
    Ok(Outcome::Exec {
        entry: image.entry,
        sp,
    })
}

/// execve's permission check: a regular file with an execute bit.
fn check_executable(rt: &Runtime, path: &[u8]) -> Result<(), SysError> {
    if let Some(vfs) = &rt.vfs {
        let abs = crate::vfs::path::normalize(&vfs.cwd().path, path);
        if !crate::vfs::path::is_host(&abs) {
            let (_, attr) = vfs
                .storage
                .found(lego_proto::StorageRequest::Lookup {
                    dir: vfs.root.clone(),
                    path: abs,
                    follow: true,
                })
                .map_err(SysError::from)?;
            if attr.file_type != lego_proto::FileType::Regular || attr.mode & 0o111 == 0 {
                return Err(Errno::EACCES.into());
            }
            return Ok(());
        }
    }
    let c_path = std::ffi::CString::new(path.to_vec()).map_err(|_| Errno::ENOENT)?;
    // Safety: access and stat read a NUL-terminated path of ours.
    unsafe {
        if libc::access(c_path.as_ptr(), libc::X_OK) != 0 {
            return Err(Errno::last().into());
        }
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(c_path.as_ptr(), &mut st) == 0 && st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EACCES.into());
        }
    }
    Ok(())
}

/// Closes the application's descriptors marked close-on-exec.
fn close_on_exec(rt: &Runtime) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/thread-self/fd")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if rt.is_runtime_fd(fd as u64) {
            continue;
        }
        // Safety: fcntl and close on the application's own descriptors.
        let closed = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags >= 0 && flags & libc::FD_CLOEXEC != 0 && libc::close(fd) == 0
        };
        if closed {
            rt.files.remove(fd);
        }
    }
}
