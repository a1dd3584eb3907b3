//! The exported tree: turning handles into descriptors and back, and
//! walking paths, all confined to the export root.
//!
//! # Confinement
//!
//! Every path a client sends is resolved by `openat2` from the root
//! descriptor with `RESOLVE_IN_ROOT`: `..` at the root stays at the root and
//! an absolute symlink target starts from it, exactly as if the process had
//! chrooted into the export. `RESOLVE_NO_MAGICLINKS` keeps `/proc/*/fd/*`
//! and friends (reachable when `/` is exported) from jumping out. Handles
//! are authenticated (see [`crate::handle`]), so they name only files this
//! export handed out; a directory handle is additionally checked to still
//! lie inside the export, since every walk starts from one.
//!
//! # Mounts
//!
//! Exporting `/` crosses into /proc, /sys, /dev, tmpfs mounts and the like.
//! A kernel handle carries the id of its mount; decoding one needs a
//! descriptor on that mount, found through /proc/self/mountinfo and cached
//! (the cache is rebuilt on demand, so it is not state a restart loses).

use crate::acting;
use crate::handle::{HandleBody, HandleError, HandleKey};
use crate::sys::{self, Errno};
use crate::Failure;
use lego_proto::{FileAttr, FileHandle, FileType, MAX_PATH_LEN};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tracing::{info, warn};

/// Resolution rules for every client-supplied path.
const CONFINED: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// How often a walk is retried when `openat2` reports a concurrent rename
/// (`EAGAIN` under `RESOLVE_IN_ROOT`).
const WALK_RETRIES: usize = 8;

/// Most mounts whose descriptors are kept open.
const MAX_CACHED_MOUNTS: usize = 4096;

pub struct Export {
    root: PathBuf,
    root_fd: OwnedFd,
    /// Device and inode of the root, to recognise it in directory listings.
    root_id: (u64, u64),
    key: HandleKey,
    /// False without `CAP_DAC_READ_SEARCH`: every handle is then a path
    /// handle.
    kernel_handles: bool,
    mounts: Mutex<HashMap<i32, Arc<OwnedFd>>>,
    /// Files never served, by device and inode (the cluster's secret).
    hidden: Vec<(u64, u64)>,
    /// Directories never served, nor anything in them, by canonical path
    /// (the cluster's state directory).
    hidden_dirs: Vec<Vec<u8>>,
}

