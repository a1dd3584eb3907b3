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
//! Every failure a peer can cause is a reply: malformed or out-of-range
//! requests get `BadRequest` naming the process and address involved.

use crate::files::FileReader;
use crate::loader;
use crate::pool::PagePool;
use crate::vma::{is_aligned, AddressSpace, FileSource, Outcome};
use lego_proto::{
    ErrorCode, Frame, Load, MemoryOp, MemoryOpDone, Message, ProcessId, MAX_FETCH_PAGES,
    MAX_IMAGE_LEN, MAX_WRITEBACK_PAGES, PAGE_SIZE,
};
use lego_transport::{ClusterSecret, PeerInfo, Reply, Service};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tracing::{info, warn};

/// Most processes one memory manager holds at once.
pub const MAX_PROCESSES: usize = 4096;

/// One process's state; `None` once released.
type ProcessSlot = Arc<Mutex<Option<AddressSpace>>>;

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
}

/// Locks, ignoring poisoning: nothing here panics while holding a lock, and
/// if something did, refusing every later request would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bad_request(message: String) -> Reply {
    Message::error(ErrorCode::BadRequest, message).into()
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
        }
    }

    /// Lets file mappings read from storage managers, authenticated with
    /// the cluster secret under `name`.
    pub fn with_storage_access(mut self, secret: ClusterSecret, name: String) -> MemoryService {
        self.files = FileReader::new(Some((secret, name)));
        self
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
        let pool = lock(&self.pool);
        Load::Memory {
            capacity: self.capacity,
            used: pool.used(),
            committed: pool.committed(),
        }
    }

    /// Number of processes with an address space here.
    pub fn processes(&self) -> usize {
        lock(&self.processes).len()
    }

    fn slot(&self, pid: ProcessId) -> Option<ProcessSlot> {
        lock(&self.processes).get(&pid).cloned()
    }

    /// Frees a process's address space, if it still has one.
    fn free_slot(&self, slot: &ProcessSlot) {
        if let Some(mut space) = lock(slot).take() {
            space.release(&mut lock(&self.pool));
        }
    }

    fn exec(&self, pid: ProcessId, image: &[u8]) -> Reply {
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
        {
            let table = lock(&self.processes);
            if !table.contains_key(&pid) && table.len() >= MAX_PROCESSES {
                return bad_request(format!(
                    "exec of process {pid:#x}: this memory manager already holds {MAX_PROCESSES} processes"
                ));
            }
        }
        // Past this point the old address space is gone either way, as
        // past execve's point of no return; its memory is free for the new.
        let old = lock(&self.processes).remove(&pid);
        if let Some(old) = old {
            self.free_slot(&old);
        }
        let built = plan.build(image, &mut lock(&self.pool));
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
        let replaced = lock(&self.processes).insert(pid, Arc::new(Mutex::new(Some(space))));
        if let Some(replaced) = replaced {
            // A concurrent Exec of the same pid: the last one wins.
            self.free_slot(&replaced);
        }
        Message::ExecLoaded(exec).into()
    }

    /// fork: `child` gets a copy-on-write copy of `parent`'s address space.
    /// Nothing is copied now; a page is copied when one side writes it back.
    fn fork(&self, parent: ProcessId, child: ProcessId) -> Reply {
        let Some(slot) = self.slot(parent) else {
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
        let (copy, changes) = {
            let guard = lock(&slot);
            let Some(space) = guard.as_ref() else {
                return unknown_process(parent);
            };
            match space.fork_copy(&mut lock(&self.pool)) {
                Some(copy) => copy,
                // Linux's fork fails with ENOMEM when the child's commit
                // charge does not fit.
                None => {
                    return Message::MemoryFailed {
                        errno: libc::ENOMEM,
                    }
                    .into()
                }
            }
        };
        info!(
            parent = format_args!("{parent:#x}"),
            child = format_args!("{child:#x}"),
            pages = copy.stored_pages(),
            "address space forked"
        );
        let replaced = lock(&self.processes).insert(child, Arc::new(Mutex::new(Some(copy))));
        if let Some(replaced) = replaced {
            // A concurrent Fork to the same child id: the last one wins.
            self.free_slot(&replaced);
        }
        // The child's key, for its runtime (authenticated as the parent
        // here) to hand to its child.
        let tree = lock(&self.trees).get(&parent).copied().unwrap_or(parent);
        let child_key = self
            .files
            .process_key(tree, child)
            .map_or([0; 32], |key| key.to_bytes());
        Message::Forked { changes, child_key }.into()
    }

    fn memory(&self, pid: ProcessId, op: MemoryOp) -> Reply {
        // Before any lock is taken: this asks the storage manager.
        let source = match &op {
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
                    return Message::error(
                        ErrorCode::Denied,
                        format!("mmap of a file for process {pid:#x} with a voucher not its own"),
                    )
                    .into();
                }
                let source = FileSource {
                    storage: *storage,
                    handle: handle.clone(),
                    caller: (**caller).clone(),
                };
                if let Err(errno) = self.files.check_readable(&source) {
                    return Message::MemoryFailed { errno: errno.0 }.into();
                }
                let Some(caller) = self.files.for_mapping(caller, handle) else {
                    return Message::MemoryFailed {
                        errno: libc::EACCES,
                    }
                    .into();
                };
                Some(FileSource { caller, ..source })
            }
            _ => None,
        };
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let mut guard = lock(&slot);
        let Some(space) = guard.as_mut() else {
            return unknown_process(pid);
        };
        let pool = &mut lock(&self.pool);
        let outcome = match op {
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
            } => match source {
                Some(source) => space.mmap_file(pool, addr, len, prot, flags, (source, offset)),
                None => unreachable!("every MmapFile has its source made above"),
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
        };
        memory_reply(outcome)
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
        let Some(space) = guard.as_ref() else {
            return unknown_process(pid);
        };
        if space.find(addr).is_none() {
            return bad_request(format!(
                "fetch of page {addr:#x} of process {pid:#x}: the address is not mapped"
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
        let Some(space) = guard.as_ref() else {
            return unknown_process(pid);
        };
        let Some(vma) = space.find(addr) else {
            return bad_request(format!(
                "fetch of page {addr:#x} of process {pid:#x}: the address is not mapped"
            ));
        };
        let count = (count as u64).min((vma.end - addr) / PAGE_SIZE as u64);
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

    fn write_back(&self, pid: ProcessId, addrs: &[u64], payload: &[u8]) -> Reply {
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
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let mut guard = lock(&slot);
        let Some(space) = guard.as_mut() else {
            return unknown_process(pid);
        };
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
                // mappings, so this is a bookkeeping bug, not the peer's.
                return Message::error(
                    ErrorCode::Internal,
                    format!("write-back of process {pid:#x}: the page pool is exhausted at page {addr:#x}"),
                )
                .into();
            }
        }
        Message::WrittenBack.into()
    }

    fn release(&self, pid: ProcessId) -> Reply {
        let slot = lock(&self.processes).remove(&pid);
        // Its connections to storage end with it (a forked child's
        // mapping read with its voucher reconnects when next read).
        self.files.forget(pid);
        if let Some(slot) = slot {
            self.free_slot(&slot);
            info!(
                pid = format_args!("{pid:#x}"),
                "process address space released"
            );
        }
        Message::Released.into()
    }
}

