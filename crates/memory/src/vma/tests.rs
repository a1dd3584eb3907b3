//! Unit tests of the address-space rules, one group per call.

use super::mmap::*;
use super::mremap::*;
use super::*;

const RW: u32 = PROT_READ | PROT_WRITE;
const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const FIXED: u32 = ANON | MAP_FIXED;
const MIB: u64 = 1 << 20;
const BASE: u64 = 0x1000_0000;

fn setup(capacity: u64) -> (AddressSpace, PagePool) {
    (AddressSpace::new(0x40_0000), PagePool::new(capacity))
}

fn ok(outcome: Outcome) -> (u64, Vec<RangeChange>) {
    match outcome.result {
        Ok(v) => (v, outcome.changes),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

fn errno(outcome: Outcome) -> i32 {
    match outcome.result {
        Err(e) => e.0,
        Ok(v) => panic!("unexpected success {v:#x}"),
    }
}

fn write(space: &mut AddressSpace, pool: &mut PagePool, addr: u64, byte: u8) {
    assert!(space.store_page(pool, addr, &[byte; PAGE as usize]));
}

fn byte_at(space: &AddressSpace, pool: &PagePool, addr: u64) -> Option<u8> {
    space.page(addr).map(|id| pool.get(id)[0])
}

/// (start, end, prot) of every VMA.
fn layout(space: &AddressSpace) -> Vec<(u64, u64, u32)> {
    space.check_invariants().unwrap();
    space.vmas().map(|v| (v.start, v.end, v.prot)).collect()
}

fn mapped(start: u64, end: u64, prot: u32, discard: bool) -> RangeChange {
    RangeChange {
        start,
        end,
        state: RangeState::Mapped {
            prot,
            populated: false,
        },
        discard,
    }
}

fn unmapped(start: u64, end: u64, discard: bool) -> RangeChange {
    RangeChange {
        start,
        end,
        state: RangeState::Unmapped,
        discard,
    }
}

// --- mmap ---

#[test]
fn mmap_places_top_down_below_mmap_base_and_merges() {
    let (mut s, mut p) = setup(64 * MIB);
    let (a, changes) = ok(s.mmap(&mut p, 0, 3 * PAGE, RW, ANON));
    assert_eq!(a, MMAP_BASE - 3 * PAGE);
    assert_eq!(changes, vec![mapped(a, MMAP_BASE, RW, false)]);
    let (b, _) = ok(s.mmap(&mut p, 0, 5000, RW, ANON));
    assert_eq!(b, a - 2 * PAGE, "length rounds up to pages");
    assert_eq!(
        layout(&s),
        vec![(b, MMAP_BASE, RW)],
        "equal neighbours merge"
    );
    assert_eq!(p.committed(), 5 * PAGE);
    assert_eq!(s.committed(), 5 * PAGE);
    let (c, _) = ok(s.mmap(&mut p, 0, PAGE, PROT_READ, ANON));
    assert_eq!(c, b - PAGE);
    assert_eq!(
        p.committed(),
        5 * PAGE,
        "read-only mappings are not charged"
    );
    assert_eq!(layout(&s).len(), 2);
}

#[test]
fn mmap_rejects_bad_arguments_like_linux() {
    let (mut s, mut p) = setup(64 * MIB);
    let cases = [
        (0, 0, RW, ANON, libc::EINVAL),
        (0, PAGE, RW, MAP_ANONYMOUS, libc::EINVAL),
        (0, PAGE, RW, MAP_ANONYMOUS | 0x04, libc::EINVAL),
        (0, PAGE, RW, MAP_ANONYMOUS | 0x0f, libc::EINVAL),
        (0, PAGE, 0x10, ANON, libc::EINVAL),
        (0, PAGE, RW, MAP_PRIVATE, libc::ENODEV),
        (0, u64::MAX - 10, RW, ANON, libc::ENOMEM),
        (0, USER_END, RW, ANON, libc::ENOMEM),
        (BASE + 1, PAGE, RW, FIXED, libc::EINVAL),
        (USER_END - PAGE, 2 * PAGE, RW, FIXED, libc::ENOMEM),
        (0x1000, PAGE, RW, FIXED, libc::EPERM),
        (
            BASE,
            PAGE,
            RW,
            libc::MAP_SHARED_VALIDATE as u32 | MAP_ANONYMOUS,
            libc::EINVAL,
        ),
        (
            0,
            PAGE,
            RW,
            MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN,
            libc::EINVAL,
        ),
    ];
    for (addr, len, prot, flags, expected) in cases {
        let got = errno(s.mmap(&mut p, addr, len, prot, flags));
        assert_eq!(
            got, expected,
            "mmap({addr:#x}, {len:#x}, {prot:#x}, {flags:#x})"
        );
    }
    assert!(layout(&s).is_empty());
    assert_eq!(p.committed(), 0);
}

#[test]
fn mmap_accepts_sharing_and_hint_flags() {
    let (mut s, mut p) = setup(64 * MIB);
    for flags in [
        MAP_SHARED | MAP_ANONYMOUS,
        ANON | libc::MAP_NORESERVE as u32 | libc::MAP_POPULATE as u32,
        ANON | libc::MAP_STACK as u32 | MAP_GROWSDOWN,
        ANON | libc::MAP_HUGETLB as u32 | libc::MAP_LOCKED as u32 | libc::MAP_NONBLOCK as u32,
    ] {
        ok(s.mmap(&mut p, 0, PAGE, RW, flags));
    }
    assert_eq!(p.committed(), 4 * PAGE, "MAP_NORESERVE is still charged");
}

#[test]
fn mmap_fixed_replaces_and_discards() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 4 * PAGE, RW, FIXED));
    write(&mut s, &mut p, BASE + PAGE, 1);
    write(&mut s, &mut p, BASE + 2 * PAGE, 2);
    let (a, changes) = ok(s.mmap(&mut p, BASE + PAGE, PAGE, PROT_READ, FIXED));
    assert_eq!(a, BASE + PAGE);
    assert_eq!(
        changes,
        vec![mapped(BASE + PAGE, BASE + 2 * PAGE, PROT_READ, true)]
    );
    assert_eq!(
        layout(&s),
        vec![
            (BASE, BASE + PAGE, RW),
            (BASE + PAGE, BASE + 2 * PAGE, PROT_READ),
            (BASE + 2 * PAGE, BASE + 4 * PAGE, RW)
        ]
    );
    assert_eq!(byte_at(&s, &p, BASE + PAGE), None, "replaced page dropped");
    assert_eq!(byte_at(&s, &p, BASE + 2 * PAGE), Some(2));
    assert_eq!(p.used(), PAGE);
    assert_eq!(p.committed(), 3 * PAGE);
}

