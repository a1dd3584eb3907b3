//! The processor manager (LegoOS's pComponent).
//!
//! It starts one runtime (the `lego-runtime` crate, in a process of its
//! own; their contract is `lego_proto::runtime`) per application process,
//! handing it the program's stdio and the address of its home memory
//! manager ([`launch`], [`spawn`]); reports the processes it runs to the
//! monitor in its heartbeat; and tells the memory manager to free a
//! process's memory when its runtime ends, however it ended.
//!
//! Must not: hold application memory (that is the memory managers'), or
//! outlive its runtimes (they die with it).

pub mod guest;
mod hostids;
mod launch;
mod relay;
mod spawn;

use lego_monitor::{join_cluster, ComponentConfig, JoinedComponent};
use lego_proto::live::LiveStats;
use lego_proto::{
    ErrorCode, Frame, Load, MemoryHome, Message, ProcessId, ProcessInfo, Role, Voucher,
};
use lego_transport::{Client, ClientConfig, ClusterSecret, Identity, PeerInfo, Reply, Service};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::warn;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub component: ComponentConfig,
    /// ExCache quota a process gets unless `lego run` asks otherwise.
    pub excache: u64,
    /// Where to serve the launch socket.
    pub launch_socket: PathBuf,
    /// Users other than the processor's own who may launch programs
    /// (through the guests' launch socket, `guest_socket`).
    pub guests: Guests,
}

/// Who besides the cluster's owner may run programs: these uids, and
/// members of these groups (primary or supplementary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guests {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Guests {
    pub fn allow(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        self.uids.contains(&uid) || self.gids.iter().any(|g| *g == gid || groups.contains(g))
    }

    pub fn is_empty(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }
}

/// The guests' launch socket beside the launch socket at `launch`
/// (`NAME.sock` → `NAME.guests.sock`): open to every local user, served
/// by the kernel's word of who connected (SO_PEERCRED) instead of the
/// cluster secret.
pub fn guest_socket(launch: &std::path::Path) -> PathBuf {
    launch.with_extension("guests.sock")
}

/// Asks the memory manager at `memory`, through `client`, to free `pid`'s
/// memory; a refusal or a lost manager is logged.
fn release_on(client: &Client, memory: SocketAddr, pid: ProcessId) {
    match client.call(&Message::ReleaseProcess { pid }, &[]) {
        Ok(reply) if reply.message == Message::Released => {}
        Ok(reply) => warn!(
            "memory manager at {memory} answered ReleaseProcess of {pid:x} with {}",
            reply.message.kind()
        ),
        Err(e) => warn!("cannot release process {pid:x} on {memory}: {e}"),
    }
}

/// How many ended processes' trees are remembered.
const ENDED_TREES: usize = 4096;

/// Process trees by pid: of the processes that run, and of the last that
/// ended.
#[derive(Default)]
struct Trees {
    live: HashMap<ProcessId, ProcessId>,
    ended: HashMap<ProcessId, ProcessId>,
    ended_order: std::collections::VecDeque<ProcessId>,
}

pub struct Processor {
    name: String,
    secret: ClusterSecret,
    cores: u32,
    excache_quota: u64,
    processes: Mutex<HashMap<ProcessId, (ProcessInfo, Arc<LiveStats>)>>,
    /// The abstract Unix socket name runtimes reach this processor at (a
    /// forked process announcing itself, a process renewing its voucher):
    /// abstract, so no file permission stands between a program that
    /// dropped root and its processor; only who authenticates is served.
    runtime_socket: Vec<u8>,
    memory_clients: Mutex<HashMap<SocketAddr, Arc<Client>>>,
    /// The tree of each process this processor runs (its first process's
    /// pid), and of the last processes that ended (a child may announce
    /// itself after its parent ended): a runtime authenticated for one
    /// tree may announce only children of that tree's processes.
    trees: Mutex<Trees>,
    /// Whether programs on storage run as unprivileged host identities
    /// (a processor run by root can map them; see `hostids`).
    isolates: bool,
    /// When the last voucher was issued (ms since the Unix epoch).
    last_issued: AtomicU64,
    /// Who else may launch programs, and where to place theirs.
    guests: Guests,
    monitor: SocketAddr,
    /// Where the memory of processes that failed over lives now.
    homes: Mutex<HashMap<ProcessId, MemoryHome>>,
    /// Homes the monitor moved of processes not listed here (the last
    /// `UNLISTED_HOMES`), for a child that announces itself later.
    unlisted_homes: Mutex<Unlisted>,
    /// Itself, for the connections its TCP server hands over.
    me: std::sync::Weak<Processor>,
    /// The control sockets of the runtimes of the trees' first processes.
    controls: Mutex<HashMap<ProcessId, Arc<Mutex<Control>>>>,
}

