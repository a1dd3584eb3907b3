//! Types of the memory protocol: a processor's runtime asking its process's
//! home memory manager to change the address space, fetch pages and take
//! pages back.
//!
//! Every request names the process; the memory manager keeps no per-
//! connection state, so a runtime may reconnect (or be replaced) freely.

use crate::storage::{FileHandle, Voucher};
use crate::Message;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Cluster-wide process identifier, chosen by the processor that starts the
/// process (random, so processors need not coordinate).
pub type ProcessId = u64;

/// A memory manager holding a process's memory: its name and where it
/// serves.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemoryHolder {
    pub name: String,
    pub addr: SocketAddr,
}

/// Where a process's memory lives: the memory manager that serves its
/// runtime (the primary) and the one that holds a copy of all of it
/// (the backup, `None` without replicas or while none is live). The
/// primary applies every change and passes it on to the backup before it
/// answers, so the backup can take over with nothing acknowledged lost.
/// `epoch` counts the monitor's decisions about the process: each
/// failover makes a new one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemoryHome {
    pub primary: MemoryHolder,
    pub backup: Option<MemoryHolder>,
    pub epoch: u64,
}

/// The layout of one address space, as a primary sends it to start a
/// backup's copy: every VMA, the program break, the files mappings read
/// from, and the last change made (see `Message::Memory`'s `seq`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SpaceLayout {
    pub vmas: Vec<VmaLayout>,
    pub brk_start: u64,
    pub brk: u64,
    pub files: Vec<MappedFile>,
    /// The regions whose pages live on other memory managers, and where.
    pub spilled: Vec<SpilledRegion>,
    pub last_seq: u64,
    pub last_reply: Option<Box<Message>>,
}

/// One VMA of a [`SpaceLayout`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmaLayout {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub populated: bool,
    pub accounted: bool,
    /// Index into `SpaceLayout::files` and the file offset of `start`.
    pub file: Option<(u32, u64)>,
    /// 0: copied by fork, 1: `MADV_WIPEONFORK`, 2: `MADV_DONTFORK`.
    pub on_fork: u8,
}

/// A file that mappings of a [`SpaceLayout`] read from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub storage: SocketAddr,
    pub handle: FileHandle,
    /// The one-file voucher its pages are read with.
    pub caller: Voucher,
}

/// Size of a page on the wire and in every address space.
pub const PAGE_SIZE: usize = 4096;

/// Lowest address an application may map (Linux's default mmap_min_addr).
pub const USER_MIN: u64 = 0x1_0000;

/// End of every application address space (64 TiB). Below the x86-64
/// user limit on purpose: a processor's runtime reserves
/// `[USER_MIN, USER_END)` in its own process as the arena the application
/// lives in, and keeps its own code, heap and stacks above.
pub const USER_END: u64 = 0x4000_0000_0000;

/// The unit of placement of a process's memory over memory managers: a
/// process's address space is cut into regions this large (aligned), and
/// each region's written-back pages live on one memory manager. 64 MiB,
/// not LegoOS's 1 GiB: a program larger than one manager still spreads
/// over managers of a few hundred megabytes, a region's reservation wastes
/// at most this much of a manager's pool, and a region is copied elsewhere
/// (a drain, a new backup) in tens of milliseconds.
pub const REGION_SIZE: u64 = 64 << 20;

/// The region holding `addr`.
pub fn region_of(addr: u64) -> u64 {
    addr / REGION_SIZE
}

/// Most pages one `FetchPages` may ask for.
pub const MAX_FETCH_PAGES: u32 = 256;

/// Most pages one write-back batch may carry (bounded by the payload limit).
pub const MAX_WRITEBACK_PAGES: usize = crate::MAX_PAYLOAD_LEN / PAGE_SIZE;

/// Longest program image an `Exec` may carry.
pub const MAX_IMAGE_LEN: usize = crate::MAX_PAYLOAD_LEN;

/// An address-space call, with Linux's arguments (x86-64 values for prot,
/// flags and advice). The memory manager applies Linux's semantics for
/// anonymous private memory.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MemoryOp {
    Mmap {
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
    },
    /// A private mapping of a file on a storage manager (`MAP_PRIVATE`, or
    /// `MAP_SHARED` read-only, which cannot be told apart without writes):
    /// pages come from the file, read by the memory manager when first
    /// fetched, until a page is written back (copy on write).
    MmapFile {
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        storage: SocketAddr,
        handle: FileHandle,
        offset: u64,
        /// Whose read permission the mapping needs (checked when mapped)
        /// and whose credentials its pages are read with.
        caller: Box<Voucher>,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    Mprotect {
        addr: u64,
        len: u64,
        prot: u32,
    },
    Mremap {
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    },
    Brk {
        addr: u64,
    },
    Madvise {
        addr: u64,
        len: u64,
        advice: u32,
    },
}

