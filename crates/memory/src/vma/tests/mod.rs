//! Unit tests of the address-space rules, one file per family of calls.

use super::mmap::*;
use super::*;

mod mremap;
mod protect;

pub(super) const RW: u32 = PROT_READ | PROT_WRITE;
pub(super) const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
pub(super) const FIXED: u32 = ANON | MAP_FIXED;
pub(super) const MIB: u64 = 1 << 20;
pub(super) const BASE: u64 = 0x1000_0000;

pub(super) fn setup(capacity: u64) -> (AddressSpace, PagePool) {
    (AddressSpace::new(0x40_0000), PagePool::new(capacity))
}

pub(super) fn ok(outcome: Outcome) -> (u64, Vec<RangeChange>) {
    match outcome.result {
        Ok(v) => (v, outcome.changes),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

pub(super) fn errno(outcome: Outcome) -> i32 {
    match outcome.result {
        Err(e) => e.0,
        Ok(v) => panic!("unexpected success {v:#x}"),
    }
}

pub(super) fn write(space: &mut AddressSpace, pool: &mut PagePool, addr: u64, byte: u8) {
    assert!(space.store_page(pool, addr, &[byte; PAGE as usize]));
}

pub(super) fn byte_at(space: &AddressSpace, pool: &PagePool, addr: u64) -> Option<u8> {
    space.page(addr).map(|id| pool.get(id)[0])
}

/// (start, end, prot) of every VMA.
pub(super) fn layout(space: &AddressSpace) -> Vec<(u64, u64, u32)> {
    space.check_invariants().unwrap();
    space.vmas().map(|v| (v.start, v.end, v.prot)).collect()
}

pub(super) fn mapped(start: u64, end: u64, prot: u32, discard: bool) -> RangeChange {
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

pub(super) fn unmapped(start: u64, end: u64, discard: bool) -> RangeChange {
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

// --- spilled regions ---

const REGION: u64 = lego_proto::REGION_SIZE;

/// A mapping larger than the pool fits once the regions it reaches are
/// spilled: their bytes are charged elsewhere, the rest here, and the
/// charge stays exact through munmap, mprotect, spilling a region with
/// pages and release.
#[test]
fn spilled_regions_are_charged_elsewhere() {
    let (mut s, mut p) = setup(REGION);
    let start = 4 * REGION;
    assert_eq!(
        errno(s.mmap(&mut p, start, 3 * REGION, RW, FIXED)),
        libc::ENOMEM
    );
    // What a dry run on the shape finds the change would need.
    let mut scratch = PagePool::new(0);
    let mut shape = s.shape(&mut scratch);
    ok(shape.mmap(&mut scratch, start, 3 * REGION, RW, FIXED));
    assert_eq!(shape.spillable_in(start, start + 3 * REGION), vec![4, 5, 6]);
    s.spill(&mut p, 5, Vec::new()).unwrap();
    s.spill(&mut p, 6, Vec::new()).unwrap();
    ok(s.mmap(&mut p, start, 3 * REGION, RW, FIXED));
    layout(&s);
    assert_eq!(p.committed(), REGION);
    assert!(s.is_spilled(5 * REGION) && !s.is_spilled(4 * REGION));
    assert_eq!(s.spilled().collect::<Vec<_>>(), vec![5, 6]);
    // Unmapping across the boundary returns only the part charged here.
    ok(s.munmap(&mut p, start + REGION - 2 * PAGE, 4 * PAGE));
    layout(&s);
    assert_eq!(p.committed(), REGION - 2 * PAGE);
    // A read-only mapping made writable in a spilled region costs nothing here.
    ok(s.mmap(&mut p, 7 * REGION, PAGE, PROT_READ, FIXED));
    s.spill(&mut p, 7, Vec::new()).unwrap();
    ok(s.mprotect(&mut p, 7 * REGION, PAGE, RW));
    layout(&s);
    assert_eq!(p.committed(), REGION - 2 * PAGE);
    // Its pages live elsewhere: a move into or out of it is refused.
    assert_eq!(
        errno(s.mremap(
            &mut p,
            7 * REGION,
            PAGE,
            PAGE,
            libc::MREMAP_MAYMOVE as u32 | libc::MREMAP_FIXED as u32,
            8 * REGION
        )),
        libc::ENOMEM
    );
    // A dry run that removes charge keeps the scratch pool's books.
    let mut scratch = PagePool::new(0);
    let mut shape = s.shape(&mut scratch);
    ok(shape.munmap(&mut scratch, start, REGION));
    assert_eq!(scratch.committed(), 0);
    // A region storing pages here spills; its pages stay until dropped
    // (the holders have them), so taking the spill back loses nothing.
    write(&mut s, &mut p, start, 7);
    let charged = p.committed();
    s.spill(&mut p, 4, Vec::new()).unwrap();
    assert_eq!((p.committed(), p.used()), (0, PAGE));
    s.unspill(&mut p, 4);
    assert_eq!((p.committed(), p.used()), (charged, PAGE));
    assert_eq!(byte_at(&s, &p, start), Some(7));
    s.spill(&mut p, 4, Vec::new()).unwrap();
    s.drop_spilled_pages(&mut p, &[4]);
    layout(&s);
    assert_eq!((p.committed(), p.used()), (0, 0));
    // A file is never mapped over a spilled region (its pages are read
    // here).
    let file = crate::vma::FileSource {
        storage: "127.0.0.1:9".parse().unwrap(),
        handle: lego_proto::FileHandle(vec![1]),
        caller: lego_proto::Voucher::default(),
    };
    assert_eq!(
        errno(s.mmap_file(
            &mut p,
            8 * REGION - PAGE,
            2 * PAGE,
            PROT_READ,
            FIXED,
            (file, 0)
        )),
        libc::ENOMEM
    );
    // Unmapped, the spilled regions come home, charging nothing.
    ok(s.munmap(&mut p, start, 4 * REGION));
    let home: Vec<u64> = s.unspill_empty(&mut p).iter().map(|r| r.region).collect();
    assert_eq!(home, vec![4, 5, 6, 7]);
    assert_eq!(s.spilled().count(), 0);
    layout(&s);
    assert!(s.spill(&mut p, u64::MAX, Vec::new()).is_err());
    s.release(&mut p);
    assert_eq!((p.committed(), p.used()), (0, 0));
    assert_eq!(s.spilled().count(), 0);
}

/// A fork and a backup's copy charge only what is charged here, and keep
/// the spilled regions.
#[test]
fn copies_keep_the_spilled_regions() {
    let (mut s, mut p) = setup(4 * REGION);
    s.spill(&mut p, 3, Vec::new()).unwrap();
    ok(s.mmap(&mut p, 2 * REGION, 2 * REGION, RW, FIXED));
    assert_eq!(p.committed(), REGION);
    let (child, _) = s.fork_copy(&mut p).unwrap();
    assert_eq!(p.committed(), 2 * REGION);
    assert_eq!(child.spilled().collect::<Vec<_>>(), vec![3]);
    child.check_invariants().unwrap();
    let (vmas, brk_start, brk, files, spilled) = s.layout();
    let layout_of = SpaceLayout {
        vmas,
        brk_start,
        brk,
        files,
        spilled,
        last_seq: 0,
        last_reply: None,
    };
    let mut other = PagePool::new(REGION);
    let copy = AddressSpace::from_layout(&layout_of, &mut other).unwrap();
    assert_eq!(other.committed(), REGION);
    copy.check_invariants().unwrap();
    let bad = SpaceLayout {
        spilled: vec![lego_proto::SpilledRegion {
            region: u64::MAX / REGION,
            holders: Vec::new(),
        }],
        ..layout_of
    };
    assert!(AddressSpace::from_layout(&bad, &mut PagePool::new(REGION))
        .unwrap_err()
        .contains("outside"));
}

/// The regions a change that does not fit could spill are those it
/// touches, those without pages here first and then from the top, then
/// the others, the most charged first; each with the charge it relieves.
#[test]
fn spill_candidates_are_the_touched_regions_pageless_first() {
    let (mut s, mut p) = setup(2 * REGION);
    // A mapping with a page stored in region 4.
    ok(s.mmap(&mut p, 4 * REGION, REGION / 2, RW, FIXED));
    write(&mut s, &mut p, 4 * REGION, 1);
    let (after_start, after_len) = (4 * REGION + REGION / 2, 4 * REGION);
    let mut scratch = PagePool::new(0);
    let mut after = s.shape(&mut scratch);
    ok(after.mmap(&mut scratch, after_start, after_len, RW, FIXED));
    let touched = [(after_start, after_start + after_len)];
    // The highest region is half mapped; region 4, with a page, comes
    // last, charged for all of it (the old half too).
    assert_eq!(
        s.spill_candidates(&after, &touched),
        vec![
            (8, REGION / 2),
            (7, REGION),
            (6, REGION),
            (5, REGION),
            (4, REGION)
        ]
    );
    // Nothing touched: every region, the most charged first.
    assert_eq!(
        s.spill_candidates(&after, &[]),
        vec![
            (7, REGION),
            (6, REGION),
            (5, REGION),
            (4, REGION),
            (8, REGION / 2)
        ]
    );
}
