//! The processor's control socket ([`CONTROL_FD`]): a runtime thread of
//! its own serves `Freeze` (every application thread stopped at a
//! boundary, dirty pages written back, the state taken and sent as the
//! payload of `Frozen`) and `Thaw` (the threads run on). Only the tree's
//! first process has one; a forked process closes the one it inherited
//! (it is its parent's).
//!
//! May call: `mm`, `task`, `host` (through [`Runtime`]).

use super::Runtime;
use lego_proto::runtime::CONTROL_FD;
use lego_proto::{ErrorCode, FrameLimits, Message};
use lego_transport::{write_frame, FrameReader, ReadError};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// Where [`CONTROL_FD`] was moved, above the program's descriptors (-1:
/// none).
static CONTROL: AtomicI32 = AtomicI32::new(-1);

/// Moves the control socket the processor handed over above the floor,
/// freeing its number for the program.
pub fn lift() {
    // Safety: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_GETFD) } < 0 {
        return;
    }
    if let Ok(fd) = lego_transport::fdfloor::lift_fd(CONTROL_FD) {
        CONTROL.store(fd, Ordering::SeqCst);
    }
}

/// In a forked process: the control socket is its parent's.
pub fn forget_after_fork() {
    let fd = CONTROL.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // Safety: our copy of the parent's socket, used by nothing here.
        unsafe { libc::close(fd) };
    }
}

/// Serves the control socket, if there is one, on a thread of its own.
pub fn serve(rt: &'static Runtime) -> Result<(), String> {
    let fd: RawFd = CONTROL.load(Ordering::SeqCst);
    if fd < 0 {
        return Ok(());
    }
    // Safety: the lifted control socket, owned by this thread from here.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let reader = stream
        .try_clone()
        .map_err(|e| format!("cannot use the control socket: {e}"))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            // The application's signals are never taken on this thread.
            crate::host::block_all_signals();
            control_loop(rt, stream, FrameReader::new(reader, FrameLimits::DEFAULT))
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the control thread: {e}"))
}

/// How long a frozen process waits for `Thaw` before it thaws itself
/// (its processor gave up on it, or is stuck).
const FROZEN_LIMIT: Duration = Duration::from_secs(60);

fn control_loop(rt: &'static Runtime, mut writer: UnixStream, mut reader: FrameReader<UnixStream>) {
    let mut frozen = false;
    loop {
        let _ = reader
            .get_ref()
            .set_read_timeout(frozen.then_some(FROZEN_LIMIT));
        let frame = match reader.read_frame() {
            Ok(frame) => frame,
            Err(ReadError::TimedOut) => {
                tracing::warn!("no Thaw within {FROZEN_LIMIT:?} of a Freeze: running on");
                frozen = false;
                rt.thaw();
                continue;
            }
            // The processor's end closing is the processor's end (the
            // process dies with it), or its giving up on this socket.
            Err(_) => break,
        };
        let (answer, payload) = match frame.message {
            Message::Freeze if !frozen => match freeze(rt) {
                Ok((report, state)) => {
                    frozen = true;
                    (Message::Frozen(report), state)
                }
                Err(why) => (
                    Message::error(ErrorCode::Internal, format!("cannot freeze: {why}")),
                    Vec::new(),
                ),
            },
            Message::Freeze => (
                Message::error(ErrorCode::BadRequest, "already frozen"),
                Vec::new(),
            ),
            Message::Thaw => {
                if std::mem::take(&mut frozen) {
                    rt.thaw();
                }
                (Message::Thawed, Vec::new())
            }
            other => (
                Message::error(
                    ErrorCode::BadRequest,
                    format!("the control socket serves no {}", other.kind()),
                ),
                Vec::new(),
            ),
        };
        if write_frame(&mut writer, frame.id, &answer, &payload).is_err() {
            break;
        }
    }
    if frozen {
        rt.thaw();
    }
}

fn freeze(rt: &Runtime) -> Result<(lego_proto::runtime::FreezeReport, Vec<u8>), String> {
    let (state, mut report) = rt.freeze()?;
    let bytes = match state.to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            rt.thaw();
            return Err(format!("cannot encode the state: {e}"));
        }
    };
    report.state_bytes = bytes.len() as u64;
    Ok((report, bytes))
}
