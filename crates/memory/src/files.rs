//! File pages for private file mappings: read from the storage manager
//! that serves the file when a page is first fetched, and kept in a small
//! cache shared by every process here (a shared library's text is read
//! once, not once per process).
//!
//! Reads act for the process that mapped the file: they carry its voucher,
//! over a connection authenticated with its process's key, never the
//! cluster secret (the storage address comes from the runtime, which could name a
//! listener of its own and relay our handshake: all it would get is its
//! own process's authority). A mapping is made only after a read with the
//! mapper's credentials succeeded, so a page cached for one process is
//! served to another only if that one may read the file too.

use crate::vma::FileSource;
use lego_proto::{Errno, Message, StorageReply, StorageRequest, PAGE_SIZE};
use lego_transport::{Backoff, Client, ClientConfig, ClusterSecret, Identity};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Pages the cache keeps (16 MiB).
const CACHE_PAGES: usize = 4096;
/// Pages read from storage together on a miss.
const READ_PAGES: u64 = 16;

/// Most storage connections kept (one per storage manager and process).
const MAX_CLIENTS: usize = 256;

/// A cached page: which storage manager, which file, which offset.
type Key = (SocketAddr, lego_proto::FileHandle, u64);

#[derive(Default)]
struct Cache {
    pages: HashMap<Key, Arc<[u8]>>,
    order: VecDeque<Key>,
}

enum ReadError {
    /// The storage manager refused the read as Linux would.
    Failed(Errno),
    /// It could not be reached or broke the protocol.
    Broken(String),
}

