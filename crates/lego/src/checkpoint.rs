//! `lego checkpoint PID`: freezes a running process where it runs (every
//! thread stopped at a boundary, its dirty ExCache pages written back to
//! its memory manager, its whole state taken), lets it run on, and says
//! what that took. The state is not kept yet: restarting a process from a
//! checkpoint, and keeping checkpoints in the memory managers, are still
//! to come.

use crate::cluster::{fetch_view, monitor_client};
use crate::units::format_size;
use crate::StateArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use lego_proto::{Health, Load, Message, ProcessId, Role};
use lego_transport::{Client, ClientConfig, ClusterSecret, Identity};

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The process, as `lego ps` shows its PID (hex)
    #[arg(value_parser = parse_pid)]
    pub pid: ProcessId,
}

/// A Lego pid as `lego ps` prints it (hex, `0x` optional).
pub fn parse_pid(text: &str) -> Result<ProcessId, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    ProcessId::from_str_radix(digits, 16)
        .map_err(|_| format!("{text:?} is not a Lego pid (the hex PID `lego ps` shows)"))
}

pub fn checkpoint(args: CheckpointArgs) -> Result<()> {
    let dir = args.state.dir();
    let record = dir.require()?;
    let view = fetch_view(&monitor_client(&dir, record.monitor)?)?;
    let pid = args.pid;
    let processor = view
        .members
        .iter()
        .filter(|m| m.health == Health::Alive)
        .find(|m| match &m.load {
            Load::Processor { processes, .. } => processes.iter().any(|p| p.pid == pid),
            _ => false,
        })
        .map(|m| m.registration.clone())
        .with_context(|| format!("no live processor runs process {pid:x} (see `lego ps`)"))?;
    let secret = ClusterSecret::load(&dir.secret())?;
    let client = Client::new(
        processor.addr,
        ClientConfig::new(secret, Identity::new(Role::Client, "lego-checkpoint")),
    );
    let reply = client
        .call(&Message::Checkpoint { pid }, &[])
        .with_context(|| {
            format!(
                "cannot reach processor {} at {}",
                processor.name, processor.addr
            )
        })?;
    match reply.message {
        Message::Checkpointed { report, stopped_us } => {
            println!(
                "froze process {pid:x} on {}: stopped {} ms ({} threads stopped in {} ms, \
                 {} of dirty pages written back in {} ms), state {} ({} descriptors)",
                processor.name,
                ms(stopped_us),
                report.threads,
                ms(report.stop_us),
                format_size(report.written_back_bytes),
                ms(report.flush_us),
                format_size(report.state_bytes),
                report.files,
            );
            println!(
                "it runs on; the state is not kept yet (restarting from a checkpoint is still to come)"
            );
            Ok(())
        }
        Message::Error(e) => bail!("processor {}: {}", processor.name, e.message),
        other => bail!(
            "processor {} answered Checkpoint with {}",
            processor.name,
            other.kind()
        ),
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}
