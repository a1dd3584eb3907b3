//! Thin, safe wrappers over the Linux calls the file service makes.
//!
//! Every wrapper takes descriptors it borrows and C strings the caller has
//! already checked (no NUL inside), and returns the raw errno on failure:
//! the service hands errnos to the client unchanged, so nothing here
//! translates them.

use lego_proto::{FileAttr, FileType, FsStat, Timespec};
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub use lego_proto::Errno;

pub type SysResult<T> = Result<T, Errno>;

/// Turns a `-1`-on-error return value into a result.
fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Owns the descriptor a successful open returned.
fn owned(ret: libc::c_long) -> SysResult<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // Safety: the kernel just returned `fd` as a new descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const EMPTY: &CStr = c"";

/// `openat2(2)`: `path` from `dir` under the `resolve` rules.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> SysResult<OwnedFd> {
    // Safety: open_how is plain data; zero is a valid value of every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    // The kernel refuses a mode without O_CREAT/O_TMPFILE.
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode & 0o7777)
    } else {
        0
    };
    how.resolve = resolve;
    // Safety: `path` is NUL-terminated and `how` is a valid open_how whose
    // size we pass; both outlive the call.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })
}

/// `openat(2)` of one name in `dir`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // Safety: `name` is NUL-terminated and outlives the call.
    owned(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode & 0o7777,
        )
    } as libc::c_long)
}

/// Largest kernel file handle (`MAX_HANDLE_SZ`).
pub const MAX_KERNEL_HANDLE: usize = 128;

#[repr(C)]
struct RawFileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_KERNEL_HANDLE],
}

/// A kernel file handle and the id of the mount it was made on.
pub struct KernelHandle {
    pub mount_id: i32,
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: the handle of the file `fd`
/// refers to. `EOPNOTSUPP` on file systems that cannot make handles.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> SysResult<KernelHandle> {
    let mut raw = RawFileHandle {
        handle_bytes: MAX_KERNEL_HANDLE as u32,
        handle_type: 0,
        f_handle: [0; MAX_KERNEL_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    // Safety: `raw` is a file_handle header followed by `handle_bytes`
    // bytes of room, as the call requires; `mount_id` is writable.
    check(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut raw as *mut RawFileHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    })?;
    let len = (raw.handle_bytes as usize).min(MAX_KERNEL_HANDLE);
    Ok(KernelHandle {
        mount_id,
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
    })
}

/// `open_by_handle_at(2)`. Needs `CAP_DAC_READ_SEARCH` (`EPERM` without).
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle_type: i32,
    bytes: &[u8],
    flags: i32,
) -> SysResult<OwnedFd> {
    if bytes.len() > MAX_KERNEL_HANDLE {
        return Err(Errno(libc::ESTALE));
    }
    let mut raw = RawFileHandle {
        handle_bytes: bytes.len() as u32,
        handle_type,
        f_handle: [0; MAX_KERNEL_HANDLE],
    };
    raw.f_handle[..bytes.len()].copy_from_slice(bytes);
    // Safety: `raw` is a valid file_handle of `handle_bytes` bytes that
    // outlives the call.
    owned(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut raw as *mut RawFileHandle,
            flags | libc::O_CLOEXEC,
        )
    })
}

fn timespec(t: libc::statx_timestamp) -> Timespec {
    Timespec {
        sec: t.tv_sec,
        nsec: t.tv_nsec,
    }
}

