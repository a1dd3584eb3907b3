//! Moving spilled regions off a memory manager: drained (`lego drain`), or
//! lost. The monitor knows which processes a manager holds regions of
//! (its heartbeats say) and where each process's home is; the home moves
//! them (`MoveRegions`), copying each from another of its copies while the
//! program runs, so a region that lost a copy gets a new one whether or
//! not the program touches it.

use super::{memory_client, Membership};
use lego_proto::{HeldRegions, Load, MemoryHolder, Message, ProcessId};
use lego_transport::ClusterSecret;
use std::time::Duration;
use tracing::{info, warn};

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
    /// `from`: the number of regions moved, or why one could not be.
    pub(super) fn move_regions_off(
        &self,
        secret: &ClusterSecret,
        from: &str,
        held: &[HeldRegions],
    ) -> Result<usize, String> {
        let mut moved = 0;
        for h in held {
            let pid = h.pid;
            let home = self.home_of(pid).ok_or_else(|| {
                format!("process {pid:#x} has regions on {from}, and its home is not known")
            })?;
            let ask = Message::MoveRegions {
                pid,
                from: from.to_string(),
            };
            let reply = memory_client(secret, &home, MOVE_LIMIT)
                .call(&ask, &[])
                .map_err(|e| format!("cannot reach {}: {e}", home.name))?;
            match reply.message {
                Message::RegionsMoved(regions) => moved += regions.len(),
                Message::Error(e) => return Err(format!("{}: {}", home.name, e.message)),
                other => {
                    return Err(format!(
                        "{} answered MoveRegions with {}",
                        home.name,
                        other.kind()
                    ))
                }
            }
        }
        Ok(moved)
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
            .spawn(move || match me.move_regions_off(&secret, &from, &held) {
                Ok(moved) => info!("{moved} regions lost with {from} have new copies"),
                // The runtime finds the loss too, and asks the home itself.
                Err(why) => warn!("regions lost with {from}: {why}"),
            });
        if let Err(e) = spawned {
            warn!("cannot start replacing the regions lost with {name}: {e}");
        }
    }
}
