//! The memory manager's request handling: `Exec`, `Fork`, `Memory`,
//! `FetchPage`, `FetchPages`, `WriteBack` and `ReleaseProcess` for the processes
//! homed here.
//!
//! # Locking
//!
//! The process table and each process sit behind their own mutex, and the
//! pool behind a third. Lock order is process, then pool; the table lock is
//! only held to look up, insert or remove an entry, never while taking
//! another lock, so requests for different processes only meet at the pool.
//! A process removed from the table (released, or replaced by a new `Exec`)
//! has its address space taken out under its lock, so a request that looked
//! it up just before sees an unknown process rather than freed pages.
//!
//! The regions other managers' processes spilled here sit behind a fourth
//! mutex, taken before the pool's and never with a process's.
//!
//! Every failure a peer can cause is a reply: malformed or out-of-range
//! requests get `BadRequest` naming the process and address involved.

use crate::files::FileReader;
use crate::loader;
use crate::pool::PagePool;
use crate::regions::{RegionStore, Write};
use crate::replica::{Link, Links};
use crate::vma::{is_aligned, AddressSpace, FileSource, Outcome};
use lego_proto::{
    CopyProgress, ErrorCode, Frame, HeldBytes, HeldCopy, Load, MemoryHolder, MemoryHome, MemoryOp,
    MemoryOpDone, Message, ProcessId, SpaceLayout, SpilledRegion, MAX_FETCH_PAGES, MAX_IMAGE_LEN,
    MAX_WRITEBACK_PAGES, PAGE_SIZE,
};
use lego_transport::{ClusterSecret, PeerInfo, Reply, Service};
use spill::{discarded, has_spills};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tracing::{info, warn};

mod spill;

/// Most processes one memory manager holds at once.
pub const MAX_PROCESSES: usize = 4096;

/// One process's memory here: its address space, and how this copy
/// relates to the other one.
pub struct Process {
    pub space: AddressSpace,
    rep: Replication,
    /// Spilled regions moved to a new holder without the runtime (see
    /// `MoveRegions`), until the runtime learns the new holders.
    mirrors: Vec<Mirror>,
}

/// A spilled region moved without the runtime: `source` passes the
/// runtime's pages of it on to `target` until told to stop.
pub(crate) struct Mirror {
    region: u64,
    source: MemoryHolder,
    target: MemoryHolder,
}

/// A process's replication state on this memory manager.
#[derive(Default)]
struct Replication {
    /// The monitor's decision this copy follows (0: the placement's).
    epoch: u64,
    /// This is the backup copy: only its primary's `Replicate`s change it,
    /// until the monitor promotes it.
    is_backup: bool,
    /// Where the primary passes every change on (`None`: no backup, or it
    /// was lost).
    backup: Option<Arc<Link>>,
    /// The last change (Exec, Fork, Memory), by `seq`, and its answer.
    last: Option<(u64, Message)>,
    /// A copy being made on a new backup (see `copy_to_backup`).
    copying: Option<Copying>,
    /// A backup's copy still being made by its primary (`ReplicaOf` began
    /// it, `ReplicaComplete` not yet come): nothing to fail over to.
    partial: bool,
}

impl Replication {
    /// The backup, or the one a copy is being made on (it is the backup
    /// once the copy is done).
    fn backup_or_copy(&self) -> Option<MemoryHolder> {
        self.backup
            .as_ref()
            .or(self.copying.as_ref().map(|c| &c.link))
            .map(|l| l.holder().clone())
    }
}

/// A copy of a process being made on a new backup while it runs.
struct Copying {
    link: Arc<Link>,
    /// Ranges whose pages changed since the copy began (written back,
    /// discarded, moved): sent again before the backup takes over.
    touched: Vec<(u64, u64)>,
}

impl Copying {
    /// Records what `request` and its `reply` changed.
    fn touch(&mut self, request: &Message, reply: &Message) {
        match (request, reply) {
            (Message::WriteBack { addrs, .. }, _) => self
                .touched
                .extend(addrs.iter().map(|&a| (a, a + PAGE_SIZE as u64))),
            (_, Message::MemoryDone(done)) => {
                for m in &done.moves {
                    self.touched.push((m.from, m.from + m.len));
                    self.touched.push((m.to, m.to + m.len));
                }
                for c in done.changes.iter().filter(|c| c.discard) {
                    self.touched.push((c.start, c.end));
                }
            }
            (Message::Exec { .. }, _) => self
                .touched
                .push((lego_proto::USER_MIN, lego_proto::USER_END)),
            _ => {}
        }
    }
}

/// Stored pages per message of a copy (1 MiB).
const COPY_CHUNK: usize = 256;

/// Pages changed during a copy that the last round sends while the
/// process waits (8 MiB); more are sent first while it runs.
const COPY_LAST_ROUND: usize = 2048;

/// Sorted, merged ranges.
fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// One process's state; `None` once released.
type ProcessSlot = Arc<Mutex<Option<Process>>>;

/// The memory manager's state, served through [`Service`].
pub struct MemoryService {
    /// Configured capacity, reported as is.
    capacity: u64,
    pool: Mutex<PagePool>,
    processes: Mutex<HashMap<ProcessId, ProcessSlot>>,
    /// The process tree each address space belongs to, when a runtime
    /// (which authenticates for one tree) made it: a runtime may act only
    /// on its own address space.
    trees: Mutex<HashMap<ProcessId, ProcessId>>,
    /// Reads the pages of private file mappings from storage.
    files: FileReader,
    /// Connections to the backups of processes here.
    links: Links,
    /// This manager as the cluster knows it, and the monitor's address,
    /// once it joined: a primary whose backup is lost reports it there.
    joined: OnceLock<(MemoryHolder, std::net::SocketAddr)>,
    /// The service itself, for the threads that copy processes to new
    /// backups.
    me: OnceLock<std::sync::Weak<MemoryService>>,
    /// The copies to new backups being made, for the load report.
    copies: Mutex<HashMap<ProcessId, CopyProgress>>,
    /// What each process held when last reported (for one busy then).
    held: Mutex<HashMap<ProcessId, HeldBytes>>,
    /// The regions of processes homed elsewhere held here.
    regions: Mutex<RegionStore>,
    /// Whether `regions` holds any: a runtime's fetch or write-back, the
    /// miss path, looks there only then.
    any_regions: AtomicBool,
}

/// Locks, ignoring poisoning: nothing here panics while holding a lock, and
/// if something did, refusing every later request would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bad_request(message: String) -> Reply {
    Message::error(ErrorCode::BadRequest, message).into()
}

/// The monitor's word for epoch `asked` reaching a copy already at `here`,
/// a later one.
fn past_epoch(pid: ProcessId, here: u64, asked: u64) -> Reply {
    Message::error(
        ErrorCode::Denied,
        format!("process {pid:#x} is at epoch {here} here, past {asked}"),
    )
    .into()
}

fn unknown_process(pid: ProcessId) -> Reply {
    bad_request(format!(
        "unknown process {pid:#x}: it has no address space on this memory manager"
    ))
}

impl MemoryService {
    pub fn new(capacity: u64) -> MemoryService {
        MemoryService {
            capacity,
            pool: Mutex::new(PagePool::new(capacity)),
            processes: Mutex::new(HashMap::new()),
            trees: Mutex::new(HashMap::new()),
            files: FileReader::new(None),
            links: Links::new(None),
            joined: OnceLock::new(),
            me: OnceLock::new(),
            copies: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            regions: Mutex::new(RegionStore::default()),
            any_regions: AtomicBool::new(false),
        }
    }