/// Attributes and mount id of the file `fd` refers to (a symlink itself, not
/// its target).
pub fn statx(fd: BorrowedFd<'_>) -> SysResult<(FileAttr, u64)> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // Safety: `stx` is writable memory of the right type; the path is an
    // empty NUL-terminated string, as AT_EMPTY_PATH requires.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    } as libc::c_long)?;
    // Safety: zero-initialised, then filled by a successful statx.
    let stx = unsafe { stx.assume_init() };
    let mode = u32::from(stx.stx_mode);
    let attr = FileAttr {
        file_type: FileType::from_mode(mode),
        mode: mode & 0o7777,
        nlink: u64::from(stx.stx_nlink),
        uid: stx.stx_uid,
        gid: stx.stx_gid,
        size: stx.stx_size,
        blocks: stx.stx_blocks,
        blksize: stx.stx_blksize,
        atime: timespec(stx.stx_atime),
        mtime: timespec(stx.stx_mtime),
        ctime: timespec(stx.stx_ctime),
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        rdev: libc::makedev(stx.stx_rdev_major, stx.stx_rdev_minor),
    };
    Ok((attr, stx.stx_mnt_id))
}

/// `fstatfs(2)` (works on `O_PATH` descriptors).
pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<FsStat> {
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // Safety: `st` is writable memory of the right type.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } as libc::c_long)?;
    // Safety: zero-initialised, then filled by a successful fstatfs.
    let st = unsafe { st.assume_init() };
    // libc's statfs lacks f_flags; statvfs carries the same mount flags.
    let mut vfs = MaybeUninit::<libc::statvfs>::zeroed();
    // Safety: `vfs` is writable memory of the right type.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), vfs.as_mut_ptr()) } as libc::c_long)?;
    // Safety: zero-initialised, then filled by a successful fstatvfs.
    let vfs = unsafe { vfs.assume_init() };
    // Safety: fsid_t is two c_ints with private fields; reading it as such
    // is what glibc's own headers do.
    let fsid: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
    Ok(FsStat {
        fs_type: st.f_type as u64,
        bsize: st.f_bsize as u64,
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        fsid: u64::from(fsid[0] as u32) | (u64::from(fsid[1] as u32) << 32),
        namelen: st.f_namelen as u64,
        frsize: st.f_frsize as u64,
        flags: vfs.f_flag,
    })
}

/// `pread(2)` until `buf` is full or the file ends; returns the bytes read.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .and_then(|at| i64::try_from(at).ok())
            .ok_or(Errno(libc::EINVAL))?;
        let rest = &mut buf[done..];
        // Safety: `rest` is writable for its length.
        let n = unsafe { libc::pread64(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at) };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = Errno::last();
                if e.0 == libc::EINTR {
                    continue;
                }
                // Bytes already read are the answer, as for read(2).
                return if done > 0 { Ok(done) } else { Err(e) };
            }
        }
    }
    Ok(done)
}

/// Writes all of `data` at `offset` (`append`: at the end, for a descriptor
/// opened `O_APPEND`); returns the bytes written, short only if a later
/// chunk failed after an earlier one succeeded.
pub fn pwrite_full(fd: BorrowedFd<'_>, data: &[u8], offset: u64, append: bool) -> SysResult<usize> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        let n = if append {
            // Safety: `rest` is readable for its length.
            unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) }
        } else {
            let at = offset
                .checked_add(done as u64)
                .and_then(|at| i64::try_from(at).ok())
                .ok_or(Errno(libc::EFBIG))?;
            // Safety: `rest` is readable for its length.
            unsafe { libc::pwrite64(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), at) }
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let e = if n == 0 {
            Errno(libc::EIO)
        } else {
            Errno::last()
        };
        if e.0 == libc::EINTR {
            continue;
        }
        return if done > 0 { Ok(done) } else { Err(e) };
    }
    Ok(done)
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    // Safety: plain calls on a borrowed descriptor.
    let ret = unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    };
    check(ret as libc::c_long).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    let size = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
    // Safety: plain call on a borrowed descriptor.
    check(unsafe { libc::ftruncate64(fd.as_raw_fd(), size) } as libc::c_long).map(drop)
}

/// The `/proc/self/fd/N` path of a descriptor, for calls that take no
/// `AT_EMPTY_PATH`. Following it is a jump to the file itself, whatever
/// its name is now.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("digits have no NUL")
}