#[test]
fn mmap_fixed_noreplace_refuses_overlap() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 2 * PAGE, RW, FIXED));
    let noreplace = ANON | MAP_FIXED_NOREPLACE;
    assert_eq!(
        errno(s.mmap(&mut p, BASE + PAGE, 2 * PAGE, RW, noreplace)),
        libc::EEXIST
    );
    assert_eq!(
        errno(s.mmap(&mut p, BASE + 1, PAGE, RW, noreplace)),
        libc::EINVAL
    );
    let (a, _) = ok(s.mmap(&mut p, BASE + 2 * PAGE, PAGE, RW, noreplace));
    assert_eq!(a, BASE + 2 * PAGE);
}

#[test]
fn mmap_hint_is_used_when_free() {
    let (mut s, mut p) = setup(64 * MIB);
    let (a, _) = ok(s.mmap(&mut p, BASE + 123, PAGE, RW, ANON));
    assert_eq!(a, BASE, "hint rounded down to a page");
    let (b, _) = ok(s.mmap(&mut p, BASE, PAGE, RW, ANON));
    assert_eq!(
        b,
        MMAP_BASE - PAGE,
        "an occupied hint falls back to top-down"
    );
    let (c, _) = ok(s.mmap(&mut p, 0x100, PAGE, RW, ANON));
    assert_eq!(c, USER_MIN, "a hint below USER_MIN rounds up to it");
}

