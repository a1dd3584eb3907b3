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
//! thread's effective set and the change back to 0 restores them, which
//! is exactly the rule we want: the caller gets root's overrides only if
//! it is root. What needs the server's own rights (decoding a handle with
//! `open_by_handle_at`) runs in [`as_server`].

use crate::sys::Errno;
use lego_proto::Credentials;
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
            }
        }
    })
}

/// Changes this thread's filesystem credentials from `from` to `to`, only
/// what differs (all of them when `from` is not known); `EPERM` if the kernel did not take them (the server
/// lacks `CAP_SETUID` or `CAP_SETGID`, or an id is not mapped here).
fn switch(from: Option<&Credentials>, to: &Credentials) -> Result<(), Errno> {
    let differs = |same: fn(&Credentials, &Credentials) -> bool| from.is_none_or(|f| !same(f, to));
    // Safety: setfsuid/setfsgid take plain ids and return the previous
    // one (with -1, changing nothing); setgroups reads `groups.len()` ids
    // from a live slice. All act on this thread only.
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
        if differs(|a, b| a.uid == b.uid) {
            libc::setfsuid(to.uid);
            if libc::setfsuid(u32::MAX) as u32 != to.uid {
                return Err(Errno(libc::EPERM));
            }
        }
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
/// the module doc). Only the fsuid changes: back at the server's, the
/// thread has the server's filesystem capabilities again, which is all
/// decoding a handle needs (each credential change costs a microsecond or
/// two here).
pub fn as_server<T>(f: impl FnOnce() -> T) -> T {
    let Some(caller) = CURRENT.with(|c| c.borrow().as_ref().map(|c| c.uid)) else {
        return f();
    };
    let own = server().uid;
    // Safety: setfsuid takes a plain id and acts on this thread only; -1
    // changes nothing and answers the current one.
    unsafe {
        libc::setfsuid(own);
        if libc::setfsuid(u32::MAX) as u32 != own {
            std::process::abort();
        }
    }
    let out = f();
    // Safety: as above; it held the caller's uid a moment ago.
    unsafe {
        libc::setfsuid(caller);
        if libc::setfsuid(u32::MAX) as u32 != caller {
            std::process::abort();
        }
    }
    out
}
