//! `lego ps`: every process of the cluster, as the processors running them
//! last reported in their heartbeats.

use crate::cluster::{fetch_view, monitor_client};
use crate::units::format_size;
use crate::StateArgs;
use anyhow::{Context, Result};
use clap::Args;
use lego_proto::{ClusterView, Health, Load, ProcessInfo};
use serde_json::json;

#[derive(Args, Debug)]
pub struct PsArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// One process and the processor that runs it.
struct Row<'a> {
    processor: &'a str,
    info: &'a ProcessInfo,
}

/// What memory manager `name` reports holding of process `pid`, if any.
fn held_on(view: &ClusterView, name: &str, pid: u64) -> Option<u64> {
    view.members
        .iter()
        .filter(|m| m.registration.name == name && m.health == Health::Alive)
        .find_map(|m| match &m.load {
            Load::Memory { held, .. } => held.iter().find(|h| h.pid == pid).map(|h| h.bytes),
            _ => None,
        })
}

/// The memory managers holding regions of `pid` spilled from its home:
/// each one's name, regions and bytes.
fn spilled_on(view: &ClusterView, pid: u64) -> Vec<(&str, u32, u64)> {
    view.members
        .iter()
        .filter(|m| m.health == Health::Alive)
        .filter_map(|m| match &m.load {
            Load::Memory { regions, .. } => regions
                .iter()
                .find(|r| r.pid == pid)
                .map(|r| (m.registration.name.as_str(), r.regions, r.bytes)),
            _ => None,
        })
        .collect()
}

/// "memory-0 (12 MiB), memory-1 (12 MiB)", or "-".
fn spilled_cell(view: &ClusterView, pid: u64) -> String {
    let on = spilled_on(view, pid);
    if on.is_empty() {
        return "-".into();
    }
    on.iter()
        .map(|(name, _, bytes)| format!("{name} ({})", format_size(*bytes)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A memory manager's name and what it reports holding of `pid`.
fn holder_cell(view: &ClusterView, name: &str, pid: u64) -> String {
    match held_on(view, name, pid) {
        Some(bytes) => format!("{name} ({})", format_size(bytes)),
        None => name.to_string(),
    }
}

fn rows(view: &ClusterView) -> Vec<Row<'_>> {
    let mut rows = Vec::new();
    for member in &view.members {
        if member.health != Health::Alive {
            continue;
        }
        if let Load::Processor { processes, .. } = &member.load {
            for info in processes {
                rows.push(Row {
                    processor: &member.registration.name,
                    info,
                });
            }
        }
    }
    rows.sort_by_key(|r| (r.processor.to_string(), r.info.host_pid));
    rows
}

/// Every process of the cluster in `dir`, as its processors last
/// reported them.
pub fn processes(dir: &crate::state::StateDir) -> Result<Vec<ProcessInfo>> {
    let record = dir.require()?;
    let client = monitor_client(dir, record.monitor)?;
    let view = fetch_view(&client)?;
    Ok(rows(&view).into_iter().map(|r| r.info.clone()).collect())
}

fn pid(pid: u64) -> String {
    format!("{pid:x}")
}

pub fn ps(args: PsArgs) -> Result<()> {
    let dir = args.state.dir();
    let record = dir.require()?;
    let client = monitor_client(&dir, record.monitor)?;
    let view = fetch_view(&client).with_context(|| {
        format!(
            "cannot reach the monitor of the cluster in {}; if it died, `lego restart monitor` starts it again",
            dir.root.display()
        )
    })?;
    let rows = rows(&view);
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "pid": pid(r.info.pid),
                    "parent": r.info.parent.map(pid),
                    "processor": r.processor,
                    "host_pid": r.info.host_pid,
                    "home_memory": r.info.home_memory,
                    "home_bytes": held_on(&view, &r.info.home_memory, r.info.pid),
                    "backup_memory": r.info.backup_memory,
                    "backup_bytes": r.info.backup_memory.as_deref()
                        .and_then(|b| held_on(&view, b, r.info.pid)),
                    "spilled": spilled_on(&view, r.info.pid).iter().map(|(name, regions, bytes)| json!({
                        "memory": name,
                        "regions": regions,
                        "bytes": bytes,
                    })).collect::<Vec<_>>(),
                    "excache_quota": r.info.excache_quota,
                    "resident_bytes": r.info.resident_bytes,
                    "misses": r.info.misses,
                    "command": r.info.command,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut table = vec![[
        "PID".to_string(),
        "PARENT".into(),
        "PROCESSOR".into(),
        "HOST-PID".into(),
        "MEMORY".into(),
        "BACKUP".into(),
        "SPILLED".into(),
        "RESIDENT".into(),
        "QUOTA".into(),
        "MISSES".into(),
        "COMMAND".into(),
    ]];
    for r in &rows {
        table.push([
            pid(r.info.pid),
            r.info.parent.map_or("-".into(), pid),
            r.processor.to_string(),
            r.info.host_pid.to_string(),
            holder_cell(&view, &r.info.home_memory, r.info.pid),
            r.info
                .backup_memory
                .as_deref()
                .map_or_else(|| "-".into(), |b| holder_cell(&view, b, r.info.pid)),
            spilled_cell(&view, r.info.pid),
            format_size(r.info.resident_bytes),
            format_size(r.info.excache_quota),
            r.info.misses.to_string(),
            // One line per process: control characters show as '?', as
            // ps(1) shows them.
            r.info
                .command
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        ]);
    }
    // Every column but the last (the command line) padded to its width.
    let widths: Vec<usize> = (0..10)
        .map(|i| table.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    for row in &table {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            line.push_str(&format!("{:<width$}  ", row[i], width = *width));
        }
        line.push_str(&row[10]);
        println!("{}", line.trim_end());
    }
    if rows.is_empty() {
        println!("(no processes)");
    }
    Ok(())
}
