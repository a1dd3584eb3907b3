//! The storage service behind the real transport: a server on loopback, a
//! `Connection` from a client, file data in frame payloads both ways.

mod common;

use common::*;
use lego_proto::*;
use lego_storage::StorageService;
use lego_transport::{Connection, Identity, Server, ServerConfig};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_client_creates_writes_and_reads_over_loopback() {
    let fx = Fixture::new("e2e");
    let serve = |fx: &Fixture| {
        Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::new(fx.secret.clone(), Identity::new(Role::Storage, "storage-0")),
            Arc::new(StorageService::new(&fx.dir, &fx.secret).unwrap()),
        )
        .unwrap()
    };
    let connect = |server: &Server| {
        Connection::open(
            server.local_addr(),
            &fx.secret,
            &Identity::new(Role::Client, "client"),
            TIMEOUT,
        )
        .unwrap()
    };
    let server = serve(&fx);
    let conn = connect(&server);
    let call = |conn: &Connection, request: StorageRequest, payload: &[u8]| {
        let reply = conn
            .call(
                &Message::Storage {
                    request,
                    caller: None,
                },
                payload,
                TIMEOUT,
            )
            .unwrap();
        (reply.message, reply.payload)
    };
    let root = match call(&conn, StorageRequest::Root, &[]).0 {
        Message::StorageDone(StorageReply::Found { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    let file = match call(
        &conn,
        StorageRequest::Create {
            dir: root.clone(),
            name: b"data".to_vec(),
            mode: 0o644,
            exclusive: true,
            truncate: false,
        },
        &[],
    )
    .0
    {
        Message::StorageDone(StorageReply::Found { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let written = call(
        &conn,
        StorageRequest::Write {
            handle: file.clone(),
            offset: 0,
            append: false,
            stable: true,
        },
        &data,
    )
    .0;
    assert!(matches!(
        written,
        Message::StorageDone(StorageReply::Written { count, .. }) if count as usize == data.len()
    ));
    assert_eq!(std::fs::read(fx.dir.join("data")).unwrap(), data);
    // The storage manager restarts: the client reconnects and its handle
    // still works.
    drop(conn);
    drop(server);
    let server = serve(&fx);
    let conn = connect(&server);
    let (message, payload) = call(
        &conn,
        StorageRequest::Read {
            handle: file,
            offset: 0,
            len: u32::MAX,
        },
        &[],
    );
    assert_eq!(
        message,
        Message::StorageDone(StorageReply::Data { eof: true })
    );
    assert_eq!(payload, data);
    assert_eq!(
        call(
            &conn,
            StorageRequest::Lookup {
                dir: root,
                path: b"missing".to_vec(),
                follow: true
            },
            &[]
        )
        .0,
        Message::StorageFailed {
            errno: libc::ENOENT
        }
    );
    // The heartbeat's load names the export and its space.
    match StorageService::new(&fx.dir, &fx.secret).unwrap().load() {
        Load::Storage {
            export,
            total,
            free,
        } => {
            assert_eq!(export, fx.dir.canonicalize().unwrap().display().to_string());
            assert!(total >= free && total > 0);
        }
        other => panic!("{other:?}"),
    }
}
