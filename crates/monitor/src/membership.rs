//! The monitor's membership table and its request handling.

mod drain;
mod regions;

use lego_proto::{
    ClusterView, DrainState, ErrorCode, Frame, Health, Load, MemberStatus, MemoryHolder,
    MemoryHome, Message, ProcessId, Registration, Role, MAX_NAME_LEN, MAX_TEXT_LEN,
};
use lego_transport::{
    Backoff, Client, ClientConfig, ClusterSecret, Identity, PeerInfo, Reply, Server, ServerConfig,
    Service,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Components the monitor tracks at most; registrations beyond are refused.
pub const MAX_MEMBERS: usize = 4096;

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub listen: SocketAddr,
    pub secret: ClusterSecret,
    /// How often components must heartbeat (told to them at registration).
    pub heartbeat_interval: Duration,
    /// Silence after which a component is marked dead.
    pub dead_after: Duration,
    /// Copies of each process's memory: 2 gives each a backup on another
    /// memory manager (when two or more are live), 1 none.
    pub replicas: u32,
}

struct Member {
    registration: Registration,
    load: Load,
    last_heard: Instant,
    health: Health,
    /// Found down by a failover, which moved what it held elsewhere: if it
    /// speaks again (a partition healed), it is told to drop everything.
    fenced: bool,
    /// A memory manager being drained: nothing new is placed on it.
    draining: Option<DrainState>,
    /// When a process was last placed on it (its memory is made there
    /// once the process starts).
    placed_at: Option<Instant>,
    /// Placements on it its load may not show yet (younger than
    /// [`RECENT_HEARTBEATS`] heartbeat intervals): each counts as
    /// [`PLACEMENT_GUESS`] bytes committed, so a burst of launches spreads
    /// over the managers instead of all going to the one that had the
    /// most room at its last heartbeat.
    recent: Vec<Instant>,
}

/// What a process just placed is taken to commit until the manager's load
/// shows it: one region.
const PLACEMENT_GUESS: u64 = lego_proto::REGION_SIZE;

/// Heartbeat intervals after which a placement shows in the load (the
/// process started, and a heartbeat since reported its commit).
const RECENT_HEARTBEATS: u32 = 3;

