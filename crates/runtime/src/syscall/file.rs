//! The file family, served from the storage manager when the runtime has
//! one (see `vfs`), passed through to the host otherwise and for host
//! objects (pipes, sockets, terminals, `/dev`, `/proc`, `/sys`).
//!
//! Every handler starts the same way: find out whether its descriptor or
//! path is a storage file; if not, make the host call (with a normalised
//! path where one was given relative to a storage directory).
//!
//! A storage failure is the application's errno; a lost storage manager
//! is a fault of the runtime (`SysError::Fatal`, from `StorageError`).

use super::contract::{ok, returned, Call, Ctx, Errno, Outcome, SysError, SysResult};
use crate::host::raw_syscall;
use crate::host::user;
use crate::process::Runtime;
use crate::vfs::path::{is_host, normalize, split_last};
use crate::vfs::storage::StorageError;
use crate::vfs::{FileTable, OpenFile, Vfs};
use lego_proto::{
    dirent64_len, FileAttr, FileHandle, FileType, SetAttr, StorageReply, StorageRequest,
    MAX_READ_LEN, MAX_WRITE_LEN,
};
use std::ffi::CString;
use std::sync::Arc;

/// Where a path leads.
pub(super) enum Place {
    /// The host's: make the call with this absolute path (or, for a path
    /// relative to a host directory descriptor, the original arguments).
    Host(Option<CString>),
    /// The storage manager's: walk `path` from `dir`; `abs` is the
    /// lexically normalised absolute path.
    Storage {
        dir: FileHandle,
        path: Vec<u8>,
        abs: Vec<u8>,
    },
}

pub(super) fn cstring(bytes: Vec<u8>) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// Classifies `path` relative to `dirfd` (AT_FDCWD for the working
/// directory).
pub(super) fn place(files: &FileTable, vfs: &Vfs, dirfd: u64, path: &[u8]) -> Result<Place, Errno> {
    let base = if path.starts_with(b"/") {
        None
    } else if dirfd as i32 == libc::AT_FDCWD {
        let cwd = vfs.cwd();
        Some((cwd.path.clone(), cwd.handle.clone()))
    } else if let Some(file) = files.get(dirfd) {
        if file.file_type != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if file.handle.0.is_empty() {
            // A directory the runtime serves (/proc/self/fd): a host path.
            return Ok(Place::Host(Some(cstring(normalize(&file.path, path))?)));
        }
        Some((file.path.clone(), Some(file.handle.clone())))
    } else {
        // Relative to a host directory descriptor: the host's business.
        return Ok(Place::Host(None));
    };
    let abs = normalize(base.as_ref().map_or(b"/".as_slice(), |b| &b.0), path);
    if is_host(&abs) {
        return Ok(Place::Host(Some(cstring(abs)?)));
    }
    // Walk from the base directory when the path stays below it (no `..`),
    // so a directory renamed meanwhile is still followed; else from the
    // root by the normalised path.
    match base {
        Some((_, Some(dir))) if !path.split(|&b| b == b'/').any(|p| p == b"..") => {
            Ok(Place::Storage {
                dir,
                path: path.to_vec(),
                abs,
            })
        }
        _ => Ok(Place::Storage {
            dir: vfs.root.clone(),
            path: abs.clone(),
            abs,
        }),
    }
}

pub(super) fn read_path(ptr: u64) -> Result<Vec<u8>, Errno> {
    user::read_cstring(ptr, libc::PATH_MAX as usize)
}

/// Makes a host call with `path` (an absolute path of ours) in argument
/// `index`, or the original call when `path` is `None`.
pub(super) fn host_call(cx: &mut Ctx, c: &Call, index: usize, path: Option<CString>) -> SysResult {
    match path {
        // Safety: the application's own call, unchanged, on host objects.
        None => unsafe { cx.host(c.nr, c.args) },
        Some(path) => {
            let mut args = c.args;
            args[index] = path.as_ptr() as u64;
            // A relative-to-dirfd call now has an absolute path: the dirfd
            // is ignored by the kernel.
            // Safety: `path` outlives the call; the rest are the
            // application's arguments. (Opening a FIFO may block: it runs
            // with the application's signal mask like any blocking call.)
            unsafe { cx.host(c.nr, args) }
        }
    }
}

pub(super) fn lookup(
    vfs: &Vfs,
    dir: FileHandle,
    path: Vec<u8>,
    follow: bool,
) -> Result<(FileHandle, FileAttr), SysError> {
    Ok(vfs
        .storage
        .found(StorageRequest::Lookup { dir, path, follow })?)
}