#[test]
fn mmap_32bit_allocates_below_2g() {
    let (mut s, mut p) = setup(64 * MIB);
    let (a, _) = ok(s.mmap(&mut p, 0, PAGE, RW, ANON | MAP_32BIT));
    assert_eq!(a, LIMIT_32BIT - PAGE);
    let (b, _) = ok(s.mmap(&mut p, 0x1_0000_0000, PAGE, RW, ANON | MAP_32BIT));
    assert!(b < LIMIT_32BIT, "a hint above 2 GiB is ignored");
}

#[test]
fn mmap_without_a_fitting_gap_fails_and_changes_nothing() {
    let (mut s, mut p) = setup(64 * MIB);
    // PROT_NONE reservations are not charged, so they can cover everything.
    ok(s.mmap(&mut p, USER_MIN, MMAP_BASE - USER_MIN - PAGE, 0, FIXED));
    ok(s.mmap(&mut p, MMAP_BASE, USER_END - MMAP_BASE - 3 * PAGE, 0, FIXED));
    let before = layout(&s);
    assert_eq!(errno(s.mmap(&mut p, 0, 4 * PAGE, RW, ANON)), libc::ENOMEM);
    assert_eq!(layout(&s), before);
    // The last gap (above MMAP_BASE) is found by the bottom-up fallback.
    let (a, _) = ok(s.mmap(&mut p, 0, 3 * PAGE, RW, ANON));
    assert_eq!(a, USER_END - 3 * PAGE);
    let (b, _) = ok(s.mmap(&mut p, 0, PAGE, RW, ANON));
    assert_eq!(b, MMAP_BASE - PAGE);
}

// --- munmap ---

#[test]
fn munmap_splits_skips_holes_and_frees() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 8 * PAGE, RW, FIXED));
    for i in 0..8 {
        write(&mut s, &mut p, BASE + i * PAGE, i as u8 + 1);
    }
    let (_, changes) = ok(s.munmap(&mut p, BASE + 2 * PAGE, 2 * PAGE));
    assert_eq!(
        changes,
        vec![unmapped(BASE + 2 * PAGE, BASE + 4 * PAGE, true)]
    );
    assert_eq!(
        layout(&s),
        vec![
            (BASE, BASE + 2 * PAGE, RW),
            (BASE + 4 * PAGE, BASE + 8 * PAGE, RW)
        ]
    );
    assert_eq!(p.used(), 6 * PAGE);
    assert_eq!(p.committed(), 6 * PAGE);
    // Across the hole, unaligned length rounded up.
    let (_, changes) = ok(s.munmap(&mut p, BASE + PAGE, 4 * PAGE + 1));
    assert_eq!(
        changes,
        vec![
            unmapped(BASE + PAGE, BASE + 2 * PAGE, true),
            unmapped(BASE + 4 * PAGE, BASE + 6 * PAGE, true)
        ]
    );
    assert_eq!(byte_at(&s, &p, BASE + 6 * PAGE), Some(7));
    assert_eq!(p.used(), 3 * PAGE);
    // Nothing mapped: success, no change.
    let (_, changes) = ok(s.munmap(&mut p, 0x2000_0000, PAGE));
    assert!(changes.is_empty());
}

#[test]
fn munmap_rejects_bad_arguments() {
    let (mut s, mut p) = setup(64 * MIB);
    assert_eq!(errno(s.munmap(&mut p, BASE + 1, PAGE)), libc::EINVAL);
    assert_eq!(errno(s.munmap(&mut p, BASE, 0)), libc::EINVAL);
    assert_eq!(
        errno(s.munmap(&mut p, USER_END - PAGE, 2 * PAGE)),
        libc::EINVAL
    );
    assert_eq!(errno(s.munmap(&mut p, USER_END + PAGE, PAGE)), libc::EINVAL);
    assert_eq!(errno(s.munmap(&mut p, BASE, u64::MAX)), libc::EINVAL);
}

