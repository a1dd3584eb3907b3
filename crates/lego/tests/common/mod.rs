//! Helpers shared by the integration tests: a real cluster driven through
//! the `lego` binary, polling with deadlines, process inspection.
#![allow(dead_code)]

use lego_transport::ClusterSecret;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const LEGO: &str = env!("CARGO_BIN_EXE_lego");

pub fn lego(state: &Path, args: &[&str]) -> Output {
    Command::new(LEGO)
        .args(args)
        .arg("--state")
        .arg(state)
        .env_remove("LEGO_STATE")
        .output()
        .expect("the lego binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `probe` until it yields a value or `limit` passes.
pub fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster started with `lego up`; dropping it runs `lego down` and then
/// kills anything still recorded, so a failed test leaves nothing behind.
pub struct Cluster {
    pub state: PathBuf,
}

impl Cluster {
    pub fn up(extra: &[&str]) -> Cluster {
        let state = std::env::temp_dir().join(format!(
            "lego-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&state);
        let cluster = Cluster { state };
        let mut args = vec!["up"];
        args.extend_from_slice(extra);
        let out = cluster.lego(&args);
        assert!(
            out.status.success(),
            "lego up failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        cluster
    }

    pub fn lego(&self, args: &[&str]) -> Output {
        lego(&self.state, args)
    }

    pub fn record(&self) -> Value {
        let raw = std::fs::read_to_string(self.state.join("cluster.json")).expect("cluster.json");
        serde_json::from_str(&raw).expect("cluster.json is JSON")
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.record()["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["pid"].as_u64())
            .unwrap_or_else(|| panic!("{name} is not recorded")) as u32
    }

    pub fn pids(&self) -> Vec<u32> {
        self.record()["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    pub fn monitor_addr(&self) -> SocketAddr {
        self.record()["monitor"].as_str().unwrap().parse().unwrap()
    }

    pub fn secret(&self) -> ClusterSecret {
        ClusterSecret::load(&self.state.join("secret")).unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// `lego status --json`, or None if it failed.
    pub fn status(&self) -> Option<Value> {
        let out = self.lego(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// id → (health, pid) of every row of `lego status --json`.
    pub fn health(&self) -> Option<Vec<(String, String, u64)>> {
        let status = self.status()?;
        let rows = status["components"].as_array()?;
        Some(
            rows.iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap_or("").to_string(),
                        r["health"].as_str().unwrap_or("").to_string(),
                        r["pid"].as_u64().unwrap_or(0),
                    )
                })
                .collect(),
        )
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Cluster {
    fn drop(&mut self) {
        let pids = if self.state.join("cluster.json").exists() {
            self.pids()
        } else {
            Vec::new()
        };
        let _ = self.lego(&["down"]);
        for pid in pids {
            if process_alive(pid) {
                // Safety: kill(2) takes plain integers; at worst it fails.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if std::env::var_os("LEGO_TEST_KEEP_STATE").is_none() {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

/// True when `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

pub fn kill9(pid: u32) {
    let status = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// How a test program is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Build {
    GlibcStatic,
    GlibcStaticPie,
    MuslStatic,
    /// A true musl static-pie: `musl-gcc -static-pie` makes a dynamic PIE,
    /// so it is linked by hand with rcrt1.o.
    MuslStaticPie,
}

pub const ALL_BUILDS: [Build; 4] = [
    Build::GlibcStatic,
    Build::GlibcStaticPie,
    Build::MuslStatic,
    Build::MuslStaticPie,
];

/// The Debian package of each tool the tests run (`.ci/run` installs the
/// same list).
const PACKAGES: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("ld", "binutils"),
    ("musl-gcc", "musl-tools"),
    ("make", "make"),
    ("script", "bsdutils"),
    ("ps", "procps"),
    ("free", "procps"),
    ("python3", "python3"),
    ("sqlite3", "sqlite3"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("redis-benchmark", "redis-tools"),
    ("redis-check-rdb", "redis-tools"),
    ("gzip", "gzip"),
    ("bash", "bash"),
];

/// Where the system's `tool` is (in /usr/bin or /bin, as Debian installs
/// it); a missing tool fails the test with the package to install.
pub fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    let package = PACKAGES
        .iter()
        .find(|(t, _)| *t == tool)
        .map_or("the package that has it", |(_, p)| p);
    panic!("{tool} is not installed: `apt-get install -y {package}` (.ci/run installs every tool the tests use)")
}

fn run_tool(cmd: &mut Command) {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    if !tool.contains('/') {
        require(&tool);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        text(&out.stderr)
    );
}

/// Compiles tests/programs/NAME.c once per test process and returns the
/// binary.
pub fn program(name: &str, build: Build) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BUILT: Mutex<Option<HashMap<(String, Build), PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(path) = map.get(&(name.to_string(), build)) {
        return path.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{name}-{build:?}"));
    match build {
        Build::GlibcStatic => run_tool(
            Command::new("gcc")
                .args(["-O2", "-static", "-o"])
                .arg(&out)
                .arg(&src),
        ),
        Build::GlibcStaticPie => run_tool(
            Command::new("gcc")
                .args(["-O2", "-fPIE", "-static-pie", "-o"])
                .arg(&out)
                .arg(&src),
        ),
        Build::MuslStatic => run_tool(
            Command::new("musl-gcc")
                .args(["-O2", "-static", "-o"])
                .arg(&out)
                .arg(&src),
        ),
        Build::MuslStaticPie => {
            let musl = Path::new("/usr/lib/x86_64-linux-musl");
            let obj = dir.join(format!("{name}-musl-pie.o"));
            run_tool(
                Command::new("musl-gcc")
                    .args(["-O2", "-fPIE", "-c", "-o"])
                    .arg(&obj)
                    .arg(&src),
            );
            let libgcc = Command::new("gcc")
                .arg("-print-libgcc-file-name")
                .output()
                .unwrap();
            let libgcc = text(&libgcc.stdout).trim().to_string();
            run_tool(
                Command::new("ld")
                    .args(["-static", "-pie", "--no-dynamic-linker", "-z", "text", "-o"])
                    .arg(&out)
                    .arg(musl.join("rcrt1.o"))
                    .arg(musl.join("crti.o"))
                    .arg(&obj)
                    .arg(format!("-L{}", musl.display()))
                    .arg("-lc")
                    .arg(libgcc)
                    .arg(musl.join("crtn.o")),
            );
        }
    }
    map.insert((name.to_string(), build), out.clone());
    out
}

/// Runs a command natively, for comparison.
pub fn native(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .expect("the program runs natively")
}

/// The exit status a shell reports: the code, or 128 + the signal.
pub fn shell_status(out: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    out.status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0))
}

impl Cluster {
    /// `lego run ARGS -- PROGRAM PROGRAM_ARGS` on this cluster.
    pub fn run(&self, lego_args: &[&str], program: &Path, args: &[&str]) -> Output {
        self.run_command(lego_args, program, args)
            .output()
            .expect("lego run runs")
    }

    pub fn run_command(&self, lego_args: &[&str], program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(LEGO);
        cmd.arg("run")
            .arg("--state")
            .arg(&self.state)
            .args(lego_args)
            .arg("--")
            .arg(program)
            .args(args)
            .env_remove("LEGO_STATE");
        cmd
    }

    /// Processes the processors report: (pid, host pid, home memory).
    pub fn processes(&self) -> Vec<(u64, u32, String)> {
        let Some(status) = self.status() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for row in status["components"].as_array().into_iter().flatten() {
            for p in row["load"]["processes"].as_array().into_iter().flatten() {
                out.push((
                    p["pid"].as_u64().unwrap_or(0),
                    p["host_pid"].as_u64().unwrap_or(0) as u32,
                    p["home_memory"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        out
    }

    /// Where each process's memory lives, as the processors report it:
    /// (pid, home memory manager, backup).
    pub fn homes(&self) -> Vec<(u64, String, Option<String>)> {
        let Some(status) = self.status() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for row in status["components"].as_array().into_iter().flatten() {
            for p in row["load"]["processes"].as_array().into_iter().flatten() {
                out.push((
                    p["pid"].as_u64().unwrap_or(0),
                    p["home_memory"].as_str().unwrap_or("").to_string(),
                    p["backup_memory"].as_str().map(str::to_string),
                ));
            }
        }
        out
    }

    /// A component's load figure from `lego status --json`.
    pub fn load(&self, name: &str, field: &str) -> Option<u64> {
        let status = self.status()?;
        status["components"]
            .as_array()?
            .iter()
            .find(|r| r["id"] == name)
            .and_then(|r| r["load"][field].as_u64())
    }
}

/// VmRSS of a process in bytes, if it still exists.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runtimes (`lego runtime` processes) whose parent is `parent`.
pub fn runtimes_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_runtime = cmdline.split(|&b| b == 0).nth(1) == Some(b"runtime");
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("PPid:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
                });
            is_runtime && ppid == Some(parent)
        })
        .collect()
}

/// Pids of live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
                && process_alive(*pid)
        })
        .collect()
}

/// The same stdout and exit status under Lego as natively.
pub fn assert_same(lego: &std::process::Output, native: &std::process::Output, what: &str) {
    assert_eq!(
        text(&lego.stdout),
        text(&native.stdout),
        "{what}: stdout differs (stderr: {})",
        text(&lego.stderr)
    );
    assert_eq!(
        shell_status(lego),
        shell_status(native),
        "{what}: status differs (stderr: {})",
        text(&lego.stderr)
    );
}

/// Runs `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new(require("ip"))
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}
