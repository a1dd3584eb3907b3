//! mmap, munmap and brk.
//!
//! Anonymous memory is served by `mmap`; private (and read-only shared)
//! mappings of a storage file by `mmap_file`, whose pages are read from
//! the storage manager on first fetch; a call without MAP_ANONYMOUS that
//! names no file fails with `ENODEV`. Shared mappings of host objects and
//! shared anonymous memory are the runtime's (the host kernel's own
//! mappings on the processor, shared across fork): here they are only a
//! reserved range. `MAP_HUGETLB` gets normal pages, and
//! `MAP_NORESERVE` is ignored (strict accounting, as under
//! `vm.overcommit_memory=2`). `MAP_GROWSDOWN` mappings do not grow.

use super::{
    is_aligned, page_align, AddressSpace, Errno, FileRef, FileSource, OnFork, Outcome, Vma,
    PROT_ALL, PROT_READ, PROT_WRITE,
};
use crate::pool::{PagePool, PAGE};
use lego_proto::{RangeChange, USER_END, USER_MIN};

pub const MAP_SHARED: u32 = libc::MAP_SHARED as u32;
pub const MAP_PRIVATE: u32 = libc::MAP_PRIVATE as u32;
const MAP_TYPE: u32 = 0x0f;
pub const MAP_FIXED: u32 = libc::MAP_FIXED as u32;
pub const MAP_ANONYMOUS: u32 = libc::MAP_ANONYMOUS as u32;
pub const MAP_32BIT: u32 = libc::MAP_32BIT as u32;
pub const MAP_GROWSDOWN: u32 = libc::MAP_GROWSDOWN as u32;
pub const MAP_FIXED_NOREPLACE: u32 = libc::MAP_FIXED_NOREPLACE as u32;

/// Most VMAs one address space may have (Linux's default
/// `vm.max_map_count`). A call that could exceed it fails with `ENOMEM`.
pub const MAX_VMAS: usize = 65530;

impl AddressSpace {
    /// Whether a call that adds at most three VMAs may proceed.
    pub(super) fn has_room_for_vmas(&self) -> bool {
        self.vmas.len() + 3 <= MAX_VMAS
    }

    pub fn mmap(
        &mut self,
        pool: &mut PagePool,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
    ) -> Outcome {
        // File mappings come as `mmap_file`, naming their file: here they
        // fail with ENODEV (after the argument checks, as before).
        self.map(pool, addr, len, prot, flags, None)
    }

    /// A private mapping of `source` from `offset` (the last argument): pages not yet written
    /// back read from the file (`populated`), so MADV_DONTNEED brings the
    /// file's contents back, as on Linux. A shared mapping is accepted only
    /// read-only (the runtime refuses writable ones) and behaves the same.
    pub fn mmap_file(
        &mut self,
        pool: &mut PagePool,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        (source, offset): (FileSource, u64),
    ) -> Outcome {
        if !is_aligned(offset) {
            return Outcome::err(Errno::EINVAL);
        }
        let index = match self.files.iter().position(|f| *f == source) {
            Some(i) => i,
            None => {
                self.files.push(source);
                self.files.len() - 1
            }
        };
        let file = FileRef {
            source: index as u32,
            offset,
        };
        self.map(pool, addr, len, prot, flags | MAP_ANONYMOUS, Some(file))
    }

    /// The file and offset a page of a file-backed VMA reads from.
    pub fn file_page(&self, addr: u64) -> Option<(&FileSource, u64)> {
        let vma = self.find(addr)?;
        let file = vma.file_at(addr & !(PAGE - 1))?;
        Some((self.files.get(file.source as usize)?, file.offset))
    }

