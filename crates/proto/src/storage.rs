//! Types of the storage protocol: a client (a processor's runtime, a tool)
//! asking a storage manager to act on files of its export, NFS style.
//!
//! # Statelessness
//!
//! The storage manager keeps no per-client and no per-open state. A client
//! names every file by an opaque [`FileHandle`] the server gave it, and every
//! request carries everything it needs: an open file on the client is a
//! handle, an offset and flags, and `read(fd)` becomes
//! `Read { handle, offset, len }`. Handles stay valid across a restart of
//! the storage manager on the same export with the same cluster secret, so
//! a client that loses its connection reconnects and resends.
//!
//! # Calling convention
//!
//! A request is `Message::Storage { request, caller }`. The reply is one of:
//!
//! - `Message::StorageDone(StorageReply)`: success; which [`StorageReply`]
//!   variant answers which request is stated on each request.
//! - `Message::StorageFailed { errno }`: the operation failed as Linux would
//!   fail it (x86-64 errno values: `ENOENT`, `EACCES`, `ENOTDIR`, `EEXIST`,
//!   `ENOTEMPTY`, `EXDEV`, `ELOOP`, `ENAMETOOLONG`, ...); the client returns
//!   it to the application unchanged. `ESTALE` means the handle was valid
//!   once but its file is gone (deleted, or renamed away from a
//!   path-based handle): look the path up again.
//! - `Message::Error` with `ErrorCode::BadRequest`: protocol misuse (a
//!   handle that fails authentication, a name with a `/` or a NUL byte, a
//!   payload on a request that takes none), naming what was wrong.
//!
//! # Permissions
//!
//! A request with a [`Voucher`] is checked and performed with the
//! credentials it vouches for: filesystem uid, gid and groups, set on the
//! serving thread for the request as knfsd does, so the kernel checks
//! every permission and files a process creates belong to it (its fsuid,
//! its fsgid or a setgid directory's group). A runtime's connection
//! (role `Process`) must send its own tree's voucher with every request;
//! components may send none and then act with the server's credentials (an
//! export of a server running as root behaves like NFS's
//! `no_root_squash`). Handles are opened with the server's rights (a handle
//! is proof its holder looked the file up, as in NFS), then used with the
//! caller's. [`StorageRequest::Access`] evaluates the credentials it
//! carries, which must be ones the voucher covers (and gives `EROFS` for
//! writes to a read-only file system).
//!
//! # Confinement
//!
//! Nothing a request names reaches outside the export: paths resolve with
//! the export root as `/` (`..` stops there, absolute symlink targets start
//! there), and handles are authenticated, so a client cannot make one up.

use serde::{Deserialize, Serialize};

/// Longest handle the server issues (and accepts). A kernel handle is at most
/// 128 bytes; a path-based handle holds a path of up to [`MAX_PATH_LEN`].
pub const MAX_HANDLE_LEN: usize = MAX_PATH_LEN + 64;
/// Longest path a request may carry (Linux's `PATH_MAX` less the NUL).
pub const MAX_PATH_LEN: usize = 4095;
/// Longest name of one directory entry (Linux's `NAME_MAX`).
pub const MAX_FILE_NAME_LEN: usize = 255;
/// Most bytes one `Read` returns; a longer read is a short read, as POSIX
/// allows, and the client asks again from where it ended.
pub const MAX_READ_LEN: u32 = crate::MAX_PAYLOAD_LEN as u32;
/// Most bytes one `Write` carries (the frame's payload limit).
pub const MAX_WRITE_LEN: usize = crate::MAX_PAYLOAD_LEN;
/// Largest `Readdir` budget; a larger one is clamped. Bounds the reply
/// header well below `MAX_HEADER_LEN`.
pub const MAX_READDIR_BYTES: u32 = 256 * 1024;
/// Most supplementary groups an `Access` request may carry (`NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65536;

/// An opaque name for one file of the export, issued by the storage manager.
/// Clients compare and store handles but never look inside: the format is
/// the server's business and may change with it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileHandle(pub Vec<u8>);

/// The type of a file (`S_IFMT` of its mode, or `d_type` of a directory
/// entry).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    /// The file system did not say (`DT_UNKNOWN`): ask with `Getattr`.
    Unknown,
}

