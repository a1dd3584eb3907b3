//! Address spaces: the VMA tree of one process, its program break, its page
//! contents and its share of the pool's commit charge.
//!
//! # Calling convention
//!
//! Every address-space call (`mmap`, `munmap`, `mprotect`, `mremap`, `brk`,
//! `madvise`, one family per file) has the same shape: it takes the pool and
//! Linux's arguments and returns an [`Outcome`] — the syscall's result or
//! errno, plus the exact [`RangeChange`]s (and, for `mremap`, the
//! [`RangeMove`]s) a processor's runtime needs to update its mirror.
//! Each call first validates, then computes its commit-charge delta and
//! charges it (the only step that can fail once arguments are valid), then
//! mutates, which cannot fail: an error leaves the address space exactly as
//! it was, except for Linux's documented partial results (`mprotect` and
//! `madvise` meeting a hole), which return the errno *and* the changes made.
//!
//! # Invariants
//!
//! - VMAs are page-aligned, non-empty, disjoint and inside
//!   `[USER_MIN, USER_END)`; adjacent VMAs with equal attributes are merged.
//! - `committed` is the sum of the lengths of accounted VMAs outside the
//!   spilled regions, and is charged to the pool.
//! - Every stored page lies inside an accounted VMA outside the spilled
//!   regions, so the pool's `used <= committed <= capacity` and storing a
//!   page never fails.
//!
//! # Spilled regions
//!
//! A region ([`lego_proto::REGION_SIZE`]) may be *spilled*: its written
//! pages live on another memory manager, which reserved the whole region
//! for them. Its accounted bytes are then not charged here, and no page of
//! it is stored here. Which manager holds it is the service's business.
//!
//! # Accounting
//!
//! A VMA becomes accounted when it is mapped writable or first made
//! writable, and stays accounted until unmapped, as in Linux once a mapping
//! has pages (its `anon_vma`): the processor may hold pages dirtied while
//! the mapping was writable and write them back after an
//! `mprotect(PROT_READ)`, and that write-back must find room. Loaded program
//! segments are accounted whatever their protection, because the loader
//! stores their contents in the pool.

mod madvise;
mod mmap;
mod mprotect;
mod mremap;
#[cfg(test)]
mod tests;

use crate::pool::{PageId, PagePool, PAGE};
use lego_proto::{
    region_of, MappedFile, MemoryHolder, RangeChange, RangeMove, RangeState, SpaceLayout,
    SpilledRegion, VmaLayout, REGION_SIZE, USER_END, USER_MIN,
};
use std::collections::BTreeMap;
use std::fmt;

/// Top of the initial stack. The highest page of the application range is
/// left unmapped, as Linux leaves the top page of user space, so running off
/// the stack's top faults instead of reaching the runtime above `USER_END`.
pub const STACK_TOP: u64 = USER_END - PAGE;
/// Size of the stack mapping. It does not grow: `[STACK_TOP - STACK_SIZE,
/// STACK_TOP)` is mapped read-write at exec (Linux's default 8 MiB
/// `RLIMIT_STACK`), and the application may `mmap` more stacks.
pub const STACK_SIZE: u64 = 8 << 20;
/// Gap kept free below the stack, as Linux's minimum `mmap_base` gap.
pub const STACK_GAP: u64 = 128 << 20;
/// Top of the area searched for mappings without `MAP_FIXED`.
pub const MMAP_BASE: u64 = STACK_TOP - STACK_SIZE - STACK_GAP;
/// Upper bound of `MAP_32BIT` placements.
pub const LIMIT_32BIT: u64 = 1 << 31;

pub const PROT_READ: u32 = libc::PROT_READ as u32;
pub const PROT_WRITE: u32 = libc::PROT_WRITE as u32;
pub const PROT_EXEC: u32 = libc::PROT_EXEC as u32;
const PROT_ALL: u32 = PROT_READ | PROT_WRITE | PROT_EXEC;

pub use lego_proto::Errno;

/// What an address-space call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The syscall's return value, or its errno.
    pub result: Result<u64, Errno>,
    /// Moves of page contents, to apply before `changes`.
    pub moves: Vec<RangeMove>,
    /// Ranges whose state changed. Non-empty with an `Err` result only for
    /// Linux's partial failures.
    pub changes: Vec<RangeChange>,
}

impl Outcome {
    fn ok(result: u64, changes: Vec<RangeChange>) -> Outcome {
        Outcome {
            result: Ok(result),
            moves: Vec::new(),
            changes,
        }
    }

