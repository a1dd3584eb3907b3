//! The memory family: every call goes to the home memory manager, which
//! owns the address space; the reply says which ranges changed, and the
//! runtime mirrors that in host protections and in the ExCache.

use super::contract::{ok, returned, Call, Ctx, Errno, Outcome, SysError, SysResult};
use crate::process::Runtime;
use lego_proto::{MemoryOp, USER_END};

/// Sends one address-space call and mirrors its effect.
fn memory_call(rt: &Runtime, op: MemoryOp) -> SysResult {
    let name = op.name();
    // From the memory manager's change until the arena mirrors it, no
    // fault may evict (and write back) a page of the changed ranges.
    let change = rt.mm.cache.change_layout();
    // The memory manager must hold every written-back page before the
    // address space changes under them.
    rt.mm
        .cache
        .settle()
        .map_err(|e| SysError::fatal(format!("before {name}: {e}")))?;
    let done = rt
        .mm
        .remote
        .memory_op(op)
        .map_err(SysError::Fatal)?
        .map_err(Errno)?;
    rt.mm
        .apply(&change, &done)
        .map_err(|e| SysError::fatal(format!("cannot apply {name} to the arena: {e}")))?;
    // A partial failure (mprotect over a hole) is the negated errno here.
    returned(done.result as i64)
}

pub fn mmap(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let [addr, len, prot, flags, fd, offset] = c.args;
    let shared = matches!(
        (flags & MAP_TYPE) as i32,
        libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE
    );
    let anonymous = flags & libc::MAP_ANONYMOUS as u64 != 0;
    let host_object = !anonymous && rt.files.get(fd).is_none();
    if shared && (anonymous || host_object) {
        host_shared_mmap(rt, addr, len, prot, flags, fd, offset)
    } else if !anonymous {
        file_mmap(rt, addr, len, prot, flags, fd, offset)
    } else {
        memory_call(
            rt,
            MemoryOp::Mmap {
                addr,
                len,
                prot: prot as u32,
                flags: flags as u32,
            },
        )
    }
}

/// mprotect or madvise over a range that may hold shared host mappings:
/// their parts go to the host kernel (the memory manager only reserves
/// them), the rest to the memory manager, part by part.
fn split_call(rt: &Runtime, c: &Call, op: impl Fn(u64, u64) -> MemoryOp) -> SysResult {
    let [addr, len, ..] = c.args;
    let end = addr
        .saturating_add(len.next_multiple_of(4096))
        .min(USER_END);
    if !addr.is_multiple_of(4096) || len == 0 || !rt.mm.arena.touches_host_shared(addr, end) {
        return memory_call(rt, op(addr, len));
    }
    for (start, stop) in rt.mm.arena.host_shared_parts(addr, end) {
        // Safety: the range is a shared host mapping of the application's
        // inside the arena; the call changes its protection or advice.
        returned(unsafe {
            crate::host::raw_syscall(c.nr, [start, stop - start, c.args[2], 0, 0, 0])
        })?;
    }
    for (start, stop) in rt.mm.arena.private_parts(addr, end) {
        memory_call(rt, op(start, stop - start))?;
    }
    ok(0)
}

const MAP_TYPE: u64 = 0x0f;

/// A shared mapping of a host object (shared memory, a memfd, a host
/// file) or shared anonymous memory: the host kernel's own mapping inside
/// the arena, so that forked processes share it as on Linux. The memory
/// manager reserves the range (PROT_NONE, never charged or fetched); the
/// pages live on this processor, like the pipes and sockets the processes
/// share.
fn host_shared_mmap(
    rt: &Runtime,
    addr: u64,
    len: u64,
    prot: u64,
    flags: u64,
    fd: u64,
    offset: u64,
) -> SysResult {
    let reserve_flags = (flags & !MAP_TYPE & !(libc::MAP_POPULATE as u64))
        | libc::MAP_PRIVATE as u64
        | libc::MAP_ANONYMOUS as u64;
    let reserved = memory_call(
        rt,
        MemoryOp::Mmap {
            addr,
            len,
            prot: libc::PROT_NONE as u32,
            flags: reserve_flags as u32,
        },
    )?;
    let Outcome::Return(start) = reserved else {
        return Err(SysError::fatal("runtime bug: mmap returned no address"));
    };
    let start = start as u64;
    let anonymous = flags & libc::MAP_ANONYMOUS as u64 != 0;
    let fd = if anonymous { -1 } else { fd as i32 };
    match rt.mm.arena.map_host_shared(
        start,
        len.next_multiple_of(4096),
        prot as i32,
        flags as i32,
        fd,
        offset,
    ) {
        Ok(()) => Ok(reserved),
        Err(e) => {
            // The mapping's own error is the answer; only a lost memory
            // manager is worse.
            if let Err(SysError::Fatal(why)) =
                memory_call(rt, MemoryOp::Munmap { addr: start, len })
            {
                return Err(SysError::Fatal(why));
            }
            Err(Errno(e.raw_os_error().unwrap_or(libc::ENODEV)).into())
        }
    }
}

