//! File pages for private file mappings: read from the storage manager
//! that serves the file when a page is first fetched, and kept in a small
//! cache shared by every process here (a shared library's text is read
//! once, not once per process).

use crate::vma::FileSource;
use lego_proto::{Message, Role, StorageReply, StorageRequest, PAGE_SIZE};
use lego_transport::{Backoff, Client, ClientConfig, ClusterSecret, Identity};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Pages the cache keeps (16 MiB).
const CACHE_PAGES: usize = 4096;
/// Pages read from storage together on a miss.
const READ_PAGES: u64 = 16;

type Key = (FileSource, u64);

#[derive(Default)]
struct Cache {
    pages: HashMap<Key, Arc<[u8]>>,
    order: VecDeque<Key>,
}

pub struct FileReader {
    /// How to reach storage managers; `None`: file mappings cannot be read.
    access: Option<(ClusterSecret, String)>,
    clients: Mutex<HashMap<SocketAddr, Arc<Client>>>,
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

    fn client(&self, storage: SocketAddr) -> Result<Arc<Client>, String> {
        let (secret, name) = self
            .access
            .as_ref()
            .ok_or("this memory manager has no cluster secret to reach storage with")?;
        let mut clients = lock(&self.clients);
        Ok(Arc::clone(clients.entry(storage).or_insert_with(|| {
            let mut config =
                ClientConfig::new(secret.clone(), Identity::new(Role::Memory, name.clone()));
            // A restarting storage manager is waited for, a while.
            config.backoff = Backoff {
                give_up_after: Duration::from_secs(10),
                ..Backoff::default()
            };
            Arc::new(Client::new(storage, config))
        })))
    }

    /// The page of `source` at page-aligned `offset`; bytes past the end of
    /// the file read as zeros.
    pub fn page(&self, source: &FileSource, offset: u64) -> Result<Arc<[u8]>, String> {
        let key = (source.clone(), offset);
        if let Some(page) = lock(&self.cache).pages.get(&key) {
            return Ok(Arc::clone(page));
        }
        let client = self.client(source.storage)?;
        let reply = client
            .call(
                &Message::Storage(StorageRequest::Read {
                    handle: source.handle.clone(),
                    offset,
                    len: (READ_PAGES as usize * PAGE_SIZE) as u32,
                }),
                &[],
            )
            .map_err(|e| {
                format!(
                    "reading a mapped file from storage at {}: {e}",
                    source.storage
                )
            })?;
        let data = match reply.message {
            Message::StorageDone(StorageReply::Data { .. }) => reply.payload,
            Message::StorageFailed { errno } => {
                return Err(format!(
                    "reading a mapped file from storage at {}: {}",
                    source.storage,
                    std::io::Error::from_raw_os_error(errno)
                ))
            }
            other => {
                return Err(format!(
                    "storage at {} answered a read with {}",
                    source.storage,
                    other.kind()
                ))
            }
        };
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
            let k = (source.clone(), offset + i * PAGE_SIZE as u64);
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