/// The parent directory and the new name a creating call acts on.
pub(super) fn parent_and_name(
    vfs: &Vfs,
    dir: FileHandle,
    path: &[u8],
) -> Result<(FileHandle, Vec<u8>), SysError> {
    let (parent, name) = split_last(path).ok_or(Errno::EEXIST)?;
    let (parent_handle, attr) = lookup(vfs, dir, parent.to_vec(), true)?;
    if attr.file_type != FileType::Directory {
        return Err(Errno::ENOTDIR.into());
    }
    Ok((parent_handle, name.to_vec()))
}

pub(super) fn umask() -> u32 {
    // Safety: umask only swaps the process's mask; we put it back at once.
    unsafe {
        let mask = libc::umask(0o022);
        libc::umask(mask);
        mask
    }
}

// ---------------------------------------------------------------- open

pub fn open(cx: &mut Ctx, c: &Call) -> SysResult {
    open_common(
        cx,
        c,
        libc::AT_FDCWD as u64,
        c.args[0],
        c.args[1] as u32,
        c.args[2] as u32,
        0,
    )
}

pub fn creat(cx: &mut Ctx, c: &Call) -> SysResult {
    let flags = (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u32;
    open_common(
        cx,
        c,
        libc::AT_FDCWD as u64,
        c.args[0],
        flags,
        c.args[1] as u32,
        0,
    )
}

pub fn openat(cx: &mut Ctx, c: &Call) -> SysResult {
    open_common(
        cx,
        c,
        c.args[0],
        c.args[1],
        c.args[2] as u32,
        c.args[3] as u32,
        1,
    )
}

pub fn openat2(cx: &mut Ctx, c: &Call) -> SysResult {
    let Some(_) = &cx.rt.vfs else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let mut how = [0u8; 24];
    if c.args[3] < 24 {
        return Err(Errno::EINVAL.into());
    }
    user::read(c.args[2], &mut how)?;
    let flags = u64::from_ne_bytes(how[0..8].try_into().expect("8 bytes"));
    let mode = u64::from_ne_bytes(how[8..16].try_into().expect("8 bytes"));
    let resolve = u64::from_ne_bytes(how[16..24].try_into().expect("8 bytes"));
    if resolve != 0 {
        // RESOLVE_* restrictions are not offered yet; callers fall back.
        return Err(Errno::ENOSYS.into());
    }
    let as_openat = Call {
        nr: libc::SYS_openat as u64,
        args: [c.args[0], c.args[1], flags, mode, 0, 0],
    };
    open_common(
        cx,
        &as_openat,
        c.args[0],
        c.args[1],
        flags as u32,
        mode as u32,
        1,
    )
}

fn open_common(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_ptr: u64,
    flags: u32,
    mode: u32,
    path_arg: usize,
) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        // The processor's own files, passed through; the /proc files that
        // describe the program are served all the same.
        let path = read_path(path_ptr)?;
        if let Some(abs) = host_absolute(rt, dirfd, &path) {
            if let Some(fd) = open_served(rt, &abs, flags)? {
                return ok(fd);
            }
        }
        let abs = served_relative(rt, dirfd, &path);
        return host_call(cx, c, path_arg, abs);
    };
    let path = read_path(path_ptr)?;
    if path.is_empty() {
        return Err(Errno::ENOENT.into());
    }
    match place(&rt.files, vfs, dirfd, &path)? {
        Place::Host(Some(abs)) => {
            if let Some(fd) = open_served(rt, abs.as_bytes(), flags)? {
                return ok(fd);
            }
            if let Some(file) = magic_link(rt, abs.as_bytes()) {
                return ok(reopen(rt, vfs, &file, flags)?);
            }
            host_call(cx, c, path_arg, Some(abs))
        }
        // Safety: the application's own call, unchanged, on host objects.
        Place::Host(None) => unsafe { cx.host(c.nr, c.args) },
        Place::Storage { dir, path, abs } => {
            ok(open_storage(&rt.files, vfs, dir, &path, abs, flags, mode)?)
        }
    }
}

/// The storage file an open descriptor names when `abs` is its
/// `/proc/self/fd/N` (or `/proc/<pid>/fd/N`, `/proc/thread-self/fd/N`):
/// the kernel's "magic link" to the open file, which the runtime follows
/// itself (the host would reach the placeholder).
pub(super) fn magic_link(rt: &Runtime, abs: &[u8]) -> Option<Arc<OpenFile>> {
    let rest = abs.strip_prefix(b"/proc/")?;
    let own = std::process::id().to_string();
    let n = rest
        .strip_prefix(b"self/fd/")
        .or_else(|| rest.strip_prefix(b"thread-self/fd/"))
        .or_else(|| rest.strip_prefix(format!("{own}/fd/").as_bytes()))?;
    let fd: u64 = std::str::from_utf8(n).ok()?.parse().ok()?;
    rt.files.get(fd).filter(|f| !f.handle.0.is_empty())
}

