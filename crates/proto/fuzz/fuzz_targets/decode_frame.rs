//! Feeds arbitrary bytes to the frame decoder under both sets of limits and
//! to the preamble check. Any panic is a finding, and so is a frame that
//! decodes but does not survive re-encoding and decoding again unchanged.
//! (Byte-for-byte canonical form is not promised: postcard accepts
//! overlong varints.)
#![no_main]

use lego_proto::{decode_frame, FrameLimits, Preamble, PREAMBLE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(pre) = data.get(..PREAMBLE_LEN) {
        let pre: [u8; PREAMBLE_LEN] = pre.try_into().expect("slice of PREAMBLE_LEN");
        let _ = Preamble::decode(&pre);
    }
    let _ = decode_frame(data, FrameLimits::HANDSHAKE);
    if let Ok(Some((frame, consumed))) = decode_frame(data, FrameLimits::DEFAULT) {
        assert!(consumed <= data.len());
        let bytes = frame.to_bytes().expect("a decoded frame re-encodes");
        let again = decode_frame(&bytes, FrameLimits::DEFAULT)
            .expect("a re-encoded frame decodes")
            .expect("a re-encoded frame is complete");
        assert_eq!(again, (frame, bytes.len()), "frame changed through re-encoding");
    }
});