/// The file's current path in the server's namespace (`/proc/self/fd`).
pub fn fd_path(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    readlinkat_raw(libc::AT_FDCWD, &proc_fd_path(fd))
}

/// Changes permission bits of the file itself (`EOPNOTSUPP` for symlinks,
/// as `lchmod`).
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // fchmodat2 (Linux 6.6) takes AT_EMPTY_PATH on O_PATH descriptors.
    const SYS_FCHMODAT2: libc::c_long = 452;
    // Safety: the path is an empty NUL-terminated string.
    let ret = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            mode & 0o7777,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(ret) {
        Err(Errno(libc::ENOSYS)) => {
            let path = proc_fd_path(fd);
            // Safety: `path` is NUL-terminated and outlives the call.
            check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) } as libc::c_long).map(drop)
        }
        other => other.map(drop),
    }
}

/// Changes owner and group (`u32::MAX`: unchanged) of the file itself.
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    // Safety: the path is an empty NUL-terminated string.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    } as libc::c_long)
    .map(drop)
}

/// Sets access and modification times (`UTIME_NOW`/`UTIME_OMIT` allowed
/// in `tv_nsec`) of the file `fd` refers to (a symlink itself, not its
/// target).
pub fn utimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    // AT_EMPTY_PATH (Linux 5.8) acts on an O_PATH descriptor, where futimens
    // would refuse it. Not /proc/self/fd/N with AT_SYMLINK_NOFOLLOW: that
    // silently sets the times of the procfs link.
    // Safety: the path is an empty NUL-terminated string and `times` points
    // to two timespecs; both outlive the call.
    check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    } as libc::c_long)
    .map(drop)
}

fn readlinkat_raw(dir: RawFd, path: &CStr) -> SysResult<Vec<u8>> {
    // PATH_MAX plus one to detect truncation; targets longer than that
    // cannot be created through Linux's symlink(2).
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // Safety: `path` is NUL-terminated; `buf` is writable for its length.
    let n =
        check(
            unsafe { libc::readlinkat(dir, path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
                as libc::c_long,
        )? as usize;
    if n >= buf.len() {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

/// The target of the symlink `fd` refers to (`EINVAL` if not a symlink).
pub fn readlink(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    readlinkat_raw(fd.as_raw_fd(), EMPTY)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // Safety: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode & 0o7777) } as libc::c_long)
        .map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> SysResult<()> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // Safety: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } as libc::c_long)
        .map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // Safety: both strings are NUL-terminated and outlive the call.
    check(
        unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } as libc::c_long,
    )
    .map(drop)
}

pub fn renameat2(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: u32,
) -> SysResult<()> {
    // Safety: both names are NUL-terminated and outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// A new link named `name` in `dir` to the file `fd` refers to.
pub fn linkat(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc/self/fd jump works
    // without it and links the file itself (a symlink stays a symlink).
    // Safety: both paths are NUL-terminated and outlive the calls.
    let ret = unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    match check(ret as libc::c_long) {
        Err(Errno(libc::ENOENT)) | Err(Errno(libc::EPERM)) => {
            let path = proc_fd_path(fd);
            // Safety: as above.
            check(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            } as libc::c_long)
            .map(drop)
        }
        other => other.map(drop),
    }
}

/// Positions a directory stream at a `d_off` cookie.
pub fn seek_dir(fd: BorrowedFd<'_>, cookie: u64) -> SysResult<()> {
    let at = i64::try_from(cookie).map_err(|_| Errno(libc::EINVAL))?;
    // Safety: plain call on a borrowed descriptor.
    check(unsafe { libc::lseek64(fd.as_raw_fd(), at, libc::SEEK_SET) } as libc::c_long).map(drop)
}

/// One `getdents64(2)` into `buf`; returns the bytes filled (0 at the end).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // Safety: `buf` is writable for its length.
    check(unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    })
    .map(|n| n as usize)
}
