//! The process's credentials. They are the host kernel's: the setuid
//! family passes through, so the kernel decides, as for any process, who
//! may change what (root may drop, others may not gain). What the storage
//! manager acts with is the voucher every request carries, which the
//! processor seals after reading the ids from the kernel itself: when a
//! call changes them, the runtime asks for a new one before the program
//! runs on, and the old one is overwritten.

use super::Runtime;
use lego_proto::{Capabilities, Message, Voucher};
use lego_transport::write_frame;
use std::io::Write;

/// The calling thread's ids, as a voucher lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// Real, effective, saved, filesystem.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    /// Sorted, as the kernel keeps them.
    pub groups: Vec<u32>,
    /// The filesystem capabilities of its effective and permitted sets.
    pub caps: Capabilities,
}

impl Ids {
    pub fn of(voucher: &Voucher) -> Ids {
        Ids {
            uids: voucher.uids,
            gids: voucher.gids,
            groups: voucher.groups.clone(),
            caps: voucher.caps.fs(),
        }
    }
}

/// The calling thread's filesystem capabilities (`capget`); none if the
/// kernel will not say.
fn capabilities() -> Capabilities {
    let sets = CapSets::get().unwrap_or_default();
    Capabilities {
        effective: sets.effective,
        permitted: sets.permitted,
    }
    .fs()
}

/// The calling thread's three capability sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit halves of each set.
const CAP_VERSION_3: u32 = 0x2008_0522;

impl CapSets {
    fn get() -> Option<CapSets> {
        // struct __user_cap_header_struct: version, pid (0: this thread).
        let header = [CAP_VERSION_3, 0u32];
        let mut data = [[0u32; 3]; 2];
        // Safety: capget reads our header and writes two
        // __user_cap_data_struct (three u32 each: effective, permitted,
        // inheritable) into our array of exactly that size.
        if unsafe { libc::syscall(libc::SYS_capget, header.as_ptr(), data.as_mut_ptr()) } != 0 {
            return None;
        }
        let join = |i: usize| data[0][i] as u64 | (data[1][i] as u64) << 32;
        Some(CapSets {
            effective: join(0),
            permitted: join(1),
            inheritable: join(2),
        })
    }

