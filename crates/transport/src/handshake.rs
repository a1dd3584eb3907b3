//! The connection handshake.
//!
//! ```text
//! client                                   server
//!   "LEGO" version          ──►◄──          "LEGO" version     (both check)
//!   Hello{role, name, nc}   ──►
//!                           ◄──  Challenge{ns, proof_s = H(k, "server", nc, ns)}
//!   (check proof_s)
//!   Prove{proof_c = H(k, "client", nc, ns)} ──►
//!                           ◄──  Welcome{role, name}      (or Refused{reason})
//! ```
//!
//! `H(k, ..)` is BLAKE3 keyed with the cluster secret, or, for a runtime
//! (role `Process`), with its process's key, which the server derives
//! from the secret and the pid and tree the client's name states. Each side proves
//! knowledge of the secret over a nonce the other chose, so neither a
//! recorded exchange nor a reflected proof authenticates anyone, and the
//! secret never crosses the wire. Any deviation closes the connection.

use crate::error::{Peer, TransportError};
use crate::io::{write_frame, FrameReader, ReadError};
use crate::secret::ClusterSecret;
use lego_proto::{
    FrameLimits, Message, Preamble, Role, MAX_NAME_LEN, MAX_TEXT_LEN, NONCE_LEN, PREAMBLE_LEN,
    PROTOCOL_VERSION,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Who one end of a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Identity {
        Identity {
            role,
            name: name.into(),
        }
    }

    /// The runtime of process `pid` of tree `tree`: it authenticates with
    /// that process's key (`ClusterSecret::process_key`), which a server
    /// derives from the pid and tree the name states.
    pub fn process(tree: u64, pid: u64) -> Identity {
        Identity::new(Role::Process, format!("runtime-{pid:x} tree-{tree:016x}"))
    }

    /// The process a [`Role::Process`] identity names (authenticated by
    /// its process key).
    pub fn pid(&self) -> Option<u64> {
        if self.role != Role::Process {
            return None;
        }
        let rest = self.name.strip_prefix("runtime-")?;
        let (hex, _) = rest.split_once(" tree-")?;
        u64::from_str_radix(hex, 16).ok()
    }

    /// The tree a [`Role::Process`] identity acts for (`None` for other
    /// roles, or a name not of [`Identity::process`]'s form).
    pub fn tree(&self) -> Option<u64> {
        if self.role != Role::Process {
            return None;
        }
        let hex = self.name.rsplit_once(" tree-")?.1;
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
    }
}

/// Handshake frames use request id 0; requests start at 1.
const HANDSHAKE_ID: u64 = 0;

fn proof(
    secret: &ClusterSecret,
    side: &[u8],
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(secret.key());
    hasher.update(b"lego handshake v1 ");
    hasher.update(side);
    hasher.update(client_nonce);
    hasher.update(server_nonce);
    let proof = hasher.finalize();
    // The hasher holds the key's words: overwritten here, and what the
    // compression left below on the stack by `scrub_stack`.
    hasher = blake3::Hasher::new();
    std::hint::black_box(&hasher);
    proof
}

/// Overwrites the stack below the caller, where a handshake's hashing
/// (or anything else the caller called) left copies of a key: a forked
/// runtime would find its parent's there.
#[inline(never)]
pub fn scrub_stack() {
    let mut below = [0u8; 32 << 10];
    std::hint::black_box(&mut below);
}

/// Compares in constant time (`blake3::Hash`'s equality is).
fn proof_matches(expected: blake3::Hash, received: &[u8; NONCE_LEN]) -> bool {
    expected == blake3::Hash::from(*received)
}

fn nonce(addr: &Peer) -> Result<[u8; NONCE_LEN], TransportError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| TransportError::Handshake {
        addr: addr.clone(),
        detail: format!("no randomness for a nonce: {e}"),
    })?;
    Ok(nonce)
}

fn io_err(addr: &Peer, what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Handshake {
        addr: addr.clone(),
        detail: format!("{what}: {e}"),
    }
}

fn send<S: Stream>(stream: &mut S, addr: &Peer, message: &Message) -> Result<(), TransportError> {
    write_frame(stream, HANDSHAKE_ID, message, &[]).map_err(|e| io_err(addr, "sending", e))
}

