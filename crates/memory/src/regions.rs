//! The regions of other managers' processes held here: the pages of a
//! region a process's home spilled (see `vma`'s "Spilled regions") and
//! placed on this memory manager.
//!
//! A held region reserves all of [`REGION_SIZE`] in the pool's commit
//! charge when it is taken, so storing a page of it never fails; the home
//! keeps the layout and tells this store what the layout changes discard,
//! move or copy. Pages are stored only where the process's runtime wrote
//! them back; a page absent here reads as zeros (the runtime asks here
//! only for pages it wrote back).

use crate::pool::{PageId, PagePool, PAGE};
use lego_proto::{region_of, MemoryHolder, ProcessId, PAGE_SIZE, REGION_SIZE, USER_END};
use std::collections::{BTreeMap, HashMap};

/// One held region: its stored pages, by address.
#[derive(Default)]
struct Region {
    pages: BTreeMap<u64, PageId>,
    /// Pages written since the region was taken, by the runtime or passed
    /// on by another holder (`MirrorPages`), one bit each (none until one
    /// is): newer than any page of a copy filling the region, which does
    /// not replace them.
    written: Vec<u64>,
    /// Where pages written here go too: a holder this region is being
    /// copied to, which the runtime does not know yet.
    mirror: Option<MemoryHolder>,
    /// Passing a page on failed since `mirror` was set: that holder's
    /// copy misses a write.
    mirror_broken: bool,
}

/// How a page comes to be stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Write {
    /// The runtime wrote it back.
    Runtime,
    /// A holder copying the region here passed on the runtime's write.
    Mirrored,
    /// Part of the region's copy (from the home or another holder): older
    /// than any page written here since the region was taken, which it
    /// does not replace.
    Fill,
}

/// The regions held here, by process.
#[derive(Default)]
pub struct RegionStore {
    held: HashMap<ProcessId, BTreeMap<u64, Region>>,
    /// The tree each process with regions here belongs to: only its
    /// runtime may write or read them.
    trees: HashMap<ProcessId, ProcessId>,
}

/// Why a region cannot be held or a page stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegionError {
    #[error("region {region} of process {pid:#x} lies outside the address space")]
    OutOfRange { pid: ProcessId, region: u64 },
    #[error("this pool cannot reserve region {region} of process {pid:#x}: {free} bytes uncommitted, a region takes {REGION_SIZE}")]
    NoRoom {
        pid: ProcessId,
        region: u64,
        free: u64,
    },
    #[error("page {addr:#x} of process {pid:#x} is in no region held here")]
    NotHeld { pid: ProcessId, addr: u64 },
    #[error("{addr:#x} is not a page address")]
    Unaligned { addr: u64 },
    #[error("process {pid:#x} has regions here for another process tree")]
    OtherTree { pid: ProcessId },
}

impl RegionStore {
    /// Takes region `region` of process `pid` of tree `tree`, reserving
    /// it in `pool`. Taking a region held already changes nothing.
    pub fn hold(
        &mut self,
        pool: &mut PagePool,
        pid: ProcessId,
        tree: ProcessId,
        region: u64,
    ) -> Result<(), RegionError> {
        if region
            .checked_mul(REGION_SIZE)
            .is_none_or(|s| s >= USER_END)
        {
            return Err(RegionError::OutOfRange { pid, region });
        }
        if self.trees.get(&pid).is_some_and(|&t| t != tree) {
            return Err(RegionError::OtherTree { pid });
        }
        let regions = self.held.entry(pid).or_default();
        if regions.contains_key(&region) {
            return Ok(());
        }
        if !pool.try_commit(REGION_SIZE) {
            let free = pool.capacity_bytes().saturating_sub(pool.committed());
            if regions.is_empty() {
                self.held.remove(&pid);
            }
            return Err(RegionError::NoRoom { pid, region, free });
        }
        regions.insert(region, Region::default());
        self.trees.insert(pid, tree);
        Ok(())
    }

