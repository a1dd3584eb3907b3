//! The files of /proc the runtime serves itself, because the host's would
//! describe the runtime process rather than the program: its command line,
//! environment, auxiliary vector and memory map; and those it refuses,
//! because they would show the runtime's own memory.

use super::Runtime;
use lego_proto::{FileType, USER_END, USER_MIN};

/// What follows `/proc/<this process>/` (or `/proc/self/`,
/// `/proc/thread-self/`, and a `task/<tid>/` of this process) in `abs`.
fn own_file(abs: &[u8]) -> Option<&[u8]> {
    let rest = abs.strip_prefix(b"/proc/")?;
    let (who, what) = rest.split_at(rest.iter().position(|&b| b == b'/')?);
    let own = std::process::id().to_string();
    if who == b"thread-self" {
        return Some(what);
    }
    if who != b"self" && who != own.as_bytes() {
        return None;
    }
    // task/<tid>/...: a thread of this process sees the same.
    if let Some(task) = what.strip_prefix(b"/task/") {
        let slash = task.iter().position(|&b| b == b'/')?;
        let tid = std::str::from_utf8(&task[..slash]).ok()?;
        let ours = std::path::Path::new(&format!("/proc/self/task/{tid}")).exists();
        return ours.then_some(&task[slash..]);
    }
    Some(what)
}

/// Whether `abs` is a /proc file of this process that would show the
/// runtime's memory rather than the program's (its raw memory, page map,
/// per-mapping statistics): refused with EACCES, as for a process one may
/// not trace.
pub fn refused(abs: &[u8]) -> bool {
    matches!(
        own_file(abs),
        Some(b"/mem" | b"/pagemap" | b"/smaps" | b"/smaps_rollup" | b"/numa_maps")
    )
}

/// The contents of `abs` if the runtime serves it.
pub fn serve(rt: &Runtime, abs: &[u8]) -> Option<Vec<u8>> {
    if abs == b"/proc/meminfo" {
        return Some(meminfo(rt));
    }
    let what = own_file(abs)?;
    let view = rt.process.lock().unwrap_or_else(|p| p.into_inner());
    match what {
        b"/cmdline" => Some(view.cmdline.clone()),
        b"/environ" => Some(view.environ.clone()),
        b"/auxv" => Some(view.auxv.clone()),
        b"/maps" => Some(maps(view.stack_top)),
        b"/status" => Some(status()),
        b"/stat" => Some(stat()),
        _ => None,
    }
}

/// The entries of a directory the runtime serves, if `abs` is one:
/// /proc/self/fd lists the program's descriptors, not the runtime's.
pub fn listing(rt: &Runtime, abs: &[u8]) -> Option<Vec<crate::vfs::Entry>> {
    let own = format!("/proc/{}/fd", std::process::id());
    if abs != b"/proc/self/fd" && abs != own.as_bytes() && abs != b"/proc/thread-self/fd" {
        return None;
    }
    let mut fds: Vec<u64> = std::fs::read_dir("/proc/thread-self/fd")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| !rt.is_runtime_fd(fd))
        .collect();
    fds.sort_unstable();
    // The listing's own descriptor was open while it was read; drop it if
    // it is gone now.
    // Safety: F_GETFD only queries the descriptor table.
    fds.retain(|&fd| unsafe { libc::fcntl(fd as i32, libc::F_GETFD) } >= 0);
    let mut entries = vec![
        (b".".to_vec(), FileType::Directory),
        (b"..".to_vec(), FileType::Directory),
    ];
    entries.extend(
        fds.into_iter()
            .map(|fd| (fd.to_string().into_bytes(), FileType::Symlink)),
    );
    Some(entries)
}

/// Bytes the program has mapped (the arena's accessible ranges).
fn mapped_bytes() -> u64 {
    std::fs::read_to_string("/proc/thread-self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let (start, end) = (
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            );
            (start >= USER_MIN && end <= USER_END && !perms.starts_with("---"))
                .then_some(end - start)
        })
        .sum()
}

/// The host's status of this process, with the virtual size the program's
/// rather than the runtime's (whose arena reservation spans 64 TiB).
fn status() -> Vec<u8> {
    let vm = mapped_bytes() / 1024;
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .map(|line| match line.split_once(':') {
            Some(("VmPeak" | "VmSize", _)) => {
                format!("{}:\t{vm:>8} kB\n", line.split(':').next().unwrap_or(""))
            }
            _ => format!("{line}\n"),
        })
        .collect::<String>()
        .into_bytes()
}

/// The host's stat line of this process, with the program's virtual size.
fn stat() -> Vec<u8> {
    let line = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((head, rest)) = line.rsplit_once(") ") else {
        return line.into_bytes();
    };
    let mut fields: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
    // Field 23 of the line (vsize) is the 21st after the command name.
    if let Some(vsize) = fields.get_mut(20) {
        *vsize = mapped_bytes().to_string();
    }
    format!("{head}) {}\n", fields.join(" ")).into_bytes()
}

/// The program's mappings: the arena ranges the host maps accessible (they
/// mirror the memory manager's mappings) plus the vDSO the program shares
/// with the runtime. PROT_NONE mappings of the program cannot be told from
/// the arena's reservation and are left out.
fn maps(stack_top: u64) -> Vec<u8> {
    let host = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out = String::new();
    for line in host.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let shared =
            line.ends_with("[vdso]") || line.ends_with("[vvar]") || line.ends_with("[vsyscall]");
        let in_arena = start >= USER_MIN && end <= USER_END && !perms.starts_with("---");
        if !(in_arena || shared) {
            continue;
        }
        let name = if shared {
            line.rsplit(' ').next().unwrap_or("")
        } else if end == stack_top {
            "[stack]"
        } else {
            ""
        };
        out.push_str(&format!("{start:08x}-{end:08x} {perms} 00000000 00:00 0"));
        if !name.is_empty() {
            out.push_str(&format!("{:>width$}{name}", "", width = 19));
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// /proc/meminfo as the program's memory really is: the home memory
/// manager's pool is its RAM, the ExCache its cache on this processor.
fn meminfo(rt: &Runtime) -> Vec<u8> {
    let view = rt.process.lock().unwrap_or_else(|p| p.into_inner());
    let stats = rt.mm.cache.stats();
    let kib = |b: u64| b / 1024;
    let lines = [
        ("MemTotal", kib(view.memory_capacity)),
        ("MemFree", kib(view.memory_available)),
        ("MemAvailable", kib(view.memory_available)),
        ("Buffers", 0),
        ("Cached", 0),
        ("SwapCached", 0),
        ("SwapTotal", 0),
        ("SwapFree", 0),
        ("ExCacheTotal", kib(stats.quota_bytes)),
        ("ExCacheResident", kib(rt.mm.cache.resident_bytes())),
    ];
    lines
        .iter()
        .map(|(name, value)| format!("{:<16}{value:>8} kB\n", format!("{name}:")))
        .collect::<String>()
        .into_bytes()
}

/// sysinfo(2) with the same figures for RAM and swap (the rest is the
/// host's: uptime, load, process count).
pub fn sysinfo(rt: &Runtime, info: &mut libc::sysinfo) {
    let view = rt.process.lock().unwrap_or_else(|p| p.into_inner());
    info.totalram = view.memory_capacity;
    info.freeram = view.memory_available;
    info.sharedram = 0;
    info.bufferram = 0;
    info.totalswap = 0;
    info.freeswap = 0;
    info.totalhigh = 0;
    info.freehigh = 0;
    info.mem_unit = 1;
}
