//! Path calls of the file family (stat, access, readlink, directory and
//! link changes, attributes, the working directory) and the layout of the
//! structures they fill. See `file` for the shared conventions.

use super::contract::{ok, returned, Call, Ctx, Errno, Outcome, SysError, SysResult};
use super::file::{
    getattr, host_call, lookup, magic_link, owner, parent_and_name, place, read_path,
    served_relative, setattr, umask, with_file, Place,
};
use crate::host::raw_syscall;
use crate::host::user;
use crate::process::Runtime;
use crate::vfs::path::normalize;
use crate::vfs::Vfs;
use lego_proto::{
    FileAttr, FileHandle, FileType, FsStat, SetAttr, SetTime, StorageReply, StorageRequest,
    Timespec,
};

const AT_EMPTY_PATH: u64 = 0x1000;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_REMOVEDIR: u64 = 0x200;
const AT_SYMLINK_FOLLOW: u64 = 0x400;

/// A path call resolved: the storage file (and its absolute path), or the
/// host call already made (and succeeded: its failure is the error).
enum Target {
    Storage(FileHandle, FileAttr),
    Done(Outcome),
}

/// Resolves `path` (argument `path_arg`) relative to `dirfd`; with
/// AT_EMPTY_PATH and an empty path, the descriptor itself.
fn resolve(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_arg: usize,
    flags: u64,
    follow: bool,
) -> Result<Target, SysError> {
    let rt = cx.rt;
    let vfs = rt.vfs.as_ref().expect("called only with a vfs");
    let path = read_path(c.args[path_arg])?;
    if path.is_empty() {
        if flags & AT_EMPTY_PATH == 0 {
            return Err(Errno::ENOENT.into());
        }
        if let Some(file) = rt.files.get(dirfd) {
            let attr = getattr(rt, &file)?;
            return Ok(Target::Storage(file.handle.clone(), attr));
        }
        // Safety: the application's own call, unchanged, on host objects.
        return Ok(Target::Done(unsafe { cx.host(c.nr, c.args) }?));
    }
    let place = place(&rt.files, vfs, dirfd, &path)?;
    if let Place::Host(Some(abs)) = &place {
        if let Some(file) = magic_link(rt, abs.as_bytes()) {
            // /proc/self/fd/N of a storage file: that file (gnulib's
            // fchmodat and fchownat go this way).
            let attr = getattr(rt, &file)?;
            return Ok(Target::Storage(file.handle.clone(), attr));
        }
    }
    match place {
        Place::Host(abs) => Ok(Target::Done(host_call(cx, c, path_arg, abs)?)),
        Place::Storage { dir, path, .. } => {
            let (handle, attr) = lookup(vfs, dir, path, follow)?;
            Ok(Target::Storage(handle, attr))
        }
    }
}

/// The shape every path call here has: the host call when there is no
/// storage (or the path is the host's), else `f` on the storage file (the
/// value it gives is the call's).
/// Symlinks are followed unless AT_SYMLINK_NOFOLLOW is in `flags`.
fn on_storage(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_arg: usize,
    flags: u64,
    f: impl FnOnce(FileHandle, FileAttr) -> Result<i64, SysError>,
) -> SysResult {
    if cx.rt.vfs.is_none() {
        if let Some(file) = cx.rt.files.get(dirfd) {
            let path = read_path(c.args[path_arg])?;
            if flags & AT_EMPTY_PATH != 0 && path.is_empty() {
                // A file the runtime serves, named by its descriptor.
                let attr = getattr(cx.rt, &file)?;
                return f(file.handle.clone(), attr).map(Outcome::Return);
            }
            let abs = served_relative(cx.rt, dirfd, &path);
            return host_call(cx, c, path_arg, abs);
        }
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    }
    match resolve(
        cx,
        c,
        dirfd,
        path_arg,
        flags,
        flags & AT_SYMLINK_NOFOLLOW == 0,
    )? {
        Target::Done(outcome) => Ok(outcome),
        Target::Storage(handle, attr) => f(handle, attr).map(Outcome::Return),
    }
}

