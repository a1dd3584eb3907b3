//! The arena: the application's whole address space, `[USER_MIN, USER_END)`
//! of the runtime's own process, reserved at startup and registered with
//! userfaultfd. Host protections mirror the memory manager's mappings
//! (unmapped ranges stay PROT_NONE, so a stray access faults as on Linux);
//! a touch of an accessible page that is not resident is an ExCache miss.

use crate::host::uffd::{PageRegion, Pagemap, Userfaultfd};
use crate::mm::ranges::RangeSet;
use lego_proto::{USER_END, USER_MIN};
use std::io;
use std::sync::Mutex;

pub const PAGE: u64 = 4096;

/// Pages the staging area holds: more than an eviction batch takes.
pub const STAGING_PAGES: u64 = 4096;

/// The arena's tables, held across a fork.
pub struct ArenaHold<'a> {
    _mapped: std::sync::MutexGuard<'a, RangeSet>,
    _host_shared: std::sync::MutexGuard<'a, RangeSet>,
}

pub struct Arena {
    pub uffd: Userfaultfd,
    pub pagemap: Pagemap,
    /// Where evicted pages are moved while several threads run (see
    /// [`Arena::stage_page`]); registered with the same userfaultfd, outside
    /// the arena; 0 when the kernel cannot move pages.
    staging: u64,
    /// The ranges the memory manager has mapped, whatever their
    /// protection (the host cannot tell a PROT_NONE mapping from none).
    mapped: Mutex<RangeSet>,
    /// Shared mappings of host objects (MAP_SHARED of shared memory, a
    /// memfd, a host file, or anonymous): mapped straight from the host
    /// kernel, outside the userfaultfd and the ExCache, so that processes
    /// forked from one another share them. The memory manager holds the
    /// range as a reservation.
    host_shared: Mutex<RangeSet>,
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

impl Arena {
    /// Reserves the arena and registers it. Fails if anything is already
    /// mapped there (the runtime's own mappings live above `USER_END`).
    pub fn reserve() -> io::Result<Arena> {
        let len = (USER_END - USER_MIN) as usize;
        // Safety: a fixed-address reservation that refuses to replace
        // anything (MAP_FIXED_NOREPLACE); no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                USER_MIN as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot reserve the application arena {USER_MIN:#x}-{USER_END:#x}: {e}"),
            ));
        }
        if addr as u64 != USER_MIN {
            return Err(io::Error::other(format!(
                "the kernel placed the arena at {addr:p}, not {USER_MIN:#x}"
            )));
        }
        // The ExCache manages 4 KiB pages: a transparent huge page would
        // be split again on every eviction inside it (measured: p99 miss
        // latency 8 ms instead of 1 ms on a sequential scan).
        // Safety: advice on the reservation just made; no data is touched.
        unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
        let uffd = Userfaultfd::open()?;
        uffd.register(USER_MIN, USER_END - USER_MIN).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the arena with userfaultfd: {e}"),
            )
        })?;
        let staging = if uffd.can_move() {
            Arena::reserve_staging(&uffd)?
        } else {
            0
        };
        Ok(Arena {
            uffd: uffd.lifted()?,
            pagemap: Pagemap::open()?.lifted()?,
            staging,
            mapped: Mutex::new(RangeSet::default()),
            host_shared: Mutex::new(RangeSet::default()),
        })
    }

    fn reserve_staging(uffd: &Userfaultfd) -> io::Result<u64> {
        let len = STAGING_PAGES as usize * PAGE as usize;
        // Safety: a new private mapping of our own, placed by the kernel.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Safety: advice on the mapping just made.
        unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
        uffd.register(addr as u64, len as u64)
            .map_err(|e| io::Error::new(e.kind(), format!("registering the staging area: {e}")))?;
        Ok(addr as u64)
    }

    /// A forked process's arena: its parent's userfaultfd registration and
    /// page-table view are not its own, and the pages it inherited are its
    /// parent's cache. Registers the arena (and the staging area) with a
    /// new userfaultfd under the same descriptor number, reopens the page
    /// table, and empties the arena, so that every page comes from the
    /// memory manager's copy.
    pub fn renew_after_fork(&self) -> io::Result<()> {
        let uffd = Userfaultfd::open()?;
        // Shared host mappings stay as they are: shared with the parent.
        for (start, end) in self.private_parts(USER_MIN, USER_END) {
            uffd.register(start, end - start).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("registering a forked process's arena with userfaultfd: {e}"),
                )
            })?;
            self.drop_pages(start, end)?;
        }
        if self.staging != 0 {
            let len = STAGING_PAGES * PAGE;
            uffd.register(self.staging, len)?;
            self.unstage(len)?;
        }
        self.uffd.replace_with(uffd)?;
        self.pagemap.reopen()
    }

    /// Holds the arena's tables across a fork (dropping the value
    /// releases them).
    pub fn hold_for_fork(&self) -> ArenaHold<'_> {
        ArenaHold {
            _mapped: self.mapped.lock().unwrap_or_else(|p| p.into_inner()),
            _host_shared: self.host_shared(),
        }
    }

    fn host_shared(&self) -> std::sync::MutexGuard<'_, RangeSet> {
        self.host_shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The parts of `[start, end)` that are not shared host mappings.
    pub fn private_parts(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let shared = self.host_shared().within(start, end);
        let mut parts = Vec::new();
        let mut at = start;
        for (s, e) in shared {
            if s > at {
                parts.push((at, s));
            }
            at = e;
        }
        if at < end {
            parts.push((at, end));
        }
        parts
    }

    /// Whether `[start, end)` lies wholly in shared host mappings.
    pub fn is_host_shared(&self, start: u64, end: u64) -> bool {
        start < end && self.private_parts(start, end).is_empty()
    }

    /// Whether `[start, end)` meets a shared host mapping.
    pub fn touches_host_shared(&self, start: u64, end: u64) -> bool {
        !self.host_shared_parts(start, end).is_empty()
    }

    /// The parts of `[start, end)` that are shared host mappings.
    pub fn host_shared_parts(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.host_shared().within(start, end)
    }

    /// Maps `len` bytes of the host object `fd` (or anonymous shared
    /// memory, with MAP_ANONYMOUS in `flags`) at `start`, over the
    /// reservation the memory manager made there.
    pub fn map_host_shared(
        &self,
        start: u64,
        len: u64,
        prot: i32,
        flags: i32,
        fd: i32,
        offset: u64,
    ) -> io::Result<()> {
        debug_assert!(USER_MIN <= start && start + len <= USER_END);
        let flags = (flags
            & (libc::MAP_SHARED
                | libc::MAP_SHARED_VALIDATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_POPULATE
                | libc::MAP_NORESERVE
                | libc::MAP_LOCKED))
            | libc::MAP_FIXED;
        // Safety: the range is inside the arena and reserved for this
        // mapping by the memory manager; MAP_FIXED replaces only it.
        let ptr = unsafe {
            libc::mmap(
                start as *mut _,
                len as usize,
                prot,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // Whatever the failed call left there, the reservation returns.
            self.host_shared().insert(start, start + len);
            let _ = self.restore_private(start, start + len);
            return Err(e);
        }
        self.host_shared().insert(start, start + len);
        Ok(())
    }

    /// Turns the shared host mappings in `[start, end)` back into the
    /// arena's own PROT_NONE reservation, registered with the userfaultfd
    /// (the memory manager unmapped them, or mapped something new there).
    pub fn restore_private(&self, start: u64, end: u64) -> io::Result<()> {
        let shared = self.host_shared().within(start, end);
        for (s, e) in shared {
            let len = (e - s) as usize;
            // Safety: replaces a shared host mapping inside the arena with
            // a fresh reservation, as `reserve` made.
            let ptr = unsafe {
                libc::mmap(
                    s as *mut _,
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            // Safety: advice on the reservation just made.
            unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
            self.uffd.register(s, e - s)?;
            self.host_shared().remove(s, e);
        }
        Ok(())
    }

    /// Whether pages can be moved out atomically (see [`Arena::stage_page`]).
    pub fn can_stage(&self) -> bool {
        self.staging != 0
    }

    /// Moves the resident page at `page` out of the arena to staging
    /// offset `at` (bytes) and returns where it now is, or `None` when the
    /// kernel cannot move it: it moves only between writable mappings of
    /// the same protection, so a page of a read-only mapping stays (and
    /// nobody can write it anyway). From the move on, a touch of `page` —
    /// by any thread, or by the kernel for one — faults as missing and
    /// waits for the fault thread, so nothing written can be lost while
    /// the page is written back.
    pub fn stage_page(&self, page: u64, at: u64) -> io::Result<Option<u64>> {
        if self.staging == 0 || at + PAGE > STAGING_PAGES * PAGE {
            return Err(io::Error::other("the staging area cannot take this batch"));
        }
        let dst = self.staging + at;
        match self.move_out(dst, page) {
            Ok(()) => return Ok(Some(dst)),
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
            Err(_) => {}
        }
        // Perhaps an executable writable mapping: the staging slice must
        // match it. The slice goes back to read-write either way.
        let set = |prot| {
            // Safety: the staging slice is ours and holds nothing now.
            check(
                unsafe { libc::mprotect(dst as *mut _, PAGE as usize, prot) },
                "mprotect of the staging area",
            )
        };
        set(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)?;
        let moved = self.move_out(dst, page);
        set(libc::PROT_READ | libc::PROT_WRITE)?;
        match moved {
            Ok(()) => Ok(Some(dst)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("moving {page:#x} out of the arena: {e}"),
            )),
        }
    }

    /// Moves resident `page` to `dst` in the staging area. A page still
    /// shared with a forked child's copy of the process (after a host fork
    /// a page is not the parent's alone until written) cannot be moved: a
    /// write that changes nothing makes it this process's own again.
    fn move_out(&self, dst: u64, page: u64) -> io::Result<()> {
        match self.uffd.move_pages(dst, page, PAGE) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Safety: `page` is resident (a victim the ExCache holds)
                // in a writable mapping (the kernel checked the protections
                // equal the staging slice's, which is writable) and
                // page-aligned; an atomic add of zero leaves the contents as
                // any concurrent writer left them.
                unsafe {
                    (*(page as *const std::sync::atomic::AtomicU64))
                        .fetch_add(0, std::sync::atomic::Ordering::SeqCst)
                };
                self.uffd.move_pages(dst, page, PAGE)
            }
            other => other,
        }
    }

    /// Empties the first `len` bytes of the staging area.
    pub fn unstage(&self, len: u64) -> io::Result<()> {
        // Safety: MADV_DONTNEED on our own staging area only.
        check(
            unsafe { libc::madvise(self.staging as *mut _, len as usize, libc::MADV_DONTNEED) },
            "madvise(MADV_DONTNEED) of the staging area",
        )
    }

    /// Mirrors the memory manager's `[start, end)`: mapped with `Some`
    /// protection (PROT_* bits), or unmapped (`None`, PROT_NONE on the host).
    pub fn mirror(&self, start: u64, end: u64, mapping: Option<u32>) -> io::Result<()> {
        debug_assert!(USER_MIN <= start && start <= end && end <= USER_END);
        if mapping.is_none() {
            self.restore_private(start, end)?;
        }
        {
            let mut mapped = self.mapped.lock().unwrap_or_else(|p| p.into_inner());
            match mapping {
                Some(_) => mapped.insert(start, end),
                None => mapped.remove(start, end),
            }
        }
        let prot =
            mapping.unwrap_or(0) as i32 & (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC);
        // Safety: the range lies inside the arena, which this runtime owns
        // and which holds no runtime data.
        check(
            unsafe { libc::mprotect(start as *mut _, (end - start) as usize, prot) },
            "mprotect in the arena",
        )
    }

    /// The ranges the memory manager has mapped, and the host-shared ones.
    pub fn layout(&self) -> lego_proto::state::MemoryLayout {
        let all = |set: &Mutex<RangeSet>| {
            set.lock()
                .unwrap_or_else(|p| p.into_inner())
                .within(0, u64::MAX)
        };
        lego_proto::state::MemoryLayout {
            mapped: all(&self.mapped),
            host_shared: all(&self.host_shared),
        }
    }

    /// Whether `addr` lies in a mapping of the memory manager's.
    pub fn is_mapped(&self, addr: u64) -> bool {
        self.mapped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(addr)
    }

    /// Drops the resident pages of `[start, end)`: the next touch misses.
    pub fn drop_pages(&self, start: u64, end: u64) -> io::Result<()> {
        debug_assert!(USER_MIN <= start && start <= end && end <= USER_END);
        // Safety: as for `protect`; MADV_DONTNEED only discards arena pages.
        check(
            unsafe { libc::madvise(start as *mut _, (end - start) as usize, libc::MADV_DONTNEED) },
            "madvise(MADV_DONTNEED) in the arena",
        )
    }
}

