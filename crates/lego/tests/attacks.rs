//! The attack suite: ordinary programs run under `lego run`, and the
//! credentials such a program holds, try everything issue 10 names — the
//! cluster secret in its own memory, raw host calls with the trap switched
//! off, another program's memory, the cluster's membership, files its user
//! may not touch, the host objects behind its descriptors, its processor
//! and the other components — and each test fails if one succeeds.

mod common;

use common::*;
use lego_proto::{Load, Message, Registration, Role, StorageRequest, Voucher};
use lego_transport::{Client, ClientConfig, Identity};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

/// What a runtime holds, its tree's key and identity, is all a program can
/// find in its process (the secret is nowhere in it, below); with them it
/// reads, writes and releases no other program's memory, registers no
/// component, sees or places nothing through the monitor, gets no voucher
/// as another process and no file served without a voucher sealed for it.
/// The victim runs on, its memory intact, and the cluster stays whole.
#[test]
fn a_programs_own_key_reaches_nothing_but_its_own_process_tree() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let members = || {
        let view = cluster.status().expect("lego status works");
        let mut names: Vec<String> = view["components"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} {}", c["id"], c["role"]))
            .collect();
        names.sort();
        names
    };
    let before = members();
    assert_eq!(before.len(), 4, "{before:?}");
    let mut victim = cluster
        .run_command(&[], &require("sh"), &["-c", "read line; echo victim $line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("lego run starts the victim");
    let victim_pid = poll(Duration::from_secs(20), || {
        cluster.processes().first().map(|p| p.0)
    })
    .expect("the victim runs");
    let mut attacker = cluster
        .run_command(&[], &require("sleep"), &["60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("lego run starts the attacker");
    let tree = poll(Duration::from_secs(20), || {
        cluster
            .processes()
            .into_iter()
            .map(|p| p.0)
            .find(|pid| *pid != victim_pid)
    })
    .expect("the attacker runs");
    // Exactly what the attacker's runtime was given.
    let key = cluster.secret().process_key(tree, tree);
    let me = Identity::process(tree, tree);
    let addr = |name: &str| -> SocketAddr {
        cluster.record()["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["addr"].as_str())
            .unwrap()
            .parse()
            .unwrap()
    };
    let client = |at: SocketAddr| {
        let mut config = ClientConfig::new(key.clone(), me.clone());
        config.backoff.give_up_after = Duration::from_secs(2);
        Client::new(at, config)
    };
    let refused = |client: &Client, message: Message, payload: &[u8]| -> bool {
        match client.call(&message, payload) {
            Ok(reply) => {
                matches!(reply.message, Message::Error(e) if e.code == lego_proto::ErrorCode::Denied)
            }
            // Closing on us is a refusal too.
            Err(_) => true,
        }
    };
    let memory = client(addr("memory-0"));
    let storage = client(addr("storage-0"));
    // The key does authenticate: refusals below are the components'.
    for (name, component) in [("memory", &memory), ("storage", &storage)] {
        let pong = component.call(&Message::Ping, &[]).map(|f| f.message);
        assert_eq!(
            pong.ok(),
            Some(Message::Pong),
            "{name} does not serve the tree's key"
        );
    }
    for attempt in [
        Message::FetchPage {
            pid: victim_pid,
            addr: 0x400000,
        },
        Message::FetchPages {
            pid: victim_pid,
            addr: 0x400000,
            count: 4,
        },
        Message::Fork {
            parent: victim_pid,
            child: tree + 1,
            seq: 0,
        },
        Message::ReleaseProcess { pid: victim_pid },
    ] {
        let kind = attempt.kind();
        assert!(
            refused(&memory, attempt, &[]),
            "memory manager served {kind} of the victim"
        );
    }
    let page = vec![0x41u8; 4096];
    assert!(refused(
        &memory,
        Message::WriteBack {
            pid: victim_pid,
            addrs: vec![0x400000],
        },
        &page
    ));
    let monitor = client(cluster.monitor_addr());
    let fake = Registration {
        name: "memory-9".into(),
        role: Role::Memory,
        addr: "127.0.0.1:9".parse().unwrap(),
        pid: std::process::id(),
        load: Load::Memory {
            capacity: 1 << 50,
            used: 0,
            committed: 0,
            copies: Vec::new(),
            held: Vec::new(),
            regions: Vec::new(),
        },
        unix_socket: None,
    };
    assert!(
        refused(&monitor, Message::Register(fake), &[]),
        "registered a component"
    );
    assert!(
        refused(&monitor, Message::GetClusterView, &[]),
        "listed the cluster"
    );
    assert!(refused(
        &monitor,
        Message::PlaceProcess { processor: None },
        &[]
    ));
    let no_voucher = Message::Storage {
        request: StorageRequest::Root,
        caller: None,
    };
    assert!(
        refused(&storage, no_voucher, &[]),
        "storage served a request without a voucher"
    );
    let forged = Message::Storage {
        request: StorageRequest::Root,
        caller: Some(Voucher {
            tree,
            pid: tree,
            expires_ms: u64::MAX,
            ..Voucher::default()
        }),
    };
    assert!(
        refused(&storage, forged, &[]),
        "storage served a forged voucher"
    );
    // The processor's socket for runtimes, found as any program can find
    // it (an abstract name in /proc/net/unix): no voucher for a process
    // this connection is not.
    // (Other clusters' processors are listed too: the first whose
    // handshake the key passes is this one.)
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let (mut stream, mut reader) = unix
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('@'))
        .filter(|n| n.starts_with("lego-") && n.ends_with("-processor-0"))
        .find_map(|name| {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?;
            let mut stream = std::os::unix::net::UnixStream::connect_addr(&addr).ok()?;
            let mut reader = lego_transport::FrameReader::new(
                stream.try_clone().ok()?,
                lego_proto::FrameLimits::HANDSHAKE,
            );
            lego_transport::handshake::client(
                &mut stream,
                &mut reader,
                &std::path::Path::new(name).into(),
                &key,
                &me,
                Duration::from_secs(5),
            )
            .ok()?;
            Some((stream, reader))
        })
        .expect("the tree's key authenticates the tree at its processor");
    stream.write_all(&[0]).unwrap();
    lego_transport::write_frame(
        &mut stream,
        1,
        &Message::Vouch {
            tid: std::process::id(),
        },
        &[],
    )
    .unwrap();
    let vouched = reader.read_frame().map(|f| f.message);
    assert!(
        !matches!(vouched, Ok(Message::Vouched(_))),
        "the processor vouched for a process the connection is not: {vouched:?}"
    );

    // The victim is whole.
    victim.stdin.take().unwrap().write_all(b"intact\n").unwrap();
    let mut out = String::new();
    victim
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "victim intact\n");
    assert!(victim.wait().unwrap().success());
    let _ = attacker.kill();
    let _ = attacker.wait();
    for pid in cluster.pids() {
        assert!(process_alive(pid), "component {pid} died");
    }
    assert_eq!(members(), before, "the cluster's membership changed");
}

/// A storage file's stand-in on the host is private to its open file:
/// chmod and chown through /proc/self/fd/N leave the host's objects (once:
/// /dev/null, for every process on the machine) unchanged and change the
/// file itself, as natively; opening the link opens the file; flocks of
/// two different files do not contend (once: on that one /dev/null).
#[test]
fn a_storage_files_host_stand_in_is_private_to_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cluster = Cluster::up(&["--memories", "1"]);
    let hostobjects = program("hostobjects", Build::GlibcStatic);
    let dir = std::env::temp_dir().join(format!("lego-test-hostobj-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let null = |m: std::fs::Metadata| (m.mode(), m.uid(), m.gid());
    let before = null(std::fs::metadata("/dev/null").unwrap());
    let lego = cluster.run(&[], &hostobjects, &[dir.to_str().unwrap()]);
    let after = null(std::fs::metadata("/dev/null").unwrap());
    if after != before {
        // Put the machine right before failing.
        let _ = std::fs::set_permissions("/dev/null", std::fs::Permissions::from_mode(before.0));
        let _ = std::os::unix::fs::chown("/dev/null", Some(before.1), Some(before.2));
    }
    assert_eq!(after, before, "/dev/null changed (mode, uid, gid)");
    let native = native(&hostobjects, &[dir.to_str().unwrap()]);
    assert_same(&lego, &native, "hostobjects");
    assert_eq!(
        text(&lego.stdout),
        "flock a=0 b=0\nobj-a mode 700 uid 65534\nreopened: 2 'hi'\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// /proc files that would show the runtime's memory are refused; a
/// thread's maps and the environment are the program's (they were the
/// runtime's).
#[test]
fn proc_self_hides_the_runtime_and_shows_the_program() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let procviews = program("procviews", Build::GlibcStatic);
    let out = cluster.run(&[], &procviews, &[]);
    assert_eq!(
        text(&out.stdout),
        "/proc/self/mem: Permission denied\n\
         /proc/self/pagemap: Permission denied\n\
         /proc/self/smaps: Permission denied\n\
         /proc/self/smaps_rollup: Permission denied\n\
         task maps same: 1\n\
         environ same: 1\n",
        "{}",
        text(&out.stderr)
    );
    // Natively the same program sees its own maps and environment too.
    let native = native(&procviews, &[]);
    assert!(text(&native.stdout).ends_with("task maps same: 1\nenviron same: 1\n"));
}

/// A fork after dropping root completes as natively (it once hung: the
/// child's runtime could not make its userfaultfd as nobody), and the
/// child is announced to its processor.
#[test]
fn a_fork_after_dropping_root_completes() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let forknobody = program("forknobody", Build::GlibcStatic);
    let mut child = cluster
        .run_command(&[], &forknobody, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let done = poll(Duration::from_secs(60), || child.try_wait().unwrap());
    if done.is_none() {
        let _ = child.kill();
        panic!("fork after setuid(nobody) did not finish within a minute");
    }
    let out = child.wait_with_output().unwrap();
    assert_same(&out, &native(&forknobody, &[]), "fork as nobody");
    // The child announced itself to its processor (it is listed and its
    // memory released when it ends), though it could not walk the
    // cluster's state directory as nobody.
    let log = cluster.log("processor-0");
    assert!(!log.contains("could not announce"), "{log}");
    // The processor's own line for an adopted process.
    assert!(log.contains(") forked from"), "{log}");
}

/// A program that escapes the syscall trap (it writes the selector byte
/// at its GS base) still cannot make the calls Lego refuses as privileged,
/// nor signal or renice its processor, raw or through the trap: the
/// seccomp backstop refuses them (before, unshare(0) succeeded as root on
/// the processor host, and a program could SIGKILL its processor).
#[test]
fn privileged_calls_stay_refused_after_escaping_the_trap() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let escape = program("escape", Build::GlibcStatic);
    let processor = cluster.pid("processor-0");
    let out = cluster.run(&[], &escape, &[&processor.to_string()]);
    assert_eq!(
        text(&out.stdout),
        "escaped: yes\nunshare EPERM\nsetns EPERM\ninit_module EPERM\nbpf EPERM\n\
         raw kill processor EPERM\nraw kill everyone EPERM\nraw renice processor EPERM\n\
         kill processor EPERM\nrenice processor EPERM\n",
        "{}",
        text(&out.stderr)
    );
    assert!(process_alive(processor));
}

/// The cluster secret never enters a program's process: every page the
/// runtime process of a running program holds (read from outside, present
/// pages only, so nothing faults) is searched for the secret, raw and as
/// hex (before, the runtime spec carried it and the runtime kept it); and
/// the storage manager does not serve its file, by any name.
#[test]
fn the_cluster_secret_is_nowhere_in_a_programs_process() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let hex = std::fs::read_to_string(cluster.state.join("secret")).unwrap();
    let hex = hex.trim().to_ascii_lowercase();
    let raw: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(raw.len(), 32);
    let sleeper = require("sleep");
    let mut child = cluster
        .run_command(&[], &sleeper, &["30"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let processor = cluster.pid("processor-0");
    let runtime = poll(Duration::from_secs(20), || {
        runtimes_of(processor).first().copied()
    })
    .expect("the program's runtime runs");
    // Until the program runs (the runtime has read its spec and started).
    poll(Duration::from_secs(20), || {
        let comm = std::fs::read_to_string(format!("/proc/{runtime}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    })
    .expect("the program starts");
    let (pages, found) = found_in_memory(runtime, &[raw]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(pages > 100, "only {pages} pages read");
    assert!(
        found.is_empty(),
        "the cluster secret is in the runtime's memory: {found:?}"
    );
    // Nor can a program read it from the cluster's state directory, by its
    // name or through a hard link elsewhere (the storage manager serves
    // the whole tree, and programs run as root).
    let secret_file = cluster.state.join("secret");
    let link = std::env::temp_dir().join(format!("lego-test-secret-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(&secret_file, &link).unwrap();
    let cat = require("cat");
    for path in [&secret_file, &link] {
        let out = cluster.run(&[], &cat, &[path.to_str().unwrap()]);
        assert_eq!(shell_status(&out), 1, "{}", path.display());
        assert!(out.stdout.is_empty(), "{} was served", path.display());
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out.stderr)
        );
    }
    // Nor opened for writing (a create of an existing name), nor
    // anything else of the state directory read, replaced or removed.
    let sh = require("bash");
    let state = cluster.state.display().to_string();
    let attempts = [
        format!("exec 3<>{state}/secret && cat <&3"),
        format!("cat {state}/cluster.json"),
        format!("echo x > {state}/cluster.json"),
        format!("rm -f {state}/secret"),
        format!("mv {link} {state}/secret", link = link.display()),
        format!("ls {state}"),
    ];
    for script in &attempts {
        let out = cluster.run(&[], &sh, &["-c", script]);
        assert_ne!(
            shell_status(&out),
            0,
            "{script} succeeded: {}",
            text(&out.stdout)
        );
        assert!(
            !text(&out.stdout).contains(&hex),
            "{script} showed the secret"
        );
    }
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap().trim(), hex);
    assert!(
        cluster.record()["components"].is_array(),
        "cluster.json intact"
    );
    let _ = std::fs::remove_file(&link);
}

/// File permissions hold for the program's credentials, not the storage
/// manager's: after dropping to nobody it cannot read, append to, remove
/// or chmod a root 0600 file nor create in a root 0755 directory (it
/// once could do all of these), and what it creates is nobody's with its
/// umask, on the export itself, exactly as natively.
#[test]
fn files_are_checked_and_owned_as_the_programs_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cluster = Cluster::up(&["--memories", "1"]);
    let asnobody = program("asnobody", Build::GlibcStatic);
    let dir = std::env::temp_dir().join(format!("lego-test-asnobody-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pub")).unwrap();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("pub"), PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::write(dir.join("secret"), b"root only\n").unwrap();
    std::fs::set_permissions(dir.join("secret"), PermissionsExt::from_mode(0o600)).unwrap();
    let d = dir.to_str().unwrap();
    let lego = cluster.run(&[], &asnobody, &[d, "made"]);
    let lego_files: Vec<_> = ["made", "made.d", "made.ro"]
        .iter()
        .map(|n| {
            std::fs::metadata(dir.join("pub").join(n))
                .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777))
        })
        .collect();
    for n in ["made", "made.d", "made.ro"] {
        let p = dir.join("pub").join(n);
        let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir(&p));
    }
    let native = native(&asnobody, &[d, "made"]);
    assert_same(&lego, &native, "asnobody");
    assert!(text(&lego.stdout).contains("read root 0600: Permission denied\n"));
    assert_eq!(
        std::fs::read(dir.join("secret")).unwrap(),
        b"root only\n",
        "the root file is untouched"
    );
    assert!(!dir.join("new").exists() && !dir.join("newdir").exists());
    assert_eq!(
        lego_files
            .into_iter()
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
        [
            (65534, 65534, 0o600),
            (65534, 65534, 0o755),
            (65534, 65534, 0o444)
        ],
        "on the export, what nobody made under Lego is nobody's"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ACL decides as natively: nobody reads a root 0600 file whose ACL
/// grants it reading, and not one whose ACL grants another user (before,
/// the runtime refused both by the mode bits alone).
#[test]
fn acls_on_storage_files_decide_as_natively() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::up(&["--memories", "1"]);
    let dir = std::env::temp_dir().join(format!("lego-test-acls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, user) in [("granted", 65534u32), ("other", 1000)] {
        let path = dir.join(name);
        std::fs::write(&path, format!("{name}\n")).unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o600)).unwrap();
        set_acl(&path, user);
    }
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    let cat = |name: &str| {
        let path = dir.join(name);
        let args = [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/cat",
            path.to_str().unwrap(),
        ]
        .map(str::to_owned);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (cluster.run(&[], setpriv, &args), native(setpriv, &args))
    };
    let (lego, native_out) = cat("granted");
    assert_same(&lego, &native_out, "cat of a file whose ACL grants nobody");
    assert_eq!(text(&lego.stdout), "granted\n");
    let (lego, native_out) = cat("other");
    assert_same(&lego, &native_out, "cat of a file whose ACL grants another");
    assert!(!lego.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// execve ends the capabilities of a program that is not root, as on
/// Linux: `setpriv` keeps them across its setresuid to nobody (it sets
/// PR_SET_KEEPCAPS) and raises them again, and the program it executes
/// has none and cannot read a root 0600 file (before, Lego's exec, which
/// loads the new program in the same host process, kept them all, and
/// `cat` read it).
#[test]
fn capabilities_end_at_exec_as_natively() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::up(&["--memories", "1"]);
    let dir = std::env::temp_dir().join(format!("lego-test-execcaps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, b"root only\n").unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o600)).unwrap();
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    let script = format!(
        "grep -E '^Cap(Prm|Eff)' /proc/self/status; cat {}",
        secret.display()
    );
    let args = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/bin/sh",
        "-c",
        &script,
    ];
    let lego = cluster.run(&[], setpriv, &args);
    let native = native(setpriv, &args);
    let _ = std::fs::remove_dir_all(&dir);
    assert_same(&lego, &native, "setpriv to nobody, then exec");
    assert_eq!(
        text(&lego.stdout),
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
    );
}

/// Gives the root 0600 file at `path` an access ACL that lets `user`
/// read it (`user::rw-,user:USER:r--,group::---,mask::r--,other::---`),
/// in the kernel's xattr form.
fn set_acl(path: &std::path::Path, user: u32) {
    const UNDEFINED: u32 = u32::MAX;
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, UNDEFINED),
        (0x02, 4, user),
        (0x04, 0, UNDEFINED),
        (0x10, 4, UNDEFINED),
        (0x20, 0, UNDEFINED),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // Safety: NUL-ended path and name, and a live buffer of its length.
    let set = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    assert_eq!(set, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// `ls -l` of a tree of mixed owners, and `id` as root and after setpriv
/// drops to nobody, print what they print natively.
#[test]
fn ids_and_owners_show_as_natively() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::up(&["--memories", "1"]);
    let dir = std::env::temp_dir().join(format!("lego-test-owners-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, uid, gid, mode) in [
        ("by-root", 0, 0, 0o644),
        ("by-nobody", 65534, 65534, 0o600),
        ("by-1000", 1000, 100, 0o2750),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&p, PermissionsExt::from_mode(mode)).unwrap();
    }
    let d = dir.to_str().unwrap();
    let ls = std::path::Path::new("/bin/ls");
    assert_same(
        &cluster.run(&[], ls, &["-l", "--time-style=+", d]),
        &native(ls, &["-l", "--time-style=+", d]),
        "ls -l",
    );
    let id = std::path::Path::new("/usr/bin/id");
    let lego_id = cluster.run(&[], id, &[]);
    assert_same(&lego_id, &native(id, &[]), "id");
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    let drop = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/id",
    ];
    let lego_nobody = cluster.run(&[], setpriv, &drop);
    assert_same(&lego_nobody, &native(setpriv, &drop), "setpriv id");
    assert!(
        text(&lego_nobody.stdout).starts_with("uid=65534"),
        "{}",
        text(&lego_nobody.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A program on storage runs as an unprivileged host identity (a user
/// namespace of its own, Lego uid N as host uid 2^31+N): escaped from the
/// trap as root under Lego, it signals, ptraces, opens or reads the
/// memory of, and renices no component and no other user's program, and
/// opens the host's root-only files no more than nobody does natively
/// (before, it was host root: every one of these succeeded).
#[test]
fn an_escaped_program_reaches_its_host_only_as_an_unprivileged_user() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let reach = program("hostreach", Build::GlibcStatic);
    // Another user's program, running meanwhile.
    let mut other = cluster
        .run_command(
            &[],
            &require("setpriv"),
            &[
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
                "/bin/sleep",
                "60",
            ],
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("lego run starts");
    let processor = cluster.pid("processor-0");
    // Once it runs as uid 1000 (host uid 2^31 + 1000).
    let victim = poll(Duration::from_secs(20), || {
        runtimes_of(processor).into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.split_whitespace().eq([
                        "Uid:",
                        "2147484648",
                        "2147484648",
                        "2147484648",
                        "2147484648",
                    ])
                })
            })
        })
    })
    .expect("the other user's program runs as uid 1000");
    let mut targets: Vec<String> = cluster.pids().iter().map(u32::to_string).collect();
    targets.push(victim.to_string());
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let lego = cluster.run(&[], &reach, &targets);
    let nobody = std::process::Command::new(require("setpriv"))
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&reach)
        .args(&targets)
        .output()
        .expect("setpriv runs");
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(
        text(&lego.stdout),
        text(&nobody.stdout),
        "{}",
        text(&lego.stderr)
    );
    for line in text(&lego.stdout).lines() {
        assert!(
            !line.contains(" ok"),
            "reached from an escaped program: {line}"
        );
    }
    assert_eq!(text(&lego.stdout).lines().count(), targets.len() + 2);
    for pid in cluster.pids() {
        assert!(process_alive(pid), "component {pid} died");
    }
}

/// Binding and connecting Unix sockets at paths behave as natively, as
/// root and after dropping to nobody: owners, modes (umask), EACCES where
/// nobody may not write or connect (the processor makes these calls with
/// the program's ids: the runtime's own host identity could make none).
#[test]
fn unix_sockets_at_paths_behave_as_natively() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let sockets = program("pathsockets", Build::GlibcStatic);
    let run = |how: &str| {
        let base =
            std::env::temp_dir().join(format!("lego-test-sockets-{}-{how}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (closed, open) = (base.join("closed"), base.join("open"));
        std::fs::create_dir_all(&closed).unwrap();
        std::fs::create_dir_all(&open).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let args = [closed.to_str().unwrap(), open.to_str().unwrap()];
        let out = if how == "native" {
            native(&sockets, &args)
        } else {
            cluster.run(&[], &sockets, &args)
        };
        let _ = std::fs::remove_dir_all(&base);
        out
    };
    let (native, lego) = (run("native"), run("lego"));
    assert!(native.status.success(), "{}", text(&native.stderr));
    let expected = text(&native.stdout);
    assert_eq!(text(&lego.stdout), expected, "{}", text(&lego.stderr));
    assert!(
        expected.contains("bind nobody.sock: Permission denied"),
        "{expected}"
    );
    assert!(
        expected.contains("nobody.sock: mode 750 uid 65534 socket 1"),
        "{expected}"
    );
}

/// A user other than the cluster's owner runs programs on it only when
/// `lego up` allows them (`--allow-users`), as themselves: `id` under Lego
/// prints what it prints natively for that user; signals reach their
/// program through the processor. Others are refused with an error
/// naming the way in.
#[test]
fn other_users_run_programs_only_where_the_cluster_allows_them() {
    let open = Cluster::up(&["--memories", "1", "--allow-users", "nobody"]);
    let closed = Cluster::up(&["--memories", "1"]);
    let setpriv = require("setpriv");
    let as_user = |uid: &str, state: &std::path::Path, program: &[&str]| {
        let mut cmd = std::process::Command::new(&setpriv);
        cmd.args(["--reuid", uid, "--regid", "65534", "--clear-groups"])
            .arg(LEGO)
            .arg("run")
            .arg("--state")
            .arg(state)
            .arg("--")
            .args(program)
            .current_dir("/")
            .env_remove("LEGO_STATE")
            .stdin(Stdio::null());
        cmd
    };
    let id = require("id");
    let id = id.to_str().unwrap();
    let lego = as_user("65534", &open.state, &[id]).output().unwrap();
    let native = std::process::Command::new(&setpriv)
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", id])
        .output()
        .unwrap();
    assert!(lego.status.success(), "{}", text(&lego.stderr));
    assert_eq!(text(&lego.stdout), text(&native.stdout));
    assert!(
        text(&lego.stdout).starts_with("uid=65534("),
        "{}",
        text(&lego.stdout)
    );

    // Ctrl-C reaches the program (its shell's trap runs) though the user
    // may not signal its runtime on the host.
    // (A background job of a shell without job control ignores SIGINT,
    // as natively: the trap ends it.)
    let script = "trap 'kill $!; echo caught; exit 7' INT; /bin/sleep 60 & wait";
    let shell = as_user("65534", &open.state, &["/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let processor = open.pid("processor-0");
    // Once the shell has forked its sleep, its trap is set.
    poll(Duration::from_secs(20), || {
        let shell = *runtimes_of(processor).first()?;
        (!runtimes_of(shell).is_empty()).then_some(())
    })
    .expect("the guest's shell runs its sleep");
    // Safety: kill(2) with plain integers, at the lego run we started
    // (setpriv ran it in its own process).
    unsafe { libc::kill(shell.id() as i32, libc::SIGINT) };
    let out = shell.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "caught\n");
    assert_eq!(out.status.code(), Some(7));

    let refused = as_user("65533", &open.state, &[id]).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("uid 65533 may not run programs on this cluster"),
        "{}",
        text(&refused.stderr)
    );
    let refused = as_user("65534", &closed.state, &[id]).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("is another user's")
            && text(&refused.stderr).contains("--allow-users"),
        "{}",
        text(&refused.stderr)
    );
    assert!(refused.stdout.is_empty());
}

/// A fork whose child Lego cannot set up (every descriptor in use: a Lego
/// child needs a few a native one does not) fails with EAGAIN, as a fork
/// that cannot make a process does, or works; it never hangs, leaves no
/// child or runtime behind, and the next fork works. RLIMIT_NOFILE set
/// below what the runtime needs reads back as set, and forks still work
/// (before, every later connection of the runtime failed).
#[test]
fn a_fork_lego_cannot_set_up_fails_with_eagain_and_leaves_nothing() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let forkfail = program("forkfail", Build::GlibcStatic);
    let native = native(&forkfail, &[]);
    let lego = cluster.run(&[], &forkfail, &[]);
    assert_same(&lego, &native, "forks with every descriptor in use");
    assert_eq!(
        text(&lego.stdout),
        "full: ok or EAGAIN\nfree: ok\nleftover children: ECHILD\nnofile: 64 64\nlow: ok\n"
    );
    let processor = cluster.pid("processor-0");
    assert!(
        poll(Duration::from_secs(10), || runtimes_of(processor)
            .is_empty()
            .then_some(()))
        .is_some(),
        "runtimes were left behind"
    );
}

/// A descriptor keeps the access it was opened with when the program
/// drops root, as on Linux (a daemon opens its log, then becomes nobody):
/// appending to a root 0644 log and reading a root 0600 file through
/// descriptors opened before the drop work, in a forked child too, and so
/// does ftruncate; opening either anew and fchmod fail. The same as
/// natively (before, every request on them was refused with the new ids).
#[test]
fn descriptors_opened_before_a_drop_keep_their_access() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let dropkeep = program("dropkeep", Build::GlibcStatic);
    let run = |how: &str| {
        let dir =
            std::env::temp_dir().join(format!("lego-test-dropkeep-{}-{how}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (log, secret) = (dir.join("log"), dir.join("secret"));
        std::fs::write(&secret, "root only\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let args = [log.to_str().unwrap(), secret.to_str().unwrap()];
        let out = if how == "native" {
            native(&dropkeep, &args)
        } else {
            cluster.run(&[], &dropkeep, &args)
        };
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        (out, logged)
    };
    let (native, native_log) = run("native");
    let (lego, lego_log) = run("lego");
    assert_same(&lego, &native, "descriptors kept across a drop");
    assert_eq!(lego_log, native_log);
    let out = text(&lego.stdout);
    assert!(
        out.contains("append after drop: ok\nread after drop: ok\n"),
        "{out}"
    );
    assert!(out.contains("reopen secret: Permission denied"), "{out}");
}

/// Root that drops capabilities with capset is refused what they
/// overrode, on storage as natively: without CAP_DAC_OVERRIDE it cannot
/// write a nobody 0600 file, without CAP_DAC_READ_SEARCH in effect it
/// cannot read it (nor can its forked child), access(2) answers from the
/// permitted set, and raising the capability again gives reading back;
/// as real uid nobody and effective root, access(2) answers for the real
/// ids and faccessat(AT_EACCESS) for the effective ones (before, a
/// storage manager served root with every override whatever the program
/// had dropped, and AT_EACCESS was ignored).
#[test]
fn root_that_drops_capabilities_loses_their_overrides() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::up(&["--memories", "1"]);
    let dropcaps = program("dropcaps", Build::GlibcStatic);
    let dir = std::env::temp_dir().join(format!("lego-test-dropcaps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let theirs = dir.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("file"), b"nobody's\n").unwrap();
    std::fs::set_permissions(theirs.join("file"), PermissionsExt::from_mode(0o600)).unwrap();
    // Searchable by all: access(2) walks the path with the caller's
    // effective capabilities under Lego, where Linux uses the permitted
    // ones of a real root for the walk too.
    std::fs::set_permissions(&theirs, PermissionsExt::from_mode(0o755)).unwrap();
    for path in [theirs.join("file"), theirs.clone()] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    let file = theirs.join("file");
    let args = [file.to_str().unwrap()];
    let native = native(&dropcaps, &args);
    let lego = cluster.run(&[], &dropcaps, &args);
    let _ = std::fs::remove_dir_all(&dir);
    assert_same(&lego, &native, "dropcaps");
    let out = text(&lego.stdout);
    assert!(
        out.contains("no DAC_OVERRIDE: read ok, write Permission denied")
            && out.contains("child: read Permission denied")
            && out.contains("real nobody: access(R_OK) Permission denied, AT_EACCESS ok"),
        "{out}"
    );
}

/// Where any of `keys` (32 bytes each, raw or as hex) lies in the present
/// pages of host process `pid` (read from outside, so nothing faults):
/// how many pages were read, and where each was found.
fn found_in_memory(pid: u32, keys: &[Vec<u8>]) -> (u64, Vec<String>) {
    use std::io::{Read, Seek, SeekFrom};
    let hexes: Vec<String> = keys
        .iter()
        .map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let (mut pages, mut found) = (0u64, Vec::new());
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut entries = vec![0u8; ((end - start) / 4096 * 8) as usize];
        pagemap.seek(SeekFrom::Start(start / 4096 * 8)).unwrap();
        if pagemap.read_exact(&mut entries).is_err() {
            continue;
        }
        // Present pages only (reading no other, so nothing faults); the
        // end of the page before, if present, is searched with each (a
        // key may straddle two pages).
        let mut page = start;
        let mut tail: Vec<u8> = Vec::new();
        for entry in entries.chunks(8) {
            let present = u64::from_ne_bytes(entry.try_into().unwrap()) >> 63 == 1;
            let mut bytes = std::mem::take(&mut tail);
            if present {
                let mut contents = vec![0u8; 4096];
                mem.seek(SeekFrom::Start(page)).unwrap();
                if mem.read_exact(&mut contents).is_ok() {
                    pages += 1;
                    bytes.extend_from_slice(&contents);
                    for (key, hex) in keys.iter().zip(&hexes) {
                        if bytes.windows(32).any(|w| w == key.as_slice())
                            || bytes
                                .windows(64)
                                .any(|w| w.eq_ignore_ascii_case(hex.as_bytes()))
                        {
                            found.push(format!("{page:#x} in {line}"));
                        }
                    }
                    tail = contents[4096 - 63..].to_vec();
                }
            }
            page += 4096;
        }
    }
    (pages, found)
}

/// A forked child holds no key but its own: its parent's process key,
/// which would let it act as its parent (its memory, its credentials), is
/// nowhere in its memory once it runs (the child gets its own key with
/// the fork and the runtime overwrites every copy of the parent's it
/// kept); the cluster secret is in neither.
#[test]
fn a_forked_child_holds_no_key_but_its_own() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let mut shell = cluster
        .run_command(&[], &require("sh"), &["-c", "/bin/sleep 30 & wait"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let processor = cluster.pid("processor-0");
    // The child's runtime, once it runs its sleep.
    let (parent, child) = poll(Duration::from_secs(20), || {
        let parent = *runtimes_of(processor).first()?;
        let child = *runtimes_of(parent).first()?;
        let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).ok()?;
        (comm.trim() == "sleep").then_some((parent, child))
    })
    .expect("the shell's child runs sleep");
    let pid_of = |host: u32| {
        cluster
            .processes()
            .into_iter()
            .find(|p| p.1 == host)
            .map(|p| p.0)
    };
    let (tree, child_pid) = poll(Duration::from_secs(10), || {
        Some((pid_of(parent)?, pid_of(child)?))
    })
    .expect("both are listed");
    let secret = cluster.secret();
    let parents_key = secret.process_key(tree, tree).to_bytes().to_vec();
    let childs_key = secret.process_key(tree, child_pid).to_bytes().to_vec();
    let hex = std::fs::read_to_string(cluster.state.join("secret")).unwrap();
    let raw: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).unwrap())
        .collect();
    let (pages, found) = found_in_memory(child, &[parents_key, raw]);
    let (_, own) = found_in_memory(child, &[childs_key]);
    let _ = shell.kill();
    let _ = shell.wait();
    assert!(pages > 100, "only {pages} pages read");
    assert!(
        found.is_empty(),
        "the parent's key or the secret is in the child: {found:?}"
    );
    assert!(
        !own.is_empty(),
        "the scan finds no key at all (the child's own)"
    );
}