    /// Lets the service start threads of its own (copies to new backups).
    pub fn started(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// Lets file mappings read from storage managers, and backups be
    /// reached, authenticated with the cluster secret under `name`.
    pub fn with_storage_access(mut self, secret: ClusterSecret, name: String) -> MemoryService {
        self.links = Links::new(Some((secret.clone(), name.clone())));
        self.files = FileReader::new(Some((secret, name)));
        self
    }

    /// Drops every process's memory: the monitor fenced this manager (it
    /// was taken for dead, and its processes moved on), so none of it may
    /// be served again.
    pub fn drop_everything(&self) {
        let slots: Vec<_> = lock(&self.processes).drain().map(|(_, s)| s).collect();
        lock(&self.trees).clear();
        for slot in &slots {
            self.free_slot(slot);
        }
        // The regions held for other homes too: their runtimes go on with
        // the regions' other copies.
        {
            let mut regions = lock(&self.regions);
            let mut pool = lock(&self.pool);
            for pid in regions.pids() {
                regions.release(&mut pool, pid, None);
            }
            self.any_regions.store(false, Ordering::Release);
        }
        warn!("fenced: dropped the memory of {} processes", slots.len());
    }

    /// Records where this manager serves and where the monitor is, once
    /// it joined the cluster.
    pub fn joined(&self, me: MemoryHolder, monitor: std::net::SocketAddr) {
        let _ = self.joined.set((me, monitor));
    }

    /// The contents of page `addr`: stored, from its file, or `None` for zeros.
    fn page_contents(&self, space: &AddressSpace, addr: u64) -> Result<Option<Vec<u8>>, String> {
        if let Some(id) = space.page(addr) {
            return Ok(Some(lock(&self.pool).get(id).to_vec()));
        }
        match space.file_page(addr) {
            Some((source, offset)) => self
                .files
                .page(source, offset)
                .map(|page| Some(page.to_vec())),
            None => Ok(None),
        }
    }

    /// The load reported with each heartbeat.
    pub fn load(&self) -> Load {
        let regions = lock(&self.regions).report();
        let pool = lock(&self.pool);
        let used = pool.used();
        let committed = pool.committed();
        drop(pool);
        Load::Memory {
            capacity: self.capacity,
            used,
            committed,
            copies: lock(&self.copies).values().cloned().collect(),
            held: self.held_bytes(),
            regions,
        }
    }

    /// What each process holds here. A process whose lock is taken (a
    /// change being passed on may wait seconds for a slow backup) is
    /// reported as it was last, so a heartbeat never waits for one.
    fn held_bytes(&self) -> Vec<HeldBytes> {
        let slots: Vec<(ProcessId, ProcessSlot)> = lock(&self.processes)
            .iter()
            .map(|(&pid, slot)| (pid, Arc::clone(slot)))
            .collect();
        let mut last = lock(&self.held);
        let mut now = HashMap::with_capacity(slots.len());
        for (pid, slot) in slots {
            let held = match slot.try_lock() {
                Ok(guard) => guard.as_ref().map(|p| HeldBytes {
                    pid,
                    bytes: (p.space.stored_pages() * PAGE_SIZE) as u64,
                    primary: !p.rep.is_backup,
                }),
                Err(_) => last.get(&pid).copied(),
            };
            if let Some(held) = held {
                now.insert(pid, held);
            }
        }
        *last = now;
        last.values().copied().collect()
    }

    /// Number of processes with an address space here.
    pub fn processes(&self) -> usize {
        lock(&self.processes).len()
    }

    fn slot(&self, pid: ProcessId) -> Option<ProcessSlot> {
        lock(&self.processes).get(&pid).cloned()
    }

    /// Lets go of this manager's copy of process `pid`, taken out of its
    /// slot under the slot's lock: forgets it and frees its pages. Its
    /// replication state is what is left.
    fn let_go(&self, pid: ProcessId, mut process: Process) -> Replication {
        lock(&self.processes).remove(&pid);
        lock(&self.trees).remove(&pid);
        self.files.forget(pid);
        process.space.release(&mut lock(&self.pool));
        process.rep
    }

    /// Frees a process's address space, if it still has one.
    fn free_slot(&self, slot: &ProcessSlot) {
        if let Some(mut process) = lock(slot).take() {
            process.space.release(&mut lock(&self.pool));
        }
    }

    /// Applies a change of a process (`Exec`, `Fork`, `Memory`,
    /// `WriteBack`, `ReleaseProcess`): from its runtime on the primary,
    /// or passed on by the primary (`forwarded`: its epoch and the
    /// process's tree) on the backup. A change already made (its `seq` is
    /// the last one's) gets the answer it got. The primary passes the
    /// change on to the backup, in the order it applies changes, and
    /// answers once the backup holds it too.
    fn change(&self, request: Frame, forwarded: Option<(u64, ProcessId)>) -> Reply {
        let (pid, seq) = match &request.message {
            Message::Exec { pid, seq, .. } | Message::Memory { pid, seq, .. } => (*pid, *seq),
            Message::Fork { parent, seq, .. } => (*parent, *seq),
            Message::WriteBack { pid, .. } | Message::ReleaseProcess { pid } => (*pid, 0),
            Message::Respill { pid, .. } if forwarded.is_some() => (*pid, 0),
            other => return bad_request(format!("{} is not a change", other.kind())),
        };
        let slot = match (&request.message, self.slot(pid)) {
            (_, Some(slot)) => slot,
            (Message::Exec { .. }, None) => {
                let mut table = lock(&self.processes);
                if table.len() >= MAX_PROCESSES {
                    return bad_request(format!(
                        "exec of process {pid:#x}: this memory manager already holds {MAX_PROCESSES} processes"
                    ));
                }
                Arc::clone(table.entry(pid).or_default())
            }
            (Message::ReleaseProcess { .. }, None) => return Message::Released.into(),
            (_, None) => return unknown_process(pid),
        };
        let mut guard = lock(&slot);
        let fresh = guard.is_none();
        if let Some(process) = guard.as_ref() {
            let rep = &process.rep;
            match forwarded {
                None if rep.is_backup => {
                    return Message::error(
                        ErrorCode::NotHeld,
                        format!("this memory manager holds the backup of process {pid:#x}, not its primary"),
                    )
                    .into()
                }
                // The copy moved on: the sender is a stale primary (cut off
                // while this copy was promoted), and learns it is.
                Some((epoch, _)) if !rep.is_backup || epoch < rep.epoch => {
                    return Message::error(
                        ErrorCode::NotHeld,
                        format!(
                            "a change of process {pid:#x} from a primary of epoch {epoch}: this copy follows epoch {}{}",
                            rep.epoch,
                            if rep.is_backup { "" } else { " as its primary" }
                        ),
                    )
                    .into()
                }
                _ => {}
            }
            if let Some((last, answer)) = &rep.last {
                if seq != 0 && *last == seq {
                    return answer.clone().into();
                }
            }
        }
        let pool_forced = forwarded.is_some();
        // A write-back goes to the backup first, so both store it at once
        // (it is checked the same way on both: they agree on the answer).
        let mut early = None;
        if let (Message::WriteBack { .. }, None, Some(process)) =
            (&request.message, forwarded, guard.as_ref())
        {
            if let Some(link) = &process.rep.backup {
                let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
                early = Some((
                    Arc::clone(link),
                    link.send(pid, tree, process.rep.epoch, &request),
                ));
            }
        }
        // The file a mapping reads from, as checked here.
        let mut mapped = None;
        let reply = match &request.message {
            Message::Exec { backup, .. } => {
                let reply = self.exec(&mut guard, pid, &request.payload, pool_forced);
                if fresh && guard.is_some() {
                    let process = guard.as_mut().expect("just made");
                    process.rep.is_backup = forwarded.is_some();
                    process.rep.epoch = forwarded.map_or(0, |(epoch, _)| epoch);
                    if forwarded.is_none() {
                        process.rep.backup = backup.as_ref().and_then(|b| self.links.to(b));
                    }
                }
                reply
            }
            Message::Fork { child, .. } => self.fork(guard.as_mut(), pid, *child, pool_forced),
            Message::Memory { spill, .. } if forwarded.is_none() && !spill.is_empty() => {
                return Message::error(
                    ErrorCode::Denied,
                    format!("process {pid:#x}: only its home decides where its regions go"),
                )
                .into();
            }
            Message::Memory { op, spill, .. } => match guard.as_mut() {
                Some(process) => {
                    let (reply, source) = self.memory(
                        process,
                        pid,
                        op.clone(),
                        spill,
                        pool_forced,
                        forwarded.is_some(),
                    );
                    mapped = source;
                    reply
                }
                None => unknown_process(pid),
            },
            Message::WriteBack { addrs, .. } => match guard.as_mut() {
                Some(process) => self.write_back(process, pid, addrs, &request.payload),
                None => unknown_process(pid),
            },
            Message::Respill { regions, .. } => {
                match guard.as_mut() {
                    Some(process) => {
                        let mut pool = lock(&self.pool);
                        for r in regions {
                            if let Err(why) =
                                process.space.spill(&mut pool, r.region, r.holders.clone())
                            {
                                warn!("process {pid:#x}: the primary's new holders of region {}: {why}", r.region);
                            }
                        }
                        Message::RegionsChanged.into()
                    }
                    None => unknown_process(pid),
                }
            }
            Message::ReleaseProcess { .. } => {
                let released = guard.take();
                lock(&self.processes).remove(&pid);
                self.files.forget(pid);
                if let Some(mut process) = released {
                    if forwarded.is_none() {
                        self.release_spilled(pid, &process.space);
                    }
                    process.space.release(&mut lock(&self.pool));
                    info!(
                        pid = format_args!("{pid:#x}"),
                        "process address space released"
                    );
                    // Passed on below, with the replication state it had.
                    *guard = None;
                    drop(guard);
                    return self.pass_on(
                        pid,
                        forwarded,
                        &process.rep,
                        request,
                        Message::Released.into(),
                    );
                }
                return Message::Released.into();
            }
            _ => unreachable!("matched above"),
        };
        let Some(process) = guard.as_mut() else {
            // A failed first exec leaves nothing.
            lock(&self.processes).remove(&pid);
            return reply;
        };
        if seq != 0 {
            process.rep.last = Some((seq, reply.message.clone()));
        }
        if let Some(copying) = process.rep.copying.as_mut() {
            copying.touch(&request.message, &reply.message);
        }
        // What the primary passes on: the change as made here (a file
        // mapping with the voucher its pages are read with, checked here).
        let forked_child = match (&request.message, &reply.message) {
            (Message::Fork { child, .. }, Message::Forked { .. }) => Some(*child),
            _ => None,
        };
        let request = match (&request.message, &reply.message) {
            (
                Message::Memory {
                    op: MemoryOp::MmapFile { .. },
                    ..
                },
                Message::MemoryDone(_),
            ) => match &mapped {
                Some(source) => with_source(request, source),
                None => request,
            },
            _ => request,
        };
        // With the regions spilled to make room for it.
        let request = match (request, &reply.message) {
            (
                Frame {
                    id,
                    message: Message::Memory { pid, op, seq, .. },
                    payload,
                },
                Message::MemoryDone(done),
            ) if !done.spilled.is_empty() && forwarded.is_none() => Frame {
                id,
                message: Message::Memory {
                    pid,
                    op,
                    seq,
                    spill: done.spilled.clone(),
                },
                payload,
            },
            (request, _) => request,
        };
        // Only what changed something is passed on: a change that failed
        // here with nothing done (ENOMEM, a bad request) might succeed on
        // a backup that charges past its capacity.
        let changed = !matches!(
            reply.message,
            Message::Error(_) | Message::MemoryFailed { .. }
        );
        let pending = match (&process.rep.backup, forwarded) {
            _ if early.is_some() => early,
            (Some(link), None) if changed => {
                let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
                Some((
                    Arc::clone(link),
                    link.send(pid, tree, process.rep.epoch, &request),
                ))
            }
            _ => None,
        };
        let epoch = process.rep.epoch;
        drop(guard);
        match pending {
            Some((link, None)) => self.backup_lost(pid, epoch, &link, "it cannot be reached"),
            Some((link, Some(sent))) => match link.wait_change(sent) {
                Ok(()) => {}
                Err(refused) if refused.superseded => {
                    // A child this stale copy forked goes with it.
                    let child = forked_child.and_then(|child| self.slot(child).map(|s| (child, s)));
                    if let Some((child, slot)) = child {
                        let process = lock(&slot).take();
                        if let Some(process) = process {
                            self.let_go(child, process);
                        }
                    }
                    return self.superseded(pid, epoch, &link);
                }
                // (A write-back refused here is refused there too.)
                Err(refused) => {
                    if changed {
                        // Given up here meanwhile (a drain): the change
                        // is on neither copy for sure, so it is not
                        // acknowledged; the runtime sends it again to
                        // the process's new primary.
                        if self.slot(pid).is_none() {
                            return Message::error(
                                ErrorCode::NotHeld,
                                format!("process {pid:#x} moved on from this memory manager"),
                            )
                            .into();
                        }
                        self.backup_lost(pid, epoch, &link, &refused.why);
                    }
                }
            },
            None => {}
        }
        reply
    }

    /// The backup of process `pid` took over from this copy (epoch
    /// `epoch`) while this manager was cut off: this copy is stale, so it
    /// is dropped, and the change is answered `NotHeld` rather than done
    /// (its runtime fails over, and sends it to the new primary).
    fn superseded(&self, pid: ProcessId, epoch: u64, link: &Link) -> Reply {
        warn!(
            pid = format_args!("{pid:#x}"),
            "{} serves the process past epoch {epoch} now: dropping this stale copy",
            link.holder().name
        );
        if let Some(slot) = self.slot(pid) {
            let mut guard = lock(&slot);
            if guard.as_ref().is_some_and(|p| p.rep.epoch == epoch) {
                if let Some(process) = guard.take() {
                    self.let_go(pid, process);
                }
            }
        }
        Message::error(
            ErrorCode::NotHeld,
            format!("process {pid:#x} moved on from this memory manager"),
        )
        .into()
    }

    /// Passes a change the process no longer holds state for (its
    /// release) on to its backup, then answers.
    fn pass_on(
        &self,
        pid: ProcessId,
        forwarded: Option<(u64, ProcessId)>,
        rep: &Replication,
        request: Frame,
        reply: Reply,
    ) -> Reply {
        if let (Some(link), None) = (&rep.backup, forwarded) {
            if let Some(pending) = link.send(pid, pid, rep.epoch, &request) {
                if let Err(why) = link.wait(pending) {
                    warn!(
                        pid = format_args!("{pid:#x}"),
                        "the backup did not take a release: {why}"
                    );
                }
            }
        }
        reply
    }

    /// The backup of process `pid` did not take a change: the process
    /// goes on without one, and the monitor is told, to choose another.
    fn backup_lost(&self, pid: ProcessId, epoch: u64, link: &Arc<Link>, why: &str) {
        warn!(
            pid = format_args!("{pid:#x}"),
            "lost the backup {}: {why}; the process goes on without one",
            link.holder().name
        );
        if let Some(slot) = self.slot(pid) {
            if let Some(process) = lock(&slot).as_mut() {
                if process
                    .rep
                    .backup
                    .as_ref()
                    .is_some_and(|b| Arc::ptr_eq(b, link))
                {
                    process.rep.backup = None;
                }
            }
        }
        let Some((me, monitor)) = self.joined.get().cloned() else {
            return;
        };
        let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
        let home = MemoryHome {
            primary: me,
            backup: Some(link.holder().clone()),
            epoch,
        };
        let failed = link.holder().name.clone();
        let links = self.links.clone();
        // Not on the runtime's time: the report waits for the monitor.
        let _ = std::thread::Builder::new()
            .name("backup lost".into())
            .spawn(move || {
                let message = Message::Failover {
                    pid,
                    tree,
                    home,
                    failed,
                };
                if let Err(e) = links.ask_monitor(monitor, &message) {
                    warn!(
                        pid = format_args!("{pid:#x}"),
                        "cannot report the lost backup: {e}"
                    );
                }
            });
    }

    /// The monitor's word: serve process `pid` as its primary from epoch
    /// `epoch` on.
    fn promote(&self, pid: ProcessId, epoch: u64, backup: Option<MemoryHolder>) -> Reply {
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let mut guard = lock(&slot);
        let Some(process) = guard.as_mut() else {
            return unknown_process(pid);
        };
        if epoch < process.rep.epoch {
            return past_epoch(pid, process.rep.epoch, epoch);
        }
        if process.rep.partial {
            return Message::error(
                ErrorCode::Internal,
                format!("this manager holds only part of process {pid:#x}: its copy was still being made"),
            )
            .into();
        }
        process.rep.epoch = epoch;
        process.rep.is_backup = false;
        // A new backup gets a whole copy first, made while the process
        // runs; until it holds one, the process goes on without a backup.
        process.rep.backup = None;
        process.rep.copying = None;
        let link = backup.as_ref().and_then(|b| self.links.to(b));
        info!(
            pid = format_args!("{pid:#x}"),
            epoch,
            "serving the process as its primary{}",
            backup.map_or(String::new(), |b| format!(", copying it to {}", b.name))
        );
        if let (Some(link), Some(me)) = (link, self.me.get().and_then(|w| w.upgrade())) {
            process.rep.copying = Some(Copying {
                link: Arc::clone(&link),
                touched: Vec::new(),
            });
            drop(guard);
            let _ = std::thread::Builder::new()
                .name(format!("copy {pid:x}"))
                .spawn(move || {
                    if let Err(why) = me.copy_to_backup(pid, &link) {
                        me.copy_failed(pid, &link, &why);
                    }
                });
        }
        Message::Promoted.into()
    }

    /// Copies process `pid` to the backup behind `link` while it runs:
    /// its layout, its pages in chunks, then, in rounds, the pages changed
    /// meanwhile; the last round (and the layout again) is sent while the
    /// process waits, after which the backup gets every change as usual.
    /// `Ok(false)`: the copy was given up, not made (the process ended,
    /// or another copy replaced this one).
    fn copy_to_backup(&self, pid: ProcessId, link: &Arc<Link>) -> Result<bool, String> {
        let started = std::time::Instant::now();
        // (Not under the copies' lock: a heartbeat's load report takes it.)
        let total_bytes = self.slot(pid).map_or(0, |slot| {
            lock(&slot)
                .as_ref()
                .map_or(0, |p| (p.space.stored_pages() * PAGE_SIZE) as u64)
        });
        lock(&self.copies).insert(
            pid,
            CopyProgress {
                pid,
                to: link.holder().name.clone(),
                copied_bytes: 0,
                total_bytes,
            },
        );
        let mut sent_pages = 0usize;
        let whole = [(lego_proto::USER_MIN, lego_proto::USER_END)];
        let result = (|| -> Result<bool, String> {
            let Some(slot) = self.slot(pid) else {
                return Ok(false);
            };
            // Whether this copy is still the one wanted.
            let current = |guard: &Option<Process>| {
                guard.as_ref().is_some_and(|p| {
                    p.rep
                        .copying
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(&c.link, link))
                })
            };
            {
                let guard = lock(&slot);
                if !current(&guard) {
                    return Ok(false);
                }
                let sent = self.send_layout(pid, &guard, link)?;
                drop(guard);
                link.wait(sent)?;
            }
            sent_pages += self.copy_ranges(&slot, pid, link, &whole, &current)?;
            for round in 0.. {
                let mut guard = lock(&slot);
                if !current(&guard) {
                    return Ok(false);
                }
                let process = guard.as_mut().expect("current");
                let copying = process.rep.copying.as_mut().expect("current");
                let touched = merged(std::mem::take(&mut copying.touched));
                let pending: usize = touched
                    .iter()
                    .map(|&(s, e)| process.space.pages_in(s, e, COPY_LAST_ROUND + 1).len())
                    .sum();
                if pending > COPY_LAST_ROUND && round < 4 {
                    drop(guard);
                    sent_pages += self.copy_ranges(&slot, pid, link, &touched, &current)?;
                    continue;
                }
                // The last round, while the process waits.
                let sent = self.send_layout(pid, &guard, link)?;
                link.wait(sent)?;
                for &range in &touched {
                    let mut from = range.0;
                    loop {
                        let (sent, next, n) =
                            self.send_pages(pid, &guard, link, (from, range.1))?;
                        link.wait(sent)?;
                        sent_pages += n;
                        match next {
                            Some(next) => from = next,
                            None => break,
                        }
                    }
                }
                let complete = Message::ReplicaComplete { pid };
                let sent = link
                    .send_message(&complete, &[])
                    .ok_or_else(|| "cannot reach it".to_string())?;
                link.wait(sent)?;
                let process = guard.as_mut().expect("current");
                process.rep.copying = None;
                process.rep.backup = Some(Arc::clone(link));
                break;
            }
            Ok(true)
        })();
        lock(&self.copies).remove(&pid);
        match result {
            Ok(true) => {
                info!(
                    pid = format_args!("{pid:#x}"),
                    "copied to {} ({} pages) in {:?}: it is the backup now",
                    link.holder().name,
                    sent_pages,
                    started.elapsed()
                );
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(why) => {
                if let Some(slot) = self.slot(pid) {
                    if let Some(process) = lock(&slot).as_mut() {
                        process.rep.copying = None;
                    }
                }
                Err(why)
            }
        }
    }

    /// A copy to a new backup the monitor chose after a loss failed: the
    /// process goes on without one, and the monitor is told.
    fn copy_failed(&self, pid: ProcessId, link: &Arc<Link>, why: &str) {
        let epoch = self
            .slot(pid)
            .and_then(|slot| lock(&slot).as_ref().map(|p| p.rep.epoch))
            .unwrap_or(0);
        self.backup_lost(pid, epoch, link, &format!("copying the process: {why}"));
    }

    /// The monitor's word (a drain): make `backup` hold a whole copy of
    /// process `pid`, from epoch `epoch` on. The current backup, if any,
    /// gets every change until the new one holds it all; the answer waits
    /// for that.
    fn rebackup(&self, pid: ProcessId, epoch: u64, backup: Option<&MemoryHolder>) -> Reply {
        let Some(backup) = backup else {
            return self.without_backup(pid, epoch);
        };
        let Some(link) = self.links.to(backup) else {
            return Message::error(
                ErrorCode::Internal,
                format!("cannot reach {} at {}", backup.name, backup.addr),
            )
            .into();
        };
        {
            let Some(slot) = self.slot(pid) else {
                return unknown_process(pid);
            };
            let mut guard = lock(&slot);
            let Some(process) = guard.as_mut() else {
                return unknown_process(pid);
            };
            let rep = &mut process.rep;
            if rep.is_backup || epoch < rep.epoch {
                return Message::error(
                    ErrorCode::Denied,
                    format!(
                        "a new backup for process {pid:#x} at epoch {epoch}: this manager holds {} at epoch {}",
                        if rep.is_backup { "its backup" } else { "it" },
                        rep.epoch
                    ),
                )
                .into();
            }
            if rep.copying.is_some() {
                return bad_request(format!(
                    "process {pid:#x} is being copied to a new backup already"
                ));
            }
            rep.epoch = epoch;
            if rep.backup.as_ref().is_some_and(|b| b.holder() == backup) {
                return Message::Promoted.into();
            }
            rep.copying = Some(Copying {
                link: Arc::clone(&link),
                touched: Vec::new(),
            });
        }
        info!(
            pid = format_args!("{pid:#x}"),
            epoch, "copying the process to {}, its new backup", backup.name
        );
        match self.copy_to_backup(pid, &link) {
            Ok(true) => Message::Promoted.into(),
            Ok(false) => Message::error(
                ErrorCode::Internal,
                format!(
                    "the copy of process {pid:#x} to {} was given up (the process ended or moved)",
                    backup.name
                ),
            )
            .into(),
            Err(why) => Message::error(
                ErrorCode::Internal,
                format!("copying process {pid:#x} to {}: {why}", backup.name),
            )
            .into(),
        }
    }

    /// The monitor's word: process `pid` goes on without a backup, from
    /// epoch `epoch` on (its backup is drained, and no other manager can
    /// take it).
    fn without_backup(&self, pid: ProcessId, epoch: u64) -> Reply {
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let mut guard = lock(&slot);
        let Some(process) = guard.as_mut().filter(|p| !p.rep.is_backup) else {
            return not_served(&guard, pid);
        };
        if epoch < process.rep.epoch {
            return past_epoch(pid, process.rep.epoch, epoch);
        }
        process.rep.epoch = epoch;
        process.rep.backup = None;
        process.rep.copying = None;
        warn!(
            pid = format_args!("{pid:#x}"),
            "the process goes on without a backup"
        );
        Message::Promoted.into()
    }

    /// The monitor's word (a drain): drop this copy of process `pid`. A
    /// primary gives it up only with a whole backup to take over (the
    /// monitor promotes it next); its runtime is answered `NotHeld` from
    /// now on, and fails over.
    fn relinquish(&self, pid: ProcessId, epoch: u64) -> Reply {
        let Some(slot) = self.slot(pid) else {
            return Message::Relinquished.into();
        };
        let mut guard = lock(&slot);
        let Some(process) = guard.as_ref() else {
            return Message::Relinquished.into();
        };
        let rep = &process.rep;
        if rep.epoch > epoch {
            return past_epoch(pid, rep.epoch, epoch);
        }
        if !rep.is_backup && (rep.backup.is_none() || rep.copying.is_some()) {
            return bad_request(format!(
                "process {pid:#x} has no whole backup here to take over from this primary"
            ));
        }
        let Some(process) = guard.take() else {
            return Message::Relinquished.into();
        };
        drop(guard);
        let rep = self.let_go(pid, process);
        info!(
            pid = format_args!("{pid:#x}"),
            "gave up the {} of the process",
            if rep.is_backup {
                "backup copy"
            } else {
                "primary copy"
            }
        );
        Message::Relinquished.into()
    }

    /// Every copy of a process held here, for the monitor.
    fn holdings(&self) -> Vec<HeldCopy> {
        let slots: Vec<(ProcessId, ProcessSlot)> = lock(&self.processes)
            .iter()
            .map(|(&pid, slot)| (pid, Arc::clone(slot)))
            .collect();
        let mut held = Vec::with_capacity(slots.len());
        for (pid, slot) in slots {
            let guard = lock(&slot);
            let Some(process) = guard.as_ref() else {
                continue;
            };
            held.push(HeldCopy {
                pid,
                tree: lock(&self.trees).get(&pid).copied().unwrap_or(pid),
                epoch: process.rep.epoch,
                primary: !process.rep.is_backup,
                backup: process.rep.backup.as_ref().map(|l| l.holder().clone()),
                copying: process.rep.copying.is_some(),
                stored_bytes: (process.space.stored_pages() * PAGE_SIZE) as u64,
            });
        }
        held
    }

    /// Sends the process's layout to the backup (the guard is its lock).
    fn send_layout(
        &self,
        pid: ProcessId,
        guard: &Option<Process>,
        link: &Link,
    ) -> Result<crate::replica::Sent, String> {
        let process = guard.as_ref().ok_or("the process ended")?;
        let layout = space_layout(process);
        let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
        let message = Message::ReplicaOf {
            pid,
            tree,
            epoch: process.rep.epoch,
            layout,
        };
        link.send_message(&message, &[])
            .ok_or_else(|| "cannot reach it".to_string())
    }

    /// Sends the stored pages of `[from, end)`, at most a chunk, clearing
    /// that part of the backup's copy first: what was sent, where the
    /// next chunk starts (`None`: the range is done), and how many pages.
    fn send_pages(
        &self,
        pid: ProcessId,
        guard: &Option<Process>,
        link: &Link,
        (from, end): (u64, u64),
    ) -> Result<(crate::replica::Sent, Option<u64>, usize), String> {
        let process = guard.as_ref().ok_or("the process ended")?;
        let pages = process.space.pages_in(from, end, COPY_CHUNK);
        let next = (pages.len() == COPY_CHUNK).then(|| pages[pages.len() - 1].0 + PAGE_SIZE as u64);
        let clear_end = next.unwrap_or(end);
        let mut payload = Vec::with_capacity(pages.len() * PAGE_SIZE);
        {
            let pool = lock(&self.pool);
            for &(_, id) in &pages {
                payload.extend_from_slice(pool.get(id));
            }
        }
        let message = Message::ReplicaPages {
            pid,
            clear: vec![(from, clear_end)],
            addrs: pages.iter().map(|&(a, _)| a).collect(),
        };
        let sent = link
            .send_message(&message, &[&payload])
            .ok_or_else(|| "cannot reach it".to_string())?;
        Ok((sent, next, pages.len()))
    }

    /// Copies the pages of `ranges` chunk by chunk, the process's lock
    /// held for each chunk's read only: how many pages were sent.
    fn copy_ranges(
        &self,
        slot: &ProcessSlot,
        pid: ProcessId,
        link: &Link,
        ranges: &[(u64, u64)],
        current: &dyn Fn(&Option<Process>) -> bool,
    ) -> Result<usize, String> {
        let mut sent_pages = 0;
        for &(start, end) in ranges {
            let mut from = start;
            loop {
                let guard = lock(slot);
                if !current(&guard) {
                    return Ok(sent_pages);
                }
                let (sent, next, n) = self.send_pages(pid, &guard, link, (from, end))?;
                drop(guard);
                link.wait(sent)?;
                sent_pages += n;
                if let Some(progress) = lock(&self.copies).get_mut(&pid) {
                    progress.copied_bytes += (n * PAGE_SIZE) as u64;
                }
                match next {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        Ok(sent_pages)
    }

    /// A primary's copy of a process, or its layout brought up to date:
    /// this manager becomes (or stays) its backup, keeping the pages it
    /// already has inside the new layout.
    fn replica_of(
        &self,
        pid: ProcessId,
        tree: ProcessId,
        epoch: u64,
        layout: &SpaceLayout,
    ) -> Reply {
        let slot = {
            let mut table = lock(&self.processes);
            if !table.contains_key(&pid) && table.len() >= MAX_PROCESSES {
                return bad_request(format!(
                    "a copy of process {pid:#x}: this memory manager already holds {MAX_PROCESSES} processes"
                ));
            }
            Arc::clone(table.entry(pid).or_default())
        };
        let mut guard = lock(&slot);
        if let Some(old) = guard.as_ref() {
            if !old.rep.is_backup || old.rep.epoch > epoch {
                return Message::error(
                    ErrorCode::Denied,
                    format!(
                        "a copy of process {pid:#x} of epoch {epoch}: this manager holds it at epoch {}{}",
                        old.rep.epoch,
                        if old.rep.is_backup { "" } else { " as its primary" }
                    ),
                )
                .into();
            }
        }
        let mut pool = lock(&self.pool);
        pool.set_forced(true);
        let built = AddressSpace::from_layout(layout, &mut pool);
        pool.set_forced(false);
        let mut space = match built {
            Ok(space) => space,
            Err(why) => {
                drop(pool);
                if guard.is_none() {
                    lock(&self.processes).remove(&pid);
                }
                return bad_request(format!("a copy of process {pid:#x}: {why}"));
            }
        };
        if let Some(mut old) = guard.take() {
            space.adopt_pages(&mut old.space, &mut pool);
            old.space.release(&mut pool);
        }
        drop(pool);
        lock(&self.trees).insert(pid, tree);
        *guard = Some(Process {
            space,
            rep: Replication {
                epoch,
                is_backup: true,
                backup: None,
                last: layout
                    .last_reply
                    .as_ref()
                    .map(|reply| (layout.last_seq, (**reply).clone())),
                copying: None,
                partial: true,
            },
            mirrors: Vec::new(),
        });
        Message::Replicated.into()
    }

    /// A primary's copy here is whole.
    fn replica_complete(&self, pid: ProcessId) -> Reply {
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let mut guard = lock(&slot);
        let Some(process) = guard.as_mut().filter(|p| p.rep.is_backup) else {
            return not_served(&guard, pid);
        };
        process.rep.partial = false;
        Message::Replicated.into()
    }

    /// Pages of a primary's copy.
    fn replica_pages(
        &self,
        pid: ProcessId,
        clear: &[(u64, u64)],
        addrs: &[u64],
        payload: &[u8],
    ) -> Reply {
        if payload.len() != addrs.len() * PAGE_SIZE {
            return bad_request(format!(
                "pages of a copy of process {pid:#x}: {} addresses need {} bytes, got {}",
                addrs.len(),
                addrs.len() * PAGE_SIZE,
                payload.len()
            ));
        }
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let mut guard = lock(&slot);
        let Some(process) = guard.as_mut().filter(|p| p.rep.is_backup) else {
            return not_served(&guard, pid);
        };
        let pool = &mut lock(&self.pool);
        for &(start, end) in clear {
            process.space.clear_pages(pool, start, end);
        }
        for (&addr, contents) in addrs.iter().zip(payload.chunks_exact(PAGE_SIZE)) {
            if !process.space.store_copied(pool, addr, contents) {
                return Message::error(
                    ErrorCode::Internal,
                    format!("a copy of process {pid:#x}: the page pool is exhausted"),
                )
                .into();
            }
        }
        Message::Replicated.into()
    }

    fn exec(
        &self,
        guard: &mut Option<Process>,
        pid: ProcessId,
        image: &[u8],
        forced: bool,
    ) -> Reply {
        // The frame limit already keeps larger images out; this keeps the
        // bound true whatever transport delivers the request.
        if image.len() > MAX_IMAGE_LEN {
            return bad_request(format!(
                "exec of process {pid:#x}: the image is {} bytes, over the limit of {MAX_IMAGE_LEN}",
                image.len()
            ));
        }
        // Check the image before touching the old address space: a bad
        // image leaves the process as it was, like a failed execve.
        let plan = match loader::parse(image) {
            Ok(plan) => plan,
            Err(e) => return bad_request(format!("exec of process {pid:#x}: {e}")),
        };
        // Past this point the old address space is gone either way, as
        // past execve's point of no return; its memory is free for the new.
        let rep = match guard.take() {
            Some(mut old) => {
                if !forced {
                    self.release_spilled(pid, &old.space);
                }
                old.space.release(&mut lock(&self.pool));
                old.rep
            }
            None => Replication::default(),
        };
        let built = {
            let mut pool = lock(&self.pool);
            pool.set_forced(forced);
            let built = plan.build(image, &mut pool);
            pool.set_forced(false);
            built
        };
        let (space, exec) = match built {
            Ok(built) => built,
            Err(e) => {
                warn!(pid = format_args!("{pid:#x}"), "exec failed: {e}");
                return bad_request(format!("exec of process {pid:#x}: {e}"));
            }
        };
        info!(
            pid = format_args!("{pid:#x}"),
            entry = format_args!("{:#x}", exec.entry),
            mappings = exec.mappings.len(),
            pages = space.stored_pages(),
            "process address space created"
        );
        *guard = Some(Process {
            space,
            rep,
            mirrors: Vec::new(),
        });
        Message::ExecLoaded(exec).into()
    }

    /// fork: `child` gets a copy-on-write copy of `parent`'s address space.
    /// Nothing is copied now; a page is copied when one side writes it back.
    fn fork(
        &self,
        parent_state: Option<&mut Process>,
        parent: ProcessId,
        child: ProcessId,
        forced: bool,
    ) -> Reply {
        let Some(process) = parent_state else {
            return unknown_process(parent);
        };
        {
            let table = lock(&self.processes);
            if table.contains_key(&child) {
                return bad_request(format!(
                    "fork of process {parent:#x}: process {child:#x} already exists"
                ));
            }
            if table.len() >= MAX_PROCESSES {
                return bad_request(format!(
                    "fork of process {parent:#x}: this memory manager already holds {MAX_PROCESSES} processes"
                ));
            }
        }
        // The regions spilled elsewhere are copied there.
        let spills = !forced && spill::has_spills(process);
        if spills {
            if let Err(why) = self.fork_spilled(parent, child, &process.space) {
                info!("fork of process {parent:#x}: a holder of its regions refused: {why}");
                return Message::MemoryFailed {
                    errno: libc::ENOMEM,
                }
                .into();
            }
        }
        let copied = {
            let mut pool = lock(&self.pool);
            pool.set_forced(forced);
            let copied = process.space.fork_copy(&mut pool);
            pool.set_forced(false);
            copied
        };
        if copied.is_none() && spills {
            // The child's holders are the parent's.
            self.release_spilled(child, &process.space);
        }
        let Some((copy, changes)) = copied else {
            // Linux's fork fails with ENOMEM when the child's commit
            // charge does not fit.
            return Message::MemoryFailed {
                errno: libc::ENOMEM,
            }
            .into();
        };
        info!(
            parent = format_args!("{parent:#x}"),
            child = format_args!("{child:#x}"),
            pages = copy.stored_pages(),
            "address space forked"
        );
        // The child's copy follows the parent's: same backup, same epoch;
        // a parent being copied to a new backup it has none of yet gets
        // its child copied there too.
        let copy_to = match (&process.rep.backup, &process.rep.copying) {
            (None, Some(copying)) => Some(Arc::clone(&copying.link)),
            _ => None,
        };
        let rep = Replication {
            epoch: process.rep.epoch,
            is_backup: process.rep.is_backup,
            backup: process.rep.backup.clone(),
            last: None,
            copying: copy_to.as_ref().map(|link| Copying {
                link: Arc::clone(link),
                touched: Vec::new(),
            }),
            partial: process.rep.partial,
        };
        let tree = lock(&self.trees).get(&parent).copied().unwrap_or(parent);
        // Booked now (not only once answered): a copy names the tree.
        lock(&self.trees).insert(child, tree);
        let replaced = lock(&self.processes).insert(
            child,
            Arc::new(Mutex::new(Some(Process {
                space: copy,
                rep,
                mirrors: Vec::new(),
            }))),
        );
        if let Some(replaced) = replaced {
            // A concurrent Fork to the same child id: the last one wins.
            self.free_slot(&replaced);
        }
        if let (Some(link), Some(me)) = (copy_to, self.me.get().and_then(|w| w.upgrade())) {
            let _ = std::thread::Builder::new()
                .name(format!("copy {child:x}"))
                .spawn(move || {
                    if let Err(why) = me.copy_to_backup(child, &link) {
                        me.copy_failed(child, &link, &why);
                    }
                });
        }
        // The child's key, for its runtime (authenticated as the parent
        // here) to hand to its child.
        let child_key = self
            .files
            .process_key(tree, child)
            .map_or([0; 32], |key| key.to_bytes());
        Message::Forked { changes, child_key }.into()
    }

    fn memory(
        &self,
        process: &mut Process,
        pid: ProcessId,
        op: MemoryOp,
        spill: &[SpilledRegion],
        forced: bool,
        forwarded: bool,
    ) -> (Reply, Option<FileSource>) {
        // A file mapping passed on by the primary carries the one-file
        // voucher the primary made after its check: taken as it is.
        let source = match &op {
            MemoryOp::MmapFile {
                storage,
                handle,
                caller,
                ..
            } if forwarded => {
                if caller.scope != lego_proto::VoucherScope::ReadFile(handle.clone())
                    || !self.files.sealed(caller)
                {
                    return (
                        Message::error(
                            ErrorCode::Denied,
                            format!(
                                "a file mapping of process {pid:#x} passed on without its voucher"
                            ),
                        )
                        .into(),
                        None,
                    );
                }
                Some(FileSource {
                    storage: *storage,
                    handle: handle.clone(),
                    caller: (**caller).clone(),
                })
            }
            MemoryOp::MmapFile {
                storage,
                handle,
                caller,
                ..
            } => {
                // The mapper's own voucher: sealed, of the tree the address
                // space belongs to (a runtime naming another tree would have
                // us dial its listener with that tree's keys).
                let tree = lock(&self.trees).get(&pid).copied();
                // The process's own voucher, or its open file's (for this
                // file, opened for reading).
                let own = match &caller.scope {
                    lego_proto::VoucherScope::Process => true,
                    lego_proto::VoucherScope::OpenFile {
                        handle: file, read, ..
                    } => file == handle && *read,
                    lego_proto::VoucherScope::ReadFile(_) => false,
                };
                if !own || !self.files.sealed(caller) || tree.is_some_and(|t| t != caller.tree) {
                    return (
                        Message::error(
                            ErrorCode::Denied,
                            format!(
                                "mmap of a file for process {pid:#x} with a voucher not its own"
                            ),
                        )
                        .into(),
                        None,
                    );
                }
                let source = FileSource {
                    storage: *storage,
                    handle: handle.clone(),
                    caller: (**caller).clone(),
                };
                if let Err(errno) = self.files.check_readable(&source) {
                    return (Message::MemoryFailed { errno: errno.0 }.into(), None);
                }
                let Some(caller) = self.files.for_mapping(caller, handle) else {
                    return (
                        Message::MemoryFailed {
                            errno: libc::EACCES,
                        }
                        .into(),
                        None,
                    );
                };
                Some(FileSource { caller, ..source })
            }
            _ => None,
        };
        let backup = process.rep.backup_or_copy();
        let backup_ready = process.rep.backup.is_some();
        let space = &mut process.space;
        let me = self.joined.get().map(|(me, _)| me.name.clone());
        let kept_here = |s: &&SpilledRegion| {
            me.as_ref()
                .is_some_and(|me| s.holders.iter().any(|h| h.name == *me))
        };
        let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
        // The spilled regions this manager keeps a copy of itself: reserved
        // before the call is made, given the address space's pages of them
        // after it (so what it discards there is gone from the copy too).
        let mut kept: Vec<u64> = Vec::new();
        // The regions store before the pool, as everywhere.
        let mut held =
            (forwarded && spill.iter().any(|s| kept_here(&s))).then(|| lock(&self.regions));
        let mut pool = lock(&self.pool);
        if forwarded {
            // The regions the primary spilled to make room for this call.
            for s in spill {
                let fresh = !space.is_spilled(s.region * lego_proto::REGION_SIZE);
                if let Err(why) = space.spill(&mut pool, s.region, s.holders.clone()) {
                    warn!(
                        "process {pid:#x}: the primary's spill of region {}: {why}",
                        s.region
                    );
                    continue;
                }
                if let (true, true, Some(held)) = (fresh, kept_here(&s), held.as_mut()) {
                    // Forced, as the backup's every change is: the
                    // primary counted on this manager's room.
                    pool.set_forced(true);
                    let taken = held.hold(&mut pool, pid, tree, s.region);
                    pool.set_forced(false);
                    match taken {
                        Ok(()) => kept.push(s.region),
                        Err(why) => warn!(
                            "process {pid:#x}: keeping region {} the primary spilled: {why}",
                            s.region
                        ),
                    }
                }
            }
        }
        pool.set_forced(forced);
        let mut outcome = apply(space, &mut pool, &op, &source);
        pool.set_forced(false);
        let mut spilled = Vec::new();
        // Whether a call's outcome is its not fitting: ENOMEM, or a break
        // that stayed below where it was asked to grow (brk's failure).
        let old_brk = space.current_brk();
        let refused = |o: &Outcome| {
            o.changes.is_empty()
                && match op {
                    MemoryOp::Brk { addr } => addr > old_brk && o.result != Ok(addr),
                    _ => o.result == Err(crate::vma::Errno(libc::ENOMEM)),
                }
        };
        if refused(&outcome) && !forwarded && self.joined.get().is_some() {
            let plan = Self::spill_plan(space, &pool, refused, |shape, scratch| {
                apply(shape, scratch, &op, &source)
            });
            if plan.is_none() {
                info!(
                    pid = format_args!("{pid:#x}"),
                    "{} does not fit, and spilling regions would not make it",
                    op.name()
                );
            }
            drop(pool);
            let copies = if backup.is_some() { 2 } else { 1 };
            let placed = match plan {
                Some(plan) => self.place_spills(pid, backup.as_ref(), backup_ready, copies, &plan),
                None => Vec::new(),
            };
            let placed = match self.move_to_holders(pid, space, backup.as_ref(), placed) {
                Ok(placed) => placed,
                Err((placed, why)) => {
                    warn!("process {pid:#x}: cannot move pages to the regions' holders: {why}");
                    self.give_up_spills(pid, &placed);
                    Vec::new()
                }
            };
            let keep: Vec<u64> = placed.iter().filter(kept_here).map(|s| s.region).collect();
            held = (!keep.is_empty()).then(|| lock(&self.regions));
            pool = lock(&self.pool);
            if !placed.is_empty() {
                for s in &placed {
                    if let Err(why) = space.spill(&mut pool, s.region, s.holders.clone()) {
                        warn!("process {pid:#x}: spilling region {}: {why}", s.region);
                    }
                }
                let mut keeping = Ok(());
                if let Some(held) = held.as_mut() {
                    for &region in &keep {
                        keeping = held.hold(&mut pool, pid, tree, region);
                        if keeping.is_err() {
                            break;
                        }
                        kept.push(region);
                    }
                }
                if let Err(why) = &keeping {
                    warn!("process {pid:#x}: keeping a region it spilled: {why}");
                } else {
                    outcome = apply(space, &mut pool, &op, &source);
                }
                if keeping.is_err() || refused(&outcome) {
                    // Others took the room meanwhile (or the call cannot
                    // reach a spilled region, as a move into one): nothing
                    // changes, and the home keeps its pages.
                    if let Some(held) = held.as_mut() {
                        for &region in &kept {
                            held.release(&mut pool, pid, Some(region));
                        }
                        self.any_regions.store(!held.is_empty(), Ordering::Release);
                    }
                    for s in &placed {
                        space.unspill(&mut pool, s.region);
                    }
                    drop(pool);
                    drop(held);
                    self.give_up_spills(pid, &placed);
                    return (memory_reply(outcome, Vec::new(), Vec::new()), source);
                }
                spilled = placed;
            }
        }
        if let Some(held) = held.as_mut() {
            for &region in &kept {
                if let Err(why) = Self::adopt_region_pages(held, &mut pool, space, pid, region) {
                    warn!("process {pid:#x}: keeping the pages of region {region}: {why}");
                }
            }
            if !kept.is_empty() {
                self.any_regions.store(true, Ordering::Release);
            }
        }
        drop(held);
        if forwarded {
            // Answered as the primary did, should it be asked again after
            // a failover.
            spilled = spill.to_vec();
        }
        // The holders have the spilled regions' pages now; regions left
        // with no writable memory come home (the backup decides the same
        // from the same layout).
        let regions: Vec<u64> = spilled.iter().map(|s| s.region).collect();
        space.drop_spilled_pages(&mut pool, &regions);
        let unspilled = if refused(&outcome) {
            Vec::new()
        } else {
            space.unspill_empty(&mut pool)
        };
        drop(pool);
        if !forwarded {
            if !unspilled.is_empty() {
                self.give_up_spills(pid, &unspilled);
            }
            if has_spills(process) {
                let discard = discarded(&outcome);
                if !discard.is_empty() {
                    self.discard_spilled(pid, &process.space, &discard);
                }
            }
        }
        let unspilled = unspilled.into_iter().map(|s| s.region).collect();
        (memory_reply(outcome, spilled, unspilled), source)
    }

    fn fetch_page(&self, pid: ProcessId, addr: u64) -> Reply {
        if !is_aligned(addr) {
            return bad_request(format!(
                "fetch of page {addr:#x} of process {pid:#x}: the address is not page-aligned"
            ));
        }
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let guard = lock(&slot);
        let Some(space) = serving(&guard, pid) else {
            return not_served(&guard, pid);
        };
        if space.find(addr).is_none() {
            return bad_request(format!(
                "fetch of page {addr:#x} of process {pid:#x}: the address is not mapped"
            ));
        }
        if space.is_spilled(addr) {
            return bad_request(format!(
                "fetch of page {addr:#x} of process {pid:#x}: it lies in a region held by \
                 another memory manager"
            ));
        }
        match self.page_contents(space, addr) {
            Ok(Some(page)) => Reply {
                message: Message::Page,
                payload: page,
            },
            Ok(None) => Message::ZeroPage.into(),
            Err(why) => Message::error(ErrorCode::Internal, why).into(),
        }
    }

    /// Readahead: up to `count` pages from `addr`, clamped to the mapping
    /// holding `addr`; absent pages travel as zeros.
    fn fetch_pages(&self, pid: ProcessId, addr: u64, count: u32) -> Reply {
        if !is_aligned(addr) || count == 0 || count > MAX_FETCH_PAGES {
            return bad_request(format!(
                "fetch of {count} pages at {addr:#x} of process {pid:#x}: the address must be \
                 page-aligned and the count 1-{MAX_FETCH_PAGES}"
            ));
        }
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let guard = lock(&slot);
        let Some(space) = serving(&guard, pid) else {
            return not_served(&guard, pid);
        };
        let Some(vma) = space.find(addr) else {
            return bad_request(format!(
                "fetch of page {addr:#x} of process {pid:#x}: the address is not mapped"
            ));
        };
        if space.is_spilled(addr) {
            return bad_request(format!(
                "fetch of page {addr:#x} of process {pid:#x}: it lies in a region held by \
                 another memory manager"
            ));
        }
        let mut count = (count as u64).min((vma.end - addr) / PAGE_SIZE as u64);
        if space.touches_spilled(addr, addr + count * PAGE_SIZE as u64) {
            // Not into a region held elsewhere: its pages are not here.
            let region_end = (lego_proto::region_of(addr) + 1) * lego_proto::REGION_SIZE;
            count = count.min((region_end - addr) / PAGE_SIZE as u64);
        }
        // Built by appending, so each byte is written once (no zeroing
        // pass over pages that are then overwritten).
        let mut payload = Vec::with_capacity(count as usize * PAGE_SIZE);
        if vma.file.is_some() {
            // File pages may need storage reads: page by page, without
            // holding the pool across them.
            for i in 0..count {
                match self.page_contents(space, addr + i * PAGE_SIZE as u64) {
                    Ok(Some(page)) => payload.extend_from_slice(&page),
                    Ok(None) => payload.resize(payload.len() + PAGE_SIZE, 0),
                    Err(why) => return Message::error(ErrorCode::Internal, why).into(),
                }
            }
        } else {
            let pool = lock(&self.pool);
            for i in 0..count {
                match space.page(addr + i * PAGE_SIZE as u64) {
                    Some(id) => payload.extend_from_slice(pool.get(id)),
                    None => payload.resize(payload.len() + PAGE_SIZE, 0),
                }
            }
        }
        Reply {
            message: Message::Pages {
                count: count as u32,
            },
            payload,
        }
    }

    fn write_back(
        &self,
        process: &mut Process,
        pid: ProcessId,
        addrs: &[u64],
        payload: &[u8],
    ) -> Reply {
        if addrs.len() > MAX_WRITEBACK_PAGES {
            return bad_request(format!(
                "write-back of process {pid:#x}: {} pages, over the limit of {MAX_WRITEBACK_PAGES}",
                addrs.len()
            ));
        }
        if payload.len() != addrs.len() * PAGE_SIZE {
            return bad_request(format!(
                "write-back of process {pid:#x}: {} addresses need {} bytes of payload, got {}",
                addrs.len(),
                addrs.len() * PAGE_SIZE,
                payload.len()
            ));
        }
        let space = &mut process.space;
        // Check every address before storing any page.
        for &addr in addrs {
            let problem = if !is_aligned(addr) {
                "is not page-aligned"
            } else {
                match space.find(addr) {
                    None => "is not mapped",
                    // Only charged mappings may hold pages; a mapping that
                    // was never writable cannot have dirty pages.
                    Some(vma) if !vma.accounted => "was never writable",
                    Some(_) if space.is_spilled(addr) => {
                        "lies in a region held by another memory manager"
                    }
                    Some(_) => continue,
                }
            };
            return bad_request(format!(
                "write-back of process {pid:#x}: page {addr:#x} {problem}; nothing was stored"
            ));
        }
        let pool = &mut lock(&self.pool);
        for (&addr, contents) in addrs.iter().zip(payload.chunks_exact(PAGE_SIZE)) {
            if !space.store_page(pool, addr, contents) {
                // The commit charge covers every page of accounted
                // mappings, so this is a bookkeeping bug, not the peer's
                // (or a backup holding more than it can).
                return Message::error(
                    ErrorCode::Internal,
                    format!("write-back of process {pid:#x}: the page pool is exhausted at page {addr:#x}"),
                )
                .into();
            }
        }
        Message::WrittenBack.into()
    }
}

/// The address space of a process this manager serves as its primary.
fn serving(guard: &Option<Process>, _pid: ProcessId) -> Option<&AddressSpace> {
    guard
        .as_ref()
        .filter(|p| !p.rep.is_backup)
        .map(|p| &p.space)
}

/// Why [`serving`] found nothing.
fn not_served(guard: &Option<Process>, pid: ProcessId) -> Reply {
    match guard {
        Some(_) => Message::error(
            ErrorCode::NotHeld,
            format!("this memory manager holds the backup of process {pid:#x}, not its primary"),
        )
        .into(),
        None => unknown_process(pid),
    }
}

/// `request` (a file `Mmap`) with its file read with `source`'s voucher.
fn with_source(mut request: Frame, source: &FileSource) -> Frame {
    if let Message::Memory {
        op: MemoryOp::MmapFile { caller, .. },
        ..
    } = &mut request.message
    {
        **caller = source.caller.clone();
    }
    request
}

/// The reply to an address-space call. A failure that still changed the
/// address space (Linux's partial mprotect and madvise) cannot be a
/// `MemoryFailed`, which carries no changes: it is a `MemoryDone` whose
/// result is the raw syscall return value, `-errno`.
fn memory_reply(outcome: Outcome, spilled: Vec<SpilledRegion>, unspilled: Vec<u64>) -> Reply {
    let result = match outcome.result {
        Ok(result) => result,
        Err(errno) if outcome.changes.is_empty() && outcome.moves.is_empty() => {
            return Message::MemoryFailed { errno: errno.0 }.into();
        }
        Err(errno) => (-i64::from(errno.0)) as u64,
    };
    Message::MemoryDone(MemoryOpDone {
        result,
        moves: outcome.moves,
        changes: outcome.changes,
        spilled,
        unspilled,
    })
    .into()
}

/// Makes address-space call `op` on `space`, charged to `pool`; a file
/// mapping reads from `source`.
fn apply(
    space: &mut AddressSpace,
    pool: &mut PagePool,
    op: &MemoryOp,
    source: &Option<FileSource>,
) -> Outcome {
    match *op {
        MemoryOp::Mmap {
            addr,
            len,
            prot,
            flags,
        } => space.mmap(pool, addr, len, prot, flags),
        MemoryOp::MmapFile {
            addr,
            len,
            prot,
            flags,
            offset,
            ..
        } => match source.clone() {
            Some(source) => space.mmap_file(pool, addr, len, prot, flags, (source, offset)),
            None => unreachable!("every MmapFile has its source made first"),
        },
        MemoryOp::Munmap { addr, len } => space.munmap(pool, addr, len),
        MemoryOp::Mprotect { addr, len, prot } => space.mprotect(pool, addr, len, prot),
        MemoryOp::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            new_addr,
        } => space.mremap(pool, old_addr, old_len, new_len, flags, new_addr),
        MemoryOp::Brk { addr } => space.brk(pool, addr),
        MemoryOp::Madvise { addr, len, advice } => space.madvise(pool, addr, len, advice),
    }
}

impl MemoryService {
    /// Whether a runtime of tree `tree` may make `request`: only about its
    /// own tree's address spaces (a new one for exec, a new child for a
    /// fork of its own).
    /// Whether the runtime of process `me` of tree `tree` may send
    /// `request`: only about its own address space (and a fork of it into
    /// a new one).
    fn allowed(&self, tree: ProcessId, me: ProcessId, request: &Message) -> Result<(), String> {
        let trees = lock(&self.trees);
        let mine = |pid: &ProcessId| *pid == me && trees.get(pid) == Some(&tree);
        let fresh = |pid: &ProcessId| !trees.contains_key(pid) && self.slot(*pid).is_none();
        let ok = match request {
            // A new address space only for the tree's first process (the
            // others are forks of it), so a runtime cannot claim pids.
            Message::Exec { pid, .. } => mine(pid) || (*pid == me && *pid == tree && fresh(pid)),
            Message::Fork { parent, child, .. } => mine(parent) && fresh(child),
            Message::Memory { pid, .. }
            | Message::FetchPage { pid, .. }
            | Message::FetchPages { pid, .. }
            | Message::WriteBack { pid, .. }
            | Message::RegionsLost { pid, .. }
            | Message::GetLayout { pid } => mine(pid),
            // Releasing what is not there is a no-op anyone may ask for.
            Message::ReleaseProcess { pid } => mine(pid) || fresh(pid),
            other => return Err(format!("a runtime may not send {}", other.kind())),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} names a process other than this runtime's",
                request.kind()
            ))
        }
    }

