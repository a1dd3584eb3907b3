//! The runtime's link to the process's home memory manager.

use crate::mm::excache::{Backing, CacheError, WriteBack};
use lego_proto::{
    ExecImage, MemoryOp, MemoryOpDone, Message, ProcessId, RangeChange, MAX_FETCH_PAGES,
    MAX_WRITEBACK_PAGES, PAGE_SIZE,
};
use lego_transport::{
    Backoff, Client, ClientConfig, ClientHold, ClusterSecret, Identity, TransportError,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Connections fetches are spread over: one per fault thread, so the
/// memory manager (a thread per connection) serves several misses at once.
pub const LANES: usize = 4;

thread_local! {
    /// The fetch connection the calling fault thread uses.
    static LANE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread fetch on connection `lane` (mod [`LANES`]).
pub fn set_lane(lane: usize) {
    LANE.with(|l| l.set(lane % LANES));
}

pub struct RemoteMemory {
    /// Address-space calls, and lane 0 of the fetches.
    client: Client,
    /// Lanes 1.. of the fetches.
    lanes: Vec<Client>,
    /// A second connection, for write-backs (see `write_back`).
    writeback: Client,
    /// Changes once, in a forked process.
    pid: AtomicU64,
    /// The memory manager's name, for errors ("memory-0 at 127.0.0.1:4000").
    name: String,
}

impl RemoteMemory {
    pub fn connect(
        addr: SocketAddr,
        name: String,
        key: ClusterSecret,
        identity: Identity,
        pid: ProcessId,
    ) -> RemoteMemory {
        let mut config = ClientConfig::new(key, identity);
        config.backoff = Backoff {
            give_up_after: Duration::from_secs(2),
            ..Backoff::default()
        };
        config.request_timeout = Duration::from_secs(10);
        RemoteMemory {
            writeback: Client::new(addr, config.clone()),
            lanes: (1..LANES)
                .map(|_| Client::new(addr, config.clone()))
                .collect(),
            client: Client::new(addr, config),
            pid: AtomicU64::new(pid),
            name,
        }
    }

    /// Opens the connections every process uses, so that a memory manager
    /// that cannot be reached fails the start (the fetch lanes open when a
    /// second thread first needs them).
    pub fn open_connections(&self) -> Result<(), String> {
        for client in [&self.client, &self.writeback] {
            client.connection().map_err(|e| self.lost(e))?;
        }
        Ok(())
    }

    /// The fetch connection of the calling fault thread.
    fn lane(&self) -> &Client {
        match LANE.with(|l| l.get()) {
            0 => &self.client,
            n => &self.lanes[(n - 1) % self.lanes.len()],
        }
    }

    pub fn pid(&self) -> ProcessId {
        self.pid.load(Ordering::Relaxed)
    }

    /// The memory manager's address.
    pub fn addr(&self) -> SocketAddr {
        self.client.addr()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// fork: has the memory manager copy this process's address space for
    /// `child`. `Ok(Err(errno))` is the fork failing as Linux's would
    /// (ENOMEM: the child's commit charge does not fit).
    /// On success, the ranges where the child's copy differs (see
    /// `Message::Forked`).
    /// Has the memory manager copy the address space for `child`: the
    /// ranges where the copy differs, and the child's key.
    #[allow(clippy::type_complexity)]
    pub fn fork(
        &self,
        child: ProcessId,
    ) -> Result<Result<(Vec<RangeChange>, ClusterSecret), i32>, String> {
        let reply = self
            .client
            .call(
                &Message::Fork {
                    parent: self.pid(),
                    child,
                },
                &[],
            )
            .map_err(|e| self.lost(e))?;
        match reply.message {
            Message::Forked { changes, child_key } => {
                Ok(Ok((changes, ClusterSecret::from_bytes(child_key))))
            }
            Message::MemoryFailed { errno } => Ok(Err(errno)),
            other => Err(self.unexpected("Fork", other)),
        }
    }

    /// Tells the memory manager `pid` is gone (a fork that failed on the
    /// host after the copy was made).
    pub fn release(&self, pid: ProcessId) {
        let _ = self.client.call(&Message::ReleaseProcess { pid }, &[]);
    }

    /// Holds every connection across a fork (none is being opened).
    pub fn hold_for_fork(&self) -> Vec<ClientHold<'_>> {
        [&self.client, &self.writeback]
            .into_iter()
            .chain(&self.lanes)
            .map(Client::hold_for_fork)
            .collect()
    }

    /// In a forked process: speak for `pid` from now on, on connections of
    /// its own (the inherited ones are the parent's conversations), made
    /// as they are first needed (every one lands above the descriptor
    /// floor, where the program's calls never reach it): a child that
    /// execs at once needs only one.
    pub fn become_child(
        &self,
        pid: ProcessId,
        (key, tree): (&ClusterSecret, ProcessId),
        held: Vec<ClientHold<'_>>,
    ) {
        self.pid.store(pid, Ordering::Relaxed);
        // As itself, with its own key (the parent's is overwritten).
        for client in [&self.client, &self.writeback]
            .into_iter()
            .chain(&self.lanes)
        {
            client.speak_as(key.clone(), Identity::process(tree, pid));
        }
        for hold in held {
            hold.disconnect();
        }
    }

    /// "memory-0 at 127.0.0.1:4000".
    pub fn describe(&self) -> String {
        format!("memory manager {} at {}", self.name, self.client.addr())
    }

    fn lost(&self, e: TransportError) -> String {
        format!("lost the {}: {e}", self.describe())
    }

    fn unexpected(&self, request: &str, reply: Message) -> String {
        match reply {
            Message::Error(e) => {
                format!("the {} refused {request}: {}", self.describe(), e.message)
            }
            other => format!(
                "the {} answered {request} with {}",
                self.describe(),
                other.kind()
            ),
        }
    }

    /// Builds the process's address space from a program image.
    /// `Ok(Err(why))` is the memory manager refusing the image (the old
    /// address space is kept); `Err` is the memory manager being unusable.
    pub fn exec(&self, image: &[u8]) -> Result<Result<ExecImage, String>, String> {
        let reply = self
            .client
            .call(&Message::Exec { pid: self.pid() }, image)
            .map_err(|e| self.lost(e))?;
        match reply.message {
            Message::ExecLoaded(image) => Ok(Ok(image)),
            Message::Error(e) => Ok(Err(e.message)),
            other => Err(self.unexpected("Exec", other)),
        }
    }

    /// Runs an address-space call; `Ok(Err(errno))` is the call failing as
    /// Linux would, `Err` is the memory manager being unusable.
    pub fn memory_op(&self, op: MemoryOp) -> Result<Result<MemoryOpDone, i32>, String> {
        let name = op.name();
        let reply = self
            .client
            .call(
                &Message::Memory {
                    pid: self.pid(),
                    op,
                },
                &[],
            )
            .map_err(|e| self.lost(e))?;
        match reply.message {
            Message::MemoryDone(done) => Ok(Ok(done)),
            Message::MemoryFailed { errno } => Ok(Err(errno)),
            other => Err(self.unexpected(name, other)),
        }
    }
}

impl Backing for RemoteMemory {
    fn fetch(&self, addr: u64, buf: &mut [u8]) -> Result<bool, CacheError> {
        let reply = self
            .lane()
            .call(
                &Message::FetchPage {
                    pid: self.pid(),
                    addr,
                },
                &[],
            )
            .map_err(|e| CacheError::Remote(self.lost(e)))?;
        match reply.message {
            Message::Page if reply.payload.len() == PAGE_SIZE => {
                buf[..PAGE_SIZE].copy_from_slice(&reply.payload);
                Ok(true)
            }
            Message::ZeroPage => Ok(false),
            other => Err(CacheError::Remote(self.unexpected("FetchPage", other))),
        }
    }

    fn fetch_run(&self, addr: u64, count: usize, buf: &mut Vec<u8>) -> Result<usize, CacheError> {
        let count = count.min(MAX_FETCH_PAGES as usize);
        let reply = self
            .lane()
            .call(
                &Message::FetchPages {
                    pid: self.pid(),
                    addr,
                    count: count as u32,
                },
                &[],
            )
            .map_err(|e| CacheError::Remote(self.lost(e)))?;
        match reply.message {
            Message::Pages { count: got }
                if got >= 1
                    && got as usize <= count
                    && reply.payload.len() == got as usize * PAGE_SIZE =>
            {
                *buf = reply.payload;
                Ok(got as usize)
            }
            other => Err(CacheError::Remote(self.unexpected("FetchPages", other))),
        }
    }

    fn write_back(&self, addrs: &[u64], parts: &[&[u8]]) -> Result<WriteBack, CacheError> {
        debug_assert!(addrs.len() <= MAX_WRITEBACK_PAGES);
        // A connection of its own, so the memory manager stores this batch
        // on one thread while it serves the next fetch on another.
        let lost = |e| CacheError::Remote(self.lost(e));
        let conn = self.writeback.connection().map_err(lost)?;
        let pending = conn
            .send(
                &Message::WriteBack {
                    pid: self.pid(),
                    addrs: addrs.to_vec(),
                },
                parts,
            )
            .map_err(lost)?;
        let timeout = self.writeback.request_timeout();
        let describe = self.describe();
        Ok(WriteBack::new(move || {
            let reply = conn
                .wait(pending, timeout)
                .map_err(|e| CacheError::Remote(format!("lost the {describe}: {e}")))?;
            match reply.message {
                Message::WrittenBack => Ok(()),
                Message::Error(e) => Err(CacheError::Remote(format!(
                    "the {describe} refused a write-back: {}",
                    e.message
                ))),
                other => Err(CacheError::Remote(format!(
                    "the {describe} answered WriteBack with {}",
                    other.kind()
                ))),
            }
        }))
    }
}