impl FileType {
    /// The `S_IFMT` bits of a mode, as Linux defines them.
    pub fn from_mode(mode: u32) -> FileType {
        match mode & 0o170000 {
            0o100000 => FileType::Regular,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// The `S_IFMT` bits of this type (0 for `Unknown`).
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => 0o100000,
            FileType::Directory => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
            FileType::Unknown => 0,
        }
    }

    /// The `d_type` value `getdents64` reports for this type.
    pub fn dirent_type(self) -> u8 {
        match self {
            FileType::Fifo => 1,
            FileType::CharDevice => 2,
            FileType::Directory => 4,
            FileType::BlockDevice => 6,
            FileType::Regular => 8,
            FileType::Symlink => 10,
            FileType::Socket => 12,
            FileType::Unknown => 0,
        }
    }
}

/// A point in time, as `struct timespec`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Timespec {
    pub sec: i64,
    /// 0..1_000_000_000.
    pub nsec: u32,
}

/// What `stat` would say about a file, on the storage manager's host.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttr {
    pub file_type: FileType,
    /// Permission bits, setuid, setgid and sticky (`mode & 0o7777`);
    /// `file_type.mode_bits() | mode` is `st_mode`.
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated (`st_blocks`).
    pub blocks: u64,
    /// Preferred I/O size (`st_blksize`).
    pub blksize: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// Device holding the file (`st_dev`, `makedev` encoding).
    pub dev: u64,
    pub ino: u64,
    /// Device a device special file stands for (`st_rdev`).
    pub rdev: u64,
}

/// A time to set with `Setattr` (`utimensat`'s `UTIME_NOW` or a value).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// The storage manager's current time.
    Now,
    At(Timespec),
}

/// The attributes a `Setattr` changes; `None` leaves one as it is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttr {
    /// Truncate or extend to this size (regular files only).
    pub size: Option<u64>,
    /// New permission bits (`& 0o7777`).
    pub mode: Option<u32>,
    /// New owner; `chown` semantics, so setuid/setgid bits may be cleared.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// Whom an `Access` check is for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, at most [`MAX_GROUPS`].
    pub groups: Vec<u32>,
    /// The filesystem capabilities ([`FS_CAPS`]) the check is made with:
    /// the overrides of a process's effective set (of its permitted set
    /// for `access`, when its real uid is 0, as Linux does).
    pub caps: u64,
}

/// Capability bits (`linux/capability.h`).
pub const CAP_CHOWN: u64 = 1 << 0;
pub const CAP_DAC_OVERRIDE: u64 = 1 << 1;
pub const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
pub const CAP_FOWNER: u64 = 1 << 3;
pub const CAP_FSETID: u64 = 1 << 4;
pub const CAP_LINUX_IMMUTABLE: u64 = 1 << 9;
pub const CAP_MKNOD: u64 = 1 << 27;
pub const CAP_MAC_OVERRIDE: u64 = 1 << 32;

/// The capabilities that override file permissions and ownership: the
/// kernel's `CAP_FS_SET`, which it also drops and restores when the
/// filesystem uid leaves or returns to 0. They are the only ones a
/// storage request is performed with.
pub const FS_CAPS: u64 = CAP_CHOWN
    | CAP_DAC_OVERRIDE
    | CAP_DAC_READ_SEARCH
    | CAP_FOWNER
    | CAP_FSETID
    | CAP_LINUX_IMMUTABLE
    | CAP_MKNOD
    | CAP_MAC_OVERRIDE;

/// A process's capability sets, as `/proc/PID/status` shows them
/// (`CapEff`, `CapPrm`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities {
    pub effective: u64,
    pub permitted: u64,
}

impl Capabilities {
    /// What a process of user `uid` starts with natively: all of them for
    /// root, none for anyone else.
    pub fn of_uid(uid: u32) -> Capabilities {
        let all = if uid == 0 { u64::MAX } else { 0 };
        Capabilities {
            effective: all,
            permitted: all,
        }
    }

    /// Only the [`FS_CAPS`] of each set: all a voucher needs to say.
    pub fn fs(self) -> Capabilities {
        Capabilities {
            effective: self.effective & FS_CAPS,
            permitted: self.permitted & FS_CAPS,
        }
    }
}