    /// Whether runtime `me`'s `request` is about its own process, which
    /// this manager does not hold (it was restarted since, or the process
    /// moved on); a first exec makes it, a release finds nothing to do.
    fn lost_to(&self, me: ProcessId, tree: ProcessId, request: &Message) -> bool {
        needs_held(request, tree) == Some(me) && self.slot(me).is_none()
    }

    /// The answer to runtime `me` whose request about its own process
    /// failed because the process went from here while it was served (a
    /// drain gave it up, or a stale copy was dropped): `NotHeld`, so it
    /// fails over, rather than the error that met it.
    fn lost_meanwhile(&self, me: ProcessId, about: Option<ProcessId>, reply: Reply) -> Reply {
        let failed = matches!(&reply.message, Message::Error(e) if e.code != ErrorCode::NotHeld);
        if failed && about == Some(me) && self.slot(me).is_none() {
            return Message::error(
                ErrorCode::NotHeld,
                format!("process {me:#x} moved on from this memory manager"),
            )
            .into();
        }
        reply
    }

    /// Books what a request made or freed, once it succeeded.
    fn settle_trees(&self, tree: Option<ProcessId>, booking: Booking, reply: &Reply) {
        let mut trees = lock(&self.trees);
        match (booking, &reply.message) {
            (Booking::Exec(pid), Message::ExecLoaded(_)) => {
                if let Some(tree) = tree {
                    trees.insert(pid, tree);
                }
            }
            (Booking::Fork(parent, child), Message::Forked { .. }) => {
                if let Some(tree) = tree.or_else(|| trees.get(&parent).copied()) {
                    trees.insert(child, tree);
                }
            }
            (Booking::Release(pid), Message::Released) => {
                trees.remove(&pid);
            }
            _ => {}
        }
    }
}

