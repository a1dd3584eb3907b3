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

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn process_info() -> impl Strategy<Value = ProcessInfo> {
    (
        (any::<u64>(), any::<u32>(), text(), text(), any::<u64>()),
        (any::<Option<u64>>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                (pid, host_pid, command, home_memory, excache_quota),
                (parent, resident_bytes, misses),
            )| ProcessInfo {
                pid,
                host_pid,
                backup_memory: (pid % 2 == 0).then(|| home_memory.clone()),
                command,
                home_memory,
                excache_quota,
                parent,
                resident_bytes,
                misses,
            },
        )
}

fn load() -> impl Strategy<Value = Load> {
    prop_oneof![
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(process_info(), 0..3)
        )
            .prop_map(|(cores, excache_quota, excache_used, processes)| {
                Load::Processor {
                    cores,
                    excache_quota,
                    excache_used,
                    processes,
                }
            }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(capacity, used, committed)| {
            Load::Memory {
                capacity,
                used,
                committed,
                copies: vec![CopyProgress {
                    pid: capacity,
                    to: "memory-1".into(),
                    copied_bytes: used,
                    total_bytes: committed,
                }],
                held: vec![HeldBytes {
                    pid: used,
                    bytes: committed,
                    primary: capacity % 2 == 0,
                }],
                regions: vec![HeldRegions {
                    pid: committed,
                    regions: (used % 7) as u32,
                    bytes: capacity,
                }],
            }
        }),
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

fn holder() -> impl Strategy<Value = MemoryHolder> {
    (text(), addr()).prop_map(|(name, addr)| MemoryHolder { name, addr })
}

fn home() -> impl Strategy<Value = MemoryHome> {
    (holder(), prop::option::of(holder()), any::<u64>()).prop_map(|(primary, backup, epoch)| {
        MemoryHome {
            primary,
            backup,
            epoch,
        }
    })
}

fn registration() -> impl Strategy<Value = Registration> {
    (
        text(),
        role(),
        addr(),
        any::<u32>(),
        load(),
        prop::option::of(text()),
    )
        .prop_map(|(name, role, addr, pid, load, unix_socket)| Registration {
            name,
            role,
            addr,
            pid,
            load,
            unix_socket,
        })
}

fn range_change() -> impl Strategy<Value = RangeChange> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::option::of((any::<u32>(), any::<bool>())),
        any::<bool>(),
    )
        .prop_map(|(start, end, mapped, discard)| RangeChange {
            start,
            end,
            state: match mapped {
                Some((prot, populated)) => RangeState::Mapped { prot, populated },
                None => RangeState::Unmapped,
            },
            discard,
        })
}

fn voucher() -> impl Strategy<Value = Voucher> {
    (
        any::<u64>(),
        any::<[u32; 4]>(),
        any::<[u32; 4]>(),
        prop::collection::vec(any::<u32>(), 0..8),
        any::<[u8; 32]>(),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                tree,
                uids,
                gids,
                groups,
                seal,
                (pid, issued_ms, expires_ms),
                file,
                (effective, permitted),
            )| Voucher {
                tree,
                pid,
                issued_ms,
                expires_ms,
                scope: file.map_or(VoucherScope::Process, |h| {
                    VoucherScope::ReadFile(FileHandle(h))
                }),
                uids,
                gids,
                groups,
                caps: lego_proto::Capabilities {
                    effective,
                    permitted,
                },
                seal,
            },
        )
}

fn memory_op() -> impl Strategy<Value = MemoryOp> {
    let n = any::<u64>;
    prop_oneof![
        (n(), n(), any::<u32>(), any::<u32>()).prop_map(|(addr, len, prot, flags)| {
            MemoryOp::Mmap {
                addr,
                len,
                prot,
                flags,
            }
        }),
        (
            (n(), n(), any::<u32>(), any::<u32>()),
            (addr(), bytes(), n(), voucher())
        )
            .prop_map(
                |((addr, len, prot, flags), (storage, handle, offset, caller))| {
                    MemoryOp::MmapFile {
                        addr,
                        len,
                        prot,
                        flags,
                        storage,
                        handle: FileHandle(handle),
                        offset,
                        caller: Box::new(caller),
                    }
                }
            ),
        (n(), n()).prop_map(|(addr, len)| MemoryOp::Munmap { addr, len }),
        (n(), n(), any::<u32>()).prop_map(|(addr, len, prot)| MemoryOp::Mprotect {
            addr,
            len,
            prot
        }),
        (n(), n(), n(), any::<u32>(), n()).prop_map(
            |(old_addr, old_len, new_len, flags, new_addr)| MemoryOp::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                new_addr
            }
        ),
        n().prop_map(|addr| MemoryOp::Brk { addr }),
        (n(), n(), any::<u32>()).prop_map(|(addr, len, advice)| MemoryOp::Madvise {
            addr,
            len,
            advice
        }),
    ]
}