fn receive<R: Read>(reader: &mut FrameReader<R>, addr: &Peer) -> Result<Message, TransportError> {
    match reader.read_frame() {
        Ok(frame) => Ok(frame.message),
        Err(ReadError::Codec(source)) => Err(TransportError::Codec {
            addr: addr.clone(),
            source,
        }),
        Err(ReadError::TimedOut) => Err(io_err(addr, "waiting for the peer", "timed out")),
        Err(e) => Err(io_err(addr, "receiving", e)),
    }
}

/// Exchanges and checks preambles.
fn exchange_preambles<S: Stream>(stream: &mut S, addr: &Peer) -> Result<(), TransportError> {
    stream
        .write_all(&Preamble::ours().encode())
        .map_err(|e| io_err(addr, "sending the preamble", e))?;
    let mut theirs = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut theirs).map_err(|e| match e.kind() {
        // The connection went away before any answer: a server that died
        // or is restarting (a connection left in a dead listener's queue
        // is reset), worth another try; not proof of a foreign server.
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::UnexpectedEof => io_err(addr, "reading the preamble", e),
        // No answer in time: a peer that is slow, stopped or cut off (a
        // partition), which may answer the next try; not proof of a
        // foreign server either.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            io_err(addr, "waiting for the preamble", "no answer in time")
        }
        _ => TransportError::NotLego {
            addr: addr.clone(),
            detail: format!("no preamble ({e})"),
        },
    })?;
    let preamble = Preamble::decode(&theirs).map_err(|e| TransportError::NotLego {
        addr: addr.clone(),
        detail: e.to_string(),
    })?;
    if preamble.version != PROTOCOL_VERSION {
        return Err(TransportError::VersionMismatch {
            addr: addr.clone(),
            ours: PROTOCOL_VERSION,
            theirs: preamble.version,
        });
    }
    Ok(())
}

/// The preamble exchange alone, for a local connection whose peer the
/// kernel names (SO_PEERCRED) instead of a proof of the secret: a guest
/// on a processor's guests' launch socket. Both ends call it.
pub fn preambles_only<S: Stream>(
    stream: &mut S,
    addr: &Peer,
    timeout: Duration,
) -> Result<(), TransportError> {
    set_timeouts(stream, addr, Some(timeout))?;
    exchange_preambles(stream, addr)?;
    set_timeouts(stream, addr, None)
}

fn refused(addr: &Peer, reason: String) -> TransportError {
    let mut reason = reason;
    reason.truncate(MAX_TEXT_LEN);
    TransportError::Refused {
        addr: addr.clone(),
        reason,
    }
}

fn unexpected(addr: &Peer, wanted: &str, got: &Message) -> TransportError {
    io_err(
        addr,
        "protocol violation",
        format!("expected {wanted}, got {}", got.kind()),
    )
}

/// Runs the client side on a fresh connection. Returns the server's identity.
pub fn client<S: Stream, R: Read>(
    stream: &mut S,
    reader: &mut FrameReader<R>,
    addr: &Peer,
    secret: &ClusterSecret,
    me: &Identity,
    timeout: Duration,
) -> Result<Identity, TransportError> {
    let outcome = client_unscrubbed(stream, reader, addr, secret, me, timeout);
    scrub_stack();
    outcome
}

fn client_unscrubbed<S: Stream, R: Read>(
    stream: &mut S,
    reader: &mut FrameReader<R>,
    addr: &Peer,
    secret: &ClusterSecret,
    me: &Identity,
    timeout: Duration,
) -> Result<Identity, TransportError> {
    set_timeouts(stream, addr, Some(timeout))?;
    reader.set_limits(FrameLimits::HANDSHAKE);
    exchange_preambles(stream, addr)?;
    let client_nonce = nonce(addr)?;
    send(
        stream,
        addr,
        &Message::Hello {
            role: me.role,
            name: me.name.clone(),
            nonce: client_nonce,
        },
    )?;
    let server_nonce = match receive(reader, addr)? {
        Message::Challenge { nonce, proof: p } => {
            if !proof_matches(proof(secret, b"server", &client_nonce, &nonce), &p) {
                let _ = send(
                    stream,
                    addr,
                    &Message::Refused {
                        reason: "your proof does not match our cluster secret".into(),
                    },
                );
                return Err(TransportError::WrongSecret { addr: addr.clone() });
            }
            nonce
        }
        Message::Refused { reason } => return Err(refused(addr, reason)),
        other => return Err(unexpected(addr, "Challenge", &other)),
    };
    send(
        stream,
        addr,
        &Message::Prove {
            proof: *proof(secret, b"client", &client_nonce, &server_nonce).as_bytes(),
        },
    )?;
    let peer = match receive(reader, addr)? {
        Message::Welcome { role, name } => Identity { role, name },
        Message::Refused { reason } => return Err(refused(addr, reason)),
        other => return Err(unexpected(addr, "Welcome", &other)),
    };
    reader.set_limits(FrameLimits::DEFAULT);
    set_timeouts(stream, addr, None)?;
    Ok(peer)
}