/// What a request may change in the tree table.
#[derive(Clone, Copy)]
enum Booking {
    Exec(ProcessId),
    Fork(ProcessId, ProcessId),
    Release(ProcessId),
    Nothing,
}

impl Booking {
    fn of(request: &Message) -> Booking {
        match *request {
            Message::Exec { pid, .. } => Booking::Exec(pid),
            Message::Fork { parent, child, .. } => Booking::Fork(parent, child),
            Message::Replicate { ref inner, .. } => Booking::of(inner),
            Message::ReleaseProcess { pid } => Booking::Release(pid),
            _ => Booking::Nothing,
        }
    }
}

impl Service for MemoryService {
    fn handle(&self, peer: &PeerInfo, request: Frame) -> Reply {
        if let Some(reply) = self.serve_held_region(peer, &request) {
            return reply;
        }
        let tree = match (&request.message, peer.identity.role) {
            (_, lego_proto::Role::Process) => {
                let (Some(tree), Some(pid)) = (peer.identity.tree(), peer.identity.pid()) else {
                    return Message::error(ErrorCode::Denied, "a runtime without a pid and tree")
                        .into();
                };
                if self.lost_to(pid, tree, &request.message) {
                    return Message::error(
                        ErrorCode::NotHeld,
                        format!(
                            "this memory manager holds no memory of process {pid:#x} (restarted?)"
                        ),
                    )
                    .into();
                }
                if let Err(why) = self.allowed(tree, pid, &request.message) {
                    return Message::error(ErrorCode::Denied, why).into();
                }
                Some(tree)
            }
            // A primary's change, made for the process's tree.
            (Message::Replicate { tree, .. }, _) => Some(*tree),
            _ => None,
        };
        let booking = Booking::of(&request.message);
        let runtime = (peer.identity.role == lego_proto::Role::Process)
            .then(|| {
                let (tree, me) = (peer.identity.tree()?, peer.identity.pid()?);
                Some((me, needs_held(&request.message, tree)))
            })
            .flatten();
        let mut reply = self.serve(peer, request);
        if let Some((me, about)) = runtime {
            reply = self.lost_meanwhile(me, about, reply);
        }
        self.settle_trees(tree, booking, &reply);
        reply
    }
}

