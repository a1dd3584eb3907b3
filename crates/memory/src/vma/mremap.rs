//! mremap.
//!
//! Shrinking unmaps the tail, like Linux, which only needs the first page
//! mapped. Growing, and any move, needs the kept part of the old range
//! inside one VMA (`EFAULT` otherwise; Linux 6.17 also moves ranges that
//! span several VMAs, which is not done here). A move carries the page
//! contents: the memory manager moves its stored pages and reports a
//! [`RangeMove`] so the runtime moves its cached ones. A move replaces the
//! destination's contents the way a host `mremap(MREMAP_FIXED)` does, so the
//! moved part of the destination is reported with `discard: false`; a grown
//! tail that replaced mappings is reported with `discard: true`. Unlike
//! Linux, a failing `MREMAP_FIXED` call leaves the destination untouched:
//! every check happens before anything is unmapped.

use super::{coalesce, is_aligned, page_align, AddressSpace, Errno, Outcome, Vma};
use crate::pool::PagePool;
use lego_proto::{RangeChange, RangeMove, RangeState, USER_END, USER_MIN};

pub const MREMAP_MAYMOVE: u32 = libc::MREMAP_MAYMOVE as u32;
pub const MREMAP_FIXED: u32 = libc::MREMAP_FIXED as u32;
pub const MREMAP_DONTUNMAP: u32 = libc::MREMAP_DONTUNMAP as u32;

/// Where a move goes and how.
struct Move {
    vma: Vma,
    old: u64,
    old_len: u64,
    new_len: u64,
    /// `MREMAP_FIXED`'s address; else the allocator chooses.
    dest: Option<u64>,
    dont_unmap: bool,
}