impl Export {
    /// Opens the export rooted at the canonical directory `root`.
    pub fn open(root: &Path, secret: &[u8]) -> std::io::Result<Export> {
        let c_root = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let root_fd = sys::openat2(cwd(), &c_root, libc::O_PATH | libc::O_DIRECTORY, 0, 0)
            .map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
        // Before any thread acts for a caller.
        sys::open_proc_fd_dir().map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
        let (attr, _) =
            sys::statx(root_fd.as_fd()).map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
        let kernel_handles = probe_kernel_handles(&c_root);
        if !kernel_handles {
            info!(
                "no CAP_DAC_READ_SEARCH: {} is served with path handles, which go stale on rename",
                root.display()
            );
        }
        Ok(Export {
            root: root.to_owned(),
            root_fd,
            root_id: (attr.dev, attr.ino),
            key: HandleKey::derive(secret, root.as_os_str().as_bytes()),
            kernel_handles,
            mounts: Mutex::new(HashMap::new()),
            hidden: Vec::new(),
            hidden_dirs: Vec::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root_fd.as_fd()
    }

    /// True if `attr` is the export root's.
    pub fn is_root(&self, attr: &FileAttr) -> bool {
        (attr.dev, attr.ino) == self.root_id
    }

    /// The handle of the file `fd` refers to (`attr` is its statx).
    pub fn handle_of(&self, fd: BorrowedFd<'_>, attr: &FileAttr) -> Result<FileHandle, Failure> {
        self.check_hidden(fd)?;
        if self.kernel_handles {
            // EOPNOTSUPP (procfs, sysfs, ...) and EOVERFLOW (a handle over
            // 128 bytes) fall back to a path handle; so does anything else,
            // since a path handle is always possible.
            // The mount must be reachable too, or the handle could not be
            // decoded (a mount hidden under another, or on a file).
            if let Some(kernel) = sys::name_to_handle(fd)
                .ok()
                .filter(|kernel| acting::as_server(|| self.mount(kernel.mount_id)).is_ok())
            {
                return Ok(self.key.encode(&HandleBody::Kernel {
                    mount_id: kernel.mount_id,
                    handle_type: kernel.handle_type,
                    bytes: kernel.bytes,
                }));
            }
        }
        let path = self.relative_path(fd)?;
        if path.len() > MAX_PATH_LEN {
            return Err(Errno(libc::ENAMETOOLONG).into());
        }
        Ok(self.key.encode(&HandleBody::Path {
            dev: attr.dev,
            ino: attr.ino,
            path,
        }))
    }

    /// Opens the file `handle` names with `flags` (`O_PATH`, or an access
    /// mode). A handle that fails authentication is a bad request; one whose
    /// file is gone is `ESTALE`. Decoding the handle takes the server's own
    /// rights; opening the file for reading or writing then takes the
    /// caller's, so the kernel checks the caller's access to it.
    pub fn open_handle(&self, handle: &FileHandle, flags: i32) -> Result<OwnedFd, Failure> {
        let body = self.key.decode(handle).map_err(|e| bad_handle(&e))?;
        let flags = if flags & libc::O_PATH != 0 {
            flags
        } else {
            // Never block the server on a FIFO, never acquire a terminal.
            flags | libc::O_NONBLOCK | libc::O_NOCTTY
        };
        if !acting::acting() {
            return self.open_body(body, flags);
        }
        let fd =
            acting::as_server(|| self.open_body(body, libc::O_PATH | (flags & libc::O_DIRECTORY)))?;
        if flags & libc::O_PATH != 0 {
            return Ok(fd);
        }
        if sys::statx(fd.as_fd())?.0.file_type == FileType::Symlink {
            return Err(Errno(libc::ELOOP).into());
        }
        // Reopening through /proc/self/fd reaches this very inode, with
        // the permission check made for whom this thread acts. The owner
        // may read and write its file whatever its mode says, as knfsd's
        // owner override: a program writes through a descriptor it opened
        // before making its file read-only (git's 0444 objects).
        let (fds, entry) = sys::proc_fd(fd.as_fd());
        match sys::openat2(fds, &entry, flags, 0, 0) {
            Err(Errno(libc::EACCES)) if acting::owns(&sys::statx(fd.as_fd())?.0) => {
                Ok(acting::as_server(|| {
                    sys::openat2(fds, &entry, flags, 0, 0)
                })?)
            }
            other => Ok(other?),
        }
    }

    fn open_body(&self, body: HandleBody, flags: i32) -> Result<OwnedFd, Failure> {
        match body {
            HandleBody::Kernel {
                mount_id,
                handle_type,
                bytes,
            } => {
                let mount = self.mount(mount_id)?;
                sys::open_by_handle(mount.as_fd(), handle_type, &bytes, flags).map_err(|e| {
                    // The file was deleted (ESTALE), or the handle bytes are
                    // ones this kernel no longer understands.
                    match e.0 {
                        libc::EINVAL | libc::ENOENT => Errno(libc::ESTALE).into(),
                        _ => e.into(),
                    }
                })
            }
            HandleBody::Path { dev, ino, path } => {
                let c_path = path_cstring(if path.is_empty() { b"." } else { &path })?;
                // Resolve to the file itself first, so that a missing path
                // (stale) is told apart from a file of the wrong type.
                let fd = self
                    .resolve(&c_path, libc::O_PATH | libc::O_NOFOLLOW)
                    .map_err(|e| match e.0 {
                        libc::ENOENT | libc::ENOTDIR => Errno(libc::ESTALE),
                        _ => e,
                    })?;
                let (attr, _) = sys::statx(fd.as_fd())?;
                // Something else now lives at the path.
                if (attr.dev, attr.ino) != (dev, ino) {
                    return Err(Errno(libc::ESTALE).into());
                }
                if flags & libc::O_DIRECTORY != 0 && attr.file_type != FileType::Directory {
                    return Err(Errno(libc::ENOTDIR).into());
                }
                if flags & libc::O_PATH != 0 {
                    return Ok(fd);
                }
                if attr.file_type == FileType::Symlink {
                    return Err(Errno(libc::ELOOP).into());
                }
                // Reopening through /proc/self/fd reaches this very inode,
                // whatever happens to the path meanwhile.
                let (fds, entry) = sys::proc_fd(fd.as_fd());
                Ok(sys::openat2(fds, &entry, flags, 0, 0)?)
            }
        }
    }

    /// Opens a directory handle (`ENOTDIR` otherwise), checking that the
    /// directory still lies inside the export (`ESTALE` once moved out).
    pub fn open_dir(&self, handle: &FileHandle, flags: i32) -> Result<OwnedFd, Failure> {
        let fd = self.open_handle(handle, flags | libc::O_DIRECTORY)?;
        self.relative_path(fd.as_fd())?;
        Ok(fd)
    }

    /// Walks `path` from the directory `dir` inside the export (see
    /// `StorageRequest::Lookup`) and returns an `O_PATH` descriptor.
    pub fn walk(&self, dir: BorrowedFd<'_>, path: &[u8], follow: bool) -> Result<OwnedFd, Failure> {
        let full = if path.first() == Some(&b'/') {
            path.to_vec()
        } else {
            let mut full = self.relative_path(dir)?;
            if !path.is_empty() {
                if !full.is_empty() {
                    full.push(b'/');
                }
                full.extend_from_slice(path);
            }
            if full.is_empty() {
                full.push(b'.');
            }
            full
        };
        if full.len() > MAX_PATH_LEN {
            return Err(Errno(libc::ENAMETOOLONG).into());
        }
        let c_path = path_cstring(&full)?;
        let flags = libc::O_PATH | if follow { 0 } else { libc::O_NOFOLLOW };
        let fd = self.resolve(&c_path, flags)?;
        self.check_hidden(fd.as_fd())?;
        Ok(fd)
    }

    /// EACCES for a hidden file (by any name or link to it) or anything in
    /// a hidden directory: checked wherever a handle is made or a path
    /// walked, so no request reaches them.
    pub fn check_hidden(&self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        if !self.hidden.is_empty() {
            let (attr, _) = sys::statx(fd)?;
            if self.hidden.contains(&(attr.dev, attr.ino)) {
                return Err(Errno(libc::EACCES));
            }
        }
        if !self.hidden_dirs.is_empty() {
            let path = sys::fd_path(fd)?;
            let inside = |dir: &Vec<u8>| {
                path.strip_prefix(dir.as_slice())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
            };
            if self.hidden_dirs.iter().any(inside) {
                return Err(Errno(libc::EACCES));
            }
        }
        Ok(())
    }

    /// Never serves the file at `path` (by any name), if it exists.
    pub fn hide(&mut self, path: &std::path::Path) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata(path) {
            self.hidden.push((meta.dev(), meta.ino()));
        }
    }

    /// Never serves the directory at `path` nor anything in it.
    pub fn hide_dir(&mut self, path: &std::path::Path) {
        if let Ok(canonical) = path.canonicalize() {
            self.hidden_dirs
                .push(canonical.into_os_string().into_encoded_bytes());
        }
    }

    /// `openat2` from the root under the confinement rules.
    fn resolve(&self, path: &CString, flags: i32) -> Result<OwnedFd, Errno> {
        let mut tries = 0;
        loop {
            match sys::openat2(self.root_fd(), path, flags, 0, CONFINED) {
                Err(Errno(libc::EAGAIN)) if tries < WALK_RETRIES => tries += 1,
                other => return other,
            }
        }
    }

    /// The path of `fd` relative to the export root (empty for the root),
    /// or `ESTALE` if the file is not reachable inside the export any more.
    pub fn relative_path(&self, fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
        let path = sys::fd_path(fd)?;
        let root = self.root.as_os_str().as_bytes();
        let rest = if root == b"/" {
            path.strip_prefix(b"/")
        } else {
            path.strip_prefix(root).and_then(|rest| match rest.first() {
                None => Some(rest),
                Some(b'/') => Some(&rest[1..]),
                Some(_) => None,
            })
        };
        match rest {
            Some(rest) => Ok(rest.to_vec()),
            None => Err(Errno(libc::ESTALE)),
        }
    }

    /// A descriptor on mount `mount_id`, for `open_by_handle_at`.
    fn mount(&self, mount_id: i32) -> Result<Arc<OwnedFd>, Failure> {
        let mut mounts = self.mounts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fd) = mounts.get(&mount_id) {
            return Ok(Arc::clone(fd));
        }
        let fd = Arc::new(open_mount(mount_id)?);
        if mounts.len() >= MAX_CACHED_MOUNTS {
            mounts.clear();
        }
        mounts.insert(mount_id, Arc::clone(&fd));
        Ok(fd)
    }
}

