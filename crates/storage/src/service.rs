//! The file requests: one function per [`StorageRequest`], each taking the
//! request's fields and returning the reply or a [`Failure`].
//!
//! Every function opens what it needs from the handles it is given, acts,
//! and closes it again: nothing outlives a request, so a restarted storage
//! manager (or another one on the same export) serves the next request as
//! well as this one would have. Descriptors are opened `O_PATH` unless the
//! operation needs to read or write contents.

use crate::export::{path_cstring, Export};
use crate::sys::{self, Errno};
use crate::Failure;
use lego_proto::{
    dirent64_len, permitted, Credentials, FileHandle, FileType, SetAttr, SetTime, StorageReply,
    ACCESS_EXECUTE, ACCESS_READ, ACCESS_WRITE, MAX_FILE_NAME_LEN, MAX_GROUPS, MAX_PATH_LEN,
    MAX_READDIR_BYTES, MAX_READ_LEN, MAX_WRITE_LEN, RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};

/// A reply and the raw payload that travels with it.
pub type Served = Result<(StorageReply, Vec<u8>), Failure>;

fn reply(reply: StorageReply) -> Served {
    Ok((reply, Vec::new()))
}

/// `ST_RDONLY` in `statfs`'s `f_flags`.
const ST_RDONLY: u64 = 1;

/// Size of the buffer each `getdents64` fills.
const GETDENTS_BUF: usize = 64 * 1024;

/// Checks one path component. `.` and `..` are refused with `dot_errno`,
/// what Linux answers for that call (they would otherwise reach the export
/// root's parent).
fn component(name: &[u8], dot_errno: i32) -> Result<CString, Failure> {
    if name.is_empty() {
        return Err(Failure::BadRequest("an empty file name".into()));
    }
    if name.contains(&b'/') {
        return Err(Failure::BadRequest(format!(
            "the file name {:?} contains a '/': send one path component",
            String::from_utf8_lossy(name)
        )));
    }
    if name.len() > MAX_FILE_NAME_LEN {
        return Err(Errno(libc::ENAMETOOLONG).into());
    }
    if name == b"." || name == b".." {
        return Err(Errno(dot_errno).into());
    }
    path_cstring(name)
}

impl Export {
    /// The attributes and handle of the file `fd` refers to.
    fn found(&self, fd: BorrowedFd<'_>) -> Served {
        let (attr, _) = sys::statx(fd)?;
        let handle = self.handle_of(fd, &attr)?;
        reply(StorageReply::Found { handle, attr })
    }

    pub fn root_handle(&self) -> Served {
        self.found(self.root_fd())
    }

    pub fn lookup(&self, dir: &FileHandle, path: &[u8], follow: bool) -> Served {
        if path.len() > MAX_PATH_LEN {
            return Err(Errno(libc::ENAMETOOLONG).into());
        }
        let dir = self.open_dir(dir, libc::O_PATH)?;
        let fd = self.walk(dir.as_fd(), path, follow)?;
        self.found(fd.as_fd())
    }

    pub fn getattr(&self, handle: &FileHandle) -> Served {
        let fd = self.open_handle(handle, libc::O_PATH)?;
        reply(StorageReply::Attr(sys::statx(fd.as_fd())?.0))
    }

    pub fn setattr(&self, handle: &FileHandle, set: &SetAttr) -> Served {
        let fd = self.open_handle(handle, libc::O_PATH)?;
        if let Some(size) = set.size {
            let writable = self.open_handle(handle, libc::O_WRONLY)?;
            sys::ftruncate(writable.as_fd(), size)?;
        }
        if let Some(mode) = set.mode {
            sys::chmod(fd.as_fd(), mode)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::chown(
                fd.as_fd(),
                set.uid.unwrap_or(u32::MAX),
                set.gid.unwrap_or(u32::MAX),
            )?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::utimens(fd.as_fd(), &[utime(set.atime)?, utime(set.mtime)?])?;
        }
        reply(StorageReply::Attr(sys::statx(fd.as_fd())?.0))
    }

    pub fn read(&self, handle: &FileHandle, offset: u64, len: u32) -> Served {
        if i64::try_from(offset).is_err() {
            return Err(Errno(libc::EINVAL).into());
        }
        let fd = self.open_handle(handle, libc::O_RDONLY)?;
        let len = len.min(MAX_READ_LEN) as usize;
        let mut data = vec![0u8; len];
        let count = sys::pread_full(fd.as_fd(), &mut data, offset)?;
        data.truncate(count);
        Ok((StorageReply::Data { eof: count < len }, data))
    }

    pub fn write(
        &self,
        handle: &FileHandle,
        offset: u64,
        append: bool,
        stable: bool,
        data: &[u8],
    ) -> Served {
        if data.len() > MAX_WRITE_LEN {
            return Err(Failure::BadRequest(format!(
                "a write of {} bytes, over the limit of {MAX_WRITE_LEN}",
                data.len()
            )));
        }
        if !append && i64::try_from(offset).is_err() {
            return Err(Errno(libc::EINVAL).into());
        }
        let flags = libc::O_WRONLY | if append { libc::O_APPEND } else { 0 };
        let fd = self.open_handle(handle, flags)?;
        let count = sys::pwrite_full(fd.as_fd(), data, offset, append)?;
        if stable {
            sys::fsync(fd.as_fd(), false)?;
        }
        let (attr, _) = sys::statx(fd.as_fd())?;
        reply(StorageReply::Written {
            count: count as u32,
            attr,
        })
    }

