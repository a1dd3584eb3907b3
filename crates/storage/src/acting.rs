//! Acting for a caller: the serving thread takes the filesystem uid, gid
//! and supplementary groups a request's voucher names for the request, as
//! knfsd does, so the kernel itself checks every
//! permission and new files belong to the caller.
//!
//! All three are per-thread on Linux when set by raw syscall (`setfsuid`
//! and `setfsgid` always are; glibc's `setgroups` would change every
//! thread, so the raw syscall is used). A change of the fsuid away from 0
//! drops the filesystem capabilities (`CAP_DAC_OVERRIDE`,
//! `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`, `CAP_CHOWN`, ...) from the
//! thread's effective set and the change back to 0 restores them; then
//! the thread's effective set keeps only the filesystem capabilities the
//! caller holds (`capset`, per thread too), so root that dropped
//! `CAP_DAC_OVERRIDE` is refused what its mode bits refuse, as natively.
//! What needs the server's own rights (decoding a handle with
//! `open_by_handle_at`) runs in [`as_server`].

use crate::sys::Errno;
use lego_proto::{Capabilities, Credentials, FS_CAPS};
use std::cell::RefCell;
use std::sync::OnceLock;
use tracing::warn;

thread_local! {
    /// The credentials this thread has now, when not the server's. A
    /// thread keeps a caller's between requests (the next request on the
    /// connection is most likely the same caller's): every request states
    /// whom it acts for ([`act_for`]), so none runs with another's.
    static CURRENT: RefCell<Option<Credentials>> = const { RefCell::new(None) };
}

/// The server's own filesystem credentials, as the process started.
fn server() -> &'static Credentials {
    static SERVER: OnceLock<Credentials> = OnceLock::new();
    SERVER.get_or_init(|| {
        // Safety: plain id queries; getgroups writes at most `n` ids into
        // a buffer of `n`.
        unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut()).max(0);
            let mut groups = vec![0u32; n as usize];
            let got = libc::getgroups(n, groups.as_mut_ptr());
            groups.truncate(got.max(0) as usize);
            groups.sort_unstable();
            Credentials {
                uid: libc::geteuid(),
                gid: libc::getegid(),
                groups,
                caps: server_caps().effective & FS_CAPS,
            }
        }
    })
}

/// The server's capability sets, as the process started.
fn server_caps() -> Capabilities {
    static CAPS: OnceLock<Capabilities> = OnceLock::new();
    *CAPS.get_or_init(|| {
        let (header, mut data) = cap_buffers();
        // Safety: capget reads our header and writes two
        // __user_cap_data_struct (three u32 each, version 3) into our
        // array of exactly that size.
        if unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) } != 0 {
            return Capabilities::default();
        }
        let join = |i: usize| data[0][i] as u64 | (data[1][i] as u64) << 32;
        Capabilities {
            effective: join(0),
            permitted: join(1),
        }
    })
}

/// A version 3 capability header for the calling thread, and room for
/// its data.
fn cap_buffers() -> ([u32; 2], [[u32; 3]; 2]) {
    const VERSION_3: u32 = 0x2008_0522;
    ([VERSION_3, 0], [[0; 3]; 2])
}

/// The effective set a thread acting for someone with filesystem
/// capabilities `caps` has: the server's, with only those of its
/// filesystem capabilities.
fn effective_for(caps: u64) -> u64 {
    let own = server_caps().effective;
    own & !FS_CAPS | own & caps & FS_CAPS
}

/// Sets this thread's effective capabilities to `effective` (permitted
/// and inheritable stay the server's).
fn set_effective(effective: u64) -> Result<(), Errno> {
    let (header, mut data) = cap_buffers();
    let own = server_caps();
    for (half, word) in data.iter_mut().enumerate() {
        let shift = 32 * half;
        *word = [
            (effective >> shift) as u32,
            (own.permitted >> shift) as u32,
            0,
        ];
    }
    // Safety: capset reads our header and two __user_cap_data_struct
    // from our array; with pid 0 it changes this thread alone, and only
    // to a subset of what the thread is permitted.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(Errno(libc::EPERM));
    }
    Ok(())
}

