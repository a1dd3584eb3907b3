//! The file table: every descriptor whose open file the runtime keeps
//! (storage files, and the files and directories it serves itself, such
//! as /proc/self/maps), by number. Descriptor numbers stay the host
//! kernel's: each entry holds a placeholder host descriptor (an empty,
//! sealed memfd of its own) whose number the program sees, so `dup`, `close` and close-on-exec
//! work on it as on any descriptor. The table does not depend on where
//! the program's files come from.
//!
//! May call: `host`, `vfs::offset`.

use super::offset;
use lego_proto::{Errno, FileAttr, FileHandle, FileType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// The storage manager's voucher for this open file: its reads,
    /// writes and size changes act with the credentials it was opened
    /// with, as a descriptor's do (`None`: the process's own of now).
    pub opened: Option<lego_proto::Voucher>,
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

/// A new placeholder descriptor, close-on-exec if asked: an empty memfd
/// of its own, sealed, so that nothing a program does to it (through
/// `/proc/self/fd/N`, `flock`, a write that slipped past the table) can
/// reach an object another program or the host uses, or grow.
fn placeholder(cloexec: bool) -> Result<i32, Errno> {
    const MFD_CLOEXEC: u64 = 1;
    const MFD_ALLOW_SEALING: u64 = 2;
    let flags = MFD_ALLOW_SEALING | if cloexec { MFD_CLOEXEC } else { 0 };
    // Safety: memfd_create reads our NUL-terminated name.
    let fd = unsafe {
        crate::host::raw_syscall(
            libc::SYS_memfd_create as u64,
            [c"lego-file".as_ptr() as u64, flags, 0, 0, 0, 0],
        )
    };
    if fd < 0 {
        return Err(Errno(-fd as i32));
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // Safety: fcntl on the descriptor just made.
    let sealed = unsafe {
        crate::host::raw_syscall(
            libc::SYS_fcntl as u64,
            [fd as u64, libc::F_ADD_SEALS as u64, seals as u64, 0, 0, 0],
        )
    };
    if sealed < 0 {
        // Safety: closes the descriptor just made, ours alone.
        unsafe { crate::host::raw_syscall(libc::SYS_close as u64, [fd as u64, 0, 0, 0, 0, 0]) };
        return Err(Errno(-sealed as i32));
    }
    Ok(fd as i32)
}

/// Open files by descriptor number.
#[derive(Default)]
pub struct FileTable {
    files: Mutex<HashMap<i32, Arc<OpenFile>>>,
}

/// The file table held across a fork (see `syscall::fork`).
pub struct FilesHold<'a> {
    _files: MutexGuard<'a, HashMap<i32, Arc<OpenFile>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A plain table; a panic ends the runtime (see `fatal`), so a poisoned
    // lock is never seen by a survivor.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileTable {
    /// Holds the table across a fork, so the forked process finds it free.
    pub fn hold_for_fork(&self) -> FilesHold<'_> {
        FilesHold {
            _files: lock(&self.files),
        }
    }

    /// The open file behind descriptor argument `fd` (its low 32 bits, as
    /// the kernel reads it).
    pub fn get(&self, fd: u64) -> Option<Arc<OpenFile>> {
        lock(&self.files).get(&(fd as u32 as i32)).cloned()
    }

    pub fn insert(&self, fd: i32, file: Arc<OpenFile>) {
        lock(&self.files).insert(fd, file);
    }

    pub fn remove(&self, fd: i32) -> Option<Arc<OpenFile>> {
        lock(&self.files).remove(&fd)
    }

    /// Descriptors in the table, for close_range and exec.
    pub fn fds(&self) -> Vec<i32> {
        lock(&self.files).keys().copied().collect()
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
        opened: Option<lego_proto::Voucher>,
    ) -> Result<i32, Errno> {
        self.open_file(handle, attr.file_type, abs, flags, (None, None), opened)
    }

    fn open_file(
        &self,
        handle: FileHandle,
        file_type: FileType,
        abs: Vec<u8>,
        flags: u32,
        (content, listing): (Option<Vec<u8>>, Option<Vec<Entry>>),
        opened: Option<lego_proto::Voucher>,
    ) -> Result<i32, Errno> {
        let fd = placeholder(flags & libc::O_CLOEXEC as u32 != 0)?;
        let keep = libc::O_ACCMODE as u32
            | libc::O_APPEND as u32
            | libc::O_NONBLOCK as u32
            | libc::O_PATH as u32
            | libc::O_DIRECTORY as u32
            | libc::O_NOATIME as u32
            | libc::O_DIRECT as u32
            | libc::O_SYNC as u32;
        self.insert(
            fd,
            Arc::new(OpenFile {
                handle,
                file_type,
                path: abs,
                status: AtomicU32::new(flags & keep),
                offset: offset::Offset::new(),
                dir_cookie: Mutex::new(0),
                content: content.map(Arc::new),
                listing: listing.map(Arc::new),
                opened,
            }),
        );
        Ok(fd)
    }

    /// Opens a file the runtime serves itself, with these contents.
    pub fn open_content(&self, abs: Vec<u8>, content: Vec<u8>, flags: u32) -> Result<i32, Errno> {
        let flags = (flags & !(libc::O_ACCMODE as u32)) | libc::O_RDONLY as u32;
        self.open_file(
            FileHandle(Vec::new()),
            FileType::Regular,
            abs,
            flags,
            (Some(content), None),
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
            (None, Some(entries)),
            None,
        )
    }
}
