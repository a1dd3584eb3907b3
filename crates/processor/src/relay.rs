//! Relayed stdio: a program's stdin, stdout and stderr are pipes (or a
//! terminal of its own) that the processor copies to and from `Input` and
//! `Output` frames on the launch connection. `lego run` may then be on
//! another host, and the program's stdio is not tied to descriptors of
//! `lego run`'s.
//!
//! One thread per process polls the output ends, the input end while
//! input is pending, and an eventfd that wakes it for new input, a stream
//! `lego run` can no longer write, or the program's end. Input is
//! acknowledged (`InputTaken`) as it reaches the program, so `lego run`
//! holds back what the program does not read (`INPUT_WINDOW`).

use crate::spawn::pipe;
use lego_proto::{
    Message, RelayedStdio, StreamRoute, TerminalSettings, WindowSize, INPUT_WINDOW, STDERR, STDOUT,
    TERMINAL,
};
use lego_transport::write_frame;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How much one read of an output takes at most (one `Output` frame).
const CHUNK: usize = 64 << 10;

/// After the program ended, how much of what is still in its streams is
/// passed on at most (a process it left behind may go on writing), and
/// how long a terminal may stay quiet before it counts as drained (its
/// line discipline passes output on asynchronously, so an empty read
/// does not mean an empty terminal).
const DRAIN_BYTES: usize = 16 << 20;
const TERMINAL_QUIET: Duration = Duration::from_millis(200);
const TERMINAL_DRAIN: Duration = Duration::from_secs(2);

/// The program's ends of its streams and the processor's.
pub struct Opened {
    /// The program's stdin, stdout and stderr.
    pub program: [OwnedFd; 3],
    /// The relay's.
    pub ends: Ends,
}

/// The relay's ends of a program's streams.
pub struct Ends {
    /// Where input goes: the stdin pipe's write end, or the terminal.
    input: Option<OwnedFd>,
    /// Whether that is the terminal (whose end is no end of input).
    input_is_terminal: bool,
    /// What is read and sent on, with its stream number.
    outputs: Vec<(u8, OwnedFd)>,
    /// The terminal, for its size.
    master: Option<OwnedFd>,
}

fn nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // Safety: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn winsize(size: WindowSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: size.xpixel,
        ws_ypixel: size.ypixel,
    }
}

