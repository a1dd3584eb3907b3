//! The runtime's conversations with its processor, over the processor's
//! launch socket: a forked process announcing itself (`syscall::fork`),
//! a process asking for a voucher of its new credentials
//! (`process::credentials`), a process binding or connecting a socket at
//! a path (`syscall::socket`).

use super::Runtime;
use lego_proto::{FrameLimits, MemoryHome, Message, ProcessId};
use lego_transport::{handshake, write_frame, FrameReader, Identity};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

/// An authenticated connection to the processor for process `pid`, with
/// the process's key; descriptors lifted above the floor.
pub fn session(
    rt: &Runtime,
    pid: ProcessId,
) -> Result<(UnixStream, FrameReader<UnixStream>), String> {
    let name = &rt.home.processor_socket;
    let path: std::path::PathBuf = format!("@{}", String::from_utf8_lossy(name)).into();
    let stream = SocketAddr::from_abstract_name(name)
        .and_then(|addr| UnixStream::connect_addr(&addr))
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let mut stream = lego_transport::fdfloor::lift(stream).map_err(|e| e.to_string())?;
    let reading = lego_transport::fdfloor::lift(stream.try_clone().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(reading, FrameLimits::HANDSHAKE);
    handshake::client(
        &mut stream,
        &mut reader,
        &path.as_path().into(),
        &rt.home.key.get(),
        &Identity::process(rt.home.tree, pid),
        Duration::from_secs(5),
    )
    .map_err(|e| e.to_string())?;
    Ok((stream, reader))
}

/// Has the processor bind (or connect) the program's socket `fd` to the
/// socket file at `path` (absolute) with the calling thread's ids: the
/// errno the call gave, or 0.
pub fn socket_at(rt: &Runtime, fd: i32, path: &[u8], connect: bool) -> Result<i32, String> {
    let (mut stream, mut reader) = session(rt, rt.mm.remote.pid())?;
    lego_transport::fdpass::send_fds(&stream, &[fd]).map_err(|e| e.to_string())?;
    let tid = crate::host::gettid() as u32;
    let ask = Message::SocketAt {
        connect,
        tid,
        path: path.to_vec(),
    };
    write_frame(&mut stream, 1, &ask, &[]).map_err(|e| e.to_string())?;
    match reader.read_frame().map_err(|e| e.to_string())?.message {
        Message::SocketDone { errno } => Ok(errno),
        Message::Error(e) => Err(e.message),
        other => Err(format!("answered SocketAt with {}", other.kind())),
    }
}

/// Has the processor fail the process over from `failed`, a memory
/// manager of `home` (the monitor decides): where its memory lives now.
pub fn fail_over(rt: &Runtime, home: &MemoryHome, failed: &str) -> Result<MemoryHome, String> {
    let pid = rt.mm.remote.pid();
    let (mut stream, mut reader) = session(rt, pid)?;
    // The launch socket takes a descriptor message first; this one has none.
    std::io::Write::write_all(&mut stream, &[0]).map_err(|e| e.to_string())?;
    let ask = Message::Failover {
        pid,
        tree: rt.home.tree,
        home: home.clone(),
        failed: failed.to_string(),
    };
    write_frame(&mut stream, 1, &ask, &[]).map_err(|e| e.to_string())?;
    match reader.read_frame().map_err(|e| e.to_string())?.message {
        Message::MemoryMoved(home) => Ok(home),
        Message::Error(e) => Err(e.message),
        other => Err(format!("answered Failover with {}", other.kind())),
    }
}