/// Opens the file behind an open descriptor again, as the kernel opens a
/// magic link: a new open file of the same file, with its own offset.
fn reopen(rt: &Runtime, vfs: &Vfs, file: &OpenFile, flags: u32) -> Result<i32, SysError> {
    let attr = getattr(rt, file)?;
    let accmode = flags & libc::O_ACCMODE as u32;
    let writing = accmode == libc::O_WRONLY as u32 || accmode == libc::O_RDWR as u32;
    if flags & libc::O_TRUNC as u32 != 0 && writing && attr.file_type == FileType::Regular {
        vfs.storage.attr(StorageRequest::Setattr {
            handle: file.handle.clone(),
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        })?;
    }
    Ok(rt
        .files
        .open_handle(file.handle.clone(), &attr, file.path.clone(), flags, None)?)
}

/// Opens `abs` if it is a /proc file or directory the runtime serves (one
/// that must describe the program, not the runtime's host process).
fn open_served(rt: &Runtime, abs: &[u8], flags: u32) -> Result<Option<i32>, Errno> {
    if crate::process::procfs::refused(abs) {
        return Err(Errno::EACCES);
    }
    if let Some(content) = crate::process::procfs::serve(rt, abs) {
        return rt
            .files
            .open_content(abs.to_vec(), content, flags)
            .map(Some);
    }
    if let Some(entries) = crate::process::procfs::listing(rt, abs) {
        return rt
            .files
            .open_listing(abs.to_vec(), entries, flags)
            .map(Some);
    }
    Ok(None)
}

/// `path` relative to `dirfd` when that is a directory the runtime serves
/// (`/proc/self/fd`), made absolute: its placeholder descriptor is no
/// directory, so the host cannot walk from it.
pub(super) fn served_relative(rt: &Runtime, dirfd: u64, path: &[u8]) -> Option<CString> {
    if path.is_empty() || path.starts_with(b"/") || dirfd as i32 == libc::AT_FDCWD {
        return None;
    }
    let file = rt.files.get(dirfd)?;
    file.listing.as_ref()?;
    cstring(normalize(&file.path, path)).ok()
}

/// With the processor's own files: `path` (relative to `dirfd`) as an
/// absolute, lexically normalised path, where it can be told (relative to
/// the working directory or to a directory the runtime serves).
fn host_absolute(rt: &Runtime, dirfd: u64, path: &[u8]) -> Option<Vec<u8>> {
    if path.is_empty() {
        return None;
    }
    if path.starts_with(b"/") {
        return Some(normalize(b"/", path));
    }
    let base = if dirfd as i32 == libc::AT_FDCWD {
        std::env::current_dir()
            .ok()?
            .into_os_string()
            .into_encoded_bytes()
    } else {
        rt.files.get(dirfd)?.path.clone()
    };
    Some(normalize(&base, path))
}

