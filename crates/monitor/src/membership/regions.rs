//! Moving spilled regions off a memory manager: drained (`lego drain`), or
//! lost. The monitor knows which processes a manager holds regions of
//! (its heartbeats say) and where each process's home is; the home moves
//! them (`MoveRegions`), copying each from another of its copies while the
//! program runs, so a region that lost a copy gets a new one whether or
//! not the program touches it. Regions of a process no processor runs any
//! more (its home was lost as it ended, or between placing a region and
//! its backup learning of it) are given up on their holders.

use super::{memory_client, Membership};
use lego_proto::{Health, HeldRegions, Load, MemoryHolder, Message, ProcessId, Role};
use lego_transport::ClusterSecret;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a memory manager may report regions of a process no live
/// processor lists before it is told to give them up: a fork's child holds
/// its regions a moment before its processor lists it, and a restarted
/// monitor hears from every processor within a heartbeat or two.
const ORPHAN_GRACE: Duration = Duration::from_secs(15);

/// How often the reports are looked over for such regions.
const ORPHAN_SWEEP: Duration = Duration::from_secs(1);

/// Regions reported for processes no processor lists.
#[derive(Default)]
pub(super) struct Orphans {
    /// When the reports were last looked over.
    swept: Option<Instant>,
    /// Since when each manager has reported regions of each such process.
    since: std::collections::HashMap<(String, ProcessId), Instant>,
}

/// How long a home may take to move a process's regions (a 64 MiB region
/// copies in about 0.1 s here; a loaded host, many regions).
const MOVE_LIMIT: Duration = Duration::from_secs(120);

impl Membership {
    /// The regions of other homes' processes memory manager `name`
    /// reported holding last.
    pub(super) fn held_regions(&self, name: &str) -> Vec<HeldRegions> {
        match self.members().get(name).map(|m| &m.load) {
            Some(Load::Memory { regions, .. }) => regions.clone(),
            _ => Vec::new(),
        }
    }

    /// Where process `pid`'s home serves: as the last failover decided,
    /// else as its processor reports it.
    pub(super) fn home_of(&self, pid: ProcessId) -> Option<MemoryHolder> {
        if let Some(home) = self.homes().get(&pid) {
            return Some(home.primary.clone());
        }
        let members = self.members();
        let name = members.values().find_map(|m| match &m.load {
            Load::Processor { processes, .. } => processes
                .iter()
                .find(|p| p.pid == pid)
                .map(|p| p.home_memory.clone()),
            _ => None,
        })?;
        members.get(&name).map(|m| MemoryHolder {
            name: m.registration.name.clone(),
            addr: m.registration.addr,
        })
    }

    /// Has the home of every process in `held` move its regions off
    /// `from`: the number of regions moved, or why some could not be (the
    /// others are moved all the same). With `drained` (nothing new is
    /// placed on `from`), regions of a process whose home maps none there
    /// are stale, and `from` gives them up.
    pub(super) fn move_regions_off(
        &self,
        secret: &ClusterSecret,
        from: &str,
        held: &[HeldRegions],
        drained: bool,
    ) -> Result<usize, String> {
        let mut moved = 0;
        let mut failed = Vec::new();
        for h in held {
            match self.move_regions_of(secret, from, h.pid) {
                Ok(0) if drained => self.release_stale(secret, from, h.pid),
                Ok(n) => moved += n,
                Err(why) => failed.push(why),
            }
        }
        if failed.is_empty() {
            Ok(moved)
        } else {
            Err(failed.join("; "))
        }
    }

    /// Has process `pid`'s home move its regions off `from`: how many.
    fn move_regions_of(
        &self,
        secret: &ClusterSecret,
        from: &str,
        pid: ProcessId,
    ) -> Result<usize, String> {
        let home = self.home_of(pid).ok_or_else(|| {
            format!("process {pid:#x} has regions on {from}, and its home is not known")
        })?;
        if home.name == from {
            return Err(format!(
                "process {pid:#x} has its home on {from}, which holds its regions"
            ));
        }
        let ask = Message::MoveRegions {
            pid,
            from: from.to_string(),
        };
        let reply = memory_client(secret, &home, MOVE_LIMIT)
            .call(&ask, &[])
            .map_err(|e| format!("cannot reach {}: {e}", home.name))?;
        match reply.message {
            Message::RegionsMoved(regions) => Ok(regions.len()),
            Message::Error(e) => Err(format!("{}: {}", home.name, e.message)),
            other => Err(format!(
                "{} answered MoveRegions with {}",
                home.name,
                other.kind()
            )),
        }
    }

