//! The transport against a real server on loopback.

use lego_proto::{ErrorCode, Frame, Message, Preamble, Role};
use lego_transport::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Echoes payloads back; `Heartbeat` with a name of digits sleeps that many
/// milliseconds first (to make replies arrive out of order).
struct Echo;

impl Service for Echo {
    fn handle(&self, _peer: &PeerInfo, request: Frame) -> Reply {
        match request.message {
            Message::Heartbeat { name, .. } => {
                if let Ok(ms) = name.parse::<u64>() {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                Reply {
                    message: Message::HeartbeatAck,
                    payload: request.payload,
                }
            }
            other => Message::error(ErrorCode::Unsupported, other.kind()).into(),
        }
    }
}

fn server(secret: &ClusterSecret) -> Server {
    Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(secret.clone(), Identity::new(Role::Memory, "echo")),
        Arc::new(Echo),
    )
    .unwrap()
}

fn client_config(secret: &ClusterSecret) -> ClientConfig {
    ClientConfig::new(secret.clone(), Identity::new(Role::Client, "test"))
}

fn heartbeat(name: &str) -> Message {
    Message::Heartbeat {
        name: name.into(),
        load: lego_proto::Load::Memory {
            capacity: 1,
            used: 0,
            committed: 0,
            copies: Vec::new(),
            held: Vec::new(),
            regions: Vec::new(),
        },
    }
}

#[test]
fn authenticated_calls_carry_payloads_both_ways() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    let conn = Connection::open(
        server.local_addr(),
        &secret,
        &Identity::new(Role::Client, "test"),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(conn.peer(), &Identity::new(Role::Memory, "echo"));
    let page: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let reply = conn
        .call(&heartbeat("x"), &page, Duration::from_secs(2))
        .unwrap();
    assert_eq!(reply.message, Message::HeartbeatAck);
    assert_eq!(reply.payload, page);
    let pong = conn
        .call(&Message::Ping, &[], Duration::from_secs(2))
        .unwrap();
    assert_eq!(pong.message, Message::Pong);
}

#[test]
fn wrong_secret_is_refused_on_both_sides() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    let other = ClusterSecret::generate().unwrap();
    let err = Connection::open(
        server.local_addr(),
        &other,
        &Identity::new(Role::Client, "intruder"),
        Duration::from_secs(2),
    )
    .err()
    .expect("a client with the wrong secret must be refused");
    assert!(matches!(err, TransportError::WrongSecret { .. }), "{err}");
    assert!(err.to_string().contains(&server.local_addr().to_string()));
}

#[test]
fn pipelined_requests_from_many_threads_get_their_own_replies() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    let client = Arc::new(Client::new(server.local_addr(), client_config(&secret)));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    let payload = vec![t, i, t ^ i];
                    let reply = client.call(&heartbeat("0"), &payload).unwrap();
                    assert_eq!(reply.payload, payload);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_slow_reply_times_out_and_the_connection_stays_usable() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    let conn = Connection::open(
        server.local_addr(),
        &secret,
        &Identity::new(Role::Client, "test"),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = conn
        .call(&heartbeat("300"), b"slow", Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    // The late reply is discarded; the next call gets its own.
    let reply = conn
        .call(&heartbeat("0"), b"fast", Duration::from_secs(2))
        .unwrap();
    assert_eq!(reply.payload, b"fast");
}

/// A peer that stops reading (its link cut, or its thread stuck) fails a
/// large send within the request timeout instead of blocking the sender
/// until TCP gives up, minutes later.
#[test]
fn a_send_to_a_peer_that_stopped_reading_fails_within_the_request_timeout() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    let mut config = client_config(&secret);
    config.request_timeout = Duration::from_millis(500);
    let client = Client::new(server.local_addr(), config);
    let conn = client.connection().unwrap();
    // The server's thread for this connection sleeps in the first request
    // and reads nothing more meanwhile.
    let stuck = conn.send(&heartbeat("20000"), &[b"x"]).unwrap();
    let sender = Arc::clone(&conn);
    let (done, outcome) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let big = vec![0x5au8; 15 << 20];
        // Socket buffers take a few megabytes before a send blocks.
        let mut outcome = Ok(());
        for _ in 0..8 {
            outcome = sender.send(&heartbeat("0"), &[&big]).map(|_| ());
            if outcome.is_err() {
                break;
            }
        }
        let _ = done.send(outcome);
    });
    let outcome = outcome
        .recv_timeout(Duration::from_secs(15))
        .expect("a send to a peer that reads nothing still blocks after 15 s");
    let err = outcome.expect_err("120 MiB were taken by a peer that reads nothing");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the send failed only after {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("stopped taking data"), "{err}");
    assert!(conn.is_broken());
    let waited = conn.wait(stuck, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(waited, TransportError::PeerGone { .. }),
        "{waited}"
    );
}

