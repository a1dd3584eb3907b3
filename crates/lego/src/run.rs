//! `lego run`: runs a program on the cluster with the user's stdin, stdout
//! and stderr, and exits as the program exited (128 + N for death by
//! signal N, as a shell reports it). With no cluster running, it starts an
//! embedded one for the duration of the run.

use crate::cluster::{self, monitor_client_with, UpArgs};
use crate::state::StateDir;
use crate::stdio;
use crate::tty;
use crate::units::{format_size, parse_size};
use crate::StateArgs;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lego_proto::NotRun;
use lego_proto::{
    ExcacheStats, ExitReport, FrameLimits, LaunchSpec, Message, Registration, RelayedStdio, Role,
    StdioSpec,
};
use lego_transport::fdpass::send_fds;
use lego_transport::{
    handshake, write_frame, Client, ClientConfig, ClusterSecret, FrameReader, Identity, Stream,
};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// ExCache quota for the program (e.g. 32M) [default: the processor's]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub excache: Option<u64>,
    /// Run on this processor (as `lego status` names it)
    #[arg(long, value_name = "ID")]
    pub processor: Option<String>,
    /// Print the ExCache counters when the program ends
    #[arg(long)]
    pub stats: bool,
    /// The monitor of a cluster to run on (on this host or another), with
    /// its secret from --secret-file or the state directory; no cluster
    /// record is needed
    #[arg(long, value_name = "ADDR")]
    pub cluster: Option<std::net::SocketAddr>,
    /// File holding the cluster's secret, with --cluster [default:
    /// DIR/secret of --state]
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub secret_file: Option<PathBuf>,
    /// How the program's stdin, stdout and stderr reach it: `relay` copies
    /// them over the launch connection (the program may run on another
    /// host, and move); `pass` hands this process's own descriptors to a
    /// processor on this host (exactly native stdio: a file stays a file,
    /// but the program cannot move)
    #[arg(long, value_enum, env = "LEGO_STDIO", default_value = "relay")]
    pub stdio: StdioMode,
    /// How long the program waits for a storage manager that went away
    /// (say, restarting) before it fails
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration, default_value = "10s")]
    pub storage_retry: Duration,
    /// The program and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<OsString>,
}

/// How a program's stdio reaches it (`--stdio`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdioMode {
    Relay,
    Pass,
}

/// Finds the program as execvp would (`lego_proto::resolve_program`,
/// with `lego run`'s PATH), as an absolute path. Errors read like a
/// shell's.
fn resolve(
    program: &OsString,
    stat: impl Fn(&Path) -> Option<(bool, u32)>,
) -> Result<PathBuf, NotRun> {
    let path_var = std::env::var_os("PATH");
    let found = lego_proto::resolve_program(
        program.as_bytes(),
        path_var.as_deref().map(OsStrExt::as_bytes),
        |candidate| stat(Path::new(OsStr::from_bytes(candidate))),
    )?;
    let found = Path::new(OsStr::from_bytes(&found));
    std::path::absolute(found).map_err(|e| NotRun {
        status: 126,
        message: format!("{}: {e}", found.display()),
    })
}

/// `stat` of a host file: (is a directory, mode).
fn host_stat(path: &Path) -> Option<(bool, u32)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.is_dir(), m.permissions().mode()))
}

/// `stat` through the storage manager serving the program's files.
fn storage_stat(client: &Client, path: &Path) -> Option<(bool, u32)> {
    let abs = std::path::absolute(path).ok()?;
    lego_processor::guest::stat_on_storage(client, None, &abs)
}

/// A cluster `lego run` started itself; stopped and removed on drop.
struct Embedded {
    dir: StateDir,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = cluster::stop(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir.root);
    }
}

