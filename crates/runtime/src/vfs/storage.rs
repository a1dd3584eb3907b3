//! The runtime's link to the storage manager serving the program's files.

use crate::error::SysError;
use lego_proto::{Errno, FileAttr, FileHandle, Message, StorageReply, StorageRequest, Voucher};
use lego_transport::{Backoff, Client, ClientConfig, ClusterSecret, Identity, TransportError};
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;

/// What a storage call can end in besides success.
#[derive(Debug)]
pub enum StorageError {
    /// The call failed as Linux would fail it; the application gets this.
    Errno(Errno),
    /// The storage manager cannot be reached (after retrying) or broke the
    /// protocol: the runtime cannot go on.
    Lost(String),
}

impl From<StorageError> for SysError {
    /// The application's errno, or, for a lost storage manager, a fault
    /// of the runtime that ends the process.
    fn from(e: StorageError) -> SysError {
        match e {
            StorageError::Errno(errno) => SysError::Errno(errno),
            StorageError::Lost(why) => SysError::Fatal(why),
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

pub struct RemoteStorage {
    client: Client,
    name: String,
    /// The process's credentials, vouched for by its processor: every
    /// request carries them and is performed with them. Replaced when the
    /// program changes its ids (`crate::process::credentials`).
    voucher: RwLock<Voucher>,
    /// Gets the process a new voucher when the one it holds is due (half
    /// its life passed) or is not its own (a forked child holds its
    /// parent's); set once the runtime can reach its processor.
    renewer: std::sync::OnceLock<Box<Renewer>>,
}

/// Given the voucher held, a new one if it needs one.
pub type Renewer = dyn Fn(&Voucher) -> Result<Option<Voucher>, String> + Send + Sync;

impl RemoteStorage {
    pub fn connect(
        addr: SocketAddr,
        name: String,
        key: ClusterSecret,
        identity: Identity,
        voucher: Voucher,
        retry: Duration,
    ) -> RemoteStorage {
        let mut config = ClientConfig::new(key, identity);
        // The storage manager may be restarted under us: keep trying for
        // `retry`, then give up (its handles stay valid across a restart).
        config.backoff = Backoff {
            give_up_after: retry,
            ..Backoff::default()
        };
        config.request_timeout = Duration::from_secs(30);
        RemoteStorage {
            client: Client::new(addr, config),
            name,
            voucher: RwLock::new(voucher),
            renewer: std::sync::OnceLock::new(),
        }
    }

    /// From now on, requests first get a new voucher when `renewer` says
    /// the process needs one.
    pub fn set_renewer(&self, renewer: Box<Renewer>) {
        let _ = self.renewer.set(renewer);
    }

    /// The voucher to send now: the one held, renewed first if due.
    pub fn current_voucher(&self) -> StorageResult<Voucher> {
        let held = self.voucher();
        let Some(renew) = self.renewer.get() else {
            return Ok(held);
        };
        match renew(&held).map_err(StorageError::Lost)? {
            Some(new) => {
                self.set_voucher(new.clone());
                Ok(new)
            }
            None => Ok(held),
        }
    }

    /// The voucher requests carry now.
    pub fn voucher(&self) -> Voucher {
        self.voucher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Carries `voucher` from the next request on; the old one is gone
    /// from this process (overwritten in place).
    pub fn set_voucher(&self, voucher: Voucher) {
        *self.voucher.write().unwrap_or_else(|p| p.into_inner()) = voucher;
    }

    /// From the next connection on, authenticates as `identity` with
    /// `key` (a forked child speaks as itself).
    pub fn speak_as(&self, key: ClusterSecret, identity: Identity) {
        self.client.speak_as(key, identity);
    }

    /// Holds the connection across a fork; in the forked process, the
    /// hold's `disconnect` makes the next request open one of its own (the
    /// inherited one is its parent's conversation).
    pub fn hold_for_fork(&self) -> lego_transport::ClientHold<'_> {
        self.client.hold_for_fork()
    }

    /// Where the storage manager serves.
    pub fn addr(&self) -> SocketAddr {
        self.client.addr()
    }

    fn describe(&self) -> String {
        format!("storage manager {} at {}", self.name, self.client.addr())
    }

    /// One request, retried once on a new connection if the old one broke
    /// (every request is idempotent at this level or harmless to repeat,
    /// except an exclusive create, whose retry may see EEXIST).
    /// Files the runtime serves itself carry an empty handle: nothing the
    /// storage manager can act on. Asking about them is EINVAL, as Linux
    /// answers most such calls on /proc files.
    fn names_no_file(request: &StorageRequest) -> bool {
        use StorageRequest::*;
        let empty = |h: &FileHandle| h.0.is_empty();
        match request {
            Root => false,
            Lookup { dir, .. }
            | Create { dir, .. }
            | Mkdir { dir, .. }
            | Remove { dir, .. }
            | Rmdir { dir, .. }
            | Symlink { dir, .. }
            | Readdir { dir, .. } => empty(dir),
            Getattr { handle }
            | Setattr { handle, .. }
            | Read { handle, .. }
            | Write { handle, .. }
            | Commit { handle, .. }
            | Readlink { handle }
            | Statfs { handle }
            | Access { handle, .. }
            | Open { handle, .. } => empty(handle),
            Rename {
                from_dir, to_dir, ..
            } => empty(from_dir) || empty(to_dir),
            Link { handle, dir, .. } => empty(handle) || empty(dir),
        }
    }

    pub fn call(
        &self,
        request: StorageRequest,
        payload: &[&[u8]],
    ) -> StorageResult<(StorageReply, Vec<u8>)> {
        self.call_as(request, payload, None)
    }

    /// A request carrying `voucher` (an open file's, for its reads and
    /// writes), or the process's own when `None`.
    pub fn call_as(
        &self,
        request: StorageRequest,
        payload: &[&[u8]],
        voucher: Option<&Voucher>,
    ) -> StorageResult<(StorageReply, Vec<u8>)> {
        if Self::names_no_file(&request) {
            return Err(StorageError::Errno(Errno::EINVAL));
        }
        let caller = match voucher {
            Some(voucher) => voucher.clone(),
            None => self.current_voucher()?,
        };
        let message = Message::Storage {
            request,
            caller: Some(caller),
        };
        let joined: Vec<u8>;
        let payload: &[u8] = match payload {
            [] => &[],
            [one] => one,
            many => {
                joined = many.concat();
                &joined
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.client.call(&message, payload) {
                Ok(frame) => {
                    return match frame.message {
                        Message::StorageDone(reply) => Ok((reply, frame.payload)),
                        Message::StorageFailed { errno } => Err(StorageError::Errno(Errno(errno))),
                        Message::Error(e) => Err(StorageError::Lost(format!(
                            "the {} refused a request: {}",
                            self.describe(),
                            e.message
                        ))),
                        other => Err(StorageError::Lost(format!(
                            "the {} answered with {}",
                            self.describe(),
                            other.kind()
                        ))),
                    }
                }
                Err(e)
                    if attempt == 1
                        && e.breaks_connection()
                        && !matches!(e, TransportError::Unreachable { .. }) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(StorageError::Lost(format!(
                        "lost the {}: {e}",
                        self.describe()
                    )))
                }
            }
        }
    }

    pub fn found(&self, request: StorageRequest) -> StorageResult<(FileHandle, FileAttr)> {
        match self.call(request, &[])?.0 {
            StorageReply::Found { handle, attr } => Ok((handle, attr)),
            other => Err(self.unexpected("Found", other)),
        }
    }

    pub fn attr(&self, request: StorageRequest) -> StorageResult<FileAttr> {
        self.attr_as(request, None)
    }

    pub fn attr_as(
        &self,
        request: StorageRequest,
        voucher: Option<&Voucher>,
    ) -> StorageResult<FileAttr> {
        match self.call_as(request, &[], voucher)?.0 {
            StorageReply::Attr(attr) => Ok(attr),
            StorageReply::Found { attr, .. } => Ok(attr),
            other => Err(self.unexpected("Attr", other)),
        }
    }

    pub fn done(&self, request: StorageRequest) -> StorageResult<()> {
        self.done_as(request, None)
    }

    pub fn done_as(&self, request: StorageRequest, voucher: Option<&Voucher>) -> StorageResult<()> {
        match self.call_as(request, &[], voucher)?.0 {
            StorageReply::Done => Ok(()),
            other => Err(self.unexpected("Done", other)),
        }
    }

    /// Opens `handle` for `read`/`write` with the process's credentials:
    /// the voucher its open file carries from then on.
    pub fn open(&self, handle: &FileHandle, read: bool, write: bool) -> StorageResult<Voucher> {
        let request = StorageRequest::Open {
            handle: handle.clone(),
            read,
            write,
        };
        match self.call(request, &[])?.0 {
            StorageReply::Opened(voucher) => Ok(voucher),
            other => Err(self.unexpected("Opened", other)),
        }
    }

    pub fn unexpected(&self, wanted: &str, got: StorageReply) -> StorageError {
        StorageError::Lost(format!(
            "the {} answered {} where {wanted} was expected",
            self.describe(),
            got.name()
        ))
    }
}