    fn err(errno: Errno) -> Outcome {
        Outcome {
            result: Err(errno),
            moves: Vec::new(),
            changes: Vec::new(),
        }
    }
}

/// One virtual memory area: a page-aligned range with one set of attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// Pages may hold contents the processor has not written back (a loaded
    /// program segment), so it must ask for them instead of zero-filling.
    pub populated: bool,
    /// The VMA's length is charged to the pool's commit charge.
    pub accounted: bool,
    /// A private file mapping: where its first page lies in which file
    /// (pages not written back read from there).
    pub file: Option<FileRef>,
    /// What a fork makes of it (`MADV_WIPEONFORK`, `MADV_DONTFORK`).
    pub on_fork: OnFork,
}

/// What a fork does with a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFork {
    /// The child gets a copy (copy on write).
    #[default]
    Copy,
    /// The child gets the mapping, reading zeros (`MADV_WIPEONFORK`).
    Wipe,
    /// The child does not get it (`MADV_DONTFORK`).
    Skip,
}

/// Where a file-backed VMA's first page lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// Index into the address space's file table.
    pub source: u32,
    /// Byte offset in the file of the VMA's start (page-aligned).
    pub offset: u64,
}

/// A file some mapping reads from: which storage manager, which handle,
/// and whose credentials its pages are read with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileSource {
    // (see `AddressSpace::mmap_file`)
    pub storage: std::net::SocketAddr,
    pub handle: lego_proto::FileHandle,
    pub caller: lego_proto::Voucher,
}

impl Vma {
    /// The file reference for the part of this VMA starting at `start`
    /// (its file offset moves with the start).
    fn file_at(&self, start: u64) -> Option<FileRef> {
        self.file.map(|f| FileRef {
            source: f.source,
            offset: f.offset + start.saturating_sub(self.start),
        })
    }

    fn state(&self) -> RangeState {
        RangeState::Mapped {
            prot: self.prot,
            populated: self.populated,
        }
    }

    fn same_attributes(&self, other: &Vma) -> bool {
        self.prot == other.prot
            && self.populated == other.populated
            && self.accounted == other.accounted
            && self.on_fork == other.on_fork
            // File mappings stay separate VMAs (merging would need equal
            // files and contiguous offsets).
            && self.file.is_none()
            && other.file.is_none()
    }

    /// The part of this VMA inside `[start, end)`.
    fn clipped(&self, start: u64, end: u64) -> Vma {
        let start = self.start.max(start);
        Vma {
            start,
            end: self.end.min(end),
            file: self.file_at(start),
            ..*self
        }
    }
}

/// The address space of one process.
pub struct AddressSpace {
    /// Keyed by start address.
    vmas: BTreeMap<u64, Vma>,
    /// Stored page contents, keyed by page address. Pages absent here read
    /// as zeros.
    pages: BTreeMap<u64, PageId>,
    /// Lowest value `brk` may take: the end of the loaded program.
    brk_start: u64,
    /// The current break (not page-aligned, as Linux keeps it).
    brk: u64,
    /// Bytes this space has charged to the pool.
    committed: u64,
    /// Regions whose pages live on another memory manager (see the module
    /// doc).
    spilled: BTreeMap<u64, Vec<MemoryHolder>>,
    /// Files that file-backed VMAs read from (`FileRef::source`).
    files: Vec<FileSource>,
}

impl fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSpace")
            .field("vmas", &self.vmas.values().collect::<Vec<_>>())
            .field("pages", &self.pages.len())
            .field("brk", &self.brk)
            .field("committed", &self.committed)
            .finish()
    }
}

/// Rounds up to a page boundary; `None` on overflow.
pub fn page_align(value: u64) -> Option<u64> {
    value.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1))
}

/// Whether `value` is a multiple of the page size.
pub fn is_aligned(value: u64) -> bool {
    value & (PAGE - 1) == 0
}

impl AddressSpace {
    /// An empty address space whose break starts at `brk_start`
    /// (page-aligned by the caller).
    pub fn new(brk_start: u64) -> AddressSpace {
        AddressSpace {
            vmas: BTreeMap::new(),
            pages: BTreeMap::new(),
            brk_start,
            brk: brk_start,
            committed: 0,
            spilled: BTreeMap::new(),
            files: Vec::new(),
        }
    }

