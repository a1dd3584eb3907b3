//! The ExCache: the processor's bounded, software-managed cache of the
//! application's remote memory. Resident arena pages are the cache; the
//! quota bounds how many there are.
//!
//! Invariants:
//! - `resident.len() <= quota_pages` whenever the lock is released.
//! - A page is either resident, or its contents are on the memory manager
//!   (`remote` or a populated range), or it is zero.
//! - Nothing touches arena memory that may be non-resident while holding
//!   the lock: such a touch faults, and the fault thread needs the lock.

use crate::host::uffd::PageRegion;
use crate::mm::arena::{Pages, PAGE};
use crate::mm::ranges::RangeSet;
use lego_proto::ExcacheStats;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;
use thiserror::Error;

/// Fewest pages an ExCache may hold.
pub const MIN_QUOTA_PAGES: usize = 64;
/// Most pages evicted (and written back) together.
const MAX_EVICT_BATCH: usize = 256;

/// Write-back batches sent and not yet acknowledged, at most: the next
/// eviction need not wait for the last one's round trip (two, with a
/// backup that must hold each batch before the primary answers).
const MAX_IN_FLIGHT: usize = 2;
/// Largest readahead window, in pages (bounded by a fraction of the quota).
const MAX_READAHEAD: usize = 128;
/// Pages a miss in a program image or file mapping brings at least
/// (Linux's fault_around_bytes is 64 KiB).
const FAULT_AROUND: usize = 16;

#[derive(Debug, Error)]
pub enum CacheError {
    /// The memory manager could not be reached or refused: fatal.
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    Host(#[from] std::io::Error),
}

/// Where page contents live when they are not resident.
pub trait Backing: Send + Sync {
    /// Fills `buf` with the page at `addr`; returns false (leaving `buf`
    /// unspecified) when the page holds only zeros.
    fn fetch(&self, addr: u64, buf: &mut [u8]) -> Result<bool, CacheError>;
    /// Fills `buf` with up to `count` consecutive pages from `addr`
    /// (readahead); returns how many it got (at least 1: the mapping may end
    /// sooner).
    fn fetch_run(&self, addr: u64, count: usize, buf: &mut Vec<u8>) -> Result<usize, CacheError>;
    /// Starts storing dirty pages: `parts`, concatenated, hold one page per
    /// address, in order, and may be read only until this returns (they
    /// are sent before it does). The returned ticket waits for the
    /// acknowledgement.
    fn write_back(&self, addrs: &[u64], parts: &[&[u8]]) -> Result<WriteBack, CacheError>;
}

/// A write-back on its way: finishing it waits for the memory manager to
/// acknowledge it.
pub struct WriteBack(Box<dyn FnOnce() -> Result<(), CacheError> + Send>);

impl WriteBack {
    pub fn new(finish: impl FnOnce() -> Result<(), CacheError> + Send + 'static) -> WriteBack {
        WriteBack(Box::new(finish))
    }

    pub(crate) fn finish(self) -> Result<(), CacheError> {
        (self.0)()
    }
}

/// Chooses victims. Told about every page that becomes resident or stops
/// being resident for another reason (munmap, discard).
pub trait EvictionPolicy: Send {
    fn inserted(&mut self, page: u64);
    fn removed(&mut self, page: u64);
    /// Picks up to `n` resident pages to evict and forgets them.
    fn victims(&mut self, n: usize, out: &mut Vec<u64>);
    /// Forgets every page.
    fn clear(&mut self);
}

/// First in, first out: the page resident longest goes first.
#[derive(Default)]
pub struct Fifo {
    queue: VecDeque<u64>,
    live: HashSet<u64>,
}

impl EvictionPolicy for Fifo {
    fn clear(&mut self) {
        *self = Fifo::default();
    }

    fn inserted(&mut self, page: u64) {
        if self.live.insert(page) {
            self.queue.push_back(page);
        }
    }

    fn removed(&mut self, page: u64) {
        // The queue entry goes stale and is skipped when reached.
        self.live.remove(&page);
        if self.queue.len() > 2 * self.live.len() + 1024 {
            let live = &self.live;
            self.queue.retain(|p| live.contains(p));
        }
    }

    fn victims(&mut self, n: usize, out: &mut Vec<u64>) {
        while out.len() < n {
            let Some(page) = self.queue.pop_front() else {
                return;
            };
            if self.live.remove(&page) {
                out.push(page);
            }
        }
    }
}

struct State {
    quota_pages: usize,
    resident: HashSet<u64>,
    policy: Box<dyn EvictionPolicy>,
    /// Pages written back at least once since they were last discarded.
    remote: BTreeSet<u64>,
    /// Ranges whose pages may hold contents on the memory manager (loaded
    /// program segments).
    populated: RangeSet,
    stats: ExcacheStats,
    /// Readahead: where the next miss lands if the access is sequential,
    /// and how many pages the next sequential miss fetches.
    next_expected: u64,
    window: usize,
    /// The last write-back batches (at most [`MAX_IN_FLIGHT`]), oldest
    /// first, sent but maybe not yet acknowledged, and their pages: a
    /// fetch of one of them waits for them first, and so does every change
    /// to the address space. The memory manager stores them in the order
    /// sent (one connection).
    in_flight: std::collections::VecDeque<(WriteBack, HashSet<u64>)>,
    /// Pages a fault thread is fetching (without the lock): a fault on
    /// one of them waits for that fetch, whose install wakes it.
    fetching: HashSet<u64>,
    /// Scratch buffers of eviction, kept to avoid allocating on the miss
    /// path.
    victims: Vec<u64>,
    dirty: Vec<u64>,
    regions: Vec<PageRegion>,
    /// Set once the application runs several threads: pages may then be
    /// written while they are evicted (see `evict`).
    concurrent: bool,
}

pub struct ExCache {
    state: Mutex<State>,
    /// The address-space lock (Linux's mmap_lock): every fault holds it
    /// shared, every change of the address space (an mmap-family call, a
    /// fork) exclusively, so no write-back of a fault's eviction or of a
    /// fork's flush reaches the memory manager between its change of a
    /// range and the runtime's (it would refuse a page it no longer maps,
    /// or store stale contents in a new mapping). Taken before `state`.
    layout: RwLock<()>,
    zero_page: Vec<u8>,
}

/// Proof that the address space may change: no fault is being served
/// (see [`ExCache::change_layout`]).
pub struct LayoutChange<'a>(#[allow(dead_code)] RwLockWriteGuard<'a, ()>);