// --- mprotect ---

#[test]
fn mprotect_splits_and_reports_changed_ranges() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 4 * PAGE, RW, FIXED));
    let (_, changes) = ok(s.mprotect(&mut p, BASE + PAGE, PAGE, PROT_READ));
    assert_eq!(
        changes,
        vec![mapped(BASE + PAGE, BASE + 2 * PAGE, PROT_READ, false)]
    );
    assert_eq!(layout(&s).len(), 3);
    assert_eq!(p.committed(), 4 * PAGE, "read-only keeps the charge");
    let (_, changes) = ok(s.mprotect(&mut p, BASE, 4 * PAGE, RW));
    assert_eq!(
        changes,
        vec![mapped(BASE + PAGE, BASE + 2 * PAGE, RW, false)]
    );
    assert_eq!(layout(&s), vec![(BASE, BASE + 4 * PAGE, RW)], "merged back");
}

#[test]
fn mprotect_argument_rules() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, PAGE, RW, FIXED));
    assert_eq!(errno(s.mprotect(&mut p, BASE + 1, PAGE, 0)), libc::EINVAL);
    assert_eq!(
        ok(s.mprotect(&mut p, BASE + 0x3000, 0, 0xff)).0,
        0,
        "len 0 succeeds"
    );
    assert_eq!(errno(s.mprotect(&mut p, BASE, PAGE, 0x10)), libc::EINVAL);
    assert_eq!(errno(s.mprotect(&mut p, BASE, u64::MAX, 0)), libc::ENOMEM);
    assert_eq!(
        errno(s.mprotect(&mut p, BASE - PAGE, 2 * PAGE, 0)),
        libc::ENOMEM
    );
    assert_eq!(
        layout(&s),
        vec![(BASE, BASE + PAGE, RW)],
        "unmapped start changes nothing"
    );
}

#[test]
fn mprotect_stops_at_a_hole_keeping_earlier_changes() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 2 * PAGE, RW, FIXED));
    ok(s.mmap(&mut p, BASE + 3 * PAGE, 2 * PAGE, RW, FIXED));
    let outcome = s.mprotect(&mut p, BASE + PAGE, 4 * PAGE, PROT_READ);
    assert_eq!(outcome.result, Err(Errno::ENOMEM));
    assert_eq!(
        outcome.changes,
        vec![mapped(BASE + PAGE, BASE + 2 * PAGE, PROT_READ, false)]
    );
    assert_eq!(
        layout(&s),
        vec![
            (BASE, BASE + PAGE, RW),
            (BASE + PAGE, BASE + 2 * PAGE, PROT_READ),
            (BASE + 3 * PAGE, BASE + 5 * PAGE, RW)
        ]
    );
}

#[test]
fn mprotect_charges_ranges_becoming_writable() {
    let (mut s, mut p) = setup(4 * PAGE);
    ok(s.mmap(&mut p, BASE, 8 * PAGE, 0, FIXED));
    assert_eq!(p.committed(), 0);
    let (_, changes) = ok(s.mprotect(&mut p, BASE, 3 * PAGE, RW));
    assert_eq!(changes.len(), 1);
    assert_eq!(p.committed(), 3 * PAGE);
    let before = layout(&s);
    assert_eq!(
        errno(s.mprotect(&mut p, BASE, 5 * PAGE, RW)),
        libc::ENOMEM,
        "5 > 4 pages"
    );
    assert_eq!(layout(&s), before, "failed charge changes nothing");
    assert_eq!(p.committed(), 3 * PAGE);
    ok(s.mprotect(&mut p, BASE, 4 * PAGE, PROT_READ | PROT_WRITE | PROT_EXEC));
    assert_eq!(p.committed(), 4 * PAGE);
    ok(s.munmap(&mut p, BASE, 8 * PAGE));
    assert_eq!(p.committed(), 0);
}

