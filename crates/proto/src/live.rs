//! Live counters of a running process, shared by its runtime (writer)
//! and its processor (reader, for heartbeats and `lego ps`) through one
//! page of a memfd the processor creates and hands over as [`STATS_FD`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Where a new runtime finds the page.
pub const STATS_FD: RawFd = 6;

/// The page's layout; only atomics, so either side may read while the
/// other writes.
#[repr(C)]
struct Counters {
    resident_bytes: AtomicU64,
    misses: AtomicU64,
    /// The command line after an execve (empty until one): a sequence
    /// lock, odd while the runtime writes `command`.
    command_seq: AtomicU64,
    command_len: AtomicU64,
    command: [AtomicU8; COMMAND_LEN],
}

/// Longest command line the page carries (longer ones are cut).
pub const COMMAND_LEN: usize = 256;

const _: () = assert!(std::mem::size_of::<Counters>() <= PAGE);

const PAGE: usize = 4096;

/// One mapping of the shared page.
pub struct LiveStats {
    counters: *const Counters,
}

// Safety: the mapping is only accessed through atomics and lives as long
// as the value.
unsafe impl Send for LiveStats {}
unsafe impl Sync for LiveStats {}

impl LiveStats {
    /// Processor side: a fresh zeroed page and the descriptor to hand over.
    pub fn create() -> io::Result<(LiveStats, OwnedFd)> {
        // Safety: memfd_create takes a C string of ours.
        let fd = unsafe { libc::memfd_create(c"lego-stats".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: just created, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Safety: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((LiveStats::map(fd.as_raw_fd())?, fd))
    }

    /// Runtime side: maps the page handed over as `fd` (which may then be
    /// closed).
    pub fn map(fd: RawFd) -> io::Result<LiveStats> {
        // Safety: a new shared mapping of one page of a memfd; nothing
        // else is placed there.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(LiveStats {
            counters: ptr as *const Counters,
        })
    }

    /// In a forked process: a page of its own at the same address (the
    /// inherited mapping is the parent's), and its descriptor, to hand to
    /// the processor.
    pub fn renew(&self) -> io::Result<OwnedFd> {
        // Safety: memfd_create takes a C string of ours.
        let fd = unsafe { libc::memfd_create(c"lego-stats".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: just created, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Safety: ftruncate on our own descriptor; then a shared mapping
        // of it replaces exactly our own page (MAP_FIXED over the page
        // this value maps, which nothing else uses).
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), PAGE as libc::off_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            let ptr = libc::mmap(
                self.counters as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                0,
            );
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(fd)
    }

    fn counters(&self) -> &Counters {
        // Safety: the mapping is a page, larger than Counters, page-aligned
        // and alive as long as self.
        unsafe { &*self.counters }
    }

    pub fn publish(&self, resident_bytes: u64, misses: u64) {
        let c = self.counters();
        c.resident_bytes.store(resident_bytes, Ordering::Relaxed);
        c.misses.store(misses, Ordering::Relaxed);
    }

    /// Publishes the command line a process runs after an execve.
    pub fn set_command(&self, command: &str) {
        let c = self.counters();
        let bytes = &command.as_bytes()[..command.len().min(COMMAND_LEN)];
        c.command_seq.fetch_add(1, Ordering::AcqRel);
        for (slot, &b) in c.command.iter().zip(bytes) {
            slot.store(b, Ordering::Relaxed);
        }
        c.command_len.store(bytes.len() as u64, Ordering::Relaxed);
        c.command_seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The command line published by [`LiveStats::set_command`], if any
    /// (`None` too while the runtime is writing it).
    pub fn command(&self) -> Option<String> {
        let c = self.counters();
        let before = c.command_seq.load(Ordering::Acquire);
        if before == 0 || before % 2 == 1 {
            return None;
        }
        let len = (c.command_len.load(Ordering::Relaxed) as usize).min(COMMAND_LEN);
        let bytes: Vec<u8> = c.command[..len]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        (c.command_seq.load(Ordering::Acquire) == before)
            .then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// (resident bytes, misses)
    pub fn read(&self) -> (u64, u64) {
        let c = self.counters();
        (
            c.resident_bytes.load(Ordering::Relaxed),
            c.misses.load(Ordering::Relaxed),
        )
    }
}

impl Drop for LiveStats {
    fn drop(&mut self) {
        // Safety: unmaps the page this value mapped.
        unsafe { libc::munmap(self.counters as *mut libc::c_void, PAGE) };
    }
}
