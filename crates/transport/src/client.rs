//! The client side: a pipelined [`Connection`], and a [`Client`] that
//! (re)connects with bounded backoff.
//!
//! Pipelining without a reader thread: many threads may have requests in
//! flight on one connection; whichever of them finds the socket unattended
//! reads it, files each reply it receives under that reply's request id, and
//! wakes the others. A lone caller therefore reads its own reply on its own
//! thread — no hand-off between threads on the latency-critical path.

use crate::error::TransportError;
use crate::handshake::{self, Identity};
use crate::io::{write_frame_parts, FrameReader, ReadError, WriteError};
use crate::secret::ClusterSecret;
use lego_proto::{Frame, FrameLimits, Message};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a caller polls for its reply before sleeping: long enough to
/// cover a loopback round trip, short enough not to matter when idle.
const REPLY_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Requests that may be in flight on one connection at once.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Replies received but not yet collected, and who is reading the socket.
struct Mailbox {
    /// Request id → its reply once it arrived. An id is present from the
    /// moment its request is sent until its caller collects or gives up.
    waiting: HashMap<u64, Option<Frame>>,
    /// Set once the connection is unusable; every later call fails with it.
    broken: Option<String>,
    /// True while one caller is reading the socket for everyone.
    reader_busy: bool,
}

/// A request sent and not yet answered.
#[derive(Debug)]
pub struct Pending {
    id: u64,
    request: &'static str,
}

/// One authenticated connection to a peer.
pub struct Connection {
    addr: SocketAddr,
    peer: Identity,
    writer: Mutex<TcpStream>,
    reader: Mutex<FrameReader<TcpStream>>,
    mailbox: Mutex<Mailbox>,
    arrived: Condvar,
    next_id: AtomicU64,
    /// When the connection was opened: the origin of `last_read`.
    opened: Instant,
    /// When a frame last arrived, in nanoseconds since `opened`.
    last_read: AtomicU64,
}