// --- mremap ---

#[test]
fn mremap_argument_rules() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 2 * PAGE, RW, FIXED));
    ok(s.mmap(&mut p, BASE + 2 * PAGE, 2 * PAGE, PROT_READ, FIXED));
    let cases = [
        (BASE, PAGE, PAGE, 8, 0, libc::EINVAL),
        (
            BASE,
            PAGE,
            PAGE,
            MREMAP_FIXED,
            BASE + 0x10_0000,
            libc::EINVAL,
        ),
        (
            BASE,
            PAGE,
            2 * PAGE,
            MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
            0,
            libc::EINVAL,
        ),
        (BASE, PAGE, PAGE, MREMAP_DONTUNMAP, 0, libc::EINVAL),
        (BASE + 1, PAGE, PAGE, 0, 0, libc::EINVAL),
        (BASE, PAGE, 0, 0, 0, libc::EINVAL),
        (BASE, 0, PAGE, MREMAP_MAYMOVE, 0, libc::EINVAL),
        (BASE - PAGE, PAGE, 2 * PAGE, MREMAP_MAYMOVE, 0, libc::EFAULT),
        (BASE, 3 * PAGE, 4 * PAGE, MREMAP_MAYMOVE, 0, libc::EFAULT),
        (
            BASE,
            PAGE,
            PAGE,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            BASE + 1,
            libc::EINVAL,
        ),
        (
            BASE,
            2 * PAGE,
            2 * PAGE,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            BASE + PAGE,
            libc::EINVAL,
        ),
        (
            BASE,
            PAGE,
            PAGE,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            USER_END,
            libc::EINVAL,
        ),
        (
            BASE,
            PAGE,
            PAGE,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            0x1000,
            libc::EPERM,
        ),
        (BASE, PAGE, 2 * PAGE, 0, 0, libc::ENOMEM),
    ];
    for (old, old_len, new_len, flags, new, expected) in cases {
        let got = errno(s.mremap(&mut p, old, old_len, new_len, flags, new));
        assert_eq!(
            got, expected,
            "mremap({old:#x}, {old_len:#x}, {new_len:#x}, {flags}, {new:#x})"
        );
    }
    assert_eq!(layout(&s).len(), 2);
}

#[test]
fn mremap_shrinks_in_place_and_grows_into_free_space() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 4 * PAGE, RW, FIXED));
    write(&mut s, &mut p, BASE + 3 * PAGE, 9);
    let (a, changes) = ok(s.mremap(&mut p, BASE, 4 * PAGE, 2 * PAGE, 0, 0));
    assert_eq!(a, BASE);
    assert_eq!(
        changes,
        vec![unmapped(BASE + 2 * PAGE, BASE + 4 * PAGE, true)]
    );
    assert_eq!(p.used(), 0);
    assert_eq!(p.committed(), 2 * PAGE);
    let (a, changes) = ok(s.mremap(&mut p, BASE, 2 * PAGE, 6 * PAGE, 0, 0));
    assert_eq!(a, BASE);
    assert_eq!(
        changes,
        vec![mapped(BASE + 2 * PAGE, BASE + 6 * PAGE, RW, false)]
    );
    assert_eq!(layout(&s), vec![(BASE, BASE + 6 * PAGE, RW)]);
    assert_eq!(p.committed(), 6 * PAGE);
    // Same size: nothing to do.
    let (a, changes) = ok(s.mremap(&mut p, BASE, 6 * PAGE, 6 * PAGE, 0, 0));
    assert_eq!((a, changes.len()), (BASE, 0));
}