/// The arena's pages as the host kernel holds them: all the ExCache needs
/// of the host. [`Arena`] is the real one; the ExCache's tests use a fake.
pub trait Pages: Sync {
    /// Whether `page` is present now.
    fn present(&self, page: u64) -> io::Result<bool>;
    /// Wakes the threads whose faults wait on `[start, start + len)`.
    fn wake(&self, start: u64, len: u64) -> io::Result<()>;
    /// Installs the whole pages `src` at `start` and wakes their faults;
    /// with `write_protect` they start clean (a first write marks a page
    /// written), else they count as written already. A page already there
    /// is left as it is.
    fn install(&self, start: u64, src: &[u8], write_protect: bool) -> io::Result<()>;
    /// The written runs of `[start, end)`, into `out`; how many.
    fn written(&self, start: u64, end: u64, out: &mut [PageRegion]) -> io::Result<usize>;
    /// As [`Pages::written`], and marks the pages found clean again.
    fn written_then_clean(&self, start: u64, end: u64, out: &mut [PageRegion])
        -> io::Result<usize>;
    /// Drops the resident pages of `[start, end)`: the next touch misses.
    fn drop_pages(&self, start: u64, end: u64) -> io::Result<()>;
    /// Moves resident `page` out to staging offset `at`, returning where
    /// it is now (`None`: it cannot be moved, and nobody can write it).
    fn stage_page(&self, page: u64, at: u64) -> io::Result<Option<u64>>;
    /// Empties the first `len` bytes of the staging area.
    fn unstage(&self, len: u64) -> io::Result<()>;
    /// The bytes of `[start, start + len)`.
    ///
    /// # Safety
    /// The range must be resident or staged, readable, and stay so (and
    /// unwritten) while the slice lives.
    unsafe fn contents(&self, start: u64, len: u64) -> &[u8];
}