/// How long a connection may sit unread before [`Connection::hung_up`]
/// asks the socket whether the peer went away meanwhile.
const IDLE_CHECK: Duration = Duration::from_millis(20);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind
    // (no invariant spans the critical sections), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connection {
    /// Connects to `addr` and runs the handshake.
    pub fn open(
        addr: SocketAddr,
        secret: &ClusterSecret,
        me: &Identity,
        timeout: Duration,
    ) -> Result<Connection, TransportError> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .and_then(crate::fdfloor::lift)
            .map_err(|source| TransportError::Connect {
                addr: addr.into(),
                source,
            })?;
        // With nothing listening, a connection to a port of this host can
        // be given that very port as its own and connect to itself (TCP
        // simultaneous open): it would hold the port a restarting server
        // needs and read its own preamble. It is a refusal, tried again.
        if stream.local_addr().ok() == Some(addr) {
            return Err(TransportError::Connect {
                addr: addr.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connected to itself: nothing listens there",
                ),
            });
        }
        stream
            .set_nodelay(true)
            .map_err(|source| TransportError::Connect {
                addr: addr.into(),
                source,
            })?;
        let read_half = stream
            .try_clone()
            .and_then(crate::fdfloor::lift)
            .map_err(|source| TransportError::Connect {
                addr: addr.into(),
                source,
            })?;
        let mut reader = FrameReader::new(read_half, FrameLimits::HANDSHAKE);
        let peer = handshake::client(&mut stream, &mut reader, &addr.into(), secret, me, timeout)?;
        Ok(Connection {
            addr,
            peer,
            writer: Mutex::new(stream),
            reader: Mutex::new(reader),
            mailbox: Mutex::new(Mailbox {
                waiting: HashMap::new(),
                broken: None,
                reader_busy: false,
            }),
            arrived: Condvar::new(),
            next_id: AtomicU64::new(1),
            opened: Instant::now(),
            last_read: AtomicU64::new(0),
        })
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer's identity, as it stated during the handshake.
    pub fn peer(&self) -> &Identity {
        &self.peer
    }

    /// Bounds every send on this connection: a write that makes no
    /// progress for `timeout` (the peer stopped reading: cut off by a
    /// partition, or stuck) fails and breaks the connection, instead of
    /// blocking its sender, and every sender queued behind it, until TCP
    /// gives up many minutes later. A slow but moving peer is not cut off:
    /// the bound is per write.
    pub fn bound_sends(&self, timeout: Duration) -> Result<(), TransportError> {
        lock(&self.writer)
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|source| TransportError::Connect {
                addr: self.addr.into(),
                source,
            })
    }

    /// True once an error has made this connection unusable.
    pub fn is_broken(&self) -> bool {
        lock(&self.mailbox).broken.is_some()
    }

    /// True if the peer closed or reset this idle connection: with no
    /// reader there is nobody to notice a peer that went away between
    /// calls (a manager killed and restarted at the same address), so
    /// the next request would be sent to the dead conversation and fail.
    /// Asked of a connection with nothing in flight, unread for a while;
    /// a hang-up found breaks the connection. One non-blocking peek.
    pub fn hung_up(&self) -> bool {
        let mut mailbox = lock(&self.mailbox);
        if mailbox.broken.is_some() {
            return true;
        }
        if !mailbox.waiting.is_empty() || mailbox.reader_busy {
            return false;
        }
        let read = Duration::from_nanos(self.last_read.load(Ordering::Relaxed));
        if self.opened.elapsed().saturating_sub(read) < IDLE_CHECK {
            return false;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*lock(&self.writer));
        let mut byte = 0u8;
        // SAFETY: `fd` is this connection's open socket (the writer is
        // held, so it is not closed meanwhile), and the buffer is one
        // writable byte; MSG_PEEK leaves whatever is there for the reader
        // and MSG_DONTWAIT keeps the call from blocking.
        let got = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let reason = match got {
            0 => ReadError::Closed.to_string(),
            n if n > 0 => return false,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted
                {
                    return false;
                }
                format!("read failed: {e}")
            }
        };
        self.break_connection(&mut mailbox, reason);
        true
    }

    /// Sends one request and waits up to `timeout` for its reply.
    pub fn call(
        &self,
        message: &Message,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Frame, TransportError> {
        let pending = self.send(message, &[payload])?;
        self.wait(pending, timeout)
    }

    /// Sends one request whose payload is the concatenation of `parts`,
    /// without waiting for the reply: collect it with [`Connection::wait`].
    /// Replies on one connection come in request order.
    pub fn send(&self, message: &Message, parts: &[&[u8]]) -> Result<Pending, TransportError> {
        let request = message.kind();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut mailbox = lock(&self.mailbox);
            if let Some(reason) = &mailbox.broken {
                return Err(self.gone(reason.clone()));
            }
            if mailbox.waiting.len() >= MAX_IN_FLIGHT {
                return Err(TransportError::PeerGone {
                    addr: self.addr.into(),
                    reason: format!("{MAX_IN_FLIGHT} requests already in flight"),
                });
            }
            mailbox.waiting.insert(id, None);
        }
        let sent = write_frame_parts(&mut *lock(&self.writer), id, message, parts);
        if let Err(e) = sent {
            let mut mailbox = lock(&self.mailbox);
            mailbox.waiting.remove(&id);
            return Err(match e {
                WriteError::Encode(source) => TransportError::Encode {
                    addr: self.addr.into(),
                    request,
                    source,
                },
                WriteError::Io(e) => {
                    let reason = match e.kind() {
                        // The bound of `bound_sends`.
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                            format!("sending {request}: the peer stopped taking data")
                        }
                        _ => format!("sending {request}: {e}"),
                    };
                    self.break_connection(&mut mailbox, reason.clone());
                    self.gone(reason)
                }
            });
        }
        Ok(Pending { id, request })
    }

    /// Waits up to `timeout` for the reply to a request [`Connection::send`]
    /// sent.
    pub fn wait(&self, pending: Pending, timeout: Duration) -> Result<Frame, TransportError> {
        self.await_reply(
            pending.id,
            pending.request,
            Instant::now() + timeout,
            timeout,
        )
    }

    fn await_reply(
        &self,
        id: u64,
        request: &'static str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Frame, TransportError> {
        let mut mailbox = lock(&self.mailbox);
        loop {
            if let Some(Some(_)) = mailbox.waiting.get(&id) {
                let reply = mailbox.waiting.remove(&id).flatten();
                return reply.ok_or_else(|| self.gone("reply vanished".into()));
            }
            if let Some(reason) = &mailbox.broken {
                let reason = reason.clone();
                mailbox.waiting.remove(&id);
                return Err(self.gone(reason));
            }
            let now = Instant::now();
            if now >= deadline {
                mailbox.waiting.remove(&id);
                return Err(TransportError::Timeout {
                    addr: self.addr.into(),
                    request,
                    after: timeout,
                });
            }
            let remaining = deadline - now;
            if mailbox.reader_busy {
                mailbox = self
                    .arrived
                    .wait_timeout(mailbox, remaining)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
                continue;
            }
            // Nobody is reading: read one frame for everyone.
            mailbox.reader_busy = true;
            drop(mailbox);
            let result = {
                let mut reader = lock(&self.reader);
                // A zero timeout means "block forever" to the socket layer.
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(remaining.max(Duration::from_millis(1))));
                reader.read_frame_spinning(REPLY_SPIN)
            };
            mailbox = lock(&self.mailbox);
            mailbox.reader_busy = false;
            match result {
                Ok(frame) => {
                    let now = self.opened.elapsed().as_nanos();
                    self.last_read
                        .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
                    if let Some(slot) = mailbox.waiting.get_mut(&frame.id) {
                        *slot = Some(frame);
                    }
                    // Replies to requests whose callers gave up are dropped.
                }
                Err(ReadError::TimedOut) => {}
                Err(ReadError::Codec(source)) => {
                    let reason = format!("malformed frame: {source}");
                    self.break_connection(&mut mailbox, reason);
                }
                Err(e) => self.break_connection(&mut mailbox, e.to_string()),
            }
            self.arrived.notify_all();
        }
    }

    fn break_connection(&self, mailbox: &mut Mailbox, reason: String) {
        if mailbox.broken.is_none() {
            mailbox.broken = Some(reason);
            let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
        }
        self.arrived.notify_all();
    }

    fn gone(&self, reason: String) -> TransportError {
        TransportError::PeerGone {
            addr: self.addr.into(),
            reason,
        }
    }
}

