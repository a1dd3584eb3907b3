//! Differential test: the same mmap/munmap/mprotect/mremap/madvise calls,
//! with fixed addresses, applied to an `AddressSpace` and to this very
//! process (inside a region the test reserves), must give the same results,
//! the same layout (from /proc/self/maps, adjacent ranges with equal
//! protections merged on both sides, since Linux's merging also depends on
//! things the model does not have) and the same page contents.
//!
//! The region sits far below where the kernel places anything on its own,
//! so nothing else in the process lands in it; guard pages around it stay
//! mapped `PROT_NONE` so no call can grow out of it.

use lego_memory::pool::{PagePool, PAGE};
use lego_memory::vma::{AddressSpace, Vma};
use std::fs;

const REGION: u64 = 0x3000_0000_0000;
const PAGES: u64 = 32;
const REGION_END: u64 = REGION + PAGES * PAGE;
const GUARD_START: u64 = REGION - PAGE;
const GUARD_END: u64 = REGION_END + PAGE;

const R: u32 = libc::PROT_READ as u32;
const W: u32 = libc::PROT_WRITE as u32;
const X: u32 = libc::PROT_EXEC as u32;
const PROTS: [u32; 5] = [0, R, R | W, R | X, R | W | X];
const ANON: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
const FIXED: u32 = ANON | libc::MAP_FIXED as u32;
const NOREPLACE: u32 = ANON | libc::MAP_FIXED_NOREPLACE as u32;
const MAYMOVE: u32 = libc::MREMAP_MAYMOVE as u32;
const MFIXED: u32 = libc::MREMAP_FIXED as u32;
const DONTUNMAP: u32 = libc::MREMAP_DONTUNMAP as u32;

#[derive(Debug, Clone, Copy)]
enum Op {
    Mmap {
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    Mprotect {
        addr: u64,
        len: u64,
        prot: u32,
    },
    Mremap {
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new: u64,
    },
    DontNeed {
        addr: u64,
        len: u64,
    },
    /// Write a byte at the start of a page (only generated for writable pages).
    Write {
        addr: u64,
        byte: u8,
    },
}

/// Result of a raw syscall: the value, or `-errno`.
fn raw(ret: libc::c_long) -> i64 {
    if ret == -1 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        ret
    }
}

fn native(op: Op) -> i64 {
    // Safety (every call below): the addresses are inside the reserved
    // region and its guards, which this test owns; no Rust object lives
    // there, so remapping or writing it cannot invalidate any reference.
    unsafe {
        match op {
            Op::Mmap {
                addr,
                len,
                prot,
                flags,
            } => raw(libc::syscall(
                libc::SYS_mmap,
                addr,
                len,
                prot,
                flags,
                -1i64,
                0u64,
            )),
            Op::Munmap { addr, len } => raw(libc::syscall(libc::SYS_munmap, addr, len)),
            Op::Mprotect { addr, len, prot } => {
                raw(libc::syscall(libc::SYS_mprotect, addr, len, prot))
            }
            Op::Mremap {
                old,
                old_len,
                new_len,
                flags,
                new,
            } => raw(libc::syscall(
                libc::SYS_mremap,
                old,
                old_len,
                new_len,
                flags,
                new,
            )),
            Op::DontNeed { addr, len } => raw(libc::syscall(
                libc::SYS_madvise,
                addr,
                len,
                libc::MADV_DONTNEED,
            )),
            Op::Write { addr, byte } => {
                std::ptr::write_volatile(addr as *mut u8, byte);
                0
            }
        }
    }
}

fn model(space: &mut AddressSpace, pool: &mut PagePool, op: Op) -> i64 {
    let outcome = match op {
        Op::Mmap {
            addr,
            len,
            prot,
            flags,
        } => space.mmap(pool, addr, len, prot, flags),
        Op::Munmap { addr, len } => space.munmap(pool, addr, len),
        Op::Mprotect { addr, len, prot } => space.mprotect(pool, addr, len, prot),
        Op::Mremap {
            old,
            old_len,
            new_len,
            flags,
            new,
        } => space.mremap(pool, old, old_len, new_len, flags, new),
        Op::DontNeed { addr, len } => space.madvise(pool, addr, len, libc::MADV_DONTNEED as u32),
        Op::Write { addr, byte } => {
            let mut page = [0u8; PAGE as usize];
            page[0] = byte;
            assert!(space.store_page(pool, addr, &page));
            return 0;
        }
    };
    match outcome.result {
        Ok(v) => v as i64,
        Err(e) => -i64::from(e.0),
    }
}