fn open_storage(
    files: &FileTable,
    vfs: &Vfs,
    dir: FileHandle,
    path: &[u8],
    abs: Vec<u8>,
    flags: u32,
    mode: u32,
) -> Result<i32, SysError> {
    if flags & libc::O_TMPFILE as u32 == libc::O_TMPFILE as u32 {
        return Err(Errno::EOPNOTSUPP.into());
    }
    let follow = flags & libc::O_NOFOLLOW as u32 == 0;
    let accmode = flags & libc::O_ACCMODE as u32;
    let writing = accmode == libc::O_WRONLY as u32 || accmode == libc::O_RDWR as u32;
    let truncate = flags & libc::O_TRUNC as u32 != 0 && writing;
    let existing = |follow: bool| -> Result<(FileHandle, FileAttr), SysError> {
        let (handle, attr) = lookup(vfs, dir.clone(), path.to_vec(), follow)?;
        if attr.file_type == FileType::Symlink && flags & libc::O_PATH as u32 == 0 {
            return Err(Errno::ELOOP.into());
        }
        // A regular file's open is the storage manager's, with the
        // kernel's whole check (ACLs included), below; writing a directory
        // is EISDIR, below.
        if !(attr.file_type == FileType::Regular
            || writing && attr.file_type == FileType::Directory)
        {
            may_open(vfs, &attr, flags)?;
        }
        Ok((handle, attr))
    };
    let (handle, attr) = if flags & libc::O_CREAT as u32 != 0 {
        let (parent, name) = parent_and_name(vfs, dir.clone(), path)?;
        // Exclusive, so a file that was there is opened as any existing
        // one (its permissions checked); a new one is the caller's.
        let created = vfs.storage.found(StorageRequest::Create {
            dir: parent,
            name,
            mode: mode & 0o7777 & !umask(),
            exclusive: true,
            truncate: false,
        });
        match created {
            Ok(found) => found,
            // Already there (a symlink in the way included: open what it
            // points to; creating through a dangling link is not offered
            // yet).
            Err(StorageError::Errno(Errno::EEXIST)) if flags & libc::O_EXCL as u32 == 0 => {
                existing(follow)?
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        existing(follow)?
    };
    if flags & libc::O_DIRECTORY as u32 != 0 && attr.file_type != FileType::Directory {
        return Err(Errno::ENOTDIR.into());
    }
    if writing && attr.file_type == FileType::Directory {
        return Err(Errno::EISDIR.into());
    }
    if !matches!(
        attr.file_type,
        FileType::Regular | FileType::Directory | FileType::Symlink
    ) {
        // Devices, FIFOs and sockets inside the export are the storage
        // host's; they cannot be opened from here.
        return Err(Errno::ENXIO.into());
    }
    // A regular file is opened by the storage manager too, with the
    // kernel's check of the process's credentials; its voucher is the
    // open file's from then on (a descriptor keeps the access it was
    // opened with, whatever its process's credentials become).
    let opened = if attr.file_type == FileType::Regular && flags & libc::O_PATH as u32 == 0 {
        let reading = accmode != libc::O_WRONLY as u32;
        Some(vfs.storage.open(&handle, reading, writing)?)
    } else {
        None
    };
    if truncate && attr.file_type == FileType::Regular && attr.size > 0 {
        vfs.storage.attr_as(
            StorageRequest::Setattr {
                handle: handle.clone(),
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            opened.as_ref(),
        )?;
    }
    Ok(files.open_handle(handle, &attr, abs, flags, opened)?)
}

/// Whether the process may open an existing directory as `flags` asks,
/// by its mode bits and the filesystem ids of its voucher, which are the
/// kernel's (renewed after every id change); the storage manager checks
/// again on every request.
fn may_open(vfs: &Vfs, attr: &FileAttr, flags: u32) -> Result<(), SysError> {
    if flags & libc::O_PATH as u32 != 0 {
        return Ok(());
    }
    let mask = match flags & libc::O_ACCMODE as u32 {
        m if m == libc::O_RDONLY as u32 => lego_proto::ACCESS_READ,
        m if m == libc::O_WRONLY as u32 => lego_proto::ACCESS_WRITE,
        _ => lego_proto::ACCESS_READ | lego_proto::ACCESS_WRITE,
    };
    if lego_proto::permitted(attr, mask, &vfs.storage.voucher().fs_credentials()) {
        Ok(())
    } else {
        Err(Errno::EACCES.into())
    }
}

// ---------------------------------------------------------------- descriptors

pub fn close(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    if rt.is_runtime_fd(c.args[0]) {
        return Err(Errno::EBADF.into());
    }
    // Safety: the application's own call, unchanged, on host objects.
    let r = unsafe { cx.host(c.nr, c.args) };
    if r == Ok(Outcome::Return(0)) {
        rt.files.remove(c.args[0] as i32);
    }
    r
}

/// After a host dup of `old` to the descriptor `r` returned: it names the
/// same open file.
fn after_dup(rt: &Runtime, old: u64, r: SysResult) -> SysResult {
    if let Ok(Outcome::Return(new)) = &r {
        let new = *new;
        if new >= 0 {
            rt.files.remove(new as i32);
            if let Some(file) = rt.files.get(old) {
                rt.files.insert(new as i32, file);
            }
        }
    }
    r
}

pub fn dup(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    if rt.is_runtime_fd(c.args[0]) {
        return Err(Errno::EBADF.into());
    }
    // Safety: the application's own call, unchanged, on host objects.
    let new = unsafe { cx.host(c.nr, c.args) };
    after_dup(rt, c.args[0], new)
}

pub fn dup2(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    if rt.is_runtime_fd(c.args[0]) || rt.is_runtime_fd(c.args[1]) {
        return Err(Errno::EBADF.into());
    }
    // Safety: the application's own call, unchanged, on host objects.
    let new = unsafe { cx.host(c.nr, c.args) };
    if c.args[0] == c.args[1] {
        return new;
    }
    after_dup(rt, c.args[0], new)
}

pub fn dup3(cx: &mut Ctx, c: &Call) -> SysResult {
    dup2(cx, c)
}

pub fn close_range(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let r = close_range_host(cx, c);
    const CLOSE_RANGE_CLOEXEC: u64 = 4;
    if r == Ok(Outcome::Return(0)) && (c.args[2] as u32 as u64) & CLOSE_RANGE_CLOEXEC == 0 {
        for fd in rt.files.fds() {
            let fd64 = fd as u64;
            let (first, last) = (c.args[0] as u32 as u64, c.args[1] as u32 as u64);
            if fd64 >= first && fd64 <= last && !rt.is_runtime_fd(fd64) {
                rt.files.remove(fd);
            }
        }
    }
    r
}

pub fn fcntl(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let [fd, cmd, arg, ..] = c.args;
    if rt.is_runtime_fd(fd) {
        return Err(Errno::EBADF.into());
    }
    let file = rt.files.get(fd);
    let Some(file) = file else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    match cmd as i32 {
        libc::F_GETFL => ok((file.status() | libc::O_LARGEFILE as u32) as i64),
        libc::F_SETFL => {
            let settable = (libc::O_APPEND
                | libc::O_NONBLOCK
                | libc::O_ASYNC
                | libc::O_DIRECT
                | libc::O_NOATIME) as u32;
            let old = file.status();
            file.status.store(
                (old & !settable) | (arg as u32 & settable),
                std::sync::atomic::Ordering::Relaxed,
            );
            ok(0)
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            // Safety: the application's own call, unchanged: the host
            // duplicates the placeholder descriptor.
            let new = unsafe { cx.host(c.nr, c.args) };
            after_dup(rt, fd, new)
        }
        libc::F_GETLK | libc::F_OFD_GETLK => {
            // One process holds every lock it asks for: nothing conflicts.
            let mut lock = [0u8; 32];
            user::read(arg, &mut lock)?;
            lock[0..2].copy_from_slice(&(libc::F_UNLCK as i16).to_ne_bytes());
            user::write(arg, &lock)?;
            ok(0)
        }
        libc::F_SETLK | libc::F_SETLKW | libc::F_OFD_SETLK | libc::F_OFD_SETLKW => ok(0),
        // Safety: the application's own call, unchanged, on the
        // placeholder descriptor (descriptor flags and the like).
        _ => unsafe { cx.host(c.nr, c.args) },
    }
}

pub fn ioctl(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    if rt.is_runtime_fd(c.args[0]) {
        return Err(Errno::EBADF.into());
    }
    let Some(file) = rt.files.get(c.args[0]) else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    match c.args[1] {
        // Safety: the application's own call, unchanged: close-on-exec
        // rides on the placeholder descriptor's own flag.
        x if x == libc::FIOCLEX || x == libc::FIONCLEX => unsafe { cx.host(c.nr, c.args) },
        x if x == libc::FIONREAD => {
            let attr = getattr(rt, &file)?;
            let left = attr.size.saturating_sub(*file.offset.lock());
            let value = (left.min(i32::MAX as u64) as i32).to_ne_bytes();
            user::write(c.args[2], &value)?;
            ok(0)
        }
        _ => Err(Errno::ENOTTY.into()),
    }
}

// ---------------------------------------------------------------- data

/// The storage manager behind a file in the table that is not one the
/// runtime serves itself (such a file has a handle only with one).
fn storage_of(rt: &Runtime) -> Result<&Vfs, SysError> {
    rt.vfs.as_ref().ok_or(SysError::Errno(Errno::EINVAL))
}

pub(super) fn getattr(rt: &Runtime, file: &OpenFile) -> Result<FileAttr, SysError> {
    if file.listing.is_some() || file.content.is_some() {
        return Ok(served_attr(file));
    }
    let vfs = storage_of(rt)?;
    Ok(vfs.storage.attr_as(
        StorageRequest::Getattr {
            handle: file.handle.clone(),
        },
        file.opened.as_ref(),
    )?)
}

/// The attributes of a file the runtime serves itself: those of the
/// host's /proc file it stands for (its device, inode, owner, mode and
/// times, size 0 as /proc's), of the type it is served as; a made-up
/// read-only one with inode 1 if the host's cannot be read.
fn served_attr(file: &OpenFile) -> FileAttr {
    let file_type = if file.listing.is_some() {
        FileType::Directory
    } else {
        FileType::Regular
    };
    let host = file
        .path
        .strip_prefix(b"/proc/")
        .and_then(crate::host::stat_proc);
    let time = |sec: i64, nsec: i64| lego_proto::Timespec {
        sec,
        nsec: nsec as u32,
    };
    match host {
        Some(st) => FileAttr {
            file_type,
            mode: st.st_mode & 0o7777,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            size: 0,
            blocks: 0,
            blksize: st.st_blksize as u32,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            dev: st.st_dev,
            ino: st.st_ino,
            rdev: 0,
        },
        None => FileAttr {
            file_type,
            mode: if file_type == FileType::Directory {
                0o500
            } else {
                0o444
            },
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: Default::default(),
            mtime: Default::default(),
            ctime: Default::default(),
            dev: 0,
            ino: 1,
            rdev: 0,
        },
    }
}

/// Reads up to `len` bytes at `offset` into application memory at `buf`;
/// returns the count.
pub(super) fn read_at(
    rt: &Runtime,
    file: &OpenFile,
    buf: u64,
    len: u64,
    offset: u64,
) -> Result<i64, SysError> {
    if file.file_type == FileType::Directory {
        return Err(Errno::EISDIR.into());
    }
    if !file.readable() {
        return Err(Errno::EBADF.into());
    }
    if len == 0 {
        return Ok(0);
    }
    if let Some(content) = &file.content {
        let start = (offset as usize).min(content.len());
        let end = start + (len as usize).min(content.len() - start);
        user::write(buf, &content[start..end])?;
        return Ok((end - start) as i64);
    }
    let vfs = storage_of(rt)?;
    let (reply, data) = vfs.storage.call_as(
        StorageRequest::Read {
            handle: file.handle.clone(),
            offset,
            len: len.min(MAX_READ_LEN as u64) as u32,
        },
        &[],
        file.opened.as_ref(),
    )?;
    if !matches!(reply, StorageReply::Data { .. }) || data.len() as u64 > len {
        return Err(SysError::fatal(format!(
            "the storage manager answered a read with {}",
            reply.name()
        )));
    }
    user::write(buf, &data)?;
    Ok(data.len() as i64)
}

/// Writes `len` bytes from application memory at `buf` at `offset` (or at
/// the end with O_APPEND); returns the count and the file's new size.
fn write_at(
    rt: &Runtime,
    file: &OpenFile,
    buf: u64,
    len: u64,
    offset: u64,
    append: bool,
) -> Result<(i64, u64), SysError> {
    if !file.writable() {
        return Err(Errno::EBADF.into());
    }
    let len = len.min(MAX_WRITE_LEN as u64) as usize;
    let mut data = vec![0u8; len];
    user::read(buf, &mut data)?;
    let vfs = storage_of(rt)?;
    let stable = file.status() & libc::O_SYNC as u32 != 0;
    match vfs
        .storage
        .call_as(
            StorageRequest::Write {
                handle: file.handle.clone(),
                offset,
                append,
                stable,
            },
            &[&data],
            file.opened.as_ref(),
        )?
        .0
    {
        StorageReply::Written { count, attr } => Ok((count as i64, attr.size)),
        other => Err(SysError::fatal(format!(
            "the storage manager answered a write with {}",
            other.name()
        ))),
    }
}

/// Serves a call on descriptor argument 0: `f` on its storage file (the
/// value it gives is the call's), the host call on any other descriptor.
pub(super) fn with_file(
    cx: &mut Ctx,
    c: &Call,
    f: impl FnOnce(&Arc<OpenFile>) -> Result<i64, SysError>,
) -> SysResult {
    let rt = cx.rt;
    if rt.is_runtime_fd(c.args[0]) {
        // Not the application's: as if it were not open.
        return Err(Errno::EBADF.into());
    }
    match rt.files.get(c.args[0]) {
        Some(file) => f(&file).map(Outcome::Return),
        // Safety: the application's own call, unchanged, on host objects.
        None => unsafe { cx.host(c.nr, c.args) },
    }
}

fn lock_offset(file: &OpenFile) -> crate::vfs::offset::OffsetGuard<'_> {
    file.offset.lock()
}

pub fn read(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let mut offset = lock_offset(file);
        let n = read_at(rt, file, c.args[1], c.args[2], *offset)?;
        *offset += n as u64;
        Ok(n)
    })
}