fn stats() -> impl Strategy<Value = ExcacheStats> {
    (
        prop::array::uniform8(any::<u64>()),
        any::<u64>(),
        prop::collection::vec(any::<u64>(), 0..40),
    )
        .prop_map(
            |(a, bytes_written_back, miss_latency_log2_ns)| ExcacheStats {
                quota_bytes: a[0],
                peak_resident_bytes: a[1],
                misses: a[2],
                zero_fills: a[3],
                prefetched: a[0] ^ a[3],
                evictions: a[4],
                writebacks: a[5],
                writeback_batches: a[6],
                bytes_fetched: a[7],
                bytes_written_back,
                miss_latency_log2_ns,
            },
        )
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal),
    ]
}

fn process_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        prop::option::of(text()).prop_map(|processor| Message::PlaceProcess { processor }),
        (
            registration(),
            registration(),
            prop::option::of(registration()),
            prop::option::of(registration())
        )
            .prop_map(|(processor, memory, backup, storage)| Message::Placement {
                processor,
                memory,
                backup: backup.map(Box::new),
                storage: storage.map(Box::new)
            }),
        (any::<u64>(), any::<u64>(), home(), text()).prop_map(|(pid, tree, home, failed)| {
            Message::Failover {
                pid,
                tree,
                home,
                failed,
            }
        }),
        home().prop_map(Message::MemoryMoved),
        (any::<u64>(), any::<u64>(), prop::option::of(holder()))
            .prop_map(|(pid, epoch, backup)| Message::Promote { pid, epoch, backup }),
        Just(Message::Promoted),
        Just(Message::Fenced),
        any::<u64>().prop_map(|pid| Message::Holds { pid }),
        Just(Message::Holdings),
        any::<u64>().prop_map(|pid| Message::ReplicaComplete { pid }),
        any::<(u64, u64, u64)>().prop_map(|(pid, tree, region)| Message::HoldRegion {
            pid,
            tree,
            region
        }),
        (
            any::<u64>(),
            prop::collection::vec(any::<(u64, u64)>(), 0..3),
            prop::collection::vec(any::<u64>(), 0..3),
            any::<bool>()
        )
            .prop_map(|(pid, discard, release, all)| Message::ChangeRegions {
                pid,
                discard,
                release,
                all
            }),
        Just(Message::RegionsChanged),
        (
            any::<(u64, u64)>(),
            prop::collection::vec("[a-z0-9-]{0,12}", 0..3)
        )
            .prop_map(|((pid, region), except)| Message::PlaceRegion {
                pid,
                region,
                except
            }),
        holder().prop_map(Message::RegionPlaced),
        prop::collection::vec(
            (
                any::<(u64, u64, u64)>(),
                any::<bool>(),
                prop::option::of(holder()),
                any::<bool>(),
                any::<u64>()
            ),
            0..4
        )
        .prop_map(|copies| Message::HoldingList(
            copies
                .into_iter()
                .map(
                    |((pid, tree, epoch), primary, backup, copying, stored_bytes)| HeldCopy {
                        pid,
                        tree,
                        epoch,
                        primary,
                        backup,
                        copying,
                        stored_bytes,
                    }
                )
                .collect()
        )),
        (any::<u64>(), any::<u64>(), prop::option::of(holder()))
            .prop_map(|(pid, epoch, backup)| Message::Rebackup { pid, epoch, backup }),
        (any::<u64>(), any::<u64>()).prop_map(|(pid, epoch)| Message::Relinquish { pid, epoch }),
        Just(Message::Relinquished),
        text().prop_map(|name| Message::Drain { name }),
        Just(Message::DrainStarted),
        (any::<u64>(), home()).prop_map(|(pid, home)| Message::HomeChanged { pid, home }),
        (any::<bool>(), any::<u64>(), any::<bool>()).prop_map(|(held, epoch, primary)| {
            Message::Holding {
                held,
                epoch,
                primary,
            }
        }),
        (
            bytes(),
            prop::collection::vec(bytes(), 0..4),
            prop::collection::vec(bytes(), 0..4),
            bytes(),
            any::<u64>(),
            addr(),
            text(),
            prop::option::of(addr()),
        )
            .prop_map(
                |(program, argv, envp, cwd, excache, memory, memory_name, storage)| {
                    Message::Launch(LaunchSpec {
                        program,
                        argv,
                        envp,
                        cwd,
                        excache,
                        memory,
                        memory_name: memory_name.clone(),
                        memory_backup: (excache % 3 == 0).then(|| MemoryHolder {
                            name: memory_name.clone(),
                            addr: memory,
                        }),
                        memory_capacity: excache ^ 0x5555,
                        memory_available: excache >> 3,
                        storage,
                        storage_name: memory_name,
                        storage_retry_ms: excache.rotate_left(7),
                        controlling_tty: excache % 2 == 1,
                        stdio: match excache % 3 {
                            0 => StdioSpec::Passed,
                            n => StdioSpec::Relayed(RelayedStdio {
                                terminal: (n == 1).then(|| TerminalSettings {
                                    iflag: excache as u32,
                                    oflag: 1,
                                    cflag: 2,
                                    lflag: 3,
                                    line: 0,
                                    cc: vec![3; 32],
                                    ispeed: 38400,
                                    ospeed: 38400,
                                    size: WindowSize {
                                        rows: 24,
                                        cols: 80,
                                        xpixel: 0,
                                        ypixel: 0,
                                    },
                                }),
                                routes: [
                                    StreamRoute::Terminal,
                                    StreamRoute::Pipe,
                                    StreamRoute::Stdout,
                                ],
                            }),
                        },
                    })
                }
            ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(pid, host_pid)| Message::Launched { pid, host_pid }),
        any::<u64>().prop_map(|pid| Message::WaitProcess { pid }),
        text().prop_map(|processor| Message::GuestAccepted { processor }),
        (any::<u8>(), text())
            .prop_map(|(status, message)| Message::NotRun(NotRun { status, message })),
        (any::<u64>(), any::<i32>(), any::<bool>())
            .prop_map(|(pid, signal, group)| Message::SignalProcess { pid, signal, group }),
        Just(Message::Input),
        Just(Message::Freeze),
        Just(Message::Thaw),
        Just(Message::Thawed),
        any::<u64>().prop_map(|pid| Message::Checkpoint { pid }),
        (any::<u32>(), any::<u64>()).prop_map(|(threads, us)| Message::Checkpointed {
            report: lego_proto::runtime::FreezeReport {
                threads,
                files: threads / 2,
                written_back_bytes: us,
                stop_us: us / 3,
                flush_us: us / 5,
                state_bytes: us / 7,
            },
            stopped_us: us,
        }),
        any::<u64>().prop_map(|bytes| Message::InputTaken { bytes }),
        any::<u8>().prop_map(|stream| Message::Output { stream }),
        any::<u8>().prop_map(|stream| Message::OutputClosed { stream }),
        (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| Message::Resize(WindowSize {
            rows,
            cols,
            xpixel: 1,
            ypixel: 2
        })),
        (
            any::<u64>(),
            exit_status(),
            prop::option::of(text()),
            prop::option::of(stats())
        )
            .prop_map(|(pid, status, error, stats)| Message::Exited(ExitReport {
                pid,
                status,
                error,
                stats
            })),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            text(),
            addr(),
            text()
        )
            .prop_map(|(pid, parent, host_pid, command, memory, memory_name)| {
                Message::Adopt(AdoptSpec {
                    pid,
                    parent,
                    host_pid,
                    command,
                    memory,
                    memory_backup: (pid % 2 == 0).then(|| MemoryHolder {
                        name: memory_name.clone(),
                        addr: memory,
                    }),
                    memory_name,
                    excache: pid ^ parent,
                })
            }),
        voucher().prop_map(|voucher| Message::Adopted { voucher }),
    ]
}