/// A runtime's control socket, and what was read of it.
struct Control {
    stream: UnixStream,
    reader: lego_transport::FrameReader<UnixStream>,
}

impl Control {
    /// Asks `ask` and reads the answer, within [`FREEZE_TIMEOUT`].
    fn exchange(&mut self, ask: &Message) -> Result<Frame, String> {
        lego_transport::write_frame(&mut self.stream, 0, ask, &[]).map_err(|e| e.to_string())?;
        self.reader.read_frame().map_err(|e| e.to_string())
    }
}

/// How long a runtime gets to freeze its process, and to thaw it.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How many homes of processes not listed are remembered.
const UNLISTED_HOMES: usize = 1024;

/// Homes of processes not listed, oldest forgotten first.
#[derive(Default)]
struct Unlisted {
    homes: HashMap<ProcessId, MemoryHome>,
    order: std::collections::VecDeque<ProcessId>,
}

impl Unlisted {
    fn insert(&mut self, pid: ProcessId, home: MemoryHome) {
        if self.homes.insert(pid, home).is_none() {
            self.order.push_back(pid);
        }
        while self.order.len() > UNLISTED_HOMES {
            if let Some(old) = self.order.pop_front() {
                self.homes.remove(&old);
            }
        }
    }

    fn remove(&mut self, pid: &ProcessId) -> Option<MemoryHome> {
        let home = self.homes.remove(pid)?;
        self.order.retain(|p| p != pid);
        Some(home)
    }
}