#[test]
fn a_dead_peer_gives_a_clear_error_after_bounded_backoff() {
    // A port that was just free and has nothing listening.
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let secret = ClusterSecret::generate().unwrap();
    let mut config = client_config(&secret);
    config.backoff = Backoff {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        give_up_after: Duration::from_millis(300),
    };
    let client = Client::new(addr, config);
    let started = Instant::now();
    let err = client.call(&Message::Ping, &[]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = err.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(
        matches!(err, TransportError::Unreachable { attempts, .. } if attempts > 1),
        "{text}"
    );
}

#[test]
fn the_client_keeps_trying_until_a_late_server_appears() {
    let secret = ClusterSecret::generate().unwrap();
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let late = {
        let secret = secret.clone();
        std::thread::spawn(move || {
            // Deliberately late: the client's first attempts must fail.
            std::thread::sleep(Duration::from_millis(300));
            Server::bind(
                addr,
                ServerConfig::new(secret, Identity::new(Role::Memory, "late")),
                Arc::new(Echo),
            )
            .unwrap()
        })
    };
    let client = Client::new(addr, client_config(&secret));
    assert_eq!(
        client.call(&Message::Ping, &[]).unwrap().message,
        Message::Pong
    );
    let _server = late.join().unwrap();
}

/// Opens a raw socket and completes the preamble exchange only.
fn raw_after_preamble(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&Preamble::ours().encode()).unwrap();
    let mut theirs = [0u8; 8];
    s.read_exact(&mut theirs).unwrap();
    s
}

/// Waits for the server to close `s`, with a deadline.
fn closed_by_server(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn garbage_and_giant_frames_close_only_their_own_connection() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    let addr = server.local_addr();
    let client = Client::new(addr, client_config(&secret));
    assert_eq!(
        client.call(&Message::Ping, &[]).unwrap().message,
        Message::Pong
    );

    // 1 MiB of pseudo-random bytes instead of a preamble.
    let mut garbage = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in garbage.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(&garbage); // the server may close before all is sent
    assert!(closed_by_server(s));

    // A well-formed prefix announcing a 4 GiB frame.
    let mut s = raw_after_preamble(addr);
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    s.write_all(&1u64.to_le_bytes()).unwrap();
    assert!(closed_by_server(s));

    // The established client is still served.
    assert_eq!(
        client.call(&Message::Ping, &[]).unwrap().message,
        Message::Pong
    );
}

#[test]
fn a_peer_speaking_another_protocol_version_is_refused() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    // As a client: send a future version; the server closes on us.
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.write_all(&Preamble { version: 999 }.encode()).unwrap();
    assert!(closed_by_server(s));

    // As a server: a fake peer answering with another version.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&Preamble { version: 999 }.encode()).unwrap();
        let mut theirs = [0u8; 8];
        let _ = s.read_exact(&mut theirs);
    });
    let err = Connection::open(
        addr,
        &secret,
        &Identity::new(Role::Client, "test"),
        Duration::from_secs(2),
    )
    .err()
    .expect("another version is refused");
    assert!(
        matches!(err, TransportError::VersionMismatch { theirs: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()));
    fake.join().unwrap();
}

