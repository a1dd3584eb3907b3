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