// ---------------------------------------------------------------- stat

/// `struct stat` as x86-64 Linux lays it out (144 bytes).
fn stat_bytes(a: &FileAttr) -> [u8; 144] {
    let mut b = [0u8; 144];
    let mut put = |off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    put(0, a.dev);
    put(8, a.ino);
    put(16, a.nlink);
    put(
        24,
        (a.file_type.mode_bits() | a.mode) as u64 | ((a.uid as u64) << 32),
    );
    put(32, a.gid as u64);
    put(40, a.rdev);
    put(48, a.size);
    put(56, a.blksize as u64);
    put(64, a.blocks);
    put(72, a.atime.sec as u64);
    put(80, a.atime.nsec as u64);
    put(88, a.mtime.sec as u64);
    put(96, a.mtime.nsec as u64);
    put(104, a.ctime.sec as u64);
    put(112, a.ctime.nsec as u64);
    b
}

fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

fn dev_minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

/// `struct statx` (256 bytes) with the basic statistics.
fn statx_bytes(a: &FileAttr) -> [u8; 256] {
    let mut b = [0u8; 256];
    let put32 =
        |b: &mut [u8; 256], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    put32(&mut b, 0, 0x7ff); // STATX_BASIC_STATS
    put32(&mut b, 4, a.blksize);
    put32(&mut b, 16, a.nlink as u32);
    put32(&mut b, 20, a.uid);
    put32(&mut b, 24, a.gid);
    b[28..30].copy_from_slice(&((a.file_type.mode_bits() | a.mode) as u16).to_ne_bytes());
    b[32..40].copy_from_slice(&a.ino.to_ne_bytes());
    b[40..48].copy_from_slice(&a.size.to_ne_bytes());
    b[48..56].copy_from_slice(&a.blocks.to_ne_bytes());
    for (off, t) in [(64, a.atime), (96, a.ctime), (112, a.mtime)] {
        b[off..off + 8].copy_from_slice(&t.sec.to_ne_bytes());
        b[off + 8..off + 12].copy_from_slice(&t.nsec.to_ne_bytes());
    }
    put32(&mut b, 128, dev_major(a.rdev));
    put32(&mut b, 132, dev_minor(a.rdev));
    put32(&mut b, 136, dev_major(a.dev));
    put32(&mut b, 140, dev_minor(a.dev));
    b
}

pub fn fstat(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        let attr = getattr(rt, file)?;
        user::write(c.args[1], &stat_bytes(&attr))?;
        Ok(0)
    })
}

fn stat_common(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_arg: usize,
    flags: u64,
    buf: u64,
) -> SysResult {
    on_storage(cx, c, dirfd, path_arg, flags, |_, attr| {
        user::write(buf, &stat_bytes(&attr))?;
        Ok(0)
    })
}

pub fn stat(cx: &mut Ctx, c: &Call) -> SysResult {
    stat_common(cx, c, libc::AT_FDCWD as u64, 0, 0, c.args[1])
}

pub fn lstat(cx: &mut Ctx, c: &Call) -> SysResult {
    stat_common(
        cx,
        c,
        libc::AT_FDCWD as u64,
        0,
        AT_SYMLINK_NOFOLLOW,
        c.args[1],
    )
}

pub fn newfstatat(cx: &mut Ctx, c: &Call) -> SysResult {
    stat_common(cx, c, c.args[0], 1, c.args[3], c.args[2])
}

pub fn statx(cx: &mut Ctx, c: &Call) -> SysResult {
    let [dirfd, _, flags, _, buf, _] = c.args;
    on_storage(cx, c, dirfd, 1, flags, |_, attr| {
        user::write(buf, &statx_bytes(&attr))?;
        Ok(0)
    })
}