/// How persistently a [`Client`] reconnects.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failed attempt; doubled after each further one.
    pub initial: Duration,
    /// Ceiling on the delay between attempts.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub give_up_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            give_up_after: Duration::from_secs(5),
        }
    }
}

/// Settings shared by every connection a [`Client`] makes.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub secret: ClusterSecret,
    pub identity: Identity,
    /// Bound on connecting and on the handshake.
    pub connect_timeout: Duration,
    /// Bound on waiting for each reply, and on a send that makes no
    /// progress (see [`Connection::bound_sends`]).
    pub request_timeout: Duration,
    pub backoff: Backoff,
}

impl ClientConfig {
    pub fn new(secret: ClusterSecret, identity: Identity) -> ClientConfig {
        ClientConfig {
            secret,
            identity,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
        }
    }
}

/// A connection to one peer that is re-established when it breaks.
///
/// A request is never resent behind the caller's back (it may not be
/// idempotent): a call on a broken connection fails, and the next call
/// reconnects.
pub struct Client {
    addr: SocketAddr,
    config: ClientConfig,
    /// Who new connections authenticate as (the config's, until
    /// `speak_as`).
    speaker: Mutex<(ClusterSecret, Identity)>,
    current: Mutex<Option<Arc<Connection>>>,
}

