//! The storage manager (LegoOS's sComponent): a stateless file server, NFS
//! style, over an exported directory tree.
//!
//! The protocol is `lego_proto::storage`: opaque, authenticated file handles
//! that survive a restart of the storage manager, and requests that each
//! carry everything they need (`Read { handle, offset, len }`), so the
//! server keeps no per-client and no per-open state. [`handle`] defines what
//! the handle bytes hold, [`export`] turns handles and client paths into
//! descriptors confined to the export root, [`service`] serves each request.
//!
//! # Privileges
//!
//! Handles that follow a file across renames come from `name_to_handle_at`
//! and `open_by_handle_at`; the latter needs `CAP_DAC_READ_SEARCH` (run the
//! storage manager as root, or grant it the capability). Without it, and on
//! file systems that cannot make handles (procfs, sysfs), handles are
//! path-based and go stale when the file is renamed (see [`handle`]).

pub mod acting;
pub mod export;
pub mod handle;
pub mod service;
mod sys;

use export::Export;
use lego_monitor::{join_cluster, ComponentConfig, JoinedComponent};
use lego_proto::{
    ErrorCode, Frame, Load, Message, Role, StorageReply, StorageRequest, Voucher, VoucherScope,
};
use lego_transport::{ClusterSecret, PeerInfo, Reply, Service};
use std::collections::HashMap;
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tracing::info;

pub use sys::Errno;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub component: ComponentConfig,
    /// The directory tree to serve.
    pub export: PathBuf,
    /// Files inside it never served (the cluster secret's file: a program
    /// reading it could act as any component).
    pub hide: Vec<PathBuf>,
}

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("cannot export {path}: {source}")]
    Export {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot export {path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot start the storage manager: {0}")]
    Start(#[from] std::io::Error),
}

/// Why a request was not served.
#[derive(Debug, Error)]
pub enum Failure {
    /// The operation failed as Linux fails it; the client passes the errno
    /// on (`StorageFailed`).
    #[error("{0}")]
    Errno(Errno),
    /// Protocol misuse (`ErrorReply` with `BadRequest`).
    #[error("{0}")]
    BadRequest(String),
}

impl From<Errno> for Failure {
    fn from(errno: Errno) -> Failure {
        Failure::Errno(errno)
    }
}

/// The file service of one export, served through [`Service`].
pub struct StorageService {
    export: Export,
    /// What vouchers are sealed with.
    secret: ClusterSecret,
    /// Soft state: when the newest voucher seen of each (tree, process)
    /// was issued, and a digest of its ids. An older one with other ids is
    /// refused: a process that changed its credentials cannot go back to
    /// its old ones. Forgotten on restart
    /// (vouchers expire anyway) and when it grows past `NEWEST_KEPT`.
    newest: Mutex<HashMap<(u64, u64), (u64, u64)>>,
}

/// Most processes whose newest voucher is remembered.
const NEWEST_KEPT: usize = 1 << 16;

impl StorageService {
    /// Serves the tree under `export`. Handles are keyed with `secret` and
    /// the export's canonical path: another instance with the same two
    /// accepts the handles this one issues.
    pub fn new(export: &Path, secret: &ClusterSecret) -> Result<StorageService, StorageError> {
        let root = export
            .canonicalize()
            .map_err(|source| StorageError::Export {
                path: export.to_owned(),
                source,
            })?;
        if !root.is_dir() {
            return Err(StorageError::NotADirectory { path: root });
        }
        let export = Export::open(&root, secret.to_hex().as_bytes())
            .map_err(|source| StorageError::Export { path: root, source })?;
        Ok(StorageService {
            export,
            secret: secret.clone(),
            newest: Mutex::new(HashMap::new()),
        })
    }

    /// Never serves the file at `path`, by any name or link; nor, when it
    /// is a Lego state directory's `secret` (beside its `logs`), that
    /// directory or anything in it (a program could rewrite where clients
    /// find the cluster, or read its logs).
    pub fn hide(&mut self, path: &Path) {
        self.export.hide(path);
        let state_dir = path
            .parent()
            .filter(|d| path.file_name() == Some("secret".as_ref()) && d.join("logs").is_dir());
        if let Some(dir) = state_dir {
            self.export.hide_dir(dir);
        }
    }

    /// The canonical export root.
    pub fn root(&self) -> &Path {
        self.export.root()
    }

    /// Serves one request; `payload` is the frame's payload (a `Write`'s
    /// data, empty otherwise).
    pub fn serve(&self, request: &StorageRequest, payload: &[u8]) -> service::Served {
        let ex = &self.export;
        if !payload.is_empty() && !matches!(request, StorageRequest::Write { .. }) {
            return Err(Failure::BadRequest(format!(
                "a {} request carries a payload of {} bytes; only write takes one",
                request.name(),
                payload.len()
            )));
        }
        match request {
            StorageRequest::Root => ex.root_handle(),
            StorageRequest::Lookup { dir, path, follow } => ex.lookup(dir, path, *follow),
            StorageRequest::Getattr { handle } => ex.getattr(handle),
            StorageRequest::Setattr { handle, set } => ex.setattr(handle, set),
            StorageRequest::Read {
                handle,
                offset,
                len,
            } => ex.read(handle, *offset, *len),
            StorageRequest::Write {
                handle,
                offset,
                append,
                stable,
            } => ex.write(handle, *offset, *append, *stable, payload),
            StorageRequest::Commit { handle, data_only } => ex.commit(handle, *data_only),
            StorageRequest::Create {
                dir,
                name,
                mode,
                exclusive,
                truncate,
            } => ex.create(dir, name, *mode, *exclusive, *truncate),
            StorageRequest::Mkdir { dir, name, mode } => ex.mkdir(dir, name, *mode),
            StorageRequest::Remove { dir, name } => ex.remove(dir, name, false),
            StorageRequest::Rmdir { dir, name } => ex.remove(dir, name, true),
            StorageRequest::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                flags,
            } => ex.rename(from_dir, from_name, to_dir, to_name, *flags),
            StorageRequest::Link { handle, dir, name } => ex.link(handle, dir, name),
            StorageRequest::Symlink { dir, name, target } => ex.symlink(dir, name, target),
            StorageRequest::Readlink { handle } => ex.readlink(handle),
            StorageRequest::Readdir {
                dir,
                cookie,
                max_bytes,
            } => ex.readdir(dir, *cookie, *max_bytes),
            StorageRequest::Statfs { handle } => ex.statfs(handle),
            StorageRequest::Access {
                handle,
                mask,
                credentials,
            } => ex.access(handle, *mask, credentials),
            StorageRequest::Open {
                handle,
                read,
                write,
            } => ex.open_file(handle, *read, *write),
        }
    }

    /// The load reported with each heartbeat.
    pub fn load(&self) -> Load {
        let (total, free) = space(self.root());
        Load::Storage {
            export: self.root().display().to_string(),
            total,
            free,
        }
    }
}

/// Why a request's voucher is not served.
enum Refusal {
    /// Forged, another tree's, missing, or used beyond its scope.
    Denied(String),
    /// Its process's own, but expired or superseded by one of other ids.
    Stale(String),
}

/// A digest of the ids a voucher names.
fn ids_digest(voucher: &Voucher) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (voucher.uids, voucher.gids, &voucher.groups).hash(&mut hasher);
    hasher.finish()
}

