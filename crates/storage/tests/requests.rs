//! Every storage request through `Service::handle`, checked against what
//! lands on disk and against Linux's errnos.

mod common;

use common::*;
use lego_proto::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn create(fx: &Fixture, dir: &FileHandle, name: &str, mode: u32) -> (FileHandle, FileAttr) {
    found(fx.call(StorageRequest::Create {
        dir: dir.clone(),
        name: name.as_bytes().to_vec(),
        mode,
        exclusive: true,
        truncate: false,
    }))
}

fn write(fx: &Fixture, handle: &FileHandle, offset: u64, data: &[u8]) -> (u32, FileAttr) {
    match fx.call_with(
        StorageRequest::Write {
            handle: handle.clone(),
            offset,
            append: false,
            stable: false,
        },
        data,
    ) {
        Outcome::Done(StorageReply::Written { count, attr }, _) => (count, attr),
        other => panic!("write failed: {other:?}"),
    }
}

#[test]
fn root_lookup_and_getattr_describe_the_files_on_disk() {
    let fx = Fixture::new("lookup");
    std::fs::create_dir_all(fx.dir.join("a/b")).unwrap();
    std::fs::write(fx.dir.join("a/b/file"), b"hello").unwrap();
    let root = fx.root();
    let (file, attr) = fx.lookup(&root, "a/b/file");
    let meta = std::fs::metadata(fx.dir.join("a/b/file")).unwrap();
    assert_eq!(attr.file_type, FileType::Regular);
    assert_eq!(attr.size, 5);
    assert_eq!(attr.ino, meta.ino());
    assert_eq!(attr.dev, meta.dev());
    assert_eq!(attr.mode, meta.mode() & 0o7777);
    assert_eq!(attr.nlink, 1);
    assert_eq!(attr.uid, meta.uid());
    assert_eq!(attr.mtime.sec, meta.mtime());
    assert_eq!(attr.mtime.nsec as i64, meta.mtime_nsec());
    assert_eq!(attr.blksize as u64, meta.blksize());
    assert_eq!(
        common::attr(fx.call(StorageRequest::Getattr {
            handle: file.clone()
        })),
        attr
    );
    // A walk from a subdirectory, an empty path, and an absolute path.
    let (b, battr) = fx.lookup(&root, "a/b");
    assert_eq!(battr.file_type, FileType::Directory);
    assert_eq!(fx.lookup(&b, "file").1.ino, attr.ino);
    assert_eq!(fx.lookup(&b, "").1.ino, battr.ino);
    assert_eq!(fx.lookup(&b, "/a/b/file").1.ino, attr.ino);
    assert_eq!(fx.lookup(&b, "../b/./file").1.ino, attr.ino);
    assert_eq!(fx.read_all(&file), b"hello");
}

#[test]
fn lookup_errnos_are_linuxs() {
    let fx = Fixture::new("lookup-errno");
    std::fs::write(fx.dir.join("file"), b"x").unwrap();
    std::os::unix::fs::symlink("loop", fx.dir.join("loop")).unwrap();
    assert_eq!(
        fx.lookup_outcome("missing", true),
        Outcome::Errno(libc::ENOENT)
    );
    assert_eq!(
        fx.lookup_outcome("file/x", true),
        Outcome::Errno(libc::ENOTDIR)
    );
    assert_eq!(fx.lookup_outcome("loop", true), Outcome::Errno(libc::ELOOP));
    assert_eq!(
        fx.lookup_outcome(&"n".repeat(256), true),
        Outcome::Errno(libc::ENAMETOOLONG)
    );
    assert_eq!(
        fx.lookup_outcome(&"a/".repeat(3000), true),
        Outcome::Errno(libc::ENAMETOOLONG)
    );
    // Not following the last symlink gives the link itself.
    let (_, attr) = found(fx.lookup_outcome("loop", false));
    assert_eq!(attr.file_type, FileType::Symlink);
    // A file handle where a directory is needed.
    let file = fx.lookup(&fx.root(), "file").0;
    assert_eq!(
        fx.call(StorageRequest::Lookup {
            dir: file,
            path: b"x".to_vec(),
            follow: true
        }),
        Outcome::Errno(libc::ENOTDIR)
    );
    assert!(matches!(
        fx.call(StorageRequest::Lookup {
            dir: fx.root(),
            path: b"a\0b".to_vec(),
            follow: true
        }),
        Outcome::BadRequest(_)
    ));
}

