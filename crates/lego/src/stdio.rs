//! `lego run`'s side of relayed stdio: what it reads on its stdin goes to
//! the program's in `Input` frames, what the program writes comes back in
//! `Output` frames and is written where `lego run`'s own stdout, stderr or
//! terminal goes; so the program may run on another host, and its stdio
//! is not descriptors of this process.
//!
//! In the foreground of a terminal the program gets a terminal of its own
//! on its processor (as `ssh -t` gives one); this terminal is put in raw
//! mode, so keys reach the program's line discipline as typed, and window
//! size changes are sent on (`Resize`).
//!
//! Like ssh, `lego run` reads its stdin while the program runs, whether
//! or not the program reads it (up to `INPUT_WINDOW` ahead of it); a run
//! in the background of a terminal reads its stdin only once it is in the
//! foreground.

use crate::tty;
use anyhow::{anyhow, bail, Result};
use lego_proto::{
    ExitReport, Message, ProcessId, RelayedStdio, StreamRoute, TerminalSettings, WindowSize,
    INPUT_WINDOW, STDERR, STDOUT, TERMINAL,
};
use lego_transport::{write_frame, FrameReader};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Where frames to the processor are written, from several threads.
pub type Sender = Arc<Mutex<dyn Write + Send>>;

/// Writes a frame to the processor; false if it is gone.
pub fn send(sender: &Sender, id: u64, message: &Message, payload: &[u8]) -> bool {
    let mut writer = sender.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut &mut *writer, id, message, payload).is_ok()
}

/// Whether descriptors `a` and `b` are one open file (as after `2>&1`).
fn same_open_file(a: RawFd, b: RawFd) -> bool {
    // Safety: kcmp with plain integers only compares.
    let pid = unsafe { libc::getpid() };
    let same = unsafe {
        libc::syscall(libc::SYS_kcmp, pid, pid, 0 /* KCMP_FILE */, a, b)
    };
    if same >= 0 {
        return same == 0;
    }
    // No kcmp: the same file will do.
    let id = |fd: RawFd| {
        // Safety: fstat writes into our struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    id(a).is_some() && id(a) == id(b)
}

/// The size of the terminal on `fd`.
fn window_size(fd: RawFd) -> Option<WindowSize> {
    // Safety: TIOCGWINSZ writes into our struct.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0).then_some(WindowSize {
        rows: size.ws_row,
        cols: size.ws_col,
        xpixel: size.ws_xpixel,
        ypixel: size.ws_ypixel,
    })
}

/// The settings of the terminal on fd 0.
fn terminal_settings() -> io::Result<TerminalSettings> {
    // Safety: tcgetattr writes into our struct.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TerminalSettings {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc.to_vec(),
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
        size: window_size(0).unwrap_or_default(),
    })
}

/// How the program's streams go: those on the user's terminal to a
/// terminal of its own if `terminal` (an interactive run), the rest to
/// pipes; stderr with stdout when they are one open file here.
pub fn routes(terminal: bool) -> RelayedStdio {
    let settings = if terminal {
        match terminal_settings() {
            Ok(settings) => Some(settings),
            Err(e) => {
                eprintln!(
                    "lego: cannot give the program a terminal of its own ({e}); its stdio is piped"
                );
                None
            }
        }
    } else {
        None
    };
    let on_terminal = |fd| settings.is_some() && tty::same_terminal(fd, 0);
    let route = |fd| {
        if on_terminal(fd) {
            StreamRoute::Terminal
        } else if fd == 2 && !on_terminal(1) && same_open_file(1, 2) {
            StreamRoute::Stdout
        } else {
            StreamRoute::Pipe
        }
    };
    RelayedStdio {
        routes: [route(0), route(1), route(2)],
        terminal: settings,
    }
}

/// Input sent and not yet taken by the program's stdin.
struct Window {
    outstanding: Mutex<u64>,
    taken: Condvar,
}