    fn set(self) -> std::io::Result<()> {
        let header = [CAP_VERSION_3, 0u32];
        let half = |shift: u32| {
            [
                (self.effective >> shift) as u32,
                (self.permitted >> shift) as u32,
                (self.inheritable >> shift) as u32,
            ]
        };
        let data = [half(0), half(32)];
        // Safety: capset reads our header and two __user_cap_data_struct
        // from our array; it changes this thread alone.
        if unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The calling thread's ambient capabilities.
fn ambient() -> u64 {
    let mut set = 0;
    for cap in 0..64 {
        // Safety: a query of one capability; EINVAL past the last one.
        let is_set = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        match is_set {
            1 => set |= 1u64 << cap,
            0 => {}
            _ => break,
        }
    }
    set
}

/// What execve does to the capabilities, which the host kernel does not
/// do for Lego's exec (it loads the new program in the same host
/// process). Linux's rules for a program without file capabilities or
/// set-id bits (Lego honours neither): a process whose real or effective
/// uid is 0 keeps its permitted set (Linux would give it the bounding
/// set; a process cannot raise its own) and has it all in effect if its
/// effective uid is 0; any other keeps only its ambient capabilities,
/// permitted and in effect. `SECBIT_NOROOT` makes root like any other,
/// and `PR_SET_KEEPCAPS` ends. Then the voucher follows.
pub fn exec(rt: &Runtime) -> Result<(), String> {
    const SECBIT_NOROOT: i32 = 1 << 0;
    const SECBIT_KEEP_CAPS_LOCKED: i32 = 1 << 5;
    let Some(now) = CapSets::get() else {
        return Ok(());
    };
    // Safety: plain queries of this thread's ids and securebits.
    let (ruid, euid, securebits) = unsafe {
        let (mut r, mut e, mut s) = (0, 0, 0);
        libc::getresuid(&mut r, &mut e, &mut s);
        (r, e, libc::prctl(libc::PR_GET_SECUREBITS).max(0))
    };
    let ambient = ambient();
    let root = securebits & SECBIT_NOROOT == 0 && (ruid == 0 || euid == 0);
    let permitted = if root { now.permitted } else { ambient };
    let new = CapSets {
        permitted,
        effective: if root && euid == 0 {
            permitted
        } else {
            ambient & permitted
        },
        inheritable: now.inheritable,
    };
    if new != now {
        new.set()
            .map_err(|e| format!("cannot drop the capabilities execve drops: {e}"))?;
    }
    if securebits & SECBIT_KEEP_CAPS_LOCKED == 0 {
        // Safety: a flag of this thread.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    }
    renew(rt)
}

/// The calling thread's ids now.
pub fn now() -> Ids {
    let (mut uids, mut gids) = ([0u32; 4], [0u32; 4]);
    // Safety: getresuid/getresgid write three ids each into our arrays;
    // setfsuid/setfsgid(-1) change nothing and return the current id;
    // getgroups writes at most `n` ids into a buffer of `n`.
    let mut groups = unsafe {
        libc::getresuid(&mut uids[0], &mut uids[1], &mut uids[2]);
        libc::getresgid(&mut gids[0], &mut gids[1], &mut gids[2]);
        uids[3] = libc::setfsuid(u32::MAX) as u32;
        gids[3] = libc::setfsgid(u32::MAX) as u32;
        let n = libc::getgroups(0, std::ptr::null_mut()).max(0);
        let mut groups = vec![0u32; n as usize];
        let got = libc::getgroups(n, groups.as_mut_ptr());
        groups.truncate(got.max(0) as usize);
        groups
    };
    groups.sort_unstable();
    Ids {
        uids,
        gids,
        groups,
        caps: capabilities(),
    }
}

/// Takes on the ids `voucher` names, before the program first runs (the
/// processor vouched for the user who launched it). glibc's calls change
/// every thread of the runtime.
pub fn assume(voucher: &Voucher) -> Result<(), String> {
    // The ids alone: the kernel gives the capabilities that go with them.
    let want = Ids {
        caps: Capabilities::default(),
        ..Ids::of(voucher)
    };
    let now = || Ids {
        caps: Capabilities::default(),
        ..now()
    };
    if now() == want {
        return Ok(());
    }
    let [ruid, euid, suid, _] = want.uids;
    let [rgid, egid, sgid, _] = want.gids;
    // Safety: setgroups reads `len` ids from a live vector; the others
    // take plain ids.
    let failed = unsafe {
        libc::setgroups(want.groups.len(), want.groups.as_ptr()) != 0
            || libc::setresgid(rgid, egid, sgid) != 0
            || libc::setresuid(ruid, euid, suid) != 0
    };
    if failed || now() != want {
        return Err(format!(
            "cannot take on uid {euid} gid {egid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// After a call that may have changed the ids: if they are no longer the
/// voucher's, gets one for the new ones from the processor. Without it
/// the process cannot go on (its storage requests would carry ids it no
/// longer has).
pub fn renew(rt: &Runtime) -> Result<(), String> {
    let Some(vfs) = rt.vfs.as_ref() else {
        return Ok(());
    };
    if now() == Ids::of(&vfs.storage.voucher()) {
        return Ok(());
    }
    let voucher = ask(rt).map_err(|e| {
        format!("cannot get a voucher for the process's new credentials from its processor: {e}")
    })?;
    vfs.storage.set_voucher(voucher);
    // Shown to the storage manager at once: from now on it refuses the
    // old voucher, which may linger in this process's memory.
    let _ = vfs.storage.call(lego_proto::StorageRequest::Root, &[]);
    Ok(())
}

/// Has every storage request of the process carry a voucher of its own
/// that has not run half its life: a forked child gets its own on its
/// first request, and a long-lived process a new one every
/// `VOUCHER_LIFETIME_MS / 2`, so a voucher works at most that long after
/// its process ended.
pub fn keep_vouched(rt: &'static Runtime) {
    let Some(vfs) = rt.vfs.as_ref() else {
        return;
    };
    vfs.storage.set_renewer(Box::new(move |held: &Voucher| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if held.pid == rt.mm.remote.pid() && !held.due(now) {
            return Ok(None);
        }
        ask(rt).map(Some).map_err(|e| {
            format!("cannot get a new voucher for the process from its processor: {e}")
        })
    }));
}

fn ask(rt: &Runtime) -> Result<Voucher, String> {
    let (mut stream, mut reader) = super::processor::session(rt, rt.mm.remote.pid())?;
    // The launch socket takes a descriptor message first; this one has none.
    stream.write_all(&[0]).map_err(|e| e.to_string())?;
    let tid = crate::host::gettid() as u32;
    write_frame(&mut stream, 1, &Message::Vouch { tid }, &[]).map_err(|e| e.to_string())?;
    match reader.read_frame().map_err(|e| e.to_string())?.message {
        Message::Vouched(voucher) => Ok(voucher),
        Message::Error(e) => Err(e.message),
        other => Err(format!("answered Vouch with {}", other.kind())),
    }
}
