//! Message types. One enum, [`Message`], covers every request and reply; a
//! frame's request id pairs a reply with its request.
//!
//! Strings and vectors here come from the network: the decoder bounds them by
//! the frame size, and receivers check the semantic limits
//! ([`MAX_NAME_LEN`], [`MAX_TEXT_LEN`]) before storing anything.

use crate::memory::{
    ExecImage, MemoryHolder, MemoryHome, MemoryOp, MemoryOpDone, ProcessId, RangeChange,
    SpilledRegion,
};
use crate::process::{AdoptSpec, ExitReport, LaunchSpec, NotRun, ProcessInfo, WindowSize};
use crate::storage::{StorageReply, StorageRequest, Voucher};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Longest component name a registration may carry.
pub const MAX_NAME_LEN: usize = 64;
/// Longest free-text field (export path, error message, refusal reason).
pub const MAX_TEXT_LEN: usize = 4096;
/// Length of handshake nonces and proofs.
pub const NONCE_LEN: usize = 32;

/// What a peer is in the cluster.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Monitor,
    Processor,
    Memory,
    Storage,
    /// A user-side tool (`lego status`, `lego run`, tests): never registers.
    Client,
    /// A runtime: one process's, holding that process's key rather than
    /// the cluster secret (see `lego_transport::Identity::process`); never
    /// registers, and may act only for that process.
    Process,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Processor => "processor",
            Role::Memory => "memory",
            Role::Storage => "storage",
            Role::Client => "client",
            Role::Process => "process",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Load figures a component reports with every heartbeat.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Load {
    Processor {
        cores: u32,
        /// ExCache quota granted to runtimes on this processor, in bytes.
        excache_quota: u64,
        /// ExCache bytes currently resident across its runtimes.
        excache_used: u64,
        /// The processes it runs.
        processes: Vec<ProcessInfo>,
    },
    Memory {
        /// Size of the page pool, in bytes.
        capacity: u64,
        /// Bytes of the pool holding pages.
        used: u64,
        /// Bytes promised to writable mappings (never more than capacity).
        committed: u64,
        /// Copies of processes being made to new backups from here.
        copies: Vec<CopyProgress>,
        /// What it holds of each process.
        held: Vec<HeldBytes>,
        /// The regions it holds of processes homed elsewhere.
        regions: Vec<HeldRegions>,
    },
    Storage {
        /// The directory tree this storage manager exports.
        export: String,
        total: u64,
        free: u64,
    },
}

impl Load {
    /// The role whose load this is.
    pub fn role(&self) -> Role {
        match self {
            Load::Processor { .. } => Role::Processor,
            Load::Memory { .. } => Role::Memory,
            Load::Storage { .. } => Role::Storage,
        }
    }
}

/// The regions of one process homed elsewhere a memory manager holds
/// (spilled there): how many, and their stored pages' bytes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldRegions {
    pub pid: ProcessId,
    pub regions: u32,
    pub bytes: u64,
}

/// A copy of a process a memory manager is making on a new backup (after
/// a loss, or for a drain), while the process runs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CopyProgress {
    pub pid: ProcessId,
    /// The memory manager receiving the copy.
    pub to: String,
    pub copied_bytes: u64,
    /// Bytes the process had stored when the copy began.
    pub total_bytes: u64,
}

/// What a memory manager holds of one process: its stored pages' bytes,
/// as the process's primary or its backup.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldBytes {
    pub pid: ProcessId,
    pub bytes: u64,
    pub primary: bool,
}

/// One copy of a process a memory manager holds, as it tells the monitor
/// (`Holdings`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HeldCopy {
    pub pid: ProcessId,
    pub tree: ProcessId,
    pub epoch: u64,
    /// The primary (else the backup).
    pub primary: bool,
    /// A primary's backup, when it has a whole copy.
    pub backup: Option<MemoryHolder>,
    /// A primary making a copy on a new backup right now.
    pub copying: bool,
    pub stored_bytes: u64,
}