/// Native VMAs overlapping the guarded region, unmerged: (start, end, prot).
fn native_vmas() -> Vec<(u64, u64, u32)> {
    let maps = fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if e <= GUARD_START || s >= GUARD_END {
            continue;
        }
        let b = perms.as_bytes();
        let prot = if b[0] == b'r' { R } else { 0 }
            | if b[1] == b'w' { W } else { 0 }
            | if b[2] == b'x' { X } else { 0 };
        out.push((s.max(GUARD_START), e.min(GUARD_END), prot));
    }
    out
}

fn model_vmas(space: &AddressSpace) -> Vec<(u64, u64, u32)> {
    space
        .vmas()
        .filter(|v| v.end > GUARD_START && v.start < GUARD_END)
        .map(|v| (v.start.max(GUARD_START), v.end.min(GUARD_END), v.prot))
        .collect()
}

fn merged(vmas: Vec<(u64, u64, u32)>) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    for v in vmas {
        match out.last_mut() {
            Some(last) if last.1 == v.0 && last.2 == v.2 => last.1 = v.1,
            _ => out.push(v),
        }
    }
    out
}

struct Harness {
    space: AddressSpace,
    pool: PagePool,
    log: Vec<String>,
}

impl Harness {
    /// Both sides with the guarded region mapped `PROT_NONE`; dropping the
    /// harness unmaps it.
    fn new() -> Harness {
        let reserve = Op::Mmap {
            addr: GUARD_START,
            len: GUARD_END - GUARD_START,
            prot: 0,
            flags: FIXED | libc::MAP_NORESERVE as u32,
        };
        assert_eq!(
            native(reserve),
            GUARD_START as i64,
            "cannot reserve the test region"
        );
        let mut h = Harness {
            space: AddressSpace::new(0x40_0000),
            pool: PagePool::new(1 << 30),
            log: Vec::new(),
        };
        assert_eq!(
            model(&mut h.space, &mut h.pool, reserve),
            GUARD_START as i64
        );
        h
    }

    fn apply(&mut self, op: Op) -> i64 {
        let want = native(op);
        let got = model(&mut self.space, &mut self.pool, op);
        self.log.push(format!("{op:x?} -> {want:#x}"));
        assert_eq!(
            got,
            want,
            "result differs; ops so far:\n{}",
            self.log.join("\n")
        );
        self.compare();
        want
    }

    fn compare(&self) {
        if let Err(broken) = self.space.check_invariants() {
            panic!("{broken}; ops so far:\n{}", self.log.join("\n"));
        }
        let native = merged(native_vmas());
        let model = merged(model_vmas(&self.space));
        assert_eq!(
            model,
            native,
            "layout differs; ops so far:\n{}",
            self.log.join("\n")
        );
        for &(start, end, prot) in &model {
            if prot & R == 0 {
                continue;
            }
            for addr in (start..end).step_by(PAGE as usize) {
                // Safety: the page is mapped readable natively (the layouts
                // match) and inside the test's region.
                let native_byte = unsafe { std::ptr::read_volatile(addr as *const u8) };
                let model_byte = self.space.page(addr).map_or(0, |id| self.pool.get(id)[0]);
                assert_eq!(
                    model_byte,
                    native_byte,
                    "contents of {addr:#x} differ; ops so far:\n{}",
                    self.log.join("\n")
                );
            }
        }
    }