/// The cluster to run on: the one in the state directory if it is up,
/// else a new embedded one.
fn cluster(args: &RunArgs) -> Result<(StateDir, Option<Embedded>)> {
    let dir = args.state.dir();
    if args.cluster.is_some() {
        return Ok((dir, None));
    }
    if std::fs::metadata(dir.record_path())
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    {
        bail!(
            "the cluster in {} is another user's, and it lets no other user run programs \
             (its owner can allow some with `lego up --allow-users USER,...` or `--allow-group GROUP`)",
            dir.root.display()
        );
    }
    if let Some(record) = dir.load()? {
        if record.running().next().is_some() {
            return Ok((dir, None));
        }
    }
    let root = private_dir(&std::env::temp_dir())?;
    let embedded = Embedded {
        dir: StateDir::new(root.clone()),
    };
    let up = UpArgs {
        state: StateArgs { state: Some(root) },
        processors: 1,
        memories: 1,
        storages: 1,
        replicas: 1,
        memory_capacity: parse_size("8G").map_err(|e| anyhow!(e))?,
        excache: args.excache.unwrap_or(512 << 20),
        export: PathBuf::from("/"),
        host: std::net::Ipv4Addr::LOCALHOST.into(),
        heartbeat_interval: Duration::from_secs(1),
        dead_after: None,
        timeout: Duration::from_secs(30),
        allow_users: Vec::new(),
        allow_group: Vec::new(),
        quiet: true,
    };
    cluster::up(up).context("cannot start an embedded cluster")?;
    Ok((embedded.dir.clone(), Some(embedded)))
}

/// A new directory under `parent` that only its owner can enter, with an
/// unpredictable name (`lego-run-` and 128 random bits); an existing one
/// is never reused: another user could have made it.
fn private_dir(parent: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for _ in 0..8 {
        let mut random = [0u8; 16];
        // Safety: getrandom writes at most 16 bytes into `random`.
        let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        if got != random.len() as isize {
            bail!(
                "cannot name the embedded cluster's directory: getrandom: {}",
                std::io::Error::last_os_error()
            );
        }
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = parent.join(format!("lego-run-{name}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot create the embedded cluster's directory {}",
                        dir.display()
                    )
                })
            }
        }
    }
    bail!(
        "cannot create a directory of a new name in {}: every name tried exists",
        parent.display()
    )
}

type Placement = (
    Registration,
    Registration,
    Option<Registration>,
    Option<Registration>,
);

fn place(
    monitor: std::net::SocketAddr,
    secret: &ClusterSecret,
    wanted: Option<String>,
) -> Result<Placement> {
    let client = monitor_client_with(secret.clone(), monitor);
    let reply = client
        .call(&Message::PlaceProcess { processor: wanted }, &[])
        .with_context(|| format!("cannot reach the monitor at {monitor}"))?;
    match reply.message {
        Message::Placement {
            processor,
            memory,
            backup,
            storage,
        } => Ok((processor, memory, backup.map(|b| *b), storage.map(|s| *s))),
        Message::Error(e) => bail!("the monitor cannot place the program: {}", e.message),
        other => bail!("the monitor answered PlaceProcess with {}", other.kind()),
    }
}

/// The program's stdin, stdout and stderr: `lego run`'s own, except that
/// those on the user's terminal become the program's terminal when it has
/// one.
fn stdio_fds(pty: Option<&tty::Pty>) -> [RawFd; 3] {
    let Some(pty) = pty else {
        return [0, 1, 2];
    };
    [0, 1, 2].map(|fd| {
        if tty::same_terminal(fd, 0) {
            pty.slave.as_raw_fd()
        } else {
            fd
        }
    })
}

/// The owner's connection to `processor`'s launch socket, authenticated
/// with the cluster secret.
fn connect_owner(
    secret: &ClusterSecret,
    processor: &Registration,
) -> Result<(UnixStream, FrameReader<UnixStream>)> {
    let socket = processor
        .unix_socket
        .as_deref()
        .with_context(|| format!("processor {} has no launch socket", processor.name))?;
    let path = Path::new(socket);
    let stream = UnixStream::connect(path)
        .with_context(|| format!("cannot reach processor {} at {socket}", processor.name))?;
    authenticate(stream, &path.into(), secret)
}

