//! Starting a runtime process for an application and collecting its end.

use lego_proto::live::{LiveStats, STATS_FD};
use lego_proto::runtime::{
    RuntimeReport, RuntimeSpec, LOG_FD, REPORT_FD, RUNTIME_FAILURE_EXIT, SPEC_FD,
};
use lego_proto::{ExitReport, ExitStatus, ProcessId};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// A running runtime.
pub struct RuntimeProcess {
    pub pid: ProcessId,
    pub child: Child,
    report: File,
    /// The counters the runtime publishes while it runs.
    pub live: Arc<LiveStats>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // Safety: pipe2 writes two new descriptors into `fds`, owned by us.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: both were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Duplicates `fd` to a number of at least 10, so the child's dup2 to 3-5
/// never overwrites a source it has yet to copy.
fn high_dup(fd: RawFd) -> io::Result<OwnedFd> {
    // Safety: F_DUPFD_CLOEXEC returns a new descriptor owned by us.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: just created.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Starts `lego runtime` with the program's stdio, its spec on fd 3, a
/// report pipe on fd 4, the processor's log on fd 5 and the live-counters
/// page on fd 6. The runtime dies
/// with the processor (PR_SET_PDEATHSIG): its process cannot outlive the
/// component that owns it.
pub fn spawn(
    spec: &RuntimeSpec,
    stdio: [OwnedFd; 3],
    controlling_tty: bool,
) -> io::Result<RuntimeProcess> {
    let (spec_r, spec_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let spec_src = high_dup(spec_r.as_raw_fd())?;
    let report_src = high_dup(report_w.as_raw_fd())?;
    let log_src = high_dup(2)?;
    let (live, live_fd) = LiveStats::create()?;
    let live_src = high_dup(live_fd.as_raw_fd())?;
    let sources = [
        (spec_src.as_raw_fd(), SPEC_FD),
        (report_src.as_raw_fd(), REPORT_FD),
        (log_src.as_raw_fd(), LOG_FD),
        (live_src.as_raw_fd(), STATS_FD),
    ];
    let [stdin, stdout, stderr] = stdio;
    // The processor's own binary, even if the file was replaced or deleted
    // since it started: the child's /proc/self/exe is the parent's until
    // exec, so runtimes always match the processor's version.
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("lego")
        .arg("runtime")
        .env_clear()
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    for var in ["LEGO_LOG", "LEGO_NO_PIN"] {
        if let Some(value) = std::env::var_os(var) {
            command.env(var, value);
        }
    }
    // Safety: between fork and exec the closure only calls async-signal-safe
    // functions (dup2, sigprocmask, setsid, ioctl, prctl, getppid) on
    // descriptors that exist.
    unsafe {
        let parent = libc::getpid();
        command.pre_exec(move || {
            for (src, dst) in sources {
                if libc::dup2(src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // The program starts with no signal blocked, as from a
            // login shell, whatever the processor's own mask.
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // A session (and process group) of its own: the program's
            // `kill(0, ...)`, its shell's job control signals and the
            // signals `lego run` forwards to its group reach the program
            // and its children, never the processor.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Its own terminal (a pseudo-terminal lego run relays) is the
            // session's: a shell can run jobs on it.
            if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The processor may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("the processor exited"));
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop((spec_r, report_w, spec_src, report_src, log_src));
    drop((live_fd, live_src));
    let bytes = postcard::to_stdvec(spec).map_err(io::Error::other)?;
    let mut spec_w = File::from(spec_w);
    // The runtime reads the spec to EOF first thing; a failure here means
    // it already died, which `wait` reports.
    let _ = spec_w.write_all(&bytes);
    drop(spec_w);
    Ok(RuntimeProcess {
        pid: spec.pid,
        child,
        report: File::from(report_r),
        live: Arc::new(live),
    })
}

impl RuntimeProcess {
    pub fn host_pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the runtime has ended, without reaping it (its pid
    /// and process group stay its own until `wait`).
    pub fn wait_ended(&self) {
        loop {
            // Safety: waitid writes one siginfo_t of ours; WNOWAIT leaves
            // the child to be reaped by `wait`.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let ret = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.child.id() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if ret == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }

    /// Waits for the runtime to end and collects its report.
    pub fn wait(mut self) -> ExitReport {
        let status = match self.child.wait() {
            Ok(status) => status,
            Err(e) => {
                return ExitReport {
                    pid: self.pid,
                    status: ExitStatus::Code(RUNTIME_FAILURE_EXIT),
                    error: Some(format!("cannot wait for the runtime: {e}")),
                    stats: None,
                }
            }
        };
        let mut bytes = Vec::new();
        let _ = self.report.read_to_end(&mut bytes);
        let report: Option<RuntimeReport> = postcard::from_bytes(&bytes).ok();
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(RUNTIME_FAILURE_EXIT),
        };
        let error = report.as_ref().and_then(|r| r.error.clone()).or_else(|| {
            (status == ExitStatus::Code(RUNTIME_FAILURE_EXIT) && report.is_none())
                .then(|| "the runtime ended without a report".to_string())
        });
        ExitReport {
            pid: self.pid,
            status,
            error,
            stats: report.map(|r| r.stats),
        }
    }
}
