//! The process's kernel state taken whole, as one plain value
//! ([`ProcessState`]): every other thread is stopped at a boundary first
//! (see `task::threads::Threads::stop_others`), so nothing changes while
//! the pieces are gathered from the subsystems that own them. What the
//! host kernel keeps for the process (credentials, umask, limits, pending
//! signals, host descriptors) is read from it.
//!
//! May call: `mm`, `vfs`, `task`, `host`.

use super::Runtime;
use crate::error::SysError;
use crate::task::dispatch::ThreadCtl;
use crate::task::threads::{pending_of, thread_state, StopError};
use lego_proto::runtime::FreezeReport;
use lego_proto::state::{
    Credentials, FileState, ImageState, Limit, OpenState, ProcessState, Stop, ThreadState,
};
use lego_proto::Errno;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

/// How long the other threads get to stop.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Resource limits Linux has (RLIMIT_CPU .. RLIMIT_RTTIME).
const RLIMITS: u32 = 16;

/// Lets the stopped threads run on however the state-taking ends.
struct Resume<'a>(&'a Runtime);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.threads.resume_others();
    }
}

impl Runtime {
    /// The process's kernel state, taken by the application thread `ctl`
    /// inside its call (registers in `uc`). `Errno::EINTR` when another
    /// thread takes it at the same time (this one stops for that one, and
    /// makes its call again after), `Errno::EAGAIN` when an exec is under
    /// way or some thread did not stop in time.
    pub fn take_state(
        &self,
        ctl: &mut ThreadCtl,
        uc: &libc::ucontext_t,
    ) -> Result<ProcessState, SysError> {
        let others = match self.threads.stop_others(STOP_LIMIT) {
            Ok(others) => others,
            // Another thread takes it: this one stops for that one first
            // (the call is made again after).
            Err(StopError::Stopping) => {
                ctl.request_stop();
                return Err(Errno::EINTR.into());
            }
            Err(StopError::Exec) => return Err(Errno::EAGAIN.into()),
            Err(StopError::Timeout(n)) => {
                tracing::warn!(
                    "process state: {n} threads did not stop within {STOP_LIMIT:?}; EAGAIN"
                );
                return Err(Errno::EAGAIN.into());
            }
        };
        let _resume = Resume(self);
        Ok(self.state_of(vec![thread_state(ctl, uc, Stop::Taker)], others))
    }

    /// Stops every application thread at a boundary (for the runtime's
    /// control thread: no application thread takes part), writes every
    /// dirty page back and takes the state. The threads stay stopped until
    /// [`Runtime::thaw`].
    pub fn freeze(&self) -> Result<(ProcessState, FreezeReport), String> {
        let started = Instant::now();
        let others = match self.threads.stop_others(STOP_LIMIT) {
            Ok(others) => others,
            Err(StopError::Stopping) => {
                return Err("a thread of the program is taking its state".into())
            }
            Err(StopError::Exec) => return Err("the program is running execve".into()),
            Err(StopError::Timeout(n)) => {
                return Err(format!("{n} threads did not stop within {STOP_LIMIT:?}"))
            }
        };
        let stopped = started.elapsed();
        let written = self.mm.cache.stats().bytes_written_back;
        let flushed = {
            let change = self.mm.cache.change_layout();
            self.mm
                .cache
                .flush(&change, &self.mm.arena, &self.mm.remote)
        };
        if let Err(e) = flushed {
            self.threads.resume_others();
            return Err(format!("cannot write the dirty pages back: {e}"));
        }
        let flush = started.elapsed() - stopped;
        let state = self.state_of(Vec::new(), others);
        let report = FreezeReport {
            threads: state.threads.len() as u32,
            files: state.files.len() as u32,
            written_back_bytes: self.mm.cache.stats().bytes_written_back - written,
            stop_us: stopped.as_micros() as u64,
            flush_us: flush.as_micros() as u64,
            state_bytes: 0,
        };
        Ok((state, report))
    }

    /// Lets the threads [`Runtime::freeze`] stopped run on.
    pub fn thaw(&self) {
        self.threads.resume_others();
    }