    /// A copy of this space's layout without its pages, for a dry run of a
    /// change: its charge is made in `scratch` (forced: a scratch pool
    /// takes any charge), which the dry run then uses.
    pub fn shape(&self, scratch: &mut PagePool) -> AddressSpace {
        scratch.set_forced(true);
        scratch.try_commit(self.committed);
        AddressSpace {
            vmas: self.vmas.clone(),
            pages: BTreeMap::new(),
            brk_start: self.brk_start,
            brk: self.brk,
            committed: self.committed,
            spilled: self.spilled.clone(),
            files: self.files.clone(),
        }
    }

    /// The spilled regions, in order.
    pub fn spilled(&self) -> impl Iterator<Item = u64> + '_ {
        self.spilled.keys().copied()
    }

    /// The spilled regions and their holders, in order.
    pub fn spilled_regions(&self) -> Vec<SpilledRegion> {
        self.spilled
            .iter()
            .map(|(&region, holders)| SpilledRegion {
                region,
                holders: holders.clone(),
            })
            .collect()
    }

    /// The holders of the spilled regions reaching into `[start, end)`,
    /// with the regions each holds there.
    pub fn holders_in(&self, start: u64, end: u64) -> Vec<(MemoryHolder, Vec<u64>)> {
        let mut out: Vec<(MemoryHolder, Vec<u64>)> = Vec::new();
        if start >= end {
            return out;
        }
        for (&region, holders) in self.spilled.range(region_of(start)..=region_of(end - 1)) {
            for holder in holders {
                match out.iter_mut().find(|(h, _)| h == holder) {
                    Some((_, regions)) => regions.push(region),
                    None => out.push((holder.clone(), vec![region])),
                }
            }
        }
        out
    }

    /// Whether a spilled region reaches into `[start, end)`.
    pub fn touches_spilled(&self, start: u64, end: u64) -> bool {
        start < end
            && self
                .spilled
                .range(region_of(start)..=region_of(end - 1))
                .next()
                .is_some()
    }

    /// Whether `addr` lies in a spilled region.
    pub fn is_spilled(&self, addr: u64) -> bool {
        self.spilled.contains_key(&region_of(addr))
    }

    /// Spills `region`: its accounted bytes stop being charged here (the
    /// managers that hold it now reserved the region). Its pages here, if
    /// any, stay until [`AddressSpace::drop_spilled_pages`] (once the
    /// change the spill made room for is made, and the holders have them):
    /// until then, [`AddressSpace::unspill`] takes it all back.
    pub fn spill(
        &mut self,
        pool: &mut PagePool,
        region: u64,
        holders: Vec<MemoryHolder>,
    ) -> Result<(), String> {
        let (start, end) = region_range(region);
        if end > USER_END || start >= end {
            return Err(format!("region {region} lies outside the address space"));
        }
        if let Some(held) = self.spilled.get_mut(&region) {
            *held = holders;
            return Ok(());
        }
        let charged = self.accounted_in(start, end);
        pool.uncommit(charged);
        self.committed -= charged;
        self.spilled.insert(region, holders);
        Ok(())
    }

    /// The regions, not spilled, that accounted VMAs reach into within
    /// `[start, end)`: those a change that did not fit could spill.
    pub fn spillable_in(&self, start: u64, end: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for v in self.overlapping(start, end).iter().filter(|v| v.accounted) {
            let v = v.clipped(start, end);
            for region in region_of(v.start)..=region_of(v.end - 1) {
                if !self.spilled.contains_key(&region) && out.last() != Some(&region) {
                    out.push(region);
                }
            }
        }
        out
    }

    /// Drops the pages stored here of the spilled regions `regions` (the
    /// holders have them).
    pub fn drop_spilled_pages(&mut self, pool: &mut PagePool, regions: &[u64]) {
        for &region in regions {
            if self.spilled.contains_key(&region) {
                let (start, end) = region_range(region);
                self.clear_pages(pool, start, end);
            }
        }
    }

    /// Takes back the spilled regions left with no writable memory (all
    /// of it unmapped): they cost nothing here, and their holders may give
    /// them up. Returns them, with the holders they had.
    pub fn unspill_empty(&mut self, pool: &mut PagePool) -> Vec<SpilledRegion> {
        let empty: Vec<u64> = self
            .spilled
            .keys()
            .copied()
            .filter(|&r| {
                let (start, end) = region_range(r);
                self.overlapping(start, end).iter().all(|v| !v.accounted)
            })
            .collect();
        empty
            .into_iter()
            .map(|region| {
                let holders = self.spilled.get(&region).cloned().unwrap_or_default();
                self.unspill(pool, region);
                SpilledRegion { region, holders }
            })
            .collect()
    }

    /// Takes `region` back (a spill whose change then failed): charged
    /// here again, in full even past the pool's capacity (the caller
    /// uncommitted it under the same pool lock).
    pub fn unspill(&mut self, pool: &mut PagePool, region: u64) {
        if self.spilled.remove(&region).is_none() {
            return;
        }
        let (start, end) = region_range(region);
        let charged = self.accounted_in(start, end);
        let forced = pool.is_forced();
        pool.set_forced(true);
        pool.try_commit(charged);
        pool.set_forced(forced);
        self.committed += charged;
    }

    /// The regions that could be spilled so that `after`, this space once
    /// a change is made (a dry run on [`AddressSpace::shape`]), is charged
    /// less here, best first, each with the charge spilling it relieves:
    /// regions of the ranges the change touched, where `after` has
    /// accounted memory and no file is mapped (its pages are read from the
    /// file here), those storing no page here first (nothing to move),
    /// then from the highest down; after them every other region, the
    /// most charged first (a region kept by the home's side costs its
    /// keeper the rest of the region).
    pub fn spill_candidates(
        &self,
        after: &AddressSpace,
        touched: &[(u64, u64)],
    ) -> Vec<(u64, u64)> {
        let no_file = |&region: &u64| {
            let (rs, re) = region_range(region);
            after.overlapping(rs, re).iter().all(|v| v.file.is_none())
        };
        let charge = |region: u64| {
            let (rs, re) = region_range(region);
            (region, after.accounted_in(rs, re))
        };
        let mut candidates: Vec<u64> = touched
            .iter()
            .flat_map(|&(start, end)| after.spillable_in(start, end))
            .filter(no_file)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates.reverse();
        candidates.sort_by_key(|&region| {
            let (rs, re) = region_range(region);
            self.pages.range(rs..re).next().is_some()
        });
        let mut others: Vec<(u64, u64)> = after
            .spillable_in(USER_MIN, USER_END)
            .into_iter()
            .filter(|r| no_file(r) && !candidates.contains(r))
            .map(charge)
            .collect();
        others.sort_unstable_by_key(|&(region, charge)| std::cmp::Reverse((charge, region)));
        candidates
            .into_iter()
            .map(charge)
            .chain(others)
            .filter(|&(_, charge)| charge > 0)
            .collect()
    }

    /// Bytes of `[start, end)` outside the spilled regions.
    fn home_len(&self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let away: u64 = self
            .spilled
            .range(region_of(start)..=region_of(end - 1))
            .map(|(&r, _)| {
                let (rs, re) = region_range(r);
                re.min(end) - rs.max(start)
            })
            .sum();
        end - start - away
    }

    /// The VMAs in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &Vma> + '_ {
        self.vmas.values()
    }

    pub fn current_brk(&self) -> u64 {
        self.brk
    }

    /// Bytes of commit charge this space holds.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Number of pages holding stored contents.
    pub fn stored_pages(&self) -> usize {
        self.pages.len()
    }

    /// The VMA containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        self.vmas
            .range(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end > addr)
    }

    /// The stored page at page address `addr`, if any.
    pub fn page(&self, addr: u64) -> Option<PageId> {
        self.pages.get(&addr).copied()
    }

    /// Stores `contents` as the page at `addr`, which must lie in an
    /// accounted VMA (checked by the caller). An all-zero page is dropped
    /// instead of stored: it reads the same, and takes no pool page.
    /// `false` only if the pool is empty, which the accounting rules out.
    pub fn store_page(&mut self, pool: &mut PagePool, addr: u64, contents: &[u8]) -> bool {
        debug_assert!(self.find(addr).is_some_and(|v| v.accounted));
        debug_assert!(!self.is_spilled(addr), "a page of a spilled region stored");
        if contents.iter().all(|&b| b == 0) {
            if let Some(old) = self.pages.remove(&addr) {
                pool.free(old);
            }
            return true;
        }
        let id = match self.pages.get(&addr) {
            Some(&id) if !pool.is_shared(id) => id,
            // Copy on write: the other holders keep the old contents.
            Some(&shared) => match pool.alloc() {
                Some(id) => {
                    pool.free(shared);
                    self.pages.insert(addr, id);
                    id
                }
                None => return false,
            },
            None => match pool.alloc() {
                Some(id) => {
                    self.pages.insert(addr, id);
                    id
                }
                None => return false,
            },
        };
        pool.get_mut(id).copy_from_slice(contents);
        true
    }

    /// Frees every page and returns the whole commit charge: the end of the
    /// address space. Must be called before dropping it.
    pub fn release(&mut self, pool: &mut PagePool) {
        for (_, id) in std::mem::take(&mut self.pages) {
            pool.free(id);
        }
        pool.uncommit(self.committed);
        self.committed = 0;
        self.vmas.clear();
        self.spilled.clear();
    }

    /// The layout of this space for a backup's copy (its pages go
    /// separately, see [`AddressSpace::pages_from`]).
    pub fn layout(
        &self,
    ) -> (
        Vec<VmaLayout>,
        u64,
        u64,
        Vec<MappedFile>,
        Vec<SpilledRegion>,
    ) {
        let vmas = self
            .vmas
            .values()
            .map(|v| VmaLayout {
                start: v.start,
                end: v.end,
                prot: v.prot,
                populated: v.populated,
                accounted: v.accounted,
                file: v.file.map(|f| (f.source, f.offset)),
                on_fork: match v.on_fork {
                    OnFork::Copy => 0,
                    OnFork::Wipe => 1,
                    OnFork::Skip => 2,
                },
            })
            .collect();
        let files = self
            .files
            .iter()
            .map(|f| MappedFile {
                storage: f.storage,
                handle: f.handle.clone(),
                caller: f.caller.clone(),
            })
            .collect();
        (
            vmas,
            self.brk_start,
            self.brk,
            files,
            self.spilled_regions(),
        )
    }

    /// An address space of `layout`, with no pages yet, charged to `pool`
    /// as its primary's is. Errors name what is malformed (a layout comes
    /// from the network).
    pub fn from_layout(layout: &SpaceLayout, pool: &mut PagePool) -> Result<AddressSpace, String> {
        let mut vmas = BTreeMap::new();
        let mut committed = 0u64;
        let mut last_end = USER_MIN;
        let spilled: BTreeMap<u64, Vec<MemoryHolder>> = layout
            .spilled
            .iter()
            .map(|s| (s.region, s.holders.clone()))
            .collect();
        if let Some(&bad) = spilled.keys().find(|&&r| region_range(r).1 > USER_END) {
            return Err(format!(
                "spilled region {bad} lies outside the address space"
            ));
        }
        for v in &layout.vmas {
            let file = match v.file {
                Some((source, offset)) if (source as usize) < layout.files.len() => {
                    Some(FileRef { source, offset })
                }
                Some((source, _)) => return Err(format!("a VMA names file {source}, of none")),
                None => None,
            };
            if !is_aligned(v.start)
                || !is_aligned(v.end)
                || v.start < last_end
                || v.end <= v.start
                || v.end > USER_END
                || v.prot & !PROT_ALL != 0
            {
                return Err(format!(
                    "VMA {:#x}-{:#x} (prot {:#x}) is not page-aligned, ordered, disjoint and in range",
                    v.start, v.end, v.prot
                ));
            }
            last_end = v.end;
            let on_fork = match v.on_fork {
                0 => OnFork::Copy,
                1 => OnFork::Wipe,
                2 => OnFork::Skip,
                other => return Err(format!("unknown fork behaviour {other}")),
            };
            vmas.insert(
                v.start,
                Vma {
                    start: v.start,
                    end: v.end,
                    prot: v.prot,
                    populated: v.populated,
                    accounted: v.accounted,
                    file,
                    on_fork,
                },
            );
        }
        let mut space = AddressSpace {
            vmas,
            pages: BTreeMap::new(),
            brk_start: layout.brk_start,
            brk: layout.brk,
            committed: 0,
            spilled,
            files: layout
                .files
                .iter()
                .map(|f| FileSource {
                    storage: f.storage,
                    handle: f.handle.clone(),
                    caller: f.caller.clone(),
                })
                .collect(),
        };
        committed += space.accounted_in(USER_MIN, USER_END);
        if !pool.try_commit(committed) {
            return Err(format!(
                "a copy charged {committed} bytes does not fit in this pool"
            ));
        }
        space.committed = committed;
        Ok(space)
    }

    /// Takes over the pages of `old` (an earlier copy of the same
    /// process) that lie in accounted VMAs of this space; frees the rest.
    pub fn adopt_pages(&mut self, old: &mut AddressSpace, pool: &mut PagePool) {
        for (addr, id) in std::mem::take(&mut old.pages) {
            if self.find(addr).is_some_and(|v| v.accounted) && !self.is_spilled(addr) {
                if let Some(replaced) = self.pages.insert(addr, id) {
                    pool.free(replaced);
                }
            } else {
                pool.free(id);
            }
        }
    }

    /// Drops the stored pages of `[start, end)`.
    pub fn clear_pages(&mut self, pool: &mut PagePool, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let gone: Vec<u64> = self.pages.range(start..end).map(|(&a, _)| a).collect();
        for addr in gone {
            if let Some(id) = self.pages.remove(&addr) {
                pool.free(id);
            }
        }
    }

    /// Stores a page of a copy sent by the primary, if it lies in an
    /// accounted VMA here (a page the primary stored always does); `false`
    /// if the pool is out of pages.
    pub fn store_copied(&mut self, pool: &mut PagePool, addr: u64, contents: &[u8]) -> bool {
        if !is_aligned(addr)
            || !self.find(addr).is_some_and(|v| v.accounted)
            || self.is_spilled(addr)
        {
            return true;
        }
        self.store_page(pool, addr, contents)
    }

    /// The stored pages of `[start, end)` from `from` on, at most `max`.
    pub fn pages_in(&self, from: u64, end: u64, max: usize) -> Vec<(u64, PageId)> {
        if from >= end {
            return Vec::new();
        }
        self.pages
            .range(from..end)
            .take(max)
            .map(|(&a, &id)| (a, id))
            .collect()
    }

    /// Up to `max` stored pages from address `from` on, in address order.
    pub fn pages_from(&self, from: u64, max: usize) -> Vec<(u64, PageId)> {
        self.pages
            .range(from..)
            .take(max)
            .map(|(&a, &id)| (a, id))
            .collect()
    }

    /// fork: a copy of this address space that shares every stored page
    /// (copied when either side writes it back, see `store_page`) and is
    /// charged its own commit, as Linux charges a child its writable
    /// private mappings. `None`, with nothing changed, when the charge
    /// does not fit.
    /// VMAs marked `MADV_WIPEONFORK` are copied empty (reading zeros) and
    /// `MADV_DONTFORK` ones not at all, as Linux does; the returned changes
    /// say which ranges the child's runtime must forget or unmap.
    pub fn fork_copy(&self, pool: &mut PagePool) -> Option<(AddressSpace, Vec<RangeChange>)> {
        let mut vmas = BTreeMap::new();
        let mut changes = Vec::new();
        let mut committed = 0;
        for vma in self.vmas.values() {
            match vma.on_fork {
                OnFork::Skip => {
                    changes.push(RangeChange {
                        start: vma.start,
                        end: vma.end,
                        state: RangeState::Unmapped,
                        discard: true,
                    });
                    continue;
                }
                OnFork::Wipe => changes.push(RangeChange {
                    start: vma.start,
                    end: vma.end,
                    state: vma.state(),
                    discard: true,
                }),
                OnFork::Copy => {}
            }
            if vma.accounted {
                committed += self.home_len(vma.start, vma.end);
            }
            vmas.insert(vma.start, *vma);
        }
        if !pool.try_commit(committed) {
            return None;
        }
        let copied = |addr: &u64| {
            vmas.range(..=*addr)
                .next_back()
                .is_some_and(|(_, v): (_, &Vma)| v.end > *addr && v.on_fork == OnFork::Copy)
        };
        let pages: BTreeMap<u64, PageId> = self
            .pages
            .iter()
            .filter(|(addr, _)| copied(addr))
            .map(|(&addr, &id)| (addr, id))
            .collect();
        for &id in pages.values() {
            pool.share(id);
        }
        Some((
            AddressSpace {
                vmas,
                pages,
                brk_start: self.brk_start,
                brk: self.brk,
                committed,
                spilled: self.spilled.clone(),
                files: self.files.clone(),
            },
            coalesce(changes),
        ))
    }

    /// Adds a VMA over a free range and charges it if accounted (the
    /// loader's entry point). `false`, with nothing changed, if the range is
    /// not free or the charge does not fit.
    pub fn map_new(&mut self, pool: &mut PagePool, vma: Vma) -> bool {
        if vma.start >= vma.end
            || !is_aligned(vma.start)
            || !is_aligned(vma.end)
            || vma.start < USER_MIN
            || vma.end > USER_END
            || !self.is_free(vma.start, vma.end)
        {
            return false;
        }
        if vma.accounted && !self.charge(pool, self.home_len(vma.start, vma.end), 0) {
            return false;
        }
        self.insert(vma);
        true
    }

    // --- tree primitives ---

    /// The VMAs overlapping `[start, end)`, in order (unclipped).
    fn overlapping(&self, start: u64, end: u64) -> Vec<Vma> {
        let mut found: Vec<Vma> = self
            .vmas
            .range(..end)
            .rev()
            .map(|(_, v)| *v)
            .take_while(|v| v.end > start)
            .collect();
        found.reverse();
        found
    }

    fn is_free(&self, start: u64, end: u64) -> bool {
        !matches!(self.vmas.range(..end).next_back(), Some((_, v)) if v.end > start)
    }

    /// Splits the VMA that strictly contains `addr` in two at `addr`.
    fn split_at(&mut self, addr: u64) {
        if let Some(v) = self.find(addr).copied() {
            if v.start < addr {
                self.vmas.insert(v.start, Vma { end: addr, ..v });
                self.vmas.insert(
                    addr,
                    Vma {
                        start: addr,
                        file: v.file_at(addr),
                        ..v
                    },
                );
            }
        }
    }

    /// Removes everything in `[start, end)` from the tree (no accounting,
    /// no pages) and returns the removed pieces.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Vma> {
        if start >= end {
            return Vec::new();
        }
        self.split_at(start);
        self.split_at(end);
        let removed = self.overlapping(start, end);
        for v in &removed {
            self.vmas.remove(&v.start);
        }
        removed
    }

    /// Inserts a VMA over a free range and merges it with equal neighbours.
    fn insert(&mut self, vma: Vma) {
        debug_assert!(self.is_free(vma.start, vma.end));
        self.vmas.insert(vma.start, vma);
        self.merge_around(vma.start, vma.end);
    }

    /// Merges equal neighbours across every VMA boundary in `[start, end]`.
    fn merge_around(&mut self, start: u64, end: u64) {
        let lo = start.saturating_sub(1);
        let hi = end.saturating_add(1);
        let mut pieces = self.overlapping(lo, hi).into_iter();
        let Some(mut current) = pieces.next() else {
            return;
        };
        for next in pieces {
            if current.end == next.start && current.same_attributes(&next) {
                self.vmas.remove(&next.start);
                current.end = next.end;
                self.vmas.insert(current.start, current);
            } else {
                current = next;
            }
        }
    }

    // --- accounting and pages ---

    /// Bytes of accounted VMAs inside `[start, end)` charged here (outside
    /// the spilled regions).
    fn accounted_in(&self, start: u64, end: u64) -> u64 {
        self.overlapping(start, end)
            .iter()
            .filter(|v| v.accounted)
            .map(|v| {
                let v = v.clipped(start, end);
                self.home_len(v.start, v.end)
            })
            .sum()
    }

    /// Changes the charge by `add - remove`; `false` (nothing changed) if an
    /// increase does not fit in the pool.
    fn charge(&mut self, pool: &mut PagePool, add: u64, remove: u64) -> bool {
        if add >= remove {
            if !pool.try_commit(add - remove) {
                return false;
            }
            self.committed += add - remove;
        } else {
            pool.uncommit(remove - add);
            self.committed -= remove - add;
        }
        true
    }

    /// Frees the stored pages in `[start, end)`.
    fn drop_pages(&mut self, pool: &mut PagePool, start: u64, end: u64) {
        let addrs: Vec<u64> = self.pages.range(start..end).map(|(&a, _)| a).collect();
        for addr in addrs {
            if let Some(id) = self.pages.remove(&addr) {
                pool.free(id);
            }
        }
    }

    /// Moves the stored pages of `[from, from + len)` to `to`; the
    /// destination holds no pages (the caller emptied it).
    fn move_pages(&mut self, from: u64, to: u64, len: u64) {
        let moved: Vec<(u64, PageId)> = self
            .pages
            .range(from..from + len)
            .map(|(&a, &id)| (a, id))
            .collect();
        for (addr, _) in &moved {
            self.pages.remove(addr);
        }
        for (addr, id) in moved {
            let old = self.pages.insert(addr - from + to, id);
            debug_assert!(old.is_none(), "move onto a stored page");
        }
    }

    /// Unmaps `[start, end)`: returns the charge, frees the pages, removes
    /// the VMAs, and reports the ranges that were mapped.
    fn unmap(&mut self, pool: &mut PagePool, start: u64, end: u64) -> Vec<RangeChange> {
        let uncharge = self.accounted_in(start, end);
        self.charge(pool, 0, uncharge);
        self.drop_pages(pool, start, end);
        let removed = self.cut(start, end);
        coalesce(removed.iter().map(|v| RangeChange {
            start: v.start,
            end: v.end,
            state: RangeState::Unmapped,
            discard: true,
        }))
    }

    // --- placement ---

    /// The highest free `len`-byte range inside `[low, high)`.
    fn gap_top_down(&self, len: u64, low: u64, high: u64) -> Option<u64> {
        let mut gap_end = high;
        for v in self.vmas.range(..high).rev().map(|(_, v)| v) {
            if v.end < gap_end {
                let gap_start = v.end.max(low);
                if gap_end.checked_sub(gap_start).is_some_and(|g| g >= len) {
                    return Some(gap_end - len);
                }
            }
            gap_end = gap_end.min(v.start);
            if gap_end <= low {
                return None;
            }
        }
        gap_end
            .checked_sub(low)
            .filter(|&g| g >= len)
            .map(|_| gap_end - len)
    }

    /// The lowest free `len`-byte range inside `[low, high)`.
    fn gap_bottom_up(&self, len: u64, low: u64, high: u64) -> Option<u64> {
        let mut gap_start = low;
        for v in self.vmas.range(..high).map(|(_, v)| v) {
            if v.end <= gap_start {
                continue;
            }
            if v.start.min(high) >= gap_start && v.start.min(high) - gap_start >= len {
                return Some(gap_start);
            }
            gap_start = gap_start.max(v.end);
        }
        high.checked_sub(gap_start)
            .filter(|&g| g >= len)
            .map(|_| gap_start)
    }

    /// Chooses where a mapping without `MAP_FIXED` goes: the hint if that
    /// range is free, else the highest gap below [`MMAP_BASE`], else the
    /// lowest gap above it (Linux's top-down allocator and its bottom-up
    /// fallback). `below_2g` confines everything to `MAP_32BIT`'s range.
    fn place(&self, hint: u64, len: u64, below_2g: bool) -> Option<u64> {
        let limit = if below_2g { LIMIT_32BIT } else { USER_END };
        if hint != 0 {
            // Linux rounds a hint down to a page and up to mmap_min_addr.
            let addr = (hint & !(PAGE - 1)).max(USER_MIN);
            if addr.checked_add(len).is_some_and(|end| end <= limit)
                && self.is_free(addr, addr + len)
            {
                return Some(addr);
            }
        }
        if below_2g {
            return self.gap_top_down(len, USER_MIN, LIMIT_32BIT);
        }
        self.gap_top_down(len, USER_MIN, MMAP_BASE)
            .or_else(|| self.gap_bottom_up(len, MMAP_BASE, USER_END))
    }

    /// Checks the invariants; the error names the first one broken (for
    /// tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut prev: Option<Vma> = None;
        let mut accounted = 0;
        for (&key, v) in &self.vmas {
            let broken = if key != v.start {
                "keyed by another address"
            } else if v.start >= v.end {
                "empty"
            } else if !is_aligned(v.start) || !is_aligned(v.end) {
                "unaligned"
            } else if v.start < USER_MIN || v.end > USER_END {
                "outside the user range"
            } else if prev.is_some_and(|p| p.end > v.start) {
                "overlapping its predecessor"
            } else if prev.is_some_and(|p| p.end == v.start && p.same_attributes(v)) {
                "not merged with its equal predecessor"
            } else {
                ""
            };
            if !broken.is_empty() {
                return Err(format!("vma {v:x?} is {broken} (predecessor {prev:x?})"));
            }
            if v.accounted {
                accounted += self.home_len(v.start, v.end);
            }
            prev = Some(*v);
        }
        if accounted != self.committed {
            return Err(format!(
                "accounted vmas total {accounted:#x} bytes but the charge is {:#x}",
                self.committed
            ));
        }
        match self
            .pages
            .keys()
            .find(|&&a| !self.find(a).is_some_and(|v| v.accounted))
        {
            Some(addr) => Err(format!("page {addr:#x} is stored outside an accounted vma")),
            None => match self.pages.keys().find(|&&a| self.is_spilled(a)) {
                Some(addr) => Err(format!("page {addr:#x} of a spilled region is stored here")),
                None => Ok(()),
            },
        }
    }
}

/// The addresses `[start, end)` of `region`.
fn region_range(region: u64) -> (u64, u64) {
    let start = region.saturating_mul(REGION_SIZE);
    (start, start.saturating_add(REGION_SIZE))
}

/// Merges adjacent changes with equal state and discard flags.
fn coalesce(changes: impl IntoIterator<Item = RangeChange>) -> Vec<RangeChange> {
    let mut out: Vec<RangeChange> = Vec::new();
    for c in changes {
        match out.last_mut() {
            Some(last)
                if last.end == c.start && last.state == c.state && last.discard == c.discard =>
            {
                last.end = c.end;
            }
            _ => out.push(c),
        }
    }
    out
}