/// A new pseudo-terminal with the user's terminal's settings and size:
/// (master, slave).
fn open_terminal(settings: &TerminalSettings) -> io::Result<(OwnedFd, OwnedFd)> {
    // Safety: termios is plain data; zeroes are a valid start.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    termios.c_iflag = settings.iflag;
    termios.c_oflag = settings.oflag;
    termios.c_cflag = settings.cflag;
    termios.c_lflag = settings.lflag;
    termios.c_line = settings.line;
    for (slot, &c) in termios.c_cc.iter_mut().zip(&settings.cc) {
        *slot = c;
    }
    termios.c_ispeed = settings.ispeed;
    termios.c_ospeed = settings.ospeed;
    let size = winsize(settings.size);
    let check = |ret: libc::c_int| {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    };
    // Both ends close-on-exec from their creation: a runtime another
    // launch thread starts meanwhile inherits neither.
    // Safety: posix_openpt returns a new descriptor, owned from here on;
    // grantpt, unlockpt and TIOCGPTPEER act on it (the last returns the
    // slave, a new descriptor); tcsetattr and TIOCSWINSZ read our structs.
    unsafe {
        let master = OwnedFd::from_raw_fd(check(libc::posix_openpt(
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?);
        check(libc::grantpt(master.as_raw_fd()))?;
        check(libc::unlockpt(master.as_raw_fd()))?;
        let slave = OwnedFd::from_raw_fd(check(libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?);
        check(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios))?;
        check(libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size))?;
        Ok((master, slave))
    }
}

/// Makes the program's streams as `spec` routes them.
pub fn open(spec: &RelayedStdio) -> io::Result<Opened> {
    let terminal = spec.terminal.as_ref().map(open_terminal).transpose()?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let slave = |route: &str| -> io::Result<OwnedFd> {
        match &terminal {
            Some((_, slave)) => slave.try_clone(),
            None => Err(bad(&format!(
                "{route} routed to a terminal, but none was asked for"
            ))),
        }
    };
    let mut ends = Ends {
        input: None,
        input_is_terminal: spec.routes[0] == StreamRoute::Terminal,
        outputs: Vec::new(),
        master: None,
    };
    let stdin = match (spec.routes[0], &terminal) {
        (StreamRoute::Terminal, Some((master, _))) => {
            ends.input = Some(master.try_clone()?);
            slave("stdin")?
        }
        (StreamRoute::Terminal, None) => {
            return Err(bad("stdin routed to a terminal, but none was asked for"))
        }
        (StreamRoute::Pipe, _) => {
            let (read, write) = pipe()?;
            ends.input = Some(write);
            read
        }
        (StreamRoute::Stdout, _) => return Err(bad("stdin cannot go where stdout goes")),
    };
    let stdout = match spec.routes[1] {
        StreamRoute::Terminal => slave("stdout")?,
        StreamRoute::Pipe => {
            let (read, write) = pipe()?;
            ends.outputs.push((STDOUT, read));
            write
        }
        StreamRoute::Stdout => return Err(bad("stdout cannot go where stdout goes")),
    };
    let stderr = match spec.routes[2] {
        StreamRoute::Terminal => slave("stderr")?,
        StreamRoute::Pipe => {
            let (read, write) = pipe()?;
            ends.outputs.push((STDERR, read));
            write
        }
        StreamRoute::Stdout => stdout.try_clone()?,
    };
    if let Some((master, _slave)) = terminal {
        ends.outputs.push((TERMINAL, master.try_clone()?));
        ends.master = Some(master);
    }
    for fd in ends
        .input
        .iter()
        .chain(ends.outputs.iter().map(|(_, fd)| fd))
    {
        nonblocking(fd)?;
    }
    Ok(Opened {
        program: [stdin, stdout, stderr],
        ends,
    })
}

/// What the connection's reader hands the relay thread.
#[derive(Default)]
struct Requests {
    input: VecDeque<u8>,
    /// `lego run`'s stdin ended: close the program's once what is
    /// pending is written.
    input_ended: bool,
    /// Streams `lego run` can no longer write.
    closed: Vec<u8>,
    /// The program ended: pass on what is left, then stop.
    finishing: bool,
}

struct Shared {
    requests: Mutex<Requests>,
    /// Wakes the relay thread (an eventfd).
    wake: OwnedFd,
    /// Set when the thread has stopped.
    stopped: Mutex<bool>,
    stopped_cv: Condvar,
}

impl Shared {
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // Safety: writes 8 bytes of a live buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

/// A running relay; the program's end is `finish`.
pub struct Relay {
    shared: Arc<Shared>,
    master: Option<OwnedFd>,
}

/// Where frames to `lego run` are written.
pub type Writer = Arc<Mutex<dyn io::Write + Send>>;

/// Sends a frame to `lego run`; false when it is gone.
pub fn send(writer: &Writer, message: &Message, payload: &[u8]) -> bool {
    let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut &mut *writer, 0, message, payload).is_ok()
}

impl Relay {
    /// Starts copying between `opened`'s ends and `writer`.
    pub fn start(ends: Ends, writer: Writer) -> io::Result<Relay> {
        // Safety: eventfd returns a new descriptor, owned from here on.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests::default()),
            // Safety: just created.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            stopped: Mutex::new(false),
            stopped_cv: Condvar::new(),
        });
        let master = ends.master;
        let thread_shared = Arc::clone(&shared);
        let mut worker = Worker {
            input: ends.input,
            input_is_terminal: ends.input_is_terminal,
            input_failed: false,
            outputs: ends.outputs,
            writer,
        };
        std::thread::Builder::new()
            .name("stdio relay".into())
            .spawn(move || {
                worker.run(&thread_shared);
                *thread_shared
                    .stopped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = true;
                thread_shared.stopped_cv.notify_all();
            })?;
        Ok(Relay { shared, master })
    }

    fn request(&self, change: impl FnOnce(&mut Requests)) {
        change(
            &mut self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.shared.wake();
    }

    /// Bytes of `lego run`'s stdin; none: its end. False when `lego run`
    /// sent more than its window lets it (it is then cut off: a client
    /// that ignores it would fill the processor's memory).
    pub fn input(&self, bytes: &[u8]) -> bool {
        let mut within = true;
        self.request(|r| {
            if bytes.is_empty() {
                r.input_ended = true;
            } else if (r.input.len() + bytes.len()) as u64 > 2 * INPUT_WINDOW {
                within = false;
            } else {
                r.input.extend(bytes);
            }
        });
        within
    }

    /// `lego run` can no longer write `stream`.
    pub fn output_closed(&self, stream: u8) {
        self.request(|r| r.closed.push(stream));
    }

    /// The user's terminal has a new size.
    pub fn resize(&self, size: WindowSize) {
        if let Some(master) = &self.master {
            let size = winsize(size);
            // Safety: TIOCSWINSZ reads our struct; the master is ours.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        }
    }

    /// After the program ended: passes on what it left in its streams
    /// and stops.
    pub fn finish(self) {
        self.request(|r| r.finishing = true);
        let mut stopped = self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            stopped = self
                .shared
                .stopped_cv
                .wait(stopped)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct Worker {
    input: Option<OwnedFd>,
    input_is_terminal: bool,
    /// The program closed its stdin: input is dropped (and acknowledged).
    input_failed: bool,
    outputs: Vec<(u8, OwnedFd)>,
    writer: Writer,
}

enum Read {
    Bytes(usize),
    Nothing,
    Ended,
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> Read {
    loop {
        // Safety: reads into a live buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Read::Bytes(n as usize);
        }
        if n == 0 {
            return Read::Ended;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Read::Nothing,
            // A terminal none holds any more (EIO), or worse.
            _ => return Read::Ended,
        }
    }
}

impl Worker {
    fn run(&mut self, shared: &Shared) {
        let mut buf = vec![0u8; CHUNK];
        let mut pending: VecDeque<u8> = VecDeque::new();
        let mut input_ended = false;
        loop {
            let finishing = {
                let mut r = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
                pending.append(&mut r.input);
                input_ended |= r.input_ended;
                for stream in r.closed.drain(..) {
                    self.outputs.retain(|(s, _)| *s != stream);
                }
                r.finishing
            };
            if self.input_failed && !pending.is_empty() {
                let dropped = pending.len() as u64;
                pending.clear();
                if !send(&self.writer, &Message::InputTaken { bytes: dropped }, &[]) {
                    return;
                }
            }
            if input_ended && pending.is_empty() && !self.input_is_terminal {
                // The program sees the end of its input.
                self.input = None;
            }
            if finishing {
                self.drain(&mut buf);
                return;
            }
            let mut fds = vec![libc::pollfd {
                fd: shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            for (_, fd) in &self.outputs {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let input_at = fds.len();
            let writing = !pending.is_empty() && self.input.is_some();
            if let (true, Some(input)) = (writing, &self.input) {
                fds.push(libc::pollfd {
                    fd: input.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                });
            }
            // Safety: poll reads and writes our array of its length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ready < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            if fds[0].revents != 0 {
                let mut count = [0u8; 8];
                // Safety: reads 8 bytes into a live buffer from our eventfd.
                unsafe { libc::read(shared.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            }
            let mut ended = Vec::new();
            for (i, (stream, fd)) in self.outputs.iter().enumerate() {
                if fds[1 + i].revents == 0 {
                    continue;
                }
                match read_some(fd.as_raw_fd(), &mut buf) {
                    Read::Bytes(n) => {
                        if !send(
                            &self.writer,
                            &Message::Output { stream: *stream },
                            &buf[..n],
                        ) {
                            return;
                        }
                    }
                    Read::Nothing => {}
                    Read::Ended => ended.push(*stream),
                }
            }
            for stream in ended {
                self.outputs.retain(|(s, _)| *s != stream);
                if !send(&self.writer, &Message::Output { stream }, &[]) {
                    return;
                }
            }
            if writing && fds[input_at].revents != 0 && !self.write_input(&mut pending) {
                return;
            }
        }
    }

    /// Writes what the program's stdin takes now; false if `lego run` is
    /// gone.
    fn write_input(&mut self, pending: &mut VecDeque<u8>) -> bool {
        let Some(input) = &self.input else {
            return true;
        };
        let mut taken = 0u64;
        while !pending.is_empty() {
            let (front, _) = pending.as_slices();
            // Safety: writes from a live buffer of its length.
            let n = unsafe { libc::write(input.as_raw_fd(), front.as_ptr().cast(), front.len()) };
            if n > 0 {
                pending.drain(..n as usize);
                taken += n as u64;
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break,
                _ => {
                    // Nobody reads the program's stdin any more.
                    taken += pending.len() as u64;
                    pending.clear();
                    self.input = None;
                    self.input_failed = true;
                    break;
                }
            }
        }
        taken == 0 || send(&self.writer, &Message::InputTaken { bytes: taken }, &[])
    }

    /// Passes on what the program left in its streams, within bounds: a
    /// pipe until it is empty (what the program wrote before it ended is
    /// all there), its terminal until nobody holds it or it stays quiet.
    fn drain(&mut self, buf: &mut [u8]) {
        let mut passed = 0;
        for (stream, fd) in &self.outputs {
            let terminal = *stream == TERMINAL;
            let give_up = Instant::now() + TERMINAL_DRAIN;
            while passed < DRAIN_BYTES {
                match read_some(fd.as_raw_fd(), buf) {
                    Read::Bytes(n) => {
                        passed += n;
                        if !send(
                            &self.writer,
                            &Message::Output { stream: *stream },
                            &buf[..n],
                        ) {
                            return;
                        }
                    }
                    Read::Ended => break,
                    Read::Nothing if !terminal || Instant::now() > give_up => break,
                    Read::Nothing => {
                        let mut ready = libc::pollfd {
                            fd: fd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // Safety: poll reads and writes our one pollfd.
                        let n = unsafe {
                            libc::poll(&mut ready, 1, TERMINAL_QUIET.as_millis() as libc::c_int)
                        };
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
        }
    }
}
