//! The framed codec.
//!
//! Wire layout, all integers little-endian:
//!
//! ```text
//! connection := preamble frame*
//! preamble   := "LEGO" version:u32                         (8 bytes)
//! frame      := len:u32 id:u64 header_len:u32 header payload
//!               len counts every byte after itself: 12 + header_len + payload_len
//! header     := postcard encoding of one Message, exactly header_len bytes
//! payload    := raw bytes (pages, file data), never serialized
//! ```
//!
//! Limits are checked as soon as the bytes that carry them arrive, so a
//! prefix announcing a 4 GiB frame is refused after four bytes, before
//! anything is buffered.

use crate::{Message, MAGIC, PROTOCOL_VERSION};
use thiserror::Error;

/// Bytes in the connection preamble.
pub const PREAMBLE_LEN: usize = 8;
/// Bytes before a frame's header: length, request id, header length.
pub const FRAME_PREFIX_LEN: usize = 16;
/// Largest serialized header any frame may carry.
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// Largest raw payload any frame may carry.
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;
/// Largest value of a frame's length field.
pub const MAX_FRAME_LEN: usize = 12 + MAX_HEADER_LEN + MAX_PAYLOAD_LEN;

/// Why bytes did not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("not a Lego peer: connection starts with {0:02x?}, expected \"LEGO\"")]
    BadMagic([u8; 4]),
    #[error("frame length {len} is shorter than the 12-byte minimum")]
    FrameTooShort { len: u32 },
    #[error("frame announces {len} bytes, over the limit of {max}")]
    FrameTooLarge { len: u64, max: usize },
    #[error("header length {header_len} does not fit in a frame of {len} bytes")]
    HeaderOverrun { header_len: u32, len: u32 },
    #[error("header of {header_len} bytes is over the limit of {max}")]
    HeaderTooLarge { header_len: u32, max: usize },
    #[error("malformed message header: {0}")]
    BadHeader(String),
    #[error("message header has {0} trailing bytes")]
    TrailingHeaderBytes(usize),
    #[error("payload of {len} bytes is over the limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
}

/// The preamble each side sends first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub version: u32,
}

impl Preamble {
    /// The preamble of this build.
    pub fn ours() -> Preamble {
        Preamble {
            version: PROTOCOL_VERSION,
        }
    }

    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..].copy_from_slice(&self.version.to_le_bytes());
        out
    }

    /// Checks the magic; the version is returned for the caller to judge.
    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Result<Preamble, CodecError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(CodecError::BadMagic(magic));
        }
        Ok(Preamble {
            version: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }
}

/// Size limits a receiver applies to incoming frames. Before a peer has
/// authenticated it gets [`FrameLimits::HANDSHAKE`], which is small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_frame: usize,
    pub max_header: usize,
}

impl FrameLimits {
    /// Limits once a peer is authenticated.
    pub const DEFAULT: FrameLimits = FrameLimits {
        max_frame: MAX_FRAME_LEN,
        max_header: MAX_HEADER_LEN,
    };
    /// Limits during the handshake: only small messages are expected.
    pub const HANDSHAKE: FrameLimits = FrameLimits {
        max_frame: 4096,
        max_header: 4096,
    };
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits::DEFAULT
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Pairs a reply with its request; chosen by the requester.
    pub id: u64,
    pub message: Message,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(id: u64, message: Message) -> Frame {
        Frame {
            id,
            message,
            payload: Vec::new(),
        }
    }

    /// The whole frame as bytes. Transports write the header and the payload
    /// separately instead (see [`encode_frame_header`]); this is for tests and
    /// tools.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(FRAME_PREFIX_LEN + 64 + self.payload.len());
        encode_frame_header(self.id, &self.message, self.payload.len(), &mut out)?;
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// Appends the prefix and serialized header of a frame to `out`; the caller
/// sends `payload_len` payload bytes right after them.
pub fn encode_frame_header(
    id: u64,
    message: &Message,
    payload_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(CodecError::PayloadTooLarge {
            len: payload_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    let header = postcard::to_stdvec(message).map_err(|e| CodecError::BadHeader(e.to_string()))?;
    let header_len = header.len();
    if header_len > MAX_HEADER_LEN {
        return Err(CodecError::HeaderTooLarge {
            header_len: u32::try_from(header_len).unwrap_or(u32::MAX),
            max: MAX_HEADER_LEN,
        });
    }
    // Both bounded above, so the sum fits in u32 (MAX_FRAME_LEN < 2^32).
    let len = (12 + header_len + payload_len) as u32;
    out.reserve(FRAME_PREFIX_LEN + header_len);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(header_len as u32).to_le_bytes());
    out.extend_from_slice(&header);
    Ok(())
}

/// A frame's prefix and header, decoded before its payload has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHead {
    pub id: u64,
    pub message: Message,
    /// Where the payload starts, from the front of the frame.
    pub header_end: usize,
    /// The whole frame's length, prefix included.
    pub total: usize,
}

impl FrameHead {
    pub fn payload_len(&self) -> usize {
        self.total - self.header_end
    }
}

/// Decodes the prefix and header of the frame at the front of `buf`,
/// whose payload may not have arrived yet.
///
/// Returns `Ok(None)` when `buf` does not hold the whole header yet, and an
/// error as soon as the bytes present violate the format or `limits`.
pub fn decode_head(buf: &[u8], limits: FrameLimits) -> Result<Option<FrameHead>, CodecError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    if len < 12 {
        return Err(CodecError::FrameTooShort { len });
    }
    if len as usize > limits.max_frame {
        return Err(CodecError::FrameTooLarge {
            len: len as u64,
            max: limits.max_frame,
        });
    }
    let total = 4 + len as usize;
    let Some(prefix) = buf.get(..FRAME_PREFIX_LEN) else {
        return Ok(None);
    };
    let id = u64::from_le_bytes(prefix[4..12].try_into().expect("slice of 8"));
    let header_len = u32::from_le_bytes(prefix[12..16].try_into().expect("slice of 4"));
    if header_len as usize > len as usize - 12 {
        return Err(CodecError::HeaderOverrun { header_len, len });
    }
    if header_len as usize > limits.max_header {
        return Err(CodecError::HeaderTooLarge {
            header_len,
            max: limits.max_header,
        });
    }
    let header_end = FRAME_PREFIX_LEN + header_len as usize;
    let Some(header) = buf.get(FRAME_PREFIX_LEN..header_end) else {
        return Ok(None);
    };
    let (message, rest) = postcard::take_from_bytes::<Message>(header)
        .map_err(|e| CodecError::BadHeader(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingHeaderBytes(rest.len()));
    }
    Ok(Some(FrameHead {
        id,
        message,
        header_end,
        total,
    }))
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and
/// call again), `Ok(Some((frame, consumed)))` when a whole frame was decoded,
/// and an error as soon as the bytes present violate the format or `limits`.
pub fn decode_frame(buf: &[u8], limits: FrameLimits) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some(head) = decode_head(buf, limits)? else {
        return Ok(None);
    };
    let Some(payload) = buf.get(head.header_end..head.total) else {
        return Ok(None);
    };
    Ok(Some((
        Frame {
            id: head.id,
            message: head.message,
            payload: payload.to_vec(),
        },
        head.total,
    )))
}
