//! The runtime's virtual file system: the program's files live on a
//! storage manager, and an open file is a handle, an offset and flags held
//! here, with no open state on the server.
//!
//! Descriptor numbers stay the host kernel's: opening a storage file claims
//! a placeholder host descriptor (`/dev/null`) whose number the program
//! sees, so pipes, sockets and terminals (host objects, passed through)
//! and storage files share one numbering, `dup`/`fcntl(F_DUPFD)`/`close`
//! keep working on the number, and close-on-exec rides on the placeholder's
//! own flag. `/dev`, `/proc` and `/sys` are the processor's (as LegoOS's
//! processor served them); everything else is the storage manager's.

pub mod offset;
pub mod path;
pub mod storage;

use crate::error::SysError;
use lego_proto::{Errno, FileAttr, FileHandle, FileType, StorageRequest};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use storage::{RemoteStorage, StorageError, StorageResult};

/// A directory entry the runtime makes up: name and type.
pub type Entry = (Vec<u8>, FileType);

/// An open storage file.
pub struct OpenFile {
    pub handle: FileHandle,
    pub file_type: FileType,
    /// Absolute path it was opened by (for `*at` calls relative to it).
    pub path: Vec<u8>,
    /// Access mode and status flags (`O_ACCMODE | O_APPEND | O_NONBLOCK ...`).
    pub status: AtomicU32,
    /// Shared by every descriptor duplicated from the same open, and with
    /// the processes forked since (see `offset`).
    pub offset: offset::Offset,
    /// Where `getdents64` goes on.
    pub dir_cookie: Mutex<u64>,
    /// A file the runtime serves itself (`/proc/self/maps` and the like):
    /// its contents, fixed when it was opened. Its handle is empty.
    pub content: Option<Arc<Vec<u8>>>,
    /// A directory the runtime serves itself (`/proc/self/fd`): its
    /// entries, fixed when it was opened.
    pub listing: Option<Arc<Vec<Entry>>>,
}

impl OpenFile {
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Relaxed)
    }

    pub fn readable(&self) -> bool {
        self.status() & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32
            && self.status() & libc::O_PATH as u32 == 0
    }

    pub fn writable(&self) -> bool {
        let mode = self.status() & libc::O_ACCMODE as u32;
        (mode == libc::O_WRONLY as u32 || mode == libc::O_RDWR as u32)
            && self.status() & libc::O_PATH as u32 == 0
    }
}

/// The working directory: its absolute path, and its handle when it is a
/// storage directory (`None`: a host directory such as `/proc`).
pub struct Cwd {
    pub path: Vec<u8>,
    pub handle: Option<FileHandle>,
}

pub struct Vfs {
    pub storage: RemoteStorage,
    pub root: FileHandle,
    cwd: Mutex<Cwd>,
    files: Mutex<HashMap<i32, Arc<OpenFile>>>,
}

/// The file table held across a fork (see `syscall::fork`).
pub struct VfsHold<'a> {
    _cwd: MutexGuard<'a, Cwd>,
    _files: MutexGuard<'a, HashMap<i32, Arc<OpenFile>>>,
    pub storage: lego_transport::ClientHold<'a>,
}