fn memory_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), prop::option::of(holder()))
            .prop_map(|(pid, seq, backup)| Message::Exec { pid, seq, backup }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(parent, child, seq)| Message::Fork {
            parent,
            child,
            seq
        }),
        (
            prop::collection::vec(range_change(), 0..4),
            any::<[u8; 32]>()
        )
            .prop_map(|(changes, child_key)| Message::Forked { changes, child_key }),
        (
            prop::array::uniform6(any::<u64>()),
            any::<u16>(),
            any::<u16>(),
            prop::collection::vec(range_change(), 0..5)
        )
            .prop_map(
                |(a, phnum, phent, mappings)| Message::ExecLoaded(ExecImage {
                    entry: a[0],
                    phdr: a[1],
                    phnum,
                    phent,
                    load_bias: a[2],
                    brk: a[3],
                    stack_top: a[4],
                    mappings,
                })
            ),
        (any::<u64>(), memory_op(), any::<u64>()).prop_map(|(pid, op, seq)| Message::Memory {
            pid,
            op,
            seq,
            spill: Vec::new(),
        }),
        (
            any::<u64>(),
            prop::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..3),
            prop::collection::vec(range_change(), 0..5)
        )
            .prop_map(
                |(result, moves, changes)| Message::MemoryDone(MemoryOpDone {
                    result,
                    moves: moves
                        .into_iter()
                        .map(|(from, to, len)| RangeMove { from, to, len })
                        .collect(),
                    spilled: vec![SpilledRegion {
                        region: result % 9,
                        holders: Vec::new(),
                    }],
                    unspilled: vec![result % 5],
                    changes,
                })
            ),
        any::<i32>().prop_map(|errno| Message::MemoryFailed { errno }),
        (any::<u64>(), any::<u64>()).prop_map(|(pid, addr)| Message::FetchPage { pid, addr }),
        Just(Message::Page),
        Just(Message::ZeroPage),
        (any::<u64>(), any::<u64>(), any::<u32>())
            .prop_map(|(pid, addr, count)| Message::FetchPages { pid, addr, count }),
        any::<u32>().prop_map(|count| Message::Pages { count }),
        (any::<u64>(), prop::collection::vec(any::<u64>(), 0..8))
            .prop_map(|(pid, addrs)| Message::WriteBack { pid, addrs }),
        Just(Message::WrittenBack),
        any::<u64>().prop_map(|pid| Message::ReleaseProcess { pid }),
        Just(Message::Released),
        (any::<u64>(), any::<u64>(), any::<u64>(), memory_op()).prop_map(
            |(pid, tree, epoch, op)| Message::Replicate {
                pid,
                tree,
                epoch,
                inner: Box::new(Message::Memory {
                    pid,
                    op,
                    seq: epoch,
                    spill: Vec::new(),
                }),
            }
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), layout()).prop_map(
            |(pid, tree, epoch, layout)| Message::ReplicaOf {
                pid,
                tree,
                epoch,
                layout
            }
        ),
        any::<u64>().prop_map(|pid| Message::GetLayout { pid }),
        layout().prop_map(Message::Layout),
        (
            any::<u64>(),
            prop::collection::vec((any::<u64>(), any::<u64>()), 0..3),
            prop::collection::vec(any::<u64>(), 0..8)
        )
            .prop_map(|(pid, clear, addrs)| Message::ReplicaPages { pid, clear, addrs }),
        Just(Message::Replicated),
    ]
}

