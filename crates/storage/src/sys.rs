//! Thin, safe wrappers over the Linux calls the file service makes.
//!
//! Every wrapper takes descriptors it borrows and C strings the caller has
//! already checked (no NUL inside), and returns the raw errno on failure:
//! the service hands errnos to the client unchanged, so nothing here
//! translates them.
//!
//! The calls go through `rustix` wherever it offers them. Three stay raw
//! syscalls, because `rustix` has no safe form of them:
//! `name_to_handle_at` and `open_by_handle_at` (not wrapped at all) and
//! `fchmodat2` (its `chmodat` refuses `AT_EMPTY_PATH` without asking the
//! kernel).

use lego_proto::{DirEntry, FileAttr, FileType, FsStat, Timespec};
use rustix::fs::{
    AtFlags, Gid, Mode, OFlags, RawDir, RenameFlags, ResolveFlags, SeekFrom, StatxFlags,
    StatxTimestamp, Timestamps, Uid, CWD,
};
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub use lego_proto::Errno;

pub type SysResult<T> = Result<T, Errno>;

/// The errno a `rustix` call failed with, unchanged.
fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

/// Turns a raw syscall's `-1`-on-error return value into a result.
fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Owns the descriptor a successful raw open returned.
fn owned(ret: libc::c_long) -> SysResult<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // Safety: the kernel just returned `fd` as a new descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const EMPTY: &CStr = c"";

/// Open flags as `rustix` takes them, always close-on-exec.
fn open_flags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
}

/// `openat2(2)`: `path` from `dir` under the `resolve` rules.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> SysResult<OwnedFd> {
    // The kernel refuses a mode without O_CREAT/O_TMPFILE.
    let mode = if flags & libc::O_CREAT != 0 {
        mode & 0o7777
    } else {
        0
    };
    rustix::fs::openat2(
        dir,
        path,
        open_flags(flags),
        Mode::from_bits_retain(mode),
        ResolveFlags::from_bits_retain(resolve),
    )
    .map_err(errno)
}

/// `openat(2)` of one name in `dir`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        open_flags(flags),
        Mode::from_bits_retain(mode & 0o7777),
    )
    .map_err(errno)
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
    // rustix has no name_to_handle_at: raw syscall.
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
    // rustix has no open_by_handle_at: raw syscall.
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

fn timespec(t: StatxTimestamp) -> Timespec {
    Timespec {
        sec: t.tv_sec,
        nsec: t.tv_nsec,
    }
}

/// Attributes and mount id of the file `fd` refers to (a symlink itself, not
/// its target).
pub fn statx(fd: BorrowedFd<'_>) -> SysResult<(FileAttr, u64)> {
    let stx = rustix::fs::statx(
        fd,
        EMPTY,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )
    .map_err(errno)?;
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
        dev: rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        rdev: rustix::fs::makedev(stx.stx_rdev_major, stx.stx_rdev_minor),
    };
    Ok((attr, stx.stx_mnt_id))
}

/// `ST_VALID` in `statfs`'s `f_flags`: set by every kernel since 2.6.36.
const ST_VALID: u64 = 0x20;

/// `fstatfs(2)` (works on `O_PATH` descriptors).
pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<FsStat> {
    let st = rustix::fs::fstatfs(fd).map_err(errno)?;
    // rustix keeps statfs's f_fsid private; its statvfs carries the same
    // two words, joined as below.
    let vfs = rustix::fs::fstatvfs(fd).map_err(errno)?;
    Ok(FsStat {
        fs_type: st.f_type as u64,
        bsize: st.f_bsize as u64,
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        fsid: vfs.f_fsid,
        namelen: st.f_namelen as u64,
        frsize: st.f_frsize as u64,
        // The mount flags as glibc's statvfs reports them: without ST_VALID.
        flags: st.f_flags as u64 & !ST_VALID,
    })
}

/// `pread(2)` until `buf` is full or the file ends; returns the bytes read.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .filter(|&at| i64::try_from(at).is_ok())
            .ok_or(Errno(libc::EINVAL))?;
        match rustix::io::pread(fd, &mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            // Bytes already read are the answer, as for read(2).
            Err(e) => return if done > 0 { Ok(done) } else { Err(errno(e)) },
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
        let written = if append {
            rustix::io::write(fd, rest)
        } else {
            let at = offset
                .checked_add(done as u64)
                .filter(|&at| i64::try_from(at).is_ok())
                .ok_or(Errno(libc::EFBIG))?;
            rustix::io::pwrite(fd, rest, at)
        };
        let e = match written {
            Ok(0) => Errno(libc::EIO),
            Ok(n) => {
                done += n;
                continue;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => errno(e),
        };
        return if done > 0 { Ok(done) } else { Err(e) };
    }
    Ok(done)
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    if data_only {
        rustix::fs::fdatasync(fd).map_err(errno)
    } else {
        rustix::fs::fsync(fd).map_err(errno)
    }
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    if i64::try_from(size).is_err() {
        return Err(Errno(libc::EFBIG));
    }
    rustix::fs::ftruncate(fd, size).map_err(errno)
}

