use lego_proto::CodecError;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Who an error is about: a TCP address or a Unix socket path, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer(Arc<str>);

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer(addr.to_string().into())
    }
}

impl From<&Path> for Peer {
    fn from(path: &Path) -> Peer {
        Peer(path.display().to_string().into())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why talking to a peer failed. Every variant names the peer's address.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: Peer, source: std::io::Error },
    #[error("gave up connecting to {addr} after {attempts} attempts over {elapsed:.1?}: {last}")]
    Unreachable {
        addr: Peer,
        attempts: u32,
        elapsed: Duration,
        last: Box<TransportError>,
    },
    #[error("{addr} is not a Lego component: {detail}")]
    NotLego { addr: Peer, detail: String },
    #[error("{addr} speaks Lego protocol version {theirs}, this build speaks {ours}")]
    VersionMismatch { addr: Peer, ours: u32, theirs: u32 },
    #[error("{addr} holds a different cluster secret (check --state or --secret-file)")]
    WrongSecret { addr: Peer },
    #[error("{addr} refused the connection: {reason}")]
    Refused { addr: Peer, reason: String },
    #[error("handshake with {addr} failed: {detail}")]
    Handshake { addr: Peer, detail: String },
    #[error("no reply from {addr} to {request} within {after:.1?}")]
    Timeout {
        addr: Peer,
        request: &'static str,
        after: Duration,
    },
    #[error("connection to {addr} lost: {reason}")]
    PeerGone { addr: Peer, reason: String },
    #[error("{addr} sent a malformed frame: {source}")]
    Codec { addr: Peer, source: CodecError },
    #[error("cannot send {request} to {addr}: {source}")]
    Encode {
        addr: Peer,
        request: &'static str,
        source: CodecError,
    },
}

impl TransportError {
    /// True when the connection this error came from is unusable and a new
    /// one must be made.
    pub fn breaks_connection(&self) -> bool {
        !matches!(
            self,
            TransportError::Timeout { .. } | TransportError::Encode { .. }
        )
    }
}
