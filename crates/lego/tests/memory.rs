//! Memory managers as failure domains and as resources: what they hold
//! goes back when it is freed.

mod common;

use common::*;
use std::time::Duration;

/// A memory manager's and the storage manager's resident memory returns
/// close to where it started once the pages they held are freed: within
/// 48 MiB for the memory manager (16 MiB of freed pages kept for reuse,
/// 16 MiB of file page cache, its heap) and 32 MiB for storage, after a
/// 512 MiB workload through a small ExCache and eight programs reading a
/// 64 MiB file at once (before: 223 MB and 150 MB stayed for good).
#[test]
fn resident_memory_returns_once_pages_are_freed() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let (memory, storage) = (cluster.pid("memory-0"), cluster.pid("storage-0"));
    let rss = |pid| rss_bytes(pid).expect("the component runs");
    let (memory_base, storage_base) = (rss(memory), rss(storage));
    let memstress = program("memstress", Build::GlibcStatic);
    let out = cluster.run(&["--excache", "16M"], &memstress, &[]);
    assert_same(&out, &native(&memstress, &[]), "memstress");
    let big = std::env::temp_dir().join(format!("lego-test-rss-{}", std::process::id()));
    std::fs::write(&big, vec![7u8; 64 << 20]).unwrap();
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8; do md5sum {} & done; wait",
        big.display()
    );
    let sh = std::path::Path::new("/bin/sh");
    let read = cluster.run(&[], sh, &["-c", &script]);
    let _ = std::fs::remove_file(&big);
    assert_eq!(text(&read.stdout).lines().count(), 8, "{read:?}");
    let within = |pid, base: u64, bound: u64| {
        poll(Duration::from_secs(20), || {
            (rss(pid) <= base + bound).then_some(())
        })
    };
    assert!(
        within(memory, memory_base, 48 << 20).is_some(),
        "the memory manager keeps {} MiB resident (it started at {} MiB)",
        rss(memory) >> 20,
        memory_base >> 20
    );
    assert!(
        within(storage, storage_base, 32 << 20).is_some(),
        "the storage manager keeps {} MiB resident (it started at {} MiB)",
        rss(storage) >> 20,
        storage_base >> 20
    );
}
