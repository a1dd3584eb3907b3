//! The launch socket: a Unix socket on which `lego run` asks this
//! processor to start a program, hands over the program's stdin, stdout
//! and stderr (or has them relayed), and waits for the program to end.
//!
//! One connection per process:
//! ```text
//! handshake; descriptors 0-2 (SCM_RIGHTS; none if relayed); Launch →
//! Launched; WaitProcess → Exited (when it ends)
//! ```
//! The same over TCP (no descriptors: relayed). Relayed stdio travels on
//! the connection meanwhile (`relay`).
//! If the connection drops before the program ends (the user's `lego run`
//! died), the program is killed: nobody could see its output or status.

use crate::relay;
use crate::spawn;
use crate::Processor;
use lego_proto::live::LiveStats;
use lego_proto::runtime::{RuntimeReport, RuntimeSpec};
use lego_proto::AdoptSpec;
use lego_proto::{
    ErrorCode, ExitReport, FrameLimits, LaunchSpec, Message, ProcessInfo, Role, StdioSpec, Voucher,
    MAX_ARGS, MAX_ARGS_BYTES,
};
use lego_transport::fdpass::recv_fds;
use lego_transport::peercred::{peer_credentials, peer_still_runs, PeerCredentials};
use lego_transport::{handshake, write_frame, FrameReader, Identity, Peer, Stream};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tracing::{info, warn};

/// Serves the launch socket at `path` (replacing a stale socket file).
pub fn serve(path: &Path, processor: Arc<Processor>) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    // `lego run`'s, for the cluster's owner; runtimes reach the processor
    // at its abstract socket.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // Other users' `lego run`: anyone may connect; the kernel says who
    // did, and only the users the cluster allows are served.
    let guests_path = crate::guest_socket(path);
    if guests_path.exists() {
        std::fs::remove_file(&guests_path)?;
    }
    let guests = UnixListener::bind(&guests_path)?;
    std::fs::set_permissions(
        &guests_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )?;
    let abstract_name = SocketAddr::from_abstract_name(&processor.runtime_socket)?;
    let runtimes = UnixListener::bind_addr(&abstract_name)?;
    accept(
        listener,
        path.into(),
        Arc::clone(&processor),
        serve_connection,
    )?;
    accept(
        guests,
        guests_path.as_path().into(),
        Arc::clone(&processor),
        serve_guest,
    )?;
    accept(runtimes, path.into(), processor, serve_connection)
}

type Serve = fn(UnixStream, &Peer, &Arc<Processor>) -> Result<(), String>;

/// Serves every connection to `listener`, each on a thread of its own.
fn accept(
    listener: UnixListener,
    peer: Peer,
    processor: Arc<Processor>,
    serve: Serve,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("launch".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let processor = Arc::clone(&processor);
                let peer = peer.clone();
                let _ = thread::Builder::new()
                    .name("launch conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, &peer, &processor) {
                            warn!("launch connection: {e}");
                        }
                    });
            }
        })?;
    Ok(())
}

fn check_spec(spec: &LaunchSpec) -> Result<(), String> {
    let count = spec.argv.len() + spec.envp.len();
    let bytes: usize = spec
        .argv
        .iter()
        .chain(&spec.envp)
        .map(|s| s.len() + 1)
        .sum();
    if count > MAX_ARGS || bytes > MAX_ARGS_BYTES {
        return Err(format!(
            "{count} arguments and environment entries of {bytes} bytes are over the limits ({MAX_ARGS}, {MAX_ARGS_BYTES})"
        ));
    }
    if spec.program.is_empty() || spec.program.contains(&0) {
        return Err("the program path is empty or contains NUL".into());
    }
    if spec.argv.iter().chain(&spec.envp).any(|s| s.contains(&0)) {
        return Err("an argument or environment entry contains NUL".into());
    }
    Ok(())
}

