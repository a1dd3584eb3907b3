//! Reading and writing frames on a stream.

use lego_proto::{decode_head, encode_frame_header, CodecError, Frame, FrameLimits, Message};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How much the read buffer grows by when a frame's size is not yet known.
const READ_CHUNK: usize = 64 * 1024;

/// Payloads at least this long that have not all arrived with their
/// header are received straight into a buffer of their own (pages of a
/// fetch or a write-back), not into the read buffer and copied out.
const DIRECT_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("peer closed the connection")]
    Closed,
    #[error("peer closed the connection in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("read timed out")]
    TimedOut,
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("read failed: {0}")]
    Io(io::Error),
}

/// Decodes frames from a stream, keeping partial frames across read
/// timeouts so a timeout never desynchronises the stream.
pub struct FrameReader<R> {
    stream: R,
    buf: Vec<u8>,
    /// `buf[start..end]` holds bytes received and not yet decoded.
    start: usize,
    end: usize,
    limits: FrameLimits,
    /// A frame whose header is decoded and whose long payload is being
    /// received into its own buffer (of its whole length; the bytes
    /// received so far).
    partial: Option<(Frame, usize)>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(stream: R, limits: FrameLimits) -> FrameReader<R> {
        FrameReader {
            stream,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            limits,
            partial: None,
        }
    }

    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.end - self.start + self.partial.as_ref().map_or(0, |(_, filled)| *filled)
    }

    pub fn get_ref(&self) -> &R {
        &self.stream
    }

    /// Reads until one whole frame has arrived. Limits are enforced as soon
    /// as the bytes that carry them are in, before the frame is buffered.
    pub fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            let read = self.fill(|stream, free| stream.read(free));
            self.account(read)?;
        }
    }

    /// Reads with `read` into where the next bytes go: the payload of a
    /// partial frame (booked there), else the read buffer.
    fn fill(
        &mut self,
        read: impl FnOnce(&mut R, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        match self.partial.as_mut() {
            Some((frame, filled)) => {
                let got = read(&mut self.stream, &mut frame.payload[*filled..]);
                *filled += *got.as_ref().unwrap_or(&0);
                got
            }
            None => {
                self.make_room();
                read(&mut self.stream, &mut self.buf[self.end..])
            }
        }
    }

    /// Decodes a frame already buffered, if there is a whole one; a long
    /// payload still arriving behind its header moves to a buffer of its
    /// own, which reads fill from then on.
    fn take_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        if let Some((frame, filled)) = &self.partial {
            if *filled < frame.payload.len() {
                return Ok(None);
            }
            return Ok(self.partial.take().map(|(frame, _)| frame));
        }
        let pending = &self.buf[self.start..self.end];
        let Some(head) = decode_head(pending, self.limits)? else {
            return Ok(None);
        };
        let payload = match pending.get(head.header_end..head.total) {
            Some(payload) => payload.to_vec(),
            None if head.payload_len() >= DIRECT_PAYLOAD => {
                // Zeroed by the allocator (fresh pages), not written twice.
                let mut payload = vec![0; head.payload_len()];
                let arrived = &pending[head.header_end..];
                payload[..arrived.len()].copy_from_slice(arrived);
                let filled = arrived.len();
                self.start = 0;
                self.end = 0;
                let frame = Frame {
                    id: head.id,
                    message: head.message,
                    payload,
                };
                self.partial = Some((frame, filled));
                return Ok(None);
            }
            None => return Ok(None),
        };
        self.start += head.total;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(Frame {
            id: head.id,
            message: head.message,
            payload,
        }))
    }

    /// Books the outcome of one read into the buffer.
    fn account(&mut self, read: io::Result<usize>) -> Result<(), ReadError> {
        match read {
            Ok(0) if self.buffered() == 0 && self.partial.is_none() => Err(ReadError::Closed),
            Ok(0) => Err(ReadError::Truncated {
                buffered: self.buffered(),
            }),
            // Bytes read into a partial frame's payload are booked there.
            Ok(_) if self.partial.is_some() => Ok(()),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::TimedOut)
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }
}

impl<R: Read + AsRawFd> FrameReader<R> {
    /// Like [`FrameReader::read_frame`], but polls the socket without
    /// blocking for up to `spin` before it sleeps in a blocking read. A
    /// reply that arrives within the spin is picked up without the cost of
    /// waking a halted CPU, which on a VM dwarfs a loopback round trip.
    pub fn read_frame_spinning(&mut self, spin: Duration) -> Result<Frame, ReadError> {
        let started = Instant::now();
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            let fd = self.stream.as_raw_fd();
            let recv = |free: &mut [u8]| {
                // Safety: recv writes at most `free.len()` bytes into
                // `free`, which we own for the duration of the call.
                let n = unsafe {
                    libc::recv(fd, free.as_mut_ptr().cast(), free.len(), libc::MSG_DONTWAIT)
                };
                if n >= 0 {
                    Ok(n as usize)
                } else {
                    Err(io::Error::last_os_error())
                }
            };
            let read = self.fill(|_, free| recv(free));
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if started.elapsed() >= spin {
                        return self.read_frame();
                    }
                    // Yield, not spin: the peer or the thread that will
                    // make the next request may be waiting for this CPU.
                    std::thread::yield_now();
                }
                read => self.account(read)?,
            }
        }
    }
}