impl Processor {
    fn new_pid(&self) -> ProcessId {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // Still unique enough for one processor: time and a counter.
            bytes = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64))
            .to_ne_bytes();
        }
        u64::from_ne_bytes(bytes) >> 1
    }

    fn track(&self, mut info: ProcessInfo, live: Arc<LiveStats>) {
        // Moved before it was listed here (a drain, just after its fork).
        let unlisted = self
            .unlisted_homes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info.pid);
        // Else a child lives beside its parent as the parent's home is
        // now: its runtime's word names the backup the parent started
        // with, which a drain may have moved since.
        let home = unlisted.or_else(|| {
            let homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
            homes
                .get(&info.parent?)
                .filter(|parent| parent.primary.name == info.home_memory)
                .cloned()
        });
        if let Some(home) = home {
            info.home_memory = home.primary.name.clone();
            info.backup_memory = home.backup.as_ref().map(|b| b.name.clone());
            self.homes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(info.pid, home);
        }
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.pid, (info, live));
    }

    fn untrack(&self, pid: ProcessId) {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tree) = trees.live.remove(&pid) {
            if trees.ended_order.len() >= ENDED_TREES {
                if let Some(oldest) = trees.ended_order.pop_front() {
                    trees.ended.remove(&oldest);
                }
            }
            trees.ended.insert(pid, tree);
            trees.ended_order.push_back(pid);
        }
    }

    /// Keeps the control socket of process `pid`'s runtime.
    fn control(&self, pid: ProcessId, stream: UnixStream) {
        let timeouts = stream
            .set_read_timeout(Some(FREEZE_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(FREEZE_TIMEOUT)));
        let reader = timeouts.and_then(|()| stream.try_clone());
        match reader {
            Ok(reader) => {
                let control = Control {
                    stream,
                    reader: lego_transport::FrameReader::new(
                        reader,
                        lego_proto::FrameLimits::DEFAULT,
                    ),
                };
                self.controls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pid, Arc::new(Mutex::new(control)));
            }
            Err(e) => warn!("process {pid:x} cannot be frozen: its control socket: {e}"),
        }
    }

    /// Freezes process `pid` (every thread stopped at a boundary, its
    /// dirty pages written back, its state taken) and thaws it: what it
    /// took, and how long the process was stopped as seen from here.
    fn checkpoint(&self, pid: ProcessId) -> Message {
        let control = self
            .controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .cloned();
        let Some(control) = control else {
            let runs = self
                .processes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&pid);
            let why = if runs {
                "is a forked process: only a tree's first process can be frozen yet"
            } else {
                "does not run here"
            };
            return Message::error(
                ErrorCode::BadRequest,
                format!("process {pid:x} {why} (processor {})", self.name),
            );
        };
        let mut control = control.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        // A runtime that does not answer in time (stopped, or stuck) is
        // not asked again: its socket is closed, which thaws it when it
        // runs on, and it can no longer be frozen.
        let give_up = |control: &Control, e: String| {
            warn!("process {pid:x} can no longer be frozen: {e}");
            let _ = control.stream.shutdown(std::net::Shutdown::Both);
            self.controls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid);
            Message::error(
                ErrorCode::Internal,
                format!("process {pid:x}'s runtime did not answer in time: {e}"),
            )
        };
        let frozen = match control.exchange(&Message::Freeze) {
            Ok(frame) => frame,
            Err(e) => return give_up(&control, e),
        };
        let thawed = match control.exchange(&Message::Thaw) {
            Ok(frame) => Ok(frame),
            Err(e) => return give_up(&control, e),
        };
        let stopped_us = started.elapsed().as_micros() as u64;
        match (frozen.message, thawed) {
            (
                Message::Frozen(report),
                Ok(Frame {
                    message: Message::Thawed,
                    ..
                }),
            ) => {
                tracing::info!(
                    "froze process {pid:x} for {stopped_us} us: {} threads, {} bytes written back, state {} bytes",
                    report.threads,
                    report.written_back_bytes,
                    report.state_bytes
                );
                Message::Checkpointed { report, stopped_us }
            }
            (Message::Error(e), _) => Message::Error(e),
            (other, thawed) => Message::error(
                ErrorCode::Internal,
                format!(
                    "process {pid:x}'s runtime answered Freeze with {} and Thaw with {}",
                    other.kind(),
                    thawed.map_or_else(|e| e, |f| f.message.kind().to_string())
                ),
            ),
        }
    }

    /// Records that `pid` belongs to tree `tree`.
    fn join_tree(&self, pid: ProcessId, tree: ProcessId) {
        self.trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .insert(pid, tree);
    }

    /// The tree `pid` belongs to, if this processor runs it or ran it
    /// lately.
    fn tree_of(&self, pid: ProcessId) -> Option<ProcessId> {
        let trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        trees
            .live
            .get(&pid)
            .or_else(|| trees.ended.get(&pid))
            .copied()
    }

    /// Seals `voucher`, issued now (later than every voucher issued here
    /// before: a newer one of a process supersedes its older ones) and
    /// holding for `VOUCHER_LIFETIME_MS`.
    fn issue(&self, mut voucher: Voucher) -> Voucher {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let previous = self
            .last_issued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        voucher.issued_ms = now.max(previous + 1);
        voucher.expires_ms = voucher.issued_ms + lego_proto::VOUCHER_LIFETIME_MS;
        self.secret.seal_voucher(&mut voucher);
        voucher
    }

    /// Whether host process `host_pid` is the runtime of process `pid`
    /// here (a runtime names its pid; the kernel names its host pid).
    fn runs(&self, pid: ProcessId, host_pid: u32) -> bool {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .is_some_and(|(info, _)| info.host_pid == host_pid)
    }

    /// Relays a runtime's failover request for process `pid` to the
    /// monitor, and remembers where its memory lives now (its memory is
    /// freed there when it ends, and `lego ps` shows it).
    fn fail_over(
        &self,
        pid: ProcessId,
        tree: ProcessId,
        home: MemoryHome,
        failed: String,
    ) -> Message {
        let mut config = ClientConfig::new(
            self.secret.clone(),
            Identity::new(Role::Processor, self.name.clone()),
        );
        config.request_timeout = std::time::Duration::from_secs(20);
        let monitor = Client::new(self.monitor, config);
        let asked = Message::Failover {
            pid,
            tree,
            home,
            failed,
        };
        let answer = match monitor.call(&asked, &[]) {
            Ok(reply) => reply.message,
            Err(e) => Message::error(
                ErrorCode::Internal,
                format!("cannot reach the monitor: {e}"),
            ),
        };
        if let Message::MemoryMoved(home) = &answer {
            self.home_changed(pid, home.clone());
        }
        answer
    }

    /// Remembers where process `pid`'s memory lives now (its memory is
    /// freed there when it ends, and `lego ps` shows it).
    fn home_changed(&self, pid: ProcessId, home: MemoryHome) {
        if let Some((info, _)) = self
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&pid)
        {
            info.home_memory = home.primary.name.clone();
            info.backup_memory = home.backup.as_ref().map(|b| b.name.clone());
        } else if !self.known(pid) {
            // Not listed (yet): a child whose runtime has not announced
            // itself, or another processor's process.
            self.unlisted_homes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, home);
            return;
        }
        let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        // A later decision than one already recorded only.
        if homes.get(&pid).is_none_or(|known| known.epoch < home.epoch) {
            homes.insert(pid, home);
        }
    }

    /// Where process `pid`'s memory lives if it failed over (and forgets
    /// it: asked once, as the process ends).
    fn home_of(&self, pid: ProcessId) -> Option<MemoryHome> {
        self.homes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid)
    }

    /// Whether `pid` names a process this processor runs or ran lately.
    fn known(&self, pid: ProcessId) -> bool {
        self.tree_of(pid).is_some()
    }

    /// Tells the memory manager at `memory` to free `pid`'s memory, acting
    /// for that process only (authenticated with its key): for a process a
    /// runtime announced, whose memory manager is the runtime's word.
    fn release_for_tree(&self, memory: SocketAddr, pid: ProcessId, tree: ProcessId) {
        let client = Client::new(
            memory,
            ClientConfig::new(
                self.secret.process_key(tree, pid),
                Identity::process(tree, pid),
            ),
        );
        release_on(&client, memory, pid);
    }

    /// Tells the memory manager at `memory` to free `pid`'s memory.
    fn release(&self, memory: SocketAddr, pid: ProcessId) {
        let client = {
            let mut clients = self
                .memory_clients
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Arc::clone(clients.entry(memory).or_insert_with(|| {
                Arc::new(Client::new(
                    memory,
                    ClientConfig::new(
                        self.secret.clone(),
                        Identity::new(Role::Processor, self.name.clone()),
                    ),
                ))
            }))
        };
        release_on(&client, memory, pid);
    }

    fn load(&self) -> Load {
        let processes: Vec<ProcessInfo> = self
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(info, live)| {
                let (resident_bytes, misses) = live.read();
                ProcessInfo {
                    resident_bytes,
                    misses,
                    // After an execve, what it runs now.
                    command: live.command().unwrap_or_else(|| info.command.clone()),
                    ..info.clone()
                }
            })
            .collect();
        Load::Processor {
            cores: self.cores,
            excache_quota: self.excache_quota,
            excache_used: processes.iter().map(|p| p.excache_quota).sum(),
            processes,
        }
    }
}