/// The ids thread `tid` of host process `pid` has now, read from the
/// kernel, as its own user namespace names them (its Lego ids): the
/// process's runtime says nothing about them. `pid` is the connected
/// peer (blocked on our answer, so not recycled); `tid` must be one of
/// its threads.
fn ids_of(stream: &UnixStream, pid: u32, tid: u32) -> std::io::Result<ThreadIds> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
    // The status shows host ids; the voucher names the ids the process
    // has in its own user namespace.
    let translation = crate::hostids::Translation::of(pid)?;
    // The peer may have ended and its pid been reused while we read: the
    // ids are its only if it still runs now.
    if !peer_still_runs(stream)? {
        return Err(std::io::Error::other(
            "the process ended while its ids were read",
        ));
    }
    let malformed = || {
        std::io::Error::other(
            "a status file without Uid, Gid, Groups, Umask, CapEff or CapPrm, or an unmapped id",
        )
    };
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
    let ids = |key: &str, map: &dyn Fn(u32) -> Option<u32>| -> Option<Vec<u32>> {
        field(key)?
            .split_whitespace()
            .map(|id| map(id.parse().ok()?))
            .collect()
    };
    let uid = |id| translation.uid(id);
    let gid = |id| translation.gid(id);
    let uids = ids("Uid:", &uid).and_then(|v| <[u32; 4]>::try_from(v).ok());
    let gids = ids("Gid:", &gid).and_then(|v| <[u32; 4]>::try_from(v).ok());
    let umask = field("Umask:").and_then(|m| u32::from_str_radix(m.trim(), 8).ok());
    // Capabilities in the process's own user namespace, which is what
    // they are over its files there.
    let caps = |key: &str| field(key).and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
    let (Some(uids), Some(gids), Some(mut groups), Some(umask), Some(effective), Some(permitted)) = (
        uids,
        gids,
        ids("Groups:", &gid),
        umask,
        caps("CapEff:"),
        caps("CapPrm:"),
    ) else {
        return Err(malformed());
    };
    groups.sort_unstable();
    Ok(ThreadIds {
        uids,
        gids,
        groups,
        umask,
        caps: lego_proto::Capabilities {
            effective,
            permitted,
        }
        .fs(),
    })
}

struct ThreadIds {
    uids: [u32; 4],
    gids: [u32; 4],
    groups: Vec<u32>,
    umask: u32,
    caps: lego_proto::Capabilities,
}

/// A voucher for process `pid` of tree `tree` of the ids thread `tid` of
/// the connected peer, host process `host_pid`, has now.
fn vouch(
    processor: &Processor,
    stream: &UnixStream,
    (tree, pid): (u64, lego_proto::ProcessId),
    host_pid: u32,
    tid: u32,
) -> std::io::Result<Voucher> {
    // Only to the very process: another process of the tree (a child
    // that escaped its trap, holding its parent's key) is not vouched for
    // as its parent.
    if !processor.runs(pid, host_pid) {
        return Err(std::io::Error::other(format!(
            "host process {host_pid} is not the runtime of process {pid:x}"
        )));
    }
    let ThreadIds {
        uids,
        gids,
        groups,
        caps,
        ..
    } = ids_of(stream, host_pid, tid)?;
    Ok(processor.issue(Voucher {
        tree,
        pid,
        uids,
        gids,
        groups,
        caps,
        ..Voucher::default()
    }))
}

