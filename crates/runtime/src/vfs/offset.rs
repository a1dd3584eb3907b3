//! File offsets shared by processes, as Linux shares an open file
//! description's offset between a parent and the children it forks (a
//! shell and the commands whose output it redirects to one file).
//!
//! Offsets live in one shared anonymous mapping the first runtime makes;
//! every process forked from it (a host fork of its runtime) maps the same
//! pages, so a slot handed out before a fork is the same slot on both
//! sides. A slot is an offset and a lock, held while a read or write at the
//! offset runs (as Linux's `f_pos_lock`); a holder that died (killed in the
//! middle of a write) is noticed and its lock taken over.
//!
//! Slots are handed out from a shared counter and not reused; when the
//! mapping is full, new opens get an offset of their own (shared by their
//! duplicates, not across a fork).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// One offset and its lock (0: free, else the holder's host tid; the
/// holder's host pid beside it, 0 until written).
#[repr(C)]
pub struct Slot {
    lock: AtomicU32,
    holder_pid: AtomicU32,
    value: AtomicU64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            lock: AtomicU32::new(0),
            holder_pid: AtomicU32::new(0),
            value: AtomicU64::new(0),
        }
    }
}

/// Slots in the shared mapping (16 MiB of address space; only the pages
/// used take memory). Slot 0 is the allocation counter.
const SLOTS: usize = 1 << 20;

struct Region {
    slots: *const Slot,
}

// Safety: the region is a mapping that lives as long as the process and is
// only accessed through atomics.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

fn region() -> Option<&'static Region> {
    static REGION: OnceLock<Option<Region>> = OnceLock::new();
    REGION
        .get_or_init(|| {
            // Safety: a new shared anonymous mapping, placed by the kernel
            // (above the arena, which is reserved); zero-filled.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    SLOTS * std::mem::size_of::<Slot>(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            (ptr != libc::MAP_FAILED).then_some(Region {
                slots: ptr as *const Slot,
            })
        })
        .as_ref()
}

/// Makes the shared mapping now, before any fork, so every process of the
/// tree shares it.
pub fn init() {
    let _ = region();
}

/// A file's offset: a shared slot, or (with the mapping full) its own.
pub enum Offset {
    Shared(&'static Slot),
    Own(Box<Slot>),
}

impl Offset {
    pub fn new() -> Offset {
        if let Some(region) = region() {
            // Safety: slot 0 lies in the mapping; its value is the counter.
            let counter = unsafe { &(*region.slots).value };
            let index = counter.fetch_add(1, Ordering::Relaxed) as usize + 1;
            if index < SLOTS {
                // Safety: `index` is inside the mapping, and handed out once.
                return Offset::Shared(unsafe { &*region.slots.add(index) });
            }
        }
        Offset::Own(Box::new(Slot::new()))
    }

    fn slot(&self) -> &Slot {
        match self {
            Offset::Shared(slot) => slot,
            Offset::Own(slot) => slot,
        }
    }

    /// The offset's value now, without taking it (for a state taken while
    /// no call of this process runs).
    pub fn peek(&self) -> u64 {
        self.slot().value.load(Ordering::Relaxed)
    }

    /// Takes the offset for a read or write at it.
    pub fn lock(&self) -> OffsetGuard<'_> {
        let slot = self.slot();
        // Safety: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        let mut spins = 0u32;
        loop {
            match slot
                .lock
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(holder) => {
                    spins += 1;
                    if spins < 100 {
                        std::hint::spin_loop();
                        continue;
                    }
                    if holder == me || !alive(slot.holder_pid.load(Ordering::Relaxed), holder) {
                        // Its holder ended holding it (or this thread's
                        // own call was cut short): take it over.
                        if slot
                            .lock
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                        {
                            break;
                        }
                        continue;
                    }
                    wait(&slot.lock, holder);
                }
            }
        }
        // Safety: getpid has no preconditions.
        slot.holder_pid
            .store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
        OffsetGuard {
            slot,
            value: slot.value.load(Ordering::Relaxed),
        }
    }
}

impl Default for Offset {
    fn default() -> Offset {
        Offset::new()
    }
}

/// Whether thread `tid` of host process `pid` still runs.
fn alive(pid: u32, tid: u32) -> bool {
    if pid == 0 {
        // Taken a moment ago (or its holder died just after taking it):
        // whether the thread exists at all decides.
        return std::path::Path::new(&format!("/proc/{tid}")).exists();
    }
    // Safety: signal 0 only checks that the target exists.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, pid as i32, tid as i32, 0) };
    ret == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Sleeps until the lock word changes from `holder` (or a short while
/// passes, to look at the holder again).
fn wait(word: &AtomicU32, holder: u32) {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: Duration::from_millis(50).as_nanos() as i64,
    };
    // Safety: FUTEX_WAIT (shared: the word may be in a mapping shared with
    // other processes) reads the word and sleeps; no memory is written.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            holder,
            &timeout as *const libc::timespec,
        )
    };
}

/// A held offset; its value is stored back and the lock released on drop.
pub struct OffsetGuard<'a> {
    slot: &'a Slot,
    value: u64,
}

impl Deref for OffsetGuard<'_> {
    type Target = u64;
    fn deref(&self) -> &u64 {
        &self.value
    }
}

impl DerefMut for OffsetGuard<'_> {
    fn deref_mut(&mut self) -> &mut u64 {
        &mut self.value
    }
}

impl Drop for OffsetGuard<'_> {
    fn drop(&mut self) {
        self.slot.value.store(self.value, Ordering::Relaxed);
        self.slot.holder_pid.store(0, Ordering::Relaxed);
        self.slot.lock.store(0, Ordering::Release);
        // Safety: FUTEX_WAKE on the lock word; wakes waiters in any process.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.slot.lock.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_moves_the_parents_offset() {
        init();
        let offset = Offset::new();
        *offset.lock() = 10;
        // Safety: the child only touches the shared slot and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            *offset.lock() += 5;
            // Safety: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // Safety: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(*offset.lock(), 15);
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over() {
        init();
        let offset = Offset::new();
        // Safety: the child takes the lock and dies holding it.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let guard = offset.lock();
            std::mem::forget(guard);
            // Safety: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // Safety: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        *offset.lock() = 3;
        assert_eq!(*offset.lock(), 3);
    }
}