/// Proves the cluster secret on `stream`, a connection to `peer`.
fn authenticate<S: Stream>(
    mut stream: S,
    peer: &lego_transport::Peer,
    secret: &ClusterSecret,
) -> Result<(S, FrameReader<S>)> {
    let mut reader = FrameReader::new(stream.duplicate()?, FrameLimits::HANDSHAKE);
    handshake::client(
        &mut stream,
        &mut reader,
        peer,
        secret,
        &Identity::new(Role::Client, "lego-run"),
        Duration::from_secs(5),
    )?;
    Ok((stream, reader))
}

/// The owner's connection to `processor`: its launch socket if it is on
/// this host and `remote` is not asked for, else its TCP address; both
/// authenticated with the cluster secret.
fn connect(secret: &ClusterSecret, processor: &Registration, remote: bool) -> Result<Connection> {
    if !remote && processor.unix_socket.is_some() {
        match connect_owner(secret, processor) {
            Ok((stream, reader)) => return Ok(Connection::Unix(stream, reader)),
            // Not on this host (or not this host's view of it): over TCP.
            Err(e) if !is_unreachable_socket(&e) => return Err(e),
            Err(_) => {}
        }
    }
    let addr = processor.addr;
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach processor {} at {addr}", processor.name))?;
    let _ = stream.set_nodelay(true);
    // A lost processor is found out even while the program is silent.
    let _ = lego_transport::keep_alive(&stream);
    let (stream, reader) = authenticate(stream, &addr.into(), secret)?;
    Ok(Connection::Tcp(stream, reader))
}

/// Whether `e` is a launch socket that is not there to connect to.
fn is_unreachable_socket(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            )
        })
    })
}

/// A launch connection.
enum Connection {
    Unix(UnixStream, FrameReader<UnixStream>),
    Tcp(std::net::TcpStream, FrameReader<std::net::TcpStream>),
}

/// How the program's stdio reaches it.
enum ProgramStdio {
    /// This process's descriptors, those on the terminal replaced by a
    /// terminal of the program's own (if any) that `lego run` relays.
    Passed(Option<tty::Pty>),
    /// Relayed over the launch connection, routed so.
    Relayed(RelayedStdio),
}

impl ProgramStdio {
    /// As `--stdio` asks, for a run whose program gets a terminal of its
    /// own if `terminal`.
    fn new(mode: StdioMode, terminal: bool) -> ProgramStdio {
        match mode {
            StdioMode::Pass => ProgramStdio::Passed(terminal.then(own_terminal).flatten()),
            StdioMode::Relay => ProgramStdio::Relayed(stdio::routes(terminal)),
        }
    }

    /// The spec's `controlling_tty` and `stdio`.
    fn spec(&self) -> (bool, StdioSpec) {
        match self {
            ProgramStdio::Passed(pty) => (pty.is_some(), StdioSpec::Passed),
            ProgramStdio::Relayed(relayed) => (
                relayed.terminal.is_some(),
                StdioSpec::Relayed(relayed.clone()),
            ),
        }
    }
}

/// Starts the program over `connection` and waits for it to end.
fn launch_on(
    connection: Connection,
    name: &str,
    spec: LaunchSpec,
    stdio: ProgramStdio,
    guest: bool,
) -> Result<Result<ExitReport, NotRun>> {
    match connection {
        Connection::Unix(stream, reader) => {
            let fds = match &stdio {
                ProgramStdio::Passed(pty) => self::stdio_fds(pty.as_ref()).to_vec(),
                ProgramStdio::Relayed(_) => Vec::new(),
            };
            send_fds(&stream, &fds).context("cannot hand the terminal to the processor")?;
            launch((stream, reader), name, spec, stdio, guest)
        }
        Connection::Tcp(stream, reader) => {
            if matches!(stdio, ProgramStdio::Passed(_)) {
                bail!(
                    "--stdio pass hands descriptors to a processor on this host, and processor {name} is reached over TCP"
                );
            }
            launch((stream, reader), name, spec, stdio, guest)
        }
    }
}