    /// The state of the process whose threads are stopped: `first`, then
    /// the stopped `others` by tid.
    fn state_of(
        &self,
        mut threads: Vec<ThreadState>,
        mut others: Vec<ThreadState>,
    ) -> ProcessState {
        others.sort_by_key(|t| t.tid);
        threads.extend(others);
        let image = {
            let view = self.process.lock().unwrap_or_else(|p| p.into_inner());
            ImageState {
                program: self
                    .program
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                cmdline: view.cmdline.clone(),
                auxv: view.auxv.clone(),
                stack_top: view.stack_top,
            }
        };
        let signals = self
            .signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state(pending_of("/proc/self/status", "ShdPnd:"));
        ProcessState {
            image,
            threads,
            signals,
            files: self.file_states(),
            cwd: self.cwd_path(),
            umask: umask(),
            credentials: credentials(),
            limits: limits(
                self.process
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .nofile,
            ),
            memory: self.mm.arena.layout(),
        }
    }

    /// Every descriptor of the application's, by number.
    fn file_states(&self) -> Vec<FileState> {
        let mut fds = vec![0, 1, 2];
        fds.extend(crate::host::fds::open_fds());
        fds.retain(|&fd| !self.is_runtime_fd(fd as u64));
        fds.into_iter()
            .filter_map(|fd| self.file_state(fd))
            .collect()
    }

    fn file_state(&self, fd: i32) -> Option<FileState> {
        // Safety: F_GETFD and F_GETFL only query the descriptor table.
        let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if fd_flags < 0 {
            return None;
        }
        let cloexec = fd_flags & libc::FD_CLOEXEC != 0;
        if let Some(file) = self.files.get(fd as u64) {
            let dir_cookie = *file.dir_cookie.lock().unwrap_or_else(|p| p.into_inner());
            return Some(FileState {
                fd,
                cloexec,
                open: OpenState::Storage {
                    handle: file.handle.0.clone(),
                    path: file.path.clone(),
                    status: file.status(),
                    offset: file.offset.peek(),
                    dir_cookie,
                    directory: file.file_type == lego_proto::FileType::Directory,
                    content: file.content.as_ref().map(|c| c.to_vec()),
                },
            });
        }
        // Safety: as above.
        let status = unsafe { libc::fcntl(fd, libc::F_GETFL) } as u32;
        // Safety: lseek with SEEK_CUR only reads the offset.
        let offset = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        let target = std::fs::read_link(format!("/proc/thread-self/fd/{fd}"))
            .map(|t| t.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        Some(FileState {
            fd,
            cloexec,
            open: OpenState::Host {
                target,
                status,
                offset: (offset >= 0).then_some(offset as u64),
            },
        })
    }

    /// The working directory: the file system's, or the host's when the
    /// processor's own files are passed through.
    fn cwd_path(&self) -> Vec<u8> {
        match &self.vfs {
            Some(vfs) => vfs.cwd().path.clone(),
            None => std::env::current_dir()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or_default(),
        }
    }
}

/// The process's umask (read, not changed: `umask(2)` would set it).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

fn credentials() -> Credentials {
    let ids = super::credentials::now();
    Credentials {
        uid: [ids.uids[0], ids.uids[1], ids.uids[2]],
        gid: [ids.gids[0], ids.gids[1], ids.gids[2]],
        groups: ids.groups,
    }
}

/// The process's limits: the host's, RLIMIT_NOFILE as the program set
/// it (`nofile`, when the host keeps more for the runtime).
fn limits(nofile: Option<(u64, u64)>) -> Vec<Limit> {
    (0..RLIMITS)
        .filter_map(|resource| {
            let mut old = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // Safety: prlimit64 of our own process writes one rlimit64.
            let ret = unsafe {
                libc::prlimit64(
                    0,
                    resource as libc::__rlimit_resource_t,
                    std::ptr::null(),
                    &mut old,
                )
            };
            let (soft, hard) = match nofile {
                Some(view) if resource == libc::RLIMIT_NOFILE => view,
                _ => (old.rlim_cur, old.rlim_max),
            };
            (ret == 0).then_some(Limit {
                resource,
                soft,
                hard,
            })
        })
        .collect()
}