pub fn pread64(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        if (c.args[3] as i64) < 0 {
            return Err(Errno::EINVAL.into());
        }
        read_at(rt, file, c.args[1], c.args[2], c.args[3])
    })
}

pub fn write(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let mut offset = lock_offset(file);
        let append = file.status() & libc::O_APPEND as u32 != 0;
        let (n, size) = write_at(rt, file, c.args[1], c.args[2], *offset, append)?;
        *offset = if append { size } else { *offset + n as u64 };
        Ok(n)
    })
}

pub fn pwrite64(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        if (c.args[3] as i64) < 0 {
            return Err(Errno::EINVAL.into());
        }
        let append = file.status() & libc::O_APPEND as u32 != 0;
        write_at(rt, file, c.args[1], c.args[2], c.args[3], append).map(|(n, _)| n)
    })
}

/// The (base, len) pairs of an iovec array.
fn iovecs(ptr: u64, count: u64) -> Result<Vec<(u64, u64)>, Errno> {
    if count > 1024 {
        return Err(Errno::EINVAL);
    }
    let mut raw = vec![0u8; count as usize * 16];
    user::read(ptr, &mut raw)?;
    Ok(raw
        .chunks_exact(16)
        .map(|v| {
            (
                u64::from_ne_bytes(v[0..8].try_into().expect("8 bytes")),
                u64::from_ne_bytes(v[8..16].try_into().expect("8 bytes")),
            )
        })
        .collect())
}

