//! The storage manager (LegoOS's sComponent): a stateless file server, NFS
//! style, over an exported directory tree.
//!
//! So far it checks and exports its directory, joins the cluster and reports
//! the export's size and free space; the file requests arrive with the
//! storage issue.

use lego_monitor::{join_cluster, ComponentConfig, JoinedComponent};
use lego_proto::{ErrorCode, Frame, Load, Message, Role};
use lego_transport::{PeerInfo, Reply, Service};
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub component: ComponentConfig,
    /// The directory tree to serve.
    pub export: PathBuf,
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

struct Export {
    root: PathBuf,
}

impl Service for Export {
    fn handle(&self, _peer: &PeerInfo, request: Frame) -> Reply {
        Message::error(
            ErrorCode::Unsupported,
            format!(
                "the storage manager does not serve {} yet",
                request.message.kind()
            ),
        )
        .into()
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
    let unit = stat.f_frsize as u64;
    (stat.f_blocks as u64 * unit, stat.f_bavail as u64 * unit)
}

/// A running storage manager.
pub struct StorageManager {
    joined: JoinedComponent,
}

impl StorageManager {
    pub fn start(config: StorageConfig) -> Result<StorageManager, StorageError> {
        let root = config
            .export
            .canonicalize()
            .map_err(|source| StorageError::Export {
                path: config.export.clone(),
                source,
            })?;
        if !root.is_dir() {
            return Err(StorageError::NotADirectory { path: root });
        }
        let export = Arc::new(Export { root });
        let reporter = Arc::clone(&export);
        let joined = join_cluster(Role::Storage, config.component, export, move || {
            let (total, free) = space(&reporter.root);
            Load::Storage {
                export: reporter.root.display().to_string(),
                total,
                free,
            }
        })?;
        Ok(StorageManager { joined })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.joined.local_addr()
    }
}