impl MemoryService {
    /// Serves a runtime's fetch or write-back of pages of its own process
    /// that lie in regions held here for its home (`None`: the request is
    /// not one, and goes the usual way).
    fn serve_held_region(&self, peer: &PeerInfo, request: &Frame) -> Option<Reply> {
        if !self.any_regions.load(Ordering::Acquire) {
            return None;
        }
        let (tree, me) = (peer.identity.tree()?, peer.identity.pid()?);
        let page = PAGE_SIZE as u64;
        let mut regions = lock(&self.regions);
        if regions.tree_of(me) != Some(tree) {
            return None;
        }
        match &request.message {
            Message::FetchPage { pid, addr } if *pid == me && regions.holds(me, *addr) => {
                if !is_aligned(*addr) {
                    return Some(bad_request(format!(
                        "fetch of page {addr:#x} of process {me:#x}: the address is not page-aligned"
                    )));
                }
                let pool = lock(&self.pool);
                Some(match regions.page(&pool, me, *addr) {
                    Some(contents) => Reply {
                        message: Message::Page,
                        payload: contents.to_vec(),
                    },
                    None => Message::ZeroPage.into(),
                })
            }
            Message::FetchPages { pid, addr, count } if *pid == me && regions.holds(me, *addr) => {
                if !is_aligned(*addr) || *count == 0 || *count > MAX_FETCH_PAGES {
                    return Some(bad_request(format!(
                        "fetch of {count} pages at {addr:#x} of process {me:#x}: the address \
                         must be page-aligned and the count 1-{MAX_FETCH_PAGES}"
                    )));
                }
                // Clamped to the region, as a home clamps to the mapping.
                let region_end = (lego_proto::region_of(*addr) + 1) * lego_proto::REGION_SIZE;
                let count = u64::from(*count).min((region_end - addr) / page);
                let pool = lock(&self.pool);
                let mut payload = Vec::with_capacity(count as usize * PAGE_SIZE);
                for i in 0..count {
                    match regions.page(&pool, me, addr + i * page) {
                        Some(contents) => payload.extend_from_slice(contents),
                        None => payload.resize(payload.len() + PAGE_SIZE, 0),
                    }
                }
                Some(Reply {
                    message: Message::Pages {
                        count: count as u32,
                    },
                    payload,
                })
            }
            Message::WriteBack { pid, addrs }
                if *pid == me
                    && !addrs.is_empty()
                    && addrs.iter().all(|&a| regions.holds(me, a)) =>
            {
                if addrs.len() > MAX_WRITEBACK_PAGES
                    || request.payload.len() != addrs.len() * PAGE_SIZE
                    || !addrs.iter().all(|&a| is_aligned(a))
                {
                    return Some(bad_request(format!(
                        "write-back of {} pages of process {me:#x} with {} bytes: the \
                         addresses must be page-aligned, one page of payload each",
                        addrs.len(),
                        request.payload.len()
                    )));
                }
                let mut pool = lock(&self.pool);
                // Pages of a region being copied to a holder the runtime
                // does not know yet go there too, before the write counts.
                let mirrors =
                    match regions.store_all(&mut pool, me, addrs, &request.payload, Write::Runtime)
                    {
                        Ok(mirrors) => mirrors,
                        Err(e) => return Some(bad_request(e.to_string())),
                    };
                drop(pool);
                drop(regions);
                for (to, pages) in mirrors {
                    // Not taken, then: this copy may be on its way out (moved
                    // off), and the runtime sends it again where the home
                    // says the region is.
                    if let Err(why) = self.mirror_pages(me, &to, addrs, &request.payload, &pages) {
                        return Some(Message::error(ErrorCode::Internal, why).into());
                    }
                }
                Some(Message::WrittenBack.into())
            }
            _ => None,
        }
    }