    fn map(
        &mut self,
        pool: &mut PagePool,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        file: Option<FileRef>,
    ) -> Outcome {
        if len == 0 {
            return Outcome::err(Errno::EINVAL);
        }
        // Linux accepts MAP_SHARED_VALIDATE for files only (it validates
        // the flags against the file's operations): anonymous memory gets
        // EINVAL, as any other type.
        let kind = flags & MAP_TYPE;
        if kind != MAP_SHARED && kind != MAP_PRIVATE {
            return Outcome::err(Errno::EINVAL);
        }
        if prot & !PROT_ALL != 0 {
            return Outcome::err(Errno::EINVAL);
        }
        if kind == MAP_SHARED && flags & MAP_GROWSDOWN != 0 {
            return Outcome::err(Errno::EINVAL);
        }
        if flags & MAP_ANONYMOUS == 0 {
            return Outcome::err(Errno::ENODEV);
        }
        let Some(len) = page_align(len) else {
            return Outcome::err(Errno::ENOMEM);
        };
        if len > USER_END - USER_MIN || !self.has_room_for_vmas() {
            return Outcome::err(Errno::ENOMEM);
        }
        let start = if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            // Linux's order: range, then alignment, then mmap_min_addr.
            if addr > USER_END - len {
                return Outcome::err(Errno::ENOMEM);
            }
            if !is_aligned(addr) {
                return Outcome::err(Errno::EINVAL);
            }
            if addr < USER_MIN {
                return Outcome::err(Errno::EPERM);
            }
            if flags & MAP_FIXED == 0 && !self.is_free(addr, addr + len) {
                return Outcome::err(Errno::EEXIST);
            }
            addr
        } else {
            match self.place(addr, len, flags & MAP_32BIT != 0) {
                Some(start) => start,
                None => return Outcome::err(Errno::ENOMEM),
            }
        };
        let end = start + len;
        if file.is_some() && self.touches_spilled(start, end) {
            // A file's pages are read here; a spilled region's live on
            // its holders, which have only what was written back.
            return Outcome::err(Errno::ENOMEM);
        }
        let accounted = prot & PROT_WRITE != 0;
        let replaced = !self.is_free(start, end);
        let add = if accounted {
            self.home_len(start, end)
        } else {
            0
        };
        if !self.charge(pool, add, self.accounted_in(start, end)) {
            return Outcome::err(Errno::ENOMEM);
        }
        self.drop_pages(pool, start, end);
        self.cut(start, end);
        let vma = Vma {
            start,
            end,
            prot,
            populated: file.is_some(),
            accounted,
            file,
            on_fork: OnFork::Copy,
        };
        self.insert(vma);
        Outcome::ok(
            start,
            vec![RangeChange {
                start,
                end,
                state: vma.state(),
                discard: replaced,
            }],
        )
    }

    pub fn munmap(&mut self, pool: &mut PagePool, addr: u64, len: u64) -> Outcome {
        if !is_aligned(addr) || addr > USER_END || len > USER_END - addr {
            return Outcome::err(Errno::EINVAL);
        }
        // Cannot overflow: addr and USER_END are aligned.
        let Some(len) = page_align(len).filter(|&l| l > 0) else {
            return Outcome::err(Errno::EINVAL);
        };
        if !self.has_room_for_vmas() {
            return Outcome::err(Errno::ENOMEM);
        }
        let changes = self.unmap(pool, addr, addr + len);
        Outcome::ok(0, changes)
    }

    /// Linux's `sys_brk`: the result is always the break after the call,
    /// which is the old one when the request cannot be met.
    pub fn brk(&mut self, pool: &mut PagePool, addr: u64) -> Outcome {
        let old = self.brk;
        let unchanged = Outcome::ok(old, Vec::new());
        if addr < self.brk_start {
            return unchanged;
        }
        let (Some(new_top), Some(old_top)) = (page_align(addr), page_align(old)) else {
            return unchanged;
        };
        if new_top == old_top {
            self.brk = addr;
            return Outcome::ok(addr, Vec::new());
        }
        if addr < old {
            let changes = self.unmap(pool, new_top, old_top);
            self.brk = addr;
            return Outcome::ok(addr, changes);
        }
        // Growing must leave a page free before the next mapping, as Linux
        // checks, so the heap never silently runs into another mapping.
        if new_top > USER_END
            || !self.is_free(old_top, (new_top + PAGE).min(USER_END))
            || !self.has_room_for_vmas()
            || !self.charge(pool, self.home_len(old_top, new_top), 0)
        {
            return unchanged;
        }
        let vma = Vma {
            start: old_top,
            end: new_top,
            prot: PROT_READ | PROT_WRITE,
            populated: false,
            accounted: true,
            file: None,
            on_fork: OnFork::Copy,
        };
        self.insert(vma);
        self.brk = addr;
        Outcome::ok(
            addr,
            vec![RangeChange {
                start: old_top,
                end: new_top,
                state: vma.state(),
                discard: false,
            }],
        )
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use lego_proto::FileHandle;

    fn source() -> FileSource {
        FileSource {
            storage: "127.0.0.1:9".parse().unwrap(),
            handle: FileHandle(vec![1, 2, 3]),
            caller: lego_proto::Voucher::default(),
        }
    }

    #[test]
    fn file_offsets_follow_splits_and_moves() {
        let mut pool = PagePool::new(1 << 30);
        let mut space = AddressSpace::new(0x10_0000);
        let flags = MAP_PRIVATE;
        let start = space
            .mmap_file(
                &mut pool,
                0,
                8 * PAGE,
                PROT_READ,
                flags,
                (source(), 4 * PAGE),
            )
            .result
            .unwrap();
        let offset_of = |space: &AddressSpace, addr: u64| space.file_page(addr).map(|(_, off)| off);
        assert_eq!(offset_of(&space, start), Some(4 * PAGE));
        assert_eq!(offset_of(&space, start + 3 * PAGE + 5), Some(7 * PAGE));
        // Splitting by mprotect keeps each page's file offset.
        assert!(space
            .mprotect(&mut pool, start + 2 * PAGE, PAGE, PROT_READ | PROT_WRITE)
            .result
            .is_ok());
        assert_eq!(offset_of(&space, start + 2 * PAGE), Some(6 * PAGE));
        assert_eq!(offset_of(&space, start + 5 * PAGE), Some(9 * PAGE));
        // Unmapping the front leaves the rest where it was in the file.
        assert!(space.munmap(&mut pool, start, PAGE).result.is_ok());
        assert_eq!(offset_of(&space, start + PAGE), Some(5 * PAGE));
        assert_eq!(offset_of(&space, start), None);
        // A move carries the offset of the moved part.
        let moved = space
            .mremap(
                &mut pool,
                start + 5 * PAGE,
                3 * PAGE,
                3 * PAGE,
                libc::MREMAP_MAYMOVE as u32 | libc::MREMAP_FIXED as u32,
                start + 64 * PAGE,
            )
            .result
            .unwrap();
        assert_eq!(offset_of(&space, moved), Some(9 * PAGE));
        assert_eq!(offset_of(&space, moved + 2 * PAGE), Some(11 * PAGE));
        // An unaligned file offset is refused.
        assert_eq!(
            space
                .mmap_file(&mut pool, 0, PAGE, PROT_READ, flags, (source(), 100))
                .result,
            Err(Errno::EINVAL)
        );
    }
}