/// The runs `[start, end)` of adjacent pages in sorted `pages`.
fn page_runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match runs.last_mut() {
            Some((_, end)) if *end == p => *end += PAGE,
            _ => runs.push((p, p + PAGE)),
        }
    }
    runs
}

/// Bucket of the miss latency histogram for `ns` nanoseconds.
fn latency_bucket(ns: u64) -> usize {
    (63 - ns.max(1).leading_zeros()) as usize
}

impl ExCache {
    pub fn new(quota_bytes: u64, policy: Box<dyn EvictionPolicy>) -> ExCache {
        let quota_pages = ((quota_bytes / PAGE) as usize).max(MIN_QUOTA_PAGES);
        ExCache {
            state: Mutex::new(State {
                quota_pages,
                resident: HashSet::with_capacity(quota_pages),
                policy,
                remote: BTreeSet::new(),
                populated: RangeSet::default(),
                stats: ExcacheStats {
                    quota_bytes: quota_pages as u64 * PAGE,
                    miss_latency_log2_ns: vec![0; 40],
                    ..ExcacheStats::default()
                },
                next_expected: 0,
                window: 1,
                in_flight: std::collections::VecDeque::new(),
                fetching: HashSet::new(),
                victims: Vec::new(),
                dirty: Vec::new(),
                regions: Vec::new(),
                concurrent: false,
            }),
            layout: RwLock::new(()),
            zero_page: vec![0; PAGE as usize],
        }
    }

