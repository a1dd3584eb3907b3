//! Raw userfaultfd and PAGEMAP_SCAN: the kernel interfaces the ExCache is
//! built on, as thin typed wrappers.
//!
//! The system headers on a Debian 12 machine predate WP_ASYNC (6.7) and
//! PAGEMAP_SCAN (6.7), so the structures and request numbers are defined
//! here from the kernel's uapi headers.

use lego_proto::runtime::USERFAULTFD_FD;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO: u64 = 0xAA;

const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x3F, 24);
const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x00, 32);
const UFFDIO_WAKE: u64 = ioc(IOC_READ, UFFDIO, 0x02, 16);
const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x03, 40);
const UFFDIO_MOVE: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x05, 40);
/// `/dev/userfaultfd`'s one ioctl: a new userfaultfd.
const USERFAULTFD_IOC_NEW: u64 = ioc(0, UFFDIO, 0x00, 0);
const PAGEMAP_SCAN: u64 = ioc(IOC_READ | IOC_WRITE, b'f' as u64, 16, 96);

const UFFD_API: u64 = 0xAA;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;

const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `struct uffdio_move`.
#[repr(C)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// One message read from a userfaultfd (`struct uffd_msg`, 32 bytes, packed).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct UffdMsg {
    pub event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    /// For a page fault: flags, address, thread id.
    pub arg0: u64,
    pub arg1: u64,
    pub arg2: u64,
}

impl UffdMsg {
    pub const ZERO: UffdMsg = UffdMsg {
        event: 0,
        _reserved1: 0,
        _reserved2: 0,
        _reserved3: 0,
        arg0: 0,
        arg1: 0,
        arg2: 0,
    };

    pub fn fault_flags(&self) -> u64 {
        self.arg0
    }

    pub fn fault_address(&self) -> u64 {
        self.arg1
    }
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// A run of pages PAGEMAP_SCAN reported (`struct page_region`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `/dev/userfaultfd`, opened while the runtime may (before the program
/// runs, with the processor's rights): new userfaultfds are made through
/// it whatever credentials the program takes since, so a fork after
/// `setuid` still gets one. `None` where the device cannot be opened:
/// userfaultfd(2) is used then.
static DEVICE: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();

/// Takes the `/dev/userfaultfd` the processor handed over (on
/// [`USERFAULTFD_FD`]: a runtime in a user namespace of its own may not
/// open the device), if it did; first thing, before any descriptor of the
/// runtime could take that number.
pub fn adopt_device() {
    // Safety: a zeroed stat is a valid value; fstat writes one stat of
    // ours.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(USERFAULTFD_FD, &mut stat) } != 0
        || stat.st_mode & libc::S_IFMT != libc::S_IFCHR
    {
        return;
    }
    // Safety: an open character device at this number is the processor's
    // handover, owned by nothing else in this process.
    let handed = unsafe { OwnedFd::from_raw_fd(USERFAULTFD_FD) };
    let _ = DEVICE.set(lego_transport::fdfloor::lift(handed).ok());
}

/// Opens `/dev/userfaultfd` for the process's later userfaultfds unless
/// the processor handed one over (once; above the descriptor floor: it
/// is the runtime's).
pub fn open_device() {
    DEVICE.get_or_init(|| {
        use std::os::unix::fs::OpenOptionsExt;
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd")
            .ok()?;
        lego_transport::fdfloor::lift(OwnedFd::from(device)).ok()
    });
}

/// A userfaultfd with write-protect tracking in asynchronous mode: writes
/// to write-protected pages are resolved by the kernel without a message,
/// and PAGEMAP_SCAN reports which pages were written.
pub struct Userfaultfd {
    fd: OwnedFd,
    /// Whether UFFDIO_MOVE is available (Linux 6.8 and later).
    can_move: bool,
}

impl Userfaultfd {
    /// Opens a userfaultfd that also handles faults taken by the kernel on
    /// the process's behalf (a read() into arena memory), which needs root,
    /// CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
    pub fn open() -> io::Result<Userfaultfd> {
        // The API handshake can be made once per descriptor: without MOVE,
        // start again on a new one.
        match Userfaultfd::open_with(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE) {
            Ok(uffd) => Ok(uffd),
            Err(_) => Userfaultfd::open_with(UFFD_FEATURE_WP_ASYNC),
        }
    }

