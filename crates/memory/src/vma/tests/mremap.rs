//! mremap.

use super::*;
use crate::vma::mremap::*;

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
