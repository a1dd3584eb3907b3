//! Live counters of a running process, shared by its runtime (writer)
//! and its processor (reader, for heartbeats and `lego ps`) through one
//! page of a memfd the processor creates and hands over as [`STATS_FD`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a new runtime finds the page.
pub const STATS_FD: RawFd = 6;

/// The page's layout; only atomics, so either side may read while the
/// other writes.
#[repr(C)]
struct Counters {
    resident_bytes: AtomicU64,
    misses: AtomicU64,
}

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