/// readv/preadv: fills each buffer in turn, stopping at a short read.
fn readv_at(
    rt: &Runtime,
    file: &OpenFile,
    iov: u64,
    count: u64,
    mut offset: u64,
) -> Result<i64, SysError> {
    let mut total = 0;
    for (base, len) in iovecs(iov, count)? {
        let n = read_at(rt, file, base, len, offset)?;
        total += n;
        offset += n as u64;
        if (n as u64) < len {
            break;
        }
    }
    Ok(total)
}

fn writev_at(
    rt: &Runtime,
    file: &OpenFile,
    iov: u64,
    count: u64,
    mut offset: u64,
) -> Result<(i64, u64), SysError> {
    let append = file.status() & libc::O_APPEND as u32 != 0;
    let mut total = 0;
    let mut size = offset;
    for (base, len) in iovecs(iov, count)? {
        if len == 0 {
            continue;
        }
        let (n, new_size) = write_at(rt, file, base, len, offset, append)?;
        total += n;
        size = new_size;
        offset = if append { new_size } else { offset + n as u64 };
        if (n as u64) < len {
            break;
        }
    }
    Ok((total, if append { size } else { offset }))
}

pub fn readv(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let mut offset = lock_offset(file);
        let n = readv_at(rt, file, c.args[1], c.args[2], *offset)?;
        *offset += n as u64;
        Ok(n)
    })
}

