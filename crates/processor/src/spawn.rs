//! Starting a runtime process for an application and collecting its end.

use lego_proto::live::{LiveStats, STATS_FD};
use lego_proto::runtime::{
    RuntimeReport, RuntimeSpec, CONTROL_FD, LOG_FD, REPORT_FD, RUNTIME_FAILURE_EXIT, SPEC_FD,
    USERFAULTFD_FD,
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
    /// The processor's end of the runtime's control socket.
    pub control: Option<std::os::unix::net::UnixStream>,
}

pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
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

/// The host identity a runtime gets (see [`crate::hostids`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIdentity {
    /// The processor's namespace (the runtime then takes on the
    /// launching user's ids itself).
    Processor,
    /// A user and IPC namespace of its own, as an unprivileged host uid.
    Isolated,
}

/// `/dev/userfaultfd`, for a runtime whose host identity may not open it.
fn userfaultfd_device() -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")
        .ok()?;
    high_dup(device.as_raw_fd()).ok()
}

/// Starts `lego runtime` with the program's stdio, its spec on fd 3, a
/// report pipe on fd 4, the processor's log on fd 5, the live-counters
/// page on fd 6 and `/dev/userfaultfd` on fd 7. The runtime dies
/// with the processor (PR_SET_PDEATHSIG): its process cannot outlive the
/// component that owns it.
pub fn spawn(
    spec: &RuntimeSpec,
    stdio: [OwnedFd; 3],
    controlling_tty: bool,
    identity: HostIdentity,
) -> io::Result<RuntimeProcess> {
    let (spec_r, spec_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let spec_src = high_dup(spec_r.as_raw_fd())?;
    let report_src = high_dup(report_w.as_raw_fd())?;
    let log_src = high_dup(2)?;
    let (live, live_fd) = LiveStats::create()?;
    let live_src = high_dup(live_fd.as_raw_fd())?;
    let device = userfaultfd_device();
    let (control, control_child) = std::os::unix::net::UnixStream::pair()?;
    let control_src = high_dup(control_child.as_raw_fd())?;
    drop(control_child);
    let mut sources = vec![
        (control_src.as_raw_fd(), CONTROL_FD),
        (spec_src.as_raw_fd(), SPEC_FD),
        (report_src.as_raw_fd(), REPORT_FD),
        (log_src.as_raw_fd(), LOG_FD),
        (live_src.as_raw_fd(), STATS_FD),
    ];
    if let Some(device) = &device {
        sources.push((device.as_raw_fd(), USERFAULTFD_FD));
    }
    // The child enters its namespace, sends its pid on `ready` and waits
    // on `go` until its maps are written (by a thread of ours: spawn
    // returns only once the child has run exec).
    let namespace = match identity {
        HostIdentity::Processor => None,
        HostIdentity::Isolated => Some((pipe()?, pipe()?)),
    };
    let child_ends = namespace
        .as_ref()
        .map(|((ready_r, ready_w), (go_r, go_w))| {
            (
                ready_r.as_raw_fd(),
                ready_w.as_raw_fd(),
                go_r.as_raw_fd(),
                go_w.as_raw_fd(),
            )
        });
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
    // functions (dup2, close, read, write, sigprocmask, setsid, ioctl,
    // unshare, raw set*id calls, prctl, getpid, getppid) on descriptors
    // that exist and on local buffers; `sources` is moved in, not
    // allocated after the fork.
    unsafe {
        let parent = libc::getpid();
        command.pre_exec(move || {
            let failed = || Err(io::Error::last_os_error());
            for &(src, dst) in &sources {
                if libc::dup2(src, dst) < 0 {
                    return failed();
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
                return failed();
            }
            // Its own terminal (a pseudo-terminal lego run relays) is the
            // session's: a shell can run jobs on it.
            if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return failed();
            }
            if let Some((ready_r, ready_w, go_r, go_w)) = child_ends {
                // Our copies of the processor's ends, or the processor's
                // failure would never reach us as an end of file.
                libc::close(ready_r);
                libc::close(go_w);
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWIPC) != 0 {
                    return failed();
                }
                let pid = libc::getpid().to_ne_bytes();
                if libc::write(ready_w, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                    return failed();
                }
                let mut byte = 0u8;
                if libc::read(go_r, (&mut byte as *mut u8).cast(), 1) != 1 {
                    return Err(io::Error::other("the processor could not map its ids"));
                }
                // Root of the namespace: host uid and gid OUTSIDE. The
                // runtime takes on the program's ids inside from there.
                // Raw calls: only this thread exists.
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
                {
                    return failed();
                }
            }
            // After any change of ids, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return failed();
            }
            // The processor may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("the processor exited"));
            }
            Ok(())
        });
    }
    let mapper = match namespace {
        Some(((ready_r, ready_w), (go_r, go_w))) => {
            let thread = std::thread::Builder::new()
                .name("map ids".into())
                .spawn(move || crate::hostids::map_child(ready_r, go_w))?;
            Some((thread, ready_w, go_r))
        }
        None => None,
    };
    let spawned = command.spawn();
    // The child has run exec or failed: the mapper ends either way once
    // our ends are closed.
    let mapped = mapper.map(|(thread, ready_w, go_r)| {
        drop((ready_w, go_r));
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the id mapper panicked")))
    });
    let child = match (spawned, mapped) {
        (Ok(child), _) => child,
        (Err(e), Some(Err(why))) => {
            return Err(io::Error::new(e.kind(), format!("{e} ({why})")));
        }
        (Err(e), _) => return Err(e),
    };
    drop((
        spec_r,
        report_w,
        spec_src,
        report_src,
        log_src,
        device,
        control_src,
    ));
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
        control: Some(control),
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