impl Pages for Arena {
    fn present(&self, page: u64) -> io::Result<bool> {
        self.pagemap.present(page)
    }

    fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        self.uffd.wake(start, len)
    }

    fn install(&self, start: u64, src: &[u8], write_protect: bool) -> io::Result<()> {
        assert!((src.len() as u64).is_multiple_of(PAGE), "whole pages only");
        // Safety: `src` is a slice of whole pages.
        unsafe {
            self.uffd.copy_pages(
                start,
                src.as_ptr(),
                src.len() / PAGE as usize,
                write_protect,
            )
        }
    }

    fn written(&self, start: u64, end: u64, out: &mut [PageRegion]) -> io::Result<usize> {
        self.pagemap.written(start, end, out)
    }

    fn written_then_clean(
        &self,
        start: u64,
        end: u64,
        out: &mut [PageRegion],
    ) -> io::Result<usize> {
        self.pagemap.written_then_clean(start, end, out)
    }

    fn drop_pages(&self, start: u64, end: u64) -> io::Result<()> {
        Arena::drop_pages(self, start, end)
    }

    fn stage_page(&self, page: u64, at: u64) -> io::Result<Option<u64>> {
        Arena::stage_page(self, page, at)
    }

    fn unstage(&self, len: u64) -> io::Result<()> {
        Arena::unstage(self, len)
    }

    unsafe fn contents(&self, start: u64, len: u64) -> &[u8] {
        // Safety: the caller's contract; arena and staging addresses are
        // the runtime's own memory at those addresses.
        unsafe { std::slice::from_raw_parts(start as *const u8, len as usize) }
    }
}