/// This process's `/proc/self/fd`, opened while it has its own rights
/// (`open_proc_fd_dir`): reached by path, `/proc` is walked from `/` with
/// the ids a thread acts with, which may not search it (this host's `/`
/// is 0705), while the directory itself is always open to its process.
static PROC_FD_DIR: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Opens this process's `/proc/self/fd` for `proc_fd`; call at start,
/// before any thread acts for a caller.
pub fn open_proc_fd_dir() -> SysResult<()> {
    if PROC_FD_DIR.get().is_none() {
        let dir = rustix::fs::open(
            "/proc/self/fd",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let _ = PROC_FD_DIR.set(dir);
    }
    Ok(())
}

/// The `/proc/self/fd` directory and the name of a descriptor in it, for
/// calls that take no `AT_EMPTY_PATH`. Following it is a jump to the file
/// itself, whatever its name is now.
pub fn proc_fd(fd: BorrowedFd<'_>) -> (BorrowedFd<'static>, CString) {
    let name = CString::new(fd.as_raw_fd().to_string()).expect("digits have no NUL");
    match PROC_FD_DIR.get() {
        Some(dir) => (dir.as_fd(), name),
        // Not opened (a caller that skipped `open_proc_fd_dir`): by path.
        None => (
            CWD,
            CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL"),
        ),
    }
}

/// The file's current path in the server's namespace (`/proc/self/fd`).
pub fn fd_path(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let (dir, name) = proc_fd(fd);
    readlinkat_raw(dir, &name)
}

/// Changes permission bits of the file itself (`EOPNOTSUPP` for symlinks,
/// as `lchmod`).
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // fchmodat2 (Linux 6.6) takes AT_EMPTY_PATH on O_PATH descriptors.
    // rustix has no fchmodat2 (its chmodat refuses these flags): raw syscall.
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
            let (dir, name) = proc_fd(fd);
            rustix::fs::chmodat(
                dir,
                &*name,
                Mode::from_bits_retain(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(errno)
        }
        other => other.map(drop),
    }
}

/// Changes owner and group (`u32::MAX`: unchanged) of the file itself.
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    // rustix passes `None` to the kernel as -1, which is `u32::MAX`.
    let owner = (uid != u32::MAX).then(|| Uid::from_raw(uid));
    let group = (gid != u32::MAX).then(|| Gid::from_raw(gid));
    rustix::fs::chownat(
        fd,
        EMPTY,
        owner,
        group,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno)
}

/// Sets access and modification times (`UTIME_NOW`/`UTIME_OMIT` allowed
/// in `tv_nsec`) of the file `fd` refers to (a symlink itself, not its
/// target).
pub fn utimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    let time = |t: &libc::timespec| rustix::fs::Timespec {
        tv_sec: t.tv_sec,
        tv_nsec: t.tv_nsec,
    };
    let times = Timestamps {
        last_access: time(&times[0]),
        last_modification: time(&times[1]),
    };
    // AT_EMPTY_PATH (Linux 5.8) acts on an O_PATH descriptor, where futimens
    // would refuse it. Not /proc/self/fd/N with AT_SYMLINK_NOFOLLOW: that
    // silently sets the times of the procfs link.
    rustix::fs::utimensat(fd, EMPTY, &times, AtFlags::EMPTY_PATH).map_err(errno)
}