/// Binds or connects `socket` to the Unix socket file at `path` with the
/// filesystem ids and umask `ids` name, on a thread of its own whose
/// credentials and working directory change for this alone (raw calls:
/// glibc would change every thread's). The errno, or 0.
fn socket_at(socket: &OwnedFd, path: &[u8], connect: bool, ids: &ThreadIds) -> i32 {
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (&b"/"[..], &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => return libc::EINVAL,
    };
    let mut addr: libc::sockaddr_un = unsafe_zeroed_sockaddr();
    if name.is_empty() || name.contains(&0) {
        return libc::EINVAL;
    }
    if name.len() >= addr.sun_path.len() {
        return libc::ENAMETOOLONG;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, &b) in addr.sun_path.iter_mut().zip(name) {
        *slot = b as libc::c_char;
    }
    let Ok(dir) = std::ffi::CString::new(dir) else {
        return libc::EINVAL;
    };
    let len = (std::mem::size_of::<libc::sa_family_t>() + name.len() + 1) as libc::socklen_t;
    let fd = socket.as_raw_fd();
    let act = || -> i32 {
        // Safety: raw calls on this thread's own credentials and fs
        // context (unshared first), with a live id list, a NUL-ended
        // directory name and an initialised address of `len` bytes.
        unsafe {
            let failed = |ret: libc::c_long| ret != 0;
            if failed(libc::syscall(libc::SYS_unshare, libc::CLONE_FS))
                || failed(libc::syscall(
                    libc::SYS_setgroups,
                    ids.groups.len(),
                    ids.groups.as_ptr(),
                ))
            {
                return std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EPERM);
            }
            libc::syscall(libc::SYS_setfsgid, ids.gids[3]);
            libc::syscall(libc::SYS_setfsuid, ids.uids[3]);
            libc::umask(ids.umask as libc::mode_t);
            let ret = if libc::chdir(dir.as_ptr()) != 0 {
                -1
            } else if connect {
                libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len)
            } else {
                libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len)
            };
            if ret == 0 {
                0
            } else {
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)
            }
        }
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("socket at".into())
            .spawn_scoped(scope, act)
            .map_or(libc::EAGAIN, |t| t.join().unwrap_or(libc::EIO))
    })
}