/// A drain of a memory manager, as the monitor reports it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DrainState {
    /// Copies moved off it so far.
    pub moved: u32,
    /// Copies it still held when last asked.
    pub left: u32,
    /// It holds nothing any more.
    pub done: bool,
    /// Why the drain stopped, if it failed.
    pub error: Option<String>,
}

/// A component announcing itself to the monitor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Cluster-unique name, stable across restarts of the component
    /// (`memory-0`); the monitor keys membership by it.
    pub name: String,
    pub role: Role,
    /// Where the component serves requests.
    pub addr: SocketAddr,
    pub pid: u32,
    pub load: Load,
    /// A Unix socket on the component's host for requests that carry file
    /// descriptors (a processor's launch socket).
    pub unix_socket: Option<String>,
}

/// Health of a member as the monitor sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Alive,
    /// Silent for longer than the monitor's dead-after interval.
    Dead,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Alive => "alive",
            Health::Dead => "dead",
        })
    }
}

/// One row of the monitor's membership table.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub registration: Registration,
    pub health: Health,
    pub load: Load,
    /// Milliseconds since the last heartbeat (or registration) arrived.
    pub heartbeat_age_ms: u64,
    /// A memory manager being drained (`lego drain`): takes nothing new.
    pub draining: Option<DrainState>,
}

/// The monitor's whole view of the cluster.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub heartbeat_interval_ms: u64,
    pub dead_after_ms: u64,
    pub members: Vec<MemberStatus>,
}

/// Why a request failed, in a form the requester can act on.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed or violates a limit.
    BadRequest,
    /// The receiver does not serve this kind of request.
    Unsupported,
    /// A heartbeat from a component the monitor does not know: register.
    UnknownComponent,
    /// Another live component already holds this name.
    NameTaken,
    /// The peer may not act on what it named (a runtime asking about a
    /// process of another tree).
    Denied,
    Internal,
    /// A memory manager holds no copy of the process it serves: it was
    /// restarted, or the process moved on (its runtime fails over).
    NotHeld,
}

