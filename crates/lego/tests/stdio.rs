//! Relayed stdio: a program's stdin, stdout, stderr, terminal and exit
//! status travel over its launch connection (the default, `--stdio
//! relay`), compared with the same commands run natively; and `lego run
//! --cluster ADDR` from one network namespace to a cluster in others.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `sh -c COMMAND`, natively.
fn sh(command: &str, stdin: &[u8]) -> Output {
    let mut child = Command::new("/bin/sh")
        .args(["-c", command])
        .env_remove("LEGO_STATE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    // A program may stop reading early: what it left is dropped.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().expect("sh ends");
    let _ = feeder.join();
    out
}

#[test]
fn relayed_stdio_carries_bytes_order_ends_and_status_as_natively() {
    let cluster = Cluster::up(&["--memories", "1", "--memory-capacity", "2G"]);
    let run = format!("{LEGO} run --state {} --", cluster.state.display());
    let mut input = vec![0u8; 3 << 20];
    for (i, b) in input.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    let cases: [(&str, &[u8]); 8] = [
        // Megabytes both ways, byte for byte.
        ("cat", &input),
        // stdout and stderr apart, and an exit status.
        ("sh -c 'echo out; echo err >&2; exit 7'", b""),
        // One open file for both (2>&1): their order is kept.
        (
            "sh -c 'for i in 1 2 3 4 5 6; do echo o$i; echo e$i >&2; done' 2>&1",
            b"",
        ),
        // The end of stdin reaches the program.
        ("wc -c", &input),
        // A program that reads none of a long input still ends.
        ("sh -c 'echo no input read'", &input),
        // A reader that goes away: the program dies of SIGPIPE (the
        // pipeline's status is its last command's; `echo $?` of the first).
        ("sh -c 'seq 1 10000000; echo seq $? >&2' | head -2", b""),
        // Input pouring in while the output's reader goes away.
        ("head -c 2000000 | head -c 5", &input),
        // Killed by a signal: 128 + N, as a shell says.
        ("sh -c 'sh -c \"kill -TERM \\$\\$\"; echo status $?'", b""),
    ];
    for (command, stdin) in cases {
        let native = sh(command, stdin);
        let lego = sh(&format!("{run} {command}"), stdin);
        let what = format!("{command} (lego stderr: {})", text(&lego.stderr));
        assert_eq!(lego.stdout, native.stdout, "stdout of {what}");
        assert_eq!(text(&lego.stderr), text(&native.stderr), "stderr of {what}");
        assert_eq!(
            shell_status(&lego),
            shell_status(&native),
            "status of {what}"
        );
    }
    let killed = sh(&format!("{run} sh -c 'kill -TERM $$'"), b"");
    assert_eq!(killed.status.code(), Some(128 + libc::SIGTERM));
    // The same through descriptor passing, for comparison.
    let lego = sh(
        &format!(
            "{LEGO} run --stdio pass --state {} -- cat",
            cluster.state.display()
        ),
        &input,
    );
    assert_eq!(lego.stdout, input, "{}", text(&lego.stderr));
}

#[test]
fn a_relayed_terminal_is_the_programs_own_with_its_size() {
    let cluster = Cluster::up(&["--memories", "1", "--memory-capacity", "2G"]);
    let probe = "sh -c 'tty >/dev/null && echo tty; stty size; test -t 2 && echo stderr too'";
    let under_script = |command: &str| {
        // A terminal of 33 rows and 101 columns for script to copy.
        let command = format!("stty rows 33 cols 101 2>/dev/null; {command}");
        let out = Command::new(require("script"))
            .args(["-qec", &command, "/dev/null"])
            .env_remove("LEGO_STATE")
            .stdin(Stdio::null())
            .output()
            .expect("script runs");
        (
            text(&out.stdout)
                .replace(['\r', '\0'], "")
                .replace("^@", ""),
            out.status.code(),
        )
    };
    let (native, native_status) = under_script(probe);
    let (lego, status) = under_script(&format!(
        "{LEGO} run --state {} -- {probe}",
        cluster.state.display()
    ));
    assert!(
        native.contains("tty\n33 101\nstderr too"),
        "native: {native:?}"
    );
    assert_eq!(lego, native, "under lego run");
    assert_eq!(status, native_status);
}

/// Network namespaces on one bridge (in a namespace of its own, so the
/// host's network is untouched): member `i` has address `10.214.N.(i+2)`.
/// Removed when dropped.
struct Lan {
    prefix: String,
    names: Vec<String>,
}

impl Lan {
    fn new(members: usize) -> Lan {
        let id = std::process::id();
        let prefix = format!("10.214.{}", id % 250 + 1);
        let tag = format!("{}", id % 100_000);
        let switch = format!("lego-sw-{tag}");
        let names: Vec<String> = (0..members).map(|i| format!("lego-h{i}-{tag}")).collect();
        let lan = Lan {
            prefix,
            names: std::iter::once(switch.clone()).chain(names).collect(),
        };
        for name in &lan.names {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for i in 0..members {
            let host = &lan.names[i + 1];
            let (outer, inner) = (format!("sw{i}"), "eth0".to_string());
            ip(&[
                "-n", &switch, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                "netns", host,
            ]);
            ip(&["-n", &switch, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &outer, "up"]);
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{}/24", lan.addr(i)),
                "dev",
                &inner,
            ]);
            ip(&["-n", host, "link", "set", &inner, "up"]);
        }
        lan
    }

    fn addr(&self, member: usize) -> String {
        format!("{}.{}", self.prefix, member + 2)
    }

    /// `ip netns exec` of member `i`.
    fn exec(&self, member: usize) -> Command {
        let mut command = Command::new(require("ip"));
        command
            .args(["netns", "exec", &self.names[member + 1]])
            .env_remove("LEGO_STATE");
        command
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A component started in a namespace; killed when dropped.
struct Component(std::process::Child);

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cluster on two hosts (monitor, memory and storage managers and a
/// processor on one, a second processor on another) and `lego run` on a
/// third, each a network namespace: the program runs on either processor
/// with its stdio relayed over TCP, under a terminal too, and `lego run`
/// needs nothing but the monitor's address and the secret.
#[test]
fn lego_run_reaches_a_cluster_on_other_hosts_with_stdio_relayed() {
    let lan = Lan::new(3);
    let state = std::env::temp_dir().join(format!("lego-test-lan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let up = lan
        .exec(0)
        .args([LEGO, "up", "--memories", "1", "--memory-capacity", "2G"])
        .args(["--host", &lan.addr(0)])
        .arg("--state")
        .arg(&state)
        .output()
        .expect("lego up runs");
    let _down = scopeguard(state.clone(), lan.names[1].clone());
    assert!(
        up.status.success(),
        "{}{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("cluster.json")).unwrap()).unwrap();
    let monitor = record["monitor"].as_str().unwrap().to_string();
    let secret = state.join("secret");
    let other = state.join("host1");
    let log = std::fs::File::create(state.join("logs").join("processor-far.log")).unwrap();
    let _far = Component(
        lan.exec(1)
            .args([LEGO, "processor", "--name", "processor-far"])
            .args(["--listen", &format!("{}:0", lan.addr(1))])
            .args(["--monitor", &monitor])
            .arg("--secret-file")
            .arg(&secret)
            .arg("--state")
            .arg(&other)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("a processor starts"),
    );
    let joined = poll(Duration::from_secs(30), || {
        let out = lan
            .exec(0)
            .args([LEGO, "status", "--json", "--state"])
            .arg(&state)
            .output()
            .ok()?;
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        view["components"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == "processor-far" && c["health"] == "alive")
            .then_some(())
    });
    assert!(joined.is_some(), "processor-far did not join");

    let input = b"3\n1\n2\n".repeat(1000);
    let native = sh("sort -n | uniq -c; echo done >&2; exit 5", &input);
    for processor in ["processor-0", "processor-far"] {
        let started = Instant::now();
        let mut child = lan
            .exec(2)
            .args([LEGO, "run", "--cluster", &monitor, "--secret-file"])
            .arg(&secret)
            .args(["--processor", processor, "--", "sh", "-c"])
            .arg("sort -n | uniq -c; echo done >&2; exit 5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lego run starts");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let lego = child.wait_with_output().unwrap();
        assert_eq!(
            text(&lego.stdout),
            text(&native.stdout),
            "on {processor}: {}",
            text(&lego.stderr)
        );
        assert_eq!(text(&lego.stderr), "done\n", "on {processor}");
        assert_eq!(lego.status.code(), Some(5), "on {processor}");
        assert!(started.elapsed() < Duration::from_secs(60));
        // Under a terminal: the program's own, on the far host.
        let command = format!(
            "{LEGO} run --cluster {monitor} --secret-file {} --processor {processor} -- \
             sh -c 'tty >/dev/null && echo on a terminal; exit 4'",
            secret.display()
        );
        let out = lan
            .exec(2)
            .args([
                require("script").to_str().unwrap(),
                "-qec",
                &command,
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("script runs");
        assert!(
            text(&out.stdout).contains("on a terminal"),
            "on {processor}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(4), "on {processor}");
    }
    // Where the runs ran: the processors' own logs say so.
    let far_log = std::fs::read_to_string(state.join("logs").join("processor-far.log")).unwrap();
    assert!(far_log.contains("started process"), "{far_log}");
}

/// Stops the cluster `lego up` started in a namespace when dropped.
struct Down(std::path::PathBuf, String);

fn scopeguard(state: std::path::PathBuf, namespace: String) -> Down {
    Down(state, namespace)
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.1, LEGO, "down", "--state"])
            .arg(&self.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The state letter of host process `pid` (`/proc/PID/stat`).
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Job control without a terminal of the program's own: a stopped `lego
/// run` (Ctrl-Z at its shell, `kill -TSTP`) stops its program too, and
/// both go on when continued, output and status whole.
#[test]
fn stopping_and_continuing_lego_run_stops_and_continues_the_program() {
    let cluster = Cluster::up(&["--memories", "1", "--memory-capacity", "2G"]);
    let counter = "i=0; while [ $i -lt 30 ]; do echo $i; i=$((i+1)); sleep 0.1; done; exit 3";
    let child = cluster
        .run_command(&[], std::path::Path::new("/bin/sh"), &["-c", counter])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lego run starts");
    // The program's runtime: the processor's child.
    let processor = cluster.pid("processor-0");
    let host_pid = poll(Duration::from_secs(30), || {
        runtimes_of(processor).into_iter().next()
    })
    .expect("the program runs");
    // Safety: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTSTP) };
    let stopped = poll(Duration::from_secs(20), || {
        (state_of(child.id()) == Some('T') && state_of(host_pid) == Some('T')).then_some(())
    });
    assert!(
        stopped.is_some(),
        "lego run {:?}, program {:?}",
        state_of(child.id()),
        state_of(host_pid)
    );
    // Safety: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    let out = child.wait_with_output().expect("lego run ends");
    let expected: String = (0..30).map(|i| format!("{i}\n")).collect();
    assert_eq!(text(&out.stdout), expected, "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3));
}

/// Launches that make no sense, sent over TCP by a holder of the secret:
/// each is refused with an error naming what is wrong, and the processor
/// goes on launching.
#[test]
fn malformed_relayed_launches_are_refused_and_the_processor_goes_on() {
    use lego_proto::{LaunchSpec, Message, RelayedStdio, Role, StdioSpec, StreamRoute};
    use lego_transport::{Client, ClientConfig, Identity};
    let cluster = Cluster::up(&["--memories", "1"]);
    let status = cluster.status().expect("the cluster answers");
    let processor: std::net::SocketAddr = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "processor-0")
        .and_then(|c| c["address"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    let spec = |routes: [StreamRoute; 3], controlling_tty: bool| LaunchSpec {
        program: b"/bin/true".to_vec(),
        argv: vec![b"true".to_vec()],
        envp: Vec::new(),
        cwd: b"/".to_vec(),
        excache: 16 << 20,
        memory: "127.0.0.1:9".parse().unwrap(),
        memory_name: "memory-0".into(),
        memory_backup: None,
        memory_capacity: 0,
        memory_available: 0,
        storage: None,
        storage_name: String::new(),
        storage_retry_ms: 1000,
        controlling_tty,
        stdio: StdioSpec::Relayed(RelayedStdio {
            terminal: None,
            routes,
        }),
    };
    use StreamRoute::*;
    for (routes, tty, why) in [
        ([Terminal, Pipe, Pipe], false, "terminal"),
        ([Stdout, Pipe, Pipe], false, "stdin cannot go"),
        ([Pipe, Stdout, Pipe], false, "stdout cannot go"),
        ([Pipe, Pipe, Pipe], true, "controlling terminal"),
    ] {
        let client = Client::new(
            processor,
            ClientConfig::new(cluster.secret(), Identity::new(Role::Client, "test")),
        );
        let reply = client
            .call(&Message::Launch(spec(routes, tty)), &[])
            .expect("the processor answers");
        match reply.message {
            Message::Error(e) => assert!(e.message.contains(why), "{routes:?}: {}", e.message),
            other => panic!("{routes:?} was answered with {other:?}"),
        }
    }
    let hello = program("hello", Build::GlibcStatic);
    let out = cluster.run(&[], &hello, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!cluster.log("processor-0").contains("panicked"));
}