    /// The model VMA clipped to the region that contains `addr`, if the
    /// native VMA containing `addr` covers the same range.
    fn common_vma(&self, addr: u64) -> Option<(u64, u64, Vma)> {
        let v = *self.space.find(addr)?;
        let (start, end) = (v.start.max(REGION), v.end.min(REGION_END));
        let (ns, ne, _) = native_vmas()
            .into_iter()
            .find(|&(s, e, _)| s <= addr && addr < e)?;
        Some((start.max(ns), end.min(ne), v))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        native(Op::Munmap {
            addr: GUARD_START,
            len: GUARD_END - GUARD_START,
        });
    }
}

/// The differential tests share one region, so they run one after another.
static REGION_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn at(page: u64) -> u64 {
    REGION + page * PAGE
}

#[test]
fn scripted_sequences_match_linux() {
    let _guard = REGION_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::new();
    let ops = [
        Op::Mmap {
            addr: at(0),
            len: 8 * PAGE,
            prot: R | W,
            flags: FIXED,
        },
        Op::Write {
            addr: at(1),
            byte: 1,
        },
        Op::Write {
            addr: at(5),
            byte: 5,
        },
        Op::Mprotect {
            addr: at(2),
            len: 2 * PAGE,
            prot: R,
        },
        Op::Munmap {
            addr: at(3),
            len: PAGE,
        },
        // Partial mprotect: the hole at page 3 stops it after page 2.
        Op::Mprotect {
            addr: at(1),
            len: 4 * PAGE,
            prot: R | X,
        },
        Op::Mprotect {
            addr: at(3),
            len: PAGE,
            prot: R,
        },
        Op::Mmap {
            addr: at(3),
            len: PAGE,
            prot: R,
            flags: NOREPLACE,
        },
        Op::Mmap {
            addr: at(3),
            len: PAGE,
            prot: R,
            flags: NOREPLACE,
        },
        Op::Mmap {
            addr: at(3) + 1,
            len: PAGE,
            prot: 0,
            flags: FIXED,
        },
        Op::Mmap {
            addr: at(3),
            len: PAGE,
            prot: 0,
            flags: FIXED | 1,
        },
        // Move pages 4..8 over 10..14, then grow in place, then shrink.
        Op::Mremap {
            old: at(4),
            old_len: 4 * PAGE,
            new_len: 4 * PAGE,
            flags: MAYMOVE | MFIXED,
            new: at(10),
        },
        Op::Munmap {
            addr: at(14),
            len: 4 * PAGE,
        },
        Op::Mremap {
            old: at(10),
            old_len: 4 * PAGE,
            new_len: 6 * PAGE,
            flags: 0,
            new: 0,
        },
        Op::Mremap {
            old: at(10),
            old_len: 6 * PAGE,
            new_len: 2 * PAGE,
            flags: 0,
            new: 0,
        },
        Op::Mremap {
            old: at(10),
            old_len: 2 * PAGE,
            new_len: 3 * PAGE,
            flags: 0,
            new: 0,
        },
        Op::Mremap {
            old: at(0),
            old_len: PAGE,
            new_len: PAGE,
            flags: MAYMOVE | MFIXED | DONTUNMAP,
            new: at(20),
        },
        Op::Mremap {
            old: at(17),
            old_len: PAGE,
            new_len: 2 * PAGE,
            flags: 0,
            new: 0,
        },
        Op::Mremap {
            old: at(10),
            old_len: 2 * PAGE,
            new_len: 2 * PAGE,
            flags: MAYMOVE | MFIXED,
            new: at(11),
        },
        Op::Write {
            addr: at(10),
            byte: 7,
        },
        Op::DontNeed {
            addr: at(9),
            len: 3 * PAGE,
        },
        Op::Munmap {
            addr: at(0),
            len: 1,
        },
        Op::Munmap {
            addr: at(0) + 1,
            len: PAGE,
        },
        Op::Mprotect {
            addr: at(30),
            len: PAGE,
            prot: R,
        },
    ];
    for op in ops {
        h.apply(op);
    }
    assert_eq!(h.log.len(), ops.len());
}

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_op(h: &Harness, rng: &mut Rng) -> Option<Op> {
    let page = rng.below(PAGES);
    let len = (1 + rng.below(PAGES - page)) * PAGE;
    let addr = at(page);
    let prot = PROTS[rng.below(PROTS.len() as u64) as usize];
    Some(match rng.below(100) {
        0..=17 => Op::Mmap {
            addr,
            len,
            prot,
            flags: FIXED,
        },
        18..=21 => Op::Mmap {
            addr,
            len,
            prot,
            flags: NOREPLACE,
        },
        22..=35 => Op::Munmap { addr, len },
        36..=53 => Op::Mprotect { addr, len, prot },
        54..=57 => Op::DontNeed { addr, len },
        58..=59 => match rng.below(3) {
            0 => Op::Munmap {
                addr: addr + 1,
                len,
            },
            1 => Op::Mprotect { addr, len: 0, prot },
            _ => Op::Mmap {
                addr: addr + 8,
                len,
                prot,
                flags: FIXED,
            },
        },
        60..=74 => {
            let vma = h.space.find(addr)?;
            if vma.prot & W == 0 {
                return None;
            }
            Op::Write {
                addr,
                byte: 1 + rng.below(255) as u8,
            }
        }
        _ => {
            let Some((start, end, _)) = h.common_vma(addr) else {
                // An unmapped start: EFAULT on both sides.
                return Some(Op::Mremap {
                    old: addr,
                    old_len: PAGE,
                    new_len: 2 * PAGE,
                    flags: 0,
                    new: 0,
                });
            };
            let old = start + rng.below((end - start) / PAGE) * PAGE;
            let old_len = (1 + rng.below((end - old) / PAGE)) * PAGE;
            let room = (REGION_END - old) / PAGE;
            let new_len = (1 + rng.below(room)) * PAGE;
            let new = at(rng.below(PAGES));
            let fits = |len: u64| new + len <= REGION_END;
            match rng.below(4) {
                0 | 1 => Op::Mremap {
                    old,
                    old_len,
                    new_len,
                    flags: 0,
                    new: 0,
                },
                2 if fits(new_len) => Op::Mremap {
                    old,
                    old_len,
                    new_len,
                    flags: MAYMOVE | MFIXED,
                    new,
                },
                3 if fits(old_len) => Op::Mremap {
                    old,
                    old_len,
                    new_len: old_len,
                    flags: MAYMOVE | MFIXED | DONTUNMAP,
                    new,
                },
                _ => return None,
            }
        }
    })
}