    /// Has live memory manager `name` give up the regions of process
    /// `pid` it holds, which the process's home maps elsewhere.
    fn release_stale(&self, secret: &ClusterSecret, name: &str, pid: ProcessId) {
        let holder = {
            let members = self.members();
            let Some(m) = members.get(name).filter(|m| m.health == Health::Alive) else {
                return;
            };
            MemoryHolder {
                name: m.registration.name.clone(),
                addr: m.registration.addr,
            }
        };
        let release = Message::ChangeRegions {
            pid,
            discard: Vec::new(),
            release: Vec::new(),
            all: true,
        };
        match memory_client(secret, &holder, Duration::from_secs(2)).call(&release, &[]) {
            Ok(_) => info!("{name} gave up stale regions of process {pid:#x}"),
            Err(e) => warn!("cannot have {name} give up stale regions of process {pid:#x}: {e}"),
        }
    }

    /// Memory manager `name` was lost holding the regions `held`: their
    /// homes give each a new copy in the background.
    pub(super) fn replace_lost_regions(&self, name: &str, held: Vec<HeldRegions>) {
        let (Some(secret), Some(me)) =
            (self.secret.clone(), self.me.get().and_then(|w| w.upgrade()))
        else {
            return;
        };
        if held.is_empty() {
            return;
        }
        let from = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("regions off {name}"))
            .spawn(
                move || match me.move_regions_off(&secret, &from, &held, false) {
                    Ok(moved) => info!("{moved} regions lost with {from} have new copies"),
                    // The runtime finds the loss too, and asks the home itself.
                    Err(why) => warn!("regions lost with {from}: {why}"),
                },
            );
        if let Err(e) = spawned {
            warn!("cannot start replacing the regions lost with {name}: {e}");
        }
    }

    /// Has every live memory manager that reported regions of a process no
    /// live processor has listed for [`ORPHAN_GRACE`] give them up (their
    /// home could not: it was lost as the process ended, or between placing
    /// a region and its backup learning of it). At most once per
    /// [`ORPHAN_SWEEP`].
    pub fn release_orphaned_regions(&self) {
        let Some(secret) = self.secret.clone() else {
            return;
        };
        let now = Instant::now();
        let mut due: Vec<(MemoryHolder, ProcessId)> = Vec::new();
        {
            let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            if orphans
                .swept
                .is_some_and(|at| now.duration_since(at) < ORPHAN_SWEEP)
            {
                return;
            }
            orphans.swept = Some(now);
            let members = self.members();
            let alive = |role: Role| {
                members
                    .values()
                    .filter(move |m| m.health == Health::Alive && m.registration.role == role)
            };
            let listed: HashSet<ProcessId> = alive(Role::Processor)
                .flat_map(|m| match &m.load {
                    Load::Processor { processes, .. } => {
                        processes.iter().map(|p| p.pid).collect::<Vec<_>>()
                    }
                    _ => Vec::new(),
                })
                .collect();
            let mut seen = HashSet::new();
            for m in alive(Role::Memory) {
                let Load::Memory { regions, .. } = &m.load else {
                    continue;
                };
                for pid in regions
                    .iter()
                    .map(|r| r.pid)
                    .filter(|p| !listed.contains(p))
                {
                    let key = (m.registration.name.clone(), pid);
                    let since = *orphans.since.entry(key.clone()).or_insert(now);
                    if now.duration_since(since) >= ORPHAN_GRACE {
                        due.push((
                            MemoryHolder {
                                name: m.registration.name.clone(),
                                addr: m.registration.addr,
                            },
                            pid,
                        ));
                    } else {
                        seen.insert(key);
                    }
                }
            }
            // Those told now start over, should they still report them.
            orphans.since.retain(|key, _| seen.contains(key));
        }
        if due.is_empty() {
            return;
        }
        // Off the failure detector's thread.
        let spawned = std::thread::Builder::new()
            .name("orphaned regions".into())
            .spawn(move || {
                for (holder, pid) in due {
                    warn!(
                        "{} holds regions of process {pid:#x}, which no processor runs: it \
                         gives them up",
                        holder.name
                    );
                    let release = Message::ChangeRegions {
                        pid,
                        discard: Vec::new(),
                        release: Vec::new(),
                        all: true,
                    };
                    let client = memory_client(&secret, &holder, Duration::from_secs(2));
                    if let Err(e) = client.call(&release, &[]) {
                        warn!(
                            "cannot have {} give up regions of process {pid:#x}: {e}",
                            holder.name
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start giving up orphaned regions: {e}");
        }
    }
}
