//! Property tests of the codec: every message round-trips, and arbitrary
//! bytes never panic the decoder.

use lego_proto::*;
use proptest::prelude::*;
use std::net::SocketAddr;

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Monitor),
        Just(Role::Processor),
        Just(Role::Memory),
        Just(Role::Storage),
        Just(Role::Client),
    ]
}

fn text() -> impl Strategy<Value = String> {
    ".{0,80}"
}

fn load() -> impl Strategy<Value = Load> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(cores, excache_quota, excache_used)| {
                Load::Processor {
                    cores,
                    excache_quota,
                    excache_used,
                }
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(capacity, used)| Load::Memory { capacity, used }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(export, total, free)| Load::Storage {
            export,
            total,
            free
        }),
    ]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)))
}

fn registration() -> impl Strategy<Value = Registration> {
    (text(), role(), addr(), any::<u32>(), load()).prop_map(|(name, role, addr, pid, load)| {
        Registration {
            name,
            role,
            addr,
            pid,
            load,
        }
    })
}

fn member() -> impl Strategy<Value = MemberStatus> {
    (registration(), any::<bool>(), load(), any::<u64>()).prop_map(
        |(registration, alive, load, heartbeat_age_ms)| MemberStatus {
            registration,
            health: if alive { Health::Alive } else { Health::Dead },
            load,
            heartbeat_age_ms,
        },
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::Unsupported),
        Just(ErrorCode::UnknownComponent),
        Just(ErrorCode::NameTaken),
        Just(ErrorCode::Internal),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (role(), text(), any::<[u8; 32]>()).prop_map(|(role, name, nonce)| Message::Hello {
            role,
            name,
            nonce
        }),
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(nonce, proof)| Message::Challenge { nonce, proof }),
        any::<[u8; 32]>().prop_map(|proof| Message::Prove { proof }),
        (role(), text()).prop_map(|(role, name)| Message::Welcome { role, name }),
        text().prop_map(|reason| Message::Refused { reason }),
        Just(Message::Ping),
        Just(Message::Pong),
        (error_code(), text()).prop_map(|(code, message)| Message::error(code, message)),
        registration().prop_map(Message::Register),
        any::<u64>().prop_map(|heartbeat_interval_ms| Message::Registered {
            heartbeat_interval_ms
        }),
        (text(), load()).prop_map(|(name, load)| Message::Heartbeat { name, load }),
        Just(Message::HeartbeatAck),
        Just(Message::GetClusterView),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(member(), 0..6)
        )
            .prop_map(|(heartbeat_interval_ms, dead_after_ms, members)| {
                Message::ClusterView(ClusterView {
                    heartbeat_interval_ms,
                    dead_after_ms,
                    members,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(
        id in any::<u64>(),
        message in message(),
        payload in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let frame = Frame { id, message, payload };
        let bytes = frame.to_bytes().expect("encodes");
        let (decoded, consumed) = decode_frame(&bytes, FrameLimits::DEFAULT)
            .expect("decodes")
            .expect("complete");
        prop_assert_eq!(consumed, bytes.len());
        prop_assert_eq!(decoded, frame);
    }

    #[test]
    fn every_strict_prefix_is_incomplete(message in message(), cut in any::<prop::sample::Index>()) {
        let bytes = Frame::new(7, message).to_bytes().expect("encodes");
        let cut = cut.index(bytes.len());
        prop_assert_eq!(decode_frame(&bytes[..cut], FrameLimits::DEFAULT), Ok(None));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_frame(&bytes, FrameLimits::DEFAULT);
        let _ = decode_frame(&bytes, FrameLimits::HANDSHAKE);
        if let Ok(pre) = <[u8; PREAMBLE_LEN]>::try_from(&bytes[..bytes.len().min(PREAMBLE_LEN)]) {
            let _ = Preamble::decode(&pre);
        }
    }

    #[test]
    fn arbitrary_headers_in_a_valid_frame_never_panic(
        id in any::<u64>(),
        header in prop::collection::vec(any::<u8>(), 0..512),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((12 + header.len() + payload.len()) as u32).to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&payload);
        match decode_frame(&bytes, FrameLimits::DEFAULT) {
            Ok(Some((frame, consumed))) => {
                prop_assert_eq!(consumed, bytes.len());
                prop_assert_eq!(frame.id, id);
                prop_assert_eq!(frame.payload, payload);
            }
            Ok(None) => prop_assert!(false, "a whole frame was reported incomplete"),
            Err(_) => {}
        }
    }
}

#[test]
fn a_four_gib_frame_is_refused_from_its_prefix_alone() {
    let prefix = u32::MAX.to_le_bytes();
    assert_eq!(
        decode_frame(&prefix, FrameLimits::DEFAULT),
        Err(CodecError::FrameTooLarge {
            len: u32::MAX as u64,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn handshake_limits_refuse_large_frames() {
    let frame = Frame {
        id: 1,
        message: Message::Ping,
        payload: vec![0; 8192],
    };
    let bytes = frame.to_bytes().unwrap();
    assert!(matches!(
        decode_frame(&bytes, FrameLimits::HANDSHAKE),
        Err(CodecError::FrameTooLarge { .. })
    ));
    assert!(decode_frame(&bytes, FrameLimits::DEFAULT)
        .unwrap()
        .is_some());
}

#[test]
fn preamble_checks_magic_and_carries_version() {
    let ours = Preamble::ours().encode();
    assert_eq!(
        Preamble::decode(&ours),
        Ok(Preamble {
            version: PROTOCOL_VERSION
        })
    );
    assert_eq!(
        Preamble::decode(b"GET / HT"),
        Err(CodecError::BadMagic(*b"GET "))
    );
}

#[test]
fn oversized_payloads_are_refused_when_encoding() {
    let mut out = Vec::new();
    assert!(matches!(
        encode_frame_header(1, &Message::Ping, MAX_PAYLOAD_LEN + 1, &mut out),
        Err(CodecError::PayloadTooLarge { .. })
    ));
}
