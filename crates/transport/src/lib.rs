//! The transport between Lego components: TCP with `TCP_NODELAY`, an
//! authenticated and version-checked handshake, a pipelining client and a
//! thread-per-connection server.
//!
//! The interface is narrow on purpose — [`Connection::call`] sends one
//! request and waits for its reply, [`Service::handle`] serves one — so an
//! RDMA transport can later sit behind the same two calls.
//!
//! Every connection begins with [`handshake`]: both sides exchange the
//! protocol preamble, then prove knowledge of the [`ClusterSecret`] to each
//! other with keyed hashes over fresh nonces, so the secret itself never
//! crosses the wire.

mod client;
mod error;
pub mod fdfloor;
pub mod fdpass;
pub mod handshake;
mod io;
pub mod peercred;
mod secret;
mod server;

pub use client::{Backoff, Client, ClientConfig, ClientHold, Connection, Pending};
pub use error::{Peer, TransportError};
pub use handshake::{Identity, Stream};
pub use io::{keep_alive, write_frame, write_frame_parts, FrameReader, ReadError};
pub use secret::{ClusterSecret, SecretError};
pub use server::{PeerInfo, Reply, Server, ServerConfig, Service};