fn layout() -> impl Strategy<Value = SpaceLayout> {
    (
        prop::collection::vec(
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                any::<u8>(),
            ),
            0..4,
        ),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(
            (addr(), prop::collection::vec(any::<u8>(), 0..16), voucher()),
            0..2,
        ),
    )
        .prop_map(|(vmas, brk_start, brk, files)| SpaceLayout {
            vmas: vmas
                .into_iter()
                .map(|(start, end, prot, populated, on_fork)| VmaLayout {
                    start,
                    end,
                    prot,
                    populated,
                    accounted: !populated,
                    file: populated.then_some((0, start)),
                    on_fork,
                })
                .collect(),
            brk_start,
            brk,
            files: files
                .into_iter()
                .map(|(storage, handle, caller)| MappedFile {
                    storage,
                    handle: FileHandle(handle),
                    caller,
                })
                .collect(),
            spilled: vec![
                SpilledRegion {
                    region: brk % 7,
                    holders: vec![MemoryHolder {
                        name: "memory-1".into(),
                        addr: "127.0.0.1:4100".parse().unwrap(),
                    }],
                },
                SpilledRegion {
                    region: brk_start % 5,
                    holders: Vec::new(),
                },
            ],
            last_seq: brk ^ brk_start,
            last_reply: (brk % 2 == 0).then(|| Box::new(Message::Promoted)),
        })
}

