//! Files on the storage manager: a cluster exporting a directory of its
//! own, so what a program sees and writes can only come from there.

mod common;

use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// An export directory holding a static program and a data file that
/// exist nowhere else; removed on drop.
struct Export {
    root: PathBuf,
}

impl Export {
    fn new(tag: &str) -> Export {
        let root =
            std::env::temp_dir().join(format!("lego-test-export-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(
            program("slowcat", Build::GlibcStatic),
            root.join("bin/slowcat"),
        )
        .unwrap();
        let data: String = (0..8000)
            .map(|i| format!("line {i} only in the export\n"))
            .collect();
        std::fs::write(root.join("data.txt"), data).unwrap();
        Export { root }
    }

    fn data(&self) -> String {
        std::fs::read_to_string(self.root.join("data.txt")).unwrap()
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn up(export: &Export) -> Cluster {
    Cluster::up(&["--memories", "1", "--export", export.root.to_str().unwrap()])
}

#[test]
fn files_come_from_the_export_and_writes_land_there() {
    let export = Export::new("confined");
    let cluster = up(&export);
    let host_name = format!("/lego-test-written-{}", std::process::id());
    let out = cluster.run(
        &[],
        Path::new("/bin/slowcat"),
        &["/data.txt", "/etc/hostname", &format!("write={host_name}")],
    );
    assert_eq!(shell_status(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        export.data(),
        "the data file comes from the export"
    );
    assert!(
        text(&out.stderr).contains("/etc/hostname: No such file or directory"),
        "host files outside the export are invisible: {}",
        text(&out.stderr)
    );
    let written = export.root.join(host_name.trim_start_matches('/'));
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "written under lego\n"
    );
    assert!(
        !Path::new(&host_name).exists(),
        "the write reached the host's {host_name}"
    );
}

#[test]
fn a_written_file_survives_a_killed_and_restarted_storage_manager() {
    let export = Export::new("survive");
    let cluster = up(&export);
    let out = cluster.run(&[], Path::new("/bin/slowcat"), &["write=/kept.txt"]);
    assert_eq!(shell_status(&out), 0, "{}", text(&out.stderr));
    kill9(cluster.pid("storage-0"));
    let restarted = cluster.lego(&["restart", "storage-0"]);
    assert!(restarted.status.success(), "{}", text(&restarted.stderr));
    let out = cluster.run(&[], Path::new("/bin/slowcat"), &["/kept.txt"]);
    assert_eq!(
        text(&out.stdout),
        "written under lego\n",
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_storage_restart_in_the_middle_of_a_run_is_only_a_retry() {
    let export = Export::new("midrun");
    let cluster = up(&export);
    let processor = cluster.pid("processor-0");
    let mut child = cluster
        .run_command(&[], Path::new("/bin/slowcat"), &["/data.txt"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the program runs (it takes over a second to copy the file),
    // kill the storage manager and start it again.
    poll(Duration::from_secs(10), || {
        runtimes_of(processor).first().copied()
    })
    .expect("the program starts");
    kill9(cluster.pid("storage-0"));
    let restarted = cluster.lego(&["restart", "storage-0"]);
    assert!(restarted.status.success(), "{}", text(&restarted.stderr));
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(out, export.data(), "{err}");
}

#[test]
fn programs_that_cannot_be_loaded_are_named_in_the_error() {
    let export = Export::new("badprog");
    // A dynamically linked program whose interpreter is missing.
    let mut image = std::fs::read("/bin/true").unwrap();
    let interp = b"/lib64/ld-linux-x86-64.so.2";
    let at = image
        .windows(interp.len())
        .position(|w| w == interp)
        .expect("/bin/true names its interpreter");
    image[at + interp.len() - 1] = b'9';
    let broken = export.root.join("bin/broken");
    std::fs::write(&broken, &image).unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cluster = up(&export);
    let out = cluster.run(&[], Path::new("/bin/broken"), &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/bin/broken") && err.contains("ld-linux-x86-64.so.9"),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");
    // A program that exists on the host but not in the export.
    let host_only = program("hello", Build::GlibcStatic);
    let out = cluster.run(&[], &host_only, &[]);
    assert_eq!(shell_status(&out), 127, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("No such file or directory"));
    // The cluster is unharmed.
    let ok = cluster.run(&[], Path::new("/bin/slowcat"), &["/data.txt"]);
    assert_eq!(text(&ok.stdout), export.data());
}
