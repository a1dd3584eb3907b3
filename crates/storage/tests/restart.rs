//! Handles outlive the storage manager that issued them: a new instance on
//! the same export with the same secret serves them, across mounts, and the
//! path-handle fallback keeps its documented semantics.

mod common;

use common::*;
use lego_proto::*;
use lego_storage::handle::{HandleBody, HandleKey};
use lego_storage::StorageService;
use std::os::unix::ffi::OsStrExt;

#[test]
fn handles_survive_a_restart() {
    let fx = Fixture::new("restart");
    std::fs::create_dir(fx.dir.join("d")).unwrap();
    std::fs::write(fx.dir.join("d/f"), b"before").unwrap();
    std::os::unix::fs::symlink("d/f", fx.dir.join("l")).unwrap();
    let root = fx.root();
    let (dir, _) = fx.lookup(&root, "d");
    let (file, fattr) = fx.lookup(&root, "d/f");
    let (link, _) = found(fx.lookup_outcome("l", false));
    let before = fx.restarted();
    drop(before);
    let restarted = fx.restarted();
    assert_eq!(
        attr(call(
            &restarted,
            StorageRequest::Getattr {
                handle: file.clone()
            },
            &[]
        ))
        .ino,
        fattr.ino
    );
    assert_eq!(
        call(
            &restarted,
            StorageRequest::Read {
                handle: file.clone(),
                offset: 0,
                len: 10
            },
            &[]
        ),
        Outcome::Done(StorageReply::Data { eof: true }, b"before".to_vec())
    );
    assert_eq!(
        call(&restarted, StorageRequest::Readlink { handle: link }, &[]),
        Outcome::Done(
            StorageReply::Target {
                target: b"d/f".to_vec()
            },
            vec![]
        )
    );
    let (_, again) = found(call(
        &restarted,
        StorageRequest::Lookup {
            dir: dir.clone(),
            path: b"f".to_vec(),
            follow: true,
        },
        &[],
    ));
    assert_eq!(again.ino, fattr.ino);
    // A renamed file keeps its handle across the restart as well.
    std::fs::rename(fx.dir.join("d/f"), fx.dir.join("moved")).unwrap();
    let restarted = fx.restarted();
    assert!(matches!(
        call(
            &restarted,
            StorageRequest::Getattr {
                handle: file.clone()
            },
            &[]
        ),
        Outcome::Done(StorageReply::Attr(_), _)
    ));
    // A different secret refuses them.
    let stranger =
        StorageService::new(&fx.dir, &lego_transport::ClusterSecret::generate().unwrap()).unwrap();
    assert!(matches!(
        call(&stranger, StorageRequest::Getattr { handle: root }, &[]),
        Outcome::BadRequest(_)
    ));
}

#[test]
fn path_handles_go_stale_on_rename_and_replacement() {
    let fx = Fixture::new("path-handles");
    std::fs::create_dir(fx.dir.join("d")).unwrap();
    std::fs::write(fx.dir.join("d/f"), b"one").unwrap();
    let (_, attr) = fx.lookup(&fx.root(), "d/f");
    let canonical = fx.dir.canonicalize().unwrap();
    let key = HandleKey::derive(
        fx.secret.to_hex().as_bytes(),
        canonical.as_os_str().as_bytes(),
    );
    // What a storage manager without CAP_DAC_READ_SEARCH issues.
    let handle = key.encode(&HandleBody::Path {
        dev: attr.dev,
        ino: attr.ino,
        path: b"d/f".to_vec(),
    });
    assert_eq!(fx.read_all(&handle), b"one");
    let after_restart = common::attr(call(
        &fx.restarted(),
        StorageRequest::Getattr {
            handle: handle.clone(),
        },
        &[],
    ));
    assert_eq!((after_restart.dev, after_restart.ino), (attr.dev, attr.ino));
    std::fs::rename(fx.dir.join("d/f"), fx.dir.join("d/g")).unwrap();
    assert_eq!(
        fx.call(StorageRequest::Getattr {
            handle: handle.clone()
        }),
        Outcome::Errno(libc::ESTALE)
    );
    // A new file at the old path is not the old file.
    std::fs::write(fx.dir.join("d/f"), b"two").unwrap();
    assert_eq!(
        fx.call(StorageRequest::Getattr { handle }),
        Outcome::Errno(libc::ESTALE)
    );
}

/// Exporting `/` crosses mounts: procfs cannot make handles (path handles),
/// /dev/shm is another mount (kernel handles carrying its mount id).
#[test]
fn handles_across_mounts_of_the_host_root() {
    let secret = lego_transport::ClusterSecret::generate().unwrap();
    let service = StorageService::new(std::path::Path::new("/"), &secret).unwrap();
    let lookup = |service: &StorageService, path: &str| {
        let root = found(call(service, StorageRequest::Root, &[])).0;
        found(call(
            service,
            StorageRequest::Lookup {
                dir: root,
                path: path.as_bytes().to_vec(),
                follow: true,
            },
            &[],
        ))
    };
    let read = |service: &StorageService, handle: &FileHandle| match call(
        service,
        StorageRequest::Read {
            handle: handle.clone(),
            offset: 0,
            len: 1 << 16,
        },
        &[],
    ) {
        Outcome::Done(StorageReply::Data { .. }, data) => data,
        other => panic!("read failed: {other:?}"),
    };
    let (version, _) = lookup(&service, "/proc/version");
    let native = std::fs::read("/proc/version").unwrap();
    assert_eq!(read(&service, &version), native);
    let shm = std::path::Path::new("/dev/shm").join(format!("lego-storage-{}", std::process::id()));
    std::fs::write(&shm, b"on tmpfs").unwrap();
    let (on_tmpfs, attr) = lookup(&service, shm.to_str().unwrap());
    assert_eq!(
        attr.dev,
        std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&shm).unwrap())
    );
    let restarted = StorageService::new(std::path::Path::new("/"), &secret).unwrap();
    assert_eq!(read(&restarted, &version), native);
    assert_eq!(read(&restarted, &on_tmpfs), b"on tmpfs");
    let statfs = match call(&restarted, StorageRequest::Statfs { handle: on_tmpfs }, &[]) {
        Outcome::Done(StorageReply::FsStat(st), _) => st,
        other => panic!("{other:?}"),
    };
    assert_eq!(statfs.fs_type, 0x0102_1994, "TMPFS_MAGIC");
    std::fs::remove_file(&shm).unwrap();
}
