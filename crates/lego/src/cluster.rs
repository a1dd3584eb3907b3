//! The local cluster: `lego up`, `down`, `restart` and `kill`.
//!
//! `up` starts each component as a child process in its own process group
//! (so a Ctrl-C at the user's terminal does not reach it), with its output
//! going to its log file, records it in the state directory as soon as it
//! is started (so `down` can always clean up), and returns once the monitor
//! reports every component registered and alive.

use crate::state::{log_tail, ClusterRecord, ComponentRecord, StateDir};
use crate::units::{format_duration, parse_duration, parse_size};
use crate::StateArgs;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lego_processor::Guests;
use lego_proto::{ClusterView, Health, Message, Role};
use lego_transport::{Backoff, Client, ClientConfig, ClusterSecret, Identity};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Most components of one role `lego up` starts.
const MAX_PER_ROLE: usize = 64;
/// How long stopping a component may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(20);

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Processor managers to start
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub processors: usize,
    /// Memory managers to start
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub memories: usize,
    /// Storage managers to start
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub storages: usize,
    /// Copies of each process's memory: 2 keeps a backup of all of it on a
    /// second memory manager, which takes over if the first is lost; 1
    /// keeps none (with one memory manager there is no backup either way)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub replicas: u32,
    /// Capacity of each memory manager's page pool (e.g. 512M, 4G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    pub memory_capacity: u64,
    /// ExCache quota of each processor (e.g. 64M)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "512M")]
    pub excache: u64,
    /// Directory the storage managers export
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub export: PathBuf,
    /// The address every component serves on (each on a free port): a
    /// host address lets components started elsewhere (another host, a
    /// network namespace) join the cluster
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// How often components heartbeat to the monitor
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub heartbeat_interval: Duration,
    /// Silence after which the monitor marks a component dead [default: 2.5 heartbeat intervals]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dead_after: Option<Duration>,
    /// Give up if the cluster is not healthy within this time
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Let these other users run programs on the cluster (names or uids,
    /// comma-separated) [default: only the cluster's owner]
    #[arg(long, value_name = "USERS", value_delimiter = ',')]
    pub allow_users: Vec<String>,
    /// Let members of these groups run programs on the cluster (names or
    /// gids, comma-separated)
    #[arg(long, value_name = "GROUPS", value_delimiter = ',')]
    pub allow_group: Vec<String>,
    /// Print nothing on success
    #[arg(long, hide = true)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// The component to restart, as `lego status` names it (e.g. monitor, memory-0)
    pub name: String,
    #[command(flatten)]
    pub state: StateArgs,
    /// Give up if the component is not back within this time
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// The component to signal, as `lego status` names it (e.g. memory-1)
    pub name: String,
    /// Signal to send: KILL, TERM, INT, HUP, STOP or CONT
    #[arg(long, short, default_value = "KILL")]
    pub signal: String,
    #[command(flatten)]
    pub state: StateArgs,
}

/// A client of the cluster's monitor, for the user's commands.
pub fn monitor_client(dir: &StateDir, monitor: SocketAddr) -> Result<Client> {
    Ok(monitor_client_with(
        ClusterSecret::load(&dir.secret())?,
        monitor,
    ))
}

/// A client of the monitor at `monitor`, holding `secret`.
pub fn monitor_client_with(secret: ClusterSecret, monitor: SocketAddr) -> Client {
    let mut config = ClientConfig::new(secret, Identity::new(Role::Client, "lego-cli"));
    config.backoff = Backoff {
        give_up_after: Duration::from_millis(500),
        ..Backoff::default()
    };
    Client::new(monitor, config)
}

/// Asks the monitor for its view of the cluster.
pub fn fetch_view(client: &Client) -> Result<ClusterView> {
    match client.call(&Message::GetClusterView, &[])?.message {
        Message::ClusterView(view) => Ok(view),
        Message::Error(e) => bail!("the monitor at {} refused: {}", client.addr(), e.message),
        other => bail!("the monitor at {} answered {}", client.addr(), other.kind()),
    }
}

/// How `spawn` opens a component's log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Log {
    /// A new cluster: start the log afresh.
    Fresh,
    /// A restart: keep what the component logged before.
    Append,
}