fn statfs_bytes(s: &FsStat) -> [u8; 120] {
    let mut b = [0u8; 120];
    for (i, v) in [
        s.fs_type, s.bsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.fsid, s.namelen,
        s.frsize, s.flags,
    ]
    .into_iter()
    .enumerate()
    {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    b
}

fn statfs_of(rt: &Runtime, handle: FileHandle, buf: u64) -> Result<i64, SysError> {
    let Some(vfs) = rt.vfs.as_ref() else {
        return Err(Errno::EINVAL.into());
    };
    match vfs.storage.call(StorageRequest::Statfs { handle }, &[])?.0 {
        StorageReply::FsStat(s) => {
            user::write(buf, &statfs_bytes(&s))?;
            Ok(0)
        }
        other => Err(SysError::fatal(format!(
            "the storage manager answered statfs with {}",
            other.name()
        ))),
    }
}

pub fn statfs(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    on_storage(cx, c, libc::AT_FDCWD as u64, 0, 0, |handle, _| {
        statfs_of(rt, handle, c.args[1])
    })
}

pub fn fstatfs(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    with_file(cx, c, |file| {
        if file.handle.0.is_empty() {
            // A file the runtime serves: /proc's file system.
            // Safety: statfs reads our path and writes one struct statfs
            // at the application's pointer, which the kernel checks.
            let r = unsafe {
                raw_syscall(
                    libc::SYS_statfs as u64,
                    [c"/proc".as_ptr() as u64, c.args[1], 0, 0, 0, 0],
                )
            };
            return if r < 0 {
                Err(Errno(-r as i32).into())
            } else {
                Ok(r)
            };
        }
        statfs_of(rt, file.handle.clone(), c.args[1])
    })
}

// ---------------------------------------------------------------- access, readlink

fn access_common(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_arg: usize,
    mode: u64,
    flags: u64,
) -> SysResult {
    let rt = cx.rt;
    on_storage(cx, c, dirfd, path_arg, flags, |handle, attr| {
        let Some(vfs) = rt.vfs.as_ref().filter(|_| !handle.0.is_empty()) else {
            // A file the runtime serves is readable, a directory it
            // serves readable and searchable; neither is writable.
            if mode & !7 != 0 {
                return Err(Errno::EINVAL.into());
            }
            let allowed = if attr.file_type == FileType::Directory {
                libc::R_OK | libc::X_OK
            } else {
                libc::R_OK
            } as u64;
            return if mode & !allowed != 0 {
                Err(Errno::EACCES.into())
            } else {
                Ok(0)
            };
        };
        // access(2) checks with the real ids, AT_EACCESS with the
        // filesystem ones (the storage manager accepts only ids the
        // process's voucher shows it holds).
        let voucher = vfs.storage.voucher();
        let credentials = if flags & libc::AT_EACCESS as u64 != 0 {
            voucher.fs_credentials()
        } else {
            voucher.access_credentials()
        };
        vfs.storage.done(StorageRequest::Access {
            handle,
            mask: mode as u32 & 7,
            credentials,
        })?;
        Ok(0)
    })
}

pub fn access(cx: &mut Ctx, c: &Call) -> SysResult {
    access_common(cx, c, libc::AT_FDCWD as u64, 0, c.args[1], 0)
}

pub fn faccessat(cx: &mut Ctx, c: &Call) -> SysResult {
    access_common(cx, c, c.args[0], 1, c.args[2], 0)
}

pub fn faccessat2(cx: &mut Ctx, c: &Call) -> SysResult {
    access_common(cx, c, c.args[0], 1, c.args[2], c.args[3])
}

/// readlink on storage (the /proc/self/exe answer is `fs::readlink`'s).
pub fn readlink_storage(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_arg: usize,
    buf: u64,
    size: u64,
) -> SysResult {
    match resolve(cx, c, dirfd, path_arg, 0, false)? {
        Target::Done(outcome) => Ok(outcome),
        Target::Storage(handle, attr) => {
            if attr.file_type != FileType::Symlink {
                return Err(Errno::EINVAL.into());
            }
            if (size as i64) <= 0 {
                return Err(Errno::EINVAL.into());
            }
            let vfs = cx.rt.vfs.as_ref().expect("called only with a vfs");
            match vfs.storage.call(StorageRequest::Readlink { handle }, &[])? {
                (StorageReply::Target { target }, _) => {
                    let n = target.len().min(size as usize);
                    user::write(buf, &target[..n])?;
                    ok(n as i64)
                }
                (other, _) => Err(SysError::fatal(format!(
                    "the storage manager answered readlink with {}",
                    other.name()
                ))),
            }
        }
    }
}

// ---------------------------------------------------------------- creating and removing

/// Runs `make` on the parent directory and last name of `path`, or the host
/// call for a host path.
fn with_parent(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_arg: usize,
    make: impl FnOnce(&Vfs, FileHandle, Vec<u8>) -> Result<i64, SysError>,
) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let path = read_path(c.args[path_arg])?;
    if path.is_empty() {
        return Err(Errno::ENOENT.into());
    }
    match place(&rt.files, vfs, dirfd, &path)? {
        Place::Host(abs) => host_call(cx, c, path_arg, abs),
        Place::Storage { dir, path, .. } => {
            let (dir, name) = parent_and_name(vfs, dir, &path)?;
            make(vfs, dir, name).map(Outcome::Return)
        }
    }
}

