//! madvise.
//!
//! `MADV_DONTNEED`, `MADV_DONTNEED_LOCKED` and `MADV_FREE` drop the pages of
//! the range: they read as zero afterwards, in populated (loaded) mappings
//! too, since everything here is anonymous memory. `MADV_WIPEONFORK`
//! (private anonymous memory only, else `EINVAL`), `MADV_KEEPONFORK`,
//! `MADV_DONTFORK` and `MADV_DOFORK` set what a fork does with the range. Every other advice Linux
//! knows for anonymous memory is a hint with no effect on contents, and
//! succeeds without a change. `MADV_REMOVE` needs a shared file mapping and
//! fails with `EINVAL`; `MADV_HWPOISON` and `MADV_SOFT_OFFLINE` need
//! `CAP_SYS_ADMIN` and fail with `EPERM`; the guard-region advice (Linux
//! 6.13) and unknown values fail with `EINVAL`. As in Linux, holes in the
//! range do not stop the advice on the mapped parts, and the call then
//! reports `ENOMEM`.

use super::{coalesce, is_aligned, page_align, AddressSpace, Errno, OnFork, Outcome};
use crate::pool::PagePool;
use lego_proto::RangeChange;

/// What one advice value does here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advice {
    /// Drops the pages of the range.
    Drop,
    /// Sets what a fork does with the range.
    OnFork(OnFork),
    /// Sets it back to a copy, where it was this (`MADV_DOFORK` undoes
    /// only `MADV_DONTFORK`, `MADV_KEEPONFORK` only `MADV_WIPEONFORK`).
    Undo(OnFork),
    /// Accepted, nothing to do.
    Hint,
    Refuse(Errno),
}

fn classify(advice: u32) -> Advice {
    let Ok(advice) = i32::try_from(advice) else {
        return Advice::Refuse(Errno::EINVAL);
    };
    match advice {
        libc::MADV_DONTNEED | libc::MADV_DONTNEED_LOCKED | libc::MADV_FREE => Advice::Drop,
        libc::MADV_NORMAL
        | libc::MADV_RANDOM
        | libc::MADV_SEQUENTIAL
        | libc::MADV_WILLNEED
        | libc::MADV_MERGEABLE
        | libc::MADV_UNMERGEABLE
        | libc::MADV_HUGEPAGE
        | libc::MADV_NOHUGEPAGE
        | libc::MADV_DONTDUMP
        | libc::MADV_DODUMP
        | libc::MADV_COLD
        | libc::MADV_PAGEOUT
        | libc::MADV_POPULATE_READ
        | libc::MADV_POPULATE_WRITE
        | libc::MADV_COLLAPSE => Advice::Hint,
        libc::MADV_DONTFORK => Advice::OnFork(OnFork::Skip),
        libc::MADV_DOFORK => Advice::Undo(OnFork::Skip),
        libc::MADV_WIPEONFORK => Advice::OnFork(OnFork::Wipe),
        libc::MADV_KEEPONFORK => Advice::Undo(OnFork::Wipe),
        libc::MADV_HWPOISON | libc::MADV_SOFT_OFFLINE => Advice::Refuse(Errno::EPERM),
        _ => Advice::Refuse(Errno::EINVAL),
    }
}

impl AddressSpace {
    pub fn madvise(&mut self, pool: &mut PagePool, addr: u64, len: u64, advice: u32) -> Outcome {
        let advice = classify(advice);
        // Linux validates the advice before the range.
        if let Advice::Refuse(errno) = advice {
            return Outcome::err(errno);
        }
        if !is_aligned(addr) {
            return Outcome::err(Errno::EINVAL);
        }
        let Some(end) = page_align(len).and_then(|l| addr.checked_add(l)) else {
            return Outcome::err(Errno::EINVAL);
        };
        if end == addr {
            return Outcome::ok(0, Vec::new());
        }
        let pieces: Vec<_> = self
            .overlapping(addr, end)
            .iter()
            .map(|v| v.clipped(addr, end))
            .collect();
        let mapped: u64 = pieces.iter().map(|v| v.end - v.start).sum();
        let mut changes = Vec::new();
        if let Advice::OnFork(OnFork::Wipe) = advice {
            // Linux allows it on private anonymous memory only.
            if pieces.iter().any(|v| v.file.is_some() || v.populated) {
                return Outcome::err(Errno::EINVAL);
            }
        }
        if let Advice::OnFork(policy) | Advice::Undo(policy) = advice {
            for piece in &pieces {
                self.split_at(piece.start);
                self.split_at(piece.end);
                if let Some(vma) = self.vmas.get_mut(&piece.start) {
                    vma.on_fork = match advice {
                        Advice::OnFork(_) => policy,
                        _ if vma.on_fork == policy => OnFork::Copy,
                        _ => vma.on_fork,
                    };
                }
            }
            self.merge_around(addr, end);
        }
        if advice == Advice::Drop {
            for piece in &pieces {
                self.drop_pages(pool, piece.start, piece.end);
                changes.push(RangeChange {
                    start: piece.start,
                    end: piece.end,
                    state: piece.state(),
                    discard: true,
                });
            }
        }
        let changes = coalesce(changes);
        if mapped < end - addr {
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