pub struct FileReader {
    /// How to reach storage managers; `None`: file mappings cannot be read.
    access: Option<(ClusterSecret, String)>,
    clients: Mutex<HashMap<(SocketAddr, u64, u64), Arc<Client>>>,
    cache: Mutex<Cache>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic ends a connection's thread, never mid-update of these maps.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileReader {
    pub fn new(access: Option<(ClusterSecret, String)>) -> FileReader {
        FileReader {
            access,
            clients: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Process `pid`'s key, derived from the cluster secret.
    pub fn process_key(&self, tree: u64, pid: u64) -> Option<ClusterSecret> {
        let (secret, _) = self.access.as_ref()?;
        Some(secret.process_key(tree, pid))
    }

    /// The connection to `storage` for process `pid` of tree `tree`.
    fn client(&self, storage: SocketAddr, tree: u64, pid: u64) -> Result<Arc<Client>, String> {
        let (secret, _) = self
            .access
            .as_ref()
            .ok_or("this memory manager has no cluster secret to reach storage with")?;
        let mut clients = lock(&self.clients);
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&(storage, tree, pid)) {
            clients.clear();
        }
        Ok(Arc::clone(
            clients.entry((storage, tree, pid)).or_insert_with(|| {
                let mut config =
                    ClientConfig::new(secret.process_key(tree, pid), Identity::process(tree, pid));
                // A restarting storage manager is waited for, a while.
                config.backoff = Backoff {
                    give_up_after: Duration::from_secs(10),
                    ..Backoff::default()
                };
                Arc::new(Client::new(storage, config))
            }),
        ))
    }

    /// Ends the storage connections made for process `pid`: each holds a
    /// connection, and a thread, on its storage manager.
    pub fn forget(&self, pid: u64) {
        lock(&self.clients).retain(|&(_, _, of), _| of != pid);
    }

    /// The voucher a mapping of `handle` reads with once the mapper's own
    /// (`caller`) was found to read it: its ids, for that file alone and
    /// for as long as the mapping lasts (the mapper's own expires, and a
    /// mapping stays readable whatever its process does later, as on
    /// Linux). Kept here, never sent to a runtime.
    pub fn for_mapping(
        &self,
        caller: &lego_proto::Voucher,
        handle: &lego_proto::FileHandle,
    ) -> Option<lego_proto::Voucher> {
        let (secret, _) = self.access.as_ref()?;
        let mut scoped = caller.clone();
        scoped.scope = lego_proto::VoucherScope::ReadFile(handle.clone());
        scoped.expires_ms = 0;
        secret.seal_voucher(&mut scoped);
        Some(scoped)
    }

    /// Whether `voucher` carries this cluster's seal.
    pub fn sealed(&self, voucher: &lego_proto::Voucher) -> bool {
        self.access
            .as_ref()
            .is_some_and(|(secret, _)| secret.voucher_is_sealed(voucher))
    }

    /// Whether the process `source.caller` vouches for may read the file:
    /// asked of the storage manager before the file is mapped. The errno
    /// is what mmap fails with (`EACCES`, `ESTALE`, ...).
    pub fn check_readable(&self, source: &FileSource) -> Result<(), Errno> {
        match self.read(source, 0, 0) {
            Ok(_) => Ok(()),
            Err(ReadError::Failed(errno)) => Err(errno),
            Err(ReadError::Broken(why)) => {
                tracing::warn!("{why}");
                Err(Errno::EIO)
            }
        }
    }

    /// Reads `len` bytes of `source` from `offset`, acting for its caller.
    fn read(&self, source: &FileSource, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        let client = self
            .client(source.storage, source.caller.tree, source.caller.pid)
            .map_err(ReadError::Broken)?;
        let reply = client
            .call(
                &Message::Storage {
                    request: StorageRequest::Read {
                        handle: source.handle.clone(),
                        offset,
                        len,
                    },
                    caller: Some(source.caller.clone()),
                },
                &[],
            )
            .map_err(|e| {
                ReadError::Broken(format!(
                    "reading a mapped file from storage at {}: {e}",
                    source.storage
                ))
            })?;
        match reply.message {
            Message::StorageDone(StorageReply::Data { .. }) => Ok(reply.payload),
            Message::StorageFailed { errno } => Err(ReadError::Failed(Errno(errno))),
            Message::Error(e) => Err(ReadError::Broken(format!(
                "storage at {} refused a read: {}",
                source.storage, e.message
            ))),
            other => Err(ReadError::Broken(format!(
                "storage at {} answered a read with {}",
                source.storage,
                other.kind()
            ))),
        }
    }

    /// The page of `source` at page-aligned `offset`; bytes past the end of
    /// the file read as zeros.
    pub fn page(&self, source: &FileSource, offset: u64) -> Result<Arc<[u8]>, String> {
        let key = (source.storage, source.handle.clone(), offset);
        if let Some(page) = lock(&self.cache).pages.get(&key) {
            return Ok(Arc::clone(page));
        }
        let data = self
            .read(source, offset, (READ_PAGES as usize * PAGE_SIZE) as u32)
            .map_err(|e| match e {
                ReadError::Failed(errno) => format!(
                    "reading a mapped file from storage at {}: {}",
                    source.storage,
                    std::io::Error::from_raw_os_error(errno.0)
                ),
                ReadError::Broken(why) => why,
            })?;
        let mut cache = lock(&self.cache);
        let mut first = None;
        // Keep every whole or partial page read, and one page past the end.
        let pages = (data.len() as u64).div_ceil(PAGE_SIZE as u64).max(1);
        for i in 0..pages {
            let start = (i as usize * PAGE_SIZE).min(data.len());
            let end = (start + PAGE_SIZE).min(data.len());
            let mut page = vec![0u8; PAGE_SIZE];
            page[..end - start].copy_from_slice(&data[start..end]);
            let page: Arc<[u8]> = page.into();
            let k = (
                source.storage,
                source.handle.clone(),
                offset + i * PAGE_SIZE as u64,
            );
            if first.is_none() {
                first = Some(Arc::clone(&page));
            }
            if cache.pages.insert(k.clone(), page).is_none() {
                cache.order.push_back(k);
            }
        }
        while cache.order.len() > CACHE_PAGES {
            if let Some(old) = cache.order.pop_front() {
                cache.pages.remove(&old);
            }
        }
        Ok(first.expect("at least one page"))
    }
}
