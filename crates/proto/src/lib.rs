//! The Lego wire protocol: every message exchanged between components, and
//! the framed codec that carries them.
//!
//! A connection starts with a fixed [`Preamble`] in each direction (magic and
//! protocol version), checked before anything else is decoded, so peers of
//! different versions refuse each other with a clear error instead of
//! misreading frames. After the preamble the connection carries [`frame`]s:
//! a length prefix, a request id, a serialized [`Message`] header and a raw
//! payload that travels beside the header (pages and file data are never
//! pushed through the serializer).
//!
//! The codec is total: any byte string either decodes or yields a
//! [`CodecError`]; nothing in this crate panics on input from the network.

pub mod elf;
pub mod errno;
pub mod frame;
pub mod live;
pub mod memory;
pub mod message;
pub mod process;
pub mod runtime;
pub mod state;
pub mod storage;

pub use errno::Errno;
pub use frame::{
    decode_frame, decode_head, encode_frame_header, CodecError, Frame, FrameHead, FrameLimits,
    Preamble, FRAME_PREFIX_LEN, MAX_FRAME_LEN, MAX_HEADER_LEN, MAX_PAYLOAD_LEN, PREAMBLE_LEN,
};
pub use memory::*;
pub use message::*;
pub use process::*;
pub use storage::*;

/// The protocol version this build speaks. Bump it whenever the encoding of
/// any [`Message`] changes; peers with a different version are refused during
/// the handshake.
pub const PROTOCOL_VERSION: u32 = 16;

/// The four bytes every Lego connection starts with.
pub const MAGIC: [u8; 4] = *b"LEGO";