fn spawn(dir: &StateDir, name: &str, args: &[String], log: Log) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the lego executable")?;
    let log_path = dir.log(name);
    let log = OpenOptions::new()
        .create(true)
        .write(true)
        .append(log == Log::Append)
        .truncate(log == Log::Fresh)
        .open(&log_path)
        .with_context(|| format!("cannot open the log {}", log_path.display()))?;
    let log_err = log.try_clone()?;
    let mut command = Command::new(&exe);
    command
        .args(args)
        .env("LEGO_STATE", &dir.root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    // Components start with no signal blocked, whatever the caller blocks
    // (`lego run` blocks the signals it forwards).
    // Safety: sigprocmask is async-signal-safe and reads a local set.
    unsafe {
        command.pre_exec(|| {
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {name} ({} {})", exe.display(), args.join(" ")))
}

fn record_for(
    dir: &StateDir,
    name: &str,
    role: Role,
    pid: u32,
    args: Vec<String>,
) -> ComponentRecord {
    ComponentRecord {
        name: name.to_string(),
        role,
        pid,
        addr: None,
        log: dir.log(name),
        args,
    }
}

/// Sends `signal` to a recorded component if it is still that component.
fn signal(component: &ComponentRecord, signal: libc::c_int) -> bool {
    if !component.is_running() {
        return false;
    }
    // Safety: kill(2) takes plain integers and touches no memory of ours;
    // the pid was just checked to be this component (not a recycled pid).
    unsafe { libc::kill(component.pid as libc::pid_t, signal) == 0 }
}

/// Stops components: TERM, then KILL for any still running after the grace
/// period. Returns the names of those that had to be killed.
fn stop_components(components: &[ComponentRecord]) -> Vec<String> {
    for c in components {
        signal(c, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && components.iter().any(|c| c.is_running()) {
        std::thread::sleep(POLL);
    }
    let mut killed = Vec::new();
    for c in components {
        if signal(c, libc::SIGKILL) {
            killed.push(c.name.clone());
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && components.iter().any(|c| c.is_running()) {
        std::thread::sleep(POLL);
    }
    killed
}

/// Waits until `path` holds a socket address written by the monitor.
fn wait_for_addr_file(path: &Path, child: &mut Child, deadline: Instant) -> Result<SocketAddr> {
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(addr) = text.trim().parse() {
                return Ok(addr);
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the monitor exited during startup ({status})");
        }
        if Instant::now() >= deadline {
            bail!("the monitor did not report its address within the timeout");
        }
        std::thread::sleep(POLL);
    }
}

/// Names of the components in `expected` that the monitor does not (yet)
/// report alive with the recorded pid.
fn not_ready<'a>(view: &ClusterView, expected: &'a [ComponentRecord]) -> Vec<&'a ComponentRecord> {
    expected
        .iter()
        .filter(|c| {
            !view.members.iter().any(|m| {
                m.registration.name == c.name
                    && m.registration.pid == c.pid
                    && m.health == Health::Alive
            })
        })
        .collect()
}

fn failure_report(component: &ComponentRecord, what: &str) -> anyhow::Error {
    anyhow!(
        "{} {what}; last lines of {}:\n{}",
        component.name,
        component.log.display(),
        log_tail(&component.log, 20)
    )
}

pub fn up(args: UpArgs) -> Result<()> {
    for (flag, n) in [
        ("--processors", args.processors),
        ("--memories", args.memories),
        ("--storages", args.storages),
    ] {
        if n > MAX_PER_ROLE {
            bail!("{flag} {n} is more than the {MAX_PER_ROLE} a local cluster supports");
        }
    }
    let guests = guests(&args)?;
    let dir = args.state.dir();
    dir.create()?;
    open_to_guests(&dir, &guests)?;
    if let Some(old) = dir.load()? {
        if let Some(live) = old.running().next() {
            bail!(
                "a Lego cluster is already running from {} ({} is pid {}); stop it with `lego down` \
                 or choose another --state",
                dir.root.display(),
                live.name,
                live.pid
            );
        }
        eprintln!(
            "lego: clearing the state of a cluster that is no longer running in {}",
            dir.root.display()
        );
    }
    dir.clear()?;
    ClusterSecret::generate()?.write_new(&dir.secret())?;

    let deadline = Instant::now() + args.timeout;
    let mut children: Vec<(String, Child)> = Vec::new();
    let result = start_all(&args, &guests, &dir, deadline, &mut children);
    if let Err(e) = result {
        // Leave nothing behind: stop what was started, forget the cluster.
        if let Some(record) = dir.load().ok().flatten() {
            stop_components(&record.components);
        }
        for (_, child) in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = dir.clear();
        return Err(e);
    }
    let record = dir.require()?;
    if args.quiet {
        return Ok(());
    }
    println!(
        "Lego cluster up: {} components, monitor at {}, state in {}",
        record.components.len(),
        record.monitor,
        dir.root.display()
    );
    Ok(())
}

/// The users and groups `--allow-users` and `--allow-group` name, as ids.
fn guests(args: &UpArgs) -> Result<Guests> {
    let uids = args
        .allow_users
        .iter()
        .map(|user| {
            user.parse()
                .ok()
                .or_else(|| account_id(user, false))
                .with_context(|| format!("--allow-users: no user {user:?} on this host"))
        })
        .collect::<Result<_>>()?;
    let gids = args
        .allow_group
        .iter()
        .map(|group| {
            group
                .parse()
                .ok()
                .or_else(|| account_id(group, true))
                .with_context(|| format!("--allow-group: no group {group:?} on this host"))
        })
        .collect::<Result<_>>()?;
    Ok(Guests { uids, gids })
}

/// The uid of user `name` (the gid of group `name`), through the host's
/// name service.
fn account_id(name: &str, group: bool) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 1 << 16];
    // Safety: the *_r calls write one record into our struct, its strings
    // into `buf` (of the length given), and `found` to it or null.
    unsafe {
        if group {
            let mut record: libc::group = std::mem::zeroed();
            let mut found = std::ptr::null_mut();
            libc::getgrnam_r(
                name.as_ptr(),
                &mut record,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            );
            (!found.is_null()).then_some(record.gr_gid)
        } else {
            let mut record: libc::passwd = std::mem::zeroed();
            let mut found = std::ptr::null_mut();
            libc::getpwnam_r(
                name.as_ptr(),
                &mut record,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            );
            (!found.is_null()).then_some(record.pw_uid)
        }
    }
}

/// With guests, the state directory is searchable by every user (not
/// listable: mode 0711), so they reach `cluster.json` and the guests'
/// launch sockets; the secret and the logs stay the owner's. Without, it
/// is the owner's alone (0700). Warns if a directory above it keeps the
/// guests out.
fn open_to_guests(dir: &StateDir, guests: &Guests) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if guests.is_empty() { 0o700 } else { 0o711 };
    std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dir.root.display()))?;
    if guests.is_empty() {
        return Ok(());
    }
    let root = std::path::absolute(&dir.root)?;
    for ancestor in root.ancestors().skip(1) {
        let searchable =
            std::fs::metadata(ancestor).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
        if !searchable {
            eprintln!(
                "lego: warning: other users cannot reach {} ({} is not searchable by them); \
                 start the cluster with --state in a directory they can reach",
                dir.root.display(),
                ancestor.display()
            );
            break;
        }
    }
    Ok(())
}