fn unsafe_zeroed_sockaddr() -> libc::sockaddr_un {
    // Safety: sockaddr_un is plain data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

fn reply(stream: &mut impl Write, id: u64, message: Message) -> Result<(), String> {
    write_frame(stream, id, &message, &[]).map_err(|e| format!("cannot reply to lego run: {e}"))
}

fn serve_connection(
    stream: UnixStream,
    peer: &Peer,
    processor: &Arc<Processor>,
) -> Result<(), String> {
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(
        stream.try_clone().map_err(|e| e.to_string())?,
        FrameLimits::HANDSHAKE,
    );
    let me = Identity::new(Role::Processor, processor.name.clone());
    let client = handshake::server(
        &mut writer,
        &mut reader,
        peer,
        &processor.secret,
        &me,
        Duration::from_secs(5),
    )
    .map_err(|e| format!("refused: {e}"))?;
    let caller = peer_credentials(&stream)
        .map_err(|e| format!("cannot tell who {} is: {e}", client.name))?;
    let fds = recv_fds(&stream)
        .map_err(|e| format!("receiving descriptors from {}: {e}", client.name))?;
    let frame = reader
        .read_frame()
        .map_err(|e| format!("reading the launch request: {e}"))?;
    if let Message::Vouch { tid } = frame.message {
        let process = (client.tree().unwrap_or(0), client.pid().unwrap_or(0));
        let answer = match vouch(processor, &stream, process, caller.pid, tid) {
            Ok(voucher) => Message::Vouched(voucher),
            Err(e) => Message::error(
                ErrorCode::Denied,
                format!(
                    "cannot read the credentials of thread {tid} of {}: {e}",
                    client.name
                ),
            ),
        };
        return reply(&mut writer, frame.id, answer);
    }
    if let Message::Failover {
        pid,
        tree,
        home,
        failed,
    } = frame.message
    {
        // A runtime asks only for its own process.
        let answer = if client.role != Role::Process
            || client.pid() != Some(pid)
            || client.tree() != Some(tree)
            || !processor.runs(pid, caller.pid)
        {
            Message::error(
                ErrorCode::Denied,
                format!("{} may not ask a failover of process {pid:x}", client.name),
            )
        } else {
            processor.fail_over(pid, tree, home, failed)
        };
        return reply(&mut writer, frame.id, answer);
    }
    if let Message::SocketAt { connect, tid, path } = &frame.message {
        let answer = match (client.role, <[OwnedFd; 1]>::try_from(fds)) {
            (Role::Process, Ok([socket])) => match ids_of(&stream, caller.pid, *tid) {
                Ok(ids) => Message::SocketDone {
                    errno: socket_at(&socket, path, *connect, &ids),
                },
                Err(e) => Message::error(
                    ErrorCode::Denied,
                    format!(
                        "cannot read the credentials of thread {tid} of {}: {e}",
                        client.name
                    ),
                ),
            },
            (Role::Process, Err(_)) => Message::error(
                ErrorCode::BadRequest,
                "SocketAt carries exactly one descriptor, the socket",
            ),
            _ => Message::error(
                ErrorCode::Denied,
                format!("{} is no runtime of this processor's", client.name),
            ),
        };
        return reply(&mut writer, frame.id, answer);
    }
    if let Message::Adopt(spec) = frame.message {
        let Ok([live]) = <[OwnedFd; 1]>::try_from(fds) else {
            return Err(format!(
                "{} sent the wrong number of descriptors with Adopt (want the live-counters page)",
                client.name
            ));
        };
        // A runtime announces only a child of a process of its own tree
        // that this processor runs, under a pid no process has.
        let tree = match client.tree() {
            Some(tree) => {
                // (It authenticates as itself: its key is its own.)
                let parent_ok =
                    processor.tree_of(spec.parent) == Some(tree) && client.pid() == Some(spec.pid);
                // Its host pid is the kernel's word, not its own.
                let host_ok = spec.host_pid == caller.pid;
                if !parent_ok || !host_ok || processor.known(spec.pid) {
                    return reply(
                        &mut writer,
                        frame.id,
                        Message::error(
                            ErrorCode::Denied,
                            format!(
                                "{} may not announce process {:x} as a child of {:x}",
                                client.name, spec.pid, spec.parent
                            ),
                        ),
                    );
                }
                tree
            }
            None => processor.tree_of(spec.parent).unwrap_or(spec.parent),
        };
        processor.join_tree(spec.pid, tree);
        return adopt(
            processor,
            stream,
            writer,
            reader,
            frame.id,
            (spec, tree),
            live,
        );
    }
    if client.role == Role::Process {
        return reply(
            &mut writer,
            frame.id,
            Message::error(
                ErrorCode::Denied,
                format!("{} may only announce a forked process", client.name),
            ),
        );
    }
    let Message::Launch(spec) = frame.message else {
        reply(
            &mut writer,
            frame.id,
            Message::error(ErrorCode::BadRequest, "expected Launch"),
        )?;
        return Err(format!("expected Launch, got {}", frame.message.kind()));
    };
    let stdio = match program_stdio(&spec, fds) {
        Ok(stdio) => stdio,
        Err(why) => {
            return reply(
                &mut writer,
                frame.id,
                Message::error(ErrorCode::BadRequest, why),
            )
        }
    };
    start(
        processor,
        Launcher {
            writer,
            reader,
            id: frame.id,
            caller,
        },
        spec,
        stdio,
    )
}

/// The cluster's owner's `lego run` over TCP (it proved the secret): its
/// program's stdio is relayed, and it runs as this processor's own user.
pub(crate) fn serve_tcp(
    processor: &Arc<Processor>,
    request: lego_proto::Frame,
    stream: std::net::TcpStream,
    reader: FrameReader<std::net::TcpStream>,
) -> Result<(), String> {
    let mut writer = stream;
    // A lost `lego run` is found out even while the program is silent.
    if let Err(e) = lego_transport::keep_alive(&writer) {
        warn!("launch connection: cannot turn keepalive on: {e}");
    }
    let Message::Launch(spec) = request.message else {
        return reply(
            &mut writer,
            request.id,
            Message::error(ErrorCode::BadRequest, "expected Launch"),
        );
    };
    let stdio = match program_stdio(&spec, Vec::new()) {
        Ok(ProgramStdio::Passed(_)) => {
            Err("descriptors cannot be passed over TCP: a remote launch's stdio is relayed".into())
        }
        other => other,
    };
    let stdio = match stdio {
        Ok(stdio) => stdio,
        Err(why) => {
            return reply(
                &mut writer,
                request.id,
                Message::error(ErrorCode::BadRequest, why),
            )
        }
    };
    let caller = own_credentials();
    start(
        processor,
        Launcher {
            writer,
            reader,
            id: request.id,
            caller,
        },
        spec,
        stdio,
    )
}

/// Who this processor runs as: whom a launch by the secret's holder runs
/// as (they could run anything as this user anyway).
fn own_credentials() -> PeerCredentials {
    // Safety: the id getters have no preconditions; getgroups writes at
    // most `groups.len()` ids into our buffer.
    unsafe {
        let mut groups = vec![0 as libc::gid_t; 65536];
        let n = libc::getgroups(groups.len() as i32, groups.as_mut_ptr());
        groups.truncate(n.max(0) as usize);
        groups.sort_unstable();
        groups.dedup();
        PeerCredentials {
            pid: libc::getpid() as u32,
            uid: libc::geteuid(),
            gid: libc::getegid(),
            groups,
        }
    }
}

/// The program's stdin, stdout and stderr as the launch brings them.
enum ProgramStdio {
    /// `lego run`'s own descriptors.
    Passed([OwnedFd; 3]),
    /// Made here and relayed over the launch connection.
    Relayed(relay::Opened),
}

/// Checks `spec` and makes its program's stdio from the descriptors that
/// came with it (three when passed, none when relayed).
fn program_stdio(spec: &LaunchSpec, fds: Vec<OwnedFd>) -> Result<ProgramStdio, String> {
    check_spec(spec)?;
    match &spec.stdio {
        StdioSpec::Passed => <[OwnedFd; 3]>::try_from(fds)
            .map(ProgramStdio::Passed)
            .map_err(|fds| {
                format!(
                    "{} descriptors came with the launch; passed stdio is stdin, stdout and stderr",
                    fds.len()
                )
            }),
        StdioSpec::Relayed(relayed) => {
            if !fds.is_empty() {
                return Err("descriptors came with a launch whose stdio is relayed".into());
            }
            if relayed.terminal.is_some() != spec.controlling_tty {
                return Err(
                    "a relayed terminal is the program's controlling terminal, and only then"
                        .into(),
                );
            }
            relay::open(relayed)
                .map(ProgramStdio::Relayed)
                .map_err(|e| format!("cannot make the program's stdio: {e}"))
        }
    }
}

/// The connection of whoever asked for a launch, and who they are.
struct Launcher<S> {
    writer: S,
    reader: FrameReader<S>,
    /// The `Launch` request's id.
    id: u64,
    caller: PeerCredentials,
}

/// Another user's `lego run`, on the guests' socket: served if the
/// cluster allows who the kernel says connected; its program is placed
/// here and found with the user's own credentials.
fn serve_guest(
    mut stream: UnixStream,
    peer: &Peer,
    processor: &Arc<Processor>,
) -> Result<(), String> {
    let caller =
        peer_credentials(&stream).map_err(|e| format!("cannot tell who connected: {e}"))?;
    handshake::preambles_only(&mut stream, peer, Duration::from_secs(5))
        .map_err(|e| format!("uid {}: {e}", caller.uid))?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let reader = FrameReader::new(
        stream.try_clone().map_err(|e| e.to_string())?,
        FrameLimits::HANDSHAKE,
    );
    if !processor
        .guests
        .allow(caller.uid, caller.gid, &caller.groups)
    {
        warn!("refused a launch by uid {}", caller.uid);
        return reply(
            &mut writer,
            0,
            Message::error(
                ErrorCode::Denied,
                format!(
                    "uid {} may not run programs on this cluster: its owner allows {} \
                     (lego up --allow-users, --allow-group)",
                    caller.uid,
                    processor.guests.describe()
                ),
            ),
        );
    }
    reply(
        &mut writer,
        0,
        Message::GuestAccepted {
            processor: processor.name.clone(),
        },
    )?;
    let mut launcher = Launcher {
        writer,
        reader,
        id: 0,
        caller,
    };
    let fds = recv_fds(&stream).map_err(|e| format!("receiving descriptors from a guest: {e}"))?;
    let frame = launcher
        .reader
        .read_frame()
        .map_err(|e| format!("reading a guest's launch request: {e}"))?;
    launcher.id = frame.id;
    let Message::Launch(spec) = frame.message else {
        return reply(
            &mut launcher.writer,
            frame.id,
            Message::error(ErrorCode::BadRequest, "expected Launch"),
        );
    };
    let stdio = match program_stdio(&spec, fds) {
        Ok(stdio) => stdio,
        Err(why) => {
            return reply(
                &mut launcher.writer,
                frame.id,
                Message::error(ErrorCode::BadRequest, why),
            )
        }
    };
    match crate::guest::place(processor, spec, &launcher.caller) {
        Ok(spec) => start(processor, launcher, spec, stdio),
        Err(refusal) => reply(&mut launcher.writer, frame.id, *refusal),
    }
}

/// Starts the program `launcher` asked for and serves its connection
/// until the program ends.
fn start<S: Stream + Send + 'static>(
    processor: &Arc<Processor>,
    launcher: Launcher<S>,
    spec: LaunchSpec,
    stdio: ProgramStdio,
) -> Result<(), String> {
    let Launcher {
        writer,
        mut reader,
        id,
        caller,
    } = launcher;
    let closer = writer.duplicate().map_err(|e| e.to_string())?;
    let writer: relay::Writer = Arc::new(Mutex::new(writer));
    let (stdio, relay_ends) = match stdio {
        ProgramStdio::Passed(fds) => (fds, None),
        ProgramStdio::Relayed(opened) => (opened.program, Some(opened.ends)),
    };
    let pid = processor.new_pid();
    let command = spec
        .argv
        .iter()
        .map(|a| String::from_utf8_lossy(a))
        .collect::<Vec<_>>()
        .join(" ");
    let runtime_spec = RuntimeSpec {
        pid,
        launch: spec.clone(),
        // The first process of a tree names it.
        tree: pid,
        key_hex: processor.secret.process_key(pid, pid).to_hex(),
        // Whoever asked: the program runs with their credentials.
        voucher: processor.issue(Voucher {
            tree: pid,
            pid,
            uids: [caller.uid; 4],
            gids: [caller.gid; 4],
            groups: caller.groups.clone(),
            caps: lego_proto::Capabilities::of_uid(caller.uid).fs(),
            ..Voucher::default()
        }),
        processor_socket: processor.runtime_socket.clone(),
        processor_name: processor.name.clone(),
    };
    // Before the runtime runs: its first fork may announce itself at once.
    processor.join_tree(pid, pid);
    // A program on storage runs as an unprivileged host identity; one on
    // the processor's own files as the user who launched it.
    let identity = if spec.storage.is_some() && processor.isolates {
        spawn::HostIdentity::Isolated
    } else {
        spawn::HostIdentity::Processor
    };
    let failed = |e: std::io::Error| {
        processor.untrack(pid);
        send_reply(
            &writer,
            id,
            Message::error(ErrorCode::Internal, format!("cannot start a runtime: {e}")),
        )
    };
    let mut runtime = match spawn::spawn(&runtime_spec, stdio, spec.controlling_tty, identity) {
        Ok(runtime) => runtime,
        Err(e) => return failed(e),
    };
    // (The program holds its ends now; the relay has ours.)
    let relay = match relay_ends.map(|ends| relay::Relay::start(ends, Arc::clone(&writer))) {
        None => None,
        Some(Ok(relay)) => Some(relay),
        Some(Err(e)) => {
            // Safety: kill(2) of our own unreaped child.
            unsafe { libc::kill(runtime.host_pid() as i32, libc::SIGKILL) };
            let _ = runtime.wait();
            return failed(e);
        }
    };
    let host_pid = runtime.host_pid();
    info!(
        "started process {pid:x} (runtime pid {host_pid}, home {}): {command}",
        spec.memory_name
    );
    processor.track(
        ProcessInfo {
            pid,
            host_pid,
            command: command.chars().take(256).collect(),
            home_memory: spec.memory_name.clone(),
            backup_memory: spec.memory_backup.as_ref().map(|b| b.name.clone()),
            excache_quota: spec.excache,
            parent: None,
            resident_bytes: 0,
            misses: 0,
        },
        std::sync::Arc::clone(&runtime.live),
    );
    if let Some(control) = runtime.control.take() {
        processor.control(pid, control);
    }
    // (If lego run is gone already, the loop below finds it so and
    // ends the program as for any disconnection.)
    let _ = send_reply(&writer, id, Message::Launched { pid, host_pid });
    let relay = Arc::new(Mutex::new(relay));

    // The waiter reports the end to whoever asked (if anyone still listens).
    let (asked_tx, asked_rx) = mpsc::channel::<u64>();
    // Whether the program still runs: the waiter clears it, holding it,
    // before reaping; a kill holds it too, so it never reaches a reaped
    // (and perhaps recycled) pid, nor the orphans left in its group.
    let running = Arc::new(Mutex::new(true));
    let waiter = {
        let processor = Arc::clone(processor);
        let memory = spec.memory;
        let running = Arc::clone(&running);
        let writer = Arc::clone(&writer);
        let relay = Arc::clone(&relay);
        thread::Builder::new()
            .name(format!("wait {pid:x}"))
            .spawn(move || {
                runtime.wait_ended();
                *running.lock().unwrap_or_else(|p| p.into_inner()) = false;
                let report: ExitReport = runtime.wait();
                info!(
                    "process {pid:x} ended: {:?}{}",
                    report.status,
                    report
                        .error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
                let memory = processor
                    .home_of(pid)
                    .map_or(memory, |home| home.primary.addr);
                processor.untrack(pid);
                // Everything the program wrote goes out before its end
                // (the relay taken out first: the connection's reader
                // must not wait for the drain to hand it input).
                let ending = relay.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(relay) = ending {
                    relay.finish();
                }
                // Answer first: releasing may wait on a memory manager
                // that is gone, and the user should not wait for that.
                if let Ok(id) = asked_rx.recv() {
                    let _ = send_reply(&writer, id, Message::Exited(report));
                }
                processor.release(memory, pid);
            })
            .map_err(|e| e.to_string())?
    };
    reader.set_limits(FrameLimits::DEFAULT);
    // Anything but a clean stream of frames means lego run is gone.
    while let Ok(frame) = reader.read_frame() {
        match frame.message {
            Message::WaitProcess { pid: wanted } if wanted == pid => {
                let _ = asked_tx.send(frame.id);
            }
            // Relayed stdio (nothing to do if it is not relayed).
            Message::Input => {
                let mut within = true;
                with_relay(&relay, |r| within = r.input(&frame.payload));
                if !within {
                    warn!("lego run for process {pid:x} sent more input than its window; cut off");
                    break;
                }
            }
            Message::OutputClosed { stream } => with_relay(&relay, |r| r.output_closed(stream)),
            Message::Resize(size) => with_relay(&relay, |r| r.resize(size)),
            // What the user's signals would do natively: reach their
            // program (and its group), which may not be theirs to signal
            // on the host. No answer: `lego run` sends from its signal
            // thread and waits for nothing.
            Message::SignalProcess {
                pid: wanted,
                signal,
                group,
            } if wanted == pid && (1..=64).contains(&signal) => {
                let running = running.lock().unwrap_or_else(|p| p.into_inner());
                if *running {
                    // Safety: kill(2) with plain integers; as below, the
                    // pid is our unreaped child (`running` is held).
                    unsafe {
                        if !group || libc::kill(-(host_pid as i32), signal) != 0 {
                            libc::kill(host_pid as i32, signal);
                        }
                    }
                }
            }
            other => {
                let refused = Message::error(
                    ErrorCode::BadRequest,
                    format!("unexpected {}", other.kind()),
                );
                if send_reply(&writer, frame.id, refused).is_err() {
                    break;
                }
            }
        }
    }
    closer.close();
    // Nobody asks for the end any more: the waiter does not wait for it.
    drop(asked_tx);
    // lego run went away: if the program still runs, nobody can see it.
    {
        let running = running.lock().unwrap_or_else(|p| p.into_inner());
        if *running {
            warn!("lego run for process {pid:x} disconnected; killing runtime pid {host_pid}");
            // Its process group (its children, unless they left it) with it.
            // Safety: kill(2) with plain integers; the pid is our own
            // child, not yet reaped (`running` is held), so it is not
            // recycled, and it leads the group it made at its start.
            unsafe {
                libc::kill(-(host_pid as i32), libc::SIGKILL);
                libc::kill(host_pid as i32, libc::SIGKILL);
            }
        }
    }
    let _ = waiter.join();
    Ok(())
}

/// Writes a reply on a launch connection several threads write.
fn send_reply(writer: &relay::Writer, id: u64, message: Message) -> Result<(), String> {
    let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
    reply(&mut &mut *writer, id, message)
}

/// Runs `act` on the process's relay while it runs (if its stdio is
/// relayed).
fn with_relay(relay: &Mutex<Option<relay::Relay>>, act: impl FnOnce(&relay::Relay)) {
    if let Some(relay) = relay.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        act(relay);
    }
}