impl AddressSpace {
    pub fn mremap(
        &mut self,
        pool: &mut PagePool,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Outcome {
        let may_move = flags & MREMAP_MAYMOVE != 0;
        let fixed = flags & MREMAP_FIXED != 0;
        let dont_unmap = flags & MREMAP_DONTUNMAP != 0;
        if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
            || (fixed && !may_move)
            || (dont_unmap && (!may_move || old_len != new_len))
            || !is_aligned(old_addr)
        {
            return Outcome::err(Errno::EINVAL);
        }
        let (Some(old_len), Some(new_len)) = (page_align(old_len), page_align(new_len)) else {
            return Outcome::err(Errno::EINVAL);
        };
        if new_len == 0 {
            return Outcome::err(Errno::EINVAL);
        }
        let Some(vma) = self.find(old_addr).copied() else {
            return Outcome::err(Errno::EFAULT);
        };
        // A zero old_len duplicates shared mappings; private ones refuse it.
        if old_len == 0 {
            return Outcome::err(Errno::EINVAL);
        }
        let Some(old_end) = old_addr.checked_add(old_len) else {
            return Outcome::err(Errno::EINVAL);
        };
        if !self.has_room_for_vmas() {
            return Outcome::err(Errno::ENOMEM);
        }
        if fixed || dont_unmap {
            let dest = if fixed {
                if !is_aligned(new_addr) || new_len > USER_END || new_addr > USER_END - new_len {
                    return Outcome::err(Errno::EINVAL);
                }
                if old_end > new_addr && new_addr + new_len > old_addr {
                    return Outcome::err(Errno::EINVAL);
                }
                if new_addr < USER_MIN {
                    return Outcome::err(Errno::EPERM);
                }
                Some(new_addr)
            } else {
                None
            };
            if old_addr + old_len.min(new_len) > vma.end {
                return Outcome::err(Errno::EFAULT);
            }
            return self.move_range(
                pool,
                Move {
                    vma,
                    old: old_addr,
                    old_len,
                    new_len,
                    dest,
                    dont_unmap,
                },
            );
        }
        if new_len <= old_len {
            let changes = self.unmap(pool, old_addr + new_len, old_end);
            return Outcome::ok(old_addr, changes);
        }
        if old_end > vma.end {
            return Outcome::err(Errno::EFAULT);
        }
        let grown_end = old_addr.checked_add(new_len).filter(|&e| e <= USER_END);
        if let Some(grown_end) = grown_end {
            if old_end == vma.end && self.is_free(old_end, grown_end) {
                let add = if vma.accounted {
                    self.home_len(old_end, grown_end)
                } else {
                    0
                };
                if !self.charge(pool, add, 0) {
                    return Outcome::err(Errno::ENOMEM);
                }
                let tail = Vma {
                    start: old_end,
                    end: grown_end,
                    file: vma.file_at(old_end),
                    ..vma
                };
                self.insert(tail);
                return Outcome::ok(
                    old_addr,
                    vec![RangeChange {
                        start: old_end,
                        end: grown_end,
                        state: tail.state(),
                        discard: false,
                    }],
                );
            }
        }
        if !may_move {
            return Outcome::err(Errno::ENOMEM);
        }
        self.move_range(
            pool,
            Move {
                vma,
                old: old_addr,
                old_len,
                new_len,
                dest: None,
                dont_unmap: false,
            },
        )
    }

    fn move_range(&mut self, pool: &mut PagePool, m: Move) -> Outcome {
        let kept = m.old_len.min(m.new_len);
        let old_end = m.old + m.old_len;
        let dest = match m.dest {
            Some(dest) => dest,
            None => match self.place(0, m.new_len, false) {
                Some(dest) => dest,
                None => return Outcome::err(Errno::ENOMEM),
            },
        };
        let dest_end = dest + m.new_len;
        // Pages of a spilled region live on its holder: moving them in or
        // out of one takes the service, which does not do it yet.
        if self.touches_spilled(m.old, old_end) || self.touches_spilled(dest, dest_end) {
            return Outcome::err(Errno::ENOMEM);
        }
        let add = if m.vma.accounted {
            self.home_len(dest, dest_end)
        } else {
            0
        };
        let mut remove = self.accounted_in(dest, dest_end);
        if !m.dont_unmap {
            remove += self.accounted_in(m.old, old_end);
        }
        if !self.charge(pool, add, remove) {
            return Outcome::err(Errno::ENOMEM);
        }
        let tail_replaced = !self.is_free(dest + kept, dest_end);
        self.drop_pages(pool, dest, dest_end);
        self.cut(dest, dest_end);

        let mut changes = Vec::new();
        if m.dont_unmap {
            // The old range stays mapped, emptied: it now reads as zeros.
            self.cut(m.old, old_end);
            let emptied = Vma {
                start: m.old,
                end: old_end,
                populated: false,
                file: None,
                ..m.vma
            };
            self.insert(emptied);
            changes.push(RangeChange {
                start: m.old,
                end: old_end,
                state: emptied.state(),
                discard: false,
            });
        } else {
            self.drop_pages(pool, m.old + kept, old_end);
            // Report the moved part and the dropped tail separately.
            self.split_at(m.old + kept);
            for piece in self.cut(m.old, old_end) {
                changes.push(RangeChange {
                    start: piece.start,
                    end: piece.end,
                    state: RangeState::Unmapped,
                    // The moved part's contents went to the destination.
                    discard: piece.start >= m.old + kept,
                });
            }
        }
        self.move_pages(m.old, dest, kept);
        let moved = Vma {
            start: dest,
            end: dest_end,
            file: m.vma.file_at(m.old),
            ..m.vma
        };
        self.insert(moved);
        changes.push(RangeChange {
            start: dest,
            end: dest + kept,
            state: moved.state(),
            discard: false,
        });
        if m.new_len > kept {
            changes.push(RangeChange {
                start: dest + kept,
                end: dest_end,
                state: moved.state(),
                discard: tail_replaced,
            });
        }
        Outcome {
            result: Ok(dest),
            moves: vec![RangeMove {
                from: m.old,
                to: dest,
                len: kept,
            }],
            changes: coalesce(changes),
        }
    }
}
