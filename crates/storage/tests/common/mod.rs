//! Shared fixture: a storage service on a fresh temporary export, driven
//! through `Service::handle` as the transport would.

#![allow(dead_code)] // each test file uses a different part

use lego_proto::{
    ErrorCode, FileAttr, FileHandle, Frame, Message, Role, StorageReply, StorageRequest, Voucher,
};
use lego_storage::StorageService;
use lego_transport::{ClusterSecret, Identity, PeerInfo, Service};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a request came back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(StorageReply, Vec<u8>),
    Errno(i32),
    BadRequest(String),
    /// Refused for who asked (`ErrorCode::Denied`).
    Denied(String),
    Other(Box<Message>),
}

pub struct Fixture {
    pub dir: PathBuf,
    pub secret: ClusterSecret,
    pub service: StorageService,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn peer() -> PeerInfo {
    PeerInfo {
        addr: "127.0.0.1:1".parse().unwrap(),
        identity: Identity::new(Role::Client, "test"),
    }
}

pub fn call(service: &StorageService, request: StorageRequest, payload: &[u8]) -> Outcome {
    call_as(service, &peer(), None, request, payload)
}

/// A request from `peer` carrying `caller`.
pub fn call_as(
    service: &StorageService,
    peer: &PeerInfo,
    caller: Option<Voucher>,
    request: StorageRequest,
    payload: &[u8],
) -> Outcome {
    let frame = Frame {
        id: 1,
        message: Message::Storage { request, caller },
        payload: payload.to_vec(),
    };
    let reply = service.handle(peer, frame);
    match reply.message {
        Message::StorageDone(done) => Outcome::Done(done, reply.payload),
        Message::StorageFailed { errno } => {
            assert!(reply.payload.is_empty());
            Outcome::Errno(errno)
        }
        Message::Error(e) if e.code == ErrorCode::BadRequest => Outcome::BadRequest(e.message),
        Message::Error(e) if e.code == ErrorCode::Denied => Outcome::Denied(e.message),
        other => Outcome::Other(Box::new(other)),
    }
}

impl Fixture {
    /// A fresh export directory holding nothing, inside a parent directory
    /// (so there is something outside the export to try to reach).
    pub fn new(name: &str) -> Fixture {
        let parent = std::env::temp_dir().join(format!(
            "lego-storage-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&parent);
        let dir = parent.join("export");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(parent.join("secret.txt"), b"outside the export").unwrap();
        let secret = ClusterSecret::generate().unwrap();
        let service = StorageService::new(&dir, &secret).unwrap();
        Fixture {
            dir,
            secret,
            service,
        }
    }

    /// The directory holding the export (outside it).
    pub fn parent(&self) -> &Path {
        self.dir.parent().unwrap()
    }

    pub fn call(&self, request: StorageRequest) -> Outcome {
        call(&self.service, request, &[])
    }

    pub fn call_with(&self, request: StorageRequest, payload: &[u8]) -> Outcome {
        call(&self.service, request, payload)
    }

    /// A second service on the same export with the same secret: what a
    /// restarted storage manager is.
    pub fn restarted(&self) -> StorageService {
        StorageService::new(&self.dir, &self.secret).unwrap()
    }

    pub fn root(&self) -> FileHandle {
        found(self.call(StorageRequest::Root)).0
    }

    pub fn lookup(&self, dir: &FileHandle, path: &str) -> (FileHandle, FileAttr) {
        found(self.call(StorageRequest::Lookup {
            dir: dir.clone(),
            path: path.as_bytes().to_vec(),
            follow: true,
        }))
    }

    pub fn lookup_outcome(&self, path: &str, follow: bool) -> Outcome {
        self.call(StorageRequest::Lookup {
            dir: self.root(),
            path: path.as_bytes().to_vec(),
            follow,
        })
    }

    pub fn read_all(&self, handle: &FileHandle) -> Vec<u8> {
        match self.call(StorageRequest::Read {
            handle: handle.clone(),
            offset: 0,
            len: 1 << 20,
        }) {
            Outcome::Done(StorageReply::Data { .. }, data) => data,
            other => panic!("read failed: {other:?}"),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.parent());
    }
}

#[track_caller]
pub fn found(outcome: Outcome) -> (FileHandle, FileAttr) {
    match outcome {
        Outcome::Done(StorageReply::Found { handle, attr }, _) => (handle, attr),
        other => panic!("expected a file, got {other:?}"),
    }
}

#[track_caller]
pub fn attr(outcome: Outcome) -> FileAttr {
    match outcome {
        Outcome::Done(StorageReply::Attr(attr), _) => attr,
        other => panic!("expected attributes, got {other:?}"),
    }
}

#[track_caller]
pub fn done(outcome: Outcome) {
    assert_eq!(outcome, Outcome::Done(StorageReply::Done, Vec::new()));
}
