//! The memory service, driven through `Service::handle` as a connection
//! thread would.

use lego_memory::pool::PAGE;
use lego_memory::service::{MemoryService, MAX_PROCESSES};
use lego_memory::vma::STACK_SIZE;
use lego_proto::{
    ErrorCode, ErrorReply, ExecImage, Frame, Load, MemoryOp, MemoryOpDone, Message, RangeMove,
    Role, SpaceLayout, VmaLayout, MAX_WRITEBACK_PAGES, PAGE_SIZE,
};
use lego_transport::{Identity, PeerInfo, Reply, Service};
use std::sync::Arc;

mod common;
use common::*;

const PID: u64 = 0xfeed;
const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;
const ANON: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
const FIXED: u32 = ANON | libc::MAP_FIXED as u32;
const AREA: u64 = 0x1000_0000;

fn call(service: &MemoryService, message: Message, payload: Vec<u8>) -> Reply {
    let peer = PeerInfo {
        addr: "127.0.0.1:9".parse().unwrap(),
        identity: Identity::new(Role::Processor, "processor-0"),
    };
    service.handle(
        &peer,
        Frame {
            id: 1,
            message,
            payload,
        },
    )
}

fn exec(service: &MemoryService, pid: u64) -> ExecImage {
    match call(
        service,
        Message::Exec {
            pid,
            seq: 0,
            backup: None,
        },
        sample(2),
    )
    .message
    {
        Message::ExecLoaded(image) => image,
        other => panic!("exec failed: {other:?}"),
    }
}

fn memory(service: &MemoryService, op: MemoryOp) -> Message {
    call(
        service,
        Message::Memory {
            pid: PID,
            op,
            seq: 0,
            spill: Vec::new(),
        },
        Vec::new(),
    )
    .message
}

fn done(service: &MemoryService, op: MemoryOp) -> MemoryOpDone {
    match memory(service, op) {
        Message::MemoryDone(done) => done,
        other => panic!("expected MemoryDone, got {other:?}"),
    }
}