impl Vfs {
    /// Holds the working directory, the file table and the storage
    /// connection across a fork, so the forked process finds them free.
    pub fn hold_for_fork(&self) -> VfsHold<'_> {
        VfsHold {
            _cwd: lock(&self.cwd),
            _files: lock(&self.files),
            storage: self.storage.hold_for_fork(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain tables; a panic ends the runtime (see `fatal`), so a poisoned
    // lock is never seen by a survivor.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vfs {
    /// Connects to the storage manager and enters `cwd` (the export root if
    /// it does not exist there).
    pub fn new(storage: RemoteStorage, cwd: &[u8]) -> StorageResult<Vfs> {
        // Before any fork: the processes of one tree share the offsets.
        offset::init();
        let (root, _) = storage.found(StorageRequest::Root)?;
        let cwd_path = path::normalize(b"/", cwd);
        let cwd = if path::is_host(&cwd_path) {
            Cwd {
                path: cwd_path,
                handle: None,
            }
        } else {
            match storage.found(StorageRequest::Lookup {
                dir: root.clone(),
                path: cwd_path.clone(),
                follow: true,
            }) {
                Ok((handle, attr)) if attr.file_type == FileType::Directory => Cwd {
                    path: cwd_path,
                    handle: Some(handle),
                },
                Ok(_) | Err(StorageError::Errno(_)) => Cwd {
                    path: b"/".to_vec(),
                    handle: Some(root.clone()),
                },
                Err(lost) => return Err(lost),
            }
        };
        Ok(Vfs {
            storage,
            root,
            cwd: Mutex::new(cwd),
            files: Mutex::new(HashMap::new()),
        })
    }

    /// The storage file behind descriptor argument `fd` (its low 32 bits,
    /// as the kernel reads it).
    pub fn file(&self, fd: u64) -> Option<Arc<OpenFile>> {
        lock(&self.files).get(&(fd as u32 as i32)).cloned()
    }

    pub fn insert(&self, fd: i32, file: Arc<OpenFile>) {
        lock(&self.files).insert(fd, file);
    }

    pub fn remove(&self, fd: i32) -> Option<Arc<OpenFile>> {
        lock(&self.files).remove(&fd)
    }

    /// Descriptors of open storage files, for close_range and exec.
    pub fn fds(&self) -> Vec<i32> {
        lock(&self.files).keys().copied().collect()
    }

    pub fn cwd(&self) -> MutexGuard<'_, Cwd> {
        lock(&self.cwd)
    }

    /// The first `max` bytes of the regular file at `path` (relative to
    /// the working directory; all of it if shorter), and its attributes;
    /// a host path is read from the processor's files. A lost storage
    /// manager is a fault of the runtime (`SysError::Fatal`).
    pub fn read_file(
        &self,
        path: &[u8],
        max: usize,
    ) -> Result<(Vec<u8>, Option<FileAttr>), SysError> {
        let abs = path::normalize(&self.cwd().path, path);
        if path::is_host(&abs) {
            let mut bytes = Vec::new();
            std::fs::File::open(std::ffi::OsStr::from_bytes(&abs))
                .and_then(|f| f.take(max as u64).read_to_end(&mut bytes))
                .map_err(Errno::from)?;
            return Ok((bytes, None));
        }
        let (handle, attr) = self.storage.found(StorageRequest::Lookup {
            dir: self.root.clone(),
            path: abs,
            follow: true,
        })?;
        if attr.file_type != FileType::Regular {
            return Err(Errno::EACCES.into());
        }
        let mut out = Vec::with_capacity((attr.size as usize).min(max));
        loop {
            let (reply, data) = self.storage.call(
                StorageRequest::Read {
                    handle: handle.clone(),
                    offset: out.len() as u64,
                    len: lego_proto::MAX_READ_LEN,
                },
                &[],
            )?;
            let eof = matches!(reply, lego_proto::StorageReply::Data { eof: true });
            let wanted = (max - out.len()).min(data.len());
            out.extend_from_slice(&data[..wanted]);
            if data.is_empty() || eof || out.len() == max {
                break;
            }
        }
        Ok((out, Some(attr)))
    }

    /// Opens `handle` as a new descriptor: claims a placeholder host
    /// descriptor (close-on-exec as asked) and records the file under its
    /// number.
    pub fn open_handle(
        &self,
        handle: FileHandle,
        attr: &FileAttr,
        abs: Vec<u8>,
        flags: u32,
    ) -> Result<i32, Errno> {
        self.open_file(handle, attr.file_type, abs, flags, None, None)
    }

    fn open_file(
        &self,
        handle: FileHandle,
        file_type: FileType,
        abs: Vec<u8>,
        flags: u32,
        content: Option<Vec<u8>>,
        listing: Option<Vec<Entry>>,
    ) -> Result<i32, Errno> {
        let cloexec = flags & libc::O_CLOEXEC as u32;
        // Safety: opening /dev/null, a path of ours, for its number only.
        let fd = unsafe {
            crate::host::raw_syscall(
                libc::SYS_open as u64,
                [
                    c"/dev/null".as_ptr() as u64,
                    (libc::O_RDWR as u32 | cloexec) as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            )
        };
        if fd < 0 {
            return Err(Errno(-fd as i32));
        }
        let keep = libc::O_ACCMODE as u32
            | libc::O_APPEND as u32
            | libc::O_NONBLOCK as u32
            | libc::O_PATH as u32
            | libc::O_DIRECTORY as u32
            | libc::O_NOATIME as u32
            | libc::O_DIRECT as u32
            | libc::O_SYNC as u32;
        self.insert(
            fd as i32,
            Arc::new(OpenFile {
                handle,
                file_type,
                path: abs,
                status: AtomicU32::new(flags & keep),
                offset: offset::Offset::new(),
                dir_cookie: Mutex::new(0),
                content: content.map(Arc::new),
                listing: listing.map(Arc::new),
            }),
        );
        Ok(fd as i32)
    }

    /// Opens a file the runtime serves itself, with these contents.
    pub fn open_content(&self, abs: Vec<u8>, content: Vec<u8>, flags: u32) -> Result<i32, Errno> {
        let flags = (flags & !(libc::O_ACCMODE as u32)) | libc::O_RDONLY as u32;
        self.open_file(
            FileHandle(Vec::new()),
            FileType::Regular,
            abs,
            flags,
            Some(content),
            None,
        )
    }

    /// Opens a directory the runtime serves itself, with these entries.
    pub fn open_listing(
        &self,
        abs: Vec<u8>,
        entries: Vec<Entry>,
        flags: u32,
    ) -> Result<i32, Errno> {
        let flags = (flags & !(libc::O_ACCMODE as u32)) | libc::O_RDONLY as u32;
        self.open_file(
            FileHandle(Vec::new()),
            FileType::Directory,
            abs,
            flags,
            None,
            Some(entries),
        )
    }
}
