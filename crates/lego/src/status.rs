//! `lego status`: the monitor's view of the cluster, one row per component.

use crate::cluster::{fetch_view, monitor_client};
use crate::state::{ClusterRecord, ComponentRecord};
use crate::units::format_size;
use crate::StateArgs;
use anyhow::{Context, Result};
use clap::Args;
use lego_proto::{ClusterView, Load, MemberStatus};
use serde_json::json;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn status(args: StatusArgs) -> Result<()> {
    let dir = args.state.dir();
    let record = dir.require()?;
    let client = monitor_client(&dir, record.monitor)?;
    let mut view = fetch_view(&client).with_context(|| {
        format!(
            "cannot reach the monitor of the cluster in {}; if it died, `lego restart monitor` starts it again",
            dir.root.display()
        )
    })?;
    view.members.sort_by(|a, b| {
        (a.registration.role, &a.registration.name)
            .cmp(&(b.registration.role, &b.registration.name))
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&record, &view))?
        );
    } else {
        print!("{}", table(&record, &view));
    }
    Ok(())
}

fn capacity_and_use(load: &Load) -> (String, String) {
    match load {
        Load::Processor {
            cores,
            excache_quota,
            excache_used,
            processes,
        } => (
            format!("{cores} cores, ExCache {}", format_size(*excache_quota)),
            format!(
                "ExCache {}, {} processes",
                format_size(*excache_used),
                processes.len()
            ),
        ),
        Load::Memory {
            capacity,
            used,
            committed,
            copies,
            held,
            regions,
        } => {
            let percent = if *capacity == 0 {
                0.0
            } else {
                *used as f64 * 100.0 / *capacity as f64
            };
            let mut use_ = format!(
                "{} ({percent:.0}%), {} committed, {} processes",
                format_size(*used),
                format_size(*committed),
                held.len()
            );
            if !regions.is_empty() {
                use_.push_str(&format!(
                    ", {} regions of {} processes homed elsewhere",
                    regions.iter().map(|r| r.regions).sum::<u32>(),
                    regions.len()
                ));
            }
            for copy in copies {
                use_.push_str(&format!(
                    ", copying {:x} to {} ({} of {})",
                    copy.pid,
                    copy.to,
                    format_size(copy.copied_bytes),
                    format_size(copy.total_bytes)
                ));
            }
            (format_size(*capacity), use_)
        }
        Load::Storage {
            export,
            total,
            free,
        } => (
            format!("{export} ({})", format_size(*total)),
            format!("{} free", format_size(*free)),
        ),
    }
}

/// Recorded components the monitor does not know (yet): just after a
/// monitor restart, before they re-register, or dead before it started.
fn unknown_to_monitor<'a>(
    record: &'a ClusterRecord,
    view: &ClusterView,
) -> impl Iterator<Item = &'a ComponentRecord> {
    let known: Vec<String> = view
        .members
        .iter()
        .map(|m| m.registration.name.clone())
        .collect();
    record
        .components
        .iter()
        .filter(move |c| c.role != lego_proto::Role::Monitor && !known.contains(&c.name))
}

/// Health of a component the monitor does not know: dead if its process is
/// gone, else not registered yet.
fn unknown_health(c: &ComponentRecord) -> &'static str {
    if c.is_running() {
        "unregistered"
    } else {
        "dead"
    }
}

/// A member's health, and its drain if it is drained.
fn health(m: &MemberStatus) -> String {
    match &m.draining {
        None => m.health.to_string(),
        Some(d) if d.error.is_some() => format!("{}, drain failed", m.health),
        Some(d) if d.done => format!("{}, drained", m.health),
        Some(d) => format!("{}, draining: {} moved, {} left", m.health, d.moved, d.left),
    }
}

fn member_row(m: &MemberStatus) -> [String; 8] {
    let (capacity, used) = capacity_and_use(&m.load);
    [
        m.registration.name.clone(),
        m.registration.role.to_string(),
        m.registration.addr.to_string(),
        health(m),
        capacity,
        used,
        format!("{:.1}s ago", m.heartbeat_age_ms as f64 / 1000.0),
        m.registration.pid.to_string(),
    ]
}

