//! The monitor's membership table and its request handling.

use lego_proto::{
    ClusterView, ErrorCode, Frame, Health, Load, MemberStatus, Message, Registration, Role,
    MAX_NAME_LEN, MAX_TEXT_LEN,
};
use lego_transport::{ClusterSecret, Identity, PeerInfo, Reply, Server, ServerConfig, Service};
use std::collections::BTreeMap;
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
}

struct Member {
    registration: Registration,
    load: Load,
    last_heard: Instant,
    health: Health,
}

/// The membership table. All methods are cheap and never block on I/O.
pub struct Membership {
    heartbeat_interval: Duration,
    dead_after: Duration,
    members: Mutex<BTreeMap<String, Member>>,
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
        }
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
        members.insert(
            name,
            Member {
                load: registration.load.clone(),
                registration,
                last_heard: now,
                health: Health::Alive,
            },
        );
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
        if member.health == Health::Dead {
            info!("{name} is alive again");
        }
        member.health = Health::Alive;
        member.last_heard = Instant::now();
        member.load = load;
        Message::HeartbeatAck
    }

    /// Marks members silent for longer than the dead-after interval as dead,
    /// logging each transition once.
    pub fn detect_failures(&self) {
        let now = Instant::now();
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
            }
        }
    }

    /// Chooses where a new process runs: the named processor (or the live
    /// one running fewest processes) and, as its home, the live memory
    /// manager with the most uncommitted memory.
    fn place(&self, wanted: Option<&str>) -> Message {
        self.detect_failures();
        let members = self.members();
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
        let memory = members
            .values()
            .filter(alive)
            .filter(|m| m.registration.role == Role::Memory)
            .max_by_key(|m| match &m.load {
                Load::Memory {
                    capacity,
                    committed,
                    ..
                } => capacity.saturating_sub(*committed),
                _ => 0,
            });
        let Some(memory) = memory else {
            return Message::error(
                ErrorCode::BadRequest,
                "no live memory manager in the cluster",
            );
        };
        let storage = members
            .values()
            .filter(alive)
            .find(|m| m.registration.role == Role::Storage)
            .map(|m| m.registration.clone());
        Message::Placement {
            processor: processor.registration.clone(),
            memory: memory.registration.clone(),
            storage,
        }
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
                })
                .collect(),
        }
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
        let membership = Arc::new(Membership::new(
            config.heartbeat_interval,
            config.dead_after,
        ));
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