/// An error reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Every message a Lego peer sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Message {
    // --- handshake (see `lego-transport` for the exchange) ---
    /// Client → server: who I am, and a fresh nonce to prove the server knows
    /// the cluster secret.
    Hello {
        role: Role,
        name: String,
        nonce: [u8; NONCE_LEN],
    },
    /// Server → client: the server's proof over both nonces, and its own nonce.
    Challenge {
        nonce: [u8; NONCE_LEN],
        proof: [u8; NONCE_LEN],
    },
    /// Client → server: the client's proof over both nonces.
    Prove {
        proof: [u8; NONCE_LEN],
    },
    /// Server → client: authenticated; requests may follow.
    Welcome {
        role: Role,
        name: String,
    },
    /// Either side: the handshake failed, and why.
    Refused {
        reason: String,
    },

    // --- generic ---
    Ping,
    Pong,
    Error(ErrorReply),

    // --- membership (monitor) ---
    Register(Registration),
    /// Reply to `Register`: how often the component must heartbeat.
    Registered {
        heartbeat_interval_ms: u64,
    },
    Heartbeat {
        name: String,
        load: Load,
    },
    HeartbeatAck,
    /// Ask the monitor for its view of the cluster.
    GetClusterView,
    ClusterView(ClusterView),

    // --- placement (monitor) ---
    /// Where should a new process run? Optionally on a named processor.
    PlaceProcess {
        processor: Option<String>,
    },
    /// A processor to run it on, its home memory manager, the memory
    /// manager holding its replica (with replicas, and two or more live),
    /// and the storage manager serving its files (if the cluster has one).
    Placement {
        processor: Registration,
        memory: Registration,
        backup: Option<Box<Registration>>,
        storage: Option<Box<Registration>>,
    },
    /// A processor reporting that `failed`, a memory manager of `home`,
    /// is lost to process `pid` of tree `tree`: the monitor checks it is
    /// down, makes the process's backup its primary (telling it with
    /// `Promote`), picks a new backup, and answers `MemoryMoved`.
    Failover {
        pid: ProcessId,
        tree: ProcessId,
        home: MemoryHome,
        failed: String,
    },
    /// Where the process's memory lives now.
    MemoryMoved(MemoryHome),
    /// A process's home → the monitor: choose a memory manager, other
    /// than those named in `except` (the home and its backup), to hold
    /// region `region` of process `pid`; the home then asks it to
    /// (`HoldRegion`).
    PlaceRegion {
        pid: ProcessId,
        region: u64,
        except: Vec<String>,
    },
    /// Reply: the memory manager chosen.
    RegionPlaced(MemoryHolder),
    /// The monitor to a memory manager: serve process `pid` as its
    /// primary from now on (its epoch is `epoch`), and make `backup` hold
    /// a copy of it (sent in the background while the process runs).
    Promote {
        pid: ProcessId,
        epoch: u64,
        backup: Option<MemoryHolder>,
    },
    Promoted,
    /// The monitor asking a memory manager reported lost what it holds of
    /// process `pid` (a restarted one answers, and holds nothing).
    Holds {
        pid: ProcessId,
    },
    /// The answer: it holds a copy at `epoch`, as the primary or not
    /// (`held` false: none).
    Holding {
        held: bool,
        epoch: u64,
        primary: bool,
    },
    /// The monitor to a memory manager: what copies of processes it holds.
    Holdings,
    HoldingList(Vec<HeldCopy>),
    /// The monitor to process `pid`'s primary: make `backup` hold a whole
    /// copy of it (the current backup, if any, keeps getting every change
    /// until then), follow epoch `epoch`, and answer `Promoted` once the
    /// new backup holds it all. `None`: go on without a backup.
    Rebackup {
        pid: ProcessId,
        epoch: u64,
        backup: Option<MemoryHolder>,
    },
    /// The monitor to a memory manager: drop your copy of process `pid`
    /// (of epoch `epoch` or older); a primary must have a whole backup,
    /// which the monitor makes the primary next. The runtime, told
    /// `NotHeld` from then on, fails over to it.
    Relinquish {
        pid: ProcessId,
        epoch: u64,
    },
    Relinquished,
    /// A user asking the monitor to move every copy off memory manager
    /// `name` while programs run (`lego drain`); progress shows in the
    /// cluster view.
    Drain {
        name: String,
    },
    DrainStarted,
    /// The monitor telling a processor that process `pid`'s memory moved
    /// (a drain): it is released there, and `lego ps` shows it.
    HomeChanged {
        pid: ProcessId,
        home: MemoryHome,
    },
    /// The monitor to a component it had found dead and that spoke again
    /// (a partition healed): everything it held has moved on, so it
    /// drops it and registers anew, empty.
    Fenced,

    // --- processes (processor, over its launch socket) ---
    /// Start a program. On a Unix socket the request follows a message
    /// carrying the program's stdin, stdout and stderr as descriptors
    /// (none when its stdio is relayed); over TCP its stdio is relayed.
    Launch(LaunchSpec),
    Launched {
        pid: ProcessId,
        host_pid: u32,
    },
    /// Wait for a process to end.
    WaitProcess {
        pid: ProcessId,
    },
    Exited(ExitReport),
    /// The processor greeting a user other than the cluster's owner on its
    /// guests' launch socket (the kernel told it who connected, and the
    /// cluster allows them): the `Launch` that follows is placed and its
    /// program resolved by the processor, with the user's credentials.
    GuestAccepted {
        processor: String,
    },
    /// The answer to a `Launch` whose program cannot be run (not found,
    /// not executable), as a shell reports it.
    NotRun(NotRun),
    /// Relayed stdio, `lego run` to the processor: bytes of the program's
    /// stdin in the payload; an empty payload is its end.
    Input,
    /// The processor to `lego run`: `bytes` more of its input reached the
    /// program's stdin (or were dropped: the program closed it).
    InputTaken {
        bytes: u64,
    },
    /// Relayed stdio, the processor to `lego run`: bytes the program wrote
    /// to `stream` (`STDOUT`, `STDERR`, or its `TERMINAL`) in the
    /// payload; an empty payload: every writer closed it.
    Output {
        stream: u8,
    },
    /// `lego run` can no longer write where `stream` goes (its reader
    /// went away): the program's writes to it now fail as natively
    /// (EPIPE, SIGPIPE).
    OutputClosed {
        stream: u8,
    },
    /// The user's terminal has a new size: the program's terminal gets it
    /// (and its foreground group SIGWINCH).
    Resize(WindowSize),
    /// `lego run` forwarding a signal to the program it launched (to its
    /// process group if `group`), for a user who may not signal the
    /// program's runtime on the host itself.
    SignalProcess {
        pid: ProcessId,
        signal: i32,
        group: bool,
    },
    /// The processor to a runtime, on its control socket: stop every
    /// thread at a boundary, write dirty pages back, take the state.
    Freeze,
    /// The answer; the payload is the `state::ProcessState`.
    Frozen(crate::runtime::FreezeReport),
    /// Let the frozen process run on.
    Thaw,
    Thawed,
    /// `lego checkpoint` to the processor running process `pid`.
    Checkpoint {
        pid: ProcessId,
    },
    /// The answer: what freezing took, and how long the process was
    /// stopped as the processor saw it (µs).
    Checkpointed {
        report: crate::runtime::FreezeReport,
        stopped_us: u64,
    },
    /// A forked process's runtime announcing itself; the request carries
    /// its live-counters page as a descriptor.
    Adopt(AdoptSpec),
    /// The answer, with the forked process's own voucher.
    Adopted {
        voucher: Voucher,
    },
    /// A runtime asking for a voucher of its process's credentials now (it
    /// changed them): the processor reads those of thread `tid` of the
    /// connecting process from the kernel.
    Vouch {
        tid: u32,
    },
    Vouched(Voucher),
    /// A runtime asking its processor to bind (or connect) the socket the
    /// request carries as a descriptor to the Unix socket file at `path`
    /// (absolute), with the ids thread `tid` of the connecting process has
    /// (read from the kernel, as for `Vouch`): a socket file is a host
    /// file, and the runtime's own host identity is unprivileged.
    SocketAt {
        connect: bool,
        tid: u32,
        path: Vec<u8>,
    },
    /// The answer: 0, or the errno bind(2) or connect(2) gave.
    SocketDone {
        errno: i32,
    },

    // --- memory (memory manager) ---
    /// fork: give `child` a copy-on-write copy of `parent`'s address space.
    /// `seq`, as for `Memory`.
    Fork {
        parent: ProcessId,
        child: ProcessId,
        seq: u64,
    },
    /// Reply: the ranges where the child's copy differs from the parent's
    /// (`MADV_WIPEONFORK` ones read zeros, `MADV_DONTFORK` ones are absent).
    Forked {
        changes: Vec<RangeChange>,
        /// The child's process key, for its runtime to speak with from its
        /// start (the parent's is the parent's alone).
        child_key: [u8; 32],
    },
    /// Build a new address space for `pid` from the ELF image in the
    /// payload, replacing any it had. `seq`, as for `Memory`. A new
    /// process's first names its backup (the placement's); a later one
    /// keeps the backup the process has.
    Exec {
        pid: ProcessId,
        seq: u64,
        backup: Option<MemoryHolder>,
    },
    ExecLoaded(ExecImage),
    /// An address-space call of `pid`. `seq` numbers the process's
    /// changes (Exec, Fork, Memory), one higher each time: a change sent
    /// again with the last one's number (to a backup that took over while
    /// it was answered) gets the answer it got, without being made twice.
    Memory {
        pid: ProcessId,
        op: MemoryOp,
        seq: u64,
        /// Set only by a home passing the call on to its backup: the
        /// regions it spilled to make room for it, spilled on the backup
        /// too before the call is made there. A runtime's is empty.
        spill: Vec<SpilledRegion>,
    },
    MemoryDone(MemoryOpDone),
    /// The call failed with this errno, as Linux would fail it.
    MemoryFailed {
        errno: i32,
    },
    /// The contents of one page of `pid` (page-aligned `addr`).
    FetchPage {
        pid: ProcessId,
        addr: u64,
    },
    /// Reply: the page is in the payload.
    Page,
    /// Reply: the page holds only zeros (no payload).
    ZeroPage,
    /// Up to `count` consecutive pages of `pid` from page-aligned `addr`
    /// (readahead), stopping at the end of the mapping holding `addr`.
    FetchPages {
        pid: ProcessId,
        addr: u64,
        count: u32,
    },
    /// Reply: `count` pages in the payload, zeros included.
    Pages {
        count: u32,
    },
    /// Take back dirty pages; the payload holds one page per address.
    WriteBack {
        pid: ProcessId,
        addrs: Vec<u64>,
    },
    WrittenBack,
    /// `pid` is gone: free its address space and pages.
    ReleaseProcess {
        pid: ProcessId,
    },
    Released,
    /// A primary memory manager passing a change of process `pid` on to
    /// its backup (`inner`: `Exec`, `Fork`, `Memory`, `WriteBack` or
    /// `ReleaseProcess`, with its payload), in the order it applied them,
    /// before it answers the runtime. The backup applies it as the
    /// primary did, even past its capacity: it must hold what the primary
    /// holds.
    Replicate {
        pid: ProcessId,
        tree: ProcessId,
        epoch: u64,
        inner: Box<Message>,
    },
    /// A primary starting (or, at its end, bringing up to date) a
    /// backup's copy of process `pid` (tree `tree`): its whole layout; the
    /// copy keeps the pages it has inside it. Its pages follow in
    /// `ReplicaPages`, then every change in `Replicate`.
    ReplicaOf {
        pid: ProcessId,
        tree: ProcessId,
        epoch: u64,
        layout: crate::memory::SpaceLayout,
    },
    /// Pages of a backup's copy: first every page in the `clear` ranges
    /// is dropped, then the payload's are stored, one page per address.
    ReplicaPages {
        pid: ProcessId,
        clear: Vec<(u64, u64)>,
        addrs: Vec<u64>,
    },
    /// A primary's copy of process `pid` on a new backup is whole: every
    /// page went, and changes follow as `Replicate` from now on. Until
    /// then the copy answers `Holds` as holding nothing (it is nothing
    /// to fail over to).
    ReplicaComplete {
        pid: ProcessId,
    },
    /// Reply to the four above.
    Replicated,

    // --- regions held for other managers' processes ---
    /// A process's home → the memory manager the monitor placed region
    /// `region` (of [`crate::REGION_SIZE`]) of process `pid`, of tree
    /// `tree`, on: reserve the region and keep the pages of it the
    /// process's runtime writes back (it sends them, and fetches them,
    /// straight here).
    HoldRegion {
        pid: ProcessId,
        tree: ProcessId,
        region: u64,
    },
    /// The home → a holder: drop the stored pages of `discard` (unmapped
    /// or discarded), then give up the regions `release` (every region of
    /// the process with `all`: it ended, or ran a new program).
    ChangeRegions {
        pid: ProcessId,
        discard: Vec<(u64, u64)>,
        release: Vec<u64>,
        all: bool,
    },
    /// The home → a holder of region(s) it just spilled: the pages of
    /// them it had stored (`addrs`, one page of payload each), kept here
    /// from now on.
    RegionPages {
        pid: ProcessId,
        addrs: Vec<u64>,
    },
    /// The home → a holder of region `region` of process `pid`: copy its
    /// pages to `to`, which just took the region (`HoldRegion`) in place
    /// of a lost or leaving holder (`RegionPages` there), and answer once
    /// it has them. With `mirror` (the runtime goes on writing meanwhile,
    /// not knowing `to`), every page written back here from then on goes
    /// to `to` too (`MirrorPages`) before it is acknowledged, until
    /// `EndMirror`.
    CopyRegion {
        pid: ProcessId,
        region: u64,
        to: MemoryHolder,
        mirror: bool,
    },
    /// A holder copying a region (`CopyRegion` with `mirror`) → the new
    /// holder: pages the runtime wrote back since the copy began, newer
    /// than any copied page of the same address.
    MirrorPages {
        pid: ProcessId,
        addrs: Vec<u64>,
    },
    /// The home → a holder: the runtime knows the region's new holder now;
    /// stop passing its pages on.
    EndMirror {
        pid: ProcessId,
        region: u64,
    },
    /// The monitor → process `pid`'s home: give every region of it held
    /// by memory manager `from` (drained, or lost) a new holder, copied
    /// from another copy while the program runs. Answered with
    /// `RegionsMoved` (the regions moved), or an error naming those that
    /// could not.
    MoveRegions {
        pid: ProcessId,
        from: String,
    },
    /// A runtime → its home: the whole layout of its process's address
    /// space (every VMA with its protection, the break, the spilled
    /// regions, the last change's `seq`): what a runtime taking over a
    /// running process (moved, or restarted from a checkpoint) mirrors.
    GetLayout {
        pid: ProcessId,
    },
    Layout(crate::memory::SpaceLayout),
    /// A runtime → its home: the memory managers named in `lost` failed
    /// holding its spilled regions. Sent with no write-back in flight and
    /// no fault being served, so the home can give each region a new
    /// holder copied from a survivor while the process waits.
    RegionsLost {
        pid: ProcessId,
        lost: Vec<String>,
    },
    /// Reply: every spilled region with its holders now (a new one copied
    /// in for a lost holder where a manager could take it; some may have
    /// moved without the runtime since, see `MoveRegions`).
    RegionsMoved(Vec<SpilledRegion>),
    /// A home → its backup (inside `Replicate`): spilled regions of
    /// process `pid` that changed holders.
    Respill {
        pid: ProcessId,
        regions: Vec<SpilledRegion>,
    },
    /// The home → a holder, at a fork: process `child` holds copies of
    /// `parent`'s regions `regions` here (its own reservations, sharing
    /// the parent's pages until either writes one).
    ForkRegions {
        parent: ProcessId,
        child: ProcessId,
        regions: Vec<u64>,
    },
    /// Reply to `HoldRegion`, `ChangeRegions`, `CopyRegion`, `RegionPages`,
    /// `MirrorPages`, `EndMirror` and `ForkRegions`.
    RegionsChanged,

    // --- files (storage manager; see `crate::storage`) ---
    /// A file request; `Write` carries its data as the payload. `caller`:
    /// whose credentials it is performed with (required from a runtime).
    Storage {
        request: StorageRequest,
        caller: Option<Voucher>,
    },
    /// Reply: the request succeeded; `Data` carries the bytes as the payload.
    StorageDone(StorageReply),
    /// Reply: the request failed with this errno, as Linux would fail it.
    StorageFailed {
        errno: i32,
    },
}