fn table(record: &ClusterRecord, view: &ClusterView) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "ID",
        "ROLE",
        "ADDRESS",
        "HEALTH",
        "CAPACITY",
        "USE",
        "HEARTBEAT",
        "PID",
    ]
    .map(String::from)];
    let monitor_pid = record
        .component("monitor")
        .map_or("-".to_string(), |c| c.pid.to_string());
    rows.push([
        "monitor".into(),
        "monitor".into(),
        record.monitor.to_string(),
        "alive".into(),
        "-".into(),
        format!("{} members", view.members.len()),
        "-".into(),
        monitor_pid,
    ]);
    rows.extend(view.members.iter().map(member_row));
    rows.extend(unknown_to_monitor(record, view).map(|c| {
        [
            c.name.clone(),
            c.role.to_string(),
            c.addr.map_or("-".into(), |a| a.to_string()),
            unknown_health(c).into(),
            "-".into(),
            "-".into(),
            "-".into(),
            c.pid.to_string(),
        ]
    }));
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn load_json(load: &Load) -> serde_json::Value {
    match load {
        Load::Processor {
            cores,
            excache_quota,
            excache_used,
            processes,
        } => json!({
            "cores": cores,
            "excache_quota": excache_quota,
            "excache_used": excache_used,
            "processes": processes.iter().map(|p| json!({
                "pid": p.pid,
                "host_pid": p.host_pid,
                "command": p.command,
                "home_memory": p.home_memory,
                "backup_memory": p.backup_memory,
                "excache_quota": p.excache_quota,
            })).collect::<Vec<_>>(),
        }),
        Load::Memory {
            capacity,
            used,
            committed,
            copies,
            held,
            regions,
        } => json!({
            "capacity": capacity,
            "used": used,
            "committed": committed,
            "copies": copies.iter().map(|c| json!({
                "pid": c.pid,
                "to": c.to,
                "copied_bytes": c.copied_bytes,
                "total_bytes": c.total_bytes,
            })).collect::<Vec<_>>(),
            "held": held.iter().map(|h| json!({
                "pid": h.pid,
                "bytes": h.bytes,
                "primary": h.primary,
            })).collect::<Vec<_>>(),
            "regions": regions.iter().map(|r| json!({
                "pid": r.pid,
                "regions": r.regions,
                "bytes": r.bytes,
            })).collect::<Vec<_>>(),
        }),
        Load::Storage {
            export,
            total,
            free,
        } => json!({"export": export, "total": total, "free": free}),
    }
}

fn to_json(record: &ClusterRecord, view: &ClusterView) -> serde_json::Value {
    let mut components = vec![json!({
        "id": "monitor",
        "role": "monitor",
        "address": record.monitor.to_string(),
        "health": "alive",
        "pid": record.component("monitor").map(|c| c.pid),
    })];
    components.extend(view.members.iter().map(|m| {
        json!({
            "id": m.registration.name,
            "role": m.registration.role.as_str(),
            "address": m.registration.addr.to_string(),
            "health": m.health.to_string(),
            "pid": m.registration.pid,
            "heartbeat_age_ms": m.heartbeat_age_ms,
            "load": load_json(&m.load),
            "draining": m.draining.as_ref().map(|d| json!({
                "moved": d.moved,
                "left": d.left,
                "done": d.done,
                "error": d.error,
            })),
        })
    }));
    components.extend(unknown_to_monitor(record, view).map(|c| {
        json!({
            "id": c.name,
            "role": c.role.as_str(),
            "address": c.addr.map(|a| a.to_string()),
            "health": unknown_health(c),
            "pid": c.pid,
        })
    }));
    json!({
        "monitor": record.monitor.to_string(),
        "heartbeat_interval_ms": view.heartbeat_interval_ms,
        "dead_after_ms": view.dead_after_ms,
        "components": components,
    })
}
