//! Arbitrary requests — valid, damaged and made-up handles, odd names,
//! extreme numbers — never panic the service, and always get one of the
//! three storage replies.

mod common;

use common::*;
use lego_proto::*;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// Valid handles, damaged ones and made-up bytes.
fn handle(valid: Vec<FileHandle>) -> impl Strategy<Value = FileHandle> {
    let damaged = valid.clone();
    prop_oneof![
        prop::sample::select(valid),
        (
            prop::sample::select(damaged),
            any::<prop::sample::Index>(),
            any::<u8>()
        )
            .prop_map(|(mut h, at, x)| {
                let at = at.index(h.0.len());
                h.0[at] ^= x | 1;
                h
            }),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(FileHandle),
        Just(FileHandle(vec![1; MAX_HANDLE_LEN + 1])),
    ]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"f".to_vec()),
        Just(b"new".to_vec()),
        Just(b"d".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(Vec::new()),
        Just(vec![b'x'; 300]),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        name(),
        Just(b"../../../etc/passwd".to_vec()),
        Just(b"/proc/self/fd/0".to_vec()),
        Just(vec![b'/'; 5000]),
        prop::collection::vec(
            prop_oneof![Just(b'/'), Just(b'.'), Just(b'l'), Just(b'd')],
            0..20
        ),
    ]
}

fn time() -> impl Strategy<Value = Option<SetTime>> {
    prop::option::of(prop_oneof![
        Just(SetTime::Now),
        (any::<i64>(), any::<u32>()).prop_map(|(sec, nsec)| SetTime::At(Timespec { sec, nsec })),
    ])
}

fn request(valid: Vec<FileHandle>) -> impl Strategy<Value = StorageRequest> {
    let h = || handle(valid.clone());
    prop_oneof![
        Just(StorageRequest::Root),
        (h(), path(), any::<bool>()).prop_map(|(dir, path, follow)| StorageRequest::Lookup {
            dir,
            path,
            follow
        }),
        h().prop_map(|handle| StorageRequest::Getattr { handle }),
        (
            h(),
            prop::option::of(0u64..(1 << 20)),
            prop::option::of(any::<u32>()),
            time(),
            time()
        )
            .prop_map(
                |(handle, size, mode, atime, mtime)| StorageRequest::Setattr {
                    handle,
                    set: SetAttr {
                        size,
                        mode,
                        uid: None,
                        gid: None,
                        atime,
                        mtime
                    },
                }
            ),
        (h(), any::<u64>(), any::<u32>()).prop_map(|(handle, offset, len)| StorageRequest::Read {
            handle,
            offset,
            len
        }),
        (
            h(),
            prop_oneof![0u64..4096, any::<u64>()],
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(handle, offset, append, stable)| StorageRequest::Write {
                handle,
                offset,
                append,
                stable
            }),
        (h(), any::<bool>())
            .prop_map(|(handle, data_only)| StorageRequest::Commit { handle, data_only }),
        (h(), name(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
            |(dir, name, mode, exclusive, truncate)| StorageRequest::Create {
                dir,
                name,
                mode,
                exclusive,
                truncate
            }
        ),
        (h(), name(), any::<u32>()).prop_map(|(dir, name, mode)| StorageRequest::Mkdir {
            dir,
            name,
            mode
        }),
        (h(), name()).prop_map(|(dir, name)| StorageRequest::Remove { dir, name }),
        (h(), name()).prop_map(|(dir, name)| StorageRequest::Rmdir { dir, name }),
        (h(), name(), h(), name(), any::<u32>()).prop_map(
            |(from_dir, from_name, to_dir, to_name, flags)| StorageRequest::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                flags: flags % 8
            }
        ),
        (h(), h(), name()).prop_map(|(handle, dir, name)| StorageRequest::Link {
            handle,
            dir,
            name
        }),
        (h(), name(), path()).prop_map(|(dir, name, target)| StorageRequest::Symlink {
            dir,
            name,
            target
        }),
        h().prop_map(|handle| StorageRequest::Readlink { handle }),
        (h(), prop_oneof![Just(0u64), any::<u64>()], any::<u32>()).prop_map(
            |(dir, cookie, max_bytes)| StorageRequest::Readdir {
                dir,
                cookie,
                max_bytes
            }
        ),
        h().prop_map(|handle| StorageRequest::Statfs { handle }),
        (h(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(handle, mask, uid, gid)| {
            StorageRequest::Access {
                handle,
                mask,
                credentials: Credentials {
                    uid,
                    gid,
                    groups: vec![gid],
                    caps: u64::from(mask),
                },
            }
        }),
    ]
}

#[test]
fn arbitrary_requests_never_panic() {
    // One export for all cases (building one per case would dominate the
    // run); cases may change it, which only widens what later cases meet.
    let fx = Fixture::new("fuzz");
    std::fs::create_dir(fx.dir.join("d")).unwrap();
    std::fs::write(fx.dir.join("d/f"), b"contents").unwrap();
    std::os::unix::fs::symlink("../../..", fx.dir.join("l")).unwrap();
    let root = fx.root();
    let valid = vec![
        root.clone(),
        fx.lookup(&root, "d").0,
        fx.lookup(&root, "d/f").0,
        found(fx.lookup_outcome("l", false)).0,
    ];
    let mut runner = TestRunner::new(ProptestConfig::with_cases(1500));
    let cases = (request(valid), prop::collection::vec(any::<u8>(), 0..64));
    let result = runner.run(&cases, |(request, payload)| {
        let outcome = fx.call_with(request, &payload);
        prop_assert!(!matches!(outcome, Outcome::Other(_)), "{:?}", outcome);
        if let Outcome::Errno(errno) = outcome {
            prop_assert!(errno > 0 && errno < 4096, "errno {}", errno);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