    /// Up to `max` stored pages of region `region` of `pid` from address
    /// `from` on, with their contents.
    pub fn pages_from(
        &self,
        pool: &PagePool,
        pid: ProcessId,
        region: u64,
        from: u64,
        max: usize,
    ) -> Vec<(u64, Vec<u8>)> {
        self.held
            .get(&pid)
            .and_then(|regions| regions.get(&region))
            .map(|r| {
                r.pages
                    .range(from..)
                    .take(max)
                    .map(|(&addr, &id)| (addr, pool.get(id).to_vec()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The processes with regions here.
    pub fn pids(&self) -> Vec<ProcessId> {
        self.held.keys().copied().collect()
    }

    /// The tree of process `pid`, if it has regions here.
    pub fn tree_of(&self, pid: ProcessId) -> Option<ProcessId> {
        self.trees.get(&pid).copied()
    }

    /// Whether no region is held here.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether the page at `addr` of `pid` lies in a region held here.
    pub fn holds(&self, pid: ProcessId, addr: u64) -> bool {
        self.held
            .get(&pid)
            .is_some_and(|r| r.contains_key(&region_of(addr)))
    }

    /// The regions of `pid` held here, in order.
    pub fn regions_of(&self, pid: ProcessId) -> Vec<u64> {
        self.held
            .get(&pid)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Stores the page at `addr`, written as `how` says (a filled page
    /// never replaces one written since the region was taken); an all-zero
    /// page is dropped instead (it reads the same).
    pub fn store(
        &mut self,
        pool: &mut PagePool,
        pid: ProcessId,
        addr: u64,
        contents: &[u8],
        how: Write,
    ) -> Result<(), RegionError> {
        if !addr.is_multiple_of(PAGE) || contents.len() != PAGE_SIZE {
            return Err(RegionError::Unaligned { addr });
        }
        let region = self.region_mut(pid, addr)?;
        let bit = ((addr % REGION_SIZE) / PAGE) as usize;
        match how {
            Write::Fill => {
                if region
                    .written
                    .get(bit / 64)
                    .is_some_and(|w| w & (1 << (bit % 64)) != 0)
                {
                    return Ok(());
                }
            }
            Write::Mirrored | Write::Runtime => {
                if region.written.is_empty() {
                    region.written = vec![0; (REGION_SIZE / PAGE) as usize / 64];
                }
                region.written[bit / 64] |= 1 << (bit % 64);
            }
        }
        if contents.iter().all(|&b| b == 0) {
            if let Some(old) = region.pages.remove(&addr) {
                pool.free(old);
            }
            return Ok(());
        }
        let id = match region.pages.get(&addr) {
            Some(&id) if !pool.is_shared(id) => id,
            other => {
                // The reservation covers every page of the region, so the
                // pool cannot be out of pages for this one.
                let id = pool.alloc().ok_or(RegionError::NoRoom {
                    pid,
                    region: region_of(addr),
                    free: 0,
                })?;
                if let Some(&shared) = other {
                    pool.free(shared);
                }
                region.pages.insert(addr, id);
                id
            }
        };
        pool.get_mut(id).copy_from_slice(contents);
        Ok(())
    }

    /// The held region page `addr` of `pid` lies in.
    fn region_mut(&mut self, pid: ProcessId, addr: u64) -> Result<&mut Region, RegionError> {
        self.held
            .get_mut(&pid)
            .and_then(|r| r.get_mut(&region_of(addr)))
            .ok_or(RegionError::NotHeld { pid, addr })
    }

    /// Stores the pages `addrs` of `pid` (one page of `payload` each),
    /// written as `how` says, and tells where written pages go too (see
    /// [`RegionStore::set_mirror`]): each holder with the indexes of its
    /// pages. `payload` holds a page per address (checked by the caller).
    pub fn store_all(
        &mut self,
        pool: &mut PagePool,
        pid: ProcessId,
        addrs: &[u64],
        payload: &[u8],
        how: Write,
    ) -> Result<Vec<(MemoryHolder, Vec<usize>)>, RegionError> {
        let mut mirrors: Vec<(MemoryHolder, Vec<usize>)> = Vec::new();
        for (i, (&addr, contents)) in addrs.iter().zip(payload.chunks(PAGE_SIZE)).enumerate() {
            self.store(pool, pid, addr, contents, how)?;
            if how == Write::Fill {
                continue;
            }
            if let Some(to) = self.mirror_of(pid, addr) {
                match mirrors.iter_mut().find(|(h, _)| h == to) {
                    Some((_, pages)) => pages.push(i),
                    None => mirrors.push((to.clone(), vec![i])),
                }
            }
        }
        Ok(mirrors)
    }

    /// Stores pool page `id` (shared with its owner, an address space of
    /// this manager's) as the page at `addr`: the region's pages move here
    /// without a copy when this manager keeps a region it spilled.
    pub fn adopt(
        &mut self,
        pool: &mut PagePool,
        pid: ProcessId,
        addr: u64,
        id: PageId,
    ) -> Result<(), RegionError> {
        if !addr.is_multiple_of(PAGE) {
            return Err(RegionError::Unaligned { addr });
        }
        let region = self.region_mut(pid, addr)?;
        pool.share(id);
        if let Some(old) = region.pages.insert(addr, id) {
            pool.free(old);
        }
        Ok(())
    }

    /// Has the pages written to region `region` of `pid` from now on go
    /// to `to` too (`None`: no longer).
    pub fn set_mirror(
        &mut self,
        pid: ProcessId,
        region: u64,
        to: Option<MemoryHolder>,
    ) -> Result<(), RegionError> {
        let held = self
            .held
            .get_mut(&pid)
            .and_then(|r| r.get_mut(&region))
            .ok_or(RegionError::NotHeld {
                pid,
                addr: region.saturating_mul(REGION_SIZE),
            })?;
        held.mirror = to;
        held.mirror_broken = false;
        Ok(())
    }

    /// Passing the pages of region `region` of `pid` on failed: they are
    /// passed on no more, and [`RegionStore::mirror_broken`] says so.
    pub fn break_mirror(&mut self, pid: ProcessId, region: u64) {
        if let Some(held) = self.held.get_mut(&pid).and_then(|r| r.get_mut(&region)) {
            held.mirror = None;
            held.mirror_broken = true;
        }
    }

    /// Whether passing the pages of region `region` of `pid` on failed
    /// since it began.
    pub fn mirror_broken(&self, pid: ProcessId, region: u64) -> bool {
        self.held
            .get(&pid)
            .and_then(|r| r.get(&region))
            .is_some_and(|r| r.mirror_broken)
    }

    /// Where the page at `addr` of `pid` goes too when written here.
    pub fn mirror_of(&self, pid: ProcessId, addr: u64) -> Option<&MemoryHolder> {
        self.held.get(&pid)?.get(&region_of(addr))?.mirror.as_ref()
    }

    /// The page at `addr`, if one is stored (`None` reads as zeros).
    pub fn page<'p>(&self, pool: &'p PagePool, pid: ProcessId, addr: u64) -> Option<&'p [u8]> {
        let id = *self
            .held
            .get(&pid)?
            .get(&region_of(addr))?
            .pages
            .get(&addr)?;
        Some(pool.get(id))
    }

    /// Drops the stored pages of `[start, end)` (the home unmapped or
    /// discarded them).
    pub fn discard(&mut self, pool: &mut PagePool, pid: ProcessId, start: u64, end: u64) {
        let Some(regions) = self.held.get_mut(&pid) else {
            return;
        };
        if start >= end {
            return;
        }
        for (_, region) in regions.range_mut(region_of(start)..=region_of(end - 1)) {
            let gone: Vec<u64> = region.pages.range(start..end).map(|(&a, _)| a).collect();
            for addr in gone {
                if let Some(id) = region.pages.remove(&addr) {
                    pool.free(id);
                }
            }
        }
    }

    /// Takes the stored pages of `[start, end)` out, with their contents
    /// (for a move to another manager or to another place here).
    pub fn take(
        &mut self,
        pool: &mut PagePool,
        pid: ProcessId,
        start: u64,
        end: u64,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        if let Some(regions) = self.held.get(&pid) {
            if start < end {
                for (_, region) in regions.range(region_of(start)..=region_of(end - 1)) {
                    for (&addr, &id) in region.pages.range(start..end) {
                        out.push((addr, pool.get(id).to_vec()));
                    }
                }
            }
        }
        self.discard(pool, pid, start, end);
        out
    }

    /// fork: the child `child` holds the regions of `parent` listed, each
    /// reserved anew, sharing the parent's pages (copied when either side
    /// writes one). All or nothing: `NoRoom` leaves nothing held.
    pub fn fork(
        &mut self,
        pool: &mut PagePool,
        parent: ProcessId,
        child: ProcessId,
        regions: &[u64],
    ) -> Result<(), RegionError> {
        let Some(tree) = self.tree_of(parent) else {
            return Err(RegionError::NotHeld {
                pid: parent,
                addr: regions.first().map_or(0, |r| r.saturating_mul(REGION_SIZE)),
            });
        };
        if self.tree_of(child).is_some_and(|t| t != tree) {
            return Err(RegionError::OtherTree { pid: child });
        }
        let mut regions = regions.to_vec();
        regions.sort_unstable();
        regions.dedup();
        let needed = REGION_SIZE.saturating_mul(regions.len() as u64);
        if !pool.try_commit(needed) {
            let free = pool.capacity_bytes().saturating_sub(pool.committed());
            return Err(RegionError::NoRoom {
                pid: child,
                region: regions.first().copied().unwrap_or(0),
                free,
            });
        }
        let mut copies = BTreeMap::new();
        for &r in &regions {
            let pages: BTreeMap<u64, PageId> = self
                .held
                .get(&parent)
                .and_then(|held| held.get(&r))
                .map(|region| region.pages.clone())
                .unwrap_or_default();
            for &id in pages.values() {
                pool.share(id);
            }
            copies.insert(
                r,
                Region {
                    pages,
                    ..Region::default()
                },
            );
        }
        // A region the child held already (a repeated fork) is replaced.
        self.trees.insert(child, tree);
        let mine = self.held.entry(child).or_default();
        for (r, region) in copies {
            if let Some(old) = mine.insert(r, region) {
                pool.uncommit(REGION_SIZE);
                for id in old.pages.into_values() {
                    pool.free(id);
                }
            }
        }
        Ok(())
    }

    /// Gives up region `region` of `pid` (or all of its regions, with
    /// `None`): frees the pages and the reservation.
    pub fn release(&mut self, pool: &mut PagePool, pid: ProcessId, region: Option<u64>) {
        let Some(regions) = self.held.get_mut(&pid) else {
            return;
        };
        let gone: Vec<u64> = match region {
            Some(r) => regions.contains_key(&r).then_some(r).into_iter().collect(),
            None => regions.keys().copied().collect(),
        };
        for r in gone {
            if let Some(region) = regions.remove(&r) {
                for id in region.pages.into_values() {
                    pool.free(id);
                }
                pool.uncommit(REGION_SIZE);
            }
        }
        if regions.is_empty() {
            self.held.remove(&pid);
            self.trees.remove(&pid);
        }
    }

    /// How many regions, and bytes of pages, each process holds here.
    pub fn report(&self) -> Vec<lego_proto::HeldRegions> {
        self.held
            .iter()
            .map(|(&pid, regions)| lego_proto::HeldRegions {
                pid,
                regions: regions.len() as u32,
                bytes: regions.values().map(|r| r.pages.len() as u64).sum::<u64>() * PAGE,
            })
            .collect()
    }

    /// Bytes of pages stored for `pid` here.
    pub fn stored_bytes(&self, pid: ProcessId) -> u64 {
        self.held.get(&pid).map_or(0, |regions| {
            regions.values().map(|r| r.pages.len() as u64).sum::<u64>() * PAGE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: ProcessId = 0x51;
    const CHILD: ProcessId = 0x52;
    const R: u64 = REGION_SIZE;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    #[test]
    fn a_held_region_reserves_itself_and_stores_its_pages() {
        let mut pool = PagePool::new(2 * R);
        let mut store = RegionStore::default();
        store.hold(&mut pool, PID, PID, 3).unwrap();
        store.hold(&mut pool, PID, PID, 3).unwrap();
        assert_eq!(pool.committed(), R);
        store.hold(&mut pool, PID, PID, 4).unwrap();
        assert!(matches!(
            store.hold(&mut pool, PID, PID, 5),
            Err(RegionError::NoRoom {
                region: 5,
                free: 0,
                ..
            })
        ));
        assert!(matches!(
            store.hold(&mut pool, PID, PID, USER_END / R),
            Err(RegionError::OutOfRange { .. })
        ));
        assert_eq!(
            store.hold(&mut pool, PID, CHILD, 4),
            Err(RegionError::OtherTree { pid: PID })
        );
        assert_eq!(store.tree_of(PID), Some(PID));
        store
            .store(&mut pool, PID, 3 * R, &page(7), Write::Runtime)
            .unwrap();
        store
            .store(&mut pool, PID, 3 * R + PAGE, &page(0), Write::Runtime)
            .unwrap();
        assert_eq!(
            store.store(&mut pool, PID, 5 * R, &page(1), Write::Runtime),
            Err(RegionError::NotHeld {
                pid: PID,
                addr: 5 * R
            })
        );
        assert_eq!(
            store.store(&mut pool, PID, 3 * R + 1, &page(1), Write::Runtime),
            Err(RegionError::Unaligned { addr: 3 * R + 1 })
        );
        assert_eq!(store.page(&pool, PID, 3 * R).unwrap()[0], 7);
        assert!(store.page(&pool, PID, 3 * R + PAGE).is_none());
        assert!(store.holds(PID, 4 * R + 5 * PAGE) && !store.holds(PID, 5 * R));
        assert_eq!(store.stored_bytes(PID), PAGE);
        assert_eq!(pool.used(), PAGE);
        store.release(&mut pool, PID, Some(3));
        assert_eq!((pool.committed(), pool.used()), (R, 0));
        assert_eq!(store.regions_of(PID), vec![4]);
        store.release(&mut pool, PID, None);
        assert_eq!((pool.committed(), pool.used()), (0, 0));
        assert!(store.regions_of(PID).is_empty());
        assert_eq!(store.tree_of(PID), None);
    }

    #[test]
    fn discards_moves_and_forks_keep_pages_and_charge_exact() {
        let mut pool = PagePool::new(8 * R);
        let mut store = RegionStore::default();
        store.hold(&mut pool, PID, PID, 1).unwrap();
        store.hold(&mut pool, PID, PID, 2).unwrap();
        for i in 0..4 {
            store
                .store(
                    &mut pool,
                    PID,
                    2 * R - 2 * PAGE + i * PAGE,
                    &page(i as u8 + 1),
                    Write::Runtime,
                )
                .unwrap();
        }
        // A discard across the regions' boundary.
        store.discard(&mut pool, PID, 2 * R - PAGE, 2 * R + PAGE);
        assert_eq!(store.stored_bytes(PID), 2 * PAGE);
        let taken = store.take(&mut pool, PID, R, 3 * R);
        let addrs: Vec<u64> = taken.iter().map(|(a, _)| *a).collect();
        assert_eq!(addrs, vec![2 * R - 2 * PAGE, 2 * R + PAGE]);
        assert_eq!(taken[1].1[0], 4);
        assert_eq!(store.stored_bytes(PID), 0);
        for (addr, contents) in &taken {
            store
                .store(&mut pool, PID, *addr, contents, Write::Runtime)
                .unwrap();
        }
        store.fork(&mut pool, PID, CHILD, &[1, 2]).unwrap();
        assert_eq!(store.tree_of(CHILD), Some(PID));
        assert_eq!(pool.committed(), 4 * R);
        assert_eq!(pool.used(), 2 * PAGE, "the child shares the pages");
        store
            .store(&mut pool, CHILD, 2 * R + PAGE, &page(9), Write::Runtime)
            .unwrap();
        assert_eq!(store.page(&pool, PID, 2 * R + PAGE).unwrap()[0], 4);
        assert_eq!(store.page(&pool, CHILD, 2 * R + PAGE).unwrap()[0], 9);
        assert!(store.fork(&mut pool, PID, 0x53, &[1, 2, 3, 4, 5]).is_err());
        // A region named twice is reserved once.
        store.fork(&mut pool, PID, 0x54, &[1, 1]).unwrap();
        assert_eq!(pool.committed(), 5 * R);
        store.release(&mut pool, 0x54, None);
        assert_eq!(
            pool.committed(),
            4 * R,
            "a fork that does not fit holds nothing"
        );
        store.release(&mut pool, PID, None);
        store.release(&mut pool, CHILD, None);
        assert_eq!((pool.committed(), pool.used()), (0, 0));
    }

    /// A region being copied here while the runtime writes to the copy's
    /// source: a page passed on (mirrored) or written here is newer than a
    /// copied one of the same address, whichever comes first; the source
    /// knows where to pass pages on.
    #[test]
    fn a_copied_page_never_replaces_a_mirrored_one() {
        let mut pool = PagePool::new(2 * R);
        let mut store = RegionStore::default();
        store.hold(&mut pool, PID, PID, 1).unwrap();
        store
            .store(&mut pool, PID, R, &page(5), Write::Mirrored)
            .unwrap();
        store
            .store(&mut pool, PID, R, &page(1), Write::Fill)
            .unwrap();
        store
            .store(&mut pool, PID, R + PAGE, &page(2), Write::Fill)
            .unwrap();
        store
            .store(&mut pool, PID, R + PAGE, &page(6), Write::Mirrored)
            .unwrap();
        assert_eq!(store.page(&pool, PID, R).unwrap()[0], 5);
        assert_eq!(store.page(&pool, PID, R + PAGE).unwrap()[0], 6);
        // Nor one the runtime wrote here (say, knowing this holder from
        // before it restarted); a page no one wrote is filled.
        store
            .store(&mut pool, PID, R + 2 * PAGE, &page(7), Write::Runtime)
            .unwrap();
        store
            .store(&mut pool, PID, R + 2 * PAGE, &page(3), Write::Fill)
            .unwrap();
        store
            .store(&mut pool, PID, R + 3 * PAGE, &page(4), Write::Fill)
            .unwrap();
        assert_eq!(store.page(&pool, PID, R + 2 * PAGE).unwrap()[0], 7);
        assert_eq!(store.page(&pool, PID, R + 3 * PAGE).unwrap()[0], 4);
        let to = MemoryHolder {
            name: "memory-9".into(),
            addr: "127.0.0.1:9".parse().unwrap(),
        };
        assert_eq!(store.mirror_of(PID, R + PAGE), None);
        store.set_mirror(PID, 1, Some(to.clone())).unwrap();
        assert_eq!(store.mirror_of(PID, R + PAGE), Some(&to));
        assert!(store.set_mirror(PID, 2, None).is_err());
        store.break_mirror(PID, 1);
        assert_eq!(store.mirror_of(PID, R + PAGE), None);
        assert!(store.mirror_broken(PID, 1));
        store.set_mirror(PID, 1, None).unwrap();
        assert!(!store.mirror_broken(PID, 1));
    }
}