    fn open_with(features: u64) -> io::Result<Userfaultfd> {
        let fd = match DEVICE.get().and_then(Option::as_ref) {
            // Safety: USERFAULTFD_IOC_NEW takes only flags and returns a
            // new fd or -1.
            Some(device) => libc::c_long::from(unsafe {
                libc::ioctl(
                    device.as_raw_fd(),
                    USERFAULTFD_IOC_NEW as _,
                    libc::O_CLOEXEC,
                )
            }),
            // Safety: userfaultfd(2) takes only flags and returns a new fd
            // or -1.
            None => unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) },
        };
        let fd = check(fd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("userfaultfd: {e} (Lego needs root, CAP_SYS_PTRACE or sysctl vm.unprivileged_userfaultfd=1)"),
            )
        })?;
        // Safety: the kernel just returned this descriptor; we own it alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // Safety: UFFDIO_API reads and writes one UffdioApi, which `api` is.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) } as libc::c_long)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("UFFDIO_API with WP_ASYNC: {e} (needs Linux 6.7 or later)"),
                )
            })?;
        Ok(Userfaultfd {
            fd,
            can_move: features & UFFD_FEATURE_MOVE != 0,
        })
    }

    pub fn can_move(&self) -> bool {
        self.can_move
    }

    /// Moves the pages of `[src, src + len)` to `dst` (both registered
    /// with this descriptor, with the same protection): each page leaves
    /// its source atomically, so a later touch there faults as missing.
    pub fn move_pages(&self, dst: u64, src: u64, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let mut mv = UffdioMove {
                dst: dst + done,
                src: src + done,
                len: len - done,
                mode: 0,
                moved: 0,
            };
            // Safety: UFFDIO_MOVE reads and writes one UffdioMove; the
            // kernel checks both ranges.
            let ret = unsafe { libc::ioctl(self.raw(), UFFDIO_MOVE as _, &mut mv) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if mv.moved > 0 {
                done += mv.moved as u64;
            }
            match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                _ => return Err(err),
            }
        }
        Ok(())
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes this descriptor number refer to `new` from now on (the old
    /// object is closed): for a forked process, whose inherited descriptor
    /// is its parent's.
    pub fn replace_with(&self, new: Userfaultfd) -> io::Result<()> {
        // Safety: dup3 onto a descriptor we own; `new` is closed after.
        check(unsafe { libc::dup3(new.raw(), self.raw(), libc::O_CLOEXEC) } as libc::c_long)?;
        Ok(())
    }

    /// Moved above the descriptor floor (see `lego_transport::fdfloor`).
    pub fn lifted(self) -> io::Result<Userfaultfd> {
        Ok(Userfaultfd {
            fd: lego_transport::fdfloor::lift(self.fd)?,
            can_move: self.can_move,
        })
    }

    /// Registers `[start, start + len)` for missing-page and write-protect
    /// tracking.
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // Safety: UFFDIO_REGISTER reads and writes one UffdioRegister.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_REGISTER as _, &mut reg) } as libc::c_long)?;
        Ok(())
    }

    /// Installs `pages` pages from `src` (in our memory) at `dst` and wakes
    /// the threads waiting on them. With `write_protect` the pages start
    /// clean (a first write marks a page written); without, they count as
    /// written already. A page that is already there (EEXIST) is skipped
    /// and its waiters are woken.
    ///
    /// # Safety
    /// `src` must point to `pages * 4096` readable bytes.
    pub unsafe fn copy_pages(
        &self,
        dst: u64,
        src: *const u8,
        pages: usize,
        write_protect: bool,
    ) -> io::Result<()> {
        let len = pages as u64 * 4096;
        let mut done = 0u64;
        // One call per run, unless the run spans host VMAs (protection
        // changes split the arena), which UFFDIO_COPY refuses with ENOENT:
        // then one call per page.
        let mut per_page = false;
        while done < len {
            let chunk = if per_page { 4096 } else { len - done };
            let mut copy = UffdioCopy {
                dst: dst + done,
                src: src as u64 + done,
                len: chunk,
                mode: if write_protect {
                    UFFDIO_COPY_MODE_WP
                } else {
                    0
                },
                copy: 0,
            };
            // Safety: UFFDIO_COPY reads one UffdioCopy and the source bytes
            // the caller vouches for, and writes `copy` back.
            let ret = unsafe { libc::ioctl(self.raw(), UFFDIO_COPY as _, &mut copy) };
            if ret == 0 {
                done += chunk;
                continue;
            }
            let err = io::Error::last_os_error();
            // On failure `copy` holds the bytes copied, or a negated errno.
            if copy.copy > 0 {
                done += copy.copy as u64;
            }
            match err.raw_os_error() {
                Some(libc::EEXIST) => {
                    self.wake(dst + done, 4096)?;
                    done += 4096;
                }
                Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                Some(libc::ENOENT) if !per_page && len - done > 4096 => per_page = true,
                _ => return Err(err),
            }
        }
        Ok(())
    }

    /// Wakes threads waiting on faults in the range.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // Safety: UFFDIO_WAKE reads one UffdioRange.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_WAKE as _, &mut range) } as libc::c_long)?;
        Ok(())
    }

    /// Reads pending fault messages into `out`; returns how many arrived.
    /// Blocks unless the descriptor is non-blocking.
    pub fn read(&self, out: &mut [UffdMsg]) -> io::Result<usize> {
        // Safety: `out` is writable memory of `size_of_val(out)` bytes and
        // UffdMsg is plain data of the kernel's layout.
        let n = unsafe {
            libc::read(
                self.raw(),
                out.as_mut_ptr().cast(),
                std::mem::size_of_val(out),
            )
        };
        Ok(check(n as libc::c_long)? as usize / std::mem::size_of::<UffdMsg>())
    }
}