pub fn preadv(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        if c.args[3] as i64 == -1 {
            let mut offset = lock_offset(file);
            let n = readv_at(rt, file, c.args[1], c.args[2], *offset)?;
            *offset += n as u64;
            return Ok(n);
        }
        readv_at(rt, file, c.args[1], c.args[2], c.args[3])
    })
}

pub fn writev(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let mut offset = lock_offset(file);
        let (n, next) = writev_at(rt, file, c.args[1], c.args[2], *offset)?;
        *offset = next;
        Ok(n)
    })
}

pub fn pwritev(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        if c.args[3] as i64 == -1 {
            let mut offset = lock_offset(file);
            let (n, next) = writev_at(rt, file, c.args[1], c.args[2], *offset)?;
            *offset = next;
            return Ok(n);
        }
        writev_at(rt, file, c.args[1], c.args[2], c.args[3]).map(|(n, _)| n)
    })
}

pub fn lseek(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let mut offset = lock_offset(file);
        let delta = c.args[1] as i64;
        let new = match c.args[2] as i32 {
            libc::SEEK_SET => delta,
            libc::SEEK_CUR => *offset as i64 + delta,
            libc::SEEK_END => getattr(rt, file)?.size as i64 + delta,
            libc::SEEK_DATA | libc::SEEK_HOLE => {
                let size = getattr(rt, file)?.size as i64;
                if delta < 0 || delta >= size {
                    return Err(Errno::ENXIO.into());
                }
                if c.args[2] as i32 == libc::SEEK_DATA {
                    delta
                } else {
                    size
                }
            }
            _ => return Err(Errno::EINVAL.into()),
        };
        if new < 0 {
            return Err(Errno::EINVAL.into());
        }
        if file.file_type == FileType::Directory && new == 0 {
            *file.dir_cookie.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        }
        *offset = new as u64;
        Ok(new)
    })
}

pub fn getdents64(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        if file.file_type != FileType::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        let mut cookie = file.dir_cookie.lock().unwrap_or_else(|p| p.into_inner());
        let budget = c.args[2].min(u32::MAX as u64) as u32;
        if let Some(listing) = &file.listing {
            // A directory the runtime serves: the cookie is an index.
            let entries: Vec<lego_proto::DirEntry> = listing
                .iter()
                .enumerate()
                .skip(*cookie as usize)
                .map(|(i, (name, file_type))| lego_proto::DirEntry {
                    name: name.clone(),
                    ino: i as u64 + 1,
                    file_type: *file_type,
                    cookie: i as u64 + 1,
                })
                .collect();
            return Ok(write_dirents(c.args[1], budget, &entries, &mut cookie)?);
        }
        let vfs = storage_of(rt)?;
        let (reply, _) = vfs.storage.call(
            StorageRequest::Readdir {
                dir: file.handle.clone(),
                cookie: *cookie,
                max_bytes: budget,
            },
            &[],
        )?;
        let StorageReply::Entries { entries, .. } = reply else {
            return Err(SysError::fatal(format!(
                "the storage manager answered a readdir with {}",
                reply.name()
            )));
        };
        Ok(write_dirents(c.args[1], budget, &entries, &mut cookie)?)
    })
}