    /// Stores pages of regions of process `pid` held here that another
    /// memory manager sent (`RegionPages`, `MirrorPages`), written as
    /// `how` says.
    fn store_region_pages(
        &self,
        pid: ProcessId,
        addrs: &[u64],
        payload: &[u8],
        how: Write,
    ) -> Reply {
        if addrs.len() > MAX_WRITEBACK_PAGES || payload.len() != addrs.len() * PAGE_SIZE {
            return bad_request(format!(
                "pages of the regions of process {pid:#x}: {} addresses with {} bytes \
                 (at most {MAX_WRITEBACK_PAGES}, one page each)",
                addrs.len(),
                payload.len()
            ));
        }
        let mut held = lock(&self.regions);
        let mut pool = lock(&self.pool);
        // Passed on here, passed on again where this copy is being copied
        // to in turn (the region moved twice before the runtime learned).
        let mirrors = match held.store_all(&mut pool, pid, addrs, payload, how) {
            Ok(mirrors) => mirrors,
            Err(e) => return bad_request(e.to_string()),
        };
        drop(pool);
        drop(held);
        for (to, pages) in mirrors {
            // That copy is given up; this one has the pages.
            let _ = self.mirror_pages(pid, &to, addrs, payload, &pages);
        }
        Message::RegionsChanged.into()
    }

