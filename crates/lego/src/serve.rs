//! The long-running subcommands: each starts one component and serves until
//! it is stopped by a signal.

use crate::units::{parse_duration, parse_size};
use crate::{JoinArgs, StateArgs};
use anyhow::{Context, Result};
use clap::Args;
use lego_memory::{MemoryConfig, MemoryManager};
use lego_monitor::{ComponentConfig, MonitorConfig, MonitorServer};
use lego_processor::{Guests, ProcessorConfig, ProcessorManager};
use lego_proto::Role;
use lego_storage::{StorageConfig, StorageManager};
use lego_transport::ClusterSecret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Address to serve on; port 0 picks a free port
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Write the address actually bound to this file
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
    /// How often components must heartbeat
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub heartbeat_interval: Duration,
    /// Silence after which a component is marked dead [default: 2.5 heartbeat intervals]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dead_after: Option<Duration>,
    /// Copies of each process's memory (2: a backup on a second memory manager)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub replicas: u32,
    /// Name of this process in `lego up`'s records
    #[arg(long, default_value = "monitor")]
    pub name: String,
    /// File holding the cluster secret [default: DIR/secret of --state]
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
pub struct ProcessorArgs {
    #[command(flatten)]
    pub join: JoinArgs,
    /// ExCache quota for the applications this processor runs (e.g. 512M)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "512M")]
    pub excache: u64,
    /// Unix socket on which `lego run` launches programs [default: DIR/run/NAME.sock of --state]
    #[arg(long, value_name = "PATH")]
    pub launch_socket: Option<PathBuf>,
    /// Another user who may launch programs (uid; repeatable)
    #[arg(long, value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// A group whose members may launch programs (gid; repeatable)
    #[arg(long, value_name = "GID")]
    pub allow_gid: Vec<u32>,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub join: JoinArgs,
    /// Bytes of memory this manager hands out as pages (e.g. 4G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    pub capacity: u64,
}

#[derive(Args, Debug)]
pub struct StorageArgs {
    #[command(flatten)]
    pub join: JoinArgs,
    /// The directory tree to serve
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub export: PathBuf,
}

fn load_secret(secret_file: &Option<PathBuf>, state: &StateArgs) -> Result<ClusterSecret> {
    let path = secret_file.clone().unwrap_or_else(|| state.dir().secret());
    Ok(ClusterSecret::load(&path)?)
}

fn component_config(role: Role, join: &JoinArgs) -> Result<ComponentConfig> {
    let monitor = match join.monitor {
        Some(addr) => addr,
        None => {
            join.state
                .dir()
                .require()
                .context("no --monitor given, and no cluster to take it from")?
                .monitor
        }
    };
    Ok(ComponentConfig {
        name: join
            .name
            .clone()
            .unwrap_or_else(|| format!("{role}-{}", std::process::id())),
        listen: join.listen,
        monitor,
        secret: load_secret(&join.secret_file, &join.state)?,
        unix_socket: None,
    })
}

/// How often a component gives the heap's free memory back to the host.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until a signal ends the process. Components hold no state that a
/// signal could leave half-written: everything durable lives elsewhere.
///
/// Every [`TRIM_INTERVAL`] the heap's free memory goes back to the host
/// (`malloc_trim`): freed buffers are kept for reuse between trims (see
/// `keep_freed_memory`), so a burst of requests on many connections
/// leaves a component's resident memory high for seconds, not for good.
fn serve_forever() -> ! {
    loop {
        std::thread::sleep(TRIM_INTERVAL);
        // Safety: malloc_trim only returns free heap memory to the host.
        unsafe { libc::malloc_trim(0) };
    }
}

pub fn monitor(args: MonitorArgs) -> Result<()> {
    let dead_after = args
        .dead_after
        .unwrap_or_else(|| args.heartbeat_interval.mul_f64(2.5));
    let monitor = MonitorServer::start(MonitorConfig {
        listen: args.listen,
        secret: load_secret(&args.secret_file, &args.state)?,
        heartbeat_interval: args.heartbeat_interval,
        dead_after,
        replicas: args.replicas,
    })
    .with_context(|| format!("cannot start the monitor on {}", args.listen))?;
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", monitor.local_addr()))
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write the monitor's address to {}", path.display()))?;
    }
    serve_forever()
}

pub fn processor(args: ProcessorArgs) -> Result<()> {
    let component = component_config(Role::Processor, &args.join)?;
    let launch_socket = args.launch_socket.clone().unwrap_or_else(|| {
        args.join
            .state
            .dir()
            .root
            .join("run")
            .join(format!("{}.sock", component.name))
    });
    let _processor = ProcessorManager::start(ProcessorConfig {
        component,
        excache: args.excache,
        launch_socket,
        guests: Guests {
            uids: args.allow_uid.clone(),
            gids: args.allow_gid.clone(),
        },
    })
    .context("cannot start the processor manager")?;
    serve_forever()
}

pub fn memory(args: MemoryArgs) -> Result<()> {
    let component = component_config(Role::Memory, &args.join)?;
    let _memory = MemoryManager::start(MemoryConfig {
        component,
        capacity: args.capacity,
    })
    .context("cannot start the memory manager")?;
    serve_forever()
}

pub fn storage(args: StorageArgs) -> Result<()> {
    let component = component_config(Role::Storage, &args.join)?;
    let secret_file = args
        .join
        .secret_file
        .clone()
        .unwrap_or_else(|| args.join.state.dir().secret());
    let _storage = StorageManager::start(StorageConfig {
        component,
        export: args.export,
        hide: vec![secret_file],
    })?;
    serve_forever()
}