/// The reply to an address-space call. A failure that still changed the
/// address space (Linux's partial mprotect and madvise) cannot be a
/// `MemoryFailed`, which carries no changes: it is a `MemoryDone` whose
/// result is the raw syscall return value, `-errno`.
fn memory_reply(outcome: Outcome) -> Reply {
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
    })
    .into()
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
            Message::Exec { pid } => mine(pid) || (*pid == me && *pid == tree && fresh(pid)),
            Message::Fork { parent, child } => mine(parent) && fresh(child),
            Message::Memory { pid, .. }
            | Message::FetchPage { pid, .. }
            | Message::FetchPages { pid, .. }
            | Message::WriteBack { pid, .. } => mine(pid),
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
            Message::Exec { pid } => Booking::Exec(pid),
            Message::Fork { parent, child } => Booking::Fork(parent, child),
            Message::ReleaseProcess { pid } => Booking::Release(pid),
            _ => Booking::Nothing,
        }
    }
}

impl Service for MemoryService {
    fn handle(&self, peer: &PeerInfo, request: Frame) -> Reply {
        let tree = if peer.identity.role == lego_proto::Role::Process {
            let (Some(tree), Some(pid)) = (peer.identity.tree(), peer.identity.pid()) else {
                return Message::error(ErrorCode::Denied, "a runtime without a pid and tree")
                    .into();
            };
            if let Err(why) = self.allowed(tree, pid, &request.message) {
                return Message::error(ErrorCode::Denied, why).into();
            }
            Some(tree)
        } else {
            None
        };
        let booking = Booking::of(&request.message);
        let reply = self.serve(request);
        self.settle_trees(tree, booking, &reply);
        reply
    }
}

impl MemoryService {
    fn serve(&self, request: Frame) -> Reply {
        match request.message {
            Message::Exec { pid } => self.exec(pid, &request.payload),
            Message::Fork { parent, child } => self.fork(parent, child),
            Message::Memory { pid, op } => self.memory(pid, op),
            Message::FetchPage { pid, addr } => self.fetch_page(pid, addr),
            Message::FetchPages { pid, addr, count } => self.fetch_pages(pid, addr, count),
            Message::WriteBack { pid, addrs } => self.write_back(pid, &addrs, &request.payload),
            Message::ReleaseProcess { pid } => self.release(pid),
            other => Message::error(
                ErrorCode::Unsupported,
                format!(
                    "the memory manager does not serve {} requests",
                    other.kind()
                ),
            )
            .into(),
        }
    }
}