fn readlinkat_raw(dir: BorrowedFd<'_>, path: &CStr) -> SysResult<Vec<u8>> {
    // PATH_MAX plus one to detect truncation; targets longer than that
    // cannot be created through Linux's symlink(2).
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = rustix::fs::readlinkat_raw(dir, path, &mut buf[..]).map_err(errno)?;
    if n >= buf.len() {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

/// The target of the symlink `fd` refers to (`EINVAL` if not a symlink).
pub fn readlink(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    readlinkat_raw(fd, EMPTY)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_bits_retain(mode & 0o7777)).map_err(errno)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> SysResult<()> {
    let flags = if remove_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(dir, name, flags).map_err(errno)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(errno)
}

pub fn renameat2(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: u32,
) -> SysResult<()> {
    rustix::fs::renameat_with(
        from_dir,
        from,
        to_dir,
        to,
        RenameFlags::from_bits_retain(flags),
    )
    .map_err(errno)
}

/// A new link named `name` in `dir` to the file `fd` refers to.
pub fn linkat(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc/self/fd jump works
    // without it and links the file itself (a symlink stays a symlink).
    match rustix::fs::linkat(fd, EMPTY, dir, name, AtFlags::EMPTY_PATH) {
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
            let (fds, entry) = proc_fd(fd);
            rustix::fs::linkat(fds, &*entry, dir, name, AtFlags::SYMLINK_FOLLOW).map_err(errno)
        }
        other => other.map_err(errno),
    }
}

/// Positions a directory stream at a `d_off` cookie.
pub fn seek_dir(fd: BorrowedFd<'_>, cookie: u64) -> SysResult<()> {
    if i64::try_from(cookie).is_err() {
        return Err(Errno(libc::EINVAL));
    }
    rustix::fs::seek(fd, SeekFrom::Start(cookie))
        .map(drop)
        .map_err(errno)
}

/// The entries of a directory stream, read with `getdents64(2)` from where
/// [`seek_dir`] put it.
pub struct DirStream<'buf, 'fd> {
    raw: RawDir<'buf, BorrowedFd<'fd>>,
}

impl<'buf, 'fd> DirStream<'buf, 'fd> {
    /// `buf` is the room each `getdents64` fills.
    pub fn new(fd: BorrowedFd<'fd>, buf: &'buf mut [MaybeUninit<u8>]) -> Self {
        DirStream {
            raw: RawDir::new(fd, buf),
        }
    }

    /// The next entry, or `None` at the end of the directory. Its cookie is
    /// the kernel's `d_off`: [`seek_dir`] to it resumes after this entry.
    pub fn next_entry(&mut self) -> Option<SysResult<DirEntry>> {
        let entry = match self.raw.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(errno(e))),
        };
        Some(Ok(DirEntry {
            name: entry.file_name().to_bytes().to_vec(),
            ino: entry.ino(),
            file_type: file_type(entry.file_type()),
            cookie: entry.next_entry_cookie(),
        }))
    }
}

fn file_type(t: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as Raw;
    match t {
        Raw::Fifo => FileType::Fifo,
        Raw::CharacterDevice => FileType::CharDevice,
        Raw::Directory => FileType::Directory,
        Raw::BlockDevice => FileType::BlockDevice,
        Raw::RegularFile => FileType::Regular,
        Raw::Symlink => FileType::Symlink,
        Raw::Socket => FileType::Socket,
        Raw::Unknown => FileType::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("lego-sys-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn all_entries(fd: BorrowedFd<'_>) -> Vec<DirEntry> {
        let mut buf = Vec::with_capacity(4096);
        let mut stream = DirStream::new(fd, buf.spare_capacity_mut());
        std::iter::from_fn(|| stream.next_entry())
            .collect::<SysResult<_>>()
            .unwrap()
    }

    #[test]
    fn directory_cookies_resume_after_their_entry() {
        let scratch = Scratch::new("cookies");
        for i in 0..200 {
            std::fs::write(scratch.0.join(format!("file-{i:03}")), b"").unwrap();
        }
        std::fs::create_dir(scratch.0.join("sub")).unwrap();
        let dir = std::fs::File::open(&scratch.0).unwrap();
        let entries = all_entries(dir.as_fd());
        assert_eq!(entries.len(), 203, "200 files, sub, . and ..");
        let sub = entries.iter().find(|e| e.name == b"sub").unwrap();
        assert_eq!(sub.file_type, FileType::Directory);
        let file = entries.iter().find(|e| e.name == b"file-007").unwrap();
        assert_eq!(file.file_type, FileType::Regular);

        let middle = entries.len() / 2;
        seek_dir(dir.as_fd(), entries[middle].cookie).unwrap();
        assert_eq!(all_entries(dir.as_fd()), entries[middle + 1..]);
        seek_dir(dir.as_fd(), 0).unwrap();
        assert_eq!(all_entries(dir.as_fd()), entries);
    }

    #[test]
    fn errnos_reach_the_caller_unchanged() {
        let scratch = Scratch::new("errnos");
        let dir = std::fs::File::open(&scratch.0).unwrap();
        let missing = openat(dir.as_fd(), c"missing", libc::O_RDONLY, 0).err();
        assert_eq!(missing, Some(Errno(libc::ENOENT)));
        let escape = openat2(dir.as_fd(), c"../x", libc::O_PATH, 0, libc::RESOLVE_BENEATH).err();
        assert_eq!(escape, Some(Errno(libc::EXDEV)));
        assert_eq!(seek_dir(dir.as_fd(), u64::MAX), Err(Errno(libc::EINVAL)));
        // readlinkat(fd, "") of a directory.
        assert_eq!(readlink(dir.as_fd()), Err(Errno(libc::ENOENT)));
    }
}