/// Whom a request acts for: the credentials of a process as its processor
/// read them from the host kernel, sealed by the processor with a key
/// derived from the cluster secret (`ClusterSecret::seal_voucher`), so that
/// neither the process nor anyone else can make one up or change one. The
/// storage manager performs a request that carries one with its
/// filesystem ids and groups, as the kernel would for the process itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Voucher {
    /// The process tree the process belongs to: a runtime's connection
    /// shows only its own tree's vouchers.
    pub tree: u64,
    /// The process it was issued to (0: none, a processor's own lookup
    /// for a guest).
    pub pid: u64,
    /// When its processor issued it and until when it holds, in
    /// milliseconds since the Unix epoch (`expires_ms` 0: for as long as
    /// its scope lasts). A processor issues each voucher later than the
    /// one before, so a newer voucher of the same process supersedes the
    /// older ones, and only a running process gets new ones.
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// What it may be used for.
    pub scope: VoucherScope,
    /// Real, effective, saved and filesystem user ids, as
    /// `/proc/PID/status` lists them.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem group ids.
    pub gids: [u32; 4],
    /// Supplementary groups, at most [`MAX_GROUPS`].
    pub groups: Vec<u32>,
    /// Its filesystem capabilities ([`Capabilities::fs`]): root that
    /// dropped `CAP_DAC_OVERRIDE` is refused what its mode bits refuse.
    pub caps: Capabilities,
    /// The processor's seal over the fields above.
    pub seal: [u8; 32],
}

/// What a voucher may be used for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum VoucherScope {
    /// Every request of its process.
    #[default]
    Process,
    /// Reading one file: what a memory manager holds for a file mapping
    /// it checked at mmap time (a mapping stays readable, as on Linux,
    /// however its process's credentials change later).
    ReadFile(FileHandle),
    /// An open file: reading it (`read`), writing it and changing its
    /// size (`write`), asking its attributes and syncing it; sealed by the
    /// storage manager when the open was allowed (`StorageRequest::Open`).
    OpenFile {
        handle: FileHandle,
        read: bool,
        write: bool,
    },
}

/// How long a process's voucher holds: its runtime gets a new one when
/// half of it has passed, so a voucher stops working at most this long
/// after its process ended.
pub const VOUCHER_LIFETIME_MS: u64 = 120_000;

impl Voucher {
    /// Whether it has run out at `now_ms` (ms since the Unix epoch).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && now_ms >= self.expires_ms
    }

    /// Whether a runtime should get a new one at `now_ms`: half its life
    /// has passed.
    pub fn due(&self, now_ms: u64) -> bool {
        self.expires_ms != 0
            && now_ms >= self.issued_ms + (self.expires_ms.saturating_sub(self.issued_ms)) / 2
    }

    /// The credentials file operations are checked and performed with.
    pub fn fs_credentials(&self) -> Credentials {
        Credentials {
            uid: self.uids[3],
            gid: self.gids[3],
            groups: self.groups.clone(),
            caps: self.caps.effective & FS_CAPS,
        }
    }

    /// The credentials `access(2)` checks with: the real ids, and the
    /// permitted capabilities if the real uid is 0 (none otherwise).
    pub fn access_credentials(&self) -> Credentials {
        Credentials {
            uid: self.uids[0],
            gid: self.gids[0],
            groups: self.groups.clone(),
            caps: if self.uids[0] == 0 {
                self.caps.permitted & FS_CAPS
            } else {
                0
            },
        }
    }

    /// Whether `who` is credentials the process holds: its uid one of its
    /// user ids, its gid one of its group ids, its groups its own, its
    /// capabilities among its permitted ones.
    pub fn covers(&self, who: &Credentials) -> bool {
        self.uids.contains(&who.uid)
            && self.gids.contains(&who.gid)
            && who.groups == self.groups
            && who.caps & !(self.caps.permitted & FS_CAPS) == 0
    }
}

/// One directory entry of a `Readdir` reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub file_type: FileType,
    /// Pass this as `Readdir::cookie` to continue after this entry (it is
    /// the entry's `d_off`, so it also serves `telldir`/`seekdir`).
    pub cookie: u64,
}

/// Figures of the file system holding a file, as `statfs` gives them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStat {
    /// File system magic (`f_type`).
    pub fs_type: u64,
    pub bsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    /// `f_fsid` as one number (`val[0]` in the low half).
    pub fsid: u64,
    pub namelen: u64,
    pub frsize: u64,
    /// Mount flags (`ST_RDONLY`, `ST_NOSUID`, ...).
    pub flags: u64,
}