/// Lays `entries` out as `getdents64` does, as many as fit in `budget`
/// bytes, and advances `cookie` past them; returns the bytes written.
fn write_dirents(
    buf: u64,
    budget: u32,
    entries: &[lego_proto::DirEntry],
    cookie: &mut u64,
) -> Result<i64, Errno> {
    let mut out = Vec::with_capacity(budget as usize);
    for entry in entries {
        let reclen = dirent64_len(entry.name.len());
        if out.len() + reclen > budget as usize {
            if out.is_empty() {
                return Err(Errno::EINVAL);
            }
            break;
        }
        out.extend_from_slice(&entry.ino.to_ne_bytes());
        out.extend_from_slice(&(entry.cookie as i64).to_ne_bytes());
        out.extend_from_slice(&(reclen as u16).to_ne_bytes());
        out.push(entry.file_type.dirent_type());
        out.extend_from_slice(&entry.name);
        out.resize(out.len() + reclen - 19 - entry.name.len(), 0);
        *cookie = entry.cookie;
    }
    user::write(buf, &out)?;
    Ok(out.len() as i64)
}

pub fn fsync(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let vfs = storage_of(rt)?;
        vfs.storage.done_as(
            StorageRequest::Commit {
                handle: file.handle.clone(),
                data_only: c.nr == libc::SYS_fdatasync as u64,
            },
            file.opened.as_ref(),
        )?;
        Ok(0)
    })
}

/// Hints and calls with nothing to do on a storage file.
pub fn noop_on_storage(cx: &mut Ctx, c: &Call) -> SysResult {
    with_file(cx, c, |_| Ok(0))
}

/// Copies between descriptors: not offered on storage files; callers fall
/// back to read and write.
pub fn copy_unsupported(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let storage = |fd: u64| rt.files.get(fd).is_some();
    let (a, b) = match c.nr as i64 {
        libc::SYS_copy_file_range => (c.args[0], c.args[2]),
        libc::SYS_splice => (c.args[0], c.args[2]),
        _ => (c.args[0], c.args[1]),
    };
    if storage(a) || storage(b) {
        return Err(if c.nr as i64 == libc::SYS_copy_file_range {
            Errno::EXDEV
        } else {
            Errno::EINVAL
        }
        .into());
    }
    // Safety: the application's own call, unchanged, on host objects.
    unsafe { cx.host(c.nr, c.args) }
}

pub fn fallocate(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let [_, mode, offset, len, ..] = c.args;
        if mode != 0 {
            return Err(Errno::EOPNOTSUPP.into());
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > getattr(rt, file)?.size {
            setattr(
                rt,
                &file.handle,
                SetAttr {
                    size: Some(end),
                    ..SetAttr::default()
                },
            )?;
        }
        Ok(0)
    })
}

pub fn ftruncate(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        if !file.writable() {
            return Err(Errno::EINVAL.into());
        }
        let vfs = storage_of(rt)?;
        vfs.storage.attr_as(
            StorageRequest::Setattr {
                handle: file.handle.clone(),
                set: SetAttr {
                    size: Some(c.args[1]),
                    ..SetAttr::default()
                },
            },
            file.opened.as_ref(),
        )?;
        Ok(0)
    })
}

/// Sets attributes of a storage file; the call's value is 0.
pub(super) fn setattr(rt: &Runtime, handle: &FileHandle, set: SetAttr) -> Result<i64, SysError> {
    let vfs = storage_of(rt)?;
    vfs.storage.attr(StorageRequest::Setattr {
        handle: handle.clone(),
        set,
    })?;
    Ok(0)
}

pub fn fchmod(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        setattr(
            rt,
            &file.handle,
            SetAttr {
                mode: Some(c.args[1] as u32 & 0o7777),
                ..SetAttr::default()
            },
        )
    })
}

pub(super) fn owner(uid: u64, gid: u64) -> SetAttr {
    let id = |v: u64| (v as u32 != u32::MAX).then_some(v as u32);
    SetAttr {
        uid: id(uid),
        gid: id(gid),
        ..SetAttr::default()
    }
}

pub fn fchown(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        setattr(rt, &file.handle, owner(c.args[1], c.args[2]))
    })
}

/// close_range on the host, in the stretches between the runtime's own
/// descriptors.
fn close_range_host(cx: &mut Ctx, c: &Call) -> SysResult {
    // The kernel's arguments are unsigned ints: truncate as it does.
    let (first, last, flags) = (
        c.args[0] as u32 as u64,
        c.args[1] as u32 as u64,
        c.args[2] as u32 as u64,
    );
    if first > last {
        return Err(Errno::EINVAL.into());
    }
    // Apply the call to each stretch between the runtime's descriptors.
    let mut start = first;
    for fd in cx.rt.runtime_fds() {
        let fd = fd as u64;
        if fd < start || fd > last {
            continue;
        }
        if fd > start {
            // Safety: the stretch holds only application descriptors.
            let ret = unsafe { raw_syscall(c.nr, [start, fd - 1, flags, 0, 0, 0]) };
            if ret < 0 {
                return returned(ret);
            }
        }
        start = fd + 1;
    }
    if start <= last {
        // Safety: as above.
        return returned(unsafe { raw_syscall(c.nr, [start, last, flags, 0, 0, 0]) });
    }
    ok(0)
}