impl StorageService {
    /// Whom a request from `peer` acts for: the credentials its voucher
    /// names, or, for a component's request without one, the server
    /// itself. A runtime must send a voucher of its own tree.
    fn caller(
        &self,
        peer: &PeerInfo,
        voucher: Option<&Voucher>,
        request: &StorageRequest,
    ) -> Result<Option<Voucher>, Refusal> {
        let Some(voucher) = voucher else {
            return match peer.identity.role {
                Role::Process => Err(Refusal::Denied(format!(
                    "{} sent a request without its processor's voucher",
                    peer.identity.name
                ))),
                _ => Ok(None),
            };
        };
        if !self.secret.voucher_is_sealed(voucher) {
            return Err(Refusal::Denied(format!(
                "{} sent a voucher this cluster did not seal",
                peer.identity.name
            )));
        }
        if peer.identity.role == Role::Process && peer.identity.tree() != Some(voucher.tree) {
            return Err(Refusal::Denied(format!(
                "{} sent a voucher of process tree {:x}, not its own",
                peer.identity.name, voucher.tree
            )));
        }
        // A process's credentials are its own: another process of its tree
        // (a forked child holding its parent's in memory) cannot use them.
        // An open file's are whoever holds it (a child inherits its
        // parent's descriptors).
        if peer.identity.role == Role::Process
            && voucher.scope == VoucherScope::Process
            && peer.identity.pid() != Some(voucher.pid)
        {
            return Err(Refusal::Denied(format!(
                "{} sent the voucher of process {:x}, not its own",
                peer.identity.name, voucher.pid
            )));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if voucher.expired(now) {
            return Err(Refusal::Stale(format!(
                "{} sent a voucher that expired {} ms ago",
                peer.identity.name,
                now - voucher.expires_ms
            )));
        }
        match &voucher.scope {
            VoucherScope::ReadFile(file) => {
                let reads_it = match request {
                    StorageRequest::Read { handle, .. } | StorageRequest::Getattr { handle } => {
                        handle == file
                    }
                    _ => false,
                };
                if !reads_it {
                    return Err(Refusal::Denied(format!(
                        "{} sent a voucher for reading one file with another request",
                        peer.identity.name
                    )));
                }
            }
            VoucherScope::OpenFile {
                handle: file,
                read,
                write,
            } => {
                let allowed = match request {
                    StorageRequest::Read { handle, .. } => handle == file && *read,
                    StorageRequest::Write { handle, .. } => handle == file && *write,
                    // ftruncate: the size alone; a mode or owner change is
                    // checked with the process's credentials of now.
                    StorageRequest::Setattr { handle, set } => {
                        handle == file
                            && *write
                            && *set
                                == lego_proto::SetAttr {
                                    size: set.size,
                                    ..lego_proto::SetAttr::default()
                                }
                    }
                    StorageRequest::Getattr { handle } | StorageRequest::Commit { handle, .. } => {
                        handle == file
                    }
                    _ => false,
                };
                if !allowed {
                    return Err(Refusal::Denied(format!(
                        "{} sent an open file's voucher with a request it does not cover",
                        peer.identity.name
                    )));
                }
            }
            VoucherScope::Process if voucher.pid != 0 => {
                let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
                if newest.len() >= NEWEST_KEPT {
                    newest.clear();
                }
                let ids = ids_digest(voucher);
                let seen = newest
                    .entry((voucher.tree, voucher.pid))
                    .or_insert((voucher.issued_ms, ids));
                if voucher.issued_ms >= seen.0 {
                    *seen = (voucher.issued_ms, ids);
                } else if seen.1 != ids {
                    return Err(Refusal::Stale(format!(
                        "{} sent a voucher of ids its process has since given up",
                        peer.identity.name
                    )));
                }
            }
            VoucherScope::Process => {}
        }
        Ok(Some(voucher.clone()))
    }
}

impl Service for StorageService {
    fn handle(&self, peer: &PeerInfo, request: Frame) -> Reply {
        let (storage, voucher) = match &request.message {
            Message::Storage { request, caller } => (request, caller.as_ref()),
            other => {
                return Message::error(
                    ErrorCode::Unsupported,
                    format!("the storage manager does not serve {}", other.kind()),
                )
                .into()
            }
        };
        let caller = match self.caller(peer, voucher, storage) {
            Ok(caller) => caller,
            Err(Refusal::Denied(why)) => return Message::error(ErrorCode::Denied, why).into(),
            // A process's own voucher, out of date: the call fails as one
            // its credentials no longer allow would.
            Err(Refusal::Stale(why)) => {
                info!("{why}");
                return Message::StorageFailed {
                    errno: libc::EACCES,
                }
                .into();
            }
        };
        if let (Some(caller), StorageRequest::Access { credentials, .. }) = (&caller, storage) {
            if !caller.covers(credentials) {
                return Message::error(
                    ErrorCode::Denied,
                    format!(
                        "{} asked an access check for uid {} gid {}, which it does not hold",
                        peer.identity.name, credentials.uid, credentials.gid
                    ),
                )
                .into();
            }
        }
        // The request runs with the caller's filesystem credentials (the
        // server's own for a component's request without a voucher).
        if let Err(errno) = acting::act_for(caller.as_ref().map(|c| c.fs_credentials()).as_ref()) {
            return Message::StorageFailed { errno: errno.0 }.into();
        }
        match self.serve(storage, &request.payload) {
            // The open was allowed: a voucher of the caller's ids for that
            // file, for as long as the program keeps it open.
            Ok((StorageReply::Done, _)) if matches!(storage, StorageRequest::Open { .. }) => {
                let (
                    StorageRequest::Open {
                        handle,
                        read,
                        write,
                    },
                    Some(caller),
                ) = (storage, caller)
                else {
                    return Message::error(
                        ErrorCode::BadRequest,
                        "open: only a process with a voucher opens files",
                    )
                    .into();
                };
                let mut opened = caller;
                opened.scope = VoucherScope::OpenFile {
                    handle: handle.clone(),
                    read: *read,
                    write: *write,
                };
                opened.expires_ms = 0;
                self.secret.seal_voucher(&mut opened);
                Message::StorageDone(StorageReply::Opened(opened)).into()
            }
            Ok((reply, payload)) => Reply {
                message: Message::StorageDone(reply),
                payload,
            },
            Err(Failure::Errno(errno)) => Message::StorageFailed { errno: errno.0 }.into(),
            Err(Failure::BadRequest(why)) => {
                Message::error(ErrorCode::BadRequest, format!("{}: {why}", storage.name())).into()
            }
        }
    }
}

/// Total and free bytes of the file system holding `path`, or zeros when
/// statvfs fails (the export may have been unmounted under us; the
/// heartbeat keeps flowing and shows it).
fn space(path: &Path) -> (u64, u64) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // Safety: `c_path` is a NUL-terminated string that outlives the call and
    // `stat` points to writable memory of the right type; statvfs writes it
    // fully when it returns 0, and we read it only then.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return (0, 0);
        }
        stat.assume_init()
    };
    let unit = stat.f_frsize;
    (stat.f_blocks * unit, stat.f_bavail * unit)
}

/// A running storage manager.
pub struct StorageManager {
    joined: JoinedComponent,
}

impl StorageManager {
    pub fn start(config: StorageConfig) -> Result<StorageManager, StorageError> {
        let mut service = StorageService::new(&config.export, &config.component.secret)?;
        for path in &config.hide {
            service.hide(path);
        }
        let service = Arc::new(service);
        info!("exporting {}", service.root().display());
        let reporter = Arc::clone(&service);
        let joined = join_cluster(
            lego_proto::Role::Storage,
            config.component,
            service,
            move || reporter.load(),
        )?;
        Ok(StorageManager { joined })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.joined.local_addr()
    }
}
