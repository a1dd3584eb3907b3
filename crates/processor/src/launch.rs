//! The launch socket: a Unix socket on which `lego run` asks this
//! processor to start a program, hands over the program's stdin, stdout
//! and stderr, and waits for the program to end.
//!
//! One connection per process:
//! ```text
//! handshake; descriptors 0-2 (SCM_RIGHTS); Launch → Launched;
//! WaitProcess → Exited (when it ends)
//! ```
//! If the connection drops before the program ends (the user's `lego run`
//! died), the program is killed: nobody could see its output or status.

use crate::spawn;
use crate::Processor;
use lego_proto::live::LiveStats;
use lego_proto::runtime::{RuntimeReport, RuntimeSpec};
use lego_proto::AdoptSpec;
use lego_proto::{
    ErrorCode, ExitReport, FrameLimits, LaunchSpec, Message, ProcessInfo, Role, Voucher, MAX_ARGS,
    MAX_ARGS_BYTES,
};
use lego_transport::fdpass::recv_fds;
use lego_transport::peercred::{peer_credentials, peer_still_runs};
use lego_transport::{handshake, write_frame, ClusterSecret, FrameReader, Identity, Peer};
use std::io::Read;
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
    let abstract_name = SocketAddr::from_abstract_name(&processor.runtime_socket)?;
    let runtimes = UnixListener::bind_addr(&abstract_name)?;
    accept(listener, path.into(), Arc::clone(&processor))?;
    accept(runtimes, path.into(), processor)
}

/// Serves every connection to `listener`, each on a thread of its own.
fn accept(listener: UnixListener, peer: Peer, processor: Arc<Processor>) -> std::io::Result<()> {
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
                        if let Err(e) = serve_connection(stream, &peer, &processor) {
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

fn sealed(secret: &ClusterSecret, mut voucher: Voucher) -> Voucher {
    secret.seal_voucher(&mut voucher);
    voucher
}

/// A voucher for the credentials thread `tid` of host process `pid` has
/// now, read from the kernel: the process's runtime says nothing about
/// them. `pid` is the connected peer (blocked on our answer, so not
/// recycled); `tid` must be one of its threads.
fn vouch(
    secret: &ClusterSecret,
    stream: &UnixStream,
    tree: u64,
    pid: u32,
    tid: u32,
) -> std::io::Result<Voucher> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
    // The peer may have ended and its pid been reused while we read: the
    // ids are its only if it still runs now.
    if !peer_still_runs(stream)? {
        return Err(std::io::Error::other(
            "the process ended while its ids were read",
        ));
    }
    let malformed = || std::io::Error::other("a status file without Uid, Gid or Groups");
    let ids = |key: &str| -> Option<Vec<u32>> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        line.split_whitespace().map(|id| id.parse().ok()).collect()
    };
    let uids = ids("Uid:").and_then(|v| <[u32; 4]>::try_from(v).ok());
    let gids = ids("Gid:").and_then(|v| <[u32; 4]>::try_from(v).ok());
    let (Some(uids), Some(gids), Some(mut groups)) = (uids, gids, ids("Groups:")) else {
        return Err(malformed());
    };
    groups.sort_unstable();
    Ok(sealed(
        secret,
        Voucher {
            tree,
            uids,
            gids,
            groups,
            seal: [0; 32],
        },
    ))
}

fn reply(stream: &mut UnixStream, id: u64, message: Message) -> Result<(), String> {
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
        let tree = client.tree().unwrap_or(0);
        let answer = match vouch(&processor.secret, &stream, tree, caller.pid, tid) {
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
                let parent_ok = processor.tree_of(spec.parent) == Some(tree);
                if !parent_ok || processor.known(spec.pid) {
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
    let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
        return Err(format!(
            "{} sent the wrong number of descriptors (want stdin, stdout, stderr)",
            client.name
        ));
    };
    let Message::Launch(spec) = frame.message else {
        reply(
            &mut writer,
            frame.id,
            Message::error(ErrorCode::BadRequest, "expected Launch"),
        )?;
        return Err(format!("expected Launch, got {}", frame.message.kind()));
    };
    if let Err(why) = check_spec(&spec) {
        return reply(
            &mut writer,
            frame.id,
            Message::error(ErrorCode::BadRequest, why),
        );
    }
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
        tree_key_hex: processor.secret.tree_key(pid).to_hex(),
        // Whoever asked: the program runs with their credentials.
        voucher: sealed(
            &processor.secret,
            Voucher {
                tree: pid,
                uids: [caller.uid; 4],
                gids: [caller.gid; 4],
                groups: caller.groups.clone(),
                seal: [0; 32],
            },
        ),
        processor_socket: processor.runtime_socket.clone(),
        processor_name: processor.name.clone(),
    };
    // Before the runtime runs: its first fork may announce itself at once.
    processor.join_tree(pid, pid);
    let runtime = match spawn::spawn(&runtime_spec, stdio, spec.controlling_tty) {
        Ok(runtime) => runtime,
        Err(e) => {
            processor.untrack(pid);
            return reply(
                &mut writer,
                frame.id,
                Message::error(ErrorCode::Internal, format!("cannot start a runtime: {e}")),
            );
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
            excache_quota: spec.excache,
            parent: None,
            resident_bytes: 0,
            misses: 0,
        },
        std::sync::Arc::clone(&runtime.live),
    );
    reply(&mut writer, frame.id, Message::Launched { pid, host_pid })?;

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
        let mut writer = writer.try_clone().map_err(|e| e.to_string())?;
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
                processor.untrack(pid);
                // Answer first: releasing may wait on a memory manager
                // that is gone, and the user should not wait for that.
                if let Ok(id) = asked_rx.recv() {
                    let _ = write_frame(&mut writer, id, &Message::Exited(report), &[]);
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
            other => reply(
                &mut writer,
                frame.id,
                Message::error(
                    ErrorCode::BadRequest,
                    format!("unexpected {}", other.kind()),
                ),
            )?,
        }
    }
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
            excache_quota: spec.excache,
            parent: Some(spec.parent),
            resident_bytes: 0,
            misses: 0,
        },
        live,
    );
    reply(&mut writer, id, Message::Adopted)?;
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
    processor.untrack(pid);
    // With the tree's key, not the secret: the memory manager it names is
    // the runtime's word, so only its own tree's pid can be freed there.
    processor.release_for_tree(spec.memory, pid, tree);
    Ok(())
}
