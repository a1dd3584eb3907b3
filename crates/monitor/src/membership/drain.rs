//! Draining a memory manager (`lego drain`): every copy of a process it
//! holds moves to other managers while the programs run, decided here like
//! every failover.
//!
//! A backup copy moves by having its primary copy the process to a new
//! backup (the old one keeps getting every change until the new one holds
//! it all), then the old copy is dropped. A primary copy moves by the
//! planned form of a failover: once its backup holds a whole copy (made
//! first if it had none), the drained manager gives the process up under
//! the process's lock, so every change it answered is on the backup, and
//! the backup is promoted with a new backup of its own. The runtime, told
//! `NotHeld` by the drained manager, fails over and is told the new home.
//! Regions other homes spilled onto it move last, each home copying them
//! to new holders (see `regions`).

use super::{memory_client, most_free_memory, promote, region_holders, Membership};
use lego_proto::{
    DrainState, ErrorCode, HeldCopy, Load, MemoryHolder, MemoryHome, Message, ProcessId, Role,
};
use lego_transport::{Client, ClientConfig, ClusterSecret, Identity};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a drain may take before it gives up (a copy of the largest
/// address space takes seconds; a process that never stops copying would
/// hold a drain forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// How long moving a drained manager's regions may keep failing (a
/// process ending gives them up meanwhile) before the drain fails.
const REGION_PATIENCE: Duration = Duration::from_secs(10);

/// How long a new backup's whole copy may take (1 GiB copies in about
/// 1.5 s here).
const COPY_LIMIT: Duration = Duration::from_secs(300);

/// A call to memory manager `holder`, as the monitor: its answer, or why
/// there is none.
fn ask(
    secret: &ClusterSecret,
    holder: &MemoryHolder,
    message: &Message,
    timeout: Duration,
) -> Result<Message, String> {
    let reply = memory_client(secret, holder, timeout)
        .call(message, &[])
        .map_err(|e| format!("cannot reach {}: {e}", holder.name))?;
    match reply.message {
        Message::Error(e) => Err(format!("{}: {}", holder.name, e.message)),
        other => Ok(other),
    }
}

impl Membership {
    /// Starts draining memory manager `name` in the background.
    pub(super) fn start_drain(&self, name: &str) -> Message {
        let Some(secret) = self.secret.clone() else {
            return Message::error(ErrorCode::Unsupported, "this monitor does not move memory");
        };
        {
            let mut members = self.members();
            let Some(member) = members.get_mut(name) else {
                return Message::error(ErrorCode::BadRequest, format!("no component named {name}"));
            };
            if member.registration.role != Role::Memory {
                return Message::error(
                    ErrorCode::BadRequest,
                    format!(
                        "{name} is a {}, not a memory manager",
                        member.registration.role
                    ),
                );
            }
            if member.health != lego_proto::Health::Alive {
                return Message::error(
                    ErrorCode::BadRequest,
                    format!("{name} is dead: what it held fails over as it is needed"),
                );
            }
            if member
                .draining
                .as_ref()
                .is_some_and(|d| !d.done && d.error.is_none())
            {
                return Message::DrainStarted;
            }
            member.draining = Some(DrainState {
                moved: 0,
                left: 0,
                done: false,
                error: None,
            });
        }
        let Some(me) = self.me.get().and_then(|w| w.upgrade()) else {
            return Message::error(ErrorCode::Internal, "the monitor is stopping");
        };
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("drain {name}"))
            .spawn(move || {
                let result = me.drain(&secret, &name);
                me.drain_state(&name, |state| match result {
                    Ok(()) => state.done = true,
                    Err(why) => {
                        warn!("draining {name} stopped: {why}");
                        state.error = Some(why);
                    }
                });
            });
        match spawned {
            Ok(_) => Message::DrainStarted,
            Err(e) => Message::error(ErrorCode::Internal, format!("cannot start a drain: {e}")),
        }
    }

    /// Changes the drain state of `name`, if it is still being drained.
    fn drain_state(&self, name: &str, change: impl FnOnce(&mut DrainState)) {
        if let Some(state) = self
            .members()
            .get_mut(name)
            .and_then(|m| m.draining.as_mut())
        {
            change(state);
        }
    }

    /// Moves every copy off `name`, round after round (a fork makes new
    /// ones while it runs), until it holds none.
    fn drain(&self, secret: &ClusterSecret, name: &str) -> Result<(), String> {
        let started = Instant::now();
        let holder = self
            .holder(name)
            .ok_or_else(|| format!("{name} left the cluster"))?;
        info!("draining {name}");
        // Since when moving its regions off has failed.
        let mut region_trouble: Option<Instant> = None;
        loop {
            let copies = match ask(secret, &holder, &Message::Holdings, Duration::from_secs(5))? {
                Message::HoldingList(copies) => copies,
                other => return Err(format!("{name} answered Holdings with {}", other.kind())),
            };
            let held = self.held_regions(name);
            let regions: u32 = held.iter().map(|h| h.regions).sum();
            self.drain_state(name, |state| state.left = copies.len() as u32 + regions);
            if copies.is_empty() && !self.awaiting_memory(name) {
                if regions == 0 {
                    info!("{name} drained in {:?}", started.elapsed());
                    return Ok(());
                }
                // Regions spilled by processes homed elsewhere: their
                // homes move them (given up here in the background; the
                // next heartbeats tell).
                // Moved, its heartbeats stop reporting them within one or
                // two; a process that just ended gives them up anyway. No
                // progress for a while fails the drain.
                let why = match self.move_regions_off(secret, name, &held, true) {
                    Ok(moved) if moved > 0 => {
                        region_trouble = None;
                        self.drain_state(name, |state| state.moved += moved as u32);
                        None
                    }
                    Ok(_) => Some(format!(
                        "its heartbeats still report {regions} regions no home maps there"
                    )),
                    Err(why) => Some(why),
                };
                if let Some(why) = why {
                    let since = *region_trouble.get_or_insert_with(Instant::now);
                    if since.elapsed() > REGION_PATIENCE {
                        return Err(format!("{name} still holds regions: {why}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if started.elapsed() > DRAIN_LIMIT {
                return Err(format!(
                    "{} copies still on {name} after {DRAIN_LIMIT:?}",
                    copies.len()
                ));
            }
            if copies.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let mut moved = 0;
            for copy in &copies {
                match self.move_copy(secret, &holder, copy) {
                    Ok(true) => moved += 1,
                    // Busy (being copied to a new backup): next round.
                    Ok(false) => {}
                    Err(why) => warn!(
                        pid = format_args!("{:#x}", copy.pid),
                        "cannot move it off {name} yet: {why}"
                    ),
                }
            }
            self.drain_state(name, |state| state.moved += moved);
            if moved == 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Whether a process placed on `name` before its drain began may not
    /// have made its memory there yet: placed lately (its processor has
    /// not reported it), or reported with `name` as its home or backup
    /// and no decision of the monitor's moving it since.
    fn awaiting_memory(&self, name: &str) -> bool {
        let homes = self
            .homes()
            .keys()
            .copied()
            .collect::<std::collections::HashSet<_>>();
        let members = self.members();
        // Placement to listing: the launch, then a heartbeat; with room
        // for a loaded host.
        let grace = 5 * self.heartbeat_interval;
        if members
            .get(name)
            .and_then(|m| m.placed_at)
            .is_some_and(|at| at.elapsed() < grace)
        {
            return true;
        }
        members.values().any(|m| match &m.load {
            Load::Processor { processes, .. } => processes.iter().any(|p| {
                p.parent.is_none()
                    && !homes.contains(&p.pid)
                    && (p.home_memory == name || p.backup_memory.as_deref() == Some(name))
            }),
            _ => false,
        })
    }

    /// Where live member `name` serves.
    fn holder(&self, name: &str) -> Option<MemoryHolder> {
        self.members().get(name).map(|m| MemoryHolder {
            name: m.registration.name.clone(),
            addr: m.registration.addr,
        })
    }

    /// A memory manager to take a copy of process `pid`, other than those
    /// named and those holding regions of it.
    fn pick(&self, pid: ProcessId, except: &[&str]) -> Option<MemoryHolder> {
        let members = self.members();
        let holders = region_holders(&members, pid);
        let mut except = except.to_vec();
        except.extend(holders.iter().map(String::as_str));
        most_free_memory(&members, &except).map(|m| MemoryHolder {
            name: m.registration.name.clone(),
            addr: m.registration.addr,
        })
    }

    /// Moves one copy off `from`: `Ok(false)` if it cannot move yet.
    fn move_copy(
        &self,
        secret: &ClusterSecret,
        from: &MemoryHolder,
        copy: &HeldCopy,
    ) -> Result<bool, String> {
        let pid = copy.pid;
        if !copy.primary {
            return self.move_backup(secret, from, copy).map(|()| true);
        }
        if copy.copying {
            return Ok(false);
        }
        // The backup that takes over: the process's own, or one made now.
        let successor = match &copy.backup {
            Some(backup) => backup.clone(),
            None => {
                let target = self
                    .pick(pid, &[&from.name])
                    .ok_or("no other live memory manager can take it")?;
                let asked = Message::Rebackup {
                    pid,
                    epoch: copy.epoch,
                    backup: Some(target.clone()),
                };
                ask(secret, from, &asked, COPY_LIMIT)?;
                target
            }
        };
        // The copy is dropped only with its successor known to hold one.
        match ask(
            secret,
            &successor,
            &Message::Holds { pid },
            Duration::from_secs(2),
        )? {
            Message::Holding {
                held: true,
                primary: false,
                ..
            } => {}
            _ => return Err(format!("{} holds no backup copy of it", successor.name)),
        }
        let one_at_a_time = self.failing_over.lock().unwrap_or_else(|p| p.into_inner());
        let asked = Message::Relinquish {
            pid,
            epoch: copy.epoch,
        };
        ask(secret, from, &asked, Duration::from_secs(5))?;
        let backup = (self.replicas > 1)
            .then(|| self.pick(pid, &[&successor.name, &from.name]))
            .flatten();
        let home = MemoryHome {
            primary: successor,
            backup,
            epoch: copy.epoch + 1,
        };
        promote(secret, pid, &home)?;
        info!(
            pid = format_args!("{pid:#x}"),
            "moved off {}: served by {} now", from.name, home.primary.name
        );
        self.homes().insert(pid, home.clone());
        drop(one_at_a_time);
        self.tell_processors(pid, home);
        Ok(true)
    }

    /// Moves a backup copy off `from`: its primary copies the process to
    /// another manager (or goes on without a backup if none can take it),
    /// then the old copy is dropped.
    fn move_backup(
        &self,
        secret: &ClusterSecret,
        from: &MemoryHolder,
        copy: &HeldCopy,
    ) -> Result<(), String> {
        let pid = copy.pid;
        let Some((primary, epoch)) = self.primary_of(secret, pid, &from.name) else {
            // No primary: the process ended (or is failing over, which
            // finds this copy): it goes once the release arrives.
            return Err("no live memory manager serves it as its primary".into());
        };
        let target = self.pick(pid, &[&primary.name, &from.name]);
        let asked = Message::Rebackup {
            pid,
            epoch: epoch + 1,
            backup: target.clone(),
        };
        ask(secret, &primary, &asked, COPY_LIMIT)?;
        let one_at_a_time = self.failing_over.lock().unwrap_or_else(|p| p.into_inner());
        let asked = Message::Relinquish {
            pid,
            epoch: copy.epoch.max(epoch + 1),
        };
        ask(secret, from, &asked, Duration::from_secs(5))?;
        info!(
            pid = format_args!("{pid:#x}"),
            "backup moved off {} to {}",
            from.name,
            target.as_ref().map_or("nowhere", |t| t.name.as_str())
        );
        let home = MemoryHome {
            primary,
            backup: target,
            epoch: epoch + 1,
        };
        self.homes().insert(pid, home.clone());
        drop(one_at_a_time);
        self.tell_processors(pid, home);
        Ok(())
    }

    /// The live memory manager (other than `except`) serving process `pid`
    /// as its primary, and its epoch there.
    fn primary_of(
        &self,
        secret: &ClusterSecret,
        pid: ProcessId,
        except: &str,
    ) -> Option<(MemoryHolder, u64)> {
        let candidates: Vec<MemoryHolder> = self
            .members()
            .values()
            .filter(|m| {
                m.registration.role == Role::Memory
                    && m.health == lego_proto::Health::Alive
                    && m.registration.name != except
            })
            .map(|m| MemoryHolder {
                name: m.registration.name.clone(),
                addr: m.registration.addr,
            })
            .collect();
        candidates.into_iter().find_map(|holder| {
            match ask(
                secret,
                &holder,
                &Message::Holds { pid },
                Duration::from_secs(2),
            ) {
                Ok(Message::Holding {
                    held: true,
                    primary: true,
                    epoch,
                }) => Some((holder, epoch)),
                _ => None,
            }
        })
    }

    /// Tells the processors process `pid`'s new home (the one running it
    /// frees its memory there when it ends, and shows it in `lego ps`; a
    /// forked process may not be listed by it yet). Not under the
    /// failover lock: a slow processor delays no failover.
    fn tell_processors(&self, pid: ProcessId, home: MemoryHome) {
        let processors: Vec<std::net::SocketAddr> = self
            .members()
            .values()
            .filter(|m| {
                m.registration.role == Role::Processor && m.health == lego_proto::Health::Alive
            })
            .map(|m| m.registration.addr)
            .collect();
        let Some(secret) = self.secret.clone() else {
            return;
        };
        for addr in processors {
            let mut config =
                ClientConfig::new(secret.clone(), Identity::new(Role::Monitor, "monitor"));
            config.request_timeout = Duration::from_secs(2);
            let told = Message::HomeChanged {
                pid,
                home: home.clone(),
            };
            if let Err(e) = Client::new(addr, config).call(&told, &[]) {
                warn!(
                    pid = format_args!("{pid:#x}"),
                    "cannot tell the processor at {addr} where its memory moved: {e}"
                );
            }
        }
    }
}