/// Starts the program on processor `name` over a launch connection and
/// waits for it to end; for a guest or relayed stdio, signals are
/// forwarded through the processor.
fn launch<S: Stream + Send + 'static>(
    (mut stream, mut reader): (S, FrameReader<S>),
    name: &str,
    spec: LaunchSpec,
    stdio: ProgramStdio,
    guest: bool,
) -> Result<Result<ExitReport, NotRun>> {
    reader.set_limits(FrameLimits::DEFAULT);
    write_frame(&mut stream, 1, &Message::Launch(spec), &[])?;
    let gone = |e| anyhow!("lost processor {name}: {e}");
    let (pid, host_pid) = match reader.read_frame().map_err(gone)?.message {
        Message::Launched { pid, host_pid } => (pid, host_pid),
        Message::NotRun(not_run) => return Ok(Err(not_run)),
        Message::Error(e) => bail!("processor {name} cannot start the program: {}", e.message),
        other => bail!("processor {name} answered Launch with {}", other.kind()),
    };
    let sender: stdio::Sender = Arc::new(Mutex::new(stream));
    let pty = match stdio {
        ProgramStdio::Relayed(relayed) => {
            crate::forward::through_processor(Arc::clone(&sender), pid, relayed.terminal.is_some());
            return stdio::attach(sender, &mut reader, pid, &relayed, name).map(Ok);
        }
        ProgramStdio::Passed(pty) => pty,
    };
    // The program holds its terminal now; ours would keep it open.
    let master = pty.map(|pty| pty.master);
    if !guest {
        crate::forward::target(host_pid);
    }
    let relay = match master {
        Some(master) => {
            tty::make_raw().context("cannot put the terminal in raw mode")?;
            Some(tty::relay(master).context("cannot relay the program's terminal")?)
        }
        None => None,
    };
    if !stdio::send(&sender, 2, &Message::WaitProcess { pid }, &[]) {
        bail!("lost processor {name}: the connection closed");
    }
    if guest {
        crate::forward::through_processor(sender, pid, false);
    }
    let ended = reader.read_frame().map_err(gone);
    if let Some(relay) = relay {
        relay.finish();
    }
    match ended?.message {
        Message::Exited(report) => Ok(Ok(report)),
        other => bail!(
            "processor {name} answered WaitProcess with {}",
            other.kind()
        ),
    }
}