fn mkdir_in(vfs: &Vfs, dir: FileHandle, name: Vec<u8>, mode: u64) -> Result<i64, SysError> {
    vfs.storage.found(StorageRequest::Mkdir {
        dir,
        name,
        mode: mode as u32 & 0o7777 & !umask(),
    })?;
    Ok(0)
}

pub fn mkdir(cx: &mut Ctx, c: &Call) -> SysResult {
    with_parent(cx, c, libc::AT_FDCWD as u64, 0, |vfs, dir, name| {
        mkdir_in(vfs, dir, name, c.args[1])
    })
}

pub fn mkdirat(cx: &mut Ctx, c: &Call) -> SysResult {
    with_parent(cx, c, c.args[0], 1, |vfs, dir, name| {
        mkdir_in(vfs, dir, name, c.args[2])
    })
}

fn remove_in(vfs: &Vfs, dir: FileHandle, name: Vec<u8>, directory: bool) -> Result<i64, SysError> {
    let request = if directory {
        StorageRequest::Rmdir { dir, name }
    } else {
        StorageRequest::Remove { dir, name }
    };
    vfs.storage.done(request)?;
    Ok(0)
}

pub fn unlink(cx: &mut Ctx, c: &Call) -> SysResult {
    with_parent(cx, c, libc::AT_FDCWD as u64, 0, |vfs, dir, name| {
        remove_in(vfs, dir, name, false)
    })
}

pub fn rmdir(cx: &mut Ctx, c: &Call) -> SysResult {
    with_parent(cx, c, libc::AT_FDCWD as u64, 0, |vfs, dir, name| {
        remove_in(vfs, dir, name, true)
    })
}

pub fn unlinkat(cx: &mut Ctx, c: &Call) -> SysResult {
    let directory = c.args[2] & AT_REMOVEDIR != 0;
    with_parent(cx, c, c.args[0], 1, |vfs, dir, name| {
        remove_in(vfs, dir, name, directory)
    })
}

fn symlink_in(vfs: &Vfs, dir: FileHandle, name: Vec<u8>, target_ptr: u64) -> Result<i64, SysError> {
    let target = read_path(target_ptr)?;
    vfs.storage
        .found(StorageRequest::Symlink { dir, name, target })?;
    Ok(0)
}

pub fn symlink(cx: &mut Ctx, c: &Call) -> SysResult {
    with_parent(cx, c, libc::AT_FDCWD as u64, 1, |vfs, dir, name| {
        symlink_in(vfs, dir, name, c.args[0])
    })
}

pub fn symlinkat(cx: &mut Ctx, c: &Call) -> SysResult {
    with_parent(cx, c, c.args[1], 2, |vfs, dir, name| {
        symlink_in(vfs, dir, name, c.args[0])
    })
}

/// The storage directory and name a two-path call's path names, or the
/// errno: both paths of rename and link must be on storage (EXDEV else).
fn storage_parent(
    rt: &Runtime,
    vfs: &Vfs,
    dirfd: u64,
    ptr: u64,
) -> Result<(FileHandle, Vec<u8>), SysError> {
    let path = read_path(ptr)?;
    if path.is_empty() {
        return Err(Errno::ENOENT.into());
    }
    match place(&rt.files, vfs, dirfd, &path)? {
        Place::Host(_) => Err(Errno::EXDEV.into()),
        Place::Storage { dir, path, .. } => parent_and_name(vfs, dir, &path),
    }
}

