//! Nothing a client sends reaches outside the export: `..`, symlinks,
//! absolute symlink targets and hand-made handles all stay inside.

mod common;

use common::*;
use lego_proto::*;
use lego_storage::handle::{HandleBody, HandleKey};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;

/// The export holds its own `secret.txt` and `etc/passwd`, so a walk that
/// is clamped at the root finds these rather than nothing.
fn fixture(name: &str) -> Fixture {
    let fx = Fixture::new(name);
    std::fs::write(fx.dir.join("secret.txt"), b"inside").unwrap();
    std::fs::create_dir(fx.dir.join("etc")).unwrap();
    std::fs::write(fx.dir.join("etc/passwd"), b"export's passwd").unwrap();
    std::fs::create_dir(fx.dir.join("sub")).unwrap();
    fx
}

/// The contents of `path`, or the errno of its lookup.
fn read_path(fx: &Fixture, path: &str) -> Result<Vec<u8>, i32> {
    match fx.lookup_outcome(path, true) {
        Outcome::Done(StorageReply::Found { handle, .. }, _) => Ok(fx.read_all(&handle)),
        Outcome::Errno(errno) => Err(errno),
        other => panic!("lookup of {path}: {other:?}"),
    }
}

#[test]
fn dot_dot_stops_at_the_export_root() {
    let fx = fixture("dotdot");
    assert_eq!(read_path(&fx, "../secret.txt").unwrap(), b"inside");
    assert_eq!(
        read_path(&fx, "sub/../../../../secret.txt").unwrap(),
        b"inside"
    );
    assert_eq!(
        read_path(&fx, "../../../../../../etc/passwd").unwrap(),
        b"export's passwd"
    );
    let sub = fx.lookup(&fx.root(), "sub").0;
    let (_, attr) = fx.lookup(&sub, "../..");
    assert_eq!(
        attr.ino,
        fx.lookup(&fx.root(), "").1.ino,
        "`..` of the root is the root"
    );
}

