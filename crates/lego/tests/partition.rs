//! A memory manager cut off by a network partition: the test puts it in a
//! network namespace of its own, joined to the cluster by a veth pair with
//! addresses the test assigns, and cuts and heals the link under a
//! running program.

mod common;

use common::*;
use lego_proto::{ErrorCode, Message};
use lego_transport::{Client, ClientConfig, Identity};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A network namespace joined to this one by a veth pair: `host_ip` on
/// this side, `inner_ip` inside. Removed (with the link) when dropped.
struct Namespace {
    name: String,
    host_if: String,
    host_ip: String,
    inner_ip: String,
}

impl Namespace {
    fn new() -> Namespace {
        let id = std::process::id();
        let net = id % 200 + 20;
        let ns = Namespace {
            name: format!("lego-part-{id}"),
            host_if: format!("lph{}", id % 1_000_000),
            host_ip: format!("10.213.{net}.1"),
            inner_ip: format!("10.213.{net}.2"),
        };
        let inner_if = format!("lpn{}", id % 1_000_000);
        // Left by an earlier run of the same pid that was killed, if any.
        for stale in [
            vec!["link", "del", ns.host_if.as_str()],
            vec!["netns", "del", ns.name.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(stale)
                .stderr(Stdio::null())
                .status();
        }
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
            "netns",
            &ns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inner = |args: &[&str]| {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inner(&[
            "addr",
            "add",
            &format!("{}/30", ns.inner_ip),
            "dev",
            &inner_if,
        ]);
        inner(&["link", "set", &inner_if, "up"]);
        inner(&["link", "set", "lo", "up"]);
        ns
    }

    /// Cuts the link: packets either way are dropped, connections hang.
    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A memory manager started inside `ns`, joining `cluster`; killed when
/// dropped.
struct Inside(Child);

impl Inside {
    fn start(cluster: &Cluster, ns: &Namespace, name: &str, capacity: &str) -> Inside {
        let log = std::fs::File::create(cluster.state.join("logs").join(format!("{name}.log")))
            .expect("a log file");
        let monitor = cluster.monitor_addr().to_string();
        let secret = cluster.state.join("secret");
        let child = Command::new(require("ip"))
            .args(["netns", "exec", &ns.name, LEGO, "memory", "--name", name])
            .args(["--listen", &format!("{}:0", ns.inner_ip)])
            .args(["--monitor", &monitor, "--capacity", capacity])
            .arg("--secret-file")
            .arg(&secret)
            .arg("--state")
            .arg(&cluster.state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ip netns exec runs");
        Inside(child)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A component's row of `lego status --json`.
fn row(cluster: &Cluster, name: &str) -> Option<serde_json::Value> {
    cluster.status()?["components"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == name)
        .cloned()
}

/// The home of a running program is cut off from the cluster: the
/// program goes on on its backup (its runtime's requests time out, the
/// monitor finds the home silent, fences it and promotes the backup) and
/// prints its native output. When the partition heals, the old home is
/// fenced: it drops everything, holds 0 bytes, and a write to the moved
/// process sent to it straight is refused (`NotHeld`), not taken.
#[test]
fn a_partitioned_home_is_failed_over_and_holds_nothing_stale_after_healing() {
    let ns = Namespace::new();
    let cluster = Cluster::up(&[
        "--memories",
        "1",
        "--memory-capacity",
        "2G",
        "--host",
        &ns.host_ip,
        "--heartbeat-interval",
        "200ms",
    ]);
    // More free memory than memory-0: every new process's home.
    let _inside = Inside::start(&cluster, &ns, "memory-ns", "8G");
    let joined = poll(Duration::from_secs(20), || {
        row(&cluster, "memory-ns").filter(|r| r["health"] == "alive")
    });
    assert!(joined.is_some(), "{}", cluster.log("memory-ns"));

    let checksum = program("checksum", Build::GlibcStatic);
    let args = ["160", "40", "single"];
    let expected = native(&checksum, &args);
    let mut child = cluster
        .run_command(&["--excache", "16M"], &checksum, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (pid, home) = poll(Duration::from_secs(20), || {
        cluster
            .homes()
            .into_iter()
            .find_map(|(pid, home, backup)| backup.map(|_| (pid, home)))
    })
    .expect("the program runs with a backup");
    assert_eq!(home, "memory-ns", "placed on the manager with most room");
    let inside_addr: std::net::SocketAddr = row(&cluster, "memory-ns").unwrap()["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    ns.cut();
    // Within a request timeout and a probe; generous for a loaded host.
    let moved = poll(Duration::from_secs(60), || {
        cluster
            .homes()
            .into_iter()
            .any(|(p, home, _)| p == pid && home == "memory-0")
            .then_some(())
    });
    assert!(
        moved.is_some(),
        "the program did not fail over to memory-0: {:?}\n--- processor:\n{}\n--- monitor:\n{}",
        cluster.homes(),
        cluster.log("processor-0"),
        cluster.log("monitor")
    );
    ns.heal();
    let fenced = poll(Duration::from_secs(20), || {
        cluster
            .log("memory-ns")
            .contains("fenced: dropped the memory of")
            .then_some(())
    });
    assert!(
        fenced.is_some(),
        "{}\n--- monitor:\n{}",
        cluster.log("memory-ns"),
        cluster.log("monitor")
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the workload ended before the partition healed: the check below would test nothing"
    );
    // Sent as the process's own runtime would, straight to the old home.
    let key = cluster.secret().process_key(pid, pid);
    let old_home = Client::new(
        inside_addr,
        ClientConfig::new(key, Identity::process(pid, pid)),
    );
    let reply = old_home
        .call(
            &Message::WriteBack {
                pid,
                addrs: vec![0x10_0000],
            },
            &[0x5a; 4096],
        )
        .expect("the healed manager answers");
    assert!(
        matches!(&reply.message, Message::Error(e) if e.code == ErrorCode::NotHeld),
        "the old home answered a write to the moved process with {:?}",
        reply.message
    );
    let emptied = poll(Duration::from_secs(10), || {
        let r = row(&cluster, "memory-ns")?;
        (r["health"] == "alive" && r["load"]["used"].as_u64() == Some(0)).then_some(())
    });
    assert!(
        emptied.is_some(),
        "the healed manager holds pages: {:?}",
        row(&cluster, "memory-ns")
    );

    let out = child.wait_with_output().unwrap();
    assert_same(&out, &expected, "checksum with its home partitioned away");
}