fn rename_common(
    cx: &mut Ctx,
    c: &Call,
    olddir: u64,
    old: u64,
    newdir: u64,
    new: u64,
    flags: u64,
) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let r = (|| -> Result<i64, SysError> {
        let (from_dir, from_name) = storage_parent(rt, vfs, olddir, old)?;
        let (to_dir, to_name) = storage_parent(rt, vfs, newdir, new)?;
        vfs.storage.done(StorageRequest::Rename {
            from_dir,
            from_name,
            to_dir,
            to_name,
            flags: flags as u32,
        })?;
        Ok(0)
    })();
    match r {
        // Both on the host: the host renames.
        // Safety: the application's own call, unchanged, on host paths.
        Err(SysError::Errno(Errno::EXDEV)) if both_host(rt, vfs, olddir, old, newdir, new) => unsafe {
            cx.host(c.nr, c.args)
        },
        r => r.map(Outcome::Return),
    }
}

fn both_host(rt: &Runtime, vfs: &Vfs, olddir: u64, old: u64, newdir: u64, new: u64) -> bool {
    let host = |dirfd, ptr| {
        read_path(ptr)
            .ok()
            .and_then(|p| place(&rt.files, vfs, dirfd, &p).ok())
            .is_some_and(|p| matches!(p, Place::Host(_)))
    };
    host(olddir, old) && host(newdir, new)
}

pub fn rename(cx: &mut Ctx, c: &Call) -> SysResult {
    let cwd = libc::AT_FDCWD as u64;
    rename_common(cx, c, cwd, c.args[0], cwd, c.args[1], 0)
}

pub fn renameat(cx: &mut Ctx, c: &Call) -> SysResult {
    rename_common(cx, c, c.args[0], c.args[1], c.args[2], c.args[3], 0)
}

pub fn renameat2(cx: &mut Ctx, c: &Call) -> SysResult {
    rename_common(cx, c, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4])
}

fn link_common(
    cx: &mut Ctx,
    c: &Call,
    olddir: u64,
    old: u64,
    newdir: u64,
    new: u64,
    flags: u64,
) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let r = (|| -> Result<i64, SysError> {
        let path = read_path(old)?;
        let Place::Storage { dir, path, .. } = place(&rt.files, vfs, olddir, &path)? else {
            return Err(Errno::EXDEV.into());
        };
        let (handle, _) = lookup(vfs, dir, path, flags & AT_SYMLINK_FOLLOW != 0)?;
        let (dir, name) = storage_parent(rt, vfs, newdir, new)?;
        vfs.storage
            .found(StorageRequest::Link { handle, dir, name })?;
        Ok(0)
    })();
    match r {
        // Safety: the application's own call, unchanged, on host paths.
        Err(SysError::Errno(Errno::EXDEV)) if both_host(rt, vfs, olddir, old, newdir, new) => unsafe {
            cx.host(c.nr, c.args)
        },
        r => r.map(Outcome::Return),
    }
}

pub fn link(cx: &mut Ctx, c: &Call) -> SysResult {
    let cwd = libc::AT_FDCWD as u64;
    link_common(cx, c, cwd, c.args[0], cwd, c.args[1], 0)
}

pub fn linkat(cx: &mut Ctx, c: &Call) -> SysResult {
    link_common(cx, c, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4])
}

// ---------------------------------------------------------------- attributes

fn set_path(
    cx: &mut Ctx,
    c: &Call,
    dirfd: u64,
    path_arg: usize,
    flags: u64,
    set: SetAttr,
) -> SysResult {
    let rt = cx.rt;
    on_storage(cx, c, dirfd, path_arg, flags, |handle, _| {
        setattr(rt, &handle, set)
    })
}

