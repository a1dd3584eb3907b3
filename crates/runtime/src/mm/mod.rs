//! The memory subsystem: the arena (the application's address space in
//! this process, [`arena`]), the ExCache over it ([`excache`]), the fault
//! threads that serve its misses ([`fault`]), the home memory manager's
//! client ([`remote`]), and [`apply`], which mirrors what the memory
//! manager did to the address space.
//!
//! May call: `host`. Invariant: nothing here touches possibly
//! non-resident application memory while holding the ExCache lock.

pub mod arena;
pub mod excache;
pub mod fault;
pub mod ranges;
pub mod remote;
pub mod spilled;

use arena::Arena;
use excache::{ExCache, LayoutChange};
use lego_proto::{MemoryOpDone, RangeState};
use remote::RemoteMemory;

/// The process's memory as this processor holds it.
pub struct Memory {
    pub arena: Arena,
    pub cache: ExCache,
    pub remote: RemoteMemory,
}

/// Whether a thread is telling the home about lost region holders.
pub(crate) static REPAIRING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Has the home give the spilled regions that lost a holder a new one:
/// on a thread of its own, which waits for the faults being served,
/// settles the write-backs in flight and keeps faults waiting while the
/// home copies (the pause a holder's loss costs).
pub fn repair_regions(mm: &'static Memory) {
    use std::sync::atomic::Ordering;
    if REPAIRING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("regions-repair".into())
        .spawn(move || {
            loop {
                let change = mm.cache.change_layout();
                if let Err(e) = mm.cache.settle() {
                    tracing::warn!("before telling the home of lost region holders: {e}");
                }
                let started = std::time::Instant::now();
                let told = mm.remote.report_lost();
                drop(change);
                match told {
                    Ok(true) => tracing::warn!(
                        "the home replaced lost holders of spilled regions; faults waited {:?}",
                        started.elapsed()
                    ),
                    Ok(false) => {
                        REPAIRING.store(false, Ordering::Release);
                        // A loss reported after the last look starts again.
                        if mm.remote.spilled().has_lost() {
                            repair_regions(mm);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("cannot tell the home of lost region holders: {e}");
                        REPAIRING.store(false, Ordering::Release);
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start telling the home of lost region holders: {e}");
        REPAIRING.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Memory {
    /// Makes the runtime's view match what the memory manager did.
    pub fn apply(&self, change: &LayoutChange, done: &MemoryOpDone) -> Result<(), String> {
        for m in &done.moves {
            self.cache
                .relocate(change, &self.arena, m.from, m.to, m.len)
                .map_err(|e| format!("moving cached pages {:#x}->{:#x}: {e}", m.from, m.to))?;
        }
        for c in &done.changes {
            // The memory manager changes a shared host mapping's range only to
            // unmap or replace it (protection and advice on one go to the host,
            // see `split_call`): the arena takes the range back first.
            if self.arena.touches_host_shared(c.start, c.end) {
                self.arena
                    .restore_private(c.start, c.end)
                    .map_err(|e| format!("{:#x}-{:#x}: {e}", c.start, c.end))?;
            }
            let (mapping, populated) = match c.state {
                RangeState::Unmapped => (None, false),
                RangeState::Mapped { prot, populated } => (Some(prot), populated),
            };
            if mapping == Some(libc::PROT_NONE as u32) && !c.discard {
                // Kept but inaccessible: the runtime could not read its written
                // pages once the host protection follows, so they go back now.
                self.cache
                    .write_back_and_drop(change, &self.arena, &self.remote, c.start, c.end)
                    .map_err(|e| format!("writing {:#x}-{:#x} back: {e}", c.start, c.end))?;
            }
            if c.discard {
                self.cache
                    .discard(change, &self.arena, c.start, c.end)
                    .map_err(|e| format!("dropping {:#x}-{:#x}: {e}", c.start, c.end))?;
            }
            self.arena
                .mirror(c.start, c.end, mapping)
                .map_err(|e| format!("{:#x}-{:#x}: {e}", c.start, c.end))?;
            self.cache.set_populated(change, c.start, c.end, populated);
        }
        Ok(())
    }
}