/// A file mapping. Of a storage file: the memory manager reads its pages
/// from the storage manager on first touch. Of a host file (or one the
/// runtime serves from memory): private mappings, and read-only shared
/// ones, get an anonymous mapping filled with the file's contents at the
/// time of the call. Writable shared mappings are refused with ENODEV.
fn file_mmap(
    rt: &Runtime,
    addr: u64,
    len: u64,
    prot: u64,
    flags: u64,
    fd: u64,
    offset: u64,
) -> SysResult {
    let private = flags & MAP_TYPE == libc::MAP_PRIVATE as u64;
    if !private && prot & libc::PROT_WRITE as u64 != 0 {
        return Err(Errno::ENODEV.into());
    }
    if !offset.is_multiple_of(4096) {
        return Err(Errno::EINVAL.into());
    }
    let storage_file = rt.files.get(fd);
    // A storage file: the memory manager reads its pages from the storage
    // manager when they are first touched (the runtime's own files, served
    // from memory, are copied below like host files).
    if let (Some(file), Some(vfs)) = (&storage_file, &rt.vfs) {
        if file.content.is_none() {
            if !file.readable() {
                return Err(Errno::EACCES.into());
            }
            if file.file_type != lego_proto::FileType::Regular {
                return Err(Errno::ENODEV.into());
            }
            return memory_call(
                rt,
                MemoryOp::MmapFile {
                    addr,
                    len,
                    prot: prot as u32,
                    flags: flags as u32,
                    storage: vfs.storage.addr(),
                    handle: file.handle.clone(),
                    offset,
                    // The credentials the file was opened with, as
                    // mmap(2) checks the descriptor's access.
                    caller: Box::new(match &file.opened {
                        Some(opened) => opened.clone(),
                        None => vfs.storage.current_voucher()?,
                    }),
                },
            );
        }
    }
    let size = match &storage_file {
        Some(file) => {
            if !file.readable() {
                return Err(Errno::EACCES.into());
            }
            let attr = super::file::getattr(rt, file)?;
            if attr.file_type != lego_proto::FileType::Regular {
                return Err(Errno::ENODEV.into());
            }
            attr.size
        }
        None => {
            // Safety: fstat/fcntl on the application's descriptor, into our
            // buffer.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstat(fd as i32, &mut st) } != 0 {
                return Err(Errno::EBADF.into());
            }
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(Errno::ENODEV.into());
            }
            let access = unsafe { libc::fcntl(fd as i32, libc::F_GETFL) } & libc::O_ACCMODE;
            if access == libc::O_WRONLY {
                return Err(Errno::EACCES.into());
            }
            st.st_size as u64
        }
    };
    let anon_flags = (flags & !MAP_TYPE) | libc::MAP_PRIVATE as u64 | libc::MAP_ANONYMOUS as u64;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    let mapped = memory_call(
        rt,
        MemoryOp::Mmap {
            addr,
            len,
            prot: rw,
            flags: anon_flags as u32,
        },
    )?;
    let Outcome::Return(start) = mapped else {
        return Err(SysError::fatal("runtime bug: mmap returned no address"));
    };
    let start = start as u64;
    let want = len.min(size.saturating_sub(offset));
    let mut done = 0u64;
    while done < want {
        let n = match &storage_file {
            Some(file) => super::file::read_at(rt, file, start + done, want - done, offset + done),
            // Safety: reads the application's file into the mapping just
            // made for it, which is writable; the kernel serves its faults.
            None => returned(unsafe {
                crate::host::raw_syscall(
                    libc::SYS_pread64 as u64,
                    [fd, start + done, want - done, offset + done, 0, 0],
                )
            })
            .map(|read| match read {
                Outcome::Return(n) => n,
                _ => 0,
            }),
        };
        match n {
            Err(SysError::Errno(Errno::EINTR)) => continue,
            Err(SysError::Fatal(why)) => return Err(SysError::Fatal(why)),
            Ok(n) if n > 0 => done += n as u64,
            _ => break,
        }
    }
    if prot as u32 != rw {
        memory_call(
            rt,
            MemoryOp::Mprotect {
                addr: start,
                len,
                prot: prot as u32,
            },
        )?;
    }
    Ok(mapped)
}

pub fn munmap(cx: &mut Ctx, c: &Call) -> SysResult {
    memory_call(
        cx.rt,
        MemoryOp::Munmap {
            addr: c.args[0],
            len: c.args[1],
        },
    )
}

pub fn mprotect(cx: &mut Ctx, c: &Call) -> SysResult {
    split_call(cx.rt, c, |addr, len| MemoryOp::Mprotect {
        addr,
        len,
        prot: c.args[2] as u32,
    })
}

pub fn pkey_mprotect(cx: &mut Ctx, c: &Call) -> SysResult {
    if c.args[3] as i64 != -1 {
        return Err(Errno::EINVAL.into());
    }
    mprotect(cx, c)
}

pub fn mremap(cx: &mut Ctx, c: &Call) -> SysResult {
    let rt = cx.rt;
    let [old_addr, old_len, new_len, flags, new_addr, _] = c.args;
    let touches = |start: u64, len: u64| {
        rt.mm
            .arena
            .touches_host_shared(start, start.saturating_add(len.max(1)).min(USER_END))
    };
    if touches(old_addr, old_len)
        || (flags & libc::MREMAP_FIXED as u64 != 0 && touches(new_addr, new_len))
    {
        tracing::warn!("mremap of a shared host mapping at {old_addr:#x} refused with EINVAL");
        return Err(Errno::EINVAL.into());
    }
    memory_call(
        rt,
        MemoryOp::Mremap {
            old_addr: c.args[0],
            old_len: c.args[1],
            new_len: c.args[2],
            flags: c.args[3] as u32,
            new_addr: c.args[4],
        },
    )
}

pub fn brk(cx: &mut Ctx, c: &Call) -> SysResult {
    memory_call(cx.rt, MemoryOp::Brk { addr: c.args[0] })
}

pub fn madvise(cx: &mut Ctx, c: &Call) -> SysResult {
    split_call(cx.rt, c, |addr, len| MemoryOp::Madvise {
        addr,
        len,
        advice: c.args[2] as u32,
    })
}

pub fn accept_noop(_cx: &mut Ctx, _c: &Call) -> SysResult {
    ok(0)
}