fn print_stats(stats: &ExcacheStats) {
    let percentile = |q: f64| -> String {
        let total: u64 = stats.miss_latency_log2_ns.iter().sum();
        if total == 0 {
            return "-".into();
        }
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in stats.miss_latency_log2_ns.iter().enumerate() {
            seen += count;
            if seen >= target {
                return format!("<{:.1}us", (1u64 << (bucket + 1)) as f64 / 1000.0);
            }
        }
        "-".into()
    };
    eprintln!(
        "lego: ExCache {quota}: {misses} misses ({prefetched} more pages read ahead), {zero} zero-fills, {evictions} evictions, \
         {wb} pages written back in {batches} batches; fetched {fetched}, written back {written}; \
         peak resident {peak}; miss latency p50 {p50}, p99 {p99}",
        quota = format_size(stats.quota_bytes),
        misses = stats.misses,
        prefetched = stats.prefetched,
        zero = stats.zero_fills,
        evictions = stats.evictions,
        wb = stats.writebacks,
        batches = stats.writeback_batches,
        fetched = format_size(stats.bytes_fetched),
        written = format_size(stats.bytes_written_back),
        peak = format_size(stats.peak_resident_bytes),
        p50 = percentile(0.5),
        p99 = percentile(0.99),
    );
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    crate::forward::start();
    // Files come from the cluster's storage manager; LEGO_FILES=host gives
    // the program the processor's own files instead (and is what happens
    // when the cluster has no storage manager).
    let files = std::env::var_os("LEGO_FILES");
    let host_files = files.as_deref().is_some_and(|v| v == "host");
    let require_storage = files.as_deref().is_some_and(|v| v == "storage");
    let not_run = not_run_exit;
    // Fail fast, before any cluster is started, when the program is not there.
    let mut program = None;
    if host_files {
        match resolve(&args.command[0], host_stat) {
            Ok(path) => program = Some(path),
            Err(e) => return Ok(not_run(e)),
        }
    }
    let (dir, _embedded) = cluster(&args)?;
    if args.cluster.is_none() && is_guest(&dir) {
        return run_as_guest(&args, &dir);
    }
    let (monitor, secret) = match args.cluster {
        Some(monitor) => {
            let file = args.secret_file.clone().unwrap_or_else(|| dir.secret());
            let secret = ClusterSecret::load(&file).with_context(|| {
                format!(
                    "--cluster {monitor} needs the cluster's secret: give --secret-file FILE \
                     (the `secret` in its state directory)"
                )
            })?;
            (monitor, secret)
        }
        None => (dir.require()?.monitor, ClusterSecret::load(&dir.secret())?),
    };
    let (processor, memory, backup, storage) = place(monitor, &secret, args.processor.clone())?;
    let storage = storage.filter(|_| !host_files);
    if storage.is_none() && require_storage {
        bail!("LEGO_FILES=storage, but the cluster has no live storage manager");
    }
    let program = match (program, &storage) {
        (Some(path), _) => path,
        (None, Some(storage)) => {
            let mut config =
                ClientConfig::new(secret.clone(), Identity::new(Role::Client, "lego-run"));
            config.backoff.give_up_after = Duration::from_secs(2);
            let client = Client::new(storage.addr, config);
            match resolve(&args.command[0], |p| storage_stat(&client, p)) {
                Ok(path) => path,
                Err(e) => return Ok(not_run(e)),
            }
        }
        (None, None) => match resolve(&args.command[0], host_stat) {
            Ok(path) => path,
            Err(e) => return Ok(not_run(e)),
        },
    };
    let excache = args.excache.unwrap_or(match processor.load {
        lego_proto::Load::Processor { excache_quota, .. } => excache_quota,
        _ => 512 << 20,
    });
    let (memory_capacity, memory_available) = match memory.load {
        lego_proto::Load::Memory {
            capacity,
            committed,
            ..
        } => (capacity, capacity.saturating_sub(committed)),
        _ => (0, 0),
    };
    let stdio = ProgramStdio::new(args.stdio, terminal_wanted());
    let spec = LaunchSpec {
        program: program.into_os_string().into_vec(),
        excache,
        memory: memory.addr,
        memory_name: memory.name.clone(),
        memory_backup: backup.map(|b| lego_proto::MemoryHolder {
            name: b.name,
            addr: b.addr,
        }),
        memory_capacity,
        memory_available,
        storage: storage.as_ref().map(|s| s.addr),
        storage_name: storage.map(|s| s.name).unwrap_or_default(),
        ..unplaced_spec(&args, &stdio)?
    };
    let connection = connect(&secret, &processor, args.cluster.is_some())?;
    let report = launch_on(connection, &processor.name, spec, stdio, false);
    tty::finish();
    let report = match report? {
        Ok(report) => report,
        Err(not_run) => return Ok(not_run_exit(not_run)),
    };
    finish(&args, report)
}

/// In the foreground of a terminal, the program gets a terminal of its
/// own (job control, Ctrl-C and Ctrl-Z through its line discipline).
fn terminal_wanted() -> bool {
    tty::wanted() && std::env::var_os("LEGO_NO_TTY").is_none()
}

/// A terminal of the program's own that `lego run` relays (with passed
/// stdio).
fn own_terminal() -> Option<tty::Pty> {
    match tty::open() {
        Ok(pty) => Some(pty),
        Err(e) => {
            eprintln!(
                "lego: cannot give the program a terminal of its own ({e}); it shares this one"
            );
            None
        }
    }
}

/// The launch as the user asked for it, before placement: the program as
/// named, no memory or storage manager, the processor's ExCache quota
/// unless `--excache` says otherwise.
fn unplaced_spec(args: &RunArgs, stdio: &ProgramStdio) -> Result<LaunchSpec> {
    let (controlling_tty, stdio) = stdio.spec();
    Ok(LaunchSpec {
        program: args.command[0].as_bytes().to_vec(),
        argv: args.command.iter().map(|a| a.as_bytes().to_vec()).collect(),
        envp: std::env::vars_os()
            .map(|(k, v)| {
                let mut entry = k.into_vec();
                entry.push(b'=');
                entry.extend_from_slice(v.as_bytes());
                entry
            })
            .collect(),
        cwd: std::env::current_dir()?.into_os_string().into_vec(),
        excache: args.excache.unwrap_or(0),
        memory: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        memory_name: String::new(),
        memory_backup: None,
        memory_capacity: 0,
        memory_available: 0,
        storage: None,
        storage_name: String::new(),
        storage_retry_ms: args.storage_retry.as_millis() as u64,
        controlling_tty,
        stdio,
    })
}