    /// Waits until no fault is being served and keeps new ones waiting
    /// while the returned value lives: hold it from the memory manager's
    /// change of the address space until the runtime has mirrored it.
    pub fn change_layout(&self) -> LayoutChange<'_> {
        LayoutChange(self.layout.write().unwrap_or_else(|p| p.into_inner()))
    }

    fn layout_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.layout.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock ends the runtime (see `fatal`), so a
        // poisoned lock is never observed by a survivor that could misuse it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> ExcacheStats {
        self.lock().stats.clone()
    }

    /// (resident bytes, misses) under one lock, for the live counters.
    pub fn live(&self) -> (u64, u64) {
        let st = self.lock();
        (st.resident.len() as u64 * PAGE, st.stats.misses)
    }

    /// From now on other threads may write pages while one is evicted.
    pub fn set_concurrent(&self) {
        self.lock().concurrent = true;
    }

    pub fn resident_bytes(&self) -> u64 {
        self.lock().resident.len() as u64 * PAGE
    }

    /// Marks `[start, end)` as holding contents on the memory manager.
    pub fn set_populated(&self, _: &LayoutChange, start: u64, end: u64, populated: bool) {
        let mut st = self.lock();
        if populated {
            st.populated.insert(start, end);
        } else {
            st.populated.remove(start, end);
        }
    }

    /// Serves a fault at `addr`: makes room, then installs the page —
    /// fetched from the memory manager if it may hold contents there,
    /// zero-filled locally otherwise. A miss that continues a sequential
    /// run fetches a growing window of the pages after it in the same
    /// round trip (readahead). The fetch itself runs without the lock, so
    /// several fault threads serve several threads' misses at once; the
    /// pages being fetched count against the quota meanwhile.
    pub fn fault(
        &self,
        arena: &dyn Pages,
        backing: &dyn Backing,
        addr: u64,
        write: bool,
        scratch: &mut FaultScratch,
    ) -> Result<(), CacheError> {
        let started = Instant::now();
        let page = addr & !(PAGE - 1);
        let _layout = self.layout_shared();
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.fetching.contains(&page) {
            // Another fault thread is bringing it; its install wakes us.
            return Ok(());
        }
        if st.resident.contains(&page) {
            if arena.present(page)? {
                // Two faults on one page (e.g. the kernel and the application).
                arena.wake(page, PAGE)?;
                return Ok(());
            }
            // The bookkeeping says resident but the page is gone: a bug,
            // reported once; serve the fault as a miss rather than spin.
            static REPORTED: std::sync::Once = std::sync::Once::new();
            REPORTED.call_once(|| {
                tracing::error!("runtime bug: page {page:#x} was dropped behind the ExCache's back")
            });
            st.resident.remove(&page);
            st.policy.removed(page);
        }
        let remote = st.remote.contains(&page) || st.populated.contains(page);
        if !remote {
            Self::make_room(st, arena, backing, 1)?;
            // A write fault would dirty the page at once: install it
            // writable rather than take a second (write-protect) fault.
            arena.install(page, &self.zero_page, !write)?;
            Self::admit(st, page, 1);
            st.stats.zero_fills += 1;
            return Ok(());
        }
        let max_window = MAX_READAHEAD.min(st.quota_pages / 8).max(1);
        st.window = if page == st.next_expected {
            (st.window * 2).min(max_window)
        } else {
            1
        };
        // Fault-around, as Linux maps a file fault's neighbours: a program
        // image or a file mapping is read in scattered places near each
        // other, so a miss there brings the pages after it too.
        let wanted = if st.populated.contains(page) {
            st.window.max(FAULT_AROUND.min(max_window))
        } else {
            st.window
        };
        let mut count = 1;
        while count < wanted {
            let next = page + count as u64 * PAGE;
            if st.resident.contains(&next) || st.fetching.contains(&next) {
                break;
            }
            count += 1;
        }
        Self::make_room(st, arena, backing, count)?;
        let fetching_in_flight = st
            .in_flight
            .iter()
            .any(|(_, pages)| (0..count as u64).any(|i| pages.contains(&(page + i * PAGE))));
        if fetching_in_flight {
            Self::settle_locked(st)?;
        }
        for i in 0..count as u64 {
            st.fetching.insert(page + i * PAGE);
        }
        st.next_expected = page + count as u64 * PAGE;
        drop(guard);

        let fetched = if count == 1 {
            backing.fetch(page, &mut scratch.page).map(usize::from)
        } else {
            backing
                .fetch_run(page, count, &mut scratch.run)
                .map(|got| got.clamp(1, count))
        };

        // No change of the address space ran meanwhile (this fault holds
        // the layout lock shared), so what the fetch brought is current.
        let mut guard = self.lock();
        let st = &mut *guard;
        for i in 0..count as u64 {
            st.fetching.remove(&(page + i * PAGE));
        }
        let fetched = fetched?;
        let got = if count == 1 {
            let src = if fetched == 1 {
                &scratch.page
            } else {
                &self.zero_page
            };
            arena.install(page, src, !write)?;
            1
        } else {
            // Clean: the faulting write (if any) marks its page written.
            arena.install(page, &scratch.run[..fetched * PAGE as usize], true)?;
            if fetched < count {
                // The mapping ended sooner: nobody waits on the rest.
                arena.wake(page, count as u64 * PAGE)?;
            }
            fetched
        };
        Self::admit(st, page, got);
        st.next_expected = page + got as u64 * PAGE;
        let stats = &mut st.stats;
        stats.bytes_fetched += got as u64 * PAGE;
        stats.misses += 1;
        stats.prefetched += got as u64 - 1;
        let ns = started.elapsed().as_nanos() as u64;
        let bucket = latency_bucket(ns).min(stats.miss_latency_log2_ns.len() - 1);
        stats.miss_latency_log2_ns[bucket] += 1;
        Ok(())
    }

    /// Waits for the write-backs in flight, oldest first.
    fn settle_locked(st: &mut State) -> Result<(), CacheError> {
        while let Some((ticket, _)) = st.in_flight.pop_front() {
            ticket.finish()?;
        }
        Ok(())
    }

    /// Makes room for one more write-back in flight: waits for the oldest
    /// while [`MAX_IN_FLIGHT`] are.
    fn room_in_flight(st: &mut State) -> Result<(), CacheError> {
        while st.in_flight.len() >= MAX_IN_FLIGHT {
            if let Some((ticket, _)) = st.in_flight.pop_front() {
                ticket.finish()?;
            }
        }
        Ok(())
    }

    /// Waits until every write-back is acknowledged: before the address
    /// space changes (the memory manager refuses pages it no longer maps).
    pub fn settle(&self) -> Result<(), CacheError> {
        Self::settle_locked(&mut self.lock())
    }

    /// Evicts until `pages` more fit in the quota, beside the pages other
    /// fault threads are fetching.
    fn make_room(
        st: &mut State,
        arena: &dyn Pages,
        backing: &dyn Backing,
        pages: usize,
    ) -> Result<(), CacheError> {
        while st.resident.len() + st.fetching.len() + pages > st.quota_pages
            && !st.resident.is_empty()
        {
            Self::evict(st, arena, backing, pages)?;
        }
        Ok(())
    }

    /// Books `count` pages from `page` as resident.
    fn admit(st: &mut State, page: u64, count: usize) {
        for i in 0..count as u64 {
            st.resident.insert(page + i * PAGE);
            st.policy.inserted(page + i * PAGE);
        }
        let resident = st.resident.len() as u64 * PAGE;
        st.stats.peak_resident_bytes = st.stats.peak_resident_bytes.max(resident);
    }

    /// Books the batch of `st.dirty` just sent: in flight until its
    /// acknowledgement, counted, and held by the memory manager from now on.
    fn sent_back(st: &mut State, ticket: WriteBack) {
        st.in_flight
            .push_back((ticket, st.dirty.iter().copied().collect()));
        st.stats.writebacks += st.dirty.len() as u64;
        st.stats.writeback_batches += 1;
        st.stats.bytes_written_back += st.dirty.len() as u64 * PAGE;
        st.remote.extend(st.dirty.iter().copied());
    }

    /// Evicts a batch of victims: written ones are sent back in one batch,
    /// then all are dropped from the arena.
    fn evict(
        st: &mut State,
        arena: &dyn Pages,
        backing: &dyn Backing,
        at_least: usize,
    ) -> Result<(), CacheError> {
        let batch = (st.quota_pages / 16)
            .clamp(1, MAX_EVICT_BATCH)
            .max(at_least);
        st.victims.clear();
        st.policy.victims(batch, &mut st.victims);
        st.victims.sort_unstable();
        st.dirty.clear();
        if st.concurrent {
            return Self::evict_moving(st, arena, backing);
        }
        let runs = page_runs(&st.victims);
        // Ask the kernel which victims were written, one scan per run.
        for &(start, end) in &runs {
            st.regions
                .resize(((end - start) / PAGE) as usize, PageRegion::default());
            let n = arena.written(start, end, &mut st.regions)?;
            for region in &st.regions[..n] {
                st.dirty
                    .extend((region.start..region.end).step_by(PAGE as usize));
            }
        }
        if !st.dirty.is_empty() {
            // At most MAX_IN_FLIGHT batches in flight: this one may wait
            // for the oldest.
            Self::room_in_flight(st)?;
            // Safety: every dirty page is resident (it was a victim the
            // policy held, and only this lock's holder drops pages), so
            // reading it cannot fault; the application cannot write it
            // meanwhile because its only thread is blocked on the fault
            // being served. The slices are only read until `write_back`
            // returns, before the pages are dropped below.
            let parts: Vec<&[u8]> = page_runs(&st.dirty)
                .into_iter()
                .map(|(start, end)| unsafe { arena.contents(start, end - start) })
                .collect();
            let ticket = backing.write_back(&st.dirty, &parts)?;
            Self::sent_back(st, ticket);
        }
        for &(start, end) in &runs {
            arena.drop_pages(start, end)?;
        }
        for &p in &st.victims {
            st.resident.remove(&p);
        }
        st.stats.evictions += st.victims.len() as u64;
        Ok(())
    }

    /// Eviction while other threads run: a page the scan found clean could
    /// be written between the scan and its drop, and that write would be
    /// lost. So the victims are first moved out of the arena atomically
    /// (after which any touch faults and waits for this thread), and every
    /// moved one is written back: the move does not keep the written
    /// state. Pages of read-only mappings cannot be moved, but nobody can
    /// write them either: for them the scan's answer holds.
    fn evict_moving(
        st: &mut State,
        arena: &dyn Pages,
        backing: &dyn Backing,
    ) -> Result<(), CacheError> {
        Self::room_in_flight(st)?;
        let mut staged = 0u64;
        // (page, where its contents are read from)
        let mut sources: Vec<(u64, u64)> = Vec::with_capacity(st.victims.len());
        let mut in_place = Vec::new();
        for &page in &st.victims {
            match arena.stage_page(page, staged)? {
                Some(at) => {
                    sources.push((page, at));
                    staged += PAGE;
                }
                None => in_place.push(page),
            }
        }
        for &page in &in_place {
            st.regions.resize(1, PageRegion::default());
            if arena.written(page, page + PAGE, &mut st.regions)? > 0 {
                sources.push((page, page));
            }
        }
        sources.sort_unstable();
        st.dirty.extend(sources.iter().map(|&(page, _)| page));
        if !sources.is_empty() {
            // Safety: each source is a staged page just moved in, or a
            // resident page of a read-only mapping; nothing else touches
            // the staging area, and the slices are only read until
            // `write_back` returns, before either is emptied below.
            let parts: Vec<&[u8]> = sources
                .iter()
                .map(|&(_, at)| unsafe { arena.contents(at, PAGE) })
                .collect();
            let ticket = backing.write_back(&st.dirty, &parts)?;
            Self::sent_back(st, ticket);
        }
        arena.unstage(staged)?;
        for (start, end) in page_runs(&in_place) {
            arena.drop_pages(start, end)?;
        }
        for &p in &st.victims {
            st.resident.remove(&p);
        }
        st.stats.evictions += st.victims.len() as u64;
        Ok(())
    }

    /// Forgets `[start, end)`: its contents were discarded on the memory
    /// side (munmap, MADV_DONTNEED, a new program). Drops the resident
    /// pages without writing them back.
    pub fn discard(
        &self,
        _: &LayoutChange,
        arena: &dyn Pages,
        start: u64,
        end: u64,
    ) -> Result<(), CacheError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        // No fetch is in flight: faults hold the layout lock shared.
        debug_assert!(st.fetching.is_empty());
        for p in Self::resident_in(st, start, end) {
            st.resident.remove(&p);
            st.policy.removed(p);
        }
        let remote: Vec<u64> = st.remote.range(start..end).copied().collect();
        for p in remote {
            st.remote.remove(&p);
        }
        st.populated.remove(start, end);
        arena.drop_pages(start, end)?;
        Ok(())
    }
}