impl MemoryOp {
    pub fn name(&self) -> &'static str {
        match self {
            MemoryOp::Mmap { .. } | MemoryOp::MmapFile { .. } => "mmap",
            MemoryOp::Munmap { .. } => "munmap",
            MemoryOp::Mprotect { .. } => "mprotect",
            MemoryOp::Mremap { .. } => "mremap",
            MemoryOp::Brk { .. } => "brk",
            MemoryOp::Madvise { .. } => "madvise",
        }
    }
}

/// The state of a range of an address space after an operation.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeState {
    /// Not mapped: any access faults.
    Unmapped,
    /// Mapped with these protections (PROT_* bits).
    Mapped {
        prot: u32,
        /// Pages may hold contents on the memory manager (a loaded program
        /// segment); otherwise every page not yet written back is zero and
        /// the processor fills it locally without asking.
        populated: bool,
    },
}

/// One range an operation changed, for the processor's mirror of the
/// address space.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeChange {
    pub start: u64,
    pub end: u64,
    pub state: RangeState,
    /// The memory manager dropped the contents of this range (munmap,
    /// MADV_DONTNEED, a move): the processor must drop its cached copies
    /// without writing them back.
    pub discard: bool,
}

/// A move of page contents made by `mremap`: the processor moves its cached
/// pages of `[from, from + len)` to `to` the same way.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeMove {
    pub from: u64,
    pub to: u64,
    pub len: u64,
}

/// Reply to a [`MemoryOp`] that changed something.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemoryOpDone {
    /// The syscall's return value (an address for mmap, mremap and brk).
    /// A call that fails after changing part of its range, as Linux's
    /// mprotect and madvise do on a hole, returns the negated errno here
    /// together with the changes it made.
    pub result: u64,
    /// Moves to apply before the changes.
    pub moves: Vec<RangeMove>,
    pub changes: Vec<RangeChange>,
    /// Regions the call spilled to other memory managers: the runtime
    /// sends their pages, and asks for them, there.
    pub spilled: Vec<SpilledRegion>,
    /// Spilled regions the call left without writable memory: they are
    /// the home's again (their holders gave them up).
    pub unspilled: Vec<u64>,
}

/// A region of an address space whose pages live on memory managers other
/// than the process's home: each of `holders` keeps every page of it the
/// runtime writes back (the runtime writes to all, reads from the first
/// that answers).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SpilledRegion {
    /// The region's number (its address over [`crate::REGION_SIZE`]).
    pub region: u64,
    pub holders: Vec<MemoryHolder>,
}

/// The address space an `Exec` built: what the processor needs to start the
/// program (auxiliary vector values) and to mirror the mappings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecImage {
    pub entry: u64,
    /// Address of the program headers in memory (AT_PHDR).
    pub phdr: u64,
    pub phnum: u16,
    pub phent: u16,
    /// Load bias of a position-independent program (0 for ET_EXEC).
    pub load_bias: u64,
    /// Initial program break.
    pub brk: u64,
    /// Top of the initial stack; the stack mapping ends here.
    pub stack_top: u64,
    /// Every mapping of the new address space.
    pub mappings: Vec<RangeChange>,
}

/// Counters of one process's ExCache, reported when it exits.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ExcacheStats {
    pub quota_bytes: u64,
    /// Most bytes resident at once.
    pub peak_resident_bytes: u64,
    /// Faults served by fetching a page from a memory manager.
    pub misses: u64,
    /// Faults served by zero-filling a never-written page locally.
    pub zero_fills: u64,
    /// Pages brought in ahead of a fault by readahead.
    pub prefetched: u64,
    pub evictions: u64,
    /// Dirty pages written back.
    pub writebacks: u64,
    /// Write-back batches sent.
    pub writeback_batches: u64,
    pub bytes_fetched: u64,
    pub bytes_written_back: u64,
    /// Miss latency histogram: bucket i counts misses that took
    /// [2^i, 2^(i+1)) nanoseconds.
    pub miss_latency_log2_ns: Vec<u64>,
}
