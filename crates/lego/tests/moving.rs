//! Processes frozen where they run (`lego checkpoint`): every thread
//! stopped at a boundary, dirty pages written back, the whole state
//! taken, then thawed, again and again during a run; the program's output
//! and status stay those of the native run.

mod common;

use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Runs `program ARGS` under Lego, freezing and thawing it `times` times
/// while it runs; returns its output and the `lego checkpoint` lines.
/// `seen`: the pids of earlier runs (which `lego ps` may list a while).
fn run_frozen(
    cluster: &Cluster,
    program: &Path,
    args: &[&str],
    times: usize,
    seen: &mut Vec<u64>,
) -> (std::process::Output, Vec<String>) {
    let child = cluster
        .run_command(&["--excache", "16M"], program, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lego run starts");
    let pid = poll(Duration::from_secs(30), || {
        cluster
            .processes()
            .into_iter()
            .map(|(pid, _, _)| pid)
            .find(|pid| !seen.contains(pid))
    })
    .expect("the program is listed");
    seen.push(pid);
    let mut reports = Vec::new();
    for _ in 0..times {
        let out = cluster.lego(&["checkpoint", &format!("{pid:x}")]);
        if !out.status.success() {
            // It may have ended meanwhile: then lego ps no longer lists it.
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("no live processor runs"),
                "checkpoint failed while the program ran: {stderr}"
            );
            break;
        }
        reports.push(text(&out.stdout));
        std::thread::sleep(Duration::from_millis(100));
    }
    (child.wait_with_output().expect("lego run ends"), reports)
}

#[test]
fn programs_frozen_and_thawed_again_and_again_run_as_natively() {
    let cluster = Cluster::up(&["--memories", "1", "--memory-capacity", "4G"]);
    let checksum = program("checksum", Build::GlibcStatic);
    let python = Path::new("/usr/bin/python3");
    let script = "import hashlib\n\
                  h = hashlib.sha256()\n\
                  a = [bytes([i % 251]) * 1000 for i in range(200000)]\n\
                  for r in range(3):\n    for x in a: h.update(x)\n\
                  print(len(a), h.hexdigest())";
    let cases: [(&Path, Vec<&str>); 3] = [
        (&checksum, vec!["64", "12", "single"]),
        (&checksum, vec!["64", "12", "threads"]),
        (python, vec!["-c", script]),
    ];
    let mut seen = Vec::new();
    for (program, args) in cases {
        let native = native(program, &args);
        let (lego, reports) = run_frozen(&cluster, program, &args, 10, &mut seen);
        let what = format!("{} {}", program.display(), args.join(" "));
        assert_same(&lego, &native, &what);
        assert!(
            reports.len() >= 3,
            "{what}: frozen only {} times before it ended",
            reports.len()
        );
        for report in &reports {
            assert!(
                report.starts_with("froze process") && report.contains("threads stopped in"),
                "{what}: {report}"
            );
        }
    }
    // A freeze writes the dirty pages back: the first one, of a program
    // writing its working set, wrote some.
    let (_, reports) = run_frozen(&cluster, &checksum, &["64", "12", "single"], 1, &mut seen);
    let first = reports.first().expect("frozen once");
    assert!(!first.contains(" 0 B of dirty pages"), "{first}");
}