#[test]
fn mremap_moves_pages_when_it_cannot_grow() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 2 * PAGE, RW, FIXED));
    ok(s.mmap(&mut p, BASE + 2 * PAGE, PAGE, PROT_READ, FIXED));
    write(&mut s, &mut p, BASE, 1);
    write(&mut s, &mut p, BASE + PAGE, 2);
    assert_eq!(
        errno(s.mremap(&mut p, BASE, 2 * PAGE, 3 * PAGE, 0, 0)),
        libc::ENOMEM
    );
    let outcome = s.mremap(&mut p, BASE, 2 * PAGE, 3 * PAGE, MREMAP_MAYMOVE, 0);
    let to = MMAP_BASE - 3 * PAGE;
    assert_eq!(outcome.result, Ok(to));
    assert_eq!(
        outcome.moves,
        vec![RangeMove {
            from: BASE,
            to,
            len: 2 * PAGE
        }]
    );
    assert_eq!(
        outcome.changes,
        vec![
            unmapped(BASE, BASE + 2 * PAGE, false),
            mapped(to, to + 3 * PAGE, RW, false)
        ]
    );
    assert_eq!(byte_at(&s, &p, to), Some(1));
    assert_eq!(byte_at(&s, &p, to + PAGE), Some(2));
    assert_eq!(byte_at(&s, &p, BASE), None);
    assert_eq!(p.committed(), 3 * PAGE);
    assert_eq!(
        layout(&s),
        vec![
            (BASE + 2 * PAGE, BASE + 3 * PAGE, PROT_READ),
            (to, to + 3 * PAGE, RW)
        ]
    );
}

#[test]
fn mremap_fixed_replaces_the_destination() {
    let (mut s, mut p) = setup(64 * MIB);
    let dest = BASE + 0x10_0000;
    ok(s.mmap(&mut p, BASE, 4 * PAGE, RW, FIXED));
    ok(s.mmap(&mut p, dest, 8 * PAGE, RW, FIXED));
    write(&mut s, &mut p, BASE, 1);
    write(&mut s, &mut p, BASE + 3 * PAGE, 4);
    write(&mut s, &mut p, dest, 7);
    write(&mut s, &mut p, dest + 5 * PAGE, 8);
    // Shrinking move: the old tail is dropped.
    let flags = MREMAP_MAYMOVE | MREMAP_FIXED;
    let outcome = s.mremap(&mut p, BASE, 4 * PAGE, 2 * PAGE, flags, dest + PAGE);
    assert_eq!(outcome.result, Ok(dest + PAGE));
    assert_eq!(
        outcome.moves,
        vec![RangeMove {
            from: BASE,
            to: dest + PAGE,
            len: 2 * PAGE
        }]
    );
    assert_eq!(
        outcome.changes,
        vec![
            unmapped(BASE, BASE + 2 * PAGE, false),
            unmapped(BASE + 2 * PAGE, BASE + 4 * PAGE, true),
            mapped(dest + PAGE, dest + 3 * PAGE, RW, false)
        ]
    );
    assert_eq!(byte_at(&s, &p, dest), Some(7));
    assert_eq!(byte_at(&s, &p, dest + PAGE), Some(1));
    assert_eq!(byte_at(&s, &p, dest + 5 * PAGE), Some(8));
    assert_eq!(p.used(), 3 * PAGE);
    assert_eq!(p.committed(), 8 * PAGE);
    assert_eq!(layout(&s), vec![(dest, dest + 8 * PAGE, RW)]);
    // Growing move onto a mapped tail: the tail is reported discarded.
    ok(s.mmap(&mut p, BASE, PAGE, RW, FIXED));
    let outcome = s.mremap(&mut p, BASE, PAGE, 2 * PAGE, flags, dest + 4 * PAGE);
    assert_eq!(
        outcome.changes.last(),
        Some(&mapped(dest + 5 * PAGE, dest + 6 * PAGE, RW, true))
    );
    assert_eq!(byte_at(&s, &p, dest + 5 * PAGE), None);
    s.check_invariants().unwrap();
}