#[test]
fn create_write_read_and_commit() {
    let fx = Fixture::new("create");
    let root = fx.root();
    let (file, attr) = create(&fx, &root, "new", 0o640);
    assert_eq!(attr.mode, 0o640, "the server's umask does not apply");
    assert_eq!(
        std::fs::metadata(fx.dir.join("new"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(
        fx.call(StorageRequest::Create {
            dir: root.clone(),
            name: b"new".to_vec(),
            mode: 0o600,
            exclusive: true,
            truncate: false
        }),
        Outcome::Errno(libc::EEXIST)
    );
    let (count, after) = write(&fx, &file, 0, b"hello world");
    assert_eq!((count, after.size), (11, 11));
    let (count, after) = write(&fx, &file, 20, b"!");
    assert_eq!((count, after.size), (1, 21));
    let mut expected = b"hello world".to_vec();
    expected.resize(20, 0);
    expected.push(b'!');
    assert_eq!(std::fs::read(fx.dir.join("new")).unwrap(), expected);
    // Reads: in the middle, across the end (eof), past the end.
    let read = |offset, len| {
        fx.call(StorageRequest::Read {
            handle: file.clone(),
            offset,
            len,
        })
    };
    assert_eq!(
        read(6, 5),
        Outcome::Done(StorageReply::Data { eof: false }, b"world".to_vec())
    );
    assert_eq!(
        read(19, 100),
        Outcome::Done(StorageReply::Data { eof: true }, vec![0, b'!'])
    );
    assert_eq!(
        read(100, 10),
        Outcome::Done(StorageReply::Data { eof: true }, vec![])
    );
    assert_eq!(read(u64::MAX, 10), Outcome::Errno(libc::EINVAL));
    // Append lands at the end whatever the offset; a stable write fsyncs.
    match fx.call_with(
        StorageRequest::Write {
            handle: file.clone(),
            offset: 0,
            append: true,
            stable: true,
        },
        b"+",
    ) {
        Outcome::Done(StorageReply::Written { count: 1, attr }, _) => assert_eq!(attr.size, 22),
        other => panic!("append failed: {other:?}"),
    }
    done(fx.call(StorageRequest::Commit {
        handle: file.clone(),
        data_only: false,
    }));
    done(fx.call(StorageRequest::Commit {
        handle: file.clone(),
        data_only: true,
    }));
    // Non-exclusive create of an existing file returns it, truncated if asked.
    let (again, attr) = found(fx.call(StorageRequest::Create {
        dir: root.clone(),
        name: b"new".to_vec(),
        mode: 0o600,
        exclusive: false,
        truncate: true,
    }));
    assert_eq!(attr.ino, after.ino);
    assert_eq!(attr.size, 0);
    assert_eq!(attr.mode, 0o640, "an existing file keeps its mode");
    assert_eq!(fx.read_all(&again), b"");
}

#[test]
fn large_reads_and_writes_travel_as_payload() {
    let fx = Fixture::new("large");
    let (file, _) = create(&fx, &fx.root(), "big", 0o644);
    let data: Vec<u8> = (0..(8 << 20) as u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let (count, attr) = write(&fx, &file, 0, &data);
    assert_eq!(count as usize, data.len());
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(std::fs::read(fx.dir.join("big")).unwrap(), data);
    match fx.call(StorageRequest::Read {
        handle: file.clone(),
        offset: 0,
        len: u32::MAX,
    }) {
        Outcome::Done(StorageReply::Data { eof: true }, back) => assert_eq!(back, data),
        other => panic!("read failed: {:?}", other),
    }
    // A read over the limit is clamped to it: a short read, not an error.
    let huge = vec![1u8; MAX_WRITE_LEN];
    write(&fx, &file, 0, &huge);
    write(&fx, &file, MAX_WRITE_LEN as u64, b"tail");
    match fx.call(StorageRequest::Read {
        handle: file,
        offset: 0,
        len: u32::MAX,
    }) {
        Outcome::Done(StorageReply::Data { eof: false }, back) => {
            assert_eq!(back.len(), MAX_READ_LEN as usize)
        }
        other => panic!("read failed: {:?}", other),
    }
}

#[test]
fn setattr_changes_size_mode_owner_and_times() {
    let fx = Fixture::new("setattr");
    std::fs::write(fx.dir.join("f"), b"0123456789").unwrap();
    let (file, _) = fx.lookup(&fx.root(), "f");
    let set = |set: SetAttr| {
        attr(fx.call(StorageRequest::Setattr {
            handle: file.clone(),
            set,
        }))
    };
    let after = set(SetAttr {
        size: Some(4),
        mode: Some(0o604),
        atime: Some(SetTime::At(Timespec {
            sec: 1_000_000,
            nsec: 5,
        })),
        mtime: Some(SetTime::At(Timespec {
            sec: 2_000_000,
            nsec: 123_456_789,
        })),
        ..SetAttr::default()
    });
    assert_eq!(after.size, 4);
    assert_eq!(after.mode, 0o604);
    assert_eq!(
        after.atime,
        Timespec {
            sec: 1_000_000,
            nsec: 5
        }
    );
    assert_eq!(
        after.mtime,
        Timespec {
            sec: 2_000_000,
            nsec: 123_456_789
        }
    );
    let meta = std::fs::metadata(fx.dir.join("f")).unwrap();
    assert_eq!(meta.len(), 4);
    assert_eq!(meta.mtime(), 2_000_000);
    let now = set(SetAttr {
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    });
    assert!(now.mtime.sec > 2_000_000);
    assert_eq!(now.atime.sec, 1_000_000, "an omitted time is left alone");
    // Owner changes need privilege; the tests run as root in CI.
    if unsafe { libc::geteuid() } == 0 {
        let owned = set(SetAttr {
            uid: Some(1234),
            gid: Some(4321),
            ..SetAttr::default()
        });
        assert_eq!((owned.uid, owned.gid), (1234, 4321));
        assert_eq!(std::fs::metadata(fx.dir.join("f")).unwrap().uid(), 1234);
    }
    assert_eq!(
        fx.call(StorageRequest::Setattr {
            handle: file.clone(),
            set: SetAttr {
                mtime: Some(SetTime::At(Timespec {
                    sec: 0,
                    nsec: 2_000_000_000
                })),
                ..SetAttr::default()
            }
        }),
        Outcome::Errno(libc::EINVAL)
    );
    assert_eq!(
        fx.call(StorageRequest::Setattr {
            handle: fx.root(),
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            }
        }),
        Outcome::Errno(libc::EISDIR)
    );
}

#[test]
fn directories_links_symlinks_and_renames() {
    let fx = Fixture::new("namespace");
    let root = fx.root();
    let (dir, dattr) = found(fx.call(StorageRequest::Mkdir {
        dir: root.clone(),
        name: b"d".to_vec(),
        mode: 0o750,
    }));
    assert_eq!((dattr.file_type, dattr.mode), (FileType::Directory, 0o750));
    assert!(fx.dir.join("d").is_dir());
    assert_eq!(
        fx.call(StorageRequest::Mkdir {
            dir: root.clone(),
            name: b"d".to_vec(),
            mode: 0o755
        }),
        Outcome::Errno(libc::EEXIST)
    );
    let (file, _) = create(&fx, &dir, "f", 0o644);
    write(&fx, &file, 0, b"data");
    // Link.
    let (linked, lattr) = found(fx.call(StorageRequest::Link {
        handle: file.clone(),
        dir: root.clone(),
        name: b"hard".to_vec(),
    }));
    assert_eq!(lattr.nlink, 2);
    assert_eq!(fx.read_all(&linked), b"data");
    assert_eq!(
        fx.call(StorageRequest::Link {
            handle: dir.clone(),
            dir: root.clone(),
            name: b"dirlink".to_vec()
        }),
        Outcome::Errno(libc::EPERM)
    );
    // Symlink and readlink.
    let (link, sattr) = found(fx.call(StorageRequest::Symlink {
        dir: root.clone(),
        name: b"sym".to_vec(),
        target: b"d/f".to_vec(),
    }));
    assert_eq!(sattr.file_type, FileType::Symlink);
    assert_eq!(
        std::fs::read_link(fx.dir.join("sym")).unwrap().to_str(),
        Some("d/f")
    );
    assert_eq!(
        fx.call(StorageRequest::Readlink { handle: link }),
        Outcome::Done(
            StorageReply::Target {
                target: b"d/f".to_vec()
            },
            vec![]
        )
    );
    assert_eq!(
        fx.call(StorageRequest::Readlink {
            handle: file.clone()
        }),
        Outcome::Errno(libc::EINVAL)
    );
    assert_eq!(fx.lookup(&root, "sym").1.ino, lattr.ino);
    // Rename keeps the kernel handle valid: it names the file, not the path.
    done(fx.call(StorageRequest::Rename {
        from_dir: dir.clone(),
        from_name: b"f".to_vec(),
        to_dir: root.clone(),
        to_name: b"moved".to_vec(),
        flags: 0,
    }));
    assert!(fx.dir.join("moved").exists() && !fx.dir.join("d/f").exists());
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(fx.read_all(&file), b"data");
    } else {
        // Without CAP_DAC_READ_SEARCH handles are path handles: stale now.
        assert_eq!(
            fx.call(StorageRequest::Getattr {
                handle: file.clone()
            }),
            Outcome::Errno(libc::ESTALE)
        );
    }
    assert_eq!(
        fx.call(StorageRequest::Rename {
            from_dir: root.clone(),
            from_name: b"moved".to_vec(),
            to_dir: root.clone(),
            to_name: b"hard".to_vec(),
            flags: RENAME_NOREPLACE
        }),
        Outcome::Errno(libc::EEXIST)
    );
    assert_eq!(
        fx.call(StorageRequest::Rename {
            from_dir: root.clone(),
            from_name: b"moved".to_vec(),
            to_dir: root.clone(),
            to_name: b"x".to_vec(),
            flags: 4
        }),
        Outcome::Errno(libc::EINVAL)
    );
    // Remove and rmdir, with Linux's errnos.
    assert_eq!(
        fx.call(StorageRequest::Remove {
            dir: root.clone(),
            name: b"d".to_vec()
        }),
        Outcome::Errno(libc::EISDIR)
    );
    create(&fx, &dir, "inner", 0o644);
    assert_eq!(
        fx.call(StorageRequest::Rmdir {
            dir: root.clone(),
            name: b"d".to_vec()
        }),
        Outcome::Errno(libc::ENOTEMPTY)
    );
    assert_eq!(
        fx.call(StorageRequest::Rmdir {
            dir: root.clone(),
            name: b"moved".to_vec()
        }),
        Outcome::Errno(libc::ENOTDIR)
    );
    done(fx.call(StorageRequest::Remove {
        dir: dir.clone(),
        name: b"inner".to_vec(),
    }));
    done(fx.call(StorageRequest::Rmdir {
        dir: root.clone(),
        name: b"d".to_vec(),
    }));
    assert!(!fx.dir.join("d").exists());
    // The removed directory's handle is stale now.
    assert_eq!(
        fx.call(StorageRequest::Getattr { handle: dir }),
        Outcome::Errno(libc::ESTALE)
    );
    assert_eq!(
        fx.call(StorageRequest::Remove {
            dir: root.clone(),
            name: b"missing".to_vec()
        }),
        Outcome::Errno(libc::ENOENT)
    );
    // Names are single components.
    assert!(matches!(
        fx.call(StorageRequest::Remove {
            dir: root.clone(),
            name: b"../x".to_vec()
        }),
        Outcome::BadRequest(_)
    ));
    assert_eq!(
        fx.call(StorageRequest::Mkdir {
            dir: root.clone(),
            name: vec![b'n'; 256],
            mode: 0o755
        }),
        Outcome::Errno(libc::ENAMETOOLONG)
    );
    assert_eq!(
        fx.call(StorageRequest::Rmdir {
            dir: root,
            name: b"..".to_vec()
        }),
        Outcome::Errno(libc::EINVAL)
    );
}

#[test]
fn readdir_resumes_from_cookies_across_many_entries() {
    let fx = Fixture::new("readdir");
    let mut expected: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("entry-{i:05}-{}", "x".repeat(i % 40)).into_bytes())
        .collect();
    for name in &expected {
        std::fs::write(fx.dir.join(std::str::from_utf8(name).unwrap()), b"").unwrap();
    }
    std::fs::create_dir(fx.dir.join("sub")).unwrap();
    expected.push(b"sub".to_vec());
    expected.push(b".".to_vec());
    expected.push(b"..".to_vec());
    let root = fx.root();
    let root_ino = fx.lookup(&root, "").1.ino;
    let mut seen = Vec::new();
    let mut cookie = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let (entries, eof) = match fx.call(StorageRequest::Readdir {
            dir: root.clone(),
            cookie,
            max_bytes: 4096,
        }) {
            Outcome::Done(StorageReply::Entries { entries, eof }, _) => (entries, eof),
            other => panic!("readdir failed: {other:?}"),
        };
        let used: usize = entries.iter().map(|e| dirent64_len(e.name.len())).sum();
        assert!(used <= 4096, "a reply over its budget: {used} bytes");
        for entry in &entries {
            match entry.name.as_slice() {
                b"sub" => assert_eq!(entry.file_type, FileType::Directory),
                b"." | b".." => assert_eq!(entry.ino, root_ino, "`..` at the root is the root"),
                _ => assert_eq!(entry.file_type, FileType::Regular),
            }
        }
        seen.extend(entries.iter().map(|e| e.name.clone()));
        if eof {
            break;
        }
        cookie = entries
            .last()
            .expect("a reply that is not the end has entries")
            .cookie;
    }
    assert!(rounds > 10, "4 KiB budgets need many rounds, took {rounds}");
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "every entry exactly once");
    // A budget too small for one entry is EINVAL, as getdents64 says.
    assert_eq!(
        fx.call(StorageRequest::Readdir {
            dir: root.clone(),
            cookie: 0,
            max_bytes: 10
        }),
        Outcome::Errno(libc::EINVAL)
    );
    let file = fx.lookup(&root, "sub").0;
    let (entries, eof) = match fx.call(StorageRequest::Readdir {
        dir: file,
        cookie: 0,
        max_bytes: u32::MAX,
    }) {
        Outcome::Done(StorageReply::Entries { entries, eof }, _) => (entries, eof),
        other => panic!("readdir failed: {other:?}"),
    };
    assert!(eof);
    assert_eq!(entries.len(), 2, "an empty directory holds . and ..");
}