    fn serve(&self, peer: &PeerInfo, request: Frame) -> Reply {
        let component = matches!(
            peer.identity.role,
            lego_proto::Role::Memory | lego_proto::Role::Monitor | lego_proto::Role::Processor
        );
        match request.message {
            Message::Exec { .. }
            | Message::Fork { .. }
            | Message::Memory { .. }
            | Message::WriteBack { .. }
            | Message::ReleaseProcess { .. } => self.change(request, None),
            Message::FetchPage { pid, addr } => self.fetch_page(pid, addr),
            Message::FetchPages { pid, addr, count } => self.fetch_pages(pid, addr, count),
            Message::Replicate {
                pid,
                tree,
                epoch,
                inner,
            } if peer.identity.role == lego_proto::Role::Memory => {
                if inner_pid(&inner) != Some(pid) {
                    return bad_request(format!(
                        "a change of process {pid:#x} passed on with a {} of another",
                        inner.kind()
                    ));
                }
                let frame = Frame {
                    id: request.id,
                    message: *inner,
                    payload: request.payload,
                };
                self.change(frame, Some((epoch, tree)))
            }
            Message::Promote { pid, epoch, backup }
                if peer.identity.role == lego_proto::Role::Monitor =>
            {
                self.promote(pid, epoch, backup)
            }
            Message::ReplicaOf {
                pid,
                tree,
                epoch,
                layout,
            } if peer.identity.role == lego_proto::Role::Memory => {
                self.replica_of(pid, tree, epoch, &layout)
            }
            Message::ReplicaPages { pid, clear, addrs }
                if peer.identity.role == lego_proto::Role::Memory =>
            {
                self.replica_pages(pid, &clear, &addrs, &request.payload)
            }
            Message::ReplicaComplete { pid } if peer.identity.role == lego_proto::Role::Memory => {
                self.replica_complete(pid)
            }
            Message::HoldRegion { pid, tree, region }
                if peer.identity.role == lego_proto::Role::Memory =>
            {
                let mut regions = lock(&self.regions);
                let mut pool = lock(&self.pool);
                // A new copy starts empty: whatever an earlier give-up that
                // did not arrive left here is stale.
                if regions.tree_of(pid) == Some(tree) {
                    regions.release(&mut pool, pid, Some(region));
                }
                match regions.hold(&mut pool, pid, tree, region) {
                    Ok(()) => {
                        self.any_regions.store(true, Ordering::Release);
                        Message::RegionsChanged.into()
                    }
                    Err(e) => Message::error(ErrorCode::BadRequest, e.to_string()).into(),
                }
            }
            // From the home, or from the monitor for a process no
            // processor runs any more.
            Message::ChangeRegions {
                pid,
                discard,
                release,
                all,
            } if matches!(
                peer.identity.role,
                lego_proto::Role::Memory | lego_proto::Role::Monitor
            ) =>
            {
                let mut regions = lock(&self.regions);
                let mut pool = lock(&self.pool);
                for (start, end) in discard {
                    regions.discard(&mut pool, pid, start, end);
                }
                if all {
                    regions.release(&mut pool, pid, None);
                }
                for region in release {
                    regions.release(&mut pool, pid, Some(region));
                }
                self.any_regions
                    .store(!regions.is_empty(), Ordering::Release);
                Message::RegionsChanged.into()
            }
            Message::CopyRegion {
                pid,
                region,
                to,
                mirror,
            } if peer.identity.role == lego_proto::Role::Memory => {
                if mirror {
                    if let Err(e) = lock(&self.regions).set_mirror(pid, region, Some(to.clone())) {
                        return Message::error(ErrorCode::BadRequest, e.to_string()).into();
                    }
                }
                match self.copy_region(pid, region, &to).and_then(|()| {
                    if mirror && lock(&self.regions).mirror_broken(pid, region) {
                        Err("passing the pages written meanwhile on failed".to_string())
                    } else {
                        Ok(())
                    }
                }) {
                    Ok(()) => Message::RegionsChanged.into(),
                    Err(why) => {
                        if mirror {
                            let _ = lock(&self.regions).set_mirror(pid, region, None);
                        }
                        Message::error(
                            ErrorCode::Internal,
                            format!(
                                "copying region {region} of process {pid:#x} to {}: {why}",
                                to.name
                            ),
                        )
                        .into()
                    }
                }
            }
            Message::EndMirror { pid, region }
                if peer.identity.role == lego_proto::Role::Memory =>
            {
                let mut held = lock(&self.regions);
                let broken = held.mirror_broken(pid, region);
                // Given up meanwhile: nothing passes its pages on anyway.
                let _ = held.set_mirror(pid, region, None);
                if broken {
                    return Message::error(
                        ErrorCode::Internal,
                        format!(
                            "passing pages of region {region} of process {pid:#x} on failed: \
                             the copy it was passing them to misses some"
                        ),
                    )
                    .into();
                }
                Message::RegionsChanged.into()
            }
            Message::MoveRegions { pid, from }
                if peer.identity.role == lego_proto::Role::Monitor =>
            {
                self.move_regions(pid, &from)
            }
            Message::GetLayout { pid } => {
                let Some(slot) = self.slot(pid) else {
                    return unknown_process(pid);
                };
                let guard = lock(&slot);
                match guard.as_ref() {
                    Some(process) if !process.rep.is_backup => {
                        Message::Layout(space_layout(process)).into()
                    }
                    _ => not_served(&guard, pid),
                }
            }
            Message::RegionsLost { pid, lost } => {
                let Some(slot) = self.slot(pid) else {
                    return unknown_process(pid);
                };
                let mut guard = lock(&slot);
                match guard.as_mut() {
                    Some(process) if !process.rep.is_backup => {
                        let backup = process.rep.backup.as_ref().map(|l| l.holder().clone());
                        let moved =
                            self.replace_holders(pid, &mut process.space, backup.as_ref(), &lost);
                        self.respill(pid, process, moved);
                        // Told of no loss, the runtime only asks where
                        // the regions are, perhaps with write-backs in
                        // flight: the passing on goes on.
                        if !lost.is_empty() {
                            self.end_mirrors(pid, process);
                        }
                        Message::RegionsMoved(process.space.spilled_regions()).into()
                    }
                    _ => not_served(&guard, pid),
                }
            }
            Message::RegionPages { pid, addrs }
                if peer.identity.role == lego_proto::Role::Memory =>
            {
                self.store_region_pages(pid, &addrs, &request.payload, Write::Fill)
            }
            Message::MirrorPages { pid, addrs }
                if peer.identity.role == lego_proto::Role::Memory =>
            {
                self.store_region_pages(pid, &addrs, &request.payload, Write::Mirrored)
            }
            Message::ForkRegions {
                parent,
                child,
                regions,
            } if peer.identity.role == lego_proto::Role::Memory => {
                let mut held = lock(&self.regions);
                match held.fork(&mut lock(&self.pool), parent, child, &regions) {
                    Ok(()) => Message::RegionsChanged.into(),
                    Err(e) => Message::error(ErrorCode::BadRequest, e.to_string()).into(),
                }
            }
            Message::Holdings if peer.identity.role == lego_proto::Role::Monitor => {
                Message::HoldingList(self.holdings()).into()
            }
            Message::Rebackup { pid, epoch, backup }
                if peer.identity.role == lego_proto::Role::Monitor =>
            {
                self.rebackup(pid, epoch, backup.as_ref())
            }
            Message::Relinquish { pid, epoch }
                if peer.identity.role == lego_proto::Role::Monitor =>
            {
                self.relinquish(pid, epoch)
            }
            Message::Holds { pid } if peer.identity.role == lego_proto::Role::Monitor => {
                // A copy still being made is nothing to fail over to.
                let held = self.slot(pid).and_then(|slot| {
                    lock(&slot)
                        .as_ref()
                        .filter(|p| !p.rep.partial)
                        .map(|p| (p.rep.epoch, !p.rep.is_backup))
                });
                Message::Holding {
                    held: held.is_some(),
                    epoch: held.map_or(0, |(epoch, _)| epoch),
                    primary: held.is_some_and(|(_, primary)| primary),
                }
                .into()
            }
            other
                if !component
                    && matches!(
                        other,
                        Message::Replicate { .. }
                            | Message::HoldRegion { .. }
                            | Message::ChangeRegions { .. }
                            | Message::ForkRegions { .. }
                            | Message::RegionPages { .. }
                            | Message::MirrorPages { .. }
                            | Message::EndMirror { .. }
                            | Message::MoveRegions { .. }
                            | Message::CopyRegion { .. }
                            | Message::Promote { .. }
                            | Message::Rebackup { .. }
                            | Message::Relinquish { .. }
                            | Message::Holdings
                    ) =>
            {
                Message::error(
                    ErrorCode::Denied,
                    format!("{} is for memory managers and the monitor", other.kind()),
                )
                .into()
            }
            other => Message::error(
                ErrorCode::Unsupported,
                format!(
                    "the memory manager does not serve {} requests from a {}",
                    other.kind(),
                    peer.identity.role
                ),
            )
            .into(),
        }
    }
}

