//! `lego bench`: measurements that print ratios against baselines taken in
//! the same run on the same machine (never a bare time against a constant).
//!
//! Each benchmark starts its own embedded cluster, compiles its small C
//! workload with `gcc -static` (so it needs gcc), and runs it both natively
//! and under Lego.

mod raw;

use crate::cluster::{self, UpArgs};
use crate::state::StateDir;
use crate::units::{format_size, parse_size};
use crate::StateArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Subcommand, Debug)]
pub enum Which {
    /// ExCache miss latency next to a raw TCP round trip and a local userfaultfd copy
    Miss {
        /// Pages to miss on (as a size)
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
        size: u64,
        /// ExCache quota (keep it well below --size)
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8M")]
        excache: u64,
    },
    /// A trapped, passed-through syscall vs native and vs a bare SIGSYS round trip
    Syscall {
        /// Calls to time
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
    },
    /// Files through the storage manager: reading a large file, walking a tree, starting python3
    Files {
        /// Size of the file read sequentially
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
        size: u64,
    },
    /// Miss-bound throughput of a 4-thread random-read workload vs 1 thread, ExCache at 25%
    Threads {
        /// Working set, split among the threads
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
        size: u64,
        /// Threads of the parallel run
        #[arg(long, default_value_t = 4)]
        threads: u32,
    },
    /// redis-benchmark GET/SET throughput against redis-server under Lego vs native
    Redis {
        /// Requests per test
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        /// ExCache quota of the Lego server
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
        excache: u64,
    },
    /// fork + exec + wait of a program per process, under Lego vs native
    Fork {
        /// Processes to start
        #[arg(long, default_value_t = 200)]
        count: u32,
        /// Heap the parent has touched before it forks
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
        heap: u64,
        /// The program each child execs
        #[arg(long, default_value = "/bin/true")]
        program: PathBuf,
    },
    /// The workload benchmark's patterns with and without a backup of each process's memory, and the time to copy 1 GiB to a new backup after a loss
    Replication {
        /// Working set of the workloads
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "512M")]
        size: u64,
        /// What a new backup is copied after the home is lost
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
        copy: u64,
        /// Runs of each workload in each setting (interleaved; medians)
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Sequential scan and uniform random updates, native vs Lego at ExCache 100%, 50%, 25%
    Workload {
        /// Working set
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
        size: u64,
        /// Run only these patterns (seq, random)
        #[arg(long, value_delimiter = ',', default_value = "seq,random")]
        patterns: Vec<String>,
    },
}

const MISS_C: &str = include_str!("miss.c");
const SYSCALL_C: &str = include_str!("syscall.c");
const WORKLOAD_C: &str = include_str!("workload.c");
const THREADS_C: &str = include_str!("threads.c");
const FORK_C: &str = include_str!("fork.c");
const HOLDER_C: &str = include_str!("holder.c");

