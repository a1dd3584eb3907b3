//! The page pool every process homed on this memory manager draws from, and
//! its commit charge.
//!
//! Pages live in slabs of [`SLAB_PAGES`] pages, each its own anonymous
//! host mapping, made the first time the free list runs dry. A page is
//! named by a [`PageId`] that only the pool creates, so there is no
//! per-page heap allocation and looking a page up is two array indexings.
//!
//! Memory goes back to the host: a freed page's memory is kept resident
//! for reuse up to [`STALE_MAX`] pages (16 MiB); past that, freed pages are
//! returned with `MADV_DONTNEED` in address order, a run of neighbours per
//! call, and read as zeros when next handed out. So the pool's resident
//! memory stays within `used() + 16 MiB` (plus the slabs' bookkeeping, 4
//! bytes a page) once pages are freed, however many it held before.
//!
//! The commit charge is the strict accounting of `vm.overcommit_memory=2`
//! with the whole pool as the limit: an address space charges a writable
//! mapping's full length when it is created (or first made writable) and
//! uncharges it when it is unmapped. Address spaces only ever store pages
//! inside charged ranges (see `vma`), so `used <= committed <= capacity`
//! holds at all times and storing a page never finds the pool empty.

use lego_proto::PAGE_SIZE;

/// Pages per slab: 2 MiB of memory per host mapping.
pub const SLAB_PAGES: usize = 512;

/// Freed pages whose memory stays resident for reuse (16 MiB); the rest
/// go back to the host.
pub const STALE_MAX: usize = 4096;

/// Bytes per page, as a `u64` for address arithmetic.
pub const PAGE: u64 = PAGE_SIZE as u64;

/// The name of one page of the pool. Only [`PagePool::alloc`] makes them, so
/// every `PageId` indexes an existing slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(u32);

/// Up to [`SLAB_PAGES`] pages of one anonymous private host mapping,
/// page-aligned, so that a page can be handed back to the host alone.
struct Slab {
    base: std::ptr::NonNull<[u8; PAGE_SIZE]>,
    pages: usize,
}

// Safety: a slab is plain memory owned by the pool; the pool hands out
// references to it only through `&self`/`&mut self`, as a `Box` would.
unsafe impl Send for Slab {}
unsafe impl Sync for Slab {}

impl Slab {
    fn new(pages: usize) -> Option<Slab> {
        // Safety: a new private anonymous mapping, which nothing else
        // refers to; the kernel provides zeroed pages on first touch.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        Some(Slab {
            base: std::ptr::NonNull::new(base.cast())?,
            pages,
        })
    }

    fn pages(&self) -> &[[u8; PAGE_SIZE]] {
        // Safety: `base` maps `pages` pages, readable and writable, for
        // the slab's life; shared borrows follow `&self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.pages) }
    }

    fn pages_mut(&mut self) -> &mut [[u8; PAGE_SIZE]] {
        // Safety: as above; the unique borrow follows `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.pages) }
    }

    /// Gives the memory of pages `[first, first + count)` back to the
    /// host; they read as zeros from now on.
    fn release(&mut self, first: usize, count: usize) {
        debug_assert!(first + count <= self.pages);
        // Safety: a page-aligned range inside this slab's own private
        // anonymous mapping, no page of which is in use (the pool
        // releases free pages only); MADV_DONTNEED makes them zero-fill.
        unsafe {
            libc::madvise(
                self.base.as_ptr().add(first).cast(),
                count * PAGE_SIZE,
                libc::MADV_DONTNEED,
            );
        }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // Safety: the mapping is this slab's alone, and no reference to
        // it outlives the slab.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.pages * PAGE_SIZE) };
    }
}