/// Whether this user may not read the cluster's secret: a cluster of
/// another user's, which they reach as a guest.
fn is_guest(dir: &StateDir) -> bool {
    std::fs::File::open(dir.secret())
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Runs the program as a guest on another user's cluster: on a processor
/// of its record, through that processor's guests' socket, which places
/// the program and finds it with this user's credentials.
fn run_as_guest(args: &RunArgs, dir: &StateDir) -> Result<ExitCode> {
    if std::env::var_os("LEGO_FILES").is_some_and(|v| v == "host") {
        bail!("LEGO_FILES=host gives a program the processor's own files, which only the cluster's owner may ask for");
    }
    let record = dir.require()?;
    let processor = record
        .running()
        .find(|c| {
            c.role == Role::Processor && args.processor.as_ref().is_none_or(|want| *want == c.name)
        })
        .with_context(|| match &args.processor {
            Some(want) => format!("no running processor {want} in {}", dir.root.display()),
            None => format!("no running processor in {}", dir.root.display()),
        })?;
    let launch_socket = processor
        .args
        .windows(2)
        .find(|w| w[0] == "--launch-socket")
        .map(|w| PathBuf::from(&w[1]))
        .with_context(|| {
            format!(
                "processor {} was started without a launch socket",
                processor.name
            )
        })?;
    let socket = lego_processor::guest_socket(&launch_socket);
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot reach processor {} at {}",
            processor.name,
            socket.display()
        )
    })?;
    handshake::preambles_only(
        &mut stream,
        &socket.as_path().into(),
        Duration::from_secs(5),
    )?;
    let mut reader = FrameReader::new(stream.try_clone()?, FrameLimits::HANDSHAKE);
    match reader.read_frame()?.message {
        Message::GuestAccepted { .. } => {}
        Message::Error(e) => bail!("processor {}: {}", processor.name, e.message),
        other => bail!(
            "processor {} greeted a guest with {}",
            processor.name,
            other.kind()
        ),
    }
    let stdio = ProgramStdio::new(args.stdio, terminal_wanted());
    let spec = unplaced_spec(args, &stdio)?;
    let report = launch_on(
        Connection::Unix(stream, reader),
        &processor.name,
        spec,
        stdio,
        true,
    );
    tty::finish();
    match report? {
        Ok(report) => finish(args, report),
        Err(not_run) => Ok(not_run_exit(not_run)),
    }
}

fn not_run_exit(NotRun { status, message }: NotRun) -> ExitCode {
    eprintln!("lego: {message}");
    ExitCode::from(status)
}

/// Reports how the program ended and exits as it did.
fn finish(args: &RunArgs, report: ExitReport) -> Result<ExitCode> {
    if args.stats {
        if let Some(stats) = &report.stats {
            print_stats(stats);
        }
    }
    if let Some(error) = &report.error {
        eprintln!("lego: error: {error}");
    }
    Ok(ExitCode::from(report.status.shell_code() as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_cluster_gets_a_private_directory_of_a_new_name() {
        let parent = std::env::temp_dir().join(format!("lego-private-dir-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let a = private_dir(&parent).unwrap();
        let b = private_dir(&parent).unwrap();
        assert_ne!(a, b);
        for dir in [&a, &b] {
            let meta = std::fs::metadata(dir).unwrap();
            assert!(meta.is_dir());
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o700,
                "{}",
                dir.display()
            );
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert_eq!(name.len(), "lego-run-".len() + 32, "{name}");
            assert!(!name.contains(&std::process::id().to_string()));
        }
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
