//! mprotect and madvise.

use super::*;

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