/// A fault thread's buffers for the pages it fetches.
pub struct FaultScratch {
    page: Vec<u8>,
    run: Vec<u8>,
}

impl Default for FaultScratch {
    fn default() -> FaultScratch {
        FaultScratch {
            page: vec![0; PAGE as usize],
            run: Vec::new(),
        }
    }
}

/// Most pages one flush write-back carries (16 MiB).
const FLUSH_BATCH: usize = 4096;

/// The ExCache held across a fork (see [`ExCache::hold_for_fork`]).
pub struct ForkHold<'a>(MutexGuard<'a, State>);

impl ForkHold<'_> {
    /// In the forked process: an empty cache with the parent's quota that
    /// still knows which pages hold contents on the memory manager (the
    /// copy has them all: the parent flushed before forking).
    pub fn reset_for_child(mut self) {
        let st = &mut *self.0;
        st.resident.clear();
        st.fetching.clear();
        st.policy.clear();
        st.in_flight.clear();
        st.next_expected = 0;
        st.window = 1;
        st.concurrent = false;
        st.stats = ExcacheStats {
            quota_bytes: st.quota_pages as u64 * PAGE,
            miss_latency_log2_ns: vec![0; 40],
            ..ExcacheStats::default()
        };
    }
}

impl ExCache {
    /// Writes every written resident page back and marks it clean, so the
    /// memory manager holds the whole address space (before a fork copies
    /// it there). Pages stay resident. A page another thread writes during
    /// the flush is written again later, as any dirty page.
    pub fn flush(
        &self,
        _: &LayoutChange,
        arena: &dyn Pages,
        backing: &dyn Backing,
    ) -> Result<(), CacheError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        Self::settle_locked(st)?;
        let mut pages: Vec<u64> = st.resident.iter().copied().collect();
        pages.sort_unstable();
        Self::write_back_written(st, arena, backing, &pages, true)
    }

    /// Writes the written pages among resident `pages` (sorted) back and
    /// waits for the memory manager to store them; with `clean`, they are
    /// marked unwritten again.
    fn write_back_written(
        st: &mut State,
        arena: &dyn Pages,
        backing: &dyn Backing,
        pages: &[u64],
        clean: bool,
    ) -> Result<(), CacheError> {
        let mut dirty = Vec::new();
        for (start, end) in page_runs(pages) {
            st.regions
                .resize(((end - start) / PAGE) as usize, PageRegion::default());
            let n = if clean {
                arena.written_then_clean(start, end, &mut st.regions)?
            } else {
                arena.written(start, end, &mut st.regions)?
            };
            for region in &st.regions[..n] {
                dirty.extend((region.start..region.end).step_by(PAGE as usize));
            }
        }
        for batch in dirty.chunks(FLUSH_BATCH) {
            // Safety: every page of the batch is resident (only this lock's
            // holder drops pages) and readable (the callers' ranges change
            // protection only afterwards), so reading it cannot fault; the
            // slices are read only until the write-back is acknowledged.
            let parts: Vec<&[u8]> = page_runs(batch)
                .into_iter()
                .map(|(start, end)| unsafe { arena.contents(start, end - start) })
                .collect();
            backing.write_back(batch, &parts)?.finish()?;
            st.stats.writebacks += batch.len() as u64;
            st.stats.writeback_batches += 1;
            st.stats.bytes_written_back += batch.len() as u64 * PAGE;
            st.remote.extend(batch.iter().copied());
        }
        Ok(())
    }

    /// The resident pages of `[start, end)`, found the cheaper way.
    fn resident_in(st: &State, start: u64, end: u64) -> Vec<u64> {
        if ((end - start) / PAGE) as usize > st.resident.len() {
            st.resident
                .iter()
                .copied()
                .filter(|&p| p >= start && p < end)
                .collect()
        } else {
            (start..end)
                .step_by(PAGE as usize)
                .filter(|p| st.resident.contains(p))
                .collect()
        }
    }

    /// Writes the written resident pages of `[start, end)` back and drops
    /// every resident page there: before the range becomes inaccessible
    /// (PROT_NONE), after which the runtime could no longer read them.
    pub fn write_back_and_drop(
        &self,
        _: &LayoutChange,
        arena: &dyn Pages,
        backing: &dyn Backing,
        start: u64,
        end: u64,
    ) -> Result<(), CacheError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        Self::settle_locked(st)?;
        let mut pages = Self::resident_in(st, start, end);
        if pages.is_empty() {
            return Ok(());
        }
        pages.sort_unstable();
        Self::write_back_written(st, arena, backing, &pages, false)?;
        for (run_start, run_end) in page_runs(&pages) {
            arena.drop_pages(run_start, run_end)?;
        }
        for p in pages {
            st.resident.remove(&p);
            st.policy.removed(p);
        }
        Ok(())
    }

    /// Holds the cache across a fork: no fault is served meanwhile, so the
    /// forked process's copy of the cache's state is consistent.
    pub fn hold_for_fork(&self) -> ForkHold<'_> {
        ForkHold(self.lock())
    }
}