fn start_all(
    args: &UpArgs,
    guests: &Guests,
    dir: &StateDir,
    deadline: Instant,
    children: &mut Vec<(String, Child)>,
) -> Result<()> {
    let secret_file = dir.secret().display().to_string();
    let addr_file = dir.monitor_addr_file();
    let mut monitor_args = vec![
        "monitor".to_string(),
        "--name".into(),
        "monitor".into(),
        "--listen".into(),
        SocketAddr::new(args.host, 0).to_string(),
        "--addr-file".into(),
        addr_file.display().to_string(),
        "--secret-file".into(),
        secret_file.clone(),
        "--heartbeat-interval".into(),
        format_duration(args.heartbeat_interval),
        "--replicas".into(),
        args.replicas.to_string(),
    ];
    if let Some(dead_after) = args.dead_after {
        monitor_args.extend(["--dead-after".into(), format_duration(dead_after)]);
    }
    let mut monitor_child = spawn(dir, "monitor", &monitor_args, Log::Fresh)?;
    let monitor_pid = monitor_child.id();
    let placeholder: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let mut record = ClusterRecord::new(placeholder);
    record.components.push(record_for(
        dir,
        "monitor",
        Role::Monitor,
        monitor_pid,
        monitor_args.clone(),
    ));
    dir.save(&record)?;
    let monitor_addr =
        wait_for_addr_file(&addr_file, &mut monitor_child, deadline).map_err(|e| {
            anyhow!(
                "{e}; last lines of {}:\n{}",
                dir.log("monitor").display(),
                log_tail(&dir.log("monitor"), 20)
            )
        })?;
    children.push(("monitor".into(), monitor_child));
    // From now on the monitor keeps this address, also across `lego restart monitor`.
    record.monitor = monitor_addr;
    let monitor_record = record.component_mut("monitor").expect("just added");
    monitor_record.addr = Some(monitor_addr);
    set_listen(&mut monitor_record.args, monitor_addr);

    let common = |role: &str, name: &str| -> Vec<String> {
        vec![
            role.to_string(),
            "--name".into(),
            name.to_string(),
            "--listen".into(),
            SocketAddr::new(args.host, 0).to_string(),
            "--monitor".into(),
            monitor_addr.to_string(),
            "--secret-file".into(),
            secret_file.clone(),
        ]
    };
    let mut plan: Vec<(String, Role, Vec<String>)> = Vec::new();
    for i in 0..args.processors {
        let name = format!("processor-{i}");
        let mut a = common("processor", &name);
        for uid in &guests.uids {
            a.extend(["--allow-uid".into(), uid.to_string()]);
        }
        for gid in &guests.gids {
            a.extend(["--allow-gid".into(), gid.to_string()]);
        }
        a.extend([
            "--excache".into(),
            args.excache.to_string(),
            "--launch-socket".into(),
            dir.root
                .join("run")
                .join(format!("{name}.sock"))
                .display()
                .to_string(),
        ]);
        plan.push((name, Role::Processor, a));
    }
    for i in 0..args.memories {
        let name = format!("memory-{i}");
        let mut a = common("memory", &name);
        a.extend(["--capacity".into(), args.memory_capacity.to_string()]);
        plan.push((name, Role::Memory, a));
    }
    for i in 0..args.storages {
        let name = format!("storage-{i}");
        let mut a = common("storage", &name);
        a.extend(["--export".into(), args.export.display().to_string()]);
        plan.push((name, Role::Storage, a));
    }
    for (name, role, a) in plan {
        let child = spawn(dir, &name, &a, Log::Fresh)?;
        record
            .components
            .push(record_for(dir, &name, role, child.id(), a));
        children.push((name, child));
        dir.save(&record)?;
    }

    let client = monitor_client(dir, monitor_addr)?;
    let expected: Vec<ComponentRecord> = record
        .components
        .iter()
        .filter(|c| c.role != Role::Monitor)
        .cloned()
        .collect();
    loop {
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                let c = record.component(name).expect("every child is recorded");
                return Err(failure_report(
                    c,
                    &format!("exited during startup ({status})"),
                ));
            }
        }
        // The monitor may be briefly busy; only the deadline makes this fatal.
        let view = fetch_view(&client).ok();
        if let Some(view) = &view {
            if not_ready(view, &expected).is_empty() {
                for member in &view.members {
                    if let Some(c) = record.component_mut(&member.registration.name) {
                        c.addr = Some(member.registration.addr);
                        set_listen(&mut c.args, member.registration.addr);
                    }
                }
                dir.save(&record)?;
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let laggard = match &view {
                Some(view) => not_ready(view, &expected).first().copied(),
                None => record.component("monitor"),
            }
            .cloned()
            .expect("something is not ready");
            return Err(failure_report(
                &laggard,
                &format!(
                    "was not registered and alive within {}",
                    format_duration(args.timeout)
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Replaces the value of `--listen` so a restart binds the same address.
fn set_listen(args: &mut [String], addr: SocketAddr) {
    if let Some(i) = args.iter().position(|a| a == "--listen") {
        if let Some(value) = args.get_mut(i + 1) {
            *value = addr.to_string();
        }
    }
}

/// What stopping a cluster did.
pub struct Stopped {
    pub running: usize,
    pub total: usize,
    /// Components that needed SIGKILL.
    pub killed: Vec<String>,
}

/// Stops every component recorded in `dir` and forgets the cluster (the
/// logs stay). `None` when no cluster was recorded there.
pub fn stop(dir: &StateDir) -> Result<Option<Stopped>> {
    let Some(record) = dir.load()? else {
        return Ok(None);
    };
    let running = record.running().count();
    let killed = stop_components(&record.components);
    if let Some(still) = record.running().next() {
        bail!(
            "{} (pid {}) did not stop even after SIGKILL; the state in {} is kept",
            still.name,
            still.pid,
            dir.root.display()
        );
    }
    dir.clear()?;
    Ok(Some(Stopped {
        running,
        total: record.components.len(),
        killed,
    }))
}

pub fn down(args: StateArgs) -> Result<()> {
    let dir = args.dir();
    let Some(stopped) = stop(&dir)? else {
        println!("No Lego cluster is running in {}", dir.root.display());
        return Ok(());
    };
    let forced = if stopped.killed.is_empty() {
        String::new()
    } else {
        format!(" ({} needed SIGKILL)", stopped.killed.join(", "))
    };
    println!(
        "Lego cluster down: stopped {} of {} components{forced}; logs kept in {}",
        stopped.running,
        stopped.total,
        dir.logs().display()
    );
    Ok(())
}

pub fn restart(args: RestartArgs) -> Result<()> {
    let dir = args.state.dir();
    let mut record = dir.require()?;
    let Some(component) = record.component(&args.name).cloned() else {
        let names: Vec<&str> = record.components.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "no component named {} in this cluster (it has: {})",
            args.name,
            names.join(", ")
        );
    };
    if component.is_running() {
        stop_components(std::slice::from_ref(&component));
    }
    let mut child = spawn(&dir, &component.name, &component.args, Log::Append)?;
    let pid = child.id();
    let entry = record
        .component_mut(&component.name)
        .expect("looked up above");
    entry.pid = pid;
    dir.save(&record)?;
    let fresh = record
        .component(&component.name)
        .expect("looked up above")
        .clone();

    let deadline = Instant::now() + args.timeout;
    let client = monitor_client(&dir, record.monitor)?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(failure_report(
                &fresh,
                &format!("exited during restart ({status})"),
            ));
        }
        let ready = match fetch_view(&client) {
            Ok(view) => {
                fresh.role == Role::Monitor
                    || not_ready(&view, std::slice::from_ref(&fresh)).is_empty()
            }
            Err(_) => false,
        };
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            return Err(failure_report(
                &fresh,
                &format!("was not back within {}", format_duration(args.timeout)),
            ));
        }
        std::thread::sleep(POLL);
    }
    println!(
        "Restarted {} (pid {pid}) at {}",
        fresh.name,
        fresh
            .addr
            .map_or("its recorded address".into(), |a| a.to_string())
    );
    Ok(())
}

fn parse_signal(name: &str) -> Result<libc::c_int> {
    let upper = name.trim_start_matches("SIG").to_ascii_uppercase();
    Ok(match upper.trim_start_matches("SIG") {
        "KILL" | "9" => libc::SIGKILL,
        "TERM" | "15" => libc::SIGTERM,
        "INT" | "2" => libc::SIGINT,
        "HUP" | "1" => libc::SIGHUP,
        "STOP" | "19" => libc::SIGSTOP,
        "CONT" | "18" => libc::SIGCONT,
        _ => bail!("unknown signal {name:?}: use KILL, TERM, INT, HUP, STOP or CONT"),
    })
}

pub fn kill(args: KillArgs) -> Result<()> {
    let sig = parse_signal(&args.signal)?;
    let dir = args.state.dir();
    let record = dir.require()?;
    let Some(component) = record.component(&args.name) else {
        let names: Vec<&str> = record.components.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "no component named {} in this cluster (it has: {})",
            args.name,
            names.join(", ")
        );
    };
    if !signal(component, sig) {
        bail!("{} (pid {}) is not running", component.name, component.pid);
    }
    println!(
        "Sent SIG{} to {} (pid {})",
        args.signal.trim_start_matches("SIG").to_ascii_uppercase(),
        component.name,
        component.pid
    );
    Ok(())
}
