//! `lego drain`: move everything a memory manager holds to the others
//! while programs run, showing progress until it holds nothing.

use crate::cluster::{fetch_view, monitor_client};
use crate::StateArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use lego_proto::{DrainState, Load, Message};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The memory manager to empty, as `lego status` names it (e.g. memory-1)
    pub name: String,
    /// Give up waiting after this many seconds (the drain goes on)
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn drain(args: DrainArgs) -> Result<()> {
    let dir = args.state.dir();
    let record = dir.require()?;
    let client = monitor_client(&dir, record.monitor)?;
    let reply = client
        .call(
            &Message::Drain {
                name: args.name.clone(),
            },
            &[],
        )
        .with_context(|| format!("cannot reach the monitor at {}", record.monitor))?;
    match reply.message {
        Message::DrainStarted => {}
        Message::Error(e) => bail!("cannot drain {}: {}", args.name, e.message),
        other => bail!("the monitor answered Drain with {}", other.kind()),
    }
    let started = Instant::now();
    let mut shown = None;
    loop {
        let view = fetch_view(&client)?;
        let Some(member) = view
            .members
            .iter()
            .find(|m| m.registration.name == args.name)
        else {
            bail!("{} left the cluster while it was drained", args.name);
        };
        let state = member.draining.clone().unwrap_or(DrainState {
            moved: 0,
            left: 0,
            done: false,
            error: Some("the monitor forgot the drain (restarted?)".into()),
        });
        let used = match &member.load {
            Load::Memory { used, .. } => *used,
            _ => 0,
        };
        if let Some(why) = &state.error {
            bail!("draining {} failed: {why}", args.name);
        }
        if state.done {
            let took = started.elapsed();
            // What it holds, as its next heartbeats report it.
            let mut used = used;
            let deadline = Instant::now() + Duration::from_secs(5);
            while used != 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                used = fetch_view(&client)?
                    .members
                    .iter()
                    .find(|m| m.registration.name == args.name)
                    .map_or(0, |m| match &m.load {
                        Load::Memory { used, .. } => *used,
                        _ => 0,
                    });
            }
            println!(
                "{} drained in {:.1}s: {} copies moved, {} bytes held",
                args.name,
                took.as_secs_f64(),
                state.moved,
                used
            );
            return Ok(());
        }
        let line = (state.moved, state.left);
        if shown != Some(line) && state.left > 0 {
            println!(
                "draining {}: {} copies moved, {} left",
                args.name, state.moved, state.left
            );
            shown = Some(line);
        }
        if started.elapsed() > Duration::from_secs(args.timeout) {
            bail!(
                "{} is still being drained after {}s ({} copies left); `lego status` shows its progress",
                args.name,
                args.timeout,
                state.left
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
