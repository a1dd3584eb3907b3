//! Acting for a caller: the serving thread takes the filesystem uid, gid
//! and supplementary groups a request's voucher names for the length of
//! the request, as knfsd does, so the kernel itself checks every
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
    /// Whom this thread acts for now (`None`: itself).
    static ACTING: RefCell<Option<Credentials>> = const { RefCell::new(None) };
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
            Credentials {
                uid: libc::geteuid(),
                gid: libc::getegid(),
                groups,
            }
        }
    })
}

/// Sets this thread's filesystem credentials to `who`; `EPERM` if the
/// kernel did not take them all (the server lacks `CAP_SETUID` or
/// `CAP_SETGID`).
fn set(who: &Credentials) -> Result<(), Errno> {
    // Going back to the server (uid first, so capabilities return before
    // the groups change) or away from it (groups and gid while still
    // privileged, uid last).
    let to_server = who == server();
    // Safety: setfsuid/setfsgid take plain ids and return the previous
    // one; setgroups reads `groups.len()` ids from a live slice. All act on
    // this thread only.
    unsafe {
        if to_server {
            libc::setfsuid(who.uid);
        }
        let groups = libc::syscall(libc::SYS_setgroups, who.groups.len(), who.groups.as_ptr());
        libc::setfsgid(who.gid);
        if !to_server {
            libc::setfsuid(who.uid);
        }
        // setfsuid(-1) changes nothing and answers the current value.
        let uid = libc::setfsuid(u32::MAX) as u32;
        let gid = libc::setfsgid(u32::MAX) as u32;
        if groups != 0 || uid != who.uid || gid != who.gid {
            return Err(Errno(libc::EPERM));
        }
    }
    Ok(())
}

/// This thread acting for someone until dropped.
pub struct Acting {
    /// Not `Send`: the credentials belong to this thread.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Acting {
    /// Acts for `who` (nothing to change if it is the server itself).
    /// `EACCES` if the server cannot take on `who`'s credentials: it then
    /// serves nobody but itself, rather than serving with its own rights.
    pub fn begin(who: &Credentials) -> Result<Acting, Errno> {
        if who != server() {
            if let Err(e) = set(who) {
                static WARNED: OnceLock<()> = OnceLock::new();
                WARNED.get_or_init(|| {
                    warn!(
                        "cannot act for uid {} gid {} ({e}): requests of users other than \
                         the storage manager's own are refused; run it as root",
                        who.uid, who.gid
                    )
                });
                let _ = set(server());
                return Err(Errno(libc::EACCES));
            }
            ACTING.with(|a| *a.borrow_mut() = Some(who.clone()));
        }
        Ok(Acting {
            _thread: std::marker::PhantomData,
        })
    }
}

impl Drop for Acting {
    fn drop(&mut self) {
        if ACTING.with(|a| a.borrow_mut().take()).is_some() {
            // Back to the server's credentials cannot fail for a server
            // that could leave them; a thread that kept a caller's would
            // serve the next request wrongly, so stop instead.
            if set(server()).is_err() {
                std::process::abort();
            }
        }
    }
}

/// Whether this thread acts for someone else now.
pub fn acting() -> bool {
    ACTING.with(|a| a.borrow().is_some())
}

/// Runs `f` with the server's own credentials, then takes the caller's
/// back (see the module doc).
pub fn as_server<T>(f: impl FnOnce() -> T) -> T {
    let Some(caller) = ACTING.with(|a| a.borrow().clone()) else {
        return f();
    };
    if set(server()).is_err() {
        std::process::abort();
    }
    let out = f();
    if set(&caller).is_err() {
        // It held them a moment ago.
        std::process::abort();
    }
    out
}
