//! The files of /proc the runtime serves itself, because the host's would
//! describe the runtime process rather than the program: its command line,
//! its auxiliary vector, and its memory map.

use crate::Runtime;
use lego_proto::{USER_END, USER_MIN};

/// What the program looks like from /proc.
#[derive(Default)]
pub struct ProcessView {
    /// argv, each NUL-terminated.
    pub cmdline: Vec<u8>,
    /// The auxiliary vector given to the program.
    pub auxv: Vec<u8>,
    pub stack_top: u64,
    /// The home memory manager's pool, and what was unpromised of it when
    /// the process was placed.
    pub memory_capacity: u64,
    pub memory_available: u64,
}

/// The contents of `abs` if the runtime serves it.
pub fn serve(rt: &Runtime, abs: &[u8]) -> Option<Vec<u8>> {
    if abs == b"/proc/meminfo" {
        return Some(meminfo(rt));
    }
    let rest = abs.strip_prefix(b"/proc/")?;
    let (who, what) = rest.split_at(rest.iter().position(|&b| b == b'/')?);
    let own = std::process::id().to_string();
    if who != b"self" && who != own.as_bytes() && who != b"thread-self" {
        return None;
    }
    let view = rt.process.lock().unwrap_or_else(|p| p.into_inner());
    match what {
        b"/cmdline" => Some(view.cmdline.clone()),
        b"/auxv" => Some(view.auxv.clone()),
        b"/maps" => Some(maps(view.stack_top)),
        _ => None,
    }
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
    let stats = rt.cache.stats();
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
        ("ExCacheResident", kib(rt.cache.resident_bytes())),
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