/// `Rename` flags: Linux's `renameat2` values. Others are refused (`EINVAL`).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// `Access` mask bits: `access(2)`'s values (`F_OK` is 0).
pub const ACCESS_READ: u32 = 4;
pub const ACCESS_WRITE: u32 = 2;
pub const ACCESS_EXECUTE: u32 = 1;

/// A file request. `dir` handles must name directories (`ENOTDIR`); `name`
/// fields are one path component: not empty, not `.` or `..`, no `/` and no
/// NUL, at most [`MAX_FILE_NAME_LEN`] bytes (longer is `ENAMETOOLONG`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum StorageRequest {
    /// The export root (the client's mount). → `Found`.
    Root,
    /// Walks `path` from `dir`: any number of components; an absolute path
    /// starts at the export root. Intermediate symlinks are followed; the
    /// last one only if `follow`. An empty path names `dir`. → `Found`.
    Lookup {
        dir: FileHandle,
        path: Vec<u8>,
        follow: bool,
    },
    /// → `Attr`.
    Getattr { handle: FileHandle },
    /// Changes what `set` names, in the order size, mode, owner, times.
    /// → `Attr` (after the change).
    Setattr { handle: FileHandle, set: SetAttr },
    /// Up to `len` bytes from `offset` (clamped to [`MAX_READ_LEN`]).
    /// → `Data`, the bytes in the frame's payload.
    Read {
        handle: FileHandle,
        offset: u64,
        len: u32,
    },
    /// Writes the frame's payload at `offset` (at the end of the file if
    /// `append`, `offset` ignored). `stable`: fsync before replying.
    /// → `Written`.
    Write {
        handle: FileHandle,
        offset: u64,
        append: bool,
        stable: bool,
    },
    /// Makes earlier writes durable (`fsync`, or `fdatasync` if
    /// `data_only`). → `Done`.
    Commit { handle: FileHandle, data_only: bool },
    /// Creates a regular file (`open(O_CREAT)`). An existing file is
    /// `EEXIST` if `exclusive`, else it is returned (truncated to zero if
    /// `truncate`). A symlink in its place is never followed (`ELOOP`
    /// unless `exclusive`): look it up with `follow` instead. → `Found`.
    Create {
        dir: FileHandle,
        name: Vec<u8>,
        mode: u32,
        exclusive: bool,
        truncate: bool,
    },
    /// → `Found`.
    Mkdir {
        dir: FileHandle,
        name: Vec<u8>,
        mode: u32,
    },
    /// `unlink`: any file but a directory (`EISDIR`). → `Done`.
    Remove { dir: FileHandle, name: Vec<u8> },
    /// An empty directory (`ENOTEMPTY`, `ENOTDIR`). → `Done`.
    Rmdir { dir: FileHandle, name: Vec<u8> },
    /// `renameat2` with `flags` ([`RENAME_NOREPLACE`], [`RENAME_EXCHANGE`]).
    /// Across file systems `EXDEV`. → `Done`.
    Rename {
        from_dir: FileHandle,
        from_name: Vec<u8>,
        to_dir: FileHandle,
        to_name: Vec<u8>,
        flags: u32,
    },
    /// A new name for `handle` in `dir`. → `Found` (the file, its new
    /// link count).
    Link {
        handle: FileHandle,
        dir: FileHandle,
        name: Vec<u8>,
    },
    /// A symlink holding `target` verbatim (an absolute target will resolve
    /// from the export root). → `Found`.
    Symlink {
        dir: FileHandle,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// → `Target`.
    Readlink { handle: FileHandle },
    /// Entries of `dir` after `cookie` (0: from the start), `.` and `..`
    /// included, as many as fit in `max_bytes` counted as `getdents64`
    /// counts them (so a client passes its buffer size); clamped to
    /// [`MAX_READDIR_BYTES`]. A budget too small for the next entry is
    /// `EINVAL`, as in `getdents64`. → `Entries`.
    Readdir {
        dir: FileHandle,
        cookie: u64,
        max_bytes: u32,
    },
    /// The file system holding `handle`. → `FsStat`.
    Statfs { handle: FileHandle },
    /// Would `credentials` be granted `mask` ([`ACCESS_READ`] | ...;
    /// 0 checks existence) on this file? `EACCES` or `EROFS` if not.
    /// → `Done`.
    Access {
        handle: FileHandle,
        mask: u32,
        credentials: Credentials,
    },
    /// Open the file for reading and/or writing, checked by the kernel
    /// with the caller's credentials (as open(2) checks them, ACLs
    /// included). → `Opened`: a voucher for that file's reads, writes and
    /// size changes with the caller's ids of now, which its open file
    /// carries from then on, as a descriptor keeps the access it was
    /// opened with whatever its process's credentials become.
    Open {
        handle: FileHandle,
        read: bool,
        write: bool,
    },
}

