//! The host layer, the runtime's bottom: raw system calls, the kernel
//! interfaces the runtime drives (userfaultfd and the page map in
//! [`uffd`]), copies to and from application memory ([`user`]), the live
//! counters page ([`live`]), the report channel to the processor
//! ([`report`]) and the runtime's own descriptors ([`fds`]).
//!
//! May call: nothing of the runtime's. Invariant: nothing here keeps
//! state about the application.

pub mod fds;
pub mod live;
pub mod report;
pub mod uffd;
pub mod user;

use std::arch::asm;

/// A raw syscall, for passing the application's calls through. Only valid
/// while the selector is ALLOW (inside the handler, or before the
/// application starts).
///
/// # Safety
/// The caller vouches for the syscall's effect on memory, as with any
/// syscall: pointers in the arguments must be valid for it.
#[inline]
pub unsafe fn raw_syscall(nr: u64, args: [u64; 6]) -> i64 {
    let ret: i64;
    // Safety: delegated to the caller; `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// The calling thread's host id.
pub fn gettid() -> i32 {
    // Safety: gettid has no preconditions.
    unsafe { raw_syscall(libc::SYS_gettid as u64, [0; 6]) as i32 }
}

/// The host's /proc, opened as the runtime starts (`open_proc_root`): a
/// program that later takes ids that cannot walk `/` (any mode it has)
/// still reaches the runtime's own /proc files through it.
static PROC: std::sync::OnceLock<Option<std::os::fd::OwnedFd>> = std::sync::OnceLock::new();

/// Opens the host's /proc for [`open_proc`]; call before the program runs.
pub fn open_proc_root() {
    PROC.get_or_init(|| {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open("/proc")
            .ok()?;
        lego_transport::fdfloor::lift(std::os::fd::OwnedFd::from(dir)).ok()
    });
}

/// Opens `path` (relative, such as `thread-self/pagemap`) of the host's
/// /proc for reading.
pub fn open_proc(path: &std::ffi::CStr) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let dir = PROC
        .get()
        .and_then(Option::as_ref)
        .map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let path = if dir == libc::AT_FDCWD {
        std::borrow::Cow::Owned(
            std::ffi::CString::new([b"/proc/", path.to_bytes()].concat()).expect("no NUL"),
        )
    } else {
        std::borrow::Cow::Borrowed(path)
    };
    // Safety: openat reads a NUL-terminated path that outlives the call;
    // the descriptor it returns is new and ours alone.
    unsafe {
        let fd = libc::openat(dir, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

/// The host's attributes of `path` (relative, such as `self/status`)
/// in /proc, following links.
pub fn stat_proc(path: &[u8]) -> Option<libc::stat> {
    use std::os::fd::AsRawFd;
    let dir = PROC.get().and_then(Option::as_ref)?.as_raw_fd();
    let path = std::ffi::CString::new(path).ok()?;
    // Safety: fstatat reads a NUL-terminated path that outlives the call
    // and writes one struct stat of ours.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstatat(dir, path.as_ptr(), &mut st, 0) == 0).then_some(st)
    }
}

/// Runs `f` with the process dumpable. A process whose credentials
/// changed (a program's setuid) is not, and its /proc files are then
/// root's: the runtime becomes dumpable just long enough to open its own
/// (its page map, a descriptor link), then goes back (to not dumpable
/// where it was 2, `suid_dumpable`, which cannot be set again: the
/// stricter).
pub fn while_dumpable<T>(f: impl FnOnce() -> T) -> T {
    // Safety (all three): prctl with plain integers, on this process.
    let was = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    let out = f();
    let back = if was == 1 { 1 } else { 0 };
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, back, 0, 0, 0) };
    out
}

/// Blocks every signal on the calling runtime thread: application signals
/// must reach application threads, never the runtime's own.
pub fn block_all_signals() {
    let all = !0u64;
    // Safety: rt_sigprocmask reads one 8-byte set of ours.
    unsafe {
        raw_syscall(
            libc::SYS_rt_sigprocmask as u64,
            [
                libc::SIG_SETMASK as u64,
                &all as *const u64 as u64,
                0,
                8,
                0,
                0,
            ],
        );
    }
}