impl ExCache {
    /// Moves the cached pages of `[from, from + len)` to `to` (an mremap
    /// that moved the mapping; the memory manager moved its copies the
    /// same way). Written pages stay written; clean ones stay clean.
    pub fn relocate(
        &self,
        change: &LayoutChange,
        arena: &dyn Pages,
        from: u64,
        to: u64,
        len: u64,
    ) -> Result<(), CacheError> {
        // Whatever the destination held was replaced on the memory side
        // (MREMAP_FIXED over existing mappings): drop our copies first.
        self.discard(change, arena, to, to + len)?;
        let mut guard = self.lock();
        let st = &mut *guard;
        let end = from + len;
        let mut moving: Vec<u64> = st
            .resident
            .iter()
            .copied()
            .filter(|&p| p >= from && p < end)
            .collect();
        moving.sort_unstable();
        let mut written = HashSet::new();
        if !moving.is_empty() {
            st.regions.resize(moving.len(), PageRegion::default());
            let (first, last) = (moving[0], moving[moving.len() - 1] + PAGE);
            let n = arena.written(first, last, &mut st.regions)?;
            for region in &st.regions[..n] {
                let mut p = region.start;
                while p < region.end {
                    written.insert(p);
                    p += PAGE;
                }
            }
        }
        for &p in &moving {
            let dst = to + (p - from);
            // Safety: `p` is resident (see `evict`) and readable, so
            // reading it cannot fault. Another thread of a program that
            // writes a range while it mremaps it races natively too; its
            // write may land before or after this copy (and after the
            // scan above, it is not seen as written).
            let page = unsafe { arena.contents(p, PAGE) };
            arena.install(dst, page, !written.contains(&p))?;
            st.resident.remove(&p);
            st.policy.removed(p);
            st.resident.insert(dst);
            st.policy.inserted(dst);
        }
        if !moving.is_empty() {
            arena.drop_pages(from, end)?;
        }
        let remote: Vec<u64> = st.remote.range(from..end).copied().collect();
        for p in remote {
            st.remote.remove(&p);
            st.remote.insert(to + (p - from));
        }
        let populated = st.populated.within(from, end);
        st.populated.remove(from, end);
        for (s, e) in populated {
            st.populated.insert(to + (s - from), to + (e - from));
        }
        Ok(())
    }
}

/// A fake host and a fake memory manager, for the ExCache's tests.
#[cfg(test)]
mod fake {
    use super::*;
    use std::collections::HashMap;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    /// Pages the fake arena holds, from `BASE`; a staging area follows.
    pub const PAGES: u64 = 512;
    pub const BASE: u64 = 0x1000_0000;
    const STAGING: u64 = BASE + PAGES * PAGE;

    pub fn page(i: u64) -> u64 {
        BASE + i * PAGE
    }

    #[derive(Default)]
    struct Kernel {
        present: HashSet<u64>,
        written: HashSet<u64>,
    }

