//! The server side: accepts connections, authenticates them, and serves
//! their requests through a [`Service`], one thread per connection.
//!
//! A peer that misbehaves — wrong secret or version, a malformed or
//! oversized frame — loses its own connection, with a logged line naming its
//! address; every other connection is unaffected.

use crate::handshake::{self, Identity};
use crate::io::{write_frame, FrameReader, ReadError};
use crate::secret::ClusterSecret;
use lego_proto::{ErrorCode, Frame, FrameLimits, Message};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tracing::{debug, warn};

/// An authenticated peer, as the service sees it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub identity: Identity,
}

/// A reply: a message and an optional raw payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Message,
    pub payload: Vec<u8>,
}

impl From<Message> for Reply {
    fn from(message: Message) -> Reply {
        Reply {
            message,
            payload: Vec::new(),
        }
    }
}

/// What a component serves. Called concurrently from connection threads.
pub trait Service: Send + Sync + 'static {
    /// Serves one request and returns its reply. Errors are replies too
    /// ([`Message::Error`]); nothing a peer sends may panic here.
    fn handle(&self, peer: &PeerInfo, request: Frame) -> Reply;

    /// Whether `request`, the first on its connection, takes the
    /// connection over: a long-lived exchange of frames both ways (a
    /// launch whose stdio is relayed) rather than requests and replies.
    fn takes_over(&self, _peer: &PeerInfo, _request: &Message) -> bool {
        false
    }

    /// Serves a connection `takes_over` claimed, from that request on;
    /// the connection closes when this returns.
    fn take_over(
        &self,
        _peer: &PeerInfo,
        _request: Frame,
        _stream: TcpStream,
        _reader: FrameReader<TcpStream>,
    ) {
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub secret: ClusterSecret,
    pub identity: Identity,
    /// Bound on the whole handshake of one connection.
    pub handshake_timeout: Duration,
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// How long a connection polls for its next request before sleeping
    /// (see `FrameReader::read_frame_spinning`).
    pub spin: Duration,
}

impl ServerConfig {
    pub fn new(secret: ClusterSecret, identity: Identity) -> ServerConfig {
        ServerConfig {
            secret,
            identity,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 512,
            spin: Duration::from_micros(50),
        }
    }
}

/// Binds `addr`; a given port that is briefly taken (a restarted
/// component's address, which a client's outgoing connection may hold as
/// its local port for a moment) is tried again for a few seconds.
fn bind_retrying(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && std::time::Instant::now() < deadline =>
            {
                thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A listening server. Dropping it stops accepting new connections.
pub struct Server {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts accepting.
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        service: Arc<dyn Service>,
    ) -> io::Result<Server> {
        let listener = bind_retrying(addr)?;
        let local_addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            config,
            service,
            connections: AtomicUsize::new(0),
        });
        let stop = Arc::clone(&stopping);
        thread::Builder::new()
            .name(format!("accept {local_addr}"))
            .spawn(move || accept_loop(listener, shared, stop))?;
        Ok(Server {
            local_addr,
            stopping,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(100));
    }
}

struct Shared {
    config: ServerConfig,
    service: Arc<dyn Service>,
    connections: AtomicUsize,
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stopping: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                warn!("accept failed: {e}");
                // Out of descriptors and the like: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let addr = match stream.peer_addr() {
            Ok(addr) => addr,
            Err(_) => continue,
        };
        let active = shared.connections.fetch_add(1, Ordering::SeqCst);
        if active >= shared.config.max_connections {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn!(peer = %addr, "refused connection: {active} connections already open");
            continue;
        }
        let shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("conn {addr}"))
            .spawn(move || {
                // Given back however the connection ends, a panic in the
                // service included.
                struct Counted<'a>(&'a AtomicUsize);
                impl Drop for Counted<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _counted = Counted(&shared.connections);
                serve_connection(stream, addr, &shared);
            });
        if let Err(e) = spawned {
            warn!(peer = %addr, "cannot start a thread for the connection: {e}");
        }
    }
}

fn serve_connection(mut stream: TcpStream, addr: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let read_half = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            warn!(peer = %addr, "cannot clone the socket: {e}");
            return;
        }
    };
    let mut reader = FrameReader::new(read_half, FrameLimits::HANDSHAKE);
    let identity = match handshake::server(
        &mut stream,
        &mut reader,
        &addr.into(),
        &shared.config.secret,
        &shared.config.identity,
        shared.config.handshake_timeout,
    ) {
        Ok(identity) => identity,
        Err(e) => {
            warn!(peer = %addr, "refused connection: {e}");
            return;
        }
    };
    debug!(peer = %addr, role = %identity.role, name = %identity.name, "connection authenticated");
    let peer = PeerInfo { addr, identity };
    let mut first = true;
    loop {
        let frame = match reader.read_frame_spinning(shared.config.spin) {
            Ok(frame) => frame,
            Err(ReadError::Closed) => {
                debug!(peer = %addr, name = %peer.identity.name, "peer disconnected");
                return;
            }
            Err(e) => {
                warn!(peer = %addr, name = %peer.identity.name, "closing connection: {e}");
                return;
            }
        };
        if std::mem::take(&mut first) && shared.service.takes_over(&peer, &frame.message) {
            shared.service.take_over(&peer, frame, stream, reader);
            return;
        }
        let id = frame.id;
        let request = frame.message.kind();
        let reply = match frame.message {
            Message::Ping => Reply::from(Message::Pong),
            _ => shared.service.handle(&peer, frame),
        };
        if let Err(e) = write_frame(&mut stream, id, &reply.message, &reply.payload) {
            warn!(peer = %addr, "closing connection: cannot send the reply to {request}: {e}");
            // An unencodable reply is our bug; tell the peer rather than hang it.
            let _ = write_frame(
                &mut stream,
                id,
                &Message::error(
                    ErrorCode::Internal,
                    format!("reply to {request} failed: {e}"),
                ),
                &[],
            );
            return;
        }
    }
}