/// Runs the server side on an accepted connection. Returns the client's
/// identity once it has proved it holds the cluster secret.
pub fn server<S: Stream, R: Read>(
    stream: &mut S,
    reader: &mut FrameReader<R>,
    addr: &Peer,
    secret: &ClusterSecret,
    me: &Identity,
    timeout: Duration,
) -> Result<Identity, TransportError> {
    let outcome = server_unscrubbed(stream, reader, addr, secret, me, timeout);
    scrub_stack();
    outcome
}

fn server_unscrubbed<S: Stream, R: Read>(
    stream: &mut S,
    reader: &mut FrameReader<R>,
    addr: &Peer,
    secret: &ClusterSecret,
    me: &Identity,
    timeout: Duration,
) -> Result<Identity, TransportError> {
    set_timeouts(stream, addr, Some(timeout))?;
    reader.set_limits(FrameLimits::HANDSHAKE);
    exchange_preambles(stream, addr)?;
    let (peer, client_nonce) = match receive(reader, addr)? {
        Message::Hello { role, name, nonce } => {
            if name.len() > MAX_NAME_LEN {
                let _ = send(
                    stream,
                    addr,
                    &Message::Refused {
                        reason: format!("name is longer than {MAX_NAME_LEN} bytes"),
                    },
                );
                return Err(io_err(addr, "bad Hello", "name too long"));
            }
            (Identity { role, name }, nonce)
        }
        other => return Err(unexpected(addr, "Hello", &other)),
    };
    let process_key;
    let secret = if peer.role == Role::Process {
        let (Some(tree), Some(pid)) = (peer.tree(), peer.pid()) else {
            let _ = send(
                stream,
                addr,
                &Message::Refused {
                    reason: "a process's name must state its pid and tree".into(),
                },
            );
            return Err(io_err(
                addr,
                "bad Hello",
                "process name without a pid and tree",
            ));
        };
        process_key = secret.process_key(tree, pid);
        &process_key
    } else {
        secret
    };
    let server_nonce = nonce(addr)?;
    send(
        stream,
        addr,
        &Message::Challenge {
            nonce: server_nonce,
            proof: *proof(secret, b"server", &client_nonce, &server_nonce).as_bytes(),
        },
    )?;
    match receive(reader, addr)? {
        Message::Prove { proof: p } => {
            if !proof_matches(proof(secret, b"client", &client_nonce, &server_nonce), &p) {
                let _ = send(
                    stream,
                    addr,
                    &Message::Refused {
                        reason: "wrong cluster secret".into(),
                    },
                );
                return Err(TransportError::WrongSecret { addr: addr.clone() });
            }
        }
        // The client found our proof wrong: the secrets differ.
        Message::Refused { .. } => return Err(TransportError::WrongSecret { addr: addr.clone() }),
        other => return Err(unexpected(addr, "Prove", &other)),
    }
    send(
        stream,
        addr,
        &Message::Welcome {
            role: me.role,
            name: me.name.clone(),
        },
    )?;
    reader.set_limits(FrameLimits::DEFAULT);
    set_timeouts(stream, addr, None)?;
    Ok(peer)
}

/// A connection the handshake can run on (and a launch's frames travel
/// on, whichever kind of socket it is).
pub trait Stream: Read + Write {
    fn set_timeouts(&self, timeout: Option<Duration>) -> std::io::Result<()>;
    /// Another handle on the same connection.
    fn duplicate(&self) -> std::io::Result<Self>
    where
        Self: Sized;
    /// Ends the connection both ways: a thread blocked reading it wakes.
    fn close(&self);
}

impl Stream for TcpStream {
    fn set_timeouts(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Stream for UnixStream {
    fn set_timeouts(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

fn set_timeouts<S: Stream>(
    stream: &S,
    addr: &Peer,
    timeout: Option<Duration>,
) -> Result<(), TransportError> {
    stream
        .set_timeouts(timeout)
        .map_err(|e| io_err(addr, "setting socket timeouts", e))
}