/// A capacity-bounded pool of pages with a commit charge.
///
/// A page may be shared by several address spaces after a fork: it keeps a
/// reference count, [`PagePool::share`] adds a holder, [`PagePool::free`]
/// drops one and frees the page with the last, and a holder that wants to
/// write a shared page copies it first ([`PagePool::is_shared`]).
pub struct PagePool {
    /// Pages the pool may ever hold (capacity rounded down to pages).
    capacity_pages: u32,
    slabs: Vec<Slab>,
    /// Holders of each page of the existing slabs (0 for a free page).
    refs: Vec<u32>,
    /// Free pages whose memory is resident and holds old bytes.
    stale: Vec<PageId>,
    /// Free pages that read as zeros (never touched, or given back).
    zeroed: Vec<PageId>,
    /// Pages handed out and not yet freed.
    allocated: u32,
    /// Bytes promised to address spaces; never above `capacity_bytes()`,
    /// except while `forced`.
    committed: u64,
    /// Charges succeed whatever the capacity: a backup applying its
    /// primary's changes must hold what the primary holds.
    forced: bool,
}

impl PagePool {
    /// A pool of `capacity` bytes (rounded down to whole pages, and to at
    /// most 2^32 - 1 pages, 16 TiB). Nothing is allocated until pages are.
    pub fn new(capacity: u64) -> PagePool {
        let pages = (capacity / PAGE).min(u64::from(u32::MAX));
        PagePool {
            capacity_pages: pages as u32,
            slabs: Vec::new(),
            refs: Vec::new(),
            stale: Vec::new(),
            zeroed: Vec::new(),
            allocated: 0,
            committed: 0,
            forced: false,
        }
    }

    /// Whether every charge succeeds now (see `set_forced`).
    pub fn is_forced(&self) -> bool {
        self.forced
    }

    /// Makes every charge succeed (past capacity if need be) until set
    /// back; see `forced`.
    pub fn set_forced(&mut self, forced: bool) {
        self.forced = forced;
    }