    pub fn commit(&self, handle: &FileHandle, data_only: bool) -> Served {
        // fsync works on a descriptor of either access mode; a file the
        // server may only write is opened for writing.
        let fd = match self.open_handle(handle, libc::O_RDONLY) {
            Err(Failure::Errno(Errno(libc::EACCES))) => self.open_handle(handle, libc::O_WRONLY)?,
            other => other?,
        };
        sys::fsync(fd.as_fd(), data_only)?;
        reply(StorageReply::Done)
    }

    pub fn create(
        &self,
        dir: &FileHandle,
        name: &[u8],
        mode: u32,
        exclusive: bool,
        truncate: bool,
    ) -> Served {
        let name = component(name, libc::EISDIR)?;
        let dir = self.open_dir(dir, libc::O_PATH)?;
        let access = if truncate {
            libc::O_WRONLY | libc::O_TRUNC
        } else {
            libc::O_RDONLY
        };
        let flags = access | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        // Exclusive first, so we know whether the file is new and its mode
        // is ours to set.
        match sys::openat(
            dir.as_fd(),
            &name,
            flags | libc::O_CREAT | libc::O_EXCL,
            mode,
        ) {
            Ok(fd) => {
                exact_mode(fd.as_fd(), mode)?;
                self.found(fd.as_fd())
            }
            Err(Errno(libc::EEXIST)) if !exclusive => {
                let fd = sys::openat(dir.as_fd(), &name, flags, 0)?;
                self.found(fd.as_fd())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn mkdir(&self, dir: &FileHandle, name: &[u8], mode: u32) -> Served {
        let name = component(name, libc::EEXIST)?;
        let dir = self.open_dir(dir, libc::O_PATH)?;
        sys::mkdirat(dir.as_fd(), &name, mode)?;
        let fd = sys::openat(
            dir.as_fd(),
            &name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
            0,
        )?;
        exact_mode(fd.as_fd(), mode)?;
        self.found(fd.as_fd())
    }

    pub fn remove(&self, dir: &FileHandle, name: &[u8], remove_dir: bool) -> Served {
        // Linux: unlink(".") is EISDIR, rmdir(".") EINVAL, rmdir("..")
        // ENOTEMPTY; EINVAL covers both dots for rmdir here.
        let dots = if remove_dir {
            libc::EINVAL
        } else {
            libc::EISDIR
        };
        let name = component(name, dots)?;
        let dir = self.open_dir(dir, libc::O_PATH)?;
        sys::unlinkat(dir.as_fd(), &name, remove_dir)?;
        reply(StorageReply::Done)
    }

    pub fn rename(
        &self,
        from_dir: &FileHandle,
        from_name: &[u8],
        to_dir: &FileHandle,
        to_name: &[u8],
        flags: u32,
    ) -> Served {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(Errno(libc::EINVAL).into());
        }
        let from_name = component(from_name, libc::EBUSY)?;
        let to_name = component(to_name, libc::EBUSY)?;
        let from = self.open_dir(from_dir, libc::O_PATH)?;
        let to = self.open_dir(to_dir, libc::O_PATH)?;
        sys::renameat2(from.as_fd(), &from_name, to.as_fd(), &to_name, flags)?;
        reply(StorageReply::Done)
    }

    pub fn link(&self, handle: &FileHandle, dir: &FileHandle, name: &[u8]) -> Served {
        let name = component(name, libc::EEXIST)?;
        let fd = self.open_handle(handle, libc::O_PATH)?;
        let dir = self.open_dir(dir, libc::O_PATH)?;
        sys::linkat(fd.as_fd(), dir.as_fd(), &name)?;
        self.found(fd.as_fd())
    }

    pub fn symlink(&self, dir: &FileHandle, name: &[u8], target: &[u8]) -> Served {
        let name = component(name, libc::EEXIST)?;
        if target.is_empty() {
            return Err(Errno(libc::ENOENT).into());
        }
        if target.len() > MAX_PATH_LEN {
            return Err(Errno(libc::ENAMETOOLONG).into());
        }
        let target = path_cstring(target)?;
        let dir = self.open_dir(dir, libc::O_PATH)?;
        sys::symlinkat(&target, dir.as_fd(), &name)?;
        let fd = sys::openat(dir.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        self.found(fd.as_fd())
    }

    pub fn readlink(&self, handle: &FileHandle) -> Served {
        let fd = self.open_handle(handle, libc::O_PATH)?;
        let target = sys::readlink(fd.as_fd()).map_err(|e| {
            // readlinkat(fd, "") of anything but a symlink says ENOENT;
            // readlink(2) of a path says EINVAL, which is what clients expect.
            match sys::statx(fd.as_fd()) {
                Ok((attr, _)) if attr.file_type != FileType::Symlink => Errno(libc::EINVAL),
                _ => e,
            }
        })?;
        reply(StorageReply::Target { target })
    }

    pub fn readdir(&self, dir: &FileHandle, cookie: u64, max_bytes: u32) -> Served {
        let fd = self.open_dir(dir, libc::O_RDONLY)?;
        let (attr, _) = sys::statx(fd.as_fd())?;
        let at_root = self.is_root(&attr);
        let budget = max_bytes.min(MAX_READDIR_BYTES) as usize;
        sys::seek_dir(fd.as_fd(), cookie)?;
        let mut entries = Vec::new();
        let mut used = 0;
        let mut buf = Vec::with_capacity(GETDENTS_BUF);
        let mut stream = sys::DirStream::new(fd.as_fd(), buf.spare_capacity_mut());
        while let Some(entry) = stream.next_entry() {
            let mut entry = entry?;
            let need = dirent64_len(entry.name.len());
            if used + need > budget {
                if entries.is_empty() {
                    // getdents64's answer to a buffer too small.
                    return Err(Errno(libc::EINVAL).into());
                }
                return reply(StorageReply::Entries {
                    entries,
                    eof: false,
                });
            }
            used += need;
            // The root's parent is outside the export: `..` there is
            // the root itself, as after chroot.
            if at_root && entry.name == b".." {
                entry.ino = attr.ino;
            }
            entries.push(entry);
        }
        reply(StorageReply::Entries { entries, eof: true })
    }

    /// Whether the caller may open the file for `read` and/or `write`:
    /// the kernel opens it with the caller's credentials (never blocking,
    /// never taking a terminal).
    pub fn open_file(&self, handle: &FileHandle, read: bool, write: bool) -> Served {
        let access = match (read, write) {
            (_, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
        };
        self.open_handle(handle, access | libc::O_NONBLOCK | libc::O_NOCTTY)?;
        reply(StorageReply::Done)
    }

    pub fn statfs(&self, handle: &FileHandle) -> Served {
        let fd = self.open_handle(handle, libc::O_PATH)?;
        reply(StorageReply::FsStat(sys::fstatfs(fd.as_fd())?))
    }

    pub fn access(&self, handle: &FileHandle, mask: u32, credentials: &Credentials) -> Served {
        if credentials.groups.len() > MAX_GROUPS {
            return Err(Failure::BadRequest(format!(
                "access check with {} supplementary groups, over the limit of {MAX_GROUPS}",
                credentials.groups.len()
            )));
        }
        if mask & !(ACCESS_READ | ACCESS_WRITE | ACCESS_EXECUTE) != 0 {
            return Err(Errno(libc::EINVAL).into());
        }
        let fd = self.open_handle(handle, libc::O_PATH)?;
        let (attr, _) = sys::statx(fd.as_fd())?;
        if mask & ACCESS_WRITE != 0
            && matches!(
                attr.file_type,
                FileType::Regular | FileType::Directory | FileType::Symlink
            )
            && sys::fstatfs(fd.as_fd())?.flags & ST_RDONLY != 0
        {
            return Err(Errno(libc::EROFS).into());
        }
        if permitted(&attr, mask, credentials) {
            reply(StorageReply::Done)
        } else {
            Err(Errno(libc::EACCES).into())
        }
    }
}

/// Gives a file just created exactly the permission bits asked for: the
/// client has applied the application's umask already, and the storage
/// manager's own umask must not apply a second time. A setgid bit the
/// directory passed on is kept.
fn exact_mode(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Failure> {
    let (attr, _) = sys::statx(fd)?;
    if attr.mode & 0o777 != mode & 0o777 || attr.mode & 0o7000 & !libc::S_ISGID != mode & 0o7000 {
        sys::chmod(fd, (attr.mode & libc::S_ISGID) | (mode & 0o7777))?;
    }
    Ok(())
}

/// A `Setattr` time as `utimensat` takes it.
fn utime(time: Option<SetTime>) -> Result<libc::timespec, Failure> {
    Ok(match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => {
            if t.nsec >= 1_000_000_000 {
                return Err(Errno(libc::EINVAL).into());
            }
            libc::timespec {
                tv_sec: t.sec,
                tv_nsec: i64::from(t.nsec),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        assert!(matches!(component(b"", 0), Err(Failure::BadRequest(_))));
        assert!(matches!(component(b"a/b", 0), Err(Failure::BadRequest(_))));
        assert!(matches!(component(b"a\0", 0), Err(Failure::BadRequest(_))));
        assert!(matches!(
            component(b"..", libc::EEXIST),
            Err(Failure::Errno(Errno(libc::EEXIST)))
        ));
        assert!(matches!(
            component(&[b'x'; 256], 0),
            Err(Failure::Errno(Errno(libc::ENAMETOOLONG)))
        ));
        assert!(component(&[b'x'; 255], 0).is_ok());
    }
}