fn member() -> impl Strategy<Value = MemberStatus> {
    (registration(), any::<bool>(), load(), any::<u64>()).prop_map(
        |(registration, alive, load, heartbeat_age_ms)| MemberStatus {
            registration,
            health: if alive { Health::Alive } else { Health::Dead },
            load,
            heartbeat_age_ms,
            draining: (heartbeat_age_ms % 3 == 0).then(|| DrainState {
                moved: (heartbeat_age_ms >> 8) as u32,
                left: (heartbeat_age_ms >> 40) as u32,
                done: heartbeat_age_ms % 2 == 0,
                error: (heartbeat_age_ms % 5 == 0).then(|| "no room".to_string()),
            }),
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
        Just(ErrorCode::Denied),
        Just(ErrorCode::NotHeld),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        control_message(),
        process_message(),
        memory_message(),
        storage_message()
    ]
}

fn file_handle() -> impl Strategy<Value = FileHandle> {
    prop::collection::vec(any::<u8>(), 0..80).prop_map(FileHandle)
}

fn file_type() -> impl Strategy<Value = FileType> {
    prop_oneof![
        Just(FileType::Regular),
        Just(FileType::Directory),
        Just(FileType::Symlink),
        Just(FileType::CharDevice),
        Just(FileType::BlockDevice),
        Just(FileType::Fifo),
        Just(FileType::Socket),
        Just(FileType::Unknown),
    ]
}

fn timespec() -> impl Strategy<Value = Timespec> {
    (any::<i64>(), any::<u32>()).prop_map(|(sec, nsec)| Timespec { sec, nsec })
}

fn set_time() -> impl Strategy<Value = SetTime> {
    prop_oneof![Just(SetTime::Now), timespec().prop_map(SetTime::At)]
}

fn file_attr() -> impl Strategy<Value = FileAttr> {
    (
        file_type(),
        prop::array::uniform8(any::<u64>()),
        prop::array::uniform4(any::<u32>()),
        (timespec(), timespec(), timespec()),
    )
        .prop_map(|(file_type, n, m, (atime, mtime, ctime))| FileAttr {
            file_type,
            mode: m[0],
            nlink: n[0],
            uid: m[1],
            gid: m[2],
            size: n[1],
            blocks: n[2],
            blksize: m[3],
            atime,
            mtime,
            ctime,
            dev: n[3],
            ino: n[4],
            rdev: n[5],
        })
}

fn set_attr() -> impl Strategy<Value = SetAttr> {
    (
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        prop::option::of(set_time()),
        prop::option::of(set_time()),
    )
        .prop_map(|(size, mode, uid, gid, atime, mtime)| SetAttr {
            size,
            mode,
            uid,
            gid,
            atime,
            mtime,
        })
}

fn storage_request() -> impl Strategy<Value = StorageRequest> {
    let h = file_handle;
    prop_oneof![
        Just(StorageRequest::Root),
        (h(), bytes(), any::<bool>()).prop_map(|(dir, path, follow)| StorageRequest::Lookup {
            dir,
            path,
            follow
        }),
        h().prop_map(|handle| StorageRequest::Getattr { handle }),
        (h(), set_attr()).prop_map(|(handle, set)| StorageRequest::Setattr { handle, set }),
        (h(), any::<u64>(), any::<u32>()).prop_map(|(handle, offset, len)| StorageRequest::Read {
            handle,
            offset,
            len
        }),
        (h(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(handle, offset, append, stable)| StorageRequest::Write {
                handle,
                offset,
                append,
                stable
            }
        ),
        (h(), any::<bool>())
            .prop_map(|(handle, data_only)| StorageRequest::Commit { handle, data_only }),
        (h(), bytes(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
            |(dir, name, mode, exclusive, truncate)| StorageRequest::Create {
                dir,
                name,
                mode,
                exclusive,
                truncate
            }
        ),
        (h(), bytes(), any::<u32>()).prop_map(|(dir, name, mode)| StorageRequest::Mkdir {
            dir,
            name,
            mode
        }),
        (h(), bytes()).prop_map(|(dir, name)| StorageRequest::Remove { dir, name }),
        (h(), bytes()).prop_map(|(dir, name)| StorageRequest::Rmdir { dir, name }),
        (h(), bytes(), h(), bytes(), any::<u32>()).prop_map(
            |(from_dir, from_name, to_dir, to_name, flags)| StorageRequest::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                flags
            }
        ),
        (h(), h(), bytes()).prop_map(|(handle, dir, name)| StorageRequest::Link {
            handle,
            dir,
            name
        }),
        (h(), bytes(), bytes()).prop_map(|(dir, name, target)| StorageRequest::Symlink {
            dir,
            name,
            target
        }),
        h().prop_map(|handle| StorageRequest::Readlink { handle }),
        (h(), any::<u64>(), any::<u32>()).prop_map(|(dir, cookie, max_bytes)| {
            StorageRequest::Readdir {
                dir,
                cookie,
                max_bytes,
            }
        }),
        h().prop_map(|handle| StorageRequest::Statfs { handle }),
        (
            h(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u32>(), 0..8),
            any::<u64>(),
        )
            .prop_map(
                |(handle, mask, uid, gid, groups, caps)| StorageRequest::Access {
                    handle,
                    mask,
                    credentials: Credentials {
                        uid,
                        gid,
                        groups,
                        caps,
                    },
                }
            ),
    ]
}

fn storage_reply() -> impl Strategy<Value = StorageReply> {
    let entry = (bytes(), any::<u64>(), file_type(), any::<u64>()).prop_map(
        |(name, ino, file_type, cookie)| DirEntry {
            name,
            ino,
            file_type,
            cookie,
        },
    );
    prop_oneof![
        (file_handle(), file_attr())
            .prop_map(|(handle, attr)| StorageReply::Found { handle, attr }),
        file_attr().prop_map(StorageReply::Attr),
        any::<bool>().prop_map(|eof| StorageReply::Data { eof }),
        (any::<u32>(), file_attr()).prop_map(|(count, attr)| StorageReply::Written { count, attr }),
        bytes().prop_map(|target| StorageReply::Target { target }),
        (prop::collection::vec(entry, 0..6), any::<bool>())
            .prop_map(|(entries, eof)| StorageReply::Entries { entries, eof }),
        prop::array::uniform11(any::<u64>()).prop_map(|n| StorageReply::FsStat(FsStat {
            fs_type: n[0],
            bsize: n[1],
            blocks: n[2],
            bfree: n[3],
            bavail: n[4],
            files: n[5],
            ffree: n[6],
            fsid: n[7],
            namelen: n[8],
            frsize: n[9],
            flags: n[10],
        })),
        Just(StorageReply::Done),
    ]
}

fn storage_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (storage_request(), prop::option::of(voucher()))
            .prop_map(|(request, caller)| Message::Storage { request, caller }),
        any::<u32>().prop_map(|tid| Message::Vouch { tid }),
        voucher().prop_map(Message::Vouched),
        (
            any::<bool>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..120)
        )
            .prop_map(|(connect, tid, path)| Message::SocketAt { connect, tid, path }),
        any::<i32>().prop_map(|errno| Message::SocketDone { errno }),
        storage_reply().prop_map(Message::StorageDone),
        any::<i32>().prop_map(|errno| Message::StorageFailed { errno }),
    ]
}

fn control_message() -> impl Strategy<Value = Message> {
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
fn file_types_agree_with_linux() {
    for file_type in [
        FileType::Regular,
        FileType::Directory,
        FileType::Symlink,
        FileType::CharDevice,
        FileType::BlockDevice,
        FileType::Fifo,
        FileType::Socket,
    ] {
        assert_eq!(
            FileType::from_mode(file_type.mode_bits() | 0o644),
            file_type
        );
    }
    assert_eq!(FileType::Directory.dirent_type(), 4);
    assert_eq!(FileType::Regular.dirent_type(), 8);
    assert_eq!(dirent64_len(1), 24);
    assert_eq!(dirent64_len(4), 24);
    assert_eq!(dirent64_len(5), 32);
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