/// A forked process's runtime announcing itself: it is tracked (and shown
/// by `lego ps`) until its connection closes, which its end does; what it
/// sent after `Adopted` is its report. Then its memory is released. Its
/// exit status goes to its parent, which is its host parent too.
fn adopt(
    processor: &Arc<Processor>,
    stream: UnixStream,
    mut writer: UnixStream,
    reader: FrameReader<UnixStream>,
    id: u64,
    (spec, tree): (AdoptSpec, lego_proto::ProcessId),
    live: OwnedFd,
) -> Result<(), String> {
    if reader.buffered() != 0 {
        return reply(
            &mut writer,
            id,
            Message::error(ErrorCode::BadRequest, "bytes after Adopt before its answer"),
        );
    }
    let live = match LiveStats::map(live.as_raw_fd()) {
        Ok(live) => Arc::new(live),
        Err(e) => {
            return reply(
                &mut writer,
                id,
                Message::error(
                    ErrorCode::BadRequest,
                    format!("cannot map the live-counters page: {e}"),
                ),
            )
        }
    };
    let pid = spec.pid;
    info!(
        "process {pid:x} (runtime pid {}) forked from {:x}: {}",
        spec.host_pid, spec.parent, spec.command
    );
    processor.track(
        ProcessInfo {
            pid,
            host_pid: spec.host_pid,
            command: spec.command.chars().take(256).collect(),
            home_memory: spec.memory_name.clone(),
            backup_memory: spec.memory_backup.as_ref().map(|b| b.name.clone()),
            excache_quota: spec.excache,
            parent: Some(spec.parent),
            resident_bytes: 0,
            misses: 0,
        },
        live,
    );
    // Its own voucher (its ids now: those of the thread that forked,
    // whose tid is its pid), so that it need not ask before its first
    // file request.
    let voucher = match vouch(
        processor,
        &stream,
        (tree, pid),
        spec.host_pid,
        spec.host_pid,
    ) {
        Ok(voucher) => voucher,
        Err(e) => {
            processor.untrack(pid);
            return reply(
                &mut writer,
                id,
                Message::error(
                    ErrorCode::Denied,
                    format!("cannot read the credentials of forked process {pid:x}: {e}"),
                ),
            );
        }
    };
    reply(&mut writer, id, Message::Adopted { voucher })?;
    drop(reader);
    // The runtime writes its report here as it ends; the end of the
    // stream is the end of the process (or of its runtime).
    let mut bytes = Vec::new();
    let _ = (&stream).take(1 << 20).read_to_end(&mut bytes);
    let report: Option<RuntimeReport> = postcard::from_bytes(&bytes).ok();
    match report.as_ref().and_then(|r| r.error.as_deref()) {
        Some(error) => warn!("process {pid:x} ended: {error}"),
        None => info!("process {pid:x} ended"),
    }
    let memory = processor
        .home_of(pid)
        .map_or(spec.memory, |home| home.primary.addr);
    processor.untrack(pid);
    // With the process's key, not the secret: the memory manager it names
    // is the runtime's word, so only that pid can be freed there.
    processor.release_for_tree(memory, pid, tree);
    Ok(())
}