fn mode(m: u64) -> SetAttr {
    SetAttr {
        mode: Some(m as u32 & 0o7777),
        ..SetAttr::default()
    }
}

pub fn chmod(cx: &mut Ctx, c: &Call) -> SysResult {
    set_path(cx, c, libc::AT_FDCWD as u64, 0, 0, mode(c.args[1]))
}

pub fn fchmodat(cx: &mut Ctx, c: &Call) -> SysResult {
    set_path(cx, c, c.args[0], 1, 0, mode(c.args[2]))
}

pub fn fchmodat2(cx: &mut Ctx, c: &Call) -> SysResult {
    set_path(cx, c, c.args[0], 1, c.args[3], mode(c.args[2]))
}

pub fn chown(cx: &mut Ctx, c: &Call) -> SysResult {
    set_path(
        cx,
        c,
        libc::AT_FDCWD as u64,
        0,
        0,
        owner(c.args[1], c.args[2]),
    )
}

pub fn lchown(cx: &mut Ctx, c: &Call) -> SysResult {
    set_path(
        cx,
        c,
        libc::AT_FDCWD as u64,
        0,
        AT_SYMLINK_NOFOLLOW,
        owner(c.args[1], c.args[2]),
    )
}

pub fn fchownat(cx: &mut Ctx, c: &Call) -> SysResult {
    set_path(cx, c, c.args[0], 1, c.args[4], owner(c.args[2], c.args[3]))
}

pub fn truncate(cx: &mut Ctx, c: &Call) -> SysResult {
    if (c.args[1] as i64) < 0 {
        return Err(Errno::EINVAL.into());
    }
    set_path(
        cx,
        c,
        libc::AT_FDCWD as u64,
        0,
        0,
        SetAttr {
            size: Some(c.args[1]),
            ..SetAttr::default()
        },
    )
}

const UTIME_NOW: i64 = 0x3fff_ffff;
const UTIME_OMIT: i64 = 0x3fff_fffe;

/// Times from a `struct timespec[2]` (NULL: both now).
fn times_from(ptr: u64) -> Result<(Option<SetTime>, Option<SetTime>), Errno> {
    if ptr == 0 {
        return Ok((Some(SetTime::Now), Some(SetTime::Now)));
    }
    let mut raw = [0u8; 32];
    user::read(ptr, &mut raw)?;
    let one = |b: &[u8]| -> Result<Option<SetTime>, Errno> {
        let sec = i64::from_ne_bytes(b[0..8].try_into().expect("8 bytes"));
        let nsec = i64::from_ne_bytes(b[8..16].try_into().expect("8 bytes"));
        Ok(match nsec {
            UTIME_NOW => Some(SetTime::Now),
            UTIME_OMIT => None,
            n if (0..1_000_000_000).contains(&n) => Some(SetTime::At(Timespec {
                sec,
                nsec: n as u32,
            })),
            _ => return Err(Errno::EINVAL),
        })
    };
    Ok((one(&raw[0..16])?, one(&raw[16..32])?))
}