#[test]
fn random_sequences_match_linux() {
    let _guard = REGION_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for seed in 1..=200u64 {
        let mut h = Harness::new();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        h.log.push(format!("seed {seed}"));
        let mut applied = 0;
        while applied < 80 {
            if let Some(op) = random_op(&h, &mut rng) {
                let result = h.apply(op);
                *seen.entry(outcome_kind(op, result)).or_default() += 1;
                applied += 1;
            }
        }
    }
    // The generator must reach the interesting cases, or the comparison
    // proves little.
    for kind in [
        "mmap ok",
        "mmap -17",
        "mmap -22",
        "munmap ok",
        "mprotect ok",
        "mprotect -12",
        "mremap in place",
        "mremap moved",
        "mremap -12",
        "mremap -14",
        "mremap -22",
        "madvise ok",
        "madvise -12",
    ] {
        assert!(
            seen.get(kind).is_some_and(|&n| n >= 5),
            "{kind} seen {:?} times: {seen:?}",
            seen.get(kind)
        );
    }
}

fn outcome_kind(op: Op, result: i64) -> String {
    let name = match op {
        Op::Mmap { .. } => "mmap",
        Op::Munmap { .. } => "munmap",
        Op::Mprotect { .. } => "mprotect",
        Op::Mremap { .. } => "mremap",
        Op::DontNeed { .. } => "madvise",
        Op::Write { .. } => "write",
    };
    match op {
        _ if result < 0 => format!("{name} {result}"),
        Op::Mremap { old, .. } if result as u64 == old => format!("{name} in place"),
        Op::Mremap { .. } => format!("{name} moved"),
        _ => format!("{name} ok"),
    }
}
