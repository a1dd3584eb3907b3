//! `lego run` on a real local cluster: unmodified static programs, their
//! output and exit status against the native run, their memory on the
//! memory manager through a bounded ExCache, and failures.

mod common;

use common::*;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The runtime's own resident memory beside the ExCache: the lego binary's
/// text and data, its heap (ExCache bookkeeping, buffers) and stacks.
/// Measured at 5-9 MiB for a small program; bookkeeping for a 512 MiB
/// working set adds a few MiB.
const RUNTIME_FOOTPRINT: u64 = 24 << 20;

#[test]
fn static_programs_of_every_build_run_as_natively() {
    let cluster = Cluster::up(&["--memories", "1"]);
    for build in ALL_BUILDS {
        let hello = program("hello", build);
        for args in [&["0", "two words"][..], &["3"], &["255", "x"]] {
            let lego = cluster.run(&[], &hello, args);
            let native = native(&hello, args);
            assert_same(&lego, &native, &format!("hello {build:?} {args:?}"));
        }
    }
}

#[test]
fn unmapped_accesses_end_with_status_139() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let segv = program("segv", Build::GlibcStatic);
    for args in [["low"], ["high"]] {
        let lego = cluster.run(&[], &segv, &args);
        assert_eq!(shell_status(&lego), 139, "stderr: {}", text(&lego.stderr));
        assert_same(&lego, &native(&segv, &args), "segv");
    }
    // The processor survives its program's crash.
    let hello = program("hello", Build::MuslStatic);
    assert_eq!(shell_status(&cluster.run(&[], &hello, &[])), 0);
}

#[test]
fn memory_lives_on_the_memory_manager_through_a_small_excache() {
    let cluster = Cluster::up(&["--memories", "1", "--heartbeat-interval", "200ms"]);
    let memstress = program("memstress", Build::GlibcStatic);
    let expected = native(&memstress, &[]);
    assert!(expected.status.success());

    let processor_pid = cluster.pid("processor-0");
    let mut child = cluster
        .run_command(&["--excache", "32M", "--stats"], &memstress, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let runtime = poll(Duration::from_secs(10), || {
        runtimes_of(processor_pid).first().copied()
    })
    .expect("the processor starts a runtime");
    // Sample the runtime's resident set and the memory manager's use
    // until the program ends.
    let mut max_rss = 0;
    let mut max_used = 0;
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "memstress did not finish in time"
        );
        if let Some(rss) = rss_bytes(runtime) {
            max_rss = max_rss.max(rss);
        }
        if last_status.elapsed() > Duration::from_millis(250) {
            if let Some(used) = cluster.load("memory-0", "used") {
                max_used = max_used.max(used);
            }
            last_status = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = Vec::new();
    let mut err = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    let status = child.wait().unwrap();
    let stats = text(&err);
    assert!(status.success(), "memstress under Lego failed: {stats}");
    assert_eq!(
        text(&out),
        text(&expected.stdout),
        "output differs from the native run"
    );
    eprintln!(
        "runtime max VmRSS {} KiB; memory manager max use {} KiB; {stats}",
        max_rss >> 10,
        max_used >> 10
    );
    assert!(
        max_rss <= (32 << 20) + RUNTIME_FOOTPRINT,
        "runtime RSS reached {} KiB, over the 32 MiB ExCache plus {} KiB",
        max_rss >> 10,
        RUNTIME_FOOTPRINT >> 10
    );
    assert!(
        max_used >= 128 << 20,
        "the memory manager held at most {} KiB",
        max_used >> 10
    );
    for counter in ["misses", "evictions", "written back"] {
        assert!(stats.contains(counter), "--stats lacks {counter}: {stats}");
    }
    let evictions: u64 = stats
        .split(", ")
        .find_map(|part| part.strip_suffix(" evictions")?.parse().ok())
        .unwrap_or(0);
    assert!(evictions > 10_000, "expected heavy eviction: {stats}");
    let log = cluster.log("processor-0");
    assert!(
        !log.contains("runtime bug"),
        "the runtime reported a bug:\n{log}"
    );
}

#[test]
fn mapping_more_than_the_pool_gets_enomem_and_nothing_breaks() {
    let cluster = Cluster::up(&["--memories", "1", "--memory-capacity", "256M"]);
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        let enomem = program("enomem", build);
        let lego = cluster.run(&[], &enomem, &["1024"]);
        assert_eq!(
            text(&lego.stdout),
            "big mmap: ENOMEM\nbig malloc: failed\nsmall mmap: ok, sum 700416\n",
            "{build:?} stderr: {}",
            text(&lego.stderr)
        );
        assert_eq!(shell_status(&lego), 0);
    }
    let rows = cluster.health().unwrap();
    assert!(rows.iter().all(|r| r.1 == "alive"), "{rows:?}");
}

#[test]
fn refused_and_unknown_syscalls_return_their_errno() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let refused = program("refused", Build::GlibcStatic);
    let lego = cluster.run(&[], &refused, &[]);
    assert_eq!(
        text(&lego.stdout),
        "reboot: -1 errno 1 (Operation not permitted)\n\
         mount: -1 errno 1 (Operation not permitted)\n\
         userfaultfd: -1 errno 38 (Function not implemented)\n\
         io_setup: -1 errno 38 (Function not implemented)\n\
         unknown 1000: -1 errno 38 (Function not implemented)\n\
         still running\n",
        "stderr: {}",
        text(&lego.stderr)
    );
    assert_eq!(shell_status(&lego), 0);
    let log = cluster.log("processor-0");
    assert!(log.contains("refused reboot (169) with errno 1"), "{log}");
    assert!(log.contains("unknown syscall 1000"), "{log}");
}

#[test]
fn losing_the_home_memory_manager_fails_the_run_and_names_it() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let memstress = program("memstress", Build::GlibcStatic);
    let mut child = cluster
        .run_command(&["--excache", "8M"], &memstress, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the memory manager once the program's memory is on it.
    poll(Duration::from_secs(30), || {
        cluster
            .load("memory-0", "used")
            .filter(|&used| used > 16 << 20)
    })
    .expect("the program's pages reach the memory manager");
    kill9(cluster.pid("memory-0"));
    let status =
        poll(Duration::from_secs(30), || child.try_wait().unwrap()).expect("lego run ends");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !status.success(),
        "lego run succeeded without its memory: {err}"
    );
    assert!(
        err.contains("memory-0"),
        "the error does not name the lost memory manager: {err}"
    );
    // The rest of the cluster keeps running and serving.
    let rows = poll(Duration::from_secs(10), || {
        cluster
            .health()
            .filter(|rows| rows.iter().any(|r| r.0 == "memory-0" && r.1 == "dead"))
    })
    .expect("memory-0 is reported dead");
    for name in ["monitor", "processor-0", "storage-0"] {
        assert!(
            rows.iter().any(|r| r.0 == name && r.1 == "alive"),
            "{name}: {rows:?}"
        );
    }
    assert!(process_alive(cluster.pid("processor-0")));
}

