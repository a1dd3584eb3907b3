//! mprotect.
//!
//! Linux's partial behaviour is kept: the range is walked from its start;
//! an unmapped start fails with `ENOMEM` and changes nothing, and a hole met
//! later fails with `ENOMEM` after the VMAs before it took the new
//! protection. The commit charge for the parts becoming writable is taken
//! for the whole walk at once, so when it does not fit nothing changes.
//! `PROT_GROWSDOWN`/`PROT_GROWSUP` fail with `EINVAL`: no VMA here grows.

use super::{coalesce, is_aligned, page_align, AddressSpace, Errno, Outcome, PROT_ALL, PROT_WRITE};
use crate::pool::PagePool;
use lego_proto::RangeChange;

impl AddressSpace {
    pub fn mprotect(&mut self, pool: &mut PagePool, addr: u64, len: u64, prot: u32) -> Outcome {
        if !is_aligned(addr) {
            return Outcome::err(Errno::EINVAL);
        }
        if len == 0 {
            return Outcome::ok(0, Vec::new());
        }
        let Some(end) = page_align(len).and_then(|l| addr.checked_add(l)) else {
            return Outcome::err(Errno::ENOMEM);
        };
        if prot & !PROT_ALL != 0 {
            return Outcome::err(Errno::EINVAL);
        }
        // How far the range is mapped without a hole.
        let mut reached = addr;
        for v in self.overlapping(addr, end) {
            if v.start > reached {
                break;
            }
            reached = v.end.min(end);
        }
        if reached == addr {
            return Outcome::err(Errno::ENOMEM);
        }
        if !self.has_room_for_vmas() {
            return Outcome::err(Errno::ENOMEM);
        }
        let pieces: Vec<_> = self
            .overlapping(addr, reached)
            .iter()
            .map(|v| v.clipped(addr, reached))
            .collect();
        let charge: u64 = if prot & PROT_WRITE != 0 {
            pieces
                .iter()
                .filter(|v| !v.accounted)
                .map(|v| self.home_len(v.start, v.end))
                .sum()
        } else {
            0
        };
        if !self.charge(pool, charge, 0) {
            return Outcome::err(Errno::ENOMEM);
        }
        let mut changes = Vec::new();
        for piece in pieces {
            if piece.prot == prot && (piece.accounted || prot & PROT_WRITE == 0) {
                continue;
            }
            self.cut(piece.start, piece.end);
            let updated = super::Vma {
                prot,
                accounted: piece.accounted || prot & PROT_WRITE != 0,
                ..piece
            };
            self.vmas.insert(updated.start, updated);
            if piece.prot != prot {
                changes.push(RangeChange {
                    start: piece.start,
                    end: piece.end,
                    state: updated.state(),
                    discard: false,
                });
            }
        }
        self.merge_around(addr, reached);
        let changes = coalesce(changes);
        if reached < end {
            Outcome {
                result: Err(Errno::ENOMEM),
                moves: Vec::new(),
                changes,
            }
        } else {
            Outcome::ok(0, changes)
        }
    }
}