impl Client {
    pub fn new(addr: SocketAddr, mut config: ClientConfig) -> Client {
        // The key lives in `speaker` alone (replaced there by `speak_as`).
        let secret = std::mem::replace(&mut config.secret, ClusterSecret::from_bytes([0; 32]));
        Client {
            addr,
            speaker: Mutex::new((secret, config.identity.clone())),
            config,
            current: Mutex::new(None),
        }
    }

    /// New connections authenticate as `identity` with `secret` (a forked
    /// runtime speaks for its own process); the one open stays as it is.
    /// Takes no lock a `ClientHold` holds.
    pub fn speak_as(&self, secret: ClusterSecret, identity: Identity) {
        *lock(&self.speaker) = (secret, identity);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configured bound on waiting for a reply.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// Sends one request with the configured timeout.
    pub fn call(&self, message: &Message, payload: &[u8]) -> Result<Frame, TransportError> {
        let connection = self.connection()?;
        let result = connection.call(message, payload, self.config.request_timeout);
        if let Err(e) = &result {
            if e.breaks_connection() {
                self.forget(&connection);
            }
        }
        result
    }

    /// The live connection, connecting (with backoff) if there is none.
    pub fn connection(&self) -> Result<Arc<Connection>, TransportError> {
        let mut current = lock(&self.current);
        if let Some(connection) = current.as_ref() {
            if !connection.hung_up() {
                return Ok(Arc::clone(connection));
            }
        }
        *current = None;
        let connection = Arc::new(self.connect_with_backoff()?);
        *current = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// Drops the current connection, whatever its state, so the next call
    /// makes a new one.
    pub fn disconnect(&self) {
        *lock(&self.current) = None;
    }

    /// Holds the client across a fork of the process (no thread of it is
    /// connecting meanwhile); in the forked process, `ClientHold::disconnect`
    /// drops the copy of the parent's conversation.
    pub fn hold_for_fork(&self) -> ClientHold<'_> {
        ClientHold(lock(&self.current))
    }

    /// Drops the connection so the next call makes a new one.
    fn forget(&self, broken: &Arc<Connection>) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *current = None;
        }
    }

    fn connect_with_backoff(&self) -> Result<Connection, TransportError> {
        let backoff = self.config.backoff;
        let started = Instant::now();
        let mut delay = backoff.initial;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (secret, identity) = lock(&self.speaker).clone();
            let err = match Connection::open(
                self.addr,
                &secret,
                &identity,
                self.config.connect_timeout,
            ) {
                Ok(connection) => match connection.bound_sends(self.config.request_timeout) {
                    Ok(()) => return Ok(connection),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            // Refusals are answers, not outages: retrying cannot help.
            let permanent = matches!(
                err,
                TransportError::WrongSecret { .. }
                    | TransportError::VersionMismatch { .. }
                    | TransportError::Refused { .. }
                    | TransportError::NotLego { .. }
            );
            let elapsed = started.elapsed();
            if permanent || elapsed + delay > backoff.give_up_after {
                if permanent || attempts == 1 {
                    return Err(err);
                }
                return Err(TransportError::Unreachable {
                    addr: self.addr.into(),
                    attempts,
                    elapsed,
                    last: Box::new(err),
                });
            }
            tracing::debug!(addr = %self.addr, attempts, "connect failed, retrying in {delay:?}: {err}");
            std::thread::sleep(delay);
            delay = (delay * 2).min(backoff.max_delay);
        }
    }
}

/// A client held across a fork (see [`Client::hold_for_fork`]).
pub struct ClientHold<'a>(MutexGuard<'a, Option<Arc<Connection>>>);

impl ClientHold<'_> {
    /// In the forked process: the next call makes a connection of its own.
    pub fn disconnect(mut self) {
        *self.0 = None;
    }
}
