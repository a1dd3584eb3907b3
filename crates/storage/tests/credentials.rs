//! Requests act for whom their voucher names: the kernel checks each
//! with that process's filesystem ids and groups, and what it creates is
//! its own. A runtime must send a voucher, its tree's, sealed by the
//! cluster; nothing it states itself is believed.

mod common;

use common::{call_as, Fixture, Outcome};
use lego_proto::{Credentials, StorageReply, StorageRequest, Voucher, ACCESS_READ};
use lego_transport::{ClusterSecret, Identity, PeerInfo};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const NOBODY: u32 = 65534;
const TREE: u64 = 0x42;

fn runtime(tree: u64) -> PeerInfo {
    PeerInfo {
        addr: "127.0.0.1:1".parse().unwrap(),
        identity: Identity::process(tree, tree),
    }
}

fn voucher(secret: &ClusterSecret, tree: u64, uid: u32, gid: u32) -> Voucher {
    let mut voucher = Voucher {
        tree,
        uids: [uid; 4],
        gids: [gid; 4],
        groups: vec![],
        seal: [0; 32],
    };
    secret.seal_voucher(&mut voucher);
    voucher
}

/// A root 0755 directory `dir` holding a root 0600 file `secret` and a
/// 1777 directory `pub`, in the export.
fn tree(fx: &Fixture) {
    let dir = fx.dir.join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("secret"), b"root only").unwrap();
    std::fs::set_permissions(dir.join("secret"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::create_dir(dir.join("pub")).unwrap();
    std::fs::set_permissions(dir.join("pub"), PermissionsExt::from_mode(0o1777)).unwrap();
}

fn is_root() -> bool {
    // Safety: a plain id query.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn requests_act_with_the_vouched_credentials() {
    if !is_root() {
        eprintln!("skipped: acting for another user needs root");
        return;
    }
    let fx = Fixture::new("creds");
    tree(&fx);
    let nobody = voucher(&fx.secret, TREE, NOBODY, NOBODY);
    let as_nobody = |request| {
        call_as(
            &fx.service,
            &runtime(TREE),
            Some(nobody.clone()),
            request,
            &[],
        )
    };
    let root = fx.root();
    let (secret, _) = fx.lookup(&root, "dir/secret");
    let (dir, _) = fx.lookup(&root, "dir");
    let (public, _) = fx.lookup(&root, "dir/pub");
    let read = StorageRequest::Read {
        handle: secret.clone(),
        offset: 0,
        len: 100,
    };
    assert_eq!(as_nobody(read.clone()), Outcome::Errno(libc::EACCES));
    let append = StorageRequest::Write {
        handle: secret.clone(),
        offset: 0,
        append: true,
        stable: false,
    };
    assert_eq!(
        call_as(
            &fx.service,
            &runtime(TREE),
            Some(nobody.clone()),
            append,
            b"x"
        ),
        Outcome::Errno(libc::EACCES)
    );
    let create = |dir: &lego_proto::FileHandle, name: &str| StorageRequest::Create {
        dir: dir.clone(),
        name: name.as_bytes().to_vec(),
        mode: 0o644,
        exclusive: true,
        truncate: false,
    };
    assert_eq!(as_nobody(create(&dir, "new")), Outcome::Errno(libc::EACCES));
    assert_eq!(
        as_nobody(StorageRequest::Remove {
            dir: dir.clone(),
            name: b"secret".to_vec(),
        }),
        Outcome::Errno(libc::EACCES)
    );
    let Outcome::Done(StorageReply::Found { attr, .. }, _) = as_nobody(create(&public, "mine"))
    else {
        panic!("nobody could not create in a 1777 directory");
    };
    assert_eq!((attr.uid, attr.gid), (NOBODY, NOBODY));
    let meta = std::fs::metadata(fx.dir.join("dir/pub/mine")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (NOBODY, NOBODY, 0o644)
    );
    // The same thread serves root again afterwards, as itself.
    let component = call_as(&fx.service, &common::peer(), None, read.clone(), &[]);
    assert!(
        matches!(component, Outcome::Done(StorageReply::Data { .. }, _)),
        "{component:?}"
    );
    let as_root = voucher(&fx.secret, TREE, 0, 0);
    let rooted = call_as(&fx.service, &runtime(TREE), Some(as_root), read, &[]);
    assert!(
        matches!(rooted, Outcome::Done(StorageReply::Data { .. }, _)),
        "{rooted:?}"
    );
    // An access check is for ids the voucher shows the process holds.
    let access = |uid| StorageRequest::Access {
        handle: secret.clone(),
        mask: ACCESS_READ,
        credentials: Credentials {
            uid,
            gid: NOBODY,
            groups: vec![],
        },
    };
    assert_eq!(as_nobody(access(NOBODY)), Outcome::Errno(libc::EACCES));
    assert!(matches!(as_nobody(access(0)), Outcome::Denied(_)));
}

#[test]
fn a_runtime_without_a_true_voucher_of_its_own_tree_is_refused() {
    let fx = Fixture::new("voucherless");
    std::fs::write(fx.dir.join("file"), b"data").unwrap();
    let root = fx.root();
    let lookup = StorageRequest::Lookup {
        dir: root,
        path: b"file".to_vec(),
        follow: true,
    };
    let denied = |caller: Option<Voucher>| {
        let outcome = call_as(&fx.service, &runtime(TREE), caller, lookup.clone(), &[]);
        assert!(matches!(outcome, Outcome::Denied(_)), "{outcome:?}");
    };
    denied(None);
    // Another tree's, though truly sealed.
    denied(Some(voucher(&fx.secret, TREE + 1, 0, 0)));
    // Sealed by another cluster.
    denied(Some(voucher(
        &ClusterSecret::generate().unwrap(),
        TREE,
        0,
        0,
    )));
    // Its own, with the ids changed after sealing.
    let mut forged = voucher(&fx.secret, TREE, NOBODY, NOBODY);
    forged.uids = [0; 4];
    denied(Some(forged));
    let own = call_as(
        &fx.service,
        &runtime(TREE),
        Some(voucher(&fx.secret, TREE, 0, 0)),
        lookup.clone(),
        &[],
    );
    assert!(
        matches!(own, Outcome::Done(StorageReply::Found { .. }, _)),
        "{own:?}"
    );
}
