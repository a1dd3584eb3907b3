//! The runtime's link to the process's memory: the primary memory manager
//! that serves it, and what happens when that one is lost.
//!
//! Every request goes to the primary, which passes each change on to the
//! process's backup before it answers. When the primary cannot be reached,
//! the runtime asks its processor to fail the process over (the monitor
//! makes the backup the primary), moves every connection to the new
//! primary, and sends the request again: a change carries the number of
//! the process's changes so far (`seq`), so one the old primary passed on
//! before it went is answered, not made twice; a write-back is kept until
//! it is acknowledged, and sending one again is harmless.

use crate::mm::excache::{Backing, CacheError, WriteBack};
use crate::mm::spilled::{pages_of, Spilled};
use lego_proto::{
    ExecImage, Frame, MemoryHolder, MemoryHome, MemoryOp, MemoryOpDone, Message, ProcessId,
    RangeChange, MAX_FETCH_PAGES, MAX_WRITEBACK_PAGES, PAGE_SIZE,
};
use lego_transport::{
    Backoff, Client, ClientConfig, ClientHold, ClusterSecret, Identity, TransportError,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Failovers in a row that may find the primary alive (it answers the
/// monitor but not this runtime) before it is given up as lost.
const MAX_RETRIES: u32 = 5;

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

/// How the runtime asks for a failover: given the home as it knows it and
/// the name of the memory manager that failed, where the memory lives now.
pub type FailOver = Box<dyn Fn(&MemoryHome, &str) -> Result<MemoryHome, String> + Send + Sync>;

/// The connections to one primary.
struct Links {
    /// Address-space calls, and lane 0 of the fetches.
    client: Client,
    /// Lanes 1.. of the fetches.
    lanes: Vec<Client>,
    /// A second connection, for write-backs (see `write_back`).
    writeback: Client,
}

impl Links {
    fn new(addr: SocketAddr, config: &ClientConfig) -> Links {
        Links {
            writeback: Client::new(addr, config.clone()),
            lanes: (1..LANES)
                .map(|_| Client::new(addr, config.clone()))
                .collect(),
            client: Client::new(addr, config.clone()),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Client> {
        [&self.client, &self.writeback]
            .into_iter()
            .chain(&self.lanes)
    }
}

struct Inner {
    /// The connections to the primary. Those to a lost one are closed and
    /// kept (a few hundred bytes per failover), so that a thread still
    /// holding them, or a fork's hold, never sees them freed.
    links: RwLock<&'static Links>,
    home: Mutex<MemoryHome>,
    /// Whom connections authenticate as (changes once, in a forked
    /// process).
    config: Mutex<ClientConfig>,
    pid: AtomicU64,
    /// The number of the last change sent (see the module doc).
    seq: AtomicU64,
    /// Failovers in a row that moved nothing.
    retries: std::sync::atomic::AtomicU32,
    failover: OnceLock<FailOver>,
    /// One failover at a time.
    failing: Mutex<()>,
    /// The regions spilled to other memory managers.
    spilled: Spilled,
}

/// The process's memory, wherever it lives.
#[derive(Clone)]
pub struct RemoteMemory(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RemoteMemory {
    pub fn connect(
        home: MemoryHome,
        key: ClusterSecret,
        identity: Identity,
        pid: ProcessId,
    ) -> RemoteMemory {
        let mut config = ClientConfig::new(key, identity);
        config.backoff = Backoff {
            give_up_after: Duration::from_secs(2),
            ..Backoff::default()
        };
        // A primary silent this long is reported (the monitor decides
        // whether it is lost; if not, the request is sent again).
        config.request_timeout = Duration::from_secs(3);
        let links: &'static Links = Box::leak(Box::new(Links::new(home.primary.addr, &config)));
        RemoteMemory(Arc::new(Inner {
            links: RwLock::new(links),
            home: Mutex::new(home),
            config: Mutex::new(config),
            pid: AtomicU64::new(pid),
            seq: AtomicU64::new(0),
            retries: std::sync::atomic::AtomicU32::new(0),
            failover: OnceLock::new(),
            failing: Mutex::new(()),
            spilled: Spilled::default(),
        }))
    }

    /// How to ask for a failover (the processor relays it to the monitor).
    pub fn set_failover(&self, failover: FailOver) {
        let _ = self.0.failover.set(failover);
    }

    fn links(&self) -> &'static Links {
        *self.0.links.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the connections every process uses, so that a memory manager
    /// that cannot be reached fails the start (the fetch lanes open when a
    /// second thread first needs them).
    pub fn open_connections(&self) -> Result<(), String> {
        let links = self.links();
        for client in [&links.client, &links.writeback] {
            client.connection().map_err(|e| self.lost(e))?;
        }
        Ok(())
    }

    pub fn pid(&self) -> ProcessId {
        self.0.pid.load(Ordering::Relaxed)
    }

    /// Where the process's memory lives now.
    pub fn home(&self) -> MemoryHome {
        lock(&self.0.home).clone()
    }

    /// The primary's address.
    pub fn addr(&self) -> SocketAddr {
        self.home().primary.addr
    }

    /// The primary's name.
    pub fn name(&self) -> String {
        self.home().primary.name
    }

    /// "memory manager memory-0 at 127.0.0.1:4000".
    pub fn describe(&self) -> String {
        let home = self.home();
        format!(
            "memory manager {} at {}",
            home.primary.name, home.primary.addr
        )
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

    /// The primary behind `links` failed with `error`: unless another
    /// thread already moved on, asks for a failover and moves every
    /// connection to the new primary. `Err` when the memory is lost.
    fn fail_over(&self, links: &Links, error: &str) -> Result<(), String> {
        let _one = lock(&self.0.failing);
        if !std::ptr::eq(self.links(), links) {
            return Ok(());
        }
        let home = self.home();
        let Some(failover) = self.0.failover.get() else {
            return Err(format!("lost the {}: {error}", self.describe()));
        };
        if home.backup.is_none() {
            return Err(format!(
                "lost the {}: {error} (the process has no backup)",
                self.describe()
            ));
        }
        let started = Instant::now();
        let moved = failover(&home, &home.primary.name)
            .map_err(|why| format!("lost the {}: {error}; no failover: {why}", self.describe()))?;
        if moved.epoch == home.epoch {
            // Nothing moved: the same primary, tried again on new
            // connections, a few times.
            let tries = self.0.retries.fetch_add(1, Ordering::Relaxed) + 1;
            if tries > MAX_RETRIES {
                return Err(format!(
                    "lost the {}: {error} ({tries} times; the monitor finds it alive)",
                    self.describe()
                ));
            }
        } else {
            self.0.retries.store(0, Ordering::Relaxed);
        }
        let config = lock(&self.0.config).clone();
        let fresh: &'static Links = Box::leak(Box::new(Links::new(moved.primary.addr, &config)));
        *self.0.links.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        for client in links.all() {
            client.disconnect();
        }
        tracing::warn!(
            "lost the {} ({error}): the process goes on with {} after {:?}",
            self.describe(),
            moved.primary.name,
            started.elapsed()
        );
        *lock(&self.0.home) = moved;
        Ok(())
    }

    /// Sends `message` on the client `pick` chooses, failing over and
    /// sending it again while the primary is lost.
    fn call(
        &self,
        pick: impl Fn(&Links) -> &Client,
        message: &Message,
        payload: &[u8],
    ) -> Result<Frame, String> {
        loop {
            let links = self.links();
            match pick(links).call(message, payload) {
                Ok(reply) => match not_held(&reply.message) {
                    Some(why) => self.fail_over(links, &why)?,
                    None => return Ok(reply),
                },
                Err(e) => self.fail_over(links, &e.to_string())?,
            }
        }
    }

    /// The number of a new change.
    fn next_seq(&self) -> u64 {
        self.0.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Has the memory manager copy the address space for `child`: the
    /// ranges where the copy differs (see `Message::Forked`), and the
    /// child's key. `Ok(Err(errno))` is the fork failing as Linux's would
    /// (ENOMEM: the child's commit charge does not fit).
    #[allow(clippy::type_complexity)]
    pub fn fork(
        &self,
        child: ProcessId,
    ) -> Result<Result<(Vec<RangeChange>, ClusterSecret), i32>, String> {
        let message = Message::Fork {
            parent: self.pid(),
            child,
            seq: self.next_seq(),
        };
        let reply = self.call(|l| &l.client, &message, &[])?;
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
        let _ = self.call(|l| &l.client, &Message::ReleaseProcess { pid }, &[]);
    }

    /// Holds every connection across a fork (none is being opened).
    pub fn hold_for_fork(&self) -> Vec<ClientHold<'static>> {
        let mut held: Vec<ClientHold<'static>> =
            self.links().all().map(Client::hold_for_fork).collect();
        held.extend(self.0.spilled.hold_for_fork());
        held
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
        held: Vec<ClientHold<'static>>,
    ) {
        self.0.pid.store(pid, Ordering::Relaxed);
        // A new process: its changes are numbered from the start.
        self.0.seq.store(0, Ordering::Relaxed);
        let identity = Identity::process(tree, pid);
        {
            let mut config = lock(&self.0.config);
            config.secret = key.clone();
            config.identity = identity.clone();
        }
        // As itself, with its own key (the parent's is overwritten).
        for client in self.links().all() {
            client.speak_as(key.clone(), identity.clone());
        }
        self.0.spilled.speak_as(key, &identity);
        for hold in held {
            hold.disconnect();
        }
    }

    /// Builds the process's address space from a program image.
    /// `Ok(Err(why))` is the memory manager refusing the image (the old
    /// address space is kept); `Err` is the memory manager being unusable.
    pub fn exec(&self, image: &[u8]) -> Result<Result<ExecImage, String>, String> {
        let message = Message::Exec {
            pid: self.pid(),
            seq: self.next_seq(),
            backup: self.home().backup,
        };
        let reply = self.call(|l| &l.client, &message, image)?;
        match reply.message {
            Message::ExecLoaded(image) => {
                self.0.spilled.clear();
                Ok(Ok(image))
            }
            Message::Error(e) => Ok(Err(e.message)),
            other => Err(self.unexpected("Exec", other)),
        }
    }

    /// Runs an address-space call; `Ok(Err(errno))` is the call failing as
    /// Linux would, `Err` is the memory manager being unusable.
    pub fn memory_op(&self, op: MemoryOp) -> Result<Result<MemoryOpDone, i32>, String> {
        let name = op.name();
        let message = Message::Memory {
            pid: self.pid(),
            op,
            seq: self.next_seq(),
            spill: Vec::new(),
        };
        let reply = self.call(|l| &l.client, &message, &[])?;
        match reply.message {
            Message::MemoryDone(done) => {
                self.0.spilled.forget(&done.unspilled);
                self.0.spilled.learn(&done.spilled, &lock(&self.0.config));
                Ok(Ok(done))
            }
            Message::MemoryFailed { errno } => Ok(Err(errno)),
            other => Err(self.unexpected(name, other)),
        }
    }

    /// The regions spilled to other memory managers.
    pub fn spilled(&self) -> &Spilled {
        &self.0.spilled
    }

    /// Tells the home which holders of spilled regions were lost, and
    /// learns where those regions are now; `Ok(false)`: none was. Call it
    /// with no write-back in flight and no fault being served: the home
    /// copies each region to a new holder before it answers.
    pub fn report_lost(&self) -> Result<bool, String> {
        let lost = self.0.spilled.take_lost();
        if lost.is_empty() {
            return Ok(false);
        }
        let message = Message::RegionsLost {
            pid: self.pid(),
            lost: lost.clone(),
        };
        let reply = self
            .call(|l| &l.client, &message, &[])
            .and_then(|reply| match reply.message {
                Message::RegionsMoved(moved) => Ok(moved),
                other => Err(self.unexpected("RegionsLost", other)),
            });
        match reply {
            Ok(moved) => {
                self.0.spilled.learn(&moved, &lock(&self.0.config));
                Ok(true)
            }
            Err(e) => {
                // Told with the next loss.
                self.0.spilled.lost_again(lost);
                Err(e)
            }
        }
    }

    /// The fetch connection of the calling fault thread.
    fn lane(links: &Links) -> &Client {
        match LANE.with(|l| l.get()) {
            0 => &links.client,
            n => &links.lanes[(n - 1) % links.lanes.len()],
        }
    }

    /// Sends a write-back batch of `addrs` on the write-back connection
    /// and waits for its acknowledgement, failing over and sending it
    /// again while the primary is lost.
    fn write_back_again(&self, addrs: &[u64], pages: &[u8]) -> Result<(), CacheError> {
        let message = Message::WriteBack {
            pid: self.pid(),
            addrs: addrs.to_vec(),
        };
        let reply = self
            .call(|l| &l.writeback, &message, pages)
            .map_err(CacheError::Remote)?;
        self.written_back(reply.message)
    }

    fn written_back(&self, reply: Message) -> Result<(), CacheError> {
        match reply {
            Message::WrittenBack => Ok(()),
            Message::Error(e) => Err(CacheError::Remote(format!(
                "the {} refused a write-back: {}",
                self.describe(),
                e.message
            ))),
            other => Err(CacheError::Remote(format!(
                "the {} answered WriteBack with {}",
                self.describe(),
                other.kind()
            ))),
        }
    }
}

/// Why `reply` says the memory manager no longer holds the process (it
/// was restarted, or the process moved on), if it does.
fn not_held(reply: &Message) -> Option<String> {
    match reply {
        Message::Error(e) if e.code == lego_proto::ErrorCode::NotHeld => Some(e.message.clone()),
        _ => None,
    }
}

/// Keeps `parts` as one buffer.
fn joined(parts: &[&[u8]]) -> Vec<u8> {
    let mut all = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        all.extend_from_slice(part);
    }
    all
}

impl Backing for RemoteMemory {
    fn fetch(&self, addr: u64, buf: &mut [u8]) -> Result<bool, CacheError> {
        let message = Message::FetchPage {
            pid: self.pid(),
            addr,
        };
        if self.0.spilled.is_spilled(addr) {
            return self
                .0
                .spilled
                .fetch(addr, &message, |reply| match reply.message {
                    Message::Page if reply.payload.len() == PAGE_SIZE => {
                        buf[..PAGE_SIZE].copy_from_slice(&reply.payload);
                        Ok(true)
                    }
                    Message::ZeroPage => Ok(false),
                    other => Err(format!("it answered FetchPage with {}", other.kind())),
                });
        }
        let reply = self
            .call(Self::lane, &message, &[])
            .map_err(CacheError::Remote)?;
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
        let message = Message::FetchPages {
            pid: self.pid(),
            addr,
            count: count as u32,
        };
        if self.0.spilled.is_spilled(addr) {
            let (got, pages) = self
                .0
                .spilled
                .fetch(addr, &message, |reply| pages_of(reply, count))?;
            *buf = pages;
            return Ok(got);
        }
        let reply = self
            .call(Self::lane, &message, &[])
            .map_err(CacheError::Remote)?;
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
        if self.0.spilled.any() {
            // The pages of spilled regions go to their holders, the rest
            // home; the batch is done when all are.
            // (`parts` are runs of pages; split, one per address.)
            let pages: Vec<&[u8]> = parts.iter().flat_map(|p| p.chunks(PAGE_SIZE)).collect();
            if pages.len() != addrs.len() {
                return Err(CacheError::Remote(format!(
                    "a write-back of {} pages with {} pages of contents",
                    addrs.len(),
                    pages.len()
                )));
            }
            let mut home = Vec::new();
            let away = self.0.spilled.send(self.pid(), addrs, &pages, &mut home);
            if !away.is_empty() {
                let home_addrs: Vec<u64> = home.iter().map(|&i| addrs[i]).collect();
                let home_parts: Vec<&[u8]> = home.iter().map(|&i| pages[i]).collect();
                let homeward = (!home.is_empty())
                    .then(|| self.write_back_home(&home_addrs, &home_parts))
                    .transpose()?;
                // Kept until acknowledged: a region its holders no longer
                // hold (moved without this runtime) goes where the home
                // says.
                let mut homeward_page = vec![false; addrs.len()];
                for &i in &home {
                    homeward_page[i] = true;
                }
                let kept: Vec<(u64, Vec<u8>)> = (0..addrs.len())
                    .filter(|&i| !homeward_page[i])
                    .map(|i| (addrs[i], pages[i].to_vec()))
                    .collect();
                let me = self.clone();
                return Ok(WriteBack::new(move || {
                    let away = match me.0.spilled.wait(away) {
                        Ok(()) => Ok(()),
                        Err(missed) => me.write_back_moved(missed, &kept),
                    };
                    if let Some(ticket) = homeward {
                        ticket.finish()?;
                    }
                    away
                }));
            }
        }
        self.write_back_home(addrs, parts)
    }
}

impl RemoteMemory {
    /// Asks the home where every spilled region is now and learns it:
    /// `false` if it did not answer. Safe with write-backs in flight (the
    /// home changes nothing for it).
    pub fn refresh_holders(&self) -> bool {
        let message = Message::RegionsLost {
            pid: self.pid(),
            lost: Vec::new(),
        };
        match self.call(|l| &l.client, &message, &[]) {
            Ok(reply) => match reply.message {
                Message::RegionsMoved(regions) => {
                    self.0.spilled.learn_answer(&regions, &lock(&self.0.config));
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    /// The pages of `kept` in the regions `missed` names reached no holder
    /// this runtime knew: sent again, once, where the home says the
    /// regions are now.
    fn write_back_moved(
        &self,
        missed: crate::mm::spilled::Missed,
        kept: &[(u64, Vec<u8>)],
    ) -> Result<(), CacheError> {
        if !self.refresh_holders() {
            return Err(missed.into());
        }
        let again: Vec<&(u64, Vec<u8>)> = kept
            .iter()
            .filter(|(addr, _)| missed.regions.contains(&lego_proto::region_of(*addr)))
            .collect();
        let addrs: Vec<u64> = again.iter().map(|(a, _)| *a).collect();
        let pages: Vec<&[u8]> = again.iter().map(|(_, p)| p.as_slice()).collect();
        let mut home = Vec::new();
        let sent = self.0.spilled.send(self.pid(), &addrs, &pages, &mut home);
        if !home.is_empty() {
            // Come home meanwhile.
            let home_addrs: Vec<u64> = home.iter().map(|&i| addrs[i]).collect();
            let home_parts: Vec<&[u8]> = home.iter().map(|&i| pages[i]).collect();
            self.write_back_home(&home_addrs, &home_parts)?.finish()?;
        }
        self.0.spilled.wait(sent).map_err(CacheError::from)
    }

    /// Sends a write-back batch to the home (see `Backing::write_back`).
    fn write_back_home(&self, addrs: &[u64], parts: &[&[u8]]) -> Result<WriteBack, CacheError> {
        let links = self.links();
        // With a backup the batch is kept until acknowledged: if the
        // primary goes before it answers, the batch goes to the new one.
        let kept = self.home().backup.is_some().then(|| joined(parts));
        let addrs = addrs.to_vec();
        // A connection of its own, so the memory manager stores this batch
        // on one thread while it serves the next fetch on another.
        let message = Message::WriteBack {
            pid: self.pid(),
            addrs: addrs.clone(),
        };
        let sent = links
            .writeback
            .connection()
            .and_then(|conn| conn.send(&message, parts).map(|pending| (conn, pending)));
        let me = self.clone();
        let timeout = links.writeback.request_timeout();
        let retrier = self.clone();
        let again = move |links: &Links, e: String| -> Result<(), CacheError> {
            let me = retrier;
            let Some(pages) = kept else {
                return Err(CacheError::Remote(format!(
                    "lost the {}: {e}",
                    me.describe()
                )));
            };
            me.fail_over(links, &e).map_err(CacheError::Remote)?;
            me.write_back_again(&addrs, &pages)
        };
        Ok(WriteBack::new(move || match sent {
            Ok((conn, pending)) => match conn.wait(pending, timeout) {
                Ok(reply) => match not_held(&reply.message) {
                    Some(why) => again(links, why),
                    None => me.written_back(reply.message),
                },
                Err(e) => again(links, e.to_string()),
            },
            Err(e) => again(links, e.to_string()),
        }))
    }
}

/// A home of one memory manager and no backup (tests, a host without
/// replicas).
pub fn home_of(name: String, addr: SocketAddr) -> MemoryHome {
    MemoryHome {
        primary: MemoryHolder { name, addr },
        backup: None,
        epoch: 0,
    }
}
