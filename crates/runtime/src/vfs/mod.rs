//! The runtime's virtual file system: the program's files live on a
//! storage manager, and an open file is a handle, an offset and flags held
//! in the file table ([`files`], which also holds the files the runtime
//! serves itself, with or without a storage manager), with no open state
//! on the server.
//!
//! Descriptor numbers stay the host kernel's: opening a storage file claims
//! a placeholder host descriptor (a private, sealed memfd) whose number the program
//! sees, so pipes, sockets and terminals (host objects, passed through)
//! and storage files share one numbering, `dup`/`fcntl(F_DUPFD)`/`close`
//! keep working on the number, and close-on-exec rides on the placeholder's
//! own flag. `/dev`, `/proc` and `/sys` are the processor's (as LegoOS's
//! processor served them); everything else is the storage manager's.

pub mod files;
pub mod offset;
pub mod path;
pub mod storage;

pub use files::{Entry, FileTable, OpenFile};

use crate::error::SysError;
use lego_proto::{Errno, FileAttr, FileHandle, FileType, StorageRequest};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, MutexGuard};
use storage::{RemoteStorage, StorageError, StorageResult};

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
}

/// The working directory and the storage connection held across a fork
/// (see `syscall::fork`).
pub struct VfsHold<'a> {
    _cwd: MutexGuard<'a, Cwd>,
    pub storage: lego_transport::ClientHold<'a>,
}

impl Vfs {
    /// Holds the working directory and the storage connection across a
    /// fork, so the forked process finds them free.
    pub fn hold_for_fork(&self) -> VfsHold<'_> {
        VfsHold {
            _cwd: lock(&self.cwd),
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
        })
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
}