#[test]
fn statfs_and_access() {
    let fx = Fixture::new("statfs");
    std::fs::write(fx.dir.join("f"), b"x").unwrap();
    std::fs::set_permissions(fx.dir.join("f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let root = fx.root();
    let st = match fx.call(StorageRequest::Statfs {
        handle: root.clone(),
    }) {
        Outcome::Done(StorageReply::FsStat(st), _) => st,
        other => panic!("statfs failed: {other:?}"),
    };
    let mut native: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(fx.dir.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut native) }, 0);
    assert_eq!(st.fs_type, native.f_type as u64);
    assert_eq!(st.blocks, native.f_blocks);
    assert_eq!(st.namelen, 255);
    let (file, attr) = fx.lookup(&root, "f");
    let access = |mask, uid, gid| {
        fx.call(StorageRequest::Access {
            handle: file.clone(),
            mask,
            credentials: Credentials {
                uid,
                gid,
                groups: vec![],
                caps: 0,
            },
        })
    };
    done(access(ACCESS_READ | ACCESS_WRITE, attr.uid, attr.gid));
    done(access(ACCESS_READ, attr.uid + 1, attr.gid));
    assert_eq!(
        access(ACCESS_WRITE, attr.uid + 1, attr.gid),
        Outcome::Errno(libc::EACCES)
    );
    assert_eq!(
        access(ACCESS_READ, attr.uid + 1, attr.gid + 1),
        Outcome::Errno(libc::EACCES)
    );
    done(access(0, attr.uid + 1, attr.gid + 1));
    assert_eq!(access(0o10, 0, 0), Outcome::Errno(libc::EINVAL));
    assert_eq!(access(ACCESS_EXECUTE, 0, 0), Outcome::Errno(libc::EACCES));
}

#[test]
fn protocol_misuse_is_a_bad_request_naming_the_problem() {
    let fx = Fixture::new("misuse");
    let root = fx.root();
    match fx.call_with(StorageRequest::Getattr { handle: root }, b"stray") {
        Outcome::BadRequest(why) => assert!(why.contains("payload"), "{why}"),
        other => panic!("{other:?}"),
    }
    match fx.call(StorageRequest::Getattr {
        handle: FileHandle(vec![1, 2, 3]),
    }) {
        Outcome::BadRequest(why) => assert!(why.contains("handle"), "{why}"),
        other => panic!("{other:?}"),
    }
    let reply = lego_transport::Service::handle(
        &fx.service,
        &peer(),
        Frame::new(1, Message::FetchPage { pid: 1, addr: 0 }),
    );
    assert!(matches!(
        reply.message,
        Message::Error(ErrorReply {
            code: ErrorCode::Unsupported,
            ..
        })
    ));
}