impl StorageRequest {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            StorageRequest::Root => "root",
            StorageRequest::Lookup { .. } => "lookup",
            StorageRequest::Getattr { .. } => "getattr",
            StorageRequest::Setattr { .. } => "setattr",
            StorageRequest::Read { .. } => "read",
            StorageRequest::Write { .. } => "write",
            StorageRequest::Commit { .. } => "commit",
            StorageRequest::Create { .. } => "create",
            StorageRequest::Mkdir { .. } => "mkdir",
            StorageRequest::Remove { .. } => "remove",
            StorageRequest::Rmdir { .. } => "rmdir",
            StorageRequest::Rename { .. } => "rename",
            StorageRequest::Link { .. } => "link",
            StorageRequest::Symlink { .. } => "symlink",
            StorageRequest::Readlink { .. } => "readlink",
            StorageRequest::Readdir { .. } => "readdir",
            StorageRequest::Statfs { .. } => "statfs",
            StorageRequest::Access { .. } => "access",
            StorageRequest::Open { .. } => "open",
        }
    }
}

/// A successful reply to a [`StorageRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum StorageReply {
    /// A file and its attributes.
    Found {
        handle: FileHandle,
        attr: FileAttr,
    },
    Attr(FileAttr),
    /// The bytes read are the frame's payload; `eof`: the read stopped at
    /// the end of the file.
    Data {
        eof: bool,
    },
    /// `count` bytes were written; `attr` is the file after the write
    /// (an appending client's next offset is `attr.size`).
    Written {
        count: u32,
        attr: FileAttr,
    },
    Target {
        target: Vec<u8>,
    },
    /// `eof`: no entries follow the last one.
    Entries {
        entries: Vec<DirEntry>,
        eof: bool,
    },
    FsStat(FsStat),
    Done,
    /// The voucher of an open file (see `StorageRequest::Open`).
    Opened(Voucher),
}

impl StorageReply {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            StorageReply::Found { .. } => "found",
            StorageReply::Attr(_) => "attr",
            StorageReply::Data { .. } => "data",
            StorageReply::Written { .. } => "written",
            StorageReply::Target { .. } => "target",
            StorageReply::Entries { .. } => "entries",
            StorageReply::FsStat(_) => "fsstat",
            StorageReply::Done => "done",
            StorageReply::Opened(_) => "opened",
        }
    }
}

/// Linux's permission check from mode bits (no ACLs, `generic_permission`):
/// the owner, group or other bits; failing them, `CAP_DAC_OVERRIDE` may
/// read and write anything and execute anything with an execute bit (or
/// search any directory), and `CAP_DAC_READ_SEARCH` may read any file and
/// read and search any directory.
pub fn permitted(attr: &FileAttr, mask: u32, who: &Credentials) -> bool {
    let directory = attr.file_type == FileType::Directory;
    if who.caps & CAP_DAC_OVERRIDE != 0
        && (mask & ACCESS_EXECUTE == 0 || directory || attr.mode & 0o111 != 0)
    {
        return true;
    }
    if who.caps & CAP_DAC_READ_SEARCH != 0 {
        let readable = if directory {
            ACCESS_READ | ACCESS_EXECUTE
        } else {
            ACCESS_READ
        };
        if mask & !readable == 0 {
            return true;
        }
    }
    let bits = if who.uid == attr.uid {
        attr.mode >> 6
    } else if who.gid == attr.gid || who.groups.contains(&attr.gid) {
        attr.mode >> 3
    } else {
        attr.mode
    } & 7;
    mask & !bits == 0
}