/// Whether `open_by_handle_at` works for us: encode the root's handle and
/// decode it again. Only `EPERM` (no `CAP_DAC_READ_SEARCH`) turns kernel
/// handles off; a root on a file system without handles (an export of
/// /proc) says nothing about the mounts below it, and `handle_of` falls
/// back file by file anyway.
fn probe_kernel_handles(root: &CString) -> bool {
    // open_by_handle_at wants a real descriptor on the mount, not O_PATH.
    let Ok(mount) = sys::openat2(cwd(), root, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0) else {
        return true;
    };
    let Ok(kernel) = sys::name_to_handle(mount.as_fd()) else {
        return true;
    };
    !matches!(
        sys::open_by_handle(
            mount.as_fd(),
            kernel.handle_type,
            &kernel.bytes,
            libc::O_PATH
        ),
        Err(Errno(libc::EPERM))
    )
}

fn cwd() -> BorrowedFd<'static> {
    // Safety: AT_FDCWD is a constant the kernel reads as "the working
    // directory"; it is never closed.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

fn bad_handle(e: &HandleError) -> Failure {
    if matches!(e, HandleError::Forged) {
        warn!("refused a forged or foreign file handle");
    }
    Failure::BadRequest(e.to_string())
}

/// A path as a C string; a NUL inside is protocol misuse.
pub fn path_cstring(path: &[u8]) -> Result<CString, Failure> {
    CString::new(path).map_err(|_| Failure::BadRequest("a path contains a NUL byte".into()))
}