/// How long a memory manager reported lost has to answer a ping before
/// the monitor takes it for dead.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The membership table. Membership calls are cheap and never block on
/// I/O; a failover talks to memory managers, outside the table's lock.
pub struct Membership {
    heartbeat_interval: Duration,
    dead_after: Duration,
    members: Mutex<BTreeMap<String, Member>>,
    /// Cluster secret, to talk to memory managers (failover); `None` in
    /// tests of membership alone.
    secret: Option<ClusterSecret>,
    replicas: u32,
    /// Where each process's memory lives, as the last failover decided
    /// (soft state: a process missing here is taken at its runtime's
    /// word, which its memory managers check).
    homes: Mutex<HashMap<ProcessId, MemoryHome>>,
    /// One failover at a time: each decision sees the ones before it.
    failing_over: Mutex<()>,
    /// The table itself, for the threads that drain memory managers.
    me: std::sync::OnceLock<std::sync::Weak<Membership>>,
    /// Regions a memory manager reports of a process no processor lists:
    /// since when, by manager and process (see `release_orphaned_regions`).
    orphans: Mutex<regions::Orphans>,
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Membership {
    pub fn new(heartbeat_interval: Duration, dead_after: Duration) -> Membership {
        Membership {
            heartbeat_interval,
            dead_after,
            members: Mutex::new(BTreeMap::new()),
            secret: None,
            replicas: 1,
            homes: Mutex::new(HashMap::new()),
            failing_over: Mutex::new(()),
            me: std::sync::OnceLock::new(),
            orphans: Mutex::new(regions::Orphans::default()),
        }
    }

    /// Lets the monitor place backups (`replicas` 2) and fail processes
    /// over, talking to memory managers with `secret`.
    pub fn with_replication(mut self, secret: ClusterSecret, replicas: u32) -> Membership {
        self.secret = Some(secret);
        self.replicas = replicas.clamp(1, 2);
        self
    }

    fn members(&self) -> MutexGuard<'_, BTreeMap<String, Member>> {
        // Each critical section leaves the map consistent; a panic inside
        // one cannot leave half an update, so poisoning is ignored.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, peer: &PeerInfo, registration: Registration) -> Message {
        if let Err(why) = check_registration(peer, &registration) {
            warn!(peer = %peer.addr, "refused registration: {why}");
            return Message::error(ErrorCode::BadRequest, why);
        }
        let now = Instant::now();
        let mut members = self.members();
        let name = registration.name.clone();
        match members.get(&name) {
            Some(old)
                if old.health == Health::Alive
                    && now.duration_since(old.last_heard) < self.dead_after
                    && (old.registration.addr != registration.addr
                        || old.registration.pid != registration.pid) =>
            {
                let why = format!(
                    "name {name} is held by a live component at {} (pid {})",
                    old.registration.addr, old.registration.pid
                );
                warn!(peer = %peer.addr, "refused registration: {why}");
                return Message::error(ErrorCode::NameTaken, why);
            }
            // The same process it fenced, speaking again by registering
            // (it lost contact in the partition) while it still holds
            // memory: what it held moved on, so it must drop it first. (The
            // fence stays until then: a `Fenced` answering a request the
            // component gave up on is never seen.)
            Some(old)
                if old.fenced
                    && old.registration.addr == registration.addr
                    && old.registration.pid == registration.pid
                    && !holds_nothing(&registration.load) =>
            {
                warn!("{name} registers again after its processes moved on: fencing it");
                return Message::Fenced;
            }
            Some(old) => info!(
                "{name} re-registered: {} at {} (pid {}), was {} at {} (pid {})",
                registration.role,
                registration.addr,
                registration.pid,
                old.health,
                old.registration.addr,
                old.registration.pid
            ),
            None if members.len() >= MAX_MEMBERS => {
                return Message::error(
                    ErrorCode::BadRequest,
                    format!("the monitor already tracks {MAX_MEMBERS} components"),
                )
            }
            None => info!(
                "{name} registered: {} at {} (pid {})",
                registration.role, registration.addr, registration.pid
            ),
        }
        // A restarted memory manager lost the regions its last incarnation
        // held (perhaps before it was found dead): they get new copies.
        let lost = members
            .get(&name)
            .filter(|old| {
                old.registration.addr != registration.addr
                    || old.registration.pid != registration.pid
            })
            .map(|old| match &old.load {
                Load::Memory { regions, .. } => regions.clone(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        // The same incarnation registering again (it lost contact for a
        // moment) keeps its drain; a restarted one joins empty.
        let (draining, placed_at, recent) = members
            .get(&name)
            .filter(|old| {
                old.registration.addr == registration.addr
                    && old.registration.pid == registration.pid
            })
            .map_or((None, None, Vec::new()), |old| {
                (old.draining.clone(), old.placed_at, old.recent.clone())
            });
        let rejoined = name.clone();
        members.insert(
            name,
            Member {
                load: registration.load.clone(),
                registration,
                last_heard: now,
                health: Health::Alive,
                fenced: false,
                draining,
                placed_at,
                recent,
            },
        );
        drop(members);
        self.replace_lost_regions(&rejoined, lost);
        Message::Registered {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
        }
    }

    fn heartbeat(&self, peer: &PeerInfo, name: &str, load: Load) -> Message {
        if peer.identity.name != name {
            return Message::error(
                ErrorCode::BadRequest,
                format!(
                    "heartbeat for {name} on a connection authenticated as {}",
                    peer.identity.name
                ),
            );
        }
        let mut members = self.members();
        let Some(member) = members.get_mut(name) else {
            return Message::error(
                ErrorCode::UnknownComponent,
                format!("{name} is not registered"),
            );
        };
        if load.role() != member.registration.role {
            return Message::error(
                ErrorCode::BadRequest,
                format!(
                    "{name} is a {} but reported {} load",
                    member.registration.role,
                    load.role()
                ),
            );
        }
        if member.fenced {
            // What it held was moved while it was cut off: it must not
            // serve any of it again (it drops it, and registers empty).
            warn!("{name} speaks again after its processes moved on: fencing it");
            member.health = Health::Dead;
            return Message::Fenced;
        }
        if member.health == Health::Dead {
            info!("{name} is alive again");
        }
        member.health = Health::Alive;
        member.last_heard = Instant::now();
        member.load = load;
        let shown = self.heartbeat_interval * RECENT_HEARTBEATS;
        member.recent.retain(|placed| placed.elapsed() < shown);
        Message::HeartbeatAck
    }

    /// Marks members silent for longer than the dead-after interval as dead,
    /// logging each transition once.
    pub fn detect_failures(&self) {
        let now = Instant::now();
        let mut lost = Vec::new();
        for (name, member) in self.members().iter_mut() {
            let silent = now.duration_since(member.last_heard);
            if member.health == Health::Alive && silent >= self.dead_after {
                member.health = Health::Dead;
                warn!(
                    "{name} marked dead: silent for {:.1?} ({} at {}, pid {})",
                    silent,
                    member.registration.role,
                    member.registration.addr,
                    member.registration.pid
                );
                if let Load::Memory { regions, .. } = &member.load {
                    lost.push((name.clone(), regions.clone()));
                }
            }
        }
        for (name, regions) in lost {
            self.replace_lost_regions(&name, regions);
        }
    }

    /// Chooses where a new process runs: the named processor (or the live
    /// one running fewest processes) and, as its home, the live memory
    /// manager with the most uncommitted memory.
    fn place(&self, wanted: Option<&str>) -> Message {
        self.detect_failures();
        // One guard for the choice and its booking: concurrent placements
        // each see the ones before.
        let mut members = self.members();
        let alive = |m: &&Member| m.health == Health::Alive;
        let processor = match wanted {
            Some(name) => match members.get(name) {
                Some(m) if m.registration.role == Role::Processor && m.health == Health::Alive => {
                    Some(m)
                }
                Some(m) if m.registration.role == Role::Processor => {
                    return Message::error(
                        ErrorCode::BadRequest,
                        format!("processor {name} is dead"),
                    )
                }
                _ => {
                    return Message::error(
                        ErrorCode::BadRequest,
                        format!("no processor named {name}"),
                    )
                }
            },
            None => members
                .values()
                .filter(alive)
                .filter(|m| m.registration.role == Role::Processor)
                .min_by_key(|m| match &m.load {
                    Load::Processor { processes, .. } => processes.len(),
                    _ => usize::MAX,
                }),
        };
        let Some(processor) = processor else {
            return Message::error(ErrorCode::BadRequest, "no live processor in the cluster");
        };
        let Some(memory) = most_free_memory(&members, &[]) else {
            return Message::error(
                ErrorCode::BadRequest,
                "no live memory manager in the cluster",
            );
        };
        let backup = (self.replicas > 1)
            .then(|| most_free_memory(&members, &[&memory.registration.name]))
            .flatten()
            .map(|m| Box::new(m.registration.clone()));
        let storage = members
            .values()
            .filter(alive)
            .find(|m| m.registration.role == Role::Storage)
            .map(|m| Box::new(m.registration.clone()));
        let (processor, memory) = (processor.registration.clone(), memory.registration.clone());
        let now = Instant::now();
        for name in std::iter::once(&memory.name).chain(backup.as_ref().map(|b| &b.name)) {
            if let Some(m) = members.get_mut(name) {
                m.placed_at = Some(now);
                m.recent.push(now);
            }
        }
        Message::Placement {
            processor,
            memory,
            backup,
            storage,
        }
    }

    /// Chooses where region `region` of process `pid` lives: the live
    /// memory manager, not named in `except` nor being drained, with the
    /// most room (less what its recent placements may take), if a whole
    /// region fits there.
    fn place_region(&self, pid: ProcessId, region: u64, except: &[String]) -> Message {
        self.detect_failures();
        let except: Vec<&str> = except.iter().map(String::as_str).collect();
        let mut members = self.members();
        // Room (less what recent placements may take) ranks the managers;
        // whether a region fits is the holder's word: a load a heartbeat
        // old may still show memory freed since (the home asks the next
        // one when a holder refuses).
        let Some(chosen) = most_free_memory(&members, &except)
            .filter(|m| capacity(m) >= lego_proto::REGION_SIZE)
            .map(|m| m.registration.name.clone())
        else {
            return Message::error(
                ErrorCode::BadRequest,
                format!(
                    "no live memory manager other than {} can hold region {region} of \
                     process {pid:#x}",
                    if except.is_empty() {
                        "none".to_string()
                    } else {
                        except.join(", ")
                    }
                ),
            );
        };
        let member = members.get_mut(&chosen).expect("chosen from the table");
        member.recent.push(Instant::now());
        Message::RegionPlaced(MemoryHolder {
            name: chosen,
            addr: member.registration.addr,
        })
    }

    /// A memory manager of process `pid`'s home is reported lost: if it is
    /// down, the backup becomes the primary, a new backup is chosen, and
    /// the primary is told (`Promote`). Several runtimes (and a primary
    /// whose backup went) may report the same loss: a report of an epoch
    /// already decided gets that decision.
    fn failover(&self, pid: ProcessId, home: MemoryHome, failed: &str) -> Message {
        let Some(secret) = self.secret.clone() else {
            return Message::error(ErrorCode::Unsupported, "this monitor does not fail over");
        };
        let _one_at_a_time = self.failing_over.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.homes().get(&pid).cloned();
        if let Some(known) = known.filter(|k| k.epoch > home.epoch) {
            return Message::MemoryMoved(known);
        }
        // What the managers hold is the truth, not the runtime's word nor
        // this monitor's cache: it may have restarted since, and a drain
        // may be moving the backup right now.
        let home = match self.rebuilt_home(&secret, pid, home, failed) {
            Ok(home) => home,
            Err(moved) => {
                self.homes().insert(pid, moved.clone());
                return Message::MemoryMoved(moved);
            }
        };
        let is_primary = home.primary.name == failed;
        if !is_primary && home.backup.as_ref().is_none_or(|b| b.name != failed) {
            return Message::error(
                ErrorCode::BadRequest,
                format!("{failed} holds no memory of process {pid:#x}"),
            );
        }
        let failed_holder = if is_primary {
            home.primary.clone()
        } else {
            home.backup.clone().expect("checked above")
        };
        // Found down by an earlier failover: not asked again (each ask of
        // a silent one waits for the probe's timeout).
        let fenced = self.members().get(failed).is_some_and(|m| m.fenced);
        let held = if fenced {
            None
        } else {
            holds(&secret, &failed_holder, pid)
        };
        match held {
            // It still serves the process as it should: the runtime's
            // trouble was its own (or passing).
            // Nothing moves: the runtime tries it again.
            Some(Some((epoch, primary))) if epoch >= home.epoch && primary == is_primary => {
                info!(
                    pid = format_args!("{pid:#x}"),
                    "{failed} was reported lost but answers, holding the process: nothing moves"
                );
                return Message::MemoryMoved(home);
            }
            // Restarted (or it dropped the process): alive, empty of it.
            Some(_) => info!(
                pid = format_args!("{pid:#x}"),
                "{failed} answers but no longer holds the process's memory"
            ),
            None => self.fence(failed),
        }
        let primary = if is_primary {
            match home.backup.clone() {
                Some(backup) => backup,
                None => {
                    return Message::error(
                        ErrorCode::Internal,
                        format!(
                            "process {pid:#x} had no replica: its memory was lost with {failed}"
                        ),
                    )
                }
            }
        } else {
            home.primary.clone()
        };
        let backup = (self.replicas > 1)
            .then(|| {
                let members = self.members();
                // Not one holding regions of it: a backup grows with the
                // home, into the room those regions reserved.
                let holders = region_holders(&members, pid);
                let mut except = vec![primary.name.as_str(), failed];
                except.extend(holders.iter().map(String::as_str));
                most_free_memory(&members, &except).map(|m| MemoryHolder {
                    name: m.registration.name.clone(),
                    addr: m.registration.addr,
                })
            })
            .flatten();
        let moved = MemoryHome {
            primary,
            backup,
            epoch: home.epoch + 1,
        };
        if let Err(why) = promote(&secret, pid, &moved) {
            return Message::error(ErrorCode::Internal, why);
        }
        warn!(
            pid = format_args!("{pid:#x}"),
            "{failed} lost: process served by {} now{}",
            moved.primary.name,
            moved
                .backup
                .as_ref()
                .map_or(" (no backup)".to_string(), |b| format!(
                    ", backup {}",
                    b.name
                ))
        );
        self.homes().insert(pid, moved.clone());
        Message::MemoryMoved(moved)
    }

    /// Checks a runtime's word on process `pid`'s home against what the
    /// live memory managers (other than `failed`) hold: `Err` with where it
    /// lives if one serves it as primary at a later epoch (the process
    /// moved on and the reporter did not learn it), else the home with
    /// its backup being the copy at the latest epoch (a drain may have
    /// moved it without the runtime knowing).
    fn rebuilt_home(
        &self,
        secret: &ClusterSecret,
        pid: ProcessId,
        home: MemoryHome,
        failed: &str,
    ) -> Result<MemoryHome, MemoryHome> {
        let others: Vec<MemoryHolder> = self
            .members()
            .values()
            .filter(|m| {
                m.registration.role == Role::Memory
                    && m.health == Health::Alive
                    && m.registration.name != failed
            })
            .map(|m| MemoryHolder {
                name: m.registration.name.clone(),
                addr: m.registration.addr,
            })
            .collect();
        let mut primary: Option<(MemoryHolder, u64)> = None;
        let mut backup: Option<(MemoryHolder, u64)> = None;
        for holder in others {
            let Some(Some((epoch, is_primary))) = holds(secret, &holder, pid) else {
                continue;
            };
            let best = if is_primary {
                &mut primary
            } else {
                &mut backup
            };
            if best.as_ref().is_none_or(|(_, e)| epoch > *e) {
                *best = Some((holder, epoch));
            }
        }
        if let Some((holder, epoch)) = primary.filter(|(_, e)| *e > home.epoch) {
            return Err(MemoryHome {
                primary: holder,
                backup: backup.filter(|(_, e)| *e >= epoch).map(|(b, _)| b),
                epoch,
            });
        }
        match backup {
            Some((holder, epoch)) if epoch >= home.epoch && home.primary.name == failed => {
                if home.backup.as_ref() != Some(&holder) {
                    info!(
                        pid = format_args!("{pid:#x}"),
                        "its backup is on {} (epoch {epoch}), not where its runtime said",
                        holder.name
                    );
                }
                Ok(MemoryHome {
                    backup: Some(holder),
                    epoch: epoch.max(home.epoch),
                    ..home
                })
            }
            _ => Ok(home),
        }
    }

    fn homes(&self) -> MutexGuard<'_, HashMap<ProcessId, MemoryHome>> {
        self.homes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes member `name` for dead, and fences it should it speak again.
    fn fence(&self, name: &str) {
        let mut lost = Vec::new();
        if let Some(member) = self.members().get_mut(name) {
            if member.health == Health::Alive {
                warn!("{name} marked dead: it does not answer");
                if let Load::Memory { regions, .. } = &member.load {
                    lost = regions.clone();
                }
            }
            member.health = Health::Dead;
            member.fenced = true;
        }
        self.replace_lost_regions(name, lost);
    }

    pub fn view(&self) -> ClusterView {
        self.detect_failures();
        let now = Instant::now();
        ClusterView {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            dead_after_ms: self.dead_after.as_millis() as u64,
            members: self
                .members()
                .values()
                .map(|m| MemberStatus {
                    registration: m.registration.clone(),
                    health: m.health,
                    load: m.load.clone(),
                    heartbeat_age_ms: now.duration_since(m.last_heard).as_millis() as u64,
                    draining: m.draining.clone(),
                })
                .collect(),
        }
    }
}

/// Whether a component's load shows it holds no process memory.
fn holds_nothing(load: &Load) -> bool {
    match load {
        Load::Memory {
            used,
            committed,
            copies,
            held,
            regions,
            ..
        } => {
            *used == 0
                && *committed == 0
                && copies.is_empty()
                && held.is_empty()
                && regions.is_empty()
        }
        _ => true,
    }
}

/// The live memory manager with the most uncommitted memory (less what
/// its recent placements may commit), other than those named in `except`
/// and those being drained.
fn most_free_memory<'a>(
    members: &'a BTreeMap<String, Member>,
    except: &[&str],
) -> Option<&'a Member> {
    members
        .values()
        .filter(|m| m.health == Health::Alive && m.registration.role == Role::Memory)
        .filter(|m| !except.contains(&m.registration.name.as_str()) && m.draining.is_none())
        .max_by_key(|m| room_of(m))
}

/// A memory manager's uncommitted memory, less what its recent
/// placements may commit.
fn room_of(m: &Member) -> u64 {
    uncommitted(m).saturating_sub(PLACEMENT_GUESS.saturating_mul(m.recent.len() as u64))
}

/// The live memory managers whose loads report regions of process `pid`.
fn region_holders(members: &BTreeMap<String, Member>, pid: ProcessId) -> Vec<String> {
    members
        .values()
        .filter(|m| m.health == Health::Alive)
        .filter(|m| match &m.load {
            Load::Memory { regions, .. } => regions.iter().any(|r| r.pid == pid),
            _ => false,
        })
        .map(|m| m.registration.name.clone())
        .collect()
}

/// A memory manager's capacity, as its last load reported.
fn capacity(m: &Member) -> u64 {
    match &m.load {
        Load::Memory { capacity, .. } => *capacity,
        _ => 0,
    }
}

/// A memory manager's uncommitted memory, as its last load reported.
fn uncommitted(m: &Member) -> u64 {
    match &m.load {
        Load::Memory {
            capacity,
            committed,
            ..
        } => capacity.saturating_sub(*committed),
        _ => 0,
    }
}

/// A client of memory manager `holder`, as the monitor.
fn memory_client(secret: &ClusterSecret, holder: &MemoryHolder, timeout: Duration) -> Client {
    let mut config = ClientConfig::new(secret.clone(), Identity::new(Role::Monitor, "monitor"));
    config.connect_timeout = timeout;
    config.request_timeout = timeout;
    config.backoff = Backoff {
        give_up_after: Duration::ZERO,
        ..Backoff::default()
    };
    Client::new(holder.addr, config)
}

/// What `holder` holds of process `pid`: `None` if it does not answer
/// within [`PROBE_TIMEOUT`], `Some(None)` if it holds nothing of it, else
/// its copy's epoch and whether it is the primary.
#[allow(clippy::option_option)]
fn holds(
    secret: &ClusterSecret,
    holder: &MemoryHolder,
    pid: ProcessId,
) -> Option<Option<(u64, bool)>> {
    let reply = memory_client(secret, holder, PROBE_TIMEOUT)
        .call(&Message::Holds { pid }, &[])
        .ok()?;
    match reply.message {
        Message::Holding {
            held: true,
            epoch,
            primary,
        } => Some(Some((epoch, primary))),
        _ => Some(None),
    }
}

/// Tells `home.primary` it serves process `pid` now, with `home.backup`.
fn promote(secret: &ClusterSecret, pid: ProcessId, home: &MemoryHome) -> Result<(), String> {
    let reply = memory_client(secret, &home.primary, Duration::from_secs(5))
        .call(
            &Message::Promote {
                pid,
                epoch: home.epoch,
                backup: home.backup.clone(),
            },
            &[],
        )
        .map_err(|e| format!("cannot reach {}: {e}", home.primary.name))?;
    match reply.message {
        Message::Promoted => Ok(()),
        Message::Error(e) => Err(format!(
            "{} cannot take over process {pid:#x}: {}",
            home.primary.name, e.message
        )),
        other => Err(format!(
            "{} answered Promote with {}",
            home.primary.name,
            other.kind()
        )),
    }
}

fn check_registration(peer: &PeerInfo, r: &Registration) -> Result<(), String> {
    if !is_valid_name(&r.name) {
        return Err(format!(
            "component name {:?} must be 1-{MAX_NAME_LEN} characters of [A-Za-z0-9._-]",
            r.name
        ));
    }
    if peer.identity.name != r.name || peer.identity.role != r.role {
        return Err(format!(
            "registration of {} {} on a connection authenticated as {} {}",
            r.role, r.name, peer.identity.role, peer.identity.name
        ));
    }
    if matches!(r.role, Role::Monitor | Role::Client) {
        return Err(format!("a {} does not register", r.role));
    }
    if r.load.role() != r.role {
        return Err(format!(
            "{} {} reported {} load",
            r.role,
            r.name,
            r.load.role()
        ));
    }
    if let Load::Storage { export, .. } = &r.load {
        if export.len() > MAX_TEXT_LEN {
            return Err(format!("export path is longer than {MAX_TEXT_LEN} bytes"));
        }
    }
    Ok(())
}

impl Service for Membership {
    fn handle(&self, peer: &PeerInfo, request: Frame) -> Reply {
        if peer.identity.role == Role::Process {
            // A runtime holds one process's key, not a component's: it may
            // neither register nor see or place the cluster.
            return Message::error(
                ErrorCode::Denied,
                format!("the monitor serves no runtime ({})", peer.identity.name),
            )
            .into();
        }
        match request.message {
            Message::Register(registration) => self.register(peer, registration),
            Message::Heartbeat { name, load } => self.heartbeat(peer, &name, load),
            Message::GetClusterView => Message::ClusterView(self.view()),
            Message::PlaceProcess { processor } => self.place(processor.as_deref()),
            Message::Failover {
                pid, home, failed, ..
            } if matches!(peer.identity.role, Role::Processor | Role::Memory) => {
                self.failover(pid, home, &failed)
            }
            Message::PlaceRegion {
                pid,
                region,
                except,
            } if peer.identity.role == Role::Memory => self.place_region(pid, region, &except),
            Message::Drain { name } => self.start_drain(&name),
            other => Message::error(
                ErrorCode::Unsupported,
                format!("the monitor does not serve {}", other.kind()),
            ),
        }
        .into()
    }
}

/// A running monitor: the membership table behind a server, plus the
/// failure detector's thread.
pub struct MonitorServer {
    server: Server,
    membership: Arc<Membership>,
}

impl MonitorServer {
    pub fn start(config: MonitorConfig) -> std::io::Result<MonitorServer> {
        let membership = Arc::new(
            Membership::new(config.heartbeat_interval, config.dead_after)
                .with_replication(config.secret.clone(), config.replicas),
        );
        let _ = membership.me.set(Arc::downgrade(&membership));
        let server = Server::bind(
            config.listen,
            ServerConfig::new(config.secret, Identity::new(Role::Monitor, "monitor")),
            Arc::clone(&membership) as Arc<dyn Service>,
        )?;
        // Check often enough that detection lags the dead-after interval by
        // at most a tenth of a heartbeat interval.
        let tick = (config.heartbeat_interval / 10)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        let detector = Arc::downgrade(&membership);
        thread::Builder::new()
            .name("failure detector".into())
            .spawn(move || {
                while let Some(membership) = detector.upgrade() {
                    membership.detect_failures();
                    membership.release_orphaned_regions();
                    drop(membership);
                    thread::sleep(tick);
                }
            })?;
        info!(
            "monitor listening on {} (heartbeat every {:?}, dead after {:?})",
            server.local_addr(),
            config.heartbeat_interval,
            config.dead_after
        );
        Ok(MonitorServer { server, membership })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(role: Role, name: &str) -> PeerInfo {
        PeerInfo {
            addr: "127.0.0.1:9".parse().unwrap(),
            identity: Identity::new(role, name),
        }
    }

    fn registration(name: &str, port: u16, pid: u32) -> Registration {
        Registration {
            name: name.into(),
            role: Role::Memory,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
            load: Load::Memory {
                capacity: 1 << 30,
                used: 0,
                committed: 0,
                copies: Vec::new(),
                held: Vec::new(),
                regions: Vec::new(),
            },
            unix_socket: None,
        }
    }

    fn ask(m: &Membership, peer: &PeerInfo, message: Message) -> Message {
        m.handle(peer, Frame::new(1, message)).message
    }

    fn code(reply: Message) -> Option<ErrorCode> {
        match reply {
            Message::Error(e) => Some(e.code),
            _ => None,
        }
    }

    /// Registers memory managers `memory-0` .. `memory-{n-1}`, 1 GiB each.
    fn register_memories(m: &Membership, n: u16) {
        for i in 0..n {
            let name = format!("memory-{i}");
            let r = registration(&name, 1000 + i, 1 + u32::from(i));
            ask(m, &peer(Role::Memory, &name), Message::Register(r));
        }
    }

    /// A heartbeat of memory manager `name` reporting `committed` bytes
    /// of its 1 GiB committed.
    fn report_committed(m: &Membership, name: &str, committed: u64) {
        let beat = Message::Heartbeat {
            name: name.into(),
            load: Load::Memory {
                capacity: 1 << 30,
                used: 0,
                committed,
                copies: Vec::new(),
                held: Vec::new(),
                regions: Vec::new(),
            },
        };
        assert_eq!(
            ask(m, &peer(Role::Memory, name), beat),
            Message::HeartbeatAck
        );
    }

    /// A burst of launches, placed before any heartbeat shows what the
    /// first ones commit, spreads over the memory managers; once the
    /// loads are reported, the one with most room is chosen again.
    #[test]
    fn a_burst_of_launches_spreads_over_the_memory_managers() {
        let m = Membership::new(Duration::from_secs(1), Duration::from_secs(60));
        register_memories(&m, 3);
        let mut cpu = registration("processor-0", 2000, 9);
        cpu.role = Role::Processor;
        cpu.load = Load::Processor {
            cores: 2,
            excache_quota: 0,
            excache_used: 0,
            processes: Vec::new(),
        };
        let cpu_peer = peer(Role::Processor, "processor-0");
        ask(&m, &cpu_peer, Message::Register(cpu));
        let mut homes = BTreeMap::<String, usize>::new();
        for _ in 0..6 {
            match ask(&m, &cpu_peer, Message::PlaceProcess { processor: None }) {
                Message::Placement { memory, .. } => *homes.entry(memory.name).or_default() += 1,
                other => panic!("no placement: {other:?}"),
            }
        }
        assert_eq!(
            homes.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2],
            "{homes:?}"
        );
        // memory-1 reports far more room than the others: it is chosen.
        for (name, committed) in [
            ("memory-0", 1 << 29),
            ("memory-1", 0),
            ("memory-2", 1 << 29),
        ] {
            report_committed(&m, name, committed);
        }
        match ask(&m, &cpu_peer, Message::PlaceProcess { processor: None }) {
            Message::Placement { memory, .. } => assert_eq!(memory.name, "memory-1"),
            other => panic!("no placement: {other:?}"),
        }
    }

