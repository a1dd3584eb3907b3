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

/// The runtime of process `pid` of tree `tree`, as its key authenticates it.
fn runtime(tree: u64, pid: u64) -> PeerInfo {
    PeerInfo {
        addr: "127.0.0.1:1".parse().unwrap(),
        identity: Identity::process(tree, pid),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A voucher as a processor issues it, for a process of its own (so
/// that no other voucher of the test supersedes it).
fn voucher(secret: &ClusterSecret, tree: u64, uid: u32, gid: u32) -> Voucher {
    static NEXT_PID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let pid = NEXT_PID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    issued(secret, tree, pid, (uid, gid), now_ms())
}

fn issued(
    secret: &ClusterSecret,
    tree: u64,
    pid: u64,
    (uid, gid): (u32, u32),
    at_ms: u64,
) -> Voucher {
    let mut voucher = Voucher {
        tree,
        pid,
        uids: [uid; 4],
        gids: [gid; 4],
        caps: lego_proto::Capabilities::of_uid(uid).fs(),
        issued_ms: at_ms,
        expires_ms: at_ms + lego_proto::VOUCHER_LIFETIME_MS,
        ..Voucher::default()
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
            &runtime(TREE, nobody.pid),
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
            &runtime(TREE, nobody.pid),
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
    let rooted = call_as(
        &fx.service,
        &runtime(TREE, as_root.pid),
        Some(as_root),
        read,
        &[],
    );
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
            caps: 0,
        },
    };
    assert_eq!(as_nobody(access(NOBODY)), Outcome::Errno(libc::EACCES));
    assert!(matches!(as_nobody(access(0)), Outcome::Denied(_)));
}

#[test]
fn root_without_the_override_capabilities_gets_only_what_the_bits_allow() {
    if !is_root() {
        eprintln!("skipped: acting for another user needs root");
        return;
    }
    let fx = Fixture::new("caps");
    let theirs = fx.dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("file"), b"nobody's").unwrap();
    std::fs::set_permissions(theirs.join("file"), PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(theirs.join("file"), Some(NOBODY), Some(NOBODY)).unwrap();
    let root = fx.root();
    let (dir, _) = fx.lookup(&root, "theirs");
    let (file, _) = fx.lookup(&root, "theirs/file");
    let fx = &fx;
    let as_root_with = |effective: u64| {
        let mut v = Voucher {
            tree: TREE,
            pid: 0x42,
            uids: [0; 4],
            gids: [0; 4],
            caps: lego_proto::Capabilities {
                effective,
                permitted: lego_proto::FS_CAPS,
            },
            issued_ms: now_ms(),
            expires_ms: now_ms() + lego_proto::VOUCHER_LIFETIME_MS,
            ..Voucher::default()
        };
        fx.secret.seal_voucher(&mut v);
        move |request, payload: &[u8]| {
            call_as(
                &fx.service,
                &runtime(TREE, v.pid),
                Some(v.clone()),
                request,
                payload,
            )
        }
    };
    let read = StorageRequest::Read {
        handle: file.clone(),
        offset: 0,
        len: 100,
    };
    let write = StorageRequest::Write {
        handle: file.clone(),
        offset: 0,
        append: false,
        stable: false,
    };
    let create = StorageRequest::Create {
        dir: dir.clone(),
        name: b"new".to_vec(),
        mode: 0o644,
        exclusive: true,
        truncate: false,
    };
    let data = |outcome: Outcome| matches!(outcome, Outcome::Done(StorageReply::Data { .. }, _));
    // No overrides: root is anyone else.
    let bare = as_root_with(0);
    assert_eq!(bare(read.clone(), &[]), Outcome::Errno(libc::EACCES));
    assert_eq!(bare(write.clone(), b"x"), Outcome::Errno(libc::EACCES));
    assert_eq!(bare(create.clone(), &[]), Outcome::Errno(libc::EACCES));
    // CAP_DAC_READ_SEARCH: reads, never writes.
    let reader = as_root_with(lego_proto::CAP_DAC_READ_SEARCH);
    assert!(data(reader(read.clone(), &[])));
    assert_eq!(reader(write.clone(), b"x"), Outcome::Errno(libc::EACCES));
    assert_eq!(reader(create.clone(), &[]), Outcome::Errno(libc::EACCES));
    // All of them again, on the same serving thread: root as natively.
    let full = as_root_with(lego_proto::FS_CAPS);
    assert!(data(full(read.clone(), &[])));
    assert!(matches!(
        full(create, &[]),
        Outcome::Done(StorageReply::Found { .. }, _)
    ));
    assert_eq!(bare(read.clone(), &[]), Outcome::Errno(libc::EACCES));
    // And the server itself keeps its own.
    assert!(data(call_as(&fx.service, &common::peer(), None, read, &[])));
    // An access check may use no capability the voucher does not permit.
    let access = |caps| StorageRequest::Access {
        handle: file.clone(),
        mask: ACCESS_READ,
        credentials: Credentials {
            uid: 0,
            gid: 0,
            groups: vec![],
            caps,
        },
    };
    assert_eq!(bare(access(0), &[]), Outcome::Errno(libc::EACCES));
    assert_eq!(
        bare(access(lego_proto::CAP_DAC_OVERRIDE), &[]),
        Outcome::Done(StorageReply::Done, vec![])
    );
    assert!(matches!(bare(access(1 << 40), &[]), Outcome::Denied(_)));
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
        let pid = caller.as_ref().map_or(TREE, |v| v.pid);
        let outcome = call_as(
            &fx.service,
            &runtime(TREE, pid),
            caller,
            lookup.clone(),
            &[],
        );
        assert!(matches!(outcome, Outcome::Denied(_)), "{outcome:?}");
    };
    denied(None);
    // Another process's of its tree (a child holding its parent's).
    let parents = voucher(&fx.secret, TREE, 0, 0);
    let child = call_as(
        &fx.service,
        &runtime(TREE, parents.pid + 1000),
        Some(parents),
        lookup.clone(),
        &[],
    );
    assert!(matches!(child, Outcome::Denied(_)), "{child:?}");
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
    let mine = voucher(&fx.secret, TREE, 0, 0);
    let own = call_as(
        &fx.service,
        &runtime(TREE, mine.pid),
        Some(mine),
        lookup.clone(),
        &[],
    );
    assert!(
        matches!(own, Outcome::Done(StorageReply::Found { .. }, _)),
        "{own:?}"
    );
}

/// A voucher stops working when it expires, and when its process got a
/// newer one of other ids (it dropped root: the root voucher that may
/// linger in its memory is refused from then on); one of the same ids
/// still works, so requests in flight across a renewal do. A voucher for
/// reading one file serves that file's reads alone.
#[test]
fn vouchers_expire_and_are_superseded_and_keep_to_their_scope() {
    if !is_root() {
        eprintln!("skipped: acting for another user needs root");
        return;
    }
    let fx = Fixture::new("lifetime");
    tree(&fx);
    let root = fx.root();
    let (secret, _) = fx.lookup(&root, "dir/secret");
    let read = StorageRequest::Read {
        handle: secret.clone(),
        offset: 0,
        len: 100,
    };
    let with = |voucher: &Voucher, request: &StorageRequest| {
        call_as(
            &fx.service,
            &runtime(TREE, voucher.pid),
            Some(voucher.clone()),
            request.clone(),
            &[],
        )
    };
    let reads = |outcome: Outcome| matches!(outcome, Outcome::Done(StorageReply::Data { .. }, _));
    let now = now_ms();
    let expired = issued(
        &fx.secret,
        TREE,
        7,
        (0, 0),
        now - lego_proto::VOUCHER_LIFETIME_MS - 1,
    );
    assert_eq!(with(&expired, &read), Outcome::Errno(libc::EACCES));

    let as_root = issued(&fx.secret, TREE, 8, (0, 0), now - 2);
    let renewed = issued(&fx.secret, TREE, 8, (0, 0), now - 1);
    assert!(reads(with(&as_root, &read)));
    assert!(reads(with(&renewed, &read)));
    assert!(reads(with(&as_root, &read)), "a renewal of the same ids");
    let dropped = issued(&fx.secret, TREE, 8, (NOBODY, NOBODY), now);
    assert_eq!(with(&dropped, &read), Outcome::Errno(libc::EACCES));
    assert_eq!(with(&as_root, &read), Outcome::Errno(libc::EACCES));
    assert_eq!(with(&renewed, &read), Outcome::Errno(libc::EACCES));
    // Another process's root voucher is its own.
    assert!(reads(with(
        &issued(&fx.secret, TREE, 9, (0, 0), now - 5),
        &read
    )));

    let mut scoped = issued(&fx.secret, TREE, 10, (0, 0), now);
    scoped.scope = lego_proto::VoucherScope::ReadFile(secret.clone());
    scoped.expires_ms = 0;
    fx.secret.seal_voucher(&mut scoped);
    assert!(reads(with(&scoped, &read)));
    let (other, _) = fx.lookup(&root, "dir");
    let elsewhere = StorageRequest::Readdir {
        dir: other,
        cookie: 0,
        max_bytes: 4096,
    };
    assert!(matches!(with(&scoped, &elsewhere), Outcome::Denied(_)));
}

/// An open is the kernel's check with the caller's credentials; its
/// voucher then serves that file's reads (and, opened for writing, writes
/// and size changes) with those credentials, whatever the process's are
/// later, and nothing else.
#[test]
fn an_open_files_voucher_serves_that_file_as_it_was_opened() {
    if !is_root() {
        eprintln!("skipped: acting for another user needs root");
        return;
    }
    let fx = Fixture::new("opened");
    tree(&fx);
    let root = fx.root();
    let (secret, _) = fx.lookup(&root, "dir/secret");
    let (dir, _) = fx.lookup(&root, "dir");
    let with = |voucher: &Voucher, request: StorageRequest, payload: &[u8]| {
        call_as(
            &fx.service,
            &runtime(TREE, voucher.pid),
            Some(voucher.clone()),
            request,
            payload,
        )
    };
    let open = |handle: &lego_proto::FileHandle, write| StorageRequest::Open {
        handle: handle.clone(),
        read: true,
        write,
    };
    let nobody = voucher(&fx.secret, TREE, NOBODY, NOBODY);
    assert_eq!(
        with(&nobody, open(&secret, false), &[]),
        Outcome::Errno(libc::EACCES)
    );
    let as_root = voucher(&fx.secret, TREE, 0, 0);
    let Outcome::Done(StorageReply::Opened(opened), _) = with(&as_root, open(&secret, false), &[])
    else {
        panic!("root could not open its file");
    };
    assert!(fx.secret.voucher_is_sealed(&opened));
    let read = StorageRequest::Read {
        handle: secret.clone(),
        offset: 0,
        len: 100,
    };
    assert!(matches!(
        with(&opened, read.clone(), &[]),
        Outcome::Done(StorageReply::Data { .. }, _)
    ));
    let write = StorageRequest::Write {
        handle: secret.clone(),
        offset: 0,
        append: true,
        stable: false,
    };
    assert!(
        matches!(with(&opened, write, b"x"), Outcome::Denied(_)),
        "opened for reading only"
    );
    let chmod = StorageRequest::Setattr {
        handle: secret.clone(),
        set: lego_proto::SetAttr {
            mode: Some(0o666),
            ..lego_proto::SetAttr::default()
        },
    };
    assert!(matches!(with(&opened, chmod, &[]), Outcome::Denied(_)));
    let elsewhere = StorageRequest::Getattr { handle: dir };
    assert!(matches!(with(&opened, elsewhere, &[]), Outcome::Denied(_)));
    assert!(matches!(
        with(&opened, open(&secret, true), &[]),
        Outcome::Denied(_)
    ));
}