/// Replies with the identity the server saw, as the name of its ack.
struct Whoami;

impl Service for Whoami {
    fn handle(&self, peer: &PeerInfo, _request: Frame) -> Reply {
        Message::Refused {
            reason: format!("{:?} {}", peer.identity.role, peer.identity.name),
        }
        .into()
    }
}

#[test]
fn a_process_key_authenticates_exactly_its_own_process() {
    let secret = ClusterSecret::generate().unwrap();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(secret.clone(), Identity::new(Role::Memory, "m")),
        Arc::new(Whoami),
    )
    .unwrap();
    let key = secret.process_key(7, 0x70);
    assert_ne!(key, secret);
    assert_ne!(key, secret.process_key(8, 0x70));
    assert_ne!(key, secret.process_key(7, 0x71));
    // Its own process: accepted, and the server knows the tree and pid.
    let me = Identity::process(7, 0x70);
    assert_eq!((me.tree(), me.pid()), (Some(7), Some(0x70)));
    let conn = Connection::open(server.local_addr(), &key, &me, Duration::from_secs(2)).unwrap();
    let reply = conn.call(&heartbeat("x"), &[], Duration::from_secs(2));
    let seen = match reply.map(|r| r.message) {
        Ok(Message::Refused { reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(seen, format!("Process {}", me.name));
    // Another process's name (of its tree or another), or a component's
    // role, with that key: refused.
    for claim in [
        Identity::process(7, 0x71),
        Identity::process(8, 0x70),
        Identity::new(Role::Processor, "processor-0"),
        Identity::new(Role::Client, "lego-run"),
    ] {
        let err = Connection::open(server.local_addr(), &key, &claim, Duration::from_secs(2))
            .err()
            .unwrap_or_else(|| panic!("{claim:?} with process 0x70's key was accepted"));
        assert!(matches!(err, TransportError::WrongSecret { .. }), "{err}");
    }
    // A process name without its tree: refused.
    let bare = Identity::new(Role::Process, "runtime-70");
    assert_eq!(bare.tree(), None);
    assert!(Connection::open(server.local_addr(), &key, &bare, Duration::from_secs(2)).is_err());
}

/// A TCP relay in front of `to`: `cut` closes every connection relayed
/// so far, as a peer killed and restarted at the same address would
/// (new connections are relayed again).
struct Relay {
    addr: SocketAddr,
    streams: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn new(to: SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&streams);
        std::thread::spawn(move || {
            for near in listener.incoming().flatten() {
                let far = TcpStream::connect(to).unwrap();
                kept.lock()
                    .unwrap()
                    .extend([near.try_clone().unwrap(), far.try_clone().unwrap()]);
                for (mut from, mut into) in [
                    (near.try_clone().unwrap(), far.try_clone().unwrap()),
                    (far, near),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, streams }
    }

    fn cut(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn a_call_after_the_peer_hung_up_goes_over_a_new_connection() {
    let secret = ClusterSecret::generate().unwrap();
    let server = server(&secret);
    let relay = Relay::new(server.local_addr());
    let client = Client::new(relay.addr, client_config(&secret));
    assert_eq!(
        client.call(&Message::Ping, &[]).unwrap().message,
        Message::Pong
    );
    // The peer goes away between two calls, and nobody reads meanwhile.
    relay.cut();
    // The connection has been idle long enough to be looked at before use.
    std::thread::sleep(Duration::from_millis(50));
    let reply = client.call(&Message::Ping, &[]);
    assert_eq!(
        reply.map(|r| r.message).map_err(|e| e.to_string()),
        Ok(Message::Pong),
        "the call went to the dead connection"
    );
}