/// `/proc/self/pagemap`, for PAGEMAP_SCAN.
pub struct Pagemap {
    fd: OwnedFd,
}

impl Pagemap {
    /// Whether the page at `addr` is present in the page table.
    pub fn present(&self, addr: u64) -> io::Result<bool> {
        let mut entry = [0u8; 8];
        // Safety: pread writes at most 8 bytes into `entry`.
        let n = unsafe {
            libc::pread(
                self.fd.as_raw_fd(),
                entry.as_mut_ptr().cast(),
                8,
                (addr / 4096 * 8) as libc::off_t,
            )
        };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from_ne_bytes(entry) & (1 << 63) != 0)
    }

    pub fn open() -> io::Result<Pagemap> {
        let fd = match super::open_proc(c"thread-self/pagemap") {
            // Not dumpable since a setuid (see `while_dumpable`).
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                super::while_dumpable(|| super::open_proc(c"thread-self/pagemap"))?
            }
            opened => opened?,
        };
        Ok(Pagemap { fd })
    }

    /// Moved above the descriptor floor (see `lego_transport::fdfloor`).
    pub fn lifted(self) -> io::Result<Pagemap> {
        Ok(Pagemap {
            fd: lego_transport::fdfloor::lift(self.fd)?,
        })
    }

    /// Makes this descriptor read the calling process's page table (a
    /// forked process inherits its parent's).
    pub fn reopen(&self) -> io::Result<()> {
        let new = Pagemap::open()?;
        // Safety: dup3 onto a descriptor we own; `new` is closed after.
        check(
            unsafe { libc::dup3(new.fd.as_raw_fd(), self.fd.as_raw_fd(), libc::O_CLOEXEC) }
                as libc::c_long,
        )?;
        Ok(())
    }

    /// Fills `out` with the runs of written pages in `[start, end)`; returns
    /// how many runs it found. A run that does not fit in `out` is cut
    /// short; callers size `out` to the number of pages they ask about.
    pub fn written(&self, start: u64, end: u64, out: &mut [PageRegion]) -> io::Result<usize> {
        self.scan(start, end, out, PM_SCAN_CHECK_WPASYNC)
    }

    /// As [`Pagemap::written`], and marks the pages found clean again
    /// (write-protected: the next write marks a page written).
    pub fn written_then_clean(
        &self,
        start: u64,
        end: u64,
        out: &mut [PageRegion],
    ) -> io::Result<usize> {
        self.scan(start, end, out, PM_SCAN_CHECK_WPASYNC | PM_SCAN_WP_MATCHING)
    }

    fn scan(&self, start: u64, end: u64, out: &mut [PageRegion], flags: u64) -> io::Result<usize> {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start,
            end,
            walk_end: 0,
            vec: out.as_mut_ptr() as u64,
            vec_len: out.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        // Safety: PAGEMAP_SCAN reads `arg` and writes at most `vec_len`
        // PageRegions to `vec`, which is `out`.
        let n = unsafe { libc::ioctl(self.fd.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        Ok(check(n as libc::c_long)? as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // Values from <linux/userfaultfd.h> and <linux/fs.h> of Linux 6.7+.
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_WAKE, 0x8010_AA02);
        assert_eq!(UFFDIO_COPY, 0xC028_AA03);
        assert_eq!(UFFDIO_MOVE, 0xC028_AA05);
        assert_eq!(std::mem::size_of::<UffdioMove>(), 40);
        assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
    }
}
