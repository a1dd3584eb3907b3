//! The memory family: every call goes to the home memory manager, which
//! owns the address space; the reply says which ranges changed, and the
//! runtime mirrors that in host protections and in the ExCache.

use super::Call;
use crate::{fatal, Runtime};
use lego_proto::{MemoryOp, MemoryOpDone, RangeState};

const PROT_NONE: u32 = 0;

/// Makes the runtime's view match what the memory manager did.
pub fn apply(rt: &Runtime, done: &MemoryOpDone) -> Result<(), String> {
    for m in &done.moves {
        rt.cache
            .relocate(&rt.arena, m.from, m.to, m.len)
            .map_err(|e| format!("moving cached pages {:#x}->{:#x}: {e}", m.from, m.to))?;
    }
    for c in &done.changes {
        let (prot, populated) = match c.state {
            RangeState::Unmapped => (PROT_NONE, false),
            RangeState::Mapped { prot, populated } => (prot, populated),
        };
        if c.discard {
            rt.cache
                .discard(&rt.arena, c.start, c.end)
                .map_err(|e| format!("dropping {:#x}-{:#x}: {e}", c.start, c.end))?;
        }
        rt.arena
            .protect(c.start, c.end, prot)
            .map_err(|e| format!("{:#x}-{:#x}: {e}", c.start, c.end))?;
        rt.cache.set_populated(c.start, c.end, populated);
    }
    Ok(())
}

/// Sends one address-space call and mirrors its effect.
fn memory_call(rt: &Runtime, op: MemoryOp) -> i64 {
    let name = op.name();
    match rt.remote.memory_op(op) {
        Err(lost) => fatal(&lost),
        Ok(Err(errno)) => -(errno as i64),
        Ok(Ok(done)) => {
            if let Err(e) = apply(rt, &done) {
                fatal(&format!("cannot apply {name} to the arena: {e}"));
            }
            done.result as i64
        }
    }
}

pub fn mmap(rt: &Runtime, c: &Call) -> i64 {
    let [addr, len, prot, flags, _fd, _offset] = c.args;
    if flags & libc::MAP_ANONYMOUS as u64 == 0 {
        return -(libc::ENODEV as i64);
    }
    memory_call(
        rt,
        MemoryOp::Mmap {
            addr,
            len,
            prot: prot as u32,
            flags: flags as u32,
        },
    )
}

pub fn munmap(rt: &Runtime, c: &Call) -> i64 {
    memory_call(
        rt,
        MemoryOp::Munmap {
            addr: c.args[0],
            len: c.args[1],
        },
    )
}

pub fn mprotect(rt: &Runtime, c: &Call) -> i64 {
    memory_call(
        rt,
        MemoryOp::Mprotect {
            addr: c.args[0],
            len: c.args[1],
            prot: c.args[2] as u32,
        },
    )
}

pub fn pkey_mprotect(rt: &Runtime, c: &Call) -> i64 {
    if c.args[3] as i64 != -1 {
        return -(libc::EINVAL as i64);
    }
    mprotect(rt, c)
}

pub fn mremap(rt: &Runtime, c: &Call) -> i64 {
    memory_call(
        rt,
        MemoryOp::Mremap {
            old_addr: c.args[0],
            old_len: c.args[1],
            new_len: c.args[2],
            flags: c.args[3] as u32,
            new_addr: c.args[4],
        },
    )
}

pub fn brk(rt: &Runtime, c: &Call) -> i64 {
    memory_call(rt, MemoryOp::Brk { addr: c.args[0] })
}

pub fn madvise(rt: &Runtime, c: &Call) -> i64 {
    memory_call(
        rt,
        MemoryOp::Madvise {
            addr: c.args[0],
            len: c.args[1],
            advice: c.args[2] as u32,
        },
    )
}

pub fn accept_noop(_rt: &Runtime, _c: &Call) -> i64 {
    0
}