/// Changes this thread's filesystem credentials from `from` to `to`, only
/// what differs (all of them when `from` is not known); `EPERM` if the kernel did not take them (the server
/// lacks `CAP_SETUID` or `CAP_SETGID`, or an id is not mapped here).
fn switch(from: Option<&Credentials>, to: &Credentials) -> Result<(), Errno> {
    let differs = |same: fn(&Credentials, &Credentials) -> bool| from.is_none_or(|f| !same(f, to));
    // Safety: setfsgid takes a plain id and returns the previous one
    // (with -1, changing nothing); setgroups reads `groups.len()` ids
    // from a live slice. Both act on this thread only.
    unsafe {
        if differs(|a, b| a.groups == b.groups)
            && libc::syscall(libc::SYS_setgroups, to.groups.len(), to.groups.as_ptr()) != 0
        {
            return Err(Errno(libc::EPERM));
        }
        if differs(|a, b| a.gid == b.gid) {
            libc::setfsgid(to.gid);
            if libc::setfsgid(u32::MAX) as u32 != to.gid {
                return Err(Errno(libc::EPERM));
            }
        }
    }
    let from_user = from.map(|f| (f.uid, f.caps));
    set_user(from_user, (to.uid, to.caps))
}

/// Changes this thread's fsuid and filesystem capabilities from `from`
/// (not known: `None`) to `to`, each a (uid, caps) of [`Credentials`].
fn set_user(from: Option<(u32, u64)>, to: (u32, u64)) -> Result<(), Errno> {
    let uid_changed = from.is_none_or(|(uid, _)| uid != to.0);
    if uid_changed {
        // Safety: setfsuid takes a plain id and returns the previous one
        // (with -1, changing nothing); it acts on this thread only.
        unsafe {
            libc::setfsuid(to.0);
            if libc::setfsuid(u32::MAX) as u32 != to.0 {
                return Err(Errno(libc::EPERM));
            }
        }
    }
    // What the kernel left in the effective set: a change of fsuid gives
    // all of the filesystem capabilities (to 0) or none; otherwise it is
    // what `from` had. From an unknown state, it is set whatever it is.
    let own = server_caps();
    let left = match from {
        None => None,
        Some((_, caps)) if !uid_changed => Some(effective_for(caps)),
        Some(_) if to.0 == 0 => Some(own.effective | own.permitted & FS_CAPS),
        Some(_) => Some(own.effective & !FS_CAPS),
    };
    let want = effective_for(to.1);
    if left != Some(want) {
        set_effective(want)?;
    }
    Ok(())
}

/// Back to the server's credentials from `from`. It cannot fail for a
/// server that could leave them; a thread that kept a caller's would
/// serve wrongly, so the process stops instead.
fn back_to_server(from: &Credentials) {
    if switch(Some(from), server()).is_err() {
        std::process::abort();
    }
}

/// Makes this thread act for `who` (the server itself when `None`) from
/// now until the next call. `EACCES` if the server cannot take on `who`'s
/// credentials: it then serves nobody but itself, rather than serving
/// with its own rights.
pub fn act_for(who: Option<&Credentials>) -> Result<(), Errno> {
    let who = who.filter(|w| *w != server());
    CURRENT.with(|current| {
        let mut current = current.borrow_mut();
        if current.as_ref() == who {
            return Ok(());
        }
        let from = current.take().unwrap_or_else(|| server().clone());
        let Some(who) = who else {
            back_to_server(&from);
            return Ok(());
        };
        if let Err(e) = switch(Some(&from), who) {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| {
                warn!(
                    "cannot act for uid {} gid {} ({e}): requests of users other than \
                     the storage manager's own are refused; run it as root",
                    who.uid, who.gid
                )
            });
            // Where the switch stopped is not known: all the way back.
            if switch(None, server()).is_err() {
                std::process::abort();
            }
            return Err(Errno(libc::EACCES));
        }
        *current = Some(who.clone());
        Ok(())
    })
}

/// Whether the caller this thread acts for owns the file `attr` describes.
pub fn owns(attr: &lego_proto::FileAttr) -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|c| c.uid == attr.uid))
}

/// Whether this thread acts for someone else now.
pub fn acting() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// Runs `f` with the server's rights, then takes the caller's back (see
/// the module doc). Only the fsuid and capabilities change: back at the
/// server's, the thread has the server's filesystem capabilities again,
/// which is all decoding a handle needs (each credential change costs a
/// microsecond or two here).
pub fn as_server<T>(f: impl FnOnce() -> T) -> T {
    let Some(caller) = CURRENT.with(|c| c.borrow().as_ref().map(|c| (c.uid, c.caps))) else {
        return f();
    };
    let own = (server().uid, server().caps);
    if set_user(Some(caller), own).is_err() {
        std::process::abort();
    }
    let out = f();
    // It held the caller's a moment ago.
    if set_user(Some(own), caller).is_err() {
        std::process::abort();
    }
    out
}