#[test]
fn with_no_cluster_lego_run_starts_and_removes_an_embedded_one() {
    let state = std::env::temp_dir().join(format!("lego-test-nocluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let hello = program("hello", Build::GlibcStatic);
    // From a directory the test harness does not run in: the program must
    // start in lego run's working directory.
    let workdir = std::env::temp_dir().join(format!("lego-test-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).unwrap();
    // The embedded cluster's directory goes under TMPDIR: here, one of
    // the test's own, which must be empty again after.
    let tmp = std::env::temp_dir().join(format!("lego-test-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let child = std::process::Command::new(LEGO)
        .env("TMPDIR", &tmp)
        .current_dir(&workdir)
        .arg("run")
        .arg("--state")
        .arg(&state)
        .arg("--")
        .arg(&hello)
        .arg("7")
        .env("LEGO_TEST_PROBE", "passed through")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(shell_status(&out), 7, "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("hello, world\nargv[1] = 7\nLEGO_TEST_PROBE = passed through\n"),
        "{stdout}"
    );
    let workdir = workdir.canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("cwd = {}\n", workdir.display())),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&workdir);
    assert!(!state.join("cluster.json").exists());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "the embedded cluster's state was left in {}: {left:?}",
        tmp.display()
    );
    assert_eq!(
        processes_mentioning(tmp.to_str().unwrap()),
        Vec::<u32>::new()
    );
    let _ = std::fs::remove_dir(&tmp);
    // The signals `lego run` blocks to forward them are not blocked in
    // the embedded cluster's components nor in the program.
    let signals = program("signals", Build::GlibcStatic);
    let out = std::process::Command::new(LEGO)
        .arg("run")
        .arg("--state")
        .arg(&state)
        .arg("--")
        .arg(&signals)
        .output()
        .unwrap();
    assert_same(&out, &native(&signals, &[]), "signals, embedded cluster");
}

#[test]
fn programs_that_cannot_run_fail_like_a_shell_says() {
    let state = std::env::temp_dir().join(format!("lego-test-badprog-{}", std::process::id()));
    let missing = lego(&state, &["run", "--", "/no/such/program"]);
    assert_eq!(shell_status(&missing), 127);
    assert!(text(&missing.stderr).contains("/no/such/program: No such file or directory"));
    let dir = lego(&state, &["run", "--", "/tmp"]);
    assert_eq!(shell_status(&dir), 126);
    assert!(text(&dir.stderr).contains("/tmp: Is a directory"));
    let plain = std::env::temp_dir().join(format!("lego-test-noexec-{}", std::process::id()));
    std::fs::write(&plain, "not a program").unwrap();
    let noexec = lego(&state, &["run", "--", plain.to_str().unwrap()]);
    assert_eq!(shell_status(&noexec), 126);
    assert!(text(&noexec.stderr).contains("Permission denied"));
    let _ = std::fs::remove_file(&plain);
}

#[test]
fn debians_own_static_ldconfig_runs_unmodified() {
    // The README's first command: a static-pie binary every Debian ships,
    // which maps /etc/ld.so.cache (a private file mapping).
    let ldconfig = std::path::Path::new("/sbin/ldconfig");
    let cluster = Cluster::up(&["--memories", "1"]);
    let lego = cluster.run(&["--excache", "1M"], ldconfig, &["-p"]);
    let native = native(ldconfig, &["-p"]);
    assert!(native.status.success());
    assert_same(&lego, &native, "ldconfig -p");
    assert!(text(&lego.stdout).contains("libs found in cache"));
}

#[test]
fn a_terminal_stays_a_terminal() {
    // `script` gives lego run a pseudo-terminal as its stdout; the program
    // must see a terminal too (one of its own, relayed).
    let cluster = Cluster::up(&["--memories", "1"]);
    let hello = program("hello", Build::GlibcStatic);
    let command = format!(
        "{} run --state {} -- {}",
        LEGO,
        cluster.state.display(),
        hello.display()
    );
    let out = std::process::Command::new(require("script"))
        .args(["-qec", &command, "/dev/null"])
        .env_remove("LEGO_STATE")
        .output()
        .expect("script (util-linux) runs");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("isatty(1) = 1"), "{stdout}");
    assert!(out.status.success(), "{stdout}");
}

#[test]
fn a_shell_on_a_terminal_has_job_control_and_ctrl_c() {
    // Under a terminal the program gets one of its own (a pseudo-terminal
    // lego run relays), which is its session's: bash runs jobs on it.
    let cluster = Cluster::up(&["--memories", "1"]);
    let lego_run = format!("{} run --state {} --", LEGO, cluster.state.display());
    let script = |command: &str, input: Option<&'static [u8]>| {
        let mut child = std::process::Command::new(require("script"))
            .args(["-qec", command, "/dev/null"])
            .env_remove("LEGO_STATE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(bytes) = input {
            // Typed again and again until the program ends: a key typed
            // before the terminal is the program's (script still starting
            // its shell, on a loaded machine) reaches nobody, as on a real
            // terminal.
            use std::io::Write;
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().expect("script waits").is_none() && Instant::now() < deadline {
                let _ = stdin.write_all(bytes);
                let _ = stdin.flush();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let out = child.wait_with_output().expect("script ends");
        drop(stdin);
        (text(&out.stdout).replace('\r', ""), out.status.code())
    };
    let jobs = "bash -ic 'sleep 0.3 & fg >/dev/null; echo \"fg: $?\";                 [ \"$(ps -o tpgid= -p $$ | tr -d \" \")\" = \"$(ps -o pgid= -p $$ | tr -d \" \")\" ] && echo foreground'";
    let (native, _) = script(jobs, None);
    let (lego, status) = script(&format!("{lego_run} {jobs}"), None);
    assert!(native.contains("fg: 0\nforeground\n"), "native: {native}");
    assert!(lego.contains("fg: 0\nforeground\n"), "{lego}");
    assert!(!lego.contains("no job control"), "{lego}");
    assert_eq!(status, Some(0));
    // Ctrl-C typed at the terminal interrupts the program.
    let started = Instant::now();
    let (_, status) = script(&format!("{lego_run} /bin/sleep 30"), Some(b"\x03"));
    assert_eq!(status, Some(128 + libc::SIGINT));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn dynamically_linked_debian_programs_and_scripts_run_as_natively() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let cases: [(&str, &[&str]); 4] = [
        ("/bin/ls", &["-la", "/usr/bin"]),
        ("/usr/bin/sha256sum", &["/bin/ls", "/etc/passwd"]),
        (
            "/usr/bin/python3",
            &[
                "-c",
                "d = {i: i * 2 for i in range(1000000)}; print(sum(d.values()))",
            ],
        ),
        ("/bin/sh", &["-c", "echo $((6 * 7)); exit 9"]),
    ];
    for (program, args) in cases {
        let lego = cluster.run(&["--excache", "64M"], std::path::Path::new(program), args);
        let native = native(std::path::Path::new(program), args);
        assert_same(&lego, &native, program);
    }
    // A `#!` script runs its interpreter with the script's path and args.
    let dir = std::env::temp_dir().join(format!("lego-test-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("hello.sh");
    std::fs::write(&script, "#!/bin/sh -e\necho \"$0 says $1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lego = cluster.run(&[], &script, &["hi"]);
    assert_same(&lego, &native(&script, &["hi"]), "script");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn execve_replaces_the_program_or_fails_as_linux_does() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let hello = program("hello", Build::MuslStatic);
    let bad = std::env::temp_dir().join(format!("lego-test-badelf-{}", std::process::id()));
    std::fs::write(&bad, b"\x7fELF\x02\x01\x01garbage").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let scripts = [
        "echo before; exec /bin/echo after exec".to_string(),
        format!("exec {} 42 'two words'", hello.display()),
        "exec /no/such/program; echo never".to_string(),
        format!("exec {}", bad.display()),
    ];
    for script in &scripts {
        let args = ["-c", script.as_str()];
        let lego = cluster.run(&[], std::path::Path::new("/bin/sh"), &args);
        let native = native(std::path::Path::new("/bin/sh"), &args);
        assert_same(&lego, &native, script);
        assert_eq!(text(&lego.stderr), text(&native.stderr), "{script}");
    }
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn bad_pointers_and_arguments_get_linuxs_answers() {
    let cluster = Cluster::up(&["--memories", "1"]);
    for build in [Build::GlibcStatic, Build::GlibcStaticPie] {
        let badargs = program("badargs", build);
        let lego = cluster.run(&[], &badargs, &[]);
        assert_same(&lego, &native(&badargs, &[]), "badargs");
        assert!(text(&lego.stdout).ends_with("still running\n"));
    }
}

#[test]
fn a_corrupt_program_is_refused_with_a_clear_error() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let dir = std::env::temp_dir().join(format!("lego-test-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hello = std::fs::read(program("hello", Build::GlibcStatic)).unwrap();
    let truncated = dir.join("truncated");
    std::fs::write(&truncated, &hello[..hello.len().min(200)]).unwrap();
    let mut bad_phdr = hello.clone();
    bad_phdr[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // e_phoff
    let corrupt = dir.join("corrupt-phdr");
    std::fs::write(&corrupt, &bad_phdr).unwrap();
    for path in [&truncated, &corrupt] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = cluster.run(&[], path, &[]);
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&path.display().to_string()),
            "the error does not name the file: {err}"
        );
        assert!(err.contains("cannot load"), "{err}");
    }
    // The cluster is unharmed.
    assert_eq!(
        shell_status(&cluster.run(&[], &program("hello", Build::GlibcStatic), &[])),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_program_starts_in_lego_runs_working_directory() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let hello = program("hello", Build::GlibcStatic);
    let workdir = std::env::temp_dir().join(format!("lego-test-workdir-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).unwrap();
    let out = cluster
        .run_command(&[], &hello, &[])
        .current_dir(&workdir)
        .output()
        .unwrap();
    let expected = format!("cwd = {}\n", workdir.canonicalize().unwrap().display());
    assert!(
        text(&out.stdout).contains(&expected),
        "{}",
        text(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&workdir);
}

#[test]
fn proc_self_describes_the_program_not_the_runtime() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let procself = program("procself", Build::GlibcStatic);
    let args = ["one", "two words"];
    let python = require("python3");
    let script = "import os; print(open('/proc/self/cmdline').read().split(chr(0))); \
                  print(sorted(os.listdir('/proc/self/fd'), key=int)); \
                  d = os.open('/proc/self/fd', os.O_RDONLY); \
                  print(os.stat('1', dir_fd=d).st_ino == os.stat(1).st_ino)";
    // Whatever the file source: the storage manager's files, or the
    // processor's own (before, the latter showed the runtime's command
    // line and descriptors).
    for files in ["storage", "host"] {
        let lego = cluster
            .run_command(&[], &procself, &args)
            .env("LEGO_FILES", files)
            .output()
            .unwrap();
        assert_same(
            &lego,
            &native(&procself, &args),
            &format!("procself, {files} files"),
        );
        let out = cluster
            .run_command(&[], &python, &["-c", script])
            .env("LEGO_FILES", files)
            .output()
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("['/usr/bin/python3', '-c', \"{script}\", '']\n['0', '1', '2']\nTrue\n"),
            "{files} files: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn meminfo_reports_the_memory_granted_and_the_excache() {
    let cluster = Cluster::up(&["--memories", "1", "--memory-capacity", "256M"]);
    let out = cluster.run(
        &["--excache", "16M"],
        std::path::Path::new("/bin/cat"),
        &["/proc/meminfo"],
    );
    let meminfo = text(&out.stdout);
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}:"))?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in {meminfo}"))
    };
    assert_eq!(field("MemTotal"), 256 * 1024);
    assert_eq!(field("ExCacheTotal"), 16 * 1024);
    assert!(field("ExCacheResident") <= 16 * 1024);
    // sysinfo(2), as used by free and sysconf, agrees.
    let free = cluster.run(&[], &require("free"), &["-m"]);
    let mem_line = text(&free.stdout)
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .map(str::to_string);
    assert_eq!(
        mem_line
            .as_deref()
            .and_then(|l| l.split_whitespace().nth(1)),
        Some("256"),
        "{}",
        text(&free.stdout)
    );
}

#[test]
fn private_file_mappings_read_the_file_and_copy_on_write() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let filemap = program("filemap", Build::GlibcStatic);
    let dir = std::env::temp_dir().join(format!("lego-test-filemap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let native_out = std::process::Command::new(&filemap)
        .current_dir(&dir)
        .output()
        .unwrap();
    let lego = cluster
        .run_command(&[], &filemap, &[])
        .current_dir(&dir)
        .output()
        .unwrap();
    let (native_text, lego_text) = (text(&native_out.stdout), text(&lego.stdout));
    let without_last = |t: &str| t.lines().take(6).collect::<Vec<_>>().join("\n");
    assert_eq!(
        without_last(&lego_text),
        without_last(&native_text),
        "{}",
        text(&lego.stderr)
    );
    assert!(
        lego_text.lines().all(|l| !l.ends_with(": 0")),
        "{lego_text}"
    );
    // Writable shared file mappings are refused (see docs/syscalls.md).
    assert!(
        lego_text.ends_with("shared writable mapping: refused\n"),
        "{lego_text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn proc_self_fd_and_status_show_the_programs_view() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let out = cluster.run(
        &[],
        &require("python3"),
        &[
            "-c",
            "import os\n\
             fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n\
             print(fds[:3])\n\
             print(all(os.readlink('/proc/self/fd/%d' % f) for f in fds[:3]))\n\
             size = [l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]\n\
             print(int(size) < 16 * 1024 * 1024)",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "[0, 1, 2]\nTrue\nTrue\n",
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shared_libraries_load_through_storage_with_tls_and_ld_library_path() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let dir = std::env::temp_dir().join(format!("lego-test-shlib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("greet.c"),
        "#include <stdio.h>\n__thread int calls;\n\
         static int pick_impl(void) { return 42; }\n\
         int pick(void) __attribute__((ifunc(\"resolve_pick\")));\n\
         static void *resolve_pick(void) { return (void *)pick_impl; }\n\
         void greet(const char *who) { calls++; printf(\"hello %s from a library (%d, %d)\\n\", who, calls, pick()); }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.c"),
        "void greet(const char *);\nint main(int argc, char **argv) { greet(argc > 1 ? argv[1] : \"?\"); greet(\"again\"); return 0; }\n",
    )
    .unwrap();
    let gcc = |args: &[&str]| {
        let out = std::process::Command::new("gcc")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    gcc(&["-shared", "-fPIC", "-O2", "-o", "libgreet.so", "greet.c"]);
    gcc(&["-O2", "-o", "main", "main.c", "-L.", "-lgreet"]);
    let lib_path = dir.display().to_string();
    let native = std::process::Command::new(dir.join("main"))
        .arg("lego")
        .env("LD_LIBRARY_PATH", &lib_path)
        .output()
        .unwrap();
    let lego = cluster
        .run_command(&[], &dir.join("main"), &["lego"])
        .env("LD_LIBRARY_PATH", &lib_path)
        .output()
        .unwrap();
    assert_eq!(
        text(&native.stdout),
        "hello lego from a library (1, 42)\nhello again from a library (2, 42)\n"
    );
    assert_eq!(
        text(&lego.stdout),
        text(&native.stdout),
        "{}",
        text(&lego.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_syscall_arguments_never_break_the_runtime() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let sysfuzz = program("sysfuzz", Build::GlibcStatic);
    let scratch = std::env::temp_dir().join(format!("lego-test-sysfuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let out = cluster.run(&[], &sysfuzz, &[scratch.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(shell_status(&out), 0, "{}", text(&out.stderr));
    assert!(
        stdout.ends_with("survived 20000 calls\n"),
        "{}",
        text(&out.stderr)
    );
    assert!(!cluster.log("processor-0").contains("runtime bug"));
    let rows = cluster.health().expect("the cluster still answers");
    assert!(rows.iter().all(|r| r.1 == "alive"), "{rows:?}");
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn signal_handlers_masks_faults_timers_and_restarts_behave_as_natively() {
    let cluster = Cluster::up(&["--memories", "1"]);
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        let signals = program("signals", build);
        let lego = cluster.run(&[], &signals, &[]);
        let native = native(&signals, &[]);
        assert_same(&lego, &native, &format!("signals {build:?}"));
        // The program's last act is raise(SIGTERM) with the default action.
        assert_eq!(shell_status(&lego), 128 + libc::SIGTERM, "{build:?}");
        assert!(
            text(&lego.stdout).contains("sigsuspend: r=-1 eintr=1 hits=1"),
            "{build:?}: {}",
            text(&lego.stdout)
        );
    }
    // Python's own signal machinery: a C-level handler that sets a flag,
    // the interpreter running the Python handler, KeyboardInterrupt out
    // of a sleep.
    let python = &require("python3");
    let script = "import os, signal, time\n\
        signal.signal(signal.SIGUSR1, lambda *a: print('got usr1'))\n\
        os.kill(os.getpid(), signal.SIGUSR1)\n\
        signal.signal(signal.SIGALRM, signal.default_int_handler)\n\
        signal.setitimer(signal.ITIMER_REAL, 0.05)\n\
        try:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n    print('interrupted')\n";
    let lego = cluster.run(&[], python, &["-c", script]);
    assert_same(&lego, &native(python, &["-c", script]), "python signals");
    assert_eq!(text(&lego.stdout), "got usr1\ninterrupted\n");
    // A SIGSYS sent to a program that does not handle it ends it, as
    // natively, however much the runtime relies on SIGSYS.
    let sh = std::path::Path::new("/bin/sh");
    let lego = cluster.run(&[], sh, &["-c", "kill -SYS $$"]);
    assert_same(&lego, &native(sh, &["-c", "kill -SYS $$"]), "kill -SYS");
    assert_eq!(shell_status(&lego), 128 + libc::SIGSYS);
    assert!(!cluster.log("processor-0").contains("runtime bug"));
}

#[test]
fn signals_sent_to_lego_run_reach_the_program() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let waitsig = program("waitsig", Build::GlibcStatic);
    let cases = [
        (libc::SIGINT, "handle", "ready\ncaught 02\n", libc::SIGINT),
        (libc::SIGTERM, "handle", "ready\ncaught 15\n", libc::SIGTERM),
        (libc::SIGHUP, "handle", "ready\ncaught 01\n", libc::SIGHUP),
        (libc::SIGINT, "default", "ready\n", 128 + libc::SIGINT),
        (libc::SIGTERM, "default", "ready\n", 128 + libc::SIGTERM),
    ];
    for (sig, mode, expected, status) in cases {
        let mut child = cluster
            .run_command(&[], &waitsig, &[mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lego run starts");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte).unwrap_or(0) == 1 {
                seen.push(byte[0]);
                if seen.ends_with(b"ready\n") {
                    let _ = tx.send(None);
                }
            }
            let _ = tx.send(Some(seen));
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).ok(),
            Some(None),
            "{mode}: the program never said ready"
        );
        // Safety: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let seen = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the program ends")
            .unwrap_or_default();
        let out = child.wait_with_output().expect("lego run ends");
        assert_eq!(text(&seen), expected, "{mode} {sig}: {}", text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(status),
            "{mode} {sig}: {}",
            text(&out.stderr)
        );
    }
    // A program writing to a pipe whose reader left dies of SIGPIPE, as
    // natively (`yes | head -2`).
    let mut child = cluster
        .run_command(&[], std::path::Path::new("/usr/bin/yes"), &[])
        .stdout(Stdio::piped())
        .spawn()
        .expect("lego run starts");
    let mut first = [0u8; 4];
    child
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut first)
        .expect("yes writes");
    assert_eq!(&first, b"y\ny\n");
    let out = child.wait_with_output().expect("lego run ends");
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGPIPE),
        "{}",
        text(&out.stderr)
    );
    // SIGKILL cannot be forwarded: the processor ends the program when
    // `lego run` disappears.
    let mut child = cluster
        .run_command(&[], &waitsig, &["handle"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("lego run starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let host_pid = loop {
        if let Some(p) = cluster.processes().first() {
            break p.1;
        }
        assert!(Instant::now() < deadline, "the program never showed up");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("SIGKILL lego run");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(host_pid) {
        assert!(Instant::now() < deadline, "the program outlived lego run");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C reaches the program's process group, its children too, as a
    // terminal's does (a shell's foreground command and the shell).
    let sh = std::path::Path::new("/bin/sh");
    let mut child = cluster
        .run_command(&[], sh, &["-c", "sleep 60; sleep 60"])
        .spawn()
        .expect("lego run starts");
    let runtimes = poll(Duration::from_secs(30), || {
        let rows = cluster.processes();
        (rows.len() == 2).then_some(rows)
    })
    .expect("the shell and its child never showed up");
    // Safety: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("lego run ends");
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
    for (_, host_pid, _) in runtimes {
        let gone = poll(Duration::from_secs(30), || {
            (!process_alive(host_pid)).then_some(())
        });
        assert!(gone.is_some(), "runtime {host_pid} outlived Ctrl-C");
    }
    // `kill 0` signals the program's own group: never the processor.
    let out = cluster.run(&[], sh, &["-c", "kill 0; sleep 5"]);
    assert_eq!(shell_status(&out), 128 + libc::SIGTERM);
    for name in ["processor-0", "memory-0", "storage-0", "monitor"] {
        assert!(process_alive(cluster.pid(name)), "{name} died of `kill 0`");
    }
}

#[test]
fn lego_ps_lists_running_processes_with_their_excache_use() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let waitsig = program("waitsig", Build::GlibcStatic);
    let ps = || -> Vec<serde_json::Value> {
        let out = cluster.lego(&["ps", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("lego ps --json is JSON")
    };
    assert_eq!(ps(), Vec::<serde_json::Value>::new());
    let table = cluster.lego(&["ps"]);
    assert!(text(&table.stdout).contains("(no processes)"));

    let mut child = cluster
        .run_command(&["--excache", "16M"], &waitsig, &["handle"])
        .stdout(Stdio::null())
        .spawn()
        .expect("lego run starts");
    // Heartbeats carry the list: poll until the process shows with its
    // counters published.
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let rows = ps();
        // With what its home memory manager reports holding of it.
        if let Some(row) = rows
            .first()
            .filter(|r| r["misses"].as_u64() > Some(0) && r["home_bytes"].as_u64() > Some(0))
        {
            break row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "lego ps never showed it: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, host_pid, home) = cluster.processes()[0].clone();
    assert_eq!(row["host_pid"].as_u64(), Some(host_pid as u64));
    assert_eq!(row["home_memory"].as_str(), Some(home.as_str()));
    assert_eq!(row["processor"].as_str(), Some("processor-0"));
    assert_eq!(row["parent"], serde_json::Value::Null);
    assert_eq!(row["excache_quota"].as_u64(), Some(16 << 20));
    let resident = row["resident_bytes"].as_u64().unwrap_or(0);
    assert!(resident > 0 && resident <= 16 << 20, "{row}");
    let command = row["command"].as_str().unwrap_or("");
    assert!(
        command.contains("waitsig") && command.ends_with(" handle"),
        "{row}"
    );
    let table = text(&cluster.lego(&["ps"]).stdout);
    assert!(table.contains(row["pid"].as_str().unwrap()), "{table}");
    assert!(
        table.contains("waitsig") && table.contains(&format!("{home} (")),
        "the table shows the command and what the home holds: {table}"
    );

    // Safety: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ps().is_empty() {
        assert!(Instant::now() < deadline, "the ended process stayed listed");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A shell's children: forked processes, listed with their parent and
    // with what they run after their execve; gone when they end.
    let mut shell = cluster
        .run_command(
            &[],
            std::path::Path::new("/bin/sh"),
            &["-c", "sleep 30 & sleep 30 & wait"],
        )
        .spawn()
        .expect("lego run starts");
    let rows = poll(Duration::from_secs(30), || {
        let rows = ps();
        (rows.len() == 3
            && rows
                .iter()
                .filter(|r| r["command"].as_str() == Some("sleep 30"))
                .count()
                == 2)
            .then_some(rows)
    })
    .unwrap_or_else(|| {
        panic!(
            "lego ps never showed the shell and its two children: {:?}",
            ps()
        )
    });
    let top = rows
        .iter()
        .find(|r| r["parent"].is_null())
        .expect("the shell has no parent");
    for row in rows.iter().filter(|r| !r["parent"].is_null()) {
        assert_eq!(row["parent"], top["pid"], "{rows:?}");
        assert_eq!(row["command"].as_str(), Some("sleep 30"), "{rows:?}");
        assert_eq!(row["home_memory"], top["home_memory"], "{rows:?}");
    }
    // SIGKILL of lego run kills the shell; its orphans are killed here.
    for row in &rows {
        // Safety: kill(2) on runtimes this test started.
        unsafe { libc::kill(row["host_pid"].as_u64().unwrap() as i32, libc::SIGKILL) };
    }
    let _ = shell.wait();
    let gone = poll(Duration::from_secs(30), || ps().is_empty().then_some(()));
    assert!(gone.is_some(), "ended processes stayed listed: {:?}", ps());
}

#[test]
fn threads_share_memory_locks_tls_and_signals_as_natively() {
    let cluster = Cluster::up(&["--memories", "1"]);
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        let threads = program("threads", build);
        // 64 MiB written by four threads through an 8 MiB ExCache.
        let lego = cluster.run(&["--excache", "8M"], &threads, &["64"]);
        assert_same(
            &lego,
            &native(&threads, &["64"]),
            &format!("threads {build:?}"),
        );
        assert!(
            text(&lego.stdout).ends_with("usr1_each=1 bad_words=0\n"),
            "{build:?}: {}",
            text(&lego.stdout)
        );
    }
    // Eviction while other threads write: not one addition may be lost
    // (before evicted pages were moved out first, about one run in three
    // lost one).
    let sharedsum = program("sharedsum", Build::GlibcStatic);
    for _ in 0..3 {
        let out = cluster.run(&["--excache", "4M"], &sharedsum, &["32", "100000"]);
        assert_eq!(
            text(&out.stdout),
            "sum=400000 expected=400000\n",
            "{}",
            text(&out.stderr)
        );
    }
    // Thousands of short-lived threads, each joined: a join must never
    // miss its thread's end (it did when the creator stored the tid after
    // the thread had already ended).
    // Each thread gets a new thread id, and an ended thread's runtime
    // thread frees what it held: the runtime's address space does not grow
    // with every thread ever made.
    let churn = program("threadchurn", Build::GlibcStatic);
    let processor = cluster.pid("processor-0");
    let mut child = cluster
        .run_command(&[], &churn, &["20000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("lego run starts");
    // (VmSize, threads) of a runtime.
    let vm_size = |pid: u32| -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        };
        Some((field("VmSize:")? << 10, field("Threads:")?))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut first, mut most) = (None, 0u64);
    while child.try_wait().expect("lego run waits").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("20000 thread joins did not finish within two minutes");
        }
        // From when the program's second thread runs (its runtime thread,
        // a second fault thread and their allocator arenas exist), the
        // runtime's size must stay put.
        let sample = runtimes_of(processor).first().and_then(|&pid| vm_size(pid));
        if let Some((size, _)) = sample.filter(|&(_, threads)| threads >= 4) {
            first.get_or_insert(size);
            most = most.max(size);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("lego run ends");
    assert_eq!(
        text(&out.stdout),
        "joined 20000 sum 200010000, the first 10 with 10 distinct thread ids\n"
    );
    let first = first.expect("the runtime was never sampled with its second thread running");
    assert!(
        most - first < 256 << 20,
        "the runtime grew from {first} to {most} bytes over 20000 threads"
    );
    // execve ends every other thread first, wherever it is (spinning, in a
    // read, a condition wait, a sleep), from the first thread or another.
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        let mtexec = program("mtexec", build);
        for args in [&[][..], &["from-thread"][..]] {
            let lego = cluster.run(&[], &mtexec, args);
            assert_same(
                &lego,
                &native(&mtexec, args),
                &format!("mtexec {build:?} {args:?}"),
            );
            assert!(
                text(&lego.stdout).starts_with("4 threads running\nexec'd from"),
                "{build:?} {args:?}: {}",
                text(&lego.stdout)
            );
        }
    }
    // Python threads contending on one lock.
    let python = &require("python3");
    let script = "import threading\n\
        lock = threading.Lock()\n\
        count = 0\n\
        def work():\n    global count\n    for _ in range(20000):\n        with lock:\n            count += 1\n\
        ts = [threading.Thread(target=work) for _ in range(4)]\n\
        for t in ts: t.start()\n\
        for t in ts: t.join()\n\
        print('count', count)\n";
    let lego = cluster.run(&["--excache", "32M"], python, &["-c", script]);
    assert_same(&lego, &native(python, &["-c", script]), "python threads");
    assert_eq!(text(&lego.stdout), "count 80000\n");
    assert!(!cluster.log("processor-0").contains("runtime bug"));
}

#[test]
fn redis_server_serves_redis_benchmark_and_bgsave_writes_a_valid_dump() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let dir = std::env::temp_dir().join(format!("lego-test-redis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap();
    // A socket in the test's own directory: no port to pick (and race
    // another process for).
    let socket = dir.join("redis.sock");
    let socket = socket.to_str().unwrap();
    let server = cluster
        .run_command(
            &["--excache", "64M"],
            &require("redis-server"),
            &[
                "--port",
                "0",
                "--unixsocket",
                socket,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir_arg,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lego run starts redis-server");
    let cli = |args: &[&str]| {
        std::process::Command::new(require("redis-cli"))
            .args(["-s", socket])
            .args(args)
            .output()
            .expect("redis-cli runs")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while text(&cli(&["ping"]).stdout) != "PONG\n" {
        assert!(
            Instant::now() < deadline,
            "redis-server under Lego never answered PING"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let bench = std::process::Command::new(require("redis-benchmark"))
        .args(["-s", socket, "-t", "set,get", "-n", "20000", "-q"])
        .output()
        .expect("redis-benchmark runs");
    let report = text(&bench.stdout).replace('\r', "\n");
    assert!(bench.status.success(), "{report}");
    for op in ["SET:", "GET:"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(op) && l.contains("requests per second")),
            "{op} missing: {report}"
        );
    }
    assert_eq!(text(&cli(&["set", "lego", "splitkernel"]).stdout), "OK\n");
    assert_eq!(text(&cli(&["get", "lego"]).stdout), "splitkernel\n");
    let keys: u64 = text(&cli(&["dbsize"]).stdout).trim().parse().unwrap();
    // BGSAVE forks: the child writes the dump from its copy of memory.
    assert_eq!(
        text(&cli(&["bgsave"]).stdout),
        "Background saving started\n"
    );
    let saved = poll(Duration::from_secs(60), || {
        let info = text(&cli(&["info", "persistence"]).stdout);
        (info.contains("rdb_bgsave_in_progress:0") && info.contains("rdb_last_bgsave_status:"))
            .then_some(info)
    })
    .expect("BGSAVE never finished");
    assert!(saved.contains("rdb_last_bgsave_status:ok"), "{saved}");
    let check = std::process::Command::new(require("redis-check-rdb"))
        .arg(dir.join("dump.rdb"))
        .output()
        .expect("redis-check-rdb runs");
    let checked = text(&check.stdout);
    assert!(check.status.success(), "{checked}");
    assert!(checked.contains("RDB looks OK"), "{checked}");
    assert!(
        checked.contains(&format!("[info] {keys} keys read")),
        "{keys} keys expected: {checked}"
    );
    let _ = cli(&["shutdown", "nosave"]);
    let out = server.wait_with_output().expect("lego run ends");
    assert_eq!(shell_status(&out), 0, "{}", text(&out.stderr));
    assert!(!cluster.log("processor-0").contains("runtime bug"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fork_exec_wait_pipes_and_shells_behave_as_natively() {
    let cluster = Cluster::up(&["--memories", "1"]);
    // fork (memory copied on the memory side), vfork, posix_spawn, wait
    // statuses with rusage, SIGCHLD, orphans, fork beside a running
    // thread; 16 MiB of heap through an 8 MiB ExCache.
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        let forks = program("forks", build);
        let lego = cluster.run(&["--excache", "8M"], &forks, &[]);
        assert_same(&lego, &native(&forks, &[]), &format!("forks {build:?}"));
        assert!(
            text(&lego.stdout)
                .ends_with("fork beside a thread: exited 9\ninaccessible page kept: yes\n"),
            "{build:?}: {}",
            text(&lego.stdout)
        );
    }
    // Forks beside threads that map, write and unmap memory, through a
    // small ExCache: the fork's write-back never meets a range another
    // thread is unmapping (the memory manager refused such a page).
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        let churn = program("mapchurn", build);
        let lego = cluster.run(&["--excache", "4M"], &churn, &[]);
        assert_same(&lego, &native(&churn, &[]), &format!("mapchurn {build:?}"));
        assert_eq!(
            text(&lego.stdout),
            "400 forks beside 3 mapping threads\n",
            "{build:?}: {}",
            text(&lego.stderr)
        );
    }
    // Memory shared between forked processes is the host's shared memory.
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        let shared = program("shared", build);
        let lego = cluster.run(&[], &shared, &[]);
        assert_same(&lego, &native(&shared, &[]), &format!("shared {build:?}"));
        assert!(
            text(&lego.stdout).contains("process-shared semaphore: posted by the child\n"),
            "{build:?}: {}",
            text(&lego.stdout)
        );
    }
    let python = &require("python3");
    let pool = [
        "-c",
        "import multiprocessing as mp, os\n\
         def work(x): return (x * x, os.getpid())\n\
         if __name__ == '__main__':\n\
         \x20   with mp.Pool(2) as pool:\n\
         \x20       results = pool.map(work, range(2000))\n\
         \x20   print(sum(r[0] for r in results), len({r[1] for r in results} - {os.getpid()}) >= 1)\n\
         \x20   import subprocess\n\
         \x20   print(subprocess.run(['echo', 'subprocess'], capture_output=True).stdout)",
    ];
    let lego = cluster.run(&[], python, &pool);
    assert_same(&lego, &native(python, &pool), "python multiprocessing");
    assert_eq!(text(&lego.stdout), "2664667000 True\nb'subprocess\\n'\n");
    // Forks from several threads at once (subprocess uses vfork), while
    // the others run: every child starts, runs and is reaped.
    let spawners = [
        "-c",
        "import subprocess, threading, os\n\
         bad = []\n\
         def work(i):\n\
         \x20   for j in range(15):\n\
         \x20       out = subprocess.run(['/bin/echo', f'{i}-{j}'], capture_output=True).stdout\n\
         \x20       if out != f'{i}-{j}\\n'.encode(): bad.append(out)\n\
         ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]\n\
         for t in ts: t.start()\n\
         for t in ts: t.join()\n\
         pid = os.fork()\n\
         if pid == 0: os._exit(3)\n\
         print('wrong outputs:', bad, 'child status:', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))",
    ];
    let lego = cluster.run(&[], python, &spawners);
    assert_same(
        &lego,
        &native(python, &spawners),
        "python subprocess from 4 threads",
    );
    assert_eq!(text(&lego.stdout), "wrong outputs: [] child status: 3\n");
    let sh = std::path::Path::new("/bin/sh");
    let pipeline = ["-c", "seq 1 100000 | sort -rn | head -5"];
    let lego = cluster.run(&[], sh, &pipeline);
    assert_same(&lego, &native(sh, &pipeline), "sh pipeline");
    assert_eq!(text(&lego.stdout), "100000\n99999\n99998\n99997\n99996\n");
    // A shell and its children writing one redirected file share its
    // offset, as on Linux: nothing is overwritten.
    let file = std::env::temp_dir().join(format!("lego-test-redirect-{}", std::process::id()));
    let redirect = format!(
        "{{ echo a; (echo b); echo c; sh -c 'echo d'; }} > {0}; cat {0}; rm {0}",
        file.display()
    );
    let lego = cluster.run(&[], sh, &["-c", &redirect]);
    assert_same(&lego, &native(sh, &["-c", &redirect]), "sh redirect");
    assert_eq!(text(&lego.stdout), "a\nb\nc\nd\n");
    let bash = std::path::Path::new("/bin/bash");
    let script = [
        "-c",
        "trap 'echo trap on exit, status $?' EXIT\n\
         x=$( (echo from a subshell; exit 3) ); echo \"$x: $?\"\n\
         sleep 0.2 & background=$!\n\
         false; echo \"false: $?\"\n\
         wait $background; echo \"background job: $?\"\n\
         (cd / && pwd)\n\
         exit 4",
    ];
    let lego = cluster.run(&[], bash, &script);
    assert_same(&lego, &native(bash, &script), "bash script");
    assert_eq!(
        text(&lego.stdout),
        "from a subshell: 3\nfalse: 1\nbackground job: 0\n/\ntrap on exit, status 4\n"
    );
    assert!(!cluster.log("processor-0").contains("runtime bug"));
    // Every copy was released when its process ended: nothing is left on
    // the memory manager.
    let memory = "memory-0";
    let freed = poll(Duration::from_secs(30), || {
        (cluster.load(memory, "used") == Some(0) && cluster.load(memory, "committed") == Some(0))
            .then_some(())
    });
    assert!(
        freed.is_some(),
        "{memory} still holds {:?} bytes ({:?} committed) after every process ended",
        cluster.load(memory, "used"),
        cluster.load(memory, "committed")
    );
}

/// The whole kernel state of a running process with four threads (one
/// waiting in read, one spinning and one making syscalls in a loop, both
/// with known registers), open storage
/// files and a pipe, handlers, an alternate stack and a pending signal,
/// taken at a syscall boundary: it survives serialization and holds, field
/// by field, what the program knows of itself; the threads run on after
/// (the waiting read is made again and gets its byte).
#[test]
fn a_running_process_state_is_one_value_that_round_trips() {
    let cluster = Cluster::up(&["--memories", "1"]);
    for build in [Build::GlibcStatic, Build::MuslStatic] {
        check_process_state(&cluster, build);
    }
}

fn check_process_state(cluster: &Cluster, build: Build) {
    use lego_proto::state::{OpenState, ProcessState, Stop};
    let statecheck = program("statecheck", build);
    let dir = std::env::temp_dir().join(format!("lego-test-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = cluster.run(&[], &statecheck, &[dir.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    // "key=N M ..." words: the numbers after each key.
    let mut values: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for line in stdout.lines().filter(|l| !l.starts_with("state=")) {
        let mut key = String::new();
        for word in line.split(' ') {
            let number = match word.split_once('=') {
                Some((k, v)) => {
                    key = k.to_string();
                    v
                }
                None => word,
            };
            if let Ok(n) = number.parse::<u64>() {
                values.entry(key.clone()).or_default().push(n);
            }
        }
    }
    let value = |key: &str| -> Vec<u64> {
        values
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key}= in {stdout}"))
    };
    let hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("state="))
        .expect("the state's bytes");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let state = ProcessState::from_bytes(&bytes).expect("the bytes are a ProcessState");
    // The round trip: the value encodes to the same bytes, which decode
    // to an equal value, field by field.
    let again = state.to_bytes().unwrap();
    assert_eq!(again, bytes, "re-encoding changed the bytes");
    let back = ProcessState::from_bytes(&again).unwrap();
    assert_eq!(state.differences(&back), Vec::<String>::new());
    assert_eq!(state, back);

    // Threads: the taker first, then the others by tid.
    let (main, reader, spinner, caller) = (
        value("main")[0],
        value("reader")[0],
        value("spinner")[0],
        value("caller")[0],
    );
    let tids: Vec<u64> = state.threads.iter().map(|t| t.tid as u64).collect();
    let mut others = vec![reader, spinner, caller];
    others.sort();
    assert_eq!(tids, [vec![main], others].concat());
    let thread = |tid: u64| state.threads.iter().find(|t| t.tid as u64 == tid).unwrap();
    let reg = |tid: u64, r: libc::c_int| thread(tid).regs[r as usize] as u64;
    let fds = value("fds");
    let (file_a, file_b, pipe_r, pipe_w) = (fds[0], fds[1], fds[2], fds[3]);
    let usr2 = 1u64 << (libc::SIGUSR2 - 1);
    // The taker: its own call, lego_process_state(buf, len).
    assert_eq!(thread(main).stop, Stop::Taker);
    assert_eq!(reg(main, libc::REG_RAX), 511);
    assert_eq!(reg(main, libc::REG_RDI), value("buf")[0]);
    assert_ne!(thread(main).mask & usr2, 0, "SIGUSR2 is blocked on main");
    assert_ne!(thread(main).pending & usr2, 0, "SIGUSR2 is pending on main");
    // The reader waited in read(pipe): stopped to make that call again.
    assert_eq!(thread(reader).stop, Stop::CallRestart);
    assert_eq!(reg(reader, libc::REG_RAX), libc::SYS_read as u64);
    assert_eq!(reg(reader, libc::REG_RDI), pipe_r);
    // The spinner was stopped in its own loop, with its registers.
    assert_eq!(thread(spinner).stop, Stop::Running);
    assert_eq!(reg(spinner, libc::REG_R12), 0x1e90);
    let fpu = &thread(spinner).fpu;
    assert!(fpu.len() >= 512, "fxsave area: {} bytes", fpu.len());
    // xmm0 lies at byte 160 of the fxsave area.
    assert_eq!(&fpu[160..168], &0x0123_4567_89ab_cdefu64.to_le_bytes());
    // The caller, stopped on its way into or out of a call or between
    // two: its own registers, not the runtime's.
    assert!(
        matches!(thread(caller).stop, Stop::Running | Stop::CallDone),
        "{:?}",
        thread(caller).stop
    );
    assert_eq!(reg(caller, libc::REG_R13), 0x5a5a);
    let near = value("callerstack")[0];
    assert!(
        reg(caller, libc::REG_RSP).abs_diff(near) < 4096,
        "caller rsp {:#x}, its stack at {near:#x}",
        reg(caller, libc::REG_RSP)
    );
    // xmm1 lies at byte 176.
    assert_eq!(
        &thread(caller).fpu[176..184],
        &0x1122_3344_5566_7788u64.to_le_bytes()
    );
    let mut fs: Vec<u64> = state.threads.iter().map(|t| t.fs_base).collect();
    assert!(fs.iter().all(|&f| f != 0));
    fs.sort();
    fs.dedup();
    assert_eq!(fs.len(), 4, "every thread has its own TLS");
    assert!(thread(reader).clear_tid != 0 && thread(spinner).clear_tid != 0);

    // Signals.
    let usr1 = state.signals.actions[libc::SIGUSR1 as usize - 1];
    assert_eq!(usr1.handler, value("handler")[0]);
    let flags = (libc::SA_SIGINFO | libc::SA_RESTART) as u64;
    assert_eq!(usr1.flags & flags, flags);
    assert_eq!(usr1.mask, usr2);
    assert_eq!(state.signals.actions[libc::SIGTERM as usize - 1].handler, 1);
    assert_eq!(state.signals.actions[libc::SIGINT as usize - 1].handler, 0);
    assert_eq!(state.signals.altstack.sp, value("alt")[0]);
    assert_eq!(state.signals.altstack.size, value("altsize")[0]);

    // Files: the two storage files with their offsets and flags, the pipe.
    let file = |fd: u64| {
        state
            .files
            .iter()
            .find(|f| f.fd as u64 == fd)
            .unwrap_or_else(|| panic!("fd {fd} in {:?}", state.files))
    };
    let dir_bytes = dir.to_str().unwrap().as_bytes();
    match &file(file_a).open {
        OpenState::Storage {
            path,
            status,
            offset,
            ..
        } => {
            assert_eq!(path, &[dir_bytes, b"/state-a"].concat());
            assert_eq!(*status & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
            assert_eq!(*offset, 5);
        }
        other => panic!("state-a: {other:?}"),
    }
    assert!(!file(file_a).cloexec);
    match &file(file_b).open {
        OpenState::Storage { status, .. } => {
            assert_ne!(*status & libc::O_APPEND as u32, 0);
            assert_eq!(*status & libc::O_ACCMODE as u32, libc::O_WRONLY as u32);
        }
        other => panic!("state-b: {other:?}"),
    }
    assert!(file(file_b).cloexec);
    for fd in [pipe_r, pipe_w] {
        match &file(fd).open {
            OpenState::Host { target, offset, .. } => {
                assert!(target.starts_with(b"pipe:["), "{fd}: {target:?}");
                assert_eq!(*offset, None);
            }
            other => panic!("pipe end {fd}: {other:?}"),
        }
    }
    // Nothing of the runtime's: the program's descriptors only.
    let numbers: Vec<u64> = state.files.iter().map(|f| f.fd as u64).collect();
    assert_eq!(numbers, vec![0, 1, 2, file_a, file_b, pipe_r, pipe_w]);
    // The runtime's own signal is not the application's.
    for t in &state.threads {
        assert_eq!(t.pending & (1 << 63), 0);
    }

    // The rest of the process.
    assert_eq!(state.cwd, dir_bytes);
    assert_eq!(state.umask, 0o027);
    let msgqueue = state
        .limits
        .iter()
        .find(|l| l.resource == libc::RLIMIT_MSGQUEUE)
        .expect("RLIMIT_MSGQUEUE");
    assert_eq!(msgqueue.soft, 12345);
    // Safety: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(state.credentials.uid[0], uid);
    let buf = value("buf")[0];
    assert!(
        state
            .memory
            .mapped
            .iter()
            .any(|&(s, e)| s <= buf && buf < e),
        "buf {buf:#x} in {:x?}",
        state.memory.mapped
    );
    assert!(state
        .image
        .program
        .ends_with(format!("statecheck-{build:?}").as_bytes()));
    assert!(state.image.cmdline.ends_with(&[dir_bytes, b"\0"].concat()));

    // After: the read was made again and got the byte; one thread left.
    assert!(stdout.contains("reader_got=1\n"), "{stdout}");
    assert_eq!(value("repeated"), [20], "taken 20 times back to back");
    assert!(stdout.contains("again=ok\n"), "{stdout}");
    assert_eq!(value("small"), [libc::ERANGE as u64], "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