    /// The arena as the kernel would hold it: which pages are present,
    /// which were written since they were installed clean, and their bytes.
    pub struct FakePages {
        /// `LEN` bytes, from `Box::into_raw` (freed on drop); reached only
        /// through raw pointers, so no reference ever spans it whole.
        mem: *mut u8,
        kernel: Mutex<Kernel>,
    }

    const LEN: usize = (2 * PAGES * PAGE) as usize;

    impl Drop for FakePages {
        fn drop(&mut self) {
            // Safety: made by `Box::into_raw` of a `LEN`-byte slice in
            // `new`; no slice of it outlives the fake.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.mem, LEN)) });
        }
    }

    // Safety: the bytes are written only by `install`, `drop_pages`,
    // `stage_page`, `unstage` and `write`, each under the `kernel` lock,
    // and never in a range a live `contents` slice covers (the ExCache
    // reads only pages it holds resident or staged, as with the real
    // arena); the tests' threads follow the same rule.
    unsafe impl Sync for FakePages {}
    // Safety: as above; the pointer is owned (see `mem`).
    unsafe impl Send for FakePages {}

    impl FakePages {
        pub fn new() -> FakePages {
            FakePages {
                mem: Box::into_raw(vec![0u8; LEN].into_boxed_slice()) as *mut u8,
                kernel: Mutex::new(Kernel::default()),
            }
        }

        fn at(addr: u64) -> usize {
            assert!((BASE..BASE + 2 * PAGES * PAGE).contains(&addr), "{addr:#x}");
            (addr - BASE) as usize
        }

        /// Writes `bytes` at `addr`, as the kernel would copy them in.
        fn put(&self, addr: u64, bytes: &[u8]) {
            let at = Self::at(addr);
            assert!(at + bytes.len() <= LEN);
            // Safety: see the Sync impl; `at..at + len` lies in `mem`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.mem.add(at), bytes.len()) };
        }

        fn get(&self, addr: u64) -> u8 {
            // Safety: as `put`, reading one byte inside `mem`.
            unsafe { *self.mem.add(Self::at(addr)) }
        }

        /// The application writes `value` at `addr`: the page must be
        /// present (the test faulted it in), and becomes written.
        pub fn write(&self, addr: u64, value: u8) {
            let mut k = self.kernel.lock().unwrap();
            let page = addr & !(PAGE - 1);
            assert!(k.present.contains(&page), "write to absent {page:#x}");
            k.written.insert(page);
            self.put(addr, &[value]);
        }

        /// The application reads `addr`: `None` when it would fault.
        pub fn read(&self, addr: u64) -> Option<u8> {
            let k = self.kernel.lock().unwrap();
            k.present
                .contains(&(addr & !(PAGE - 1)))
                .then(|| self.get(addr))
        }

        pub fn is_present(&self, page: u64) -> bool {
            self.kernel.lock().unwrap().present.contains(&page)
        }

        fn scan(&self, start: u64, end: u64, out: &mut [PageRegion], clean: bool) -> usize {
            let mut k = self.kernel.lock().unwrap();
            let mut n = 0;
            let mut p = start;
            while p < end {
                if k.present.contains(&p) && k.written.contains(&p) {
                    if clean {
                        k.written.remove(&p);
                    }
                    if n > 0 && out[n - 1].end == p {
                        out[n - 1].end += PAGE;
                    } else {
                        out[n] = PageRegion {
                            start: p,
                            end: p + PAGE,
                            categories: 0,
                        };
                        n += 1;
                    }
                }
                p += PAGE;
            }
            n
        }
    }

    impl Pages for FakePages {
        fn present(&self, page: u64) -> io::Result<bool> {
            Ok(self.is_present(page))
        }

        fn wake(&self, _start: u64, _len: u64) -> io::Result<()> {
            Ok(())
        }

        fn install(&self, start: u64, src: &[u8], write_protect: bool) -> io::Result<()> {
            assert!((src.len() as u64).is_multiple_of(PAGE));
            let mut k = self.kernel.lock().unwrap();
            for (i, bytes) in src.chunks(PAGE as usize).enumerate() {
                let p = start + i as u64 * PAGE;
                if k.present.insert(p) {
                    self.put(p, bytes);
                    if !write_protect {
                        k.written.insert(p);
                    }
                }
            }
            Ok(())
        }

        fn written(&self, start: u64, end: u64, out: &mut [PageRegion]) -> io::Result<usize> {
            Ok(self.scan(start, end, out, false))
        }

        fn written_then_clean(
            &self,
            start: u64,
            end: u64,
            out: &mut [PageRegion],
        ) -> io::Result<usize> {
            Ok(self.scan(start, end, out, true))
        }

        fn drop_pages(&self, start: u64, end: u64) -> io::Result<()> {
            let mut k = self.kernel.lock().unwrap();
            let mut p = start;
            while p < end {
                k.present.remove(&p);
                k.written.remove(&p);
                self.put(p, &[0; PAGE as usize]);
                p += PAGE;
            }
            Ok(())
        }

        fn stage_page(&self, page: u64, at: u64) -> io::Result<Option<u64>> {
            let mut k = self.kernel.lock().unwrap();
            assert!(k.present.remove(&page), "staging absent {page:#x}");
            k.written.remove(&page);
            // Safety: one present page, copied out before it is changed.
            let bytes = unsafe { self.contents(page, PAGE) }.to_vec();
            self.put(page, &[0; PAGE as usize]);
            self.put(STAGING + at, &bytes);
            Ok(Some(STAGING + at))
        }

        fn unstage(&self, len: u64) -> io::Result<()> {
            let _k = self.kernel.lock().unwrap();
            self.put(STAGING, &vec![0; len as usize]);
            Ok(())
        }

        unsafe fn contents(&self, start: u64, len: u64) -> &[u8] {
            let at = Self::at(start);
            assert!(at + len as usize <= LEN);
            // Safety: the caller's contract (see the Sync impl); the
            // range lies inside `mem`.
            unsafe { std::slice::from_raw_parts(self.mem.add(at), len as usize) }
        }
    }