#[test]
fn mremap_dontunmap_leaves_the_old_range_empty() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 2 * PAGE, RW, FIXED));
    write(&mut s, &mut p, BASE, 5);
    let outcome = s.mremap(
        &mut p,
        BASE,
        2 * PAGE,
        2 * PAGE,
        MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
        0,
    );
    let to = outcome.result.expect("moved");
    assert_eq!(
        outcome.changes,
        vec![
            mapped(BASE, BASE + 2 * PAGE, RW, false),
            mapped(to, to + 2 * PAGE, RW, false)
        ]
    );
    assert_eq!(byte_at(&s, &p, BASE), None);
    assert_eq!(byte_at(&s, &p, to), Some(5));
    assert_eq!(p.committed(), 4 * PAGE, "both ranges are charged");
    s.check_invariants().unwrap();
}

#[test]
fn mremap_growth_needs_commit() {
    let (mut s, mut p) = setup(4 * PAGE);
    ok(s.mmap(&mut p, BASE, 2 * PAGE, RW, FIXED));
    assert_eq!(
        errno(s.mremap(&mut p, BASE, 2 * PAGE, 5 * PAGE, 0, 0)),
        libc::ENOMEM
    );
    assert_eq!(
        errno(s.mremap(&mut p, BASE, 2 * PAGE, 5 * PAGE, MREMAP_MAYMOVE, 0)),
        libc::ENOMEM
    );
    assert_eq!(layout(&s), vec![(BASE, BASE + 2 * PAGE, RW)]);
    ok(s.mremap(&mut p, BASE, 2 * PAGE, 4 * PAGE, 0, 0));
    assert_eq!(p.committed(), 4 * PAGE);
}

// --- brk ---

#[test]
fn brk_grows_shrinks_and_refuses_collisions() {
    let (mut s, mut p) = setup(64 * MIB);
    let start = 0x40_0000;
    assert_eq!(
        ok(s.brk(&mut p, 0)).0,
        start,
        "below the start: current break"
    );
    let (b, changes) = ok(s.brk(&mut p, start + 10));
    assert_eq!(b, start + 10);
    assert_eq!(changes, vec![mapped(start, start + PAGE, RW, false)]);
    let (b, changes) = ok(s.brk(&mut p, start + 3 * PAGE));
    assert_eq!(b, start + 3 * PAGE);
    assert_eq!(
        changes,
        vec![mapped(start + PAGE, start + 3 * PAGE, RW, false)]
    );
    assert_eq!(layout(&s), vec![(start, start + 3 * PAGE, RW)]);
    write(&mut s, &mut p, start + 2 * PAGE, 1);
    let (b, changes) = ok(s.brk(&mut p, start + PAGE + 1));
    assert_eq!(b, start + PAGE + 1);
    assert_eq!(
        changes,
        vec![unmapped(start + 2 * PAGE, start + 3 * PAGE, true)]
    );
    assert_eq!(p.used(), 0);
    // A mapping one page past the new top blocks growth (guard page).
    ok(s.mmap(&mut p, start + 6 * PAGE, PAGE, PROT_READ, FIXED));
    assert_eq!(ok(s.brk(&mut p, start + 5 * PAGE + 1)).0, start + PAGE + 1);
    assert_eq!(ok(s.brk(&mut p, start + 5 * PAGE)).0, start + 5 * PAGE);
    assert_eq!(ok(s.brk(&mut p, u64::MAX)).0, start + 5 * PAGE);
}

#[test]
fn brk_fails_without_commit() {
    let (mut s, mut p) = setup(2 * PAGE);
    let start = 0x40_0000;
    assert_eq!(ok(s.brk(&mut p, start + 3 * PAGE)).0, start);
    assert_eq!(ok(s.brk(&mut p, start + 2 * PAGE)).0, start + 2 * PAGE);
    assert_eq!(p.committed(), 2 * PAGE);
}

// --- madvise ---