/// Bytes `getdents64` uses for an entry with a name of `name_len` bytes:
/// a 19-byte header, the name, its NUL, rounded up to 8.
pub fn dirent64_len(name_len: usize) -> usize {
    (19 + name_len + 1 + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mode: u32, uid: u32, gid: u32, file_type: FileType) -> FileAttr {
        FileAttr {
            file_type,
            mode,
            nlink: 1,
            uid,
            gid,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: crate::Timespec::default(),
            mtime: crate::Timespec::default(),
            ctime: crate::Timespec::default(),
            dev: 0,
            ino: 0,
            rdev: 0,
        }
    }

    fn who(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
            caps: Capabilities::of_uid(uid).effective & FS_CAPS,
        }
    }

    #[test]
    fn permission_bits_follow_linux() {
        let file = attr(0o640, 1000, 100, FileType::Regular);
        assert!(permitted(
            &file,
            ACCESS_READ | ACCESS_WRITE,
            &who(1000, 1, &[])
        ));
        assert!(!permitted(&file, ACCESS_EXECUTE, &who(1000, 1, &[])));
        assert!(permitted(&file, ACCESS_READ, &who(2000, 100, &[])));
        assert!(permitted(&file, ACCESS_READ, &who(2000, 5, &[7, 100])));
        assert!(!permitted(&file, ACCESS_WRITE, &who(2000, 100, &[])));
        assert!(!permitted(&file, ACCESS_READ, &who(2000, 5, &[])));
        assert!(permitted(&file, 0, &who(2000, 5, &[])));
        // Root: anything but executing a file without any execute bit.
        assert!(permitted(
            &file,
            ACCESS_READ | ACCESS_WRITE,
            &who(0, 0, &[])
        ));
        assert!(!permitted(&file, ACCESS_EXECUTE, &who(0, 0, &[])));
        let dir = attr(0o700, 1000, 100, FileType::Directory);
        assert!(permitted(&dir, ACCESS_EXECUTE, &who(0, 0, &[])));
    }

    #[test]
    fn capabilities_decide_what_the_bits_refuse() {
        let secret = attr(0o600, 65534, 65534, FileType::Regular);
        let dir = attr(0o700, 65534, 65534, FileType::Directory);
        let with = |caps| Credentials {
            caps,
            ..who(0, 0, &[])
        };
        // Root without the overrides is anyone else.
        for mask in [ACCESS_READ, ACCESS_WRITE] {
            assert!(!permitted(&secret, mask, &with(0)));
        }
        assert!(!permitted(&dir, ACCESS_EXECUTE, &with(0)));
        // CAP_DAC_READ_SEARCH: reading and searching, never writing.
        let read_search = with(CAP_DAC_READ_SEARCH);
        assert!(permitted(&secret, ACCESS_READ, &read_search));
        assert!(!permitted(&secret, ACCESS_WRITE, &read_search));
        assert!(!permitted(&secret, ACCESS_EXECUTE, &read_search));
        assert!(permitted(&dir, ACCESS_READ | ACCESS_EXECUTE, &read_search));
        assert!(!permitted(&dir, ACCESS_WRITE, &read_search));
        // CAP_DAC_OVERRIDE alone, for anyone holding it.
        let override_ = Credentials {
            caps: CAP_DAC_OVERRIDE,
            ..who(1000, 1000, &[])
        };
        assert!(permitted(&secret, ACCESS_READ | ACCESS_WRITE, &override_));
        assert!(permitted(&dir, ACCESS_WRITE | ACCESS_EXECUTE, &override_));
        // The owner's bits need no capability.
        let owner = Credentials {
            uid: 65534,
            ..with(0)
        };
        assert!(permitted(&secret, ACCESS_READ, &owner));
    }

    #[test]
    fn a_voucher_covers_only_capabilities_it_permits() {
        let voucher = Voucher {
            uids: [0; 4],
            caps: Capabilities {
                effective: 0,
                permitted: CAP_DAC_READ_SEARCH,
            },
            ..Voucher::default()
        };
        assert_eq!(voucher.fs_credentials().caps, 0);
        assert_eq!(voucher.access_credentials().caps, CAP_DAC_READ_SEARCH);
        assert!(voucher.covers(&voucher.access_credentials()));
        let mut more = voucher.access_credentials();
        more.caps |= CAP_DAC_OVERRIDE;
        assert!(!voucher.covers(&more));
    }
}