    /// The memory manager: pages by address, and what was asked of it.
    #[derive(Default)]
    pub struct FakeBacking {
        pub store: Mutex<HashMap<u64, Vec<u8>>>,
        /// Every write-back batch: its page addresses.
        pub batches: Mutex<Vec<Vec<u64>>>,
        /// Write-backs acknowledged so far (finished tickets).
        pub acked: Arc<AtomicUsize>,
        /// Every fetch: (first page, pages, acknowledged write-backs then).
        pub fetches: Mutex<Vec<(u64, usize, usize)>>,
        /// When set, a fetch says it started here and waits for a word on
        /// the receiver.
        pub gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    impl FakeBacking {
        fn log_fetch(&self, addr: u64, count: usize) {
            let acked = self.acked.load(Ordering::SeqCst);
            self.fetches.lock().unwrap().push((addr, count, acked));
            if let Some((started, go)) = &*self.gate.lock().unwrap() {
                started.send(()).unwrap();
                go.recv().unwrap();
            }
        }

        pub fn stored(&self, addr: u64) -> Option<u8> {
            let page = addr & !(PAGE - 1);
            self.store
                .lock()
                .unwrap()
                .get(&page)
                .map(|b| b[(addr - page) as usize])
        }
    }

    impl Backing for FakeBacking {
        fn fetch(&self, addr: u64, buf: &mut [u8]) -> Result<bool, CacheError> {
            self.log_fetch(addr, 1);
            match self.store.lock().unwrap().get(&addr) {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    Ok(true)
                }
                None => Ok(false),
            }
        }

        fn fetch_run(
            &self,
            addr: u64,
            count: usize,
            buf: &mut Vec<u8>,
        ) -> Result<usize, CacheError> {
            self.log_fetch(addr, count);
            buf.clear();
            let store = self.store.lock().unwrap();
            for i in 0..count as u64 {
                match store.get(&(addr + i * PAGE)) {
                    Some(bytes) => buf.extend_from_slice(bytes),
                    None => buf.extend_from_slice(&[0; PAGE as usize]),
                }
            }
            Ok(count)
        }