impl<R: Read> FrameReader<R> {
    /// Ensures free space after `end`: the rest of the frame being received
    /// when its length is known (already checked against the limits by
    /// `decode_frame`), and never less than a small read.
    fn make_room(&mut self) {
        let pending = self.end - self.start;
        let frame_total = match self.buf[self.start..self.end].get(..4) {
            Some(len) => 4 + u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize,
            None => 0,
        };
        let free_wanted = frame_total.saturating_sub(pending).max(4096);
        if self.buf.len() - self.end >= free_wanted {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
        if self.buf.len() - self.end < free_wanted {
            self.buf.resize(self.end + free_wanted.max(READ_CHUNK), 0);
        }
    }
}

/// Has the kernel probe an idle TCP connection, so that a peer cut off
/// for good (its host gone, a partition) is found out within about half
/// a minute rather than never: for long-lived connections on which one
/// side may wait in silence (a launch whose program writes nothing).
pub fn keep_alive(stream: &std::net::TcpStream) -> io::Result<()> {
    let set = |level, name, value: libc::c_int| {
        // Safety: setsockopt reads one int of ours.
        let ret = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4)
}

/// Writes one frame: the encoded header, then the payload straight from the
/// caller's buffer (no copy through the serializer).
pub fn write_frame(
    stream: &mut impl Write,
    id: u64,
    message: &Message,
    payload: &[u8],
) -> Result<(), WriteError> {
    write_frame_parts(stream, id, message, &[payload])
}

/// Writes one frame whose payload is the concatenation of `parts`, each
/// sent straight from where it lies (pages from the arena, say) with one
/// vectored write per kernel call.
pub fn write_frame_parts(
    stream: &mut impl Write,
    id: u64,
    message: &Message,
    parts: &[&[u8]],
) -> Result<(), WriteError> {
    let payload_len = parts.iter().map(|p| p.len()).sum();
    let mut header = Vec::with_capacity(64);
    encode_frame_header(id, message, payload_len, &mut header).map_err(WriteError::Encode)?;
    let mut slices = Vec::with_capacity(parts.len() + 1);
    slices.push(IoSlice::new(&header));
    slices.extend(parts.iter().map(|p| IoSlice::new(p)));
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match stream.write_vectored(bufs) {
            Ok(0) => {
                return Err(WriteError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "peer stopped accepting data",
                )))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WriteError::Io(e)),
        }
    }
    Ok(())
}

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("{0}")]
    Encode(CodecError),
    #[error("write failed: {0}")]
    Io(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes a few at a time.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_reassemble_from_any_split() {
        let mut wire = Vec::new();
        let big = vec![0xab; 300_000];
        write_frame(&mut wire, 1, &Message::Ping, &[]).unwrap();
        write_frame(&mut wire, 2, &Message::Pong, &big).unwrap();
        write_frame(&mut wire, 3, &Message::HeartbeatAck, b"tail").unwrap();
        for step in [1, 7, 4096, 1 << 20] {
            let mut reader = FrameReader::new(
                Trickle {
                    data: wire.clone(),
                    pos: 0,
                    step,
                },
                FrameLimits::DEFAULT,
            );
            assert_eq!(reader.read_frame().unwrap(), Frame::new(1, Message::Ping));
            let second = reader.read_frame().unwrap();
            assert_eq!((second.id, second.payload.len()), (2, big.len()));
            assert_eq!(second.payload, big);
            assert_eq!(reader.read_frame().unwrap().payload, b"tail");
            assert!(matches!(reader.read_frame(), Err(ReadError::Closed)));
        }
    }

    /// A reader that times out before every other read.
    struct Stutter {
        inner: Trickle,
        stall: bool,
    }

    impl Read for Stutter {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.stall = !self.stall;
            if self.stall {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.inner.read(out)
        }
    }

    /// A read timing out in the middle of a long payload (received into a
    /// buffer of its own) loses nothing: the next read goes on with it.
    #[test]
    fn timeouts_inside_a_long_payload_keep_the_stream_in_step() {
        let mut wire = Vec::new();
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        write_frame(&mut wire, 1, &Message::Pong, &big).unwrap();
        write_frame(&mut wire, 2, &Message::Ping, b"next").unwrap();
        let mut reader = FrameReader::new(
            Stutter {
                inner: Trickle {
                    data: wire,
                    pos: 0,
                    step: 10_000,
                },
                stall: false,
            },
            FrameLimits::DEFAULT,
        );
        let mut frames = Vec::new();
        let mut timeouts = 0;
        while frames.len() < 2 {
            match reader.read_frame() {
                Ok(frame) => frames.push(frame),
                Err(ReadError::TimedOut) => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(timeouts > 10, "{timeouts} timeouts");
        assert_eq!(frames[0].payload, big);
        assert_eq!(frames[1], {
            let mut f = Frame::new(2, Message::Ping);
            f.payload = b"next".to_vec();
            f
        });
        assert!(matches!(reader.read_frame(), Err(ReadError::TimedOut)));
        assert!(matches!(reader.read_frame(), Err(ReadError::Closed)));
    }

    #[test]
    fn eof_inside_a_frame_is_reported_as_truncation() {
        let mut wire = Vec::new();
        write_frame(&mut wire, 1, &Message::Ping, &[1, 2, 3]).unwrap();
        wire.pop();
        let mut reader = FrameReader::new(&wire[..], FrameLimits::DEFAULT);
        assert!(matches!(
            reader.read_frame(),
            Err(ReadError::Truncated { .. })
        ));
    }
}