/// The whole layout of `process`'s address space, with its last change.
fn space_layout(process: &Process) -> SpaceLayout {
    let (vmas, brk_start, brk, files, spilled) = process.space.layout();
    let last = process.rep.last.as_ref();
    SpaceLayout {
        vmas,
        brk_start,
        brk,
        files,
        spilled,
        last_seq: last.map_or(0, |(seq, _)| *seq),
        last_reply: last.map(|(_, m)| Box::new(m.clone())),
    }
}

/// The process a runtime's request of tree `tree` needs this manager to
/// hold (`None`: one that makes it, or needs none).
fn needs_held(request: &Message, tree: ProcessId) -> Option<ProcessId> {
    match request {
        // Only a tree's first exec makes an address space.
        Message::Exec { pid, seq, .. } if *seq > 1 || *pid != tree => Some(*pid),
        Message::Memory { pid, .. }
        | Message::FetchPage { pid, .. }
        | Message::FetchPages { pid, .. }
        | Message::WriteBack { pid, .. }
        | Message::RegionsLost { pid, .. }
        | Message::GetLayout { pid } => Some(*pid),
        Message::Fork { parent, .. } => Some(*parent),
        _ => None,
    }
}

/// The process a change passed on by a primary is about.
fn inner_pid(inner: &Message) -> Option<ProcessId> {
    match inner {
        Message::Exec { pid, .. }
        | Message::Memory { pid, .. }
        | Message::WriteBack { pid, .. }
        | Message::Respill { pid, .. }
        | Message::ReleaseProcess { pid } => Some(*pid),
        Message::Fork { parent, .. } => Some(*parent),
        _ => None,
    }
}