        fn write_back(&self, addrs: &[u64], parts: &[&[u8]]) -> Result<WriteBack, CacheError> {
            let bytes: Vec<u8> = parts.concat();
            assert_eq!(bytes.len() as u64, addrs.len() as u64 * PAGE);
            let mut store = self.store.lock().unwrap();
            for (i, &addr) in addrs.iter().enumerate() {
                let at = i * PAGE as usize;
                store.insert(addr, bytes[at..at + PAGE as usize].to_vec());
            }
            self.batches.lock().unwrap().push(addrs.to_vec());
            let acked = self.acked.clone();
            Ok(WriteBack::new(move || {
                acked.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{page, FakeBacking, FakePages};
    use super::*;
    use std::sync::atomic::Ordering;

    /// A cache of the fewest pages, its fake host and memory manager.
    fn setup() -> (ExCache, FakePages, FakeBacking, FaultScratch) {
        let cache = ExCache::new(MIN_QUOTA_PAGES as u64 * PAGE, Box::new(Fifo::default()));
        (
            cache,
            FakePages::new(),
            FakeBacking::default(),
            FaultScratch::default(),
        )
    }

    /// The application touches `addr` (writing `value` if given), faulting
    /// first when the page is absent.
    fn touch(
        cache: &ExCache,
        pages: &FakePages,
        backing: &FakeBacking,
        scratch: &mut FaultScratch,
        addr: u64,
        value: Option<u8>,
    ) -> u8 {
        if pages.read(addr).is_none() {
            cache
                .fault(pages, backing, addr, value.is_some(), scratch)
                .unwrap();
        }
        if let Some(v) = value {
            pages.write(addr, v);
        }
        pages.read(addr).expect("present after the fault")
    }

    #[test]
    fn the_quota_holds_and_nothing_written_is_lost() {
        let (cache, pages, backing, mut scratch) = setup();
        let n = 4 * MIN_QUOTA_PAGES as u64;
        for i in 0..n {
            touch(
                &cache,
                &pages,
                &backing,
                &mut scratch,
                page(i) + 7,
                Some((i % 250) as u8 + 1),
            );
            assert!(cache.resident_bytes() <= MIN_QUOTA_PAGES as u64 * PAGE);
        }
        assert!(cache.stats().evictions >= n - MIN_QUOTA_PAGES as u64);
        // Every page reads back what was written, through more evictions.
        for i in 0..n {
            let got = touch(&cache, &pages, &backing, &mut scratch, page(i) + 7, None);
            assert_eq!(got, (i % 250) as u8 + 1, "page {i}");
            assert!(cache.resident_bytes() <= MIN_QUOTA_PAGES as u64 * PAGE);
        }
        assert!(cache.stats().peak_resident_bytes <= MIN_QUOTA_PAGES as u64 * PAGE);
    }

    #[test]
    fn eviction_takes_the_oldest_pages_in_one_batch_of_the_written_ones() {
        let (cache, pages, backing, mut scratch) = setup();
        let quota = MIN_QUOTA_PAGES as u64;
        // Fill the cache: even pages written, odd ones only read.
        for i in 0..quota {
            let value = (i % 2 == 0).then_some(1 + i as u8);
            touch(&cache, &pages, &backing, &mut scratch, page(i), value);
        }
        assert!(backing.batches.lock().unwrap().is_empty());
        // One more: a batch of quota/16 = 4 victims, the oldest.
        touch(&cache, &pages, &backing, &mut scratch, page(quota), None);
        for i in 0..4 {
            assert!(!pages.is_present(page(i)), "page {i} stayed");
        }
        for i in 4..=quota {
            assert!(pages.is_present(page(i)), "page {i} was evicted");
        }
        // Only the written victims went back, together.
        assert_eq!(
            *backing.batches.lock().unwrap(),
            vec![vec![page(0), page(2)]]
        );
        let stats = cache.stats();
        assert_eq!((stats.writeback_batches, stats.writebacks), (1, 2));
        assert_eq!(backing.stored(page(2)), Some(3));
        // The batch is in flight: a fetch of one of its pages waits for
        // its acknowledgement first.
        assert_eq!(backing.acked.load(Ordering::SeqCst), 0);
        assert_eq!(
            touch(&cache, &pages, &backing, &mut scratch, page(0), None),
            1
        );
        let fetches = backing.fetches.lock().unwrap().clone();
        assert_eq!(fetches.last(), Some(&(page(0), 1, 1)), "{fetches:x?}");
        // A clean victim is not fetched again: it reads as zero-filled.
        assert_eq!(
            touch(&cache, &pages, &backing, &mut scratch, page(1), None),
            0
        );
        assert_eq!(backing.fetches.lock().unwrap().len(), 1);
    }

    #[test]
    fn with_several_threads_every_victim_is_moved_out_and_written_back() {
        let (cache, pages, backing, mut scratch) = setup();
        cache.set_concurrent();
        let quota = MIN_QUOTA_PAGES as u64;
        for i in 0..=quota {
            // Clean pages: another thread could write them between a scan
            // and the drop, so they are written back all the same.
            touch(&cache, &pages, &backing, &mut scratch, page(i), None);
        }
        assert_eq!(
            *backing.batches.lock().unwrap(),
            vec![(0..4).map(page).collect::<Vec<_>>()]
        );
        for i in 0..4 {
            assert!(!pages.is_present(page(i)));
            assert_eq!(backing.stored(page(i)), Some(0));
        }
    }

    #[test]
    fn a_miss_in_a_loaded_image_brings_its_neighbours_in_one_round_trip() {
        let (cache, pages, backing, mut scratch) = setup();
        for i in 0..16 {
            backing
                .store
                .lock()
                .unwrap()
                .insert(page(i), vec![i as u8 + 10; PAGE as usize]);
        }
        {
            let layout = cache.change_layout();
            cache.set_populated(&layout, page(0), page(16), true);
        }
        assert_eq!(
            touch(&cache, &pages, &backing, &mut scratch, page(0), None),
            10
        );
        // Fault-around: quota/8 = 8 pages, in one fetch.
        assert_eq!(*backing.fetches.lock().unwrap(), vec![(page(0), 8, 0)]);
        for i in 0..8 {
            assert_eq!(pages.read(page(i)), Some(i as u8 + 10));
        }
        assert!(!pages.is_present(page(8)));
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.prefetched), (1, 7));
    }

    #[test]
    fn a_change_of_the_layout_waits_for_a_fetch_so_none_goes_stale() {
        use std::sync::mpsc;
        let (cache, pages, backing, _) = setup();
        backing
            .store
            .lock()
            .unwrap()
            .insert(page(0), vec![1; PAGE as usize]);
        {
            let layout = cache.change_layout();
            cache.set_populated(&layout, page(0), page(1), true);
        }
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        *backing.gate.lock().unwrap() = Some((started_tx, go_rx));
        std::thread::scope(|s| {
            let fault = s.spawn(|| {
                let mut scratch = FaultScratch::default();
                cache.fault(&pages, &backing, page(0), false, &mut scratch)
            });
            started_rx.recv().unwrap();
            // The fetch is under way: no change of the address space may
            // start (it would make what the fetch brings stale).
            assert!(cache.layout.try_write().is_err());
            go_tx.send(()).unwrap();
            fault.join().unwrap().unwrap();
        });
        *backing.gate.lock().unwrap() = None;
        assert_eq!(pages.read(page(0)), Some(1));
        // The page is discarded (munmap): the next touch must not see the
        // old contents, and nothing is fetched for it.
        {
            let layout = cache.change_layout();
            cache.discard(&layout, &pages, page(0), page(1)).unwrap();
        }
        assert!(!pages.is_present(page(0)));
        let mut scratch = FaultScratch::default();
        assert_eq!(
            touch(&cache, &pages, &backing, &mut scratch, page(0), None),
            0
        );
        assert_eq!(backing.fetches.lock().unwrap().len(), 1);
    }

    #[test]
    fn fifo_evicts_oldest_first_and_skips_removed_pages() {
        let mut fifo = Fifo::default();
        for p in [1, 2, 3, 4] {
            fifo.inserted(p * PAGE);
        }
        fifo.removed(2 * PAGE);
        let mut out = Vec::new();
        fifo.victims(2, &mut out);
        assert_eq!(out, vec![PAGE, 3 * PAGE]);
        fifo.inserted(PAGE);
        out.clear();
        fifo.victims(5, &mut out);
        assert_eq!(out, vec![4 * PAGE, PAGE]);
    }

    #[test]
    fn range_set_splits_on_removal() {
        let mut set = RangeSet::default();
        set.insert(0x1000, 0x5000);
        set.remove(0x2000, 0x3000);
        assert!(set.contains(0x1000));
        assert!(!set.contains(0x2000));
        assert!(set.contains(0x3000));
        assert!(!set.contains(0x5000));
    }

    #[test]
    fn runs_group_adjacent_pages() {
        assert_eq!(page_runs(&[]), vec![]);
        assert_eq!(
            page_runs(&[PAGE, 2 * PAGE, 4 * PAGE, 5 * PAGE, 9 * PAGE]),
            vec![
                (PAGE, 3 * PAGE),
                (4 * PAGE, 6 * PAGE),
                (9 * PAGE, 10 * PAGE)
            ]
        );
    }

    #[test]
    fn latency_buckets_are_log2() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(1023), 9);
        assert_eq!(latency_bucket(1024), 10);
    }
}