    /// A home asks where a region of its process goes: never to the
    /// managers it names (itself, its backup), spread over the others,
    /// and refused, naming them, when no other has room for a region.
    #[test]
    fn regions_are_placed_off_the_home_by_room() {
        let m = Membership::new(Duration::from_secs(1), Duration::from_secs(60));
        register_memories(&m, 3);
        let home = peer(Role::Memory, "memory-0");
        let place = |except: &[&str]| {
            ask(
                &m,
                &home,
                Message::PlaceRegion {
                    pid: 7,
                    region: 3,
                    except: except.iter().map(|e| e.to_string()).collect(),
                },
            )
        };
        let mut chosen = Vec::new();
        for _ in 0..4 {
            match place(&["memory-0"]) {
                Message::RegionPlaced(holder) => chosen.push(holder.name),
                other => panic!("not placed: {other:?}"),
            }
        }
        chosen.sort();
        assert_eq!(chosen, ["memory-1", "memory-1", "memory-2", "memory-2"]);
        // memory-2 reports itself full: memory-1 comes first, and memory-2
        // is still asked when it is the only one left (its load may be a
        // heartbeat old; it refuses a region it has no room for).
        report_committed(&m, "memory-2", 1 << 30);
        assert!(matches!(place(&["memory-0"]), Message::RegionPlaced(h) if h.name == "memory-1"));
        assert!(matches!(
            place(&["memory-0", "memory-1"]),
            Message::RegionPlaced(h) if h.name == "memory-2"
        ));
        match place(&["memory-0", "memory-1", "memory-2"]) {
            Message::Error(e) => assert!(
                e.message
                    .contains("other than memory-0, memory-1, memory-2"),
                "{}",
                e.message
            ),
            other => panic!("placed on an excluded manager: {other:?}"),
        }
        // Only memory managers place regions.
        let from_processor = ask(
            &m,
            &peer(Role::Processor, "processor-0"),
            Message::PlaceRegion {
                pid: 7,
                region: 3,
                except: Vec::new(),
            },
        );
        assert_eq!(code(from_processor), Some(ErrorCode::Unsupported));
    }

