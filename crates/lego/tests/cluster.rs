//! A real local cluster, driven through the `lego` binary as a user would.
//! Every test starts its own cluster in its own state directory on
//! loopback ports the components pick, and tears it down even when it fails.

mod common;

use common::*;
use lego_proto::{FrameLimits, Message, Preamble, Role};
use lego_transport::{
    handshake, write_frame, ClusterSecret, FrameReader, Identity, TransportError,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::time::{Duration, Instant};

const INTERVAL_MS: u64 = 500;

#[test]
fn up_status_failure_detection_monitor_restart_and_down() {
    let cluster = Cluster::up(&["--heartbeat-interval", "500ms"]);
    let names = [
        "monitor",
        "processor-0",
        "memory-0",
        "memory-1",
        "storage-0",
    ];

    // Five healthy components, each with the pid `up` recorded.
    let rows = cluster.health().expect("status works");
    assert_eq!(rows.len(), 5, "{rows:?}");
    for name in names {
        let row = rows
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name} missing: {rows:?}"));
        assert_eq!(row.1, "alive", "{rows:?}");
        assert_eq!(row.2, cluster.pid(name) as u64);
    }
    let table = text(&cluster.lego(&["status"]).stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" alive ")).count(),
        5,
        "{table}"
    );

    // kill -9 of one memory manager: dead within three heartbeat intervals,
    // the other four stay alive.
    let victim = cluster.pid("memory-0");
    kill9(victim);
    let killed_at = Instant::now();
    let rows = poll(Duration::from_secs(10), || {
        cluster
            .health()
            .filter(|rows| rows.iter().any(|r| r.0 == "memory-0" && r.1 == "dead"))
    })
    .expect("memory-0 is reported dead");
    let detection = killed_at.elapsed();
    eprintln!(
        "memory-0 reported dead {detection:?} after kill -9 (heartbeat interval {INTERVAL_MS}ms)"
    );
    assert!(
        detection <= Duration::from_millis(3 * INTERVAL_MS),
        "dead after {detection:?}, more than three heartbeat intervals"
    );
    for row in rows.iter().filter(|r| r.0 != "memory-0") {
        assert_eq!(row.1, "alive", "{rows:?}");
    }
    assert!(cluster.log("monitor").contains("memory-0 marked dead"));

    // Kill the monitor and start it again: the live components re-register
    // by themselves, with the pids they had (nothing else restarted).
    let before: Vec<(String, u32)> = names[1..]
        .iter()
        .map(|n| (n.to_string(), cluster.pid(n)))
        .collect();
    kill9(cluster.pid("monitor"));
    let out = cluster.lego(&["restart", "monitor"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Restarted monitor"));
    let rows = poll(Duration::from_millis(6 * INTERVAL_MS), || {
        cluster.health().filter(|rows| {
            ["processor-0", "memory-1", "storage-0"]
                .iter()
                .all(|n| rows.iter().any(|r| r.0 == *n && r.1 == "alive"))
        })
    })
    .expect("the live components re-register with the restarted monitor");
    for (name, pid) in &before {
        if name != "memory-0" {
            let row = rows.iter().find(|r| &r.0 == name).unwrap();
            assert_eq!(row.2, *pid as u64, "{name} was restarted: {rows:?}");
        }
    }
    let memory0 = rows
        .iter()
        .find(|r| r.0 == "memory-0")
        .expect("memory-0 still listed");
    assert_eq!(memory0.1, "dead");

    // `lego down` leaves none of the recorded processes alive.
    let pids = cluster.pids();
    let out = cluster.lego(&["down"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} survived lego down");
    }
    assert!(!cluster.state.join("cluster.json").exists());
    let again = cluster.lego(&["status"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("lego up"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn a_second_up_on_a_live_state_directory_refuses() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let out = cluster.lego(&["up"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains(&cluster.state.display().to_string()), "{err}");
    let rows = cluster.health().expect("the first cluster still answers");
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.1 == "alive"), "{rows:?}");
}

#[test]
fn a_component_that_cannot_start_fails_up_with_its_log_and_leaves_nothing() {
    let missing = std::env::temp_dir().join("lego-no-such-export-dir");
    let state = std::env::temp_dir().join(format!("lego-test-badexport-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let out = lego(&state, &["up", "--export", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("storage-0 exited during startup"), "{err}");
    assert!(
        err.contains("cannot export") && err.contains("lego-no-such-export-dir"),
        "{err}"
    );
    assert!(!state.join("cluster.json").exists());
    assert_eq!(
        processes_mentioning(state.to_str().unwrap()),
        Vec::<u32>::new()
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// Runs the client side of the handshake on a raw socket, so the test knows
/// its own address (to find it in the component's log).
fn handshake_from(
    addr: SocketAddr,
    secret: &ClusterSecret,
) -> (TcpStream, SocketAddr, Result<Identity, TransportError>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let local = stream.local_addr().unwrap();
    let mut reader = FrameReader::new(stream.try_clone().unwrap(), FrameLimits::HANDSHAKE);
    let result = handshake::client(
        &mut stream,
        &mut reader,
        &addr.into(),
        secret,
        &Identity::new(Role::Client, "test"),
        Duration::from_secs(5),
    );
    (stream, local, result)
}

/// Waits for the peer to close `stream`.
fn closed_by_peer(mut stream: TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Ping with the right secret succeeds.
fn serves(addr: SocketAddr, secret: &ClusterSecret) -> bool {
    let (mut stream, _, result) = handshake_from(addr, secret);
    if result.is_err() {
        return false;
    }
    let mut reader = FrameReader::new(stream.try_clone().unwrap(), FrameLimits::DEFAULT);
    write_frame(&mut stream, 1, &Message::Ping, &[]).unwrap();
    matches!(reader.read_frame(), Ok(f) if f.message == Message::Pong && f.id == 1)
}

fn log_mentions(cluster: &Cluster, name: &str, needles: &[&str]) -> bool {
    poll(Duration::from_secs(5), || {
        let log = cluster.log(name);
        log.lines()
            .any(|line| needles.iter().all(|n| line.contains(n)))
            .then_some(())
    })
    .is_some()
}

#[test]
fn a_client_with_the_wrong_secret_is_refused_and_logged() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let monitor = cluster.monitor_addr();
    let wrong = ClusterSecret::generate().unwrap();
    let (_stream, local, result) = handshake_from(monitor, &wrong);
    let err = result.expect_err("the wrong secret is refused");
    assert!(matches!(err, TransportError::WrongSecret { .. }), "{err}");
    assert!(
        log_mentions(
            &cluster,
            "monitor",
            &["refused connection", "cluster secret", &local.to_string()]
        ),
        "monitor log lacks the refusal of {local}:\n{}",
        cluster.log("monitor")
    );
    assert!(serves(monitor, &cluster.secret()));
}

#[test]
fn garbage_and_a_4_gib_frame_close_only_their_connection() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let secret = cluster.secret();
    let memory: SocketAddr = cluster.record()["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "memory-0")
        .and_then(|c| c["addr"].as_str())
        .unwrap()
        .parse()
        .unwrap();

    for (name, addr) in [("monitor", cluster.monitor_addr()), ("memory-0", memory)] {
        // 1 MiB of pseudo-random bytes from the first byte on.
        let mut garbage = vec![0u8; 1 << 20];
        let mut x: u64 = 0x2545f4914f6cdd1d;
        for b in garbage.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 32) as u8;
        }
        let mut stream = TcpStream::connect(addr).unwrap();
        let local = stream.local_addr().unwrap();
        let _ = stream.write_all(&garbage); // it may be closed before all is sent
        assert!(
            closed_by_peer(stream),
            "{name} kept a garbage connection open"
        );
        assert!(
            log_mentions(
                &cluster,
                name,
                &["refused connection", "not a Lego", &local.to_string()]
            ),
            "{name} log lacks the garbage connection from {local}:\n{}",
            cluster.log(name)
        );

        // A valid preamble and frame prefix announcing a 4 GiB frame, both
        // before and after authenticating.
        let mut stream = TcpStream::connect(addr).unwrap();
        let local = stream.local_addr().unwrap();
        stream.write_all(&Preamble::ours().encode()).unwrap();
        stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
        stream.write_all(&1u64.to_le_bytes()).unwrap();
        assert!(closed_by_peer(stream));
        assert!(log_mentions(
            &cluster,
            name,
            &["refused connection", "4294967295", &local.to_string()]
        ));

        let (mut stream, local, result) = handshake_from(addr, &secret);
        result.expect("the right secret is accepted");
        stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
        stream.write_all(&7u64.to_le_bytes()).unwrap();
        assert!(closed_by_peer(stream));
        assert!(log_mentions(
            &cluster,
            name,
            &["closing connection", "4294967295", &local.to_string()]
        ));

        // The component keeps serving others.
        assert!(serves(addr, &secret), "{name} stopped serving");
    }
    let rows = cluster.health().expect("status works");
    assert!(rows.iter().all(|r| r.1 == "alive"), "{rows:?}");
}