/// Opens the mount point of `mount_id` from /proc/self/mountinfo and checks
/// that the mount reached there is that one (not one mounted over it).
fn open_mount(mount_id: i32) -> Result<OwnedFd, Failure> {
    let stale = || Failure::Errno(Errno(libc::ESTALE));
    let table = std::fs::read("/proc/self/mountinfo").map_err(|_| stale())?;
    let point = mount_point(&table, mount_id).ok_or_else(stale)?;
    let c_point = CString::new(point).map_err(|_| stale())?;
    // open_by_handle_at refuses an O_PATH mount descriptor (EBADF). A mount
    // on a file rather than a directory is never opened: that could be a
    // device; its files get path handles instead.
    let fd = sys::openat2(cwd(), &c_point, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0)
        .map_err(|_| stale())?;
    let (_, found) = sys::statx(fd.as_fd())?;
    if found != mount_id as u64 {
        warn!(
            mount_id,
            "mount is hidden under another mount; its handles are stale"
        );
        return Err(stale());
    }
    Ok(fd)
}

/// The mount point of `mount_id` in a mountinfo table, unescaped.
pub fn mount_point(table: &[u8], mount_id: i32) -> Option<Vec<u8>> {
    let id = mount_id.to_string();
    table.split(|&b| b == b'\n').find_map(|line| {
        let mut fields = line.split(|&b| b == b' ');
        if fields.next()? != id.as_bytes() {
            return None;
        }
        // id parent major:minor root mount-point ...
        Some(unescape(fields.nth(3)?))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_unescaped_mount_points() {
        let table = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                      40 31 0:37 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_point(table, 22), Some(b"/proc".to_vec()));
        assert_eq!(mount_point(table, 40), Some(b"/mnt/with space".to_vec()));
        assert_eq!(mount_point(table, 2), None);
        assert_eq!(unescape(b"a\\"), b"a\\".to_vec());
        assert_eq!(unescape(b"a\\04"), b"a\\04".to_vec());
    }
}