    #[test]
    fn a_live_name_cannot_be_taken_by_another_process() {
        let m = Membership::new(Duration::from_secs(1), Duration::from_secs(60));
        let p = peer(Role::Memory, "memory-0");
        assert!(matches!(
            ask(&m, &p, Message::Register(registration("memory-0", 1000, 1))),
            Message::Registered {
                heartbeat_interval_ms: 1000
            }
        ));
        // The same process registering again (after a lost reply) is fine.
        assert!(matches!(
            ask(&m, &p, Message::Register(registration("memory-0", 1000, 1))),
            Message::Registered { .. }
        ));
        assert_eq!(
            code(ask(
                &m,
                &p,
                Message::Register(registration("memory-0", 1001, 2))
            )),
            Some(ErrorCode::NameTaken)
        );
    }

    #[test]
    fn a_dead_name_can_be_taken_over_by_its_restarted_component() {
        let m = Membership::new(Duration::from_millis(10), Duration::from_millis(1));
        let p = peer(Role::Memory, "memory-0");
        ask(&m, &p, Message::Register(registration("memory-0", 1000, 1)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.view().members[0].health != Health::Dead {
            assert!(Instant::now() < deadline, "never marked dead");
            thread::sleep(Duration::from_millis(1));
        }
        assert!(matches!(
            ask(&m, &p, Message::Register(registration("memory-0", 1001, 2))),
            Message::Registered { .. }
        ));
        let view = m.view();
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.members[0].registration.pid, 2);
    }

    #[test]
    fn heartbeats_must_come_from_the_component_they_name() {
        let m = Membership::new(Duration::from_secs(1), Duration::from_secs(60));
        ask(
            &m,
            &peer(Role::Memory, "memory-0"),
            Message::Register(registration("memory-0", 1000, 1)),
        );
        let load = Load::Memory {
            capacity: 1 << 30,
            used: 4096,
            committed: 8192,
            copies: Vec::new(),
            held: Vec::new(),
            regions: Vec::new(),
        };
        let spoof = Message::Heartbeat {
            name: "memory-0".into(),
            load: load.clone(),
        };
        assert_eq!(
            code(ask(&m, &peer(Role::Memory, "memory-1"), spoof.clone())),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            ask(&m, &peer(Role::Memory, "memory-0"), spoof),
            Message::HeartbeatAck
        );
        assert_eq!(m.view().members[0].load, load);
        let unknown = Message::Heartbeat {
            name: "memory-9".into(),
            load,
        };
        assert_eq!(
            code(ask(&m, &peer(Role::Memory, "memory-9"), unknown)),
            Some(ErrorCode::UnknownComponent)
        );
    }

    #[test]
    fn registrations_are_checked() {
        let m = Membership::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut bad_name = registration("memory 0!", 1000, 1);
        assert_eq!(
            code(ask(
                &m,
                &peer(Role::Memory, "memory 0!"),
                Message::Register(bad_name.clone())
            )),
            Some(ErrorCode::BadRequest)
        );
        bad_name.name = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            code(ask(
                &m,
                &peer(Role::Memory, &bad_name.name),
                Message::Register(bad_name)
            )),
            Some(ErrorCode::BadRequest)
        );
        let mut wrong_load = registration("memory-0", 1000, 1);
        wrong_load.load = Load::Processor {
            cores: 1,
            excache_quota: 0,
            excache_used: 0,
            processes: Vec::new(),
        };
        assert_eq!(
            code(ask(
                &m,
                &peer(Role::Memory, "memory-0"),
                Message::Register(wrong_load)
            )),
            Some(ErrorCode::BadRequest)
        );
        assert!(m.view().members.is_empty());
    }
}
