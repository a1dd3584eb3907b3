use lego_proto::CodecError;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Why talking to a peer failed. Every variant names the peer's address.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gave up connecting to {addr} after {attempts} attempts over {elapsed:.1?}: {last}")]
    Unreachable {
        addr: SocketAddr,
        attempts: u32,
        elapsed: Duration,
        last: Box<TransportError>,
    },
    #[error("{addr} is not a Lego component: {detail}")]
    NotLego { addr: SocketAddr, detail: String },
    #[error("{addr} speaks Lego protocol version {theirs}, this build speaks {ours}")]
    VersionMismatch {
        addr: SocketAddr,
        ours: u32,
        theirs: u32,
    },
    #[error("{addr} holds a different cluster secret (check --state or --secret-file)")]
    WrongSecret { addr: SocketAddr },
    #[error("{addr} refused the connection: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("handshake with {addr} failed: {detail}")]
    Handshake { addr: SocketAddr, detail: String },
    #[error("no reply from {addr} to {request} within {after:.1?}")]
    Timeout {
        addr: SocketAddr,
        request: &'static str,
        after: Duration,
    },
    #[error("connection to {addr} lost: {reason}")]
    PeerGone { addr: SocketAddr, reason: String },
    #[error("{addr} sent a malformed frame: {source}")]
    Codec {
        addr: SocketAddr,
        source: CodecError,
    },
    #[error("cannot send {request} to {addr}: {source}")]
    Encode {
        addr: SocketAddr,
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