#[test]
fn madvise_dontneed_drops_pages() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 4 * PAGE, RW, FIXED));
    for i in 0..4 {
        write(&mut s, &mut p, BASE + i * PAGE, 1);
    }
    let (_, changes) = ok(s.madvise(&mut p, BASE + PAGE, 2 * PAGE, libc::MADV_DONTNEED as u32));
    assert_eq!(
        changes,
        vec![mapped(BASE + PAGE, BASE + 3 * PAGE, RW, true)]
    );
    assert_eq!(p.used(), 2 * PAGE);
    assert_eq!(layout(&s), vec![(BASE, BASE + 4 * PAGE, RW)], "no split");
    ok(s.madvise(&mut p, BASE, 4 * PAGE, libc::MADV_FREE as u32));
    assert_eq!(p.used(), 0);
    assert_eq!(p.committed(), 4 * PAGE, "the mapping keeps its charge");
}

#[test]
fn madvise_hints_and_refusals() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE, 2 * PAGE, RW, FIXED));
    write(&mut s, &mut p, BASE, 1);
    for advice in [
        0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 25,
    ] {
        let (r, changes) = ok(s.madvise(&mut p, BASE, 2 * PAGE, advice));
        assert_eq!((r, changes.len()), (0, 0), "advice {advice}");
    }
    assert_eq!(p.used(), PAGE);
    let dontneed = libc::MADV_DONTNEED as u32;
    assert_eq!(
        errno(s.madvise(&mut p, BASE, PAGE, libc::MADV_REMOVE as u32)),
        libc::EINVAL
    );
    assert_eq!(errno(s.madvise(&mut p, BASE, PAGE, 77)), libc::EINVAL);
    assert_eq!(errno(s.madvise(&mut p, BASE, PAGE, u32::MAX)), libc::EINVAL);
    assert_eq!(
        errno(s.madvise(&mut p, BASE + 1, PAGE, dontneed)),
        libc::EINVAL
    );
    assert_eq!(
        errno(s.madvise(&mut p, BASE, u64::MAX, dontneed)),
        libc::EINVAL
    );
    assert_eq!(ok(s.madvise(&mut p, BASE + 0x5000, 0, dontneed)).0, 0);
    assert_eq!(p.used(), PAGE);
}

#[test]
fn madvise_over_a_hole_applies_to_mapped_parts_and_reports_enomem() {
    let (mut s, mut p) = setup(64 * MIB);
    ok(s.mmap(&mut p, BASE + PAGE, PAGE, RW, FIXED));
    write(&mut s, &mut p, BASE + PAGE, 1);
    let outcome = s.madvise(&mut p, BASE, 3 * PAGE, libc::MADV_DONTNEED as u32);
    assert_eq!(outcome.result, Err(Errno::ENOMEM));
    assert_eq!(
        outcome.changes,
        vec![mapped(BASE + PAGE, BASE + 2 * PAGE, RW, true)]
    );
    assert_eq!(p.used(), 0);
    let outcome = s.madvise(&mut p, BASE, 3 * PAGE, libc::MADV_WILLNEED as u32);
    assert_eq!(
        (outcome.result, outcome.changes.len()),
        (Err(Errno::ENOMEM), 0)
    );
}

// --- accounting across calls ---

#[test]
fn a_mapping_beyond_the_pool_fails_alone() {
    let (mut s, mut p) = setup(16 * PAGE);
    ok(s.mmap(&mut p, BASE, 4 * PAGE, RW, FIXED));
    let before = layout(&s);
    assert_eq!(errno(s.mmap(&mut p, 0, 13 * PAGE, RW, ANON)), libc::ENOMEM);
    assert_eq!(
        errno(s.mmap(&mut p, BASE + 0x10_0000, 13 * PAGE, RW, FIXED)),
        libc::ENOMEM
    );
    assert_eq!(layout(&s), before);
    assert_eq!(p.committed(), 4 * PAGE);
    // Replacing a charged mapping nets out: 4 pages freed, 16 charged.
    ok(s.mmap(&mut p, BASE, 16 * PAGE, RW, FIXED));
    assert_eq!(p.committed(), 16 * PAGE);
    ok(s.mmap(&mut p, 0, 100 * PAGE, PROT_READ, ANON));
    s.release(&mut p);
    assert_eq!((p.committed(), p.used()), (0, 0));
}