#[test]
fn symlinks_resolve_inside_the_export() {
    let fx = fixture("symlinks");
    symlink("/etc/passwd", fx.dir.join("abs")).unwrap();
    symlink("../../../../../../../etc/passwd", fx.dir.join("sub/rel")).unwrap();
    symlink(fx.parent(), fx.dir.join("parent")).unwrap();
    symlink("..", fx.dir.join("up")).unwrap();
    assert_eq!(read_path(&fx, "abs").unwrap(), b"export's passwd");
    assert_eq!(read_path(&fx, "sub/rel").unwrap(), b"export's passwd");
    assert_eq!(read_path(&fx, "up/secret.txt").unwrap(), b"inside");
    // The host path of the parent does not exist inside the export.
    assert_eq!(read_path(&fx, "parent/secret.txt"), Err(libc::ENOENT));
    // A symlink made through the protocol keeps its target verbatim and
    // resolves from the export root too.
    found(fx.call(StorageRequest::Symlink {
        dir: fx.root(),
        name: b"made".to_vec(),
        target: b"/etc/passwd".to_vec(),
    }));
    assert_eq!(
        std::fs::read_link(fx.dir.join("made"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"/etc/passwd"
    );
    assert_eq!(read_path(&fx, "made").unwrap(), b"export's passwd");
}

#[test]
fn create_never_follows_a_symlink_out() {
    let fx = fixture("create-trap");
    let outside = fx.parent().join("secret.txt");
    symlink(&outside, fx.dir.join("trap")).unwrap();
    for (exclusive, errno) in [(false, libc::ELOOP), (true, libc::EEXIST)] {
        assert_eq!(
            fx.call(StorageRequest::Create {
                dir: fx.root(),
                name: b"trap".to_vec(),
                mode: 0o644,
                exclusive,
                truncate: true,
            }),
            Outcome::Errno(errno)
        );
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside the export");
}

fn kernel_handle_of(path: &std::path::Path) -> HandleBody {
    #[repr(C)]
    struct Raw {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut raw = Raw {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut raw as *mut Raw,
            &mut mount_id as *mut i32,
            0,
        )
    };
    assert_eq!(ret, 0, "name_to_handle_at {}", path.display());
    HandleBody::Kernel {
        mount_id,
        handle_type: raw.kind,
        bytes: raw.data[..raw.bytes as usize].to_vec(),
    }
}

#[test]
fn hand_made_handles_are_refused() {
    let fx = fixture("forged");
    let outside = fx.parent().join("secret.txt");
    // Without the key: a kernel handle for a file outside, with a made-up
    // MAC, and a real handle with one byte changed.
    let wrong_key = HandleKey::derive(b"guess", fx.dir.as_os_str().as_bytes());
    let forged = wrong_key.encode(&kernel_handle_of(&outside));
    for handle in [forged, {
        let mut h = fx.lookup(&fx.root(), "secret.txt").0;
        let last = h.0.len() - 1;
        h.0[last] ^= 1;
        h
    }] {
        match fx.call(StorageRequest::Read {
            handle,
            offset: 0,
            len: 100,
        }) {
            Outcome::BadRequest(why) => assert!(why.contains("authentication"), "{why}"),
            other => panic!("a forged handle was served: {other:?}"),
        }
    }
    // Even with the key (a leak), a directory outside is refused, and a
    // path handle cannot climb out.
    let canonical = fx.dir.canonicalize().unwrap();
    let key = HandleKey::derive(
        fx.secret.to_hex().as_bytes(),
        canonical.as_os_str().as_bytes(),
    );
    let parent = key.encode(&kernel_handle_of(fx.parent()));
    assert_eq!(
        fx.call(StorageRequest::Lookup {
            dir: parent.clone(),
            path: b"secret.txt".to_vec(),
            follow: true
        }),
        Outcome::Errno(libc::ESTALE)
    );
    assert_eq!(
        fx.call(StorageRequest::Readdir {
            dir: parent,
            cookie: 0,
            max_bytes: 4096
        }),
        Outcome::Errno(libc::ESTALE)
    );
    let meta = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&outside).unwrap());
    let climbing = key.encode(&HandleBody::Path {
        dev: fx.lookup(&fx.root(), "").1.dev,
        ino: meta,
        path: b"../secret.txt".to_vec(),
    });
    assert_eq!(
        fx.call(StorageRequest::Read {
            handle: climbing,
            offset: 0,
            len: 100
        }),
        Outcome::Errno(libc::ESTALE)
    );
    // A handle of another export under the same secret is refused.
    let other = Fixture::new("forged-other");
    std::fs::write(other.dir.join("f"), b"x").unwrap();
    let foreign = found(call(
        &other.service,
        StorageRequest::Lookup {
            dir: found(call(&other.service, StorageRequest::Root, &[])).0,
            path: b"f".to_vec(),
            follow: true,
        },
        &[],
    ))
    .0;
    assert!(matches!(
        fx.call(StorageRequest::Getattr { handle: foreign }),
        Outcome::BadRequest(_)
    ));
}

#[test]
fn exporting_the_host_root_blocks_magic_links() {
    let secret = lego_transport::ClusterSecret::generate().unwrap();
    let service = lego_storage::StorageService::new(std::path::Path::new("/"), &secret).unwrap();
    let root = found(call(&service, StorageRequest::Root, &[])).0;
    let lookup = |path: &str| {
        call(
            &service,
            StorageRequest::Lookup {
                dir: root.clone(),
                path: path.as_bytes().to_vec(),
                follow: true,
            },
            &[],
        )
    };
    assert_eq!(lookup("proc/self/root/etc"), Outcome::Errno(libc::ELOOP));
    assert_eq!(lookup("proc/self/fd/0"), Outcome::Errno(libc::ELOOP));
    found(lookup("proc/self/status"));
}
