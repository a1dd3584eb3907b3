//! `lego`: every Lego component and every user command, in one binary.

mod bench;
mod checkpoint;
mod cluster;
mod drain;
mod forward;
mod ps;
mod run;
mod serve;
mod state;
mod status;
mod stdio;
mod tty;
mod units;

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lego",
    version,
    about = "Lego: a user-space splitkernel for disaggregated datacenters",
    long_about = "Lego runs the splitkernel of LegoOS as ordinary Linux processes: processor, \
memory and storage managers, each its own failure domain, plus a global monitor, talking over \
TCP.\n\nStart a local cluster with `lego up`, look at it with `lego status`, stop it with \
`lego down`. The long-running subcommands (monitor, processor, memory, storage) are the \
components themselves; `lego up` starts them for you."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster in the background and wait until it is healthy
    Up(cluster::UpArgs),
    /// Stop every process `lego up` started
    Down(StateArgs),
    /// Show every component of the cluster: health, capacity, use, last heartbeat
    Status(status::StatusArgs),
    /// Start a component of the local cluster again, with its recorded arguments and address
    /// (stopping it first if it is still running)
    Restart(cluster::RestartArgs),
    /// List every process of the cluster: pid, parent, processor, home memory, ExCache use,
    /// misses, command line
    Ps(ps::PsArgs),
    /// Send a signal (default KILL) to a component of the local cluster, to inject a failure
    Kill(cluster::KillArgs),
    /// Move everything a memory manager holds to the others while programs run, so it can be
    /// stopped with no program affected
    Drain(drain::DrainArgs),
    /// Freeze a running process where it runs (every thread stopped, dirty pages written back,
    /// its state taken) and let it run on, saying what that took
    Checkpoint(checkpoint::CheckpointArgs),
    /// Run a program on the cluster (starting an embedded cluster if none is up)
    Run(run::RunArgs),
    /// Measure Lego against baselines taken in the same run (miss, syscall, files, threads,
    /// redis, fork, workload)
    Bench(bench::BenchArgs),
    /// Run the global monitor: cluster membership and failure detection
    Monitor(serve::MonitorArgs),
    /// Run a processor manager: runs applications and their ExCache
    Processor(serve::ProcessorArgs),
    /// Run a memory manager: owns address spaces and a pool of pages
    Memory(serve::MemoryArgs),
    /// Run a storage manager: serves an exported directory tree, statelessly
    Storage(serve::StorageArgs),
    /// The runtime of one application process (started by a processor manager)
    #[command(hide = true)]
    Runtime,
}

/// Which local cluster a command acts on.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// The cluster's state directory [default: $XDG_STATE_HOME/lego or ~/.local/state/lego]
    #[arg(long, env = "LEGO_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
}

impl StateArgs {
    pub fn dir(&self) -> state::StateDir {
        state::StateDir::new(self.state.clone().unwrap_or_else(state::default_state_dir))
    }
}

/// How a component finds its cluster.
#[derive(Args, Debug, Clone)]
pub struct JoinArgs {
    /// This component's name in the cluster; keep it across restarts [default: ROLE-PID]
    #[arg(long)]
    pub name: Option<String>,
    /// Address to serve on; port 0 picks a free port
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The monitor's address [default: the monitor of the cluster in --state]
    #[arg(long)]
    pub monitor: Option<SocketAddr>,
    /// File holding the cluster secret [default: DIR/secret of --state]
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("LEGO_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Keeps freed memory in the heap instead of returning it to the kernel.
/// Page-sized buffers of up to 1 MiB come and go on every miss and
/// write-back; if glibc unmapped or trimmed them each time, every reuse
/// would page-fault and clear fresh pages (measured: ~10% of the memory
/// manager's time on a sequential scan). Larger buffers (a storage read
/// of up to 16 MiB) are mappings of their own, returned when freed:
/// glibc never trims the top of a thread's arena below the trim
/// threshold, so each connection thread that once read 16 MiB kept 16 MiB
/// resident for good.
fn keep_freed_memory() {
    // Safety: mallopt only tunes the allocator; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Up(_) | Command::Down(_) | Command::Status(_) | Command::Ps(_)
    ) {
        keep_freed_memory();
    }
    if let Command::Runtime = cli.command {
        // Its stderr is the application's: it logs to its own descriptor.
        lego_runtime::main();
    }
    let long_running = matches!(
        cli.command,
        Command::Monitor(_) | Command::Processor(_) | Command::Memory(_) | Command::Storage(_)
    );
    init_logging(if long_running { "info" } else { "warn" });
    let result = match cli.command {
        Command::Run(args) => match run::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Runtime => unreachable!("handled above"),
        Command::Bench(args) => bench::bench(args),
        Command::Up(args) => cluster::up(args),
        Command::Down(args) => cluster::down(args),
        Command::Status(args) => status::status(args),
        Command::Ps(args) => ps::ps(args),
        Command::Restart(args) => cluster::restart(args),
        Command::Kill(args) => cluster::kill(args),
        Command::Drain(args) => drain::drain(args),
        Command::Checkpoint(args) => checkpoint::checkpoint(args),
        Command::Monitor(args) => serve::monitor(args),
        Command::Processor(args) => serve::processor(args),
        Command::Memory(args) => serve::memory(args),
        Command::Storage(args) => serve::storage(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = render_error(&e);
            // A component's stderr is its log: say it once, as a log line.
            if long_running {
                tracing::error!("{message}");
            } else {
                eprintln!("lego: error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": ", skipping a cause whose text
/// the message before it already ends with (many errors quote their source).
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