pub fn utimensat(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    if rt.vfs.is_none() {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let [dirfd, path, times, flags, ..] = c.args;
    let (atime, mtime) = times_from(times)?;
    let set = SetAttr {
        atime,
        mtime,
        ..SetAttr::default()
    };
    if path == 0 {
        // futimens: the descriptor itself.
        return match rt.files.get(dirfd) {
            Some(file) => setattr(rt, &file.handle, set).map(Outcome::Return),
            // Safety: the application's own call, unchanged, on a host
            // descriptor.
            None => unsafe { cx.host(c.nr, c.args) },
        };
    }
    set_path(cx, c, dirfd, 1, flags, set)
}

/// utime and utimes (and futimesat): seconds (and microseconds) given.
pub fn utimes(cx: &mut Ctx, c: &Call) -> SysResult {
    if cx.rt.vfs.is_none() {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    }
    let (dirfd, path_arg, times) = match c.nr as i64 {
        libc::SYS_futimesat => (c.args[0], 1, c.args[2]),
        _ => (libc::AT_FDCWD as u64, 0, c.args[1]),
    };
    let set = if times == 0 {
        SetAttr {
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        }
    } else {
        let utime = c.nr as i64 == libc::SYS_utime;
        let mut raw = [0u8; 32];
        let len = if utime { 16 } else { 32 };
        user::read(times, &mut raw[..len])?;
        let word =
            |i: usize| i64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let at = |sec: i64, usec: i64| {
            SetTime::At(Timespec {
                sec,
                nsec: (usec.clamp(0, 999_999) * 1000) as u32,
            })
        };
        let (a, m) = if utime {
            (at(word(0), 0), at(word(1), 0))
        } else {
            (at(word(0), word(1)), at(word(2), word(3)))
        };
        SetAttr {
            atime: Some(a),
            mtime: Some(m),
            ..SetAttr::default()
        }
    };
    set_path(cx, c, dirfd, path_arg, 0, set)
}

// ---------------------------------------------------------------- working directory

pub fn getcwd(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let mut path = vfs.cwd().path.clone();
    path.push(0);
    if (c.args[1] as usize) < path.len() {
        return Err(Errno::ERANGE.into());
    }
    user::write(c.args[0], &path)?;
    ok(path.len() as i64)
}

pub fn chdir(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let path = read_path(c.args[0])?;
    if path.is_empty() {
        return Err(Errno::ENOENT.into());
    }
    match place(&rt.files, vfs, libc::AT_FDCWD as u64, &path)? {
        Place::Host(abs) => {
            let abs_bytes = abs.as_ref().map(|a| a.as_bytes().to_vec());
            let r = host_call(cx, c, 0, abs);
            if r == Ok(Outcome::Return(0)) {
                let mut cwd = vfs.cwd();
                cwd.path = abs_bytes.unwrap_or_else(|| normalize(&cwd.path, &path));
                cwd.handle = None;
            }
            r
        }
        Place::Storage { dir, path, abs } => {
            let (handle, attr) = lookup(vfs, dir, path, true)?;
            if attr.file_type != FileType::Directory {
                return Err(Errno::ENOTDIR.into());
            }
            let mut cwd = vfs.cwd();
            cwd.path = abs;
            cwd.handle = Some(handle);
            ok(0)
        }
    }
}

pub fn fchdir(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        if let Some(file) = rt.files.get(c.args[0]) {
            // A directory the runtime serves is a host directory; a file
            // it serves is none.
            if file.listing.is_none() {
                return Err(Errno::ENOTDIR.into());
            }
            let path = std::ffi::CString::new(file.path.clone()).map_err(|_| Errno::ENOENT)?;
            // Safety: chdir reads a NUL-terminated path of ours.
            return returned(unsafe {
                raw_syscall(
                    libc::SYS_chdir as u64,
                    [path.as_ptr() as u64, 0, 0, 0, 0, 0],
                )
            });
        }
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    match rt.files.get(c.args[0]) {
        Some(file) if file.file_type != FileType::Directory => Err(Errno::ENOTDIR.into()),
        Some(file) => {
            let handle = (!file.handle.0.is_empty()).then(|| file.handle.clone());
            if handle.is_none() {
                // A directory the runtime serves is a host directory.
                let Ok(path) = std::ffi::CString::new(file.path.clone()) else {
                    return Err(Errno::ENOENT.into());
                };
                // Safety: chdir reads a NUL-terminated path of ours.
                if unsafe { libc::chdir(path.as_ptr()) } != 0 {
                    return Err(Errno::ENOENT.into());
                }
            }
            let mut cwd = vfs.cwd();
            cwd.path = file.path.clone();
            cwd.handle = handle;
            ok(0)
        }
        None => {
            // Safety: the application's own call, unchanged, on a host
            // descriptor.
            let r = unsafe { cx.host(c.nr, c.args) };
            if r == Ok(Outcome::Return(0)) {
                if let Ok(target) = std::fs::read_link("/proc/thread-self/cwd") {
                    let mut cwd = vfs.cwd();
                    cwd.path = target.into_os_string().into_encoded_bytes();
                    cwd.handle = None;
                }
            }
            r
        }
    }
}

/// Extended attributes are not served from storage (ENOTSUP, which tools
/// treat as "none").
pub fn xattr(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let Some(vfs) = &rt.vfs else {
        // Safety: the application's own call, unchanged, on host objects.
        return unsafe { cx.host(c.nr, c.args) };
    };
    let fd_call = matches!(
        c.nr as i64,
        libc::SYS_fgetxattr | libc::SYS_fsetxattr | libc::SYS_flistxattr | libc::SYS_fremovexattr
    );
    if fd_call {
        return if rt.files.get(c.args[0]).is_some() {
            Err(Errno::ENOTSUP.into())
        } else {
            // Safety: the application's own call, unchanged, on a host
            // descriptor.
            unsafe { cx.host(c.nr, c.args) }
        };
    }
    let path = read_path(c.args[0])?;
    match place(&rt.files, vfs, libc::AT_FDCWD as u64, &path)? {
        Place::Host(abs) => host_call(cx, c, 0, abs),
        Place::Storage { dir, path, .. } => {
            let follow = !matches!(
                c.nr as i64,
                libc::SYS_lgetxattr
                    | libc::SYS_lsetxattr
                    | libc::SYS_llistxattr
                    | libc::SYS_lremovexattr
            );
            lookup(vfs, dir, path, follow)?;
            Err(Errno::ENOTSUP.into())
        }
    }
}

/// Special files (FIFOs, devices, sockets) are the processor's business:
/// on storage paths they are refused.
fn mknod_common(cx: &mut Ctx, c: &Call, dirfd: u64, path_arg: usize) -> SysResult {
    with_parent(cx, c, dirfd, path_arg, |_, _, _| Err(Errno::EPERM.into()))
}

pub fn mknod(cx: &mut Ctx, c: &Call) -> SysResult {
    mknod_common(cx, c, libc::AT_FDCWD as u64, 0)
}

pub fn mknodat(cx: &mut Ctx, c: &Call) -> SysResult {
    mknod_common(cx, c, c.args[0], 1)
}

/// Answers readlink of /proc/self/exe with the program's path; passes
/// anything else through.
fn readlink_common(
    cx: &mut Ctx,
    dirfd: u64,
    path_ptr: u64,
    buf: u64,
    size: u64,
    pass: impl FnOnce(&mut Ctx) -> SysResult,
) -> SysResult {
    let rt = cx.rt;
    let mut path = user::read_cstring(path_ptr, libc::PATH_MAX as usize)?;
    if let Some(abs) = served_relative(rt, dirfd, &path) {
        // A name in /proc/self/fd opened as a directory.
        path = abs.into_bytes();
    }
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
        match rt.files.get(fd) {
            Some(file) => file.path.clone(),
            None => return pass(cx),
        }
    } else {
        return pass(cx);
    };
    if (size as i64) <= 0 {
        return Err(Errno::EINVAL.into());
    }
    let n = target.len().min(size as usize);
    user::write(buf, &target[..n])?;
    ok(n as i64)
}

pub fn readlink(cx: &mut Ctx, c: &Call) -> SysResult {
    readlink_common(
        cx,
        libc::AT_FDCWD as u64,
        c.args[0],
        c.args[1],
        c.args[2],
        |cx| match cx.rt.vfs {
            Some(_) => readlink_storage(cx, c, libc::AT_FDCWD as u64, 0, c.args[1], c.args[2]),
            // Safety: the application's own call, unchanged.
            None => returned(unsafe { raw_syscall(c.nr, c.args) }),
        },
    )
}

pub fn readlinkat(cx: &mut Ctx, c: &Call) -> SysResult {
    readlink_common(
        cx,
        c.args[0],
        c.args[1],
        c.args[2],
        c.args[3],
        |cx| match cx.rt.vfs {
            Some(_) => readlink_storage(cx, c, c.args[0], 1, c.args[2], c.args[3]),
            None => {
                let path = read_path(c.args[1])?;
                let abs = served_relative(cx.rt, c.args[0], &path);
                host_call(cx, c, 1, abs)
            }
        },
    )
}
