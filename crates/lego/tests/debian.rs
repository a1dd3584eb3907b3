//! Debian's own binaries, unmodified, on a real cluster: their output must
//! be byte-identical to the native run of the same command. Files come
//! from the storage manager (the cluster exports `/`).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A scratch directory with data files; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("lego-test-debian-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A text file of about `mib` MiB of pseudo-random words.
    fn text(&self, name: &str, mib: usize) -> PathBuf {
        let mut x: u64 = 0x9E3779B97F4A7C15 ^ mib as u64;
        let mut out = String::with_capacity(mib << 20);
        while out.len() < mib << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(&format!("{:x} word{} {}\n", x, x % 1000, x % 7));
        }
        let path = self.path(name);
        std::fs::write(&path, out).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `program args` natively and under Lego from `cwd` with `stdin`
/// (a file or nothing) and asserts the same stdout and status.
fn same(
    cluster: &Cluster,
    cwd: &Path,
    lego_args: &[&str],
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> Output {
    let input = || match stdin {
        Some(path) => Stdio::from(std::fs::File::open(path).unwrap()),
        None => Stdio::null(),
    };
    let native = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(input())
        .output()
        .unwrap();
    let lego = cluster
        .run_command(lego_args, Path::new(program), args)
        .current_dir(cwd)
        .stdin(input())
        .output()
        .unwrap();
    assert_eq!(
        text(&lego.stdout),
        text(&native.stdout),
        "{program} {args:?}: stdout differs (stderr: {})",
        text(&lego.stderr)
    );
    assert_eq!(
        shell_status(&lego),
        shell_status(&native),
        "{program} {args:?}: {}",
        text(&lego.stderr)
    );
    lego
}

#[test]
fn coreutils_and_friends_match_the_native_run() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let scratch = Scratch::new("coreutils");
    let big = scratch.text("big.txt", 100);
    let big = big.to_str().unwrap();
    same(&cluster, &scratch.dir, &[], "/bin/cat", &[big], None);
    same(
        &cluster,
        &scratch.dir,
        &[],
        "/usr/bin/sha256sum",
        &[big],
        None,
    );
    same(
        &cluster,
        &scratch.dir,
        &[],
        "/bin/grep",
        &["-c", "word42 ", big],
        None,
    );
    // sort spills temporary files with a 16 MiB buffer and a 32 MiB
    // ExCache, with one thread and with two.
    let fifty = scratch.text("fifty.txt", 50);
    let fifty = fifty.to_str().unwrap();
    for parallel in ["--parallel=1", "--parallel=2"] {
        same(
            &cluster,
            &scratch.dir,
            &["--excache", "32M"],
            "/usr/bin/sort",
            &[
                parallel,
                "-S",
                "16M",
                "-T",
                scratch.dir.to_str().unwrap(),
                fifty,
            ],
            None,
        );
    }
    // gzip then gunzip, in separate runs, through files.
    let gz = scratch.path("fifty.txt.gz");
    let out = cluster.run(&[], Path::new("/bin/gzip"), &["-c", fifty]);
    assert_eq!(shell_status(&out), 0, "{}", text(&out.stderr));
    std::fs::write(&gz, &out.stdout).unwrap();
    let back = cluster.run(&[], Path::new("/bin/gunzip"), &["-c", gz.to_str().unwrap()]);
    assert_eq!(
        back.stdout,
        std::fs::read(fifty).unwrap(),
        "gunzip did not restore the file"
    );
    same(
        &cluster,
        &scratch.dir,
        &[],
        "/usr/bin/find",
        &["/usr/share", "-name", "*.gz"],
        None,
    );
}

#[test]
fn python_and_sqlite_match_the_native_run() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let scratch = Scratch::new("python");
    same(
        &cluster,
        &scratch.dir,
        &["--excache", "64M"],
        "/usr/bin/python3",
        &[
            "-c",
            "d = {i: i * 3 for i in range(1000000)}; print(sum(d.values()), len(d))",
        ],
        None,
    );
    let script = scratch.path("files.py");
    std::fs::write(
        &script,
        "import os, json, tempfile\n\
         d = tempfile.mkdtemp(dir='.')\n\
         for i in range(50):\n\
         \x20   with open(os.path.join(d, f'f{i}.json'), 'w') as f: json.dump({'i': i, 'sq': i * i}, f)\n\
         total = 0\n\
         for name in sorted(os.listdir(d)):\n\
         \x20   with open(os.path.join(d, name)) as f: total += json.load(f)['sq']\n\
         os.rename(os.path.join(d, 'f0.json'), os.path.join(d, 'zero.json'))\n\
         print(total, len(os.listdir(d)), os.path.exists(os.path.join(d, 'zero.json')))\n\
         for name in os.listdir(d): os.unlink(os.path.join(d, name))\n\
         os.rmdir(d)\n\
         print(os.path.exists(d))\n",
    )
    .unwrap();
    same(
        &cluster,
        &scratch.dir,
        &[],
        "/usr/bin/python3",
        &[script.to_str().unwrap()],
        None,
    );
    let sql = scratch.path("script.sql");
    std::fs::write(
        &sql,
        "create table t(id integer primary key, k integer, v text);\n\
         with recursive c(x) as (select 1 union all select x + 1 from c where x < 100000)\n\
         insert into t(k, v) select x % 997, printf('value-%d', x) from c;\n\
         create index tk on t(k);\n\
         select count(*), sum(k), min(v), max(v) from t;\n\
         select k, count(*) from t where k between 10 and 12 group by k;\n",
    )
    .unwrap();
    let native = Command::new(require("sqlite3"))
        .arg("native.db")
        .current_dir(&scratch.dir)
        .stdin(std::fs::File::open(&sql).unwrap())
        .output()
        .unwrap();
    let lego = cluster
        .run_command(&[], &require("sqlite3"), &["lego.db"])
        .current_dir(&scratch.dir)
        .stdin(std::fs::File::open(&sql).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        text(&lego.stdout),
        text(&native.stdout),
        "sqlite3: {}",
        text(&lego.stderr)
    );
    assert!(
        scratch.path("lego.db").metadata().unwrap().len() > 1 << 20,
        "the database is on disk"
    );
}

#[test]
fn make_builds_a_c_project_with_gcc_under_lego() {
    let cluster = Cluster::up(&["--memories", "1"]);
    let scratch = Scratch::new("make");
    let src = &scratch.dir;
    std::fs::write(
        src.join("main.c"),
        "#include <stdio.h>\nint triangle(int);\nint square(int);\n\
         int main(void) { printf(\"%d %d\\n\", triangle(100), square(12)); return 0; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("triangle.c"),
        "int triangle(int n) { int s = 0; for (int i = 1; i <= n; i++) s += i; return s; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("square.c"),
        "int square(int n) { return n * n; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("Makefile"),
        "prog: main.o triangle.o square.o\n\tgcc -o $@ $^\n%.o: %.c\n\tgcc -O2 -c $< -o $@\n",
    )
    .unwrap();
    let make = cluster
        .run_command(&[], &require("make"), &["-j2", "-C"])
        .arg(src)
        .output()
        .expect("lego run starts make");
    assert_eq!(shell_status(&make), 0, "make: {}", text(&make.stderr));
    // Built under Lego, it runs natively.
    let built = native(&src.join("prog"), &[]);
    assert_eq!(text(&built.stdout), "5050 144\n");
    assert!(!cluster.log("processor-0").contains("runtime bug"));
}