fn bad_request(reply: Reply) -> String {
    match reply.message {
        Message::Error(ErrorReply {
            code: ErrorCode::BadRequest,
            message,
        }) => message,
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

fn write_back(service: &MemoryService, addrs: Vec<u64>, fill: u8) -> Reply {
    let payload = vec![fill; addrs.len() * PAGE_SIZE];
    call(service, Message::WriteBack { pid: PID, addrs }, payload)
}

fn fetch(service: &MemoryService, addr: u64) -> Reply {
    call(service, Message::FetchPage { pid: PID, addr }, Vec::new())
}

fn used_and_committed(service: &MemoryService) -> (u64, u64) {
    match service.load() {
        Load::Memory {
            used, committed, ..
        } => (used, committed),
        other => panic!("{other:?}"),
    }
}

fn mmap_fixed(addr: u64, len: u64) -> MemoryOp {
    MemoryOp::Mmap {
        addr,
        len,
        prot: RW,
        flags: FIXED,
    }
}

#[test]
fn exec_then_fetch_pages() {
    let service = MemoryService::new(64 << 20);
    let image = exec(&service, PID);
    assert_eq!(image.entry, 0x40_0100);
    let page = fetch(&service, 0x40_0000);
    assert_eq!(page.message, Message::Page);
    assert_eq!(page.payload, sample(2)[..PAGE_SIZE]);
    assert_eq!(fetch(&service, 0x40_5000).message, Message::ZeroPage, "bss");
    assert_eq!(
        fetch(&service, image.stack_top - PAGE).message,
        Message::ZeroPage
    );
    let message = bad_request(fetch(&service, 0x40_2000));
    assert!(message.contains("page 0x402000 of process 0xfeed") && message.contains("not mapped"));
    assert!(bad_request(fetch(&service, 0x40_0001)).contains("not page-aligned"));
    let unknown = call(
        &service,
        Message::FetchPage {
            pid: 7,
            addr: 0x40_0000,
        },
        Vec::new(),
    );
    assert!(bad_request(unknown).contains("unknown process 0x7"));
    assert_eq!(service.processes(), 1);
}

#[test]
fn a_bad_image_is_refused_and_the_old_space_kept() {
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    let mut image = sample(2);
    image[18] = 40;
    let message = bad_request(call(
        &service,
        Message::Exec {
            pid: PID,
            seq: 0,
            backup: None,
        },
        image,
    ));
    assert_eq!(
        message,
        "exec of process 0xfeed: unsupported ELF file: e_machine is 40, expected 62 (x86-64)"
    );
    assert_eq!(
        fetch(&service, 0x40_0000).message,
        Message::Page,
        "old space intact"
    );
    let empty = bad_request(call(
        &service,
        Message::Exec {
            pid: 1,
            seq: 0,
            backup: None,
        },
        Vec::new(),
    ));
    assert!(
        empty.contains("0-byte") || empty.contains("0 bytes"),
        "{empty}"
    );
}

#[test]
fn exec_replaces_and_frees_the_previous_space() {
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    let after_first = used_and_committed(&service);
    done(&service, mmap_fixed(AREA, 4 * PAGE));
    write_back(&service, vec![AREA, AREA + PAGE], 9);
    exec(&service, PID);
    assert_eq!(used_and_committed(&service), after_first);
    assert!(bad_request(fetch(&service, AREA)).contains("not mapped"));
}

#[test]
fn an_image_that_does_not_fit_is_an_error_reply() {
    let service = MemoryService::new(STACK_SIZE);
    let message = bad_request(call(
        &service,
        Message::Exec {
            pid: PID,
            seq: 0,
            backup: None,
        },
        sample(2),
    ));
    assert!(
        message.contains("needs") && message.contains("pool"),
        "{message}"
    );
    assert_eq!(used_and_committed(&service), (0, 0));
}

#[test]
fn memory_calls_reply_like_syscalls() {
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    let mapped = done(&service, mmap_fixed(AREA, 2 * PAGE));
    assert_eq!(mapped.result, AREA);
    assert_eq!(mapped.changes.len(), 1);
    let failed = memory(
        &service,
        MemoryOp::Munmap {
            addr: AREA + 1,
            len: PAGE,
        },
    );
    assert_eq!(
        failed,
        Message::MemoryFailed {
            errno: libc::EINVAL
        }
    );
    // Partial mprotect: the reply must carry the change made before the hole.
    let partial = done(
        &service,
        MemoryOp::Mprotect {
            addr: AREA,
            len: 4 * PAGE,
            prot: libc::PROT_READ as u32,
        },
    );
    assert_eq!(partial.result as i64, -(libc::ENOMEM as i64));
    assert_eq!(
        (partial.changes[0].start, partial.changes[0].end),
        (AREA, AREA + 2 * PAGE)
    );
    let brk = done(&service, MemoryOp::Brk { addr: 0 });
    assert_eq!(brk.result, 0x40_7000);
    let unknown = call(
        &service,
        Message::Memory {
            pid: 3,
            op: MemoryOp::Brk { addr: 0 },
            seq: 0,
            spill: Vec::new(),
        },
        Vec::new(),
    );
    assert!(bad_request(unknown).contains("unknown process 0x3"));
}

#[test]
fn a_mapping_larger_than_the_pool_fails_and_write_backs_fill_it() {
    let capacity = STACK_SIZE + (16 << 20);
    let service = MemoryService::new(capacity);
    exec(&service, PID);
    let (used, committed) = used_and_committed(&service);
    assert_eq!(used, 3 * PAGE);
    let too_big = memory(
        &service,
        MemoryOp::Mmap {
            addr: 0,
            len: 16 << 20,
            prot: RW,
            flags: ANON,
        },
    );
    assert_eq!(
        too_big,
        Message::MemoryFailed {
            errno: libc::ENOMEM
        }
    );
    assert_eq!(
        used_and_committed(&service),
        (used, committed),
        "nothing changed"
    );
    let free = capacity - committed;
    let area = done(
        &service,
        MemoryOp::Mmap {
            addr: 0,
            len: free,
            prot: RW,
            flags: ANON,
        },
    )
    .result;
    assert_eq!(used_and_committed(&service).1, capacity);
    // Every page of the mapping can be written back: the pool is full of
    // data exactly when the commit charge says so.
    let pages: Vec<u64> = (0..free / PAGE).map(|i| area + i * PAGE).collect();
    for batch in pages.chunks(1000) {
        let reply = write_back(&service, batch.to_vec(), 0x5a);
        assert_eq!(reply.message, Message::WrittenBack);
    }
    assert_eq!(used_and_committed(&service), (used + free, capacity));
    let page = fetch(&service, area + 7 * PAGE);
    assert_eq!(page.message, Message::Page);
    assert!(page.payload.iter().all(|&b| b == 0x5a));
    // Unmapping frees the pages and the charge.
    done(
        &service,
        MemoryOp::Munmap {
            addr: area,
            len: free,
        },
    );
    assert_eq!(used_and_committed(&service), (used, committed));
}

#[test]
fn write_back_checks_everything_before_storing() {
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    done(&service, mmap_fixed(AREA, 2 * PAGE));
    let before = used_and_committed(&service);
    let short = call(
        &service,
        Message::WriteBack {
            pid: PID,
            addrs: vec![AREA, AREA + PAGE],
        },
        vec![1; PAGE_SIZE],
    );
    assert!(bad_request(short).contains("2 addresses need 8192 bytes of payload, got 4096"));
    for (addr, problem) in [
        (AREA + 1, "not page-aligned"),
        (AREA + 2 * PAGE, "is not mapped"),
    ] {
        let message = bad_request(write_back(&service, vec![AREA, addr], 1));
        assert!(
            message.contains(problem) && message.contains("nothing was stored"),
            "{message}"
        );
    }
    assert_eq!(used_and_committed(&service), before);
    assert_eq!(fetch(&service, AREA).message, Message::ZeroPage);
    // A read-only mapping that was never writable cannot hold dirty pages.
    done(
        &service,
        MemoryOp::Mmap {
            addr: AREA + 4 * PAGE,
            len: PAGE,
            prot: libc::PROT_READ as u32,
            flags: FIXED,
        },
    );
    assert!(bad_request(write_back(&service, vec![AREA + 4 * PAGE], 1)).contains("never writable"));
    // Loaded text is charged, so rewriting it is fine.
    assert_eq!(
        write_back(&service, vec![0x40_0000], 3).message,
        Message::WrittenBack
    );
    let too_many = vec![AREA; MAX_WRITEBACK_PAGES + 1];
    let reply = call(
        &service,
        Message::WriteBack {
            pid: PID,
            addrs: too_many,
        },
        Vec::new(),
    );
    assert!(bad_request(reply).contains("over the limit"));
    // An all-zero page reads as zero without taking a pool page.
    let (used, _) = used_and_committed(&service);
    assert_eq!(
        write_back(&service, vec![AREA], 0).message,
        Message::WrittenBack
    );
    assert_eq!(used_and_committed(&service).0, used);
    assert_eq!(fetch(&service, AREA).message, Message::ZeroPage);
}

#[test]
fn mremap_moves_pages_and_madvise_drops_them() {
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    done(&service, mmap_fixed(AREA, 2 * PAGE));
    done(&service, mmap_fixed(AREA + 2 * PAGE, PAGE));
    write_back(&service, vec![AREA, AREA + PAGE], 0x11);
    let moved = done(
        &service,
        MemoryOp::Mremap {
            old_addr: AREA,
            old_len: 2 * PAGE,
            new_len: 4 * PAGE,
            flags: libc::MREMAP_MAYMOVE as u32,
            new_addr: 0,
        },
    );
    let to = moved.result;
    assert_ne!(to, AREA);
    assert_eq!(
        moved.moves,
        vec![RangeMove {
            from: AREA,
            to,
            len: 2 * PAGE
        }]
    );
    assert_eq!(fetch(&service, to + PAGE).payload, vec![0x11; PAGE_SIZE]);
    assert!(bad_request(fetch(&service, AREA)).contains("not mapped"));
    let (used, _) = used_and_committed(&service);
    let dropped = done(
        &service,
        MemoryOp::Madvise {
            addr: to,
            len: 4 * PAGE,
            advice: libc::MADV_DONTNEED as u32,
        },
    );
    assert!(dropped.changes.iter().all(|c| c.discard));
    assert_eq!(fetch(&service, to).message, Message::ZeroPage);
    assert_eq!(used_and_committed(&service).0, used - 2 * PAGE);
}

#[test]
fn release_frees_everything_and_is_idempotent() {
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    done(&service, mmap_fixed(AREA, PAGE));
    write_back(&service, vec![AREA], 1);
    for _ in 0..2 {
        let reply = call(&service, Message::ReleaseProcess { pid: PID }, Vec::new());
        assert_eq!(reply.message, Message::Released);
    }
    assert_eq!(used_and_committed(&service), (0, 0));
    assert_eq!(service.processes(), 0);
    assert!(bad_request(fetch(&service, AREA)).contains("unknown process"));
}

#[test]
fn other_requests_are_unsupported() {
    let service = MemoryService::new(PAGE);
    let reply = call(&service, Message::GetClusterView, Vec::new());
    match reply.message {
        Message::Error(ErrorReply {
            code: ErrorCode::Unsupported,
            message,
        }) => assert!(message.contains("GetClusterView")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_number_of_processes_is_bounded() {
    let service = MemoryService::new(1 << 40);
    for pid in 0..MAX_PROCESSES as u64 {
        exec(&service, pid);
    }
    let refused = bad_request(call(
        &service,
        Message::Exec {
            pid: 1 << 32,
            seq: 0,
            backup: None,
        },
        sample(2),
    ));
    assert!(
        refused.contains("already holds 4096 processes"),
        "{refused}"
    );
    // Re-exec of a known process is still fine.
    exec(&service, 5);
    call(&service, Message::ReleaseProcess { pid: 5 }, Vec::new());
    exec(&service, 1 << 32);
}

#[test]
fn processes_are_served_concurrently() {
    let service = Arc::new(MemoryService::new(256 << 20));
    let threads: Vec<_> = (0..4u64)
        .map(|pid| {
            let service = Arc::clone(&service);
            std::thread::spawn(move || {
                exec(&service, pid);
                let map = Message::Memory {
                    pid,
                    op: mmap_fixed(AREA, 64 * PAGE),
                    seq: 0,
                    spill: Vec::new(),
                };
                assert!(matches!(
                    call(&service, map, Vec::new()).message,
                    Message::MemoryDone(_)
                ));
                for round in 0..50u64 {
                    let addr = AREA + (round % 64) * PAGE;
                    let fill = (pid * 50 + round) as u8 | 1;
                    let wb = Message::WriteBack {
                        pid,
                        addrs: vec![addr],
                    };
                    assert_eq!(
                        call(&service, wb, vec![fill; PAGE_SIZE]).message,
                        Message::WrittenBack
                    );
                    let page = call(&service, Message::FetchPage { pid, addr }, Vec::new());
                    assert_eq!(page.payload, vec![fill; PAGE_SIZE]);
                }
                call(&service, Message::ReleaseProcess { pid }, Vec::new());
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    assert_eq!(used_and_committed(&service), (0, 0));
}

fn fetch_of(service: &MemoryService, pid: u64, addr: u64) -> Reply {
    call(service, Message::FetchPage { pid, addr }, Vec::new())
}

#[test]
fn fork_copies_on_write_and_charges_the_child() {
    const CHILD: u64 = 0xc41d;
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    done(&service, mmap_fixed(AREA, 4 * PAGE));
    assert_eq!(
        write_back(&service, vec![AREA, AREA + PAGE], 0x11).message,
        Message::WrittenBack
    );
    let (used, committed) = used_and_committed(&service);
    let forked = call(
        &service,
        Message::Fork {
            parent: PID,
            child: CHILD,
            seq: 0,
        },
        Vec::new(),
    );
    assert!(
        matches!(&forked.message, Message::Forked { changes, .. } if changes.is_empty()),
        "{:?}",
        forked.message
    );
    let (used_after, committed_after) = used_and_committed(&service);
    assert_eq!(used_after, used, "no page is copied by the fork itself");
    assert_eq!(
        committed_after,
        2 * committed,
        "the child is charged its own commit"
    );
    // Both see the parent's contents, and the program's.
    for pid in [PID, CHILD] {
        let page = fetch_of(&service, pid, AREA);
        assert_eq!(page.message, Message::Page);
        assert!(page.payload.iter().all(|&b| b == 0x11));
        assert_eq!(
            fetch_of(&service, pid, 0x40_0000).payload,
            sample(2)[..PAGE_SIZE]
        );
    }
    // The child writes: only its copy changes, and one page is copied.
    let payload = vec![0x22; PAGE_SIZE];
    let reply = call(
        &service,
        Message::WriteBack {
            pid: CHILD,
            addrs: vec![AREA],
        },
        payload,
    );
    assert_eq!(reply.message, Message::WrittenBack);
    assert!(fetch_of(&service, CHILD, AREA)
        .payload
        .iter()
        .all(|&b| b == 0x22));
    assert!(fetch_of(&service, PID, AREA)
        .payload
        .iter()
        .all(|&b| b == 0x11));
    assert_eq!(used_and_committed(&service).0, used + PAGE);
    // The parent's address-space changes do not reach the child.
    done(
        &service,
        MemoryOp::Munmap {
            addr: AREA,
            len: 4 * PAGE,
        },
    );
    assert!(fetch_of(&service, CHILD, AREA + PAGE)
        .payload
        .iter()
        .all(|&b| b == 0x11));
    // Releasing both frees everything.
    for pid in [PID, CHILD] {
        call(&service, Message::ReleaseProcess { pid }, Vec::new());
    }
    assert_eq!(used_and_committed(&service), (0, 0));
    // Forking an unknown process, or onto an existing one, is refused.
    let unknown = call(
        &service,
        Message::Fork {
            parent: 5,
            child: 6,
            seq: 0,
        },
        Vec::new(),
    );
    assert!(bad_request(unknown).contains("unknown process 0x5"));
    exec(&service, PID);
    exec(&service, CHILD);
    let taken = call(
        &service,
        Message::Fork {
            parent: PID,
            child: CHILD,
            seq: 0,
        },
        Vec::new(),
    );
    assert!(bad_request(taken).contains("already exists"));
}

#[test]
fn fork_fails_with_enomem_when_the_child_charge_does_not_fit() {
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    // With the stack and the program, this takes just over half the pool,
    // so a second charge of the same size cannot fit.
    let (_, committed) = used_and_committed(&service);
    let big = (64 << 20) / 2 - committed + PAGE;
    done(&service, mmap_fixed(AREA, big & !(PAGE - 1)));
    let reply = call(
        &service,
        Message::Fork {
            parent: PID,
            child: 9,
            seq: 0,
        },
        Vec::new(),
    );
    assert_eq!(
        reply.message,
        Message::MemoryFailed {
            errno: libc::ENOMEM
        }
    );
    assert_eq!(service.processes(), 1, "no child left behind");
}

#[test]
fn fork_wipes_wipeonfork_and_leaves_out_dontfork_ranges() {
    const CHILD: u64 = 0xc41e;
    let service = MemoryService::new(64 << 20);
    exec(&service, PID);
    done(&service, mmap_fixed(AREA, 3 * PAGE));
    assert_eq!(
        write_back(&service, vec![AREA, AREA + PAGE, AREA + 2 * PAGE], 0x33).message,
        Message::WrittenBack
    );
    let advise = |addr, advice: i32| MemoryOp::Madvise {
        addr,
        len: PAGE,
        advice: advice as u32,
    };
    done(&service, advise(AREA + PAGE, libc::MADV_WIPEONFORK));
    done(&service, advise(AREA + 2 * PAGE, libc::MADV_DONTFORK));
    let (_, committed) = used_and_committed(&service);
    let forked = call(
        &service,
        Message::Fork {
            parent: PID,
            child: CHILD,
            seq: 0,
        },
        Vec::new(),
    );
    let Message::Forked { changes, .. } = forked.message else {
        panic!("fork failed: {:?}", forked.message);
    };
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!((changes[0].start, changes[0].discard), (AREA + PAGE, true));
    assert_eq!(changes[1].state, lego_proto::RangeState::Unmapped);
    // The child: a copy, zeros, nothing; the parent keeps all three.
    assert!(fetch_of(&service, CHILD, AREA)
        .payload
        .iter()
        .all(|&b| b == 0x33));
    assert_eq!(
        fetch_of(&service, CHILD, AREA + PAGE).message,
        Message::ZeroPage
    );
    assert!(bad_request(fetch_of(&service, CHILD, AREA + 2 * PAGE)).contains("not mapped"));
    for page in 0..3 {
        assert!(fetch_of(&service, PID, AREA + page * PAGE)
            .payload
            .iter()
            .all(|&b| b == 0x33));
    }
    // The child is charged for what it has, not for the range it lacks.
    assert_eq!(used_and_committed(&service).1, 2 * committed - PAGE);
    // MADV_KEEPONFORK undoes WIPEONFORK; WIPEONFORK on a loaded segment
    // (file-like memory) is EINVAL, as on Linux.
    done(&service, advise(AREA + PAGE, libc::MADV_KEEPONFORK));
    assert_eq!(
        memory(&service, advise(0x40_0000, libc::MADV_WIPEONFORK)),
        Message::MemoryFailed {
            errno: libc::EINVAL
        }
    );
}

/// A request from the runtime of process `pid` of tree `tree`.
fn call_as(service: &MemoryService, ids: (u64, u64), message: Message) -> Message {
    let payload = if matches!(message, Message::Exec { .. }) {
        sample(2)
    } else {
        Vec::new()
    };
    runtime_call(service, ids, message, payload).message
}

fn denied(message: Message) -> bool {
    matches!(
        message,
        Message::Error(ErrorReply {
            code: ErrorCode::Denied,
            ..
        })
    )
}

#[test]
fn a_runtime_acts_only_on_its_own_address_space() {
    let service = MemoryService::new(64 << 20);
    let (a, b) = (0xa, 0xb);
    // Each tree makes its own process, and a child of it.
    assert!(matches!(
        call_as(
            &service,
            (a, a),
            Message::Exec {
                pid: a,
                seq: 0,
                backup: None
            }
        ),
        Message::ExecLoaded(_)
    ));
    assert!(matches!(
        call_as(
            &service,
            (b, b),
            Message::Exec {
                pid: b,
                seq: 0,
                backup: None
            }
        ),
        Message::ExecLoaded(_)
    ));
    assert!(matches!(
        call_as(
            &service,
            (a, a),
            Message::Fork {
                parent: a,
                child: 0xa1,
                seq: 0
            }
        ),
        Message::Forked { .. }
    ));
    // Its own pages: served; its child's only to the child, and the
    // parent's not to the child (each holds its own key).
    let page = |pid| Message::FetchPage {
        pid,
        addr: 0x40_0000,
    };
    assert!(!denied(call_as(&service, (a, a), page(a))));
    assert!(!denied(call_as(&service, (a, 0xa1), page(0xa1))));
    assert!(denied(call_as(&service, (a, a), page(0xa1))));
    assert!(denied(call_as(&service, (a, 0xa1), page(a))));
    // The other tree's: every kind of request is denied.
    for message in [
        Message::FetchPage {
            pid: b,
            addr: 0x40_0000,
        },
        Message::FetchPages {
            pid: b,
            addr: 0x40_0000,
            count: 4,
        },
        Message::WriteBack {
            pid: b,
            addrs: vec![],
        },
        Message::Memory {
            pid: b,
            op: MemoryOp::Brk { addr: 0 },
            seq: 0,
            spill: Vec::new(),
        },
        Message::ReleaseProcess { pid: b },
        Message::Exec {
            pid: b,
            seq: 0,
            backup: None,
        },
        Message::Fork {
            parent: b,
            child: 0xb2,
            seq: 0,
        },
        Message::Fork {
            parent: a,
            child: b,
            seq: 0,
        },
    ] {
        let kind = message.kind();
        assert!(denied(call_as(&service, (a, a), message)), "{kind}");
    }
    // A component (the processor) still may; b's space is intact.
    assert!(!denied(
        call(
            &service,
            Message::FetchPage {
                pid: b,
                addr: 0x40_0000
            },
            vec![]
        )
        .message
    ));
    // Once released, a's pid is no longer a's to touch, nor anyone's.
    assert!(matches!(
        call_as(&service, (a, a), Message::ReleaseProcess { pid: a }),
        Message::Released
    ));
    assert!(denied(call_as(
        &service,
        (b, b),
        Message::FetchPage {
            pid: 0xa1,
            addr: 0x40_0000
        }
    )));
}

fn as_role(service: &MemoryService, role: Role, message: Message, payload: Vec<u8>) -> Message {
    let peer = PeerInfo {
        addr: "127.0.0.1:9".parse().unwrap(),
        identity: Identity::new(role, "peer-1"),
    };
    service
        .handle(
            &peer,
            Frame {
                id: 1,
                message,
                payload,
            },
        )
        .message
}

fn code(reply: &Message) -> Option<ErrorCode> {
    match reply {
        Message::Error(e) => Some(e.code),
        _ => None,
    }
}

/// A backup applies its primary's changes, serves no runtime until the
/// monitor promotes it, then serves what the primary wrote; a primary of
/// an older epoch is refused, and malformed copies are answered, never
/// a panic.
#[test]
fn a_backup_follows_its_primary_and_takes_over_when_promoted() {
    let backup = MemoryService::new(64 << 20);
    let replicate = |epoch, inner: Message, payload: Vec<u8>| {
        as_role(
            &backup,
            Role::Memory,
            Message::Replicate {
                pid: PID,
                tree: PID,
                epoch,
                inner: Box::new(inner),
            },
            payload,
        )
    };
    let exec = Message::Exec {
        pid: PID,
        seq: 1,
        backup: None,
    };
    assert!(matches!(
        replicate(0, exec, sample(2)),
        Message::ExecLoaded(_)
    ));
    let mmap = Message::Memory {
        pid: PID,
        op: MemoryOp::Mmap {
            addr: AREA,
            len: 4096,
            prot: RW,
            flags: FIXED,
        },
        seq: 2,
        spill: Vec::new(),
    };
    assert!(matches!(replicate(0, mmap, vec![]), Message::MemoryDone(_)));
    let write = Message::WriteBack {
        pid: PID,
        addrs: vec![AREA],
    };
    assert_eq!(replicate(0, write, vec![0xab; 4096]), Message::WrittenBack);
    let fetch = Message::FetchPage {
        pid: PID,
        addr: AREA,
    };
    // The runtime of the process: not served by a backup.
    assert_eq!(
        code(&call_as(&backup, (PID, PID), fetch.clone())),
        Some(ErrorCode::NotHeld)
    );
    // Malformed copies and changes get answers.
    let bad_pages = Message::ReplicaPages {
        pid: PID,
        clear: vec![(10, 5)],
        addrs: vec![3],
    };
    assert!(code(&as_role(&backup, Role::Memory, bad_pages, vec![1; 4096])).is_none());
    let nested = Message::Replicate {
        pid: PID,
        tree: PID,
        epoch: 0,
        inner: Box::new(Message::ReleaseProcess { pid: PID }),
    };
    assert_eq!(
        code(&replicate(0, nested, vec![])),
        Some(ErrorCode::BadRequest)
    );
    let disordered = SpaceLayout {
        vmas: vec![
            VmaLayout {
                start: AREA + 8192,
                end: AREA + 12288,
                prot: RW,
                populated: false,
                accounted: true,
                file: None,
                on_fork: 0,
            },
            VmaLayout {
                start: AREA,
                end: AREA + 4096,
                prot: RW,
                populated: false,
                accounted: true,
                file: Some((7, 0)),
                on_fork: 0,
            },
        ],
        brk_start: 0,
        brk: 0,
        files: vec![],
        spilled: vec![],
        last_seq: 0,
        last_reply: None,
    };
    let other = Message::ReplicaOf {
        pid: PID + 1,
        tree: PID + 1,
        epoch: 0,
        layout: disordered,
    };
    assert_eq!(
        code(&as_role(&backup, Role::Memory, other, vec![])),
        Some(ErrorCode::BadRequest)
    );
    // Only memory managers pass changes on, only the monitor promotes.
    let promote = Message::Promote {
        pid: PID,
        epoch: 1,
        backup: None,
    };
    assert!(code(&as_role(&backup, Role::Processor, promote.clone(), vec![])).is_some());
    assert_eq!(
        as_role(&backup, Role::Monitor, promote, vec![]),
        Message::Promoted
    );
    let reply = backup.handle(
        &PeerInfo {
            addr: "127.0.0.1:9".parse().unwrap(),
            identity: Identity::process(PID, PID),
        },
        Frame::new(1, fetch),
    );
    assert_eq!(reply.message, Message::Page);
    assert_eq!(reply.payload, vec![0xab; 4096]);
    // The old primary, of epoch 0, may change it no more.
    let stale = Message::WriteBack {
        pid: PID,
        addrs: vec![AREA],
    };
    assert_eq!(
        code(&replicate(0, stale, vec![0xcd; 4096])),
        Some(ErrorCode::NotHeld)
    );
}

/// `service` served as memory manager "memory-b", on a loopback port.
fn serve_backup(
    secret: &lego_transport::ClusterSecret,
    service: Arc<dyn Service>,
) -> lego_transport::Server {
    lego_transport::Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        lego_transport::ServerConfig::new(secret.clone(), Identity::new(Role::Memory, "memory-b")),
        service,
    )
    .unwrap()
}

/// The memory manager `serve_backup` made, as a process's backup.
fn holder_of(server: &lego_transport::Server) -> lego_proto::MemoryHolder {
    lego_proto::MemoryHolder {
        name: "memory-b".into(),
        addr: server.local_addr(),
    }
}

/// A primary cut off while its backup was promoted (a partition) accepts
/// no write for the process afterwards: the promoted copy refuses the
/// change it passes on, so the old primary drops its stale copy and
/// answers `NotHeld` (its runtime would fail over), never `WrittenBack`.
#[test]
fn a_primary_whose_backup_was_promoted_accepts_no_more_writes() {
    use lego_transport::ClusterSecret;
    let secret = ClusterSecret::from_bytes([7; 32]);
    let backup = Arc::new(
        MemoryService::new(64 << 20).with_storage_access(secret.clone(), "memory-b".into()),
    );
    let server = serve_backup(&secret, Arc::clone(&backup) as Arc<dyn Service>);
    let primary = MemoryService::new(64 << 20).with_storage_access(secret, "memory-a".into());
    let exec = Message::Exec {
        pid: PID,
        seq: 1,
        backup: Some(holder_of(&server)),
    };
    assert!(matches!(
        call_as(&primary, (PID, PID), exec),
        Message::ExecLoaded(_)
    ));
    let mmap = Message::Memory {
        pid: PID,
        op: mmap_fixed(AREA, 4096),
        seq: 2,
        spill: Vec::new(),
    };
    assert!(matches!(
        call_as(&primary, (PID, PID), mmap),
        Message::MemoryDone(_)
    ));
    let write = |fill: u8| {
        primary
            .handle(
                &PeerInfo {
                    addr: "127.0.0.1:9".parse().unwrap(),
                    identity: Identity::process(PID, PID),
                },
                Frame {
                    id: 1,
                    message: Message::WriteBack {
                        pid: PID,
                        addrs: vec![AREA],
                    },
                    payload: vec![fill; 4096],
                },
            )
            .message
    };
    assert_eq!(write(0x11), Message::WrittenBack);
    // The monitor, taking the primary for lost, promotes the backup.
    let promote = Message::Promote {
        pid: PID,
        epoch: 1,
        backup: None,
    };
    assert_eq!(
        as_role(&backup, Role::Monitor, promote, vec![]),
        Message::Promoted
    );
    assert_eq!(code(&write(0x22)), Some(ErrorCode::NotHeld));
    assert_eq!(primary.processes(), 0, "the stale copy is dropped");
    assert_eq!(code(&write(0x33)), Some(ErrorCode::NotHeld));
    // The promoted copy holds the last write both acknowledged.
    let fetch = Message::FetchPage {
        pid: PID,
        addr: AREA,
    };
    let reply = backup.handle(
        &PeerInfo {
            addr: "127.0.0.1:9".parse().unwrap(),
            identity: Identity::process(PID, PID),
        },
        Frame::new(1, fetch),
    );
    assert_eq!(reply.message, Message::Page);
    assert_eq!(reply.payload, vec![0x11; 4096]);
}

/// A memory service whose copies (`ReplicaOf`) wait until it is opened:
/// a backup still being copied to.
struct Gated {
    inner: Arc<MemoryService>,
    open: std::sync::atomic::AtomicBool,
}

impl Service for Gated {
    fn handle(&self, peer: &PeerInfo, request: Frame) -> Reply {
        if matches!(request.message, Message::ReplicaOf { .. }) {
            let opened = poll(std::time::Duration::from_secs(20), || {
                self.open
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .then_some(())
            });
            assert!(opened.is_some(), "the test opens the gate");
        }
        self.inner.handle(peer, request)
    }
}

/// A process forked while its primary copies it to a new backup (after a
/// failover) is copied there too, so the child has a backup as well.
#[test]
fn a_child_forked_during_a_copy_to_a_new_backup_is_copied_too() {
    use lego_transport::ClusterSecret;
    const CHILD: u64 = 0xbeef;
    let secret = ClusterSecret::from_bytes([9; 32]);
    let gated = Arc::new(Gated {
        inner: Arc::new(
            MemoryService::new(64 << 20).with_storage_access(secret.clone(), "memory-b".into()),
        ),
        open: std::sync::atomic::AtomicBool::new(false),
    });
    let server = serve_backup(&secret, Arc::clone(&gated) as Arc<dyn Service>);
    let primary =
        Arc::new(MemoryService::new(64 << 20).with_storage_access(secret, "memory-a".into()));
    primary.started();
    let exec = Message::Exec {
        pid: PID,
        seq: 1,
        backup: None,
    };
    assert!(matches!(
        call_as(&primary, (PID, PID), exec),
        Message::ExecLoaded(_)
    ));
    // Promoted with a new backup: the copy waits at the backup's gate.
    let promote = Message::Promote {
        pid: PID,
        epoch: 1,
        backup: Some(holder_of(&server)),
    };
    assert_eq!(
        as_role(&primary, Role::Monitor, promote, vec![]),
        Message::Promoted
    );
    let fork = Message::Fork {
        parent: PID,
        child: CHILD,
        seq: 2,
    };
    assert!(matches!(
        call_as(&primary, (PID, PID), fork),
        Message::Forked { .. }
    ));
    gated.open.store(true, std::sync::atomic::Ordering::SeqCst);
    // Both copies made whole there (each answers `Holds` once complete).
    let holds = |pid| as_role(&gated.inner, Role::Monitor, Message::Holds { pid }, vec![]);
    let whole = |pid| {
        matches!(
            holds(pid),
            Message::Holding {
                held: true,
                primary: false,
                ..
            }
        )
    };
    let both = poll(std::time::Duration::from_secs(20), || {
        (whole(PID) && whole(CHILD)).then_some(())
    });
    assert!(
        both.is_some(),
        "the backup holds {} copies; parent {:?}, child {:?}",
        gated.inner.processes(),
        holds(PID),
        holds(CHILD)
    );
}

/// A copy a primary is still making (its layout came, `ReplicaComplete`
/// not yet) is nothing to fail over to: `Holds` answers it holds nothing
/// and `Promote` is refused, until the copy is whole.
#[test]
fn a_copy_still_being_made_is_not_offered_for_a_failover() {
    let backup = MemoryService::new(64 << 20);
    let layout = SpaceLayout {
        vmas: vec![],
        brk_start: 0x40_0000,
        brk: 0x40_0000,
        files: vec![],
        spilled: vec![],
        last_seq: 0,
        last_reply: None,
    };
    let begun = Message::ReplicaOf {
        pid: PID,
        tree: PID,
        epoch: 1,
        layout,
    };
    assert_eq!(
        as_role(&backup, Role::Memory, begun, vec![]),
        Message::Replicated
    );
    let holds = || as_role(&backup, Role::Monitor, Message::Holds { pid: PID }, vec![]);
    assert!(
        matches!(holds(), Message::Holding { held: false, .. }),
        "{:?}",
        holds()
    );
    let promote = Message::Promote {
        pid: PID,
        epoch: 2,
        backup: None,
    };
    assert!(code(&as_role(&backup, Role::Monitor, promote.clone(), vec![])).is_some());
    let done = Message::ReplicaComplete { pid: PID };
    assert_eq!(
        as_role(&backup, Role::Memory, done, vec![]),
        Message::Replicated
    );
    assert!(
        matches!(
            holds(),
            Message::Holding {
                held: true,
                primary: false,
                epoch: 1
            }
        ),
        "{:?}",
        holds()
    );
    assert_eq!(
        as_role(&backup, Role::Monitor, promote, vec![]),
        Message::Promoted
    );
}

/// A runtime's request with a payload, as process `pid` of tree `tree`.
fn runtime_call(
    service: &MemoryService,
    (tree, pid): (u64, u64),
    message: Message,
    payload: Vec<u8>,
) -> Reply {
    let peer = PeerInfo {
        addr: "127.0.0.1:9".parse().unwrap(),
        identity: Identity::process(tree, pid),
    };
    service.handle(
        &peer,
        Frame {
            id: 1,
            message,
            payload,
        },
    )
}

/// A region of a process homed elsewhere, held here at its home's word:
/// the region is reserved, the process's own runtime writes its pages
/// and reads them back (absent ones as zeros, a run clamped to the
/// region), another tree's runtime is refused, and the home's discards
/// and release free pages and reservation.
#[test]
fn a_region_held_for_another_home_serves_its_own_runtime_only() {
    const REGION: u64 = lego_proto::REGION_SIZE;
    let holder = MemoryService::new(2 * REGION);
    let hold = |region| Message::HoldRegion {
        pid: PID,
        tree: PID,
        region,
    };
    let from_home = |message| as_role(&holder, Role::Memory, message, vec![]);
    let fetch = |addr| {
        runtime_call(
            &holder,
            (PID, PID),
            Message::FetchPage { pid: PID, addr },
            vec![],
        )
    };
    let fetch_run = |addr, count| {
        runtime_call(
            &holder,
            (PID, PID),
            Message::FetchPages {
                pid: PID,
                addr,
                count,
            },
            vec![],
        )
    };
    assert_eq!(
        code(&runtime_call(&holder, (PID, PID), hold(5), vec![]).message),
        Some(ErrorCode::Denied),
        "only a memory manager places regions"
    );
    assert_eq!(
        code(&call(&holder, hold(5), vec![]).message),
        Some(ErrorCode::Unsupported)
    );
    assert_eq!(from_home(hold(5)), Message::RegionsChanged);
    assert_eq!(from_home(hold(6)), Message::RegionsChanged);
    let refused = from_home(hold(7));
    assert!(
        matches!(&refused, Message::Error(e) if e.message.contains("cannot reserve region 7")),
        "{refused:?}"
    );
    let Load::Memory { committed, .. } = holder.load() else {
        unreachable!()
    };
    assert_eq!(committed, 2 * REGION);

    let base = 5 * REGION;
    let me = (PID, PID);
    let mut pages = vec![0x11u8; PAGE_SIZE];
    pages.extend(vec![0x22u8; PAGE_SIZE]);
    let written = runtime_call(
        &holder,
        me,
        Message::WriteBack {
            pid: PID,
            addrs: vec![base, base + 2 * PAGE],
        },
        pages,
    );
    assert_eq!(written.message, Message::WrittenBack);
    let page = fetch(base + 2 * PAGE);
    assert_eq!((page.message, page.payload[0]), (Message::Page, 0x22));
    let end = fetch_run(6 * REGION - PAGE, 8);
    assert_eq!(end.message, Message::Pages { count: 1 });
    let run = fetch_run(base, 3);
    assert_eq!(run.message, Message::Pages { count: 3 });
    assert_eq!(
        (
            run.payload[0],
            run.payload[PAGE_SIZE],
            run.payload[2 * PAGE_SIZE]
        ),
        (0x11, 0, 0x22)
    );
    // Another tree's runtime naming the process gets nothing of it.
    let other = runtime_call(
        &holder,
        (PID + 1, PID),
        Message::FetchPage {
            pid: PID,
            addr: base,
        },
        vec![],
    );
    assert!(other.payload.is_empty(), "{:?}", other.message);
    assert!(code(&other.message).is_some(), "{:?}", other.message);
    let unaligned = runtime_call(
        &holder,
        me,
        Message::WriteBack {
            pid: PID,
            addrs: vec![base + 1],
        },
        vec![1; PAGE_SIZE],
    );
    assert_eq!(code(&unaligned.message), Some(ErrorCode::BadRequest));

    let discard = Message::ChangeRegions {
        pid: PID,
        discard: vec![(base, base + PAGE)],
        release: vec![],
        all: false,
    };
    assert_eq!(from_home(discard), Message::RegionsChanged);
    assert_eq!(fetch(base).message, Message::ZeroPage);
    let Load::Memory { used, .. } = holder.load() else {
        unreachable!()
    };
    assert_eq!(used, PAGE);
    let release = Message::ChangeRegions {
        pid: PID,
        discard: vec![],
        release: vec![],
        all: true,
    };
    assert_eq!(from_home(release), Message::RegionsChanged);
    let Load::Memory {
        used, committed, ..
    } = holder.load()
    else {
        unreachable!()
    };
    assert_eq!((used, committed), (0, 0));
}

/// A runtime taking over a running process asks its home for the whole
/// layout: every VMA with its protection, the break and the last change's
/// seq (from which it goes on); another process's runtime is refused.
#[test]
fn a_runtime_gets_its_own_process_layout_and_no_other() {
    let service = MemoryService::new(64 << 20);
    let as_runtime = |message| runtime_call(&service, (PID, PID), message, Vec::new());
    // The tree's first exec, then changes numbered as a runtime numbers them.
    let exec = as_runtime(Message::Exec {
        pid: PID,
        seq: 1,
        backup: None,
    });
    assert!(
        matches!(exec.message, Message::Error(_)),
        "an exec carries its image"
    );
    let loaded = runtime_call(
        &service,
        (PID, PID),
        Message::Exec {
            pid: PID,
            seq: 1,
            backup: None,
        },
        sample(2),
    );
    assert!(
        matches!(loaded.message, Message::ExecLoaded(_)),
        "{:?}",
        loaded.message
    );
    for (seq, op) in [
        (2, mmap_fixed(AREA, 4 * PAGE)),
        (
            3,
            MemoryOp::Mprotect {
                addr: AREA + PAGE,
                len: PAGE,
                prot: libc::PROT_READ as u32,
            },
        ),
    ] {
        let reply = as_runtime(Message::Memory {
            pid: PID,
            op,
            seq,
            spill: Vec::new(),
        });
        assert!(
            matches!(reply.message, Message::MemoryDone(_)),
            "{:?}",
            reply.message
        );
    }
    let layout = match as_runtime(Message::GetLayout { pid: PID }).message {
        Message::Layout(layout) => layout,
        other => panic!("expected Layout, got {other:?}"),
    };
    assert_eq!(layout.last_seq, 3);
    let at = |addr: u64| {
        layout
            .vmas
            .iter()
            .find(|v| (v.start..v.end).contains(&addr))
            .map(|v| v.prot)
    };
    assert_eq!(at(AREA), Some(RW));
    assert_eq!(at(AREA + PAGE), Some(libc::PROT_READ as u32));
    assert_eq!(at(AREA + 3 * PAGE), Some(RW));
    assert_eq!(at(AREA + 4 * PAGE), None);
    assert!(layout.brk >= layout.brk_start && layout.brk_start > 0);
    // Another tree's runtime may not read it.
    let other = runtime_call(
        &service,
        (PID + 1, PID + 1),
        Message::GetLayout { pid: PID },
        Vec::new(),
    );
    assert!(
        matches!(other.message, Message::Error(_)),
        "{:?}",
        other.message
    );
}