/// Copies stdin to the processor, at most `INPUT_WINDOW` ahead of what
/// the program took; its end too.
fn send_input(sender: Sender, window: Arc<Window>) {
    let mut buf = vec![0u8; 64 << 10];
    // Safety: isatty only queries.
    let terminal = unsafe { libc::isatty(0) } == 1;
    if terminal {
        // A background run reads EIO instead of being stopped (SIGTTIN),
        // and waits to be in the foreground.
        // Safety: ignoring a signal has no preconditions.
        unsafe { libc::signal(libc::SIGTTIN, libc::SIG_IGN) };
    }
    loop {
        let room = {
            let mut outstanding = window.outstanding.lock().unwrap_or_else(|p| p.into_inner());
            while *outstanding >= INPUT_WINDOW {
                outstanding = window
                    .taken
                    .wait(outstanding)
                    .unwrap_or_else(|p| p.into_inner());
            }
            (INPUT_WINDOW - *outstanding).min(buf.len() as u64) as usize
        };
        // Safety: reads into our buffer, at most its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), room) };
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // A non-blocking stdin (another program set it so): wait.
                Some(libc::EAGAIN) => {
                    wait_for(0, libc::POLLIN);
                    continue;
                }
                Some(libc::EIO) if terminal => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                _ => {}
            }
        }
        let n = n.max(0) as usize;
        *window.outstanding.lock().unwrap_or_else(|p| p.into_inner()) += n as u64;
        // An empty Input is the end of the program's input.
        if !send(&sender, 0, &Message::Input, &buf[..n]) || n == 0 {
            return;
        }
    }
}

/// Waits until `fd` is ready for `events` (or fails).
fn wait_for(fd: RawFd, events: libc::c_short) {
    let mut ready = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // Safety: poll reads and writes our one pollfd.
    unsafe { libc::poll(&mut ready, 1, -1) };
}

/// Writes all of `bytes` to `fd`; false if it cannot take them.
fn write_all(fd: RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // Safety: writes bytes of a live buffer.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // A non-blocking stdout (another program set it so): wait.
                Some(libc::EAGAIN) => {
                    wait_for(fd, libc::POLLOUT);
                    continue;
                }
                _ => return false,
            }
        }
        if n <= 0 {
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// Relays the program's stdio until it ends (asking for its end first)
/// and returns how it ended (`processor` names it in errors).
/// The caller restores the terminal.
pub fn attach<S: std::io::Read>(
    sender: Sender,
    reader: &mut FrameReader<S>,
    pid: ProcessId,
    stdio: &RelayedStdio,
    processor: &str,
) -> Result<ExitReport> {
    if stdio.terminal.is_some() {
        tty::make_raw().map_err(|e| anyhow!("cannot put the terminal in raw mode: {e}"))?;
    }
    if !send(&sender, 2, &Message::WaitProcess { pid }, &[]) {
        bail!("lost processor {processor}: the connection closed");
    }
    let window = Arc::new(Window {
        outstanding: Mutex::new(0),
        taken: Condvar::new(),
    });
    {
        let sender = Arc::clone(&sender);
        let window = Arc::clone(&window);
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || send_input(sender, window))
            .map_err(|e| anyhow!("cannot relay stdin: {e}"))?;
    }
    // The program's terminal output goes to the user's terminal, wherever
    // `lego run`'s stdout was redirected.
    let terminal = [1, 2, 0]
        .into_iter()
        .find(|&t| tty::same_terminal(t, 0))
        .unwrap_or(1);
    let mut closed = [false; 3];
    loop {
        let frame = reader
            .read_frame()
            .map_err(|e| anyhow!("lost processor {processor}: {e}"))?;
        match frame.message {
            Message::Output { stream } => {
                let fd = match stream {
                    TERMINAL => terminal,
                    STDOUT => 1,
                    STDERR => 2,
                    _ => continue,
                };
                if frame.payload.is_empty() {
                    // Every writer closed the program's stdout: so does
                    // `lego run`, so that a reader of its own sees the end.
                    if stream == STDOUT && !closed[1] {
                        closed[1] = true;
                        null_out(1);
                    }
                    continue;
                }
                if closed[stream as usize] {
                    continue;
                }
                if !write_all(fd, &frame.payload) && stream != TERMINAL {
                    closed[stream as usize] = true;
                    send(&sender, 0, &Message::OutputClosed { stream }, &[]);
                }
            }
            Message::InputTaken { bytes } => {
                let mut outstanding = window.outstanding.lock().unwrap_or_else(|p| p.into_inner());
                *outstanding = outstanding.saturating_sub(bytes);
                window.taken.notify_all();
            }
            Message::Exited(report) => return Ok(report),
            Message::Error(e) => bail!("processor {processor}: {}", e.message),
            other => bail!("processor {processor} relayed {}", other.kind()),
        }
    }
}

/// Points `fd` at /dev/null, closing what it was.
fn null_out(fd: RawFd) {
    // Safety: opens /dev/null, moves it onto `fd` and closes the copy.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, fd);
            libc::close(null);
        }
    }
}

/// The size of the user's terminal now, to send on a window change.
pub fn current_size() -> Option<WindowSize> {
    window_size(0)
}