/// A scratch directory with the compiled workloads and a private cluster.
struct Bench {
    dir: PathBuf,
    cluster: StateDir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = cluster::stop(&self.cluster);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bench {
    fn new(memory: u64, excache: u64) -> Result<Bench> {
        Bench::with("", 1, 1, memory, excache)
    }

    /// A bench cluster of `memories` memory managers of `memory` each,
    /// keeping `replicas` copies of each process's memory.
    fn with(tag: &str, memories: usize, replicas: u32, memory: u64, excache: u64) -> Result<Bench> {
        let dir = std::env::temp_dir().join(format!("lego-bench-{}{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let bench = Bench {
            cluster: StateDir::new(dir.join("cluster")),
            dir,
        };
        eprintln!(
            "lego bench: starting a cluster (1 processor, {memories} memory manager{} of {}, {replicas} cop{} of each process's memory)",
            if memories == 1 { "" } else { "s" },
            format_size(memory),
            if replicas == 1 { "y" } else { "ies" }
        );
        cluster::up(UpArgs {
            state: StateArgs {
                state: Some(bench.cluster.root.clone()),
            },
            processors: 1,
            memories,
            storages: 1,
            replicas,
            memory_capacity: memory,
            excache,
            export: PathBuf::from("/"),
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: None,
            timeout: Duration::from_secs(30),
            allow_users: Vec::new(),
            allow_group: Vec::new(),
            quiet: true,
        })?;
        Ok(bench)
    }

    fn compile(&self, name: &str, source: &str) -> Result<PathBuf> {
        let src = self.dir.join(format!("{name}.c"));
        let out = self.dir.join(name);
        std::fs::write(&src, source)?;
        let status = Command::new("gcc")
            .args(["-O2", "-static", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .context("lego bench compiles its workloads with gcc; install gcc")?;
        if !status.success() {
            bail!("gcc failed on {}", src.display());
        }
        Ok(out)
    }

    /// Runs `program args` under Lego; returns its stdout.
    fn lego(&self, excache: u64, program: &Path, args: &[String]) -> Result<String> {
        let out = Command::new(std::env::current_exe()?)
            .arg("run")
            .arg("--state")
            .arg(&self.cluster.root)
            .arg("--excache")
            .arg(excache.to_string())
            .arg("--stats")
            .arg("--")
            .arg(program)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{} under Lego failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stats = String::from_utf8_lossy(&out.stderr);
        if let Some(line) = stats.lines().find(|l| l.contains("ExCache")) {
            eprintln!("  {line}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn native(program: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!("{} failed natively", program.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn numbers(output: &str) -> Vec<f64> {
    output
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn us(ns: f64) -> String {
    format!("{:.1} us", ns / 1000.0)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    match args.which {
        Which::Miss { size, excache } => miss(size, excache),
        Which::Syscall { calls } => syscall(calls),
        Which::Workload { size, patterns } => workload(size, &patterns),
        Which::Replication { size, copy, runs } => replication(size, copy, runs),
        Which::Files { size } => files(size),
        Which::Threads { size, threads } => threads_bench(size, threads),
        Which::Redis { requests, excache } => redis(requests, excache),
        Which::Fork {
            count,
            heap,
            program,
        } => fork_bench(count, heap, &program),
    }
}

/// The median of `values`.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn replication(size: u64, copy: u64, runs: u32) -> Result<()> {
    let excache = (size / 4).max(4 << 20);
    let memory = (2 * copy).max(2 * size) + (1 << 30);
    let single = Bench::with("-1", 2, 1, memory, excache)?;
    let replicated = Bench::with("-2", 3, 2, memory, excache)?;
    let program = single.compile("workload", WORKLOAD_C)?;
    let mib = (size >> 20).to_string();
    println!(
        "Replication cost ({} working set, ExCache {}, {runs} runs each, medians):",
        format_size(size),
        format_size(excache)
    );
    for pattern in ["seq", "random"] {
        let args = [pattern.to_string(), mib.clone()];
        let total = |out: &str| -> Result<f64> {
            match numbers(out)[..] {
                [init, run, ..] => Ok(init + run),
                _ => bail!("unexpected output from the workload: {out:?}"),
            }
        };
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            one.push(total(&single.lego(excache, &program, &args)?)?);
            two.push(total(&replicated.lego(excache, &program, &args)?)?);
        }
        let (one, two) = (median(&mut one), median(&mut two));
        println!(
            "  {pattern:<7} one copy {:>8.3} s   primary + backup {:>8.3} s   ratio {:.3} (goal <= 1.10)",
            one / 1e9,
            two / 1e9,
            two / one
        );
    }
    copy_after_loss(&replicated, copy)
}

/// Loses the home of a process holding `size` of written memory and
/// reports how long its new primary takes to copy it to a new backup.
fn copy_after_loss(bench: &Bench, size: u64) -> Result<()> {
    let program = bench.compile("holder", HOLDER_C)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("--state")
        .arg(&bench.cluster.root)
        .arg("--excache")
        .arg("64M")
        .arg("--")
        .arg(&program)
        .arg((size >> 20).to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // It says "ready" once all of it is written and back on its home.
    let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    if !line.starts_with("ready") {
        bail!("the holder workload said {line:?}");
    }
    // Listed with its backup by the processor's next heartbeat.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (home, backup) = loop {
        let found = crate::ps::processes(&bench.cluster)?
            .into_iter()
            .find_map(|p| Some((p.home_memory, p.backup_memory?)));
        match found {
            Some(found) => break found,
            None if std::time::Instant::now() > deadline => bail!("the holder has no backup"),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let record = bench.cluster.require()?;
    let victim = record
        .components
        .iter()
        .find(|c| c.name == home)
        .context("the home is not in the cluster's record")?;
    // Safety: SIGKILL to a component of this bench's own cluster.
    unsafe { libc::kill(victim.pid as i32, libc::SIGKILL) };
    // Its backup takes over at the holder's next request.
    let mut stdin = child.stdin.take().context("stdin")?;
    std::io::Write::write_all(&mut stdin, b"touch\n")?;
    let log = bench
        .cluster
        .root
        .join("logs")
        .join(format!("{backup}.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let copied = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("it is the backup now")) {
            break line.to_string();
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{backup} made no copy within 2 minutes; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let _ = child.wait();
    let what = copied
        .split("copied to ")
        .nth(1)
        .and_then(|rest| rest.split(": it is").next())
        .unwrap_or(&copied);
    println!(
        "  after {home} was killed, {backup} copied the {} process to {what}",
        format_size(size)
    );
    Ok(())
}

fn fork_bench(count: u32, heap: u64, child: &Path) -> Result<()> {
    let excache = 64 << 20;
    let bench = Bench::new(4 << 30, excache)?;
    let program = bench.compile("fork", FORK_C)?;
    let args = [
        count.to_string(),
        (heap >> 20).to_string(),
        child.display().to_string(),
    ];
    println!(
        "fork + exec + wait of {} per process ({count} processes, parent heap {}, ExCache {}):",
        child.display(),
        format_size(heap),
        format_size(excache)
    );
    let per_process = |out: &str| -> Result<f64> {
        match numbers(out)[..] {
            [_, ns, ..] => Ok(ns),
            _ => bail!("unexpected output from the fork workload: {out:?}"),
        }
    };
    let native_ns = per_process(&native(&program, &args)?)?;
    println!(
        "  native                              {:>10}",
        us(native_ns)
    );
    let lego_ns = per_process(&bench.lego(excache, &program, &args)?)?;
    println!("  Lego                                {:>10}", us(lego_ns));
    println!("  ratio: Lego / native = {:.1}", lego_ns / native_ns);
    Ok(())
}

fn miss(size: u64, excache: u64) -> Result<()> {
    let (mut tcp, mut uffd) = (
        raw::tcp_round_trips(20_000)?,
        raw::local_uffd_misses(16_384)?,
    );
    let (tcp_med, tcp_p99) = raw::median_p99(&mut tcp);
    let (proto_med, proto_p99) = raw::median_p99(&mut raw::transport_round_trips(20_000)?);
    let (uffd_med, uffd_p99) = raw::median_p99(&mut uffd);
    let bench = Bench::new(4 * size + (1 << 30), excache)?;
    let program = bench.compile("miss", MISS_C)?;
    let mib = (size >> 20).to_string();
    let scratch = ((2 * excache) >> 20).max(1).to_string();
    let out = numbers(&bench.lego(excache, &program, &[mib, scratch])?);
    let [pages, lego_med, lego_p99, ..] = out[..] else {
        bail!("unexpected output from the miss workload: {out:?}");
    };
    let budget = tcp_med as f64 + uffd_med as f64;
    println!(
        "ExCache miss latency ({} misses over {}, ExCache {}):",
        pages,
        format_size(size),
        format_size(excache)
    );
    println!(
        "  raw TCP round trip (16 B -> 4 KiB)  median {:>9}  p99 {:>9}",
        us(tcp_med as f64),
        us(tcp_p99 as f64)
    );
    println!(
        "  Lego transport round trip (page)    median {:>9}  p99 {:>9}",
        us(proto_med as f64),
        us(proto_p99 as f64)
    );
    println!(
        "  local userfaultfd copy              median {:>9}  p99 {:>9}",
        us(uffd_med as f64),
        us(uffd_p99 as f64)
    );
    println!(
        "  Lego ExCache miss                   median {:>9}  p99 {:>9}",
        us(lego_med),
        us(lego_p99)
    );
    println!(
        "  ratio: Lego miss median / (TCP round trip + userfaultfd copy) = {:.2} (goal <= 1.3)",
        lego_med / budget
    );
    Ok(())
}

fn threads_bench(size: u64, threads: u32) -> Result<()> {
    let excache = (size / 4).max(4 << 20);
    let bench = Bench::new(size * 2 + (1 << 30), excache)?;
    let program = bench.compile("threads", THREADS_C)?;
    let mib = (size >> 20).to_string();
    println!(
        "Random reads over {} (one word per page, ExCache {}; most touches miss): page touches per second",
        format_size(size),
        format_size(excache)
    );
    let mut rates = Vec::new();
    for n in [1, threads] {
        let out = numbers(&bench.lego(excache, &program, &[n.to_string(), mib.clone()])?);
        let [touches, ns, ..] = out[..] else {
            bail!("unexpected output from the threads workload: {out:?}");
        };
        let rate = touches / (ns / 1e9);
        println!(
            "  {n} thread(s): {touches:.0} touches in {:.3} s = {rate:>9.0} /s",
            ns / 1e9
        );
        rates.push(rate);
    }
    println!(
        "  ratio: {threads} threads / 1 thread = {:.2}",
        rates[1] / rates[0]
    );
    Ok(())
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until a redis server answers PING on `port`.
fn redis_ready(port: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .context("lego bench redis needs redis-cli (apt-get install redis-tools)")?;
        if out.stdout == b"PONG\n" {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("redis-server on port {port} never answered PING");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests per second of SET and GET from redis-benchmark.
fn redis_rates(port: u16, requests: u64) -> Result<(f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", "set,get", "-q", "-n"])
        .arg(requests.to_string())
        .output()
        .context("lego bench redis needs redis-benchmark (apt-get install redis-tools)")?;
    let report = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let rate = |op: &str| {
        report
            .lines()
            .filter(|l| l.starts_with(op) && l.contains("requests per second"))
            .find_map(|l| l[op.len()..].split_whitespace().next()?.parse::<f64>().ok())
    };
    match (rate("SET:"), rate("GET:")) {
        (Some(set), Some(get)) if out.status.success() => Ok((set, get)),
        _ => bail!("redis-benchmark failed: {report}"),
    }
}

fn redis(requests: u64, excache: u64) -> Result<()> {
    let bench = Bench::new(2 << 30, excache)?;
    let args = |port: u16| -> Vec<String> {
        [
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let shutdown = |port: u16| {
        let _ = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "shutdown", "nosave"])
            .output();
    };
    let port = free_port()?;
    let mut native_server = Command::new("redis-server")
        .args(args(port))
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("lego bench redis needs redis-server (apt-get install redis-server)")?;
    redis_ready(port)?;
    let native_rates = redis_rates(port, requests);
    shutdown(port);
    let _ = native_server.wait();
    let native_rates = native_rates?;

    let port = free_port()?;
    let mut lego_server = Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("--state")
        .arg(&bench.cluster.root)
        .arg("--excache")
        .arg(excache.to_string())
        .arg("--")
        .arg("/usr/bin/redis-server")
        .args(args(port))
        .stdout(std::process::Stdio::null())
        .spawn()?;
    redis_ready(port)?;
    let lego_rates = redis_rates(port, requests);
    shutdown(port);
    let _ = lego_server.wait();
    let lego_rates = lego_rates?;
    println!(
        "redis-benchmark, {requests} requests per test, 50 clients, on loopback (ExCache {}):",
        format_size(excache)
    );
    for (op, n, l) in [
        ("SET", native_rates.0, lego_rates.0),
        ("GET", native_rates.1, lego_rates.1),
    ] {
        println!(
            "  {op}  native {n:>10.0} /s   Lego {l:>10.0} /s   ratio Lego / native = {:.2}",
            l / n
        );
    }
    Ok(())
}

fn syscall(calls: u64) -> Result<()> {
    let bench = Bench::new(1 << 30, 64 << 20)?;
    let program = bench.compile("syscall", SYSCALL_C)?;
    let calls = calls.to_string();
    let base = numbers(&native(&program, &["native".into(), calls.clone()])?);
    let lego = numbers(&bench.lego(64 << 20, &program, &["plain".into(), calls])?);
    let (&[native_ns, bare_ns, ..], &[lego_ns, ..]) = (&base[..], &lego[..]) else {
        bail!("unexpected output from the syscall workload: {base:?} {lego:?}");
    };
    println!("getppid(), passed through:");
    println!("  native                         {native_ns:>8.0} ns");
    println!("  bare SIGSYS round trip         {bare_ns:>8.0} ns");
    println!("  Lego (trapped, passed through) {lego_ns:>8.0} ns");
    println!("  ratio: Lego / native = {:.1}", lego_ns / native_ns);
    println!(
        "  ratio: Lego / bare SIGSYS = {:.2} (goal <= 1.3)",
        lego_ns / bare_ns
    );
    Ok(())
}

fn workload(size: u64, patterns: &[String]) -> Result<()> {
    let bench = Bench::new(size * 2 + (1 << 30), size)?;
    let program = bench.compile("workload", WORKLOAD_C)?;
    let mib = (size >> 20).to_string();
    println!(
        "Working set {}: time of the timed phase (init excluded), and slowdown vs native",
        format_size(size)
    );
    for pattern in patterns {
        if pattern != "seq" && pattern != "random" {
            bail!("unknown pattern {pattern:?}: use seq or random");
        }
        let args = [pattern.clone(), mib.clone()];
        let native_out = numbers(&native(&program, &args)?);
        let [_, native_ns, ..] = native_out[..] else {
            bail!("unexpected output: {native_out:?}");
        };
        println!(
            "  {pattern:<6} native              {:>10.3} s",
            native_ns / 1e9
        );
        for percent in [100u64, 50, 25] {
            // Whole pages, and a little headroom at 100% for the program's
            // own stack and data besides the working set.
            let excache = (size * percent / 100 + if percent == 100 { 8 << 20 } else { 0 }) & !4095;
            let out = numbers(&bench.lego(excache, &program, &args)?);
            let [_, lego_ns, ..] = out[..] else {
                bail!("unexpected output: {out:?}");
            };
            println!(
                "  {pattern:<6} Lego ExCache {percent:>3}%    {:>10.3} s   {:>6.2}x native",
                lego_ns / 1e9,
                lego_ns / native_ns
            );
        }
    }
    Ok(())
}

/// Median wall time of `runs` runs of a command, in seconds.
fn time_command(runs: usize, mut command: impl FnMut() -> Command) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = std::time::Instant::now();
        let out = command().stdout(std::process::Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "a benchmark command failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn files(size: u64) -> Result<()> {
    let bench = Bench::new(4 << 30, 256 << 20)?;
    let data = bench.dir.join("data");
    eprintln!("lego bench: writing a {} file", format_size(size));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&data)?;
        let block: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
        for _ in 0..(size >> 20).max(1) {
            file.write_all(&block)?;
        }
    }
    let lego = |args: &[&str]| {
        let mut c = Command::new(std::env::current_exe().expect("the lego executable"));
        c.arg("run")
            .arg("--state")
            .arg(&bench.cluster.root)
            .arg("--")
            .args(args);
        c
    };
    let native = |args: &[&str]| {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    let data = data.to_str().context("a UTF-8 temporary path")?.to_string();
    let cases: [(&str, Vec<&str>, usize); 3] = [
        (
            "sequential read (cat FILE > /dev/null)",
            vec!["/bin/cat", &data],
            3,
        ),
        (
            "metadata walk (find /usr -type f)",
            vec!["/usr/bin/find", "/usr", "-type", "f"],
            3,
        ),
        (
            "python3 startup (python3 -c pass)",
            vec!["/usr/bin/python3", "-c", "pass"],
            11,
        ),
    ];
    println!("Files through the storage manager (median wall time of whole commands, lego run's start included):");
    for (what, args, runs) in cases {
        let native_s = time_command(runs, || native(&args))?;
        let lego_s = time_command(runs, || lego(&args))?;
        println!(
            "  {what:<42} native {native_s:>8.3} s   Lego {lego_s:>8.3} s   {:>6.2}x",
            lego_s / native_s
        );
    }
    Ok(())
}