impl Message {
    /// A short name for logs and errors (never the contents).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Challenge { .. } => "Challenge",
            Message::Prove { .. } => "Prove",
            Message::Welcome { .. } => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::Ping => "Ping",
            Message::Pong => "Pong",
            Message::Error(_) => "Error",
            Message::Register(_) => "Register",
            Message::Registered { .. } => "Registered",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatAck => "HeartbeatAck",
            Message::GetClusterView => "GetClusterView",
            Message::ClusterView(_) => "ClusterView",
            Message::PlaceProcess { .. } => "PlaceProcess",
            Message::Placement { .. } => "Placement",
            Message::Failover { .. } => "Failover",
            Message::MemoryMoved(_) => "MemoryMoved",
            Message::PlaceRegion { .. } => "PlaceRegion",
            Message::RegionPlaced(_) => "RegionPlaced",
            Message::Promote { .. } => "Promote",
            Message::Promoted => "Promoted",
            Message::Holds { .. } => "Holds",
            Message::Holding { .. } => "Holding",
            Message::Holdings => "Holdings",
            Message::HoldingList(_) => "HoldingList",
            Message::Rebackup { .. } => "Rebackup",
            Message::Relinquish { .. } => "Relinquish",
            Message::Relinquished => "Relinquished",
            Message::Drain { .. } => "Drain",
            Message::DrainStarted => "DrainStarted",
            Message::HomeChanged { .. } => "HomeChanged",
            Message::Fenced => "Fenced",
            Message::Launch(_) => "Launch",
            Message::Launched { .. } => "Launched",
            Message::WaitProcess { .. } => "WaitProcess",
            Message::Exited(_) => "Exited",
            Message::GuestAccepted { .. } => "GuestAccepted",
            Message::NotRun(_) => "NotRun",
            Message::Input => "Input",
            Message::InputTaken { .. } => "InputTaken",
            Message::Output { .. } => "Output",
            Message::OutputClosed { .. } => "OutputClosed",
            Message::Resize(_) => "Resize",
            Message::SignalProcess { .. } => "SignalProcess",
            Message::Freeze => "Freeze",
            Message::Frozen(_) => "Frozen",
            Message::Thaw => "Thaw",
            Message::Thawed => "Thawed",
            Message::Checkpoint { .. } => "Checkpoint",
            Message::Checkpointed { .. } => "Checkpointed",
            Message::Adopt(_) => "Adopt",
            Message::Adopted { .. } => "Adopted",
            Message::Vouch { .. } => "Vouch",
            Message::Vouched(_) => "Vouched",
            Message::SocketAt { .. } => "SocketAt",
            Message::SocketDone { .. } => "SocketDone",
            Message::Fork { .. } => "Fork",
            Message::Forked { .. } => "Forked",
            Message::Exec { .. } => "Exec",
            Message::ExecLoaded(_) => "ExecLoaded",
            Message::Memory { .. } => "Memory",
            Message::MemoryDone(_) => "MemoryDone",
            Message::MemoryFailed { .. } => "MemoryFailed",
            Message::FetchPage { .. } => "FetchPage",
            Message::Page => "Page",
            Message::ZeroPage => "ZeroPage",
            Message::FetchPages { .. } => "FetchPages",
            Message::Pages { .. } => "Pages",
            Message::WriteBack { .. } => "WriteBack",
            Message::WrittenBack => "WrittenBack",
            Message::ReleaseProcess { .. } => "ReleaseProcess",
            Message::Released => "Released",
            Message::Replicate { .. } => "Replicate",
            Message::ReplicaOf { .. } => "ReplicaOf",
            Message::GetLayout { .. } => "GetLayout",
            Message::Layout(_) => "Layout",
            Message::ReplicaPages { .. } => "ReplicaPages",
            Message::ReplicaComplete { .. } => "ReplicaComplete",
            Message::Replicated => "Replicated",
            Message::HoldRegion { .. } => "HoldRegion",
            Message::ChangeRegions { .. } => "ChangeRegions",
            Message::ForkRegions { .. } => "ForkRegions",
            Message::RegionPages { .. } => "RegionPages",
            Message::CopyRegion { .. } => "CopyRegion",
            Message::MirrorPages { .. } => "MirrorPages",
            Message::EndMirror { .. } => "EndMirror",
            Message::MoveRegions { .. } => "MoveRegions",
            Message::RegionsLost { .. } => "RegionsLost",
            Message::RegionsMoved(_) => "RegionsMoved",
            Message::Respill { .. } => "Respill",
            Message::RegionsChanged => "RegionsChanged",
            Message::Storage { .. } => "Storage",
            Message::StorageDone(_) => "StorageDone",
            Message::StorageFailed { .. } => "StorageFailed",
        }
    }

    /// Shorthand for an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Message {
        Message::Error(ErrorReply {
            code,
            message: message.into(),
        })
    }
}