    /// Bytes the pool may hold.
    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.capacity_pages) * PAGE
    }

    /// Bytes of pages holding data.
    pub fn used(&self) -> u64 {
        u64::from(self.allocated) * PAGE
    }

    /// Bytes promised to mappings.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Charges `bytes` to the commit charge if it stays within capacity.
    pub fn try_commit(&mut self, bytes: u64) -> bool {
        if self.forced {
            self.committed = self.committed.saturating_add(bytes);
            return true;
        }
        match self.committed.checked_add(bytes) {
            Some(total) if total <= self.capacity_bytes() => {
                self.committed = total;
                true
            }
            _ => false,
        }
    }

    /// Returns `bytes` of commit charge. Returning more than was charged is
    /// a bug in the caller's bookkeeping: it stops there in debug builds and
    /// clamps at zero in release builds.
    pub fn uncommit(&mut self, bytes: u64) {
        debug_assert!(
            bytes <= self.committed,
            "uncommit {bytes} > committed {}",
            self.committed
        );
        self.committed = self.committed.saturating_sub(bytes);
    }

    /// A zeroed page, or `None` when the pool holds `capacity` pages.
    pub fn alloc(&mut self) -> Option<PageId> {
        let id = if let Some(id) = self.stale.pop() {
            // Freed pages keep their old bytes; never hand one process's
            // data to another.
            self.get_mut(id).fill(0);
            id
        } else {
            match self.zeroed.pop() {
                Some(id) => id,
                None => self.grow()?,
            }
        };
        self.allocated += 1;
        self.refs[id.0 as usize] = 1;
        Some(id)
    }

    /// Adds a slab (or the partial last slab) and returns its first page,
    /// putting the rest on the zeroed list.
    fn grow(&mut self) -> Option<PageId> {
        let existing = self.slabs.len() * SLAB_PAGES;
        let remaining = (self.capacity_pages as usize).checked_sub(existing)?;
        let count = remaining.min(SLAB_PAGES);
        if count == 0 {
            return None;
        }
        // A host mapping costs address space only until its pages are
        // touched.
        self.slabs.push(Slab::new(count)?);
        self.refs.resize(existing + count, 0);
        // Ids fit in u32 because capacity_pages does. Pushed in reverse so
        // pages are handed out in address order.
        let first = existing as u32;
        self.zeroed
            .extend((1..count as u32).rev().map(|i| PageId(first + i)));
        Some(PageId(first))
    }

    /// Gives the memory of free pages beyond [`STALE_MAX`] back to the
    /// host, down to half of it, neighbours in one call each.
    fn release_stale(&mut self) {
        if self.stale.len() <= STALE_MAX {
            return;
        }
        let keep = STALE_MAX / 2;
        let mut going = self.stale.split_off(keep);
        going.sort_unstable();
        let mut run: Option<(usize, usize, usize)> = None; // slab, first, count
        for &PageId(id) in &going {
            let (slab, page) = (id as usize / SLAB_PAGES, id as usize % SLAB_PAGES);
            run = match run {
                Some((s, first, count)) if s == slab && first + count == page => {
                    Some((s, first, count + 1))
                }
                Some((s, first, count)) => {
                    self.slabs[s].release(first, count);
                    Some((slab, page, 1))
                }
                None => Some((slab, page, 1)),
            };
        }
        if let Some((s, first, count)) = run {
            self.slabs[s].release(first, count);
        }
        // Handed out low addresses first again.
        going.reverse();
        self.zeroed.extend(going);
    }

    /// Free pages whose memory is still resident (at most [`STALE_MAX`]).
    pub fn stale_pages(&self) -> usize {
        self.stale.len()
    }

    /// Drops one holder of a page; the last one returns it to the pool.
    pub fn free(&mut self, id: PageId) {
        let refs = &mut self.refs[id.0 as usize];
        debug_assert!(*refs > 0, "free of a free page");
        *refs = refs.saturating_sub(1);
        if *refs > 0 {
            return;
        }
        debug_assert!(self.allocated > 0, "free with no page allocated");
        self.allocated = self.allocated.saturating_sub(1);
        self.stale.push(id);
        self.release_stale();
    }

    /// Adds a holder to an allocated page (a fork's copy of it).
    pub fn share(&mut self, id: PageId) {
        let refs = &mut self.refs[id.0 as usize];
        debug_assert!(*refs > 0, "share of a free page");
        *refs += 1;
    }

    /// Whether more than one address space holds the page: it must be
    /// copied before it is written.
    pub fn is_shared(&self, id: PageId) -> bool {
        self.refs[id.0 as usize] > 1
    }

    pub fn get(&self, id: PageId) -> &[u8; PAGE_SIZE] {
        let index = id.0 as usize;
        &self.slabs[index / SLAB_PAGES].pages()[index % SLAB_PAGES]
    }

    pub fn get_mut(&mut self, id: PageId) -> &mut [u8; PAGE_SIZE] {
        let index = id.0 as usize;
        &mut self.slabs[index / SLAB_PAGES].pages_mut()[index % SLAB_PAGES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rounds_down_to_pages() {
        let pool = PagePool::new(3 * PAGE + 100);
        assert_eq!(pool.capacity_bytes(), 3 * PAGE);
    }

    #[test]
    fn alloc_until_full_then_free_and_reuse() {
        let mut pool = PagePool::new(SLAB_PAGES as u64 * PAGE + 3 * PAGE);
        let mut ids = Vec::new();
        while let Some(id) = pool.alloc() {
            ids.push(id);
        }
        assert_eq!(ids.len(), SLAB_PAGES + 3);
        assert_eq!(pool.used(), pool.capacity_bytes());
        // Partial last slab: no more than capacity.
        assert_eq!(pool.slabs.len(), 2);
        assert_eq!(pool.slabs[1].pages, 3);
        let victim = ids[7];
        pool.get_mut(victim).fill(0xab);
        pool.free(victim);
        assert_eq!(pool.used(), pool.capacity_bytes() - PAGE);
        let again = pool.alloc().expect("a freed page is reusable");
        assert_eq!(again, victim);
        assert!(
            pool.get(again).iter().all(|&b| b == 0),
            "reused page is zeroed"
        );
        assert!(pool.alloc().is_none());
    }

    /// Resident bytes of `[addr, addr + len)` of this process (mincore).
    fn resident(addr: *const u8, len: usize) -> usize {
        let mut vec = vec![0u8; len.div_ceil(PAGE_SIZE)];
        // Safety: mincore reads the page table for our own mapping and
        // writes one byte per page into a vector of that many.
        let r = unsafe { libc::mincore(addr as *mut _, len, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count() * PAGE_SIZE
    }

    #[test]
    fn freed_memory_goes_back_to_the_host_beyond_the_bound() {
        let pages = 4 * STALE_MAX;
        let mut pool = PagePool::new(pages as u64 * PAGE);
        let ids: Vec<_> = (0..pages).map(|_| pool.alloc().unwrap()).collect();
        for &id in &ids {
            pool.get_mut(id).fill(0x5a);
        }
        let all_resident = |pool: &PagePool| {
            pool.slabs
                .iter()
                .map(|s| resident(s.base.as_ptr().cast(), s.pages * PAGE_SIZE))
                .sum::<usize>()
        };
        assert_eq!(all_resident(&pool), pages * PAGE_SIZE);
        for &id in &ids {
            pool.free(id);
        }
        assert_eq!(pool.used(), 0);
        assert!(pool.stale_pages() <= STALE_MAX);
        assert!(
            all_resident(&pool) <= STALE_MAX * PAGE_SIZE,
            "{} bytes still resident",
            all_resident(&pool)
        );
        // Every page comes back zeroed, given back or not, and the pool
        // holds as many as before.
        let again: Vec<_> = (0..pages).map(|_| pool.alloc().unwrap()).collect();
        assert!(again.iter().all(|&id| pool.get(id).iter().all(|&b| b == 0)));
        assert!(pool.alloc().is_none());
    }

    #[test]
    fn pages_are_distinct() {
        let mut pool = PagePool::new(4 * PAGE);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.get_mut(a).fill(1);
        pool.get_mut(b).fill(2);
        assert!(pool.get(a).iter().all(|&x| x == 1));
        assert!(pool.get(b).iter().all(|&x| x == 2));
    }

    #[test]
    fn a_shared_page_is_freed_by_its_last_holder() {
        let mut pool = PagePool::new(4 * PAGE);
        let a = pool.alloc().unwrap();
        pool.get_mut(a).fill(7);
        pool.share(a);
        assert!(pool.is_shared(a));
        pool.free(a);
        assert!(!pool.is_shared(a));
        assert_eq!(pool.used(), PAGE, "one holder left");
        assert!(pool.get(a).iter().all(|&x| x == 7));
        pool.free(a);
        assert_eq!(pool.used(), 0);
        assert_eq!(pool.alloc(), Some(a), "freed with its last holder");
    }

    #[test]
    fn commit_never_exceeds_capacity() {
        let mut pool = PagePool::new(10 * PAGE);
        assert!(pool.try_commit(6 * PAGE));
        assert!(!pool.try_commit(5 * PAGE));
        assert_eq!(pool.committed(), 6 * PAGE);
        assert!(pool.try_commit(4 * PAGE));
        assert!(!pool.try_commit(1));
        assert!(!pool.try_commit(u64::MAX));
        pool.uncommit(10 * PAGE);
        assert_eq!(pool.committed(), 0);
    }

    #[test]
    fn empty_pool_allocates_nothing() {
        let mut pool = PagePool::new(PAGE - 1);
        assert!(pool.alloc().is_none());
        assert!(!pool.try_commit(1));
        assert!(pool.try_commit(0));
    }
}