impl Service for Processor {
    fn handle(&self, peer: &PeerInfo, request: Frame) -> Reply {
        if let (Message::HomeChanged { pid, home }, Role::Monitor) =
            (&request.message, peer.identity.role)
        {
            self.home_changed(*pid, home.clone());
            return Message::MemoryMoved(home.clone()).into();
        }
        if let (Message::Checkpoint { pid }, Role::Client) = (&request.message, peer.identity.role)
        {
            return self.checkpoint(*pid).into();
        }
        Message::error(
            ErrorCode::Unsupported,
            format!(
                "the processor manager serves {} on its launch socket only",
                request.message.kind()
            ),
        )
        .into()
    }

    /// A launch over TCP: the owner's `lego run` from anywhere, with its
    /// program's stdio relayed on the connection.
    fn takes_over(&self, peer: &PeerInfo, request: &Message) -> bool {
        matches!(request, Message::Launch(_)) && peer.identity.role == Role::Client
    }

    fn take_over(
        &self,
        peer: &PeerInfo,
        request: Frame,
        stream: std::net::TcpStream,
        reader: lego_transport::FrameReader<std::net::TcpStream>,
    ) {
        let Some(me) = self.me.upgrade() else { return };
        if let Err(e) = launch::serve_tcp(&me, request, stream, reader) {
            warn!("launch from {}: {e}", peer.addr);
        }
    }
}

/// A running processor manager.
pub struct ProcessorManager {
    joined: JoinedComponent,
}

/// A fresh abstract socket name for the processor `name`: unpredictable,
/// so no other process on the host takes it first.
fn runtime_socket_name(name: &str) -> std::io::Result<Vec<u8>> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("lego-{hex}-{name}").into_bytes())
}

impl ProcessorManager {
    pub fn start(mut config: ProcessorConfig) -> std::io::Result<ProcessorManager> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let runtime_socket = runtime_socket_name(&config.component.name)?;
        let processor = Arc::new_cyclic(|me| Processor {
            name: config.component.name.clone(),
            secret: config.component.secret.clone(),
            cores,
            excache_quota: config.excache,
            processes: Mutex::new(HashMap::new()),
            runtime_socket,
            // Safety: geteuid has no preconditions.
            isolates: unsafe { libc::geteuid() } == 0,
            last_issued: AtomicU64::new(0),
            guests: config.guests.clone(),
            monitor: config.component.monitor,
            homes: Mutex::new(HashMap::new()),
            unlisted_homes: Mutex::new(Unlisted::default()),
            memory_clients: Mutex::new(HashMap::new()),
            trees: Mutex::new(Trees::default()),
            me: me.clone(),
            controls: Mutex::new(HashMap::new()),
        });
        launch::serve(&config.launch_socket, Arc::clone(&processor))?;
        config.component.unix_socket = Some(config.launch_socket.display().to_string());
        let reporter = Arc::clone(&processor);
        let joined = join_cluster(Role::Processor, config.component, processor, move || {
            reporter.load()
        })?;
        Ok(ProcessorManager { joined })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.joined.local_addr()
    }
}
