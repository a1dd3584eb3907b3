//! A terminal of the program's own, as `ssh -t` gives one: when `lego run`
//! runs in the foreground of a terminal, the program gets a new
//! pseudo-terminal, which the processor makes the controlling terminal of
//! the program's session. Its shell can then set the terminal's foreground
//! group (job control), and Ctrl-C, Ctrl-Z and window-size changes reach
//! the right processes through the line discipline, as natively.
//! `lego run` puts the user's terminal in raw mode and copies bytes both
//! ways until the program ends; the terminal is restored however `lego
//! run` ends.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

/// The user's terminal settings to restore (fd 0's), once raw.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// The program's pseudo-terminal.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Whether `lego run` should give the program a terminal of its own: its
/// stdin and stdout are one terminal whose foreground group is `lego
/// run`'s (an interactive run; in `lego run -- ls | less` the terminal's
/// keys are less's, so the program keeps sharing it).
pub fn wanted() -> bool {
    // Safety: tcgetpgrp and getpgrp only query.
    same_terminal(0, 1) && unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// A new pseudo-terminal with the user's terminal's settings and size.
pub fn open() -> io::Result<Pty> {
    // Safety: tcgetattr and TIOCGWINSZ write into our structs; openpty
    // writes two new descriptors and reads the settings and size.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut termios) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut size: libc::winsize = std::mem::zeroed();
        libc::ioctl(0, libc::TIOCGWINSZ, &mut size);
        let (mut master, mut slave) = (-1, -1);
        if libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            &termios,
            &size,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(slave, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok(Pty {
            master: OwnedFd::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
        })
    }
}

/// Puts the user's terminal in raw mode (keys go to the program's
/// terminal as typed; its line discipline does the rest).
pub fn make_raw() -> io::Result<()> {
    let mut saved_slot = SAVED.lock().unwrap_or_else(|p| p.into_inner());
    if DONE.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    // Safety: tcgetattr/tcsetattr on fd 0 with our own structs.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut termios) != 0 {
            return Err(io::Error::last_os_error());
        }
        let saved = termios;
        libc::cfmakeraw(&mut termios);
        if libc::tcsetattr(0, libc::TCSADRAIN, &termios) != 0 {
            return Err(io::Error::last_os_error());
        }
        *saved_slot = Some(saved);
    }
    Ok(())
}

/// Set once `lego run` is done with the terminal: no raw mode again (a
/// `lego run` continued after its program ended must not leave it raw).
static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Gives the user's terminal its settings back for good.
pub fn finish() {
    DONE.store(true, std::sync::atomic::Ordering::SeqCst);
    restore();
}

/// Gives the user's terminal its settings back (if `make_raw` changed
/// them); whether it did. Safe to call more than once, from any thread.
pub fn restore() -> bool {
    let Some(saved) = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return false;
    };
    // Safety: tcsetattr reads our saved struct.
    unsafe { libc::tcsetattr(0, libc::TCSADRAIN, &saved) };
    true
}

/// The descriptor of the program's terminal while it runs: where window
/// size changes go.
static MASTER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Copies the user's window size to the program's terminal (on SIGWINCH;
/// its kernel signals the program's foreground group).
pub fn resize() {
    let master = MASTER.load(std::sync::atomic::Ordering::SeqCst);
    if master < 0 {
        return;
    }
    // Safety: TIOCGWINSZ writes into our struct; TIOCSWINSZ reads it.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, &size);
        }
    }
}

/// Copies keys to the program's terminal and its output to ours. Returns
/// a handle whose `finish` waits for the output to drain.
pub fn relay(master: OwnedFd) -> io::Result<Relay> {
    let fd = master.as_raw_fd();
    MASTER.store(fd, std::sync::atomic::Ordering::SeqCst);
    std::thread::Builder::new()
        .name("tty-in".into())
        .spawn(move || copy(0, fd))?;
    // The terminal stays open until `lego run` exits: the input thread and
    // window-size changes keep using its number.
    std::mem::forget(master);
    // The program's terminal output goes to the user's terminal, not to
    // wherever `lego run`'s stdout was redirected.
    let terminal = [1, 2, 0]
        .into_iter()
        .find(|&t| same_terminal(t, 0))
        .unwrap_or(0);
    let output = std::thread::Builder::new()
        .name("tty-out".into())
        .spawn(move || copy(fd, terminal))?;
    Ok(Relay { output })
}

pub struct Relay {
    output: std::thread::JoinHandle<()>,
}

impl Relay {
    /// After the program ended: lets its last output through (until every
    /// holder of its terminal closed it, or a short while when a process
    /// it left behind still holds it).
    pub fn finish(self) {
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while !self.output.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        restore();
    }
}

/// Whether descriptors `a` and `b` are the same terminal.
pub fn same_terminal(a: RawFd, b: RawFd) -> bool {
    let device = |fd: RawFd| {
        // Safety: fstat writes into our struct; isatty only queries.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0 && unsafe { libc::isatty(fd) } == 1)
            .then_some(st.st_rdev)
    };
    device(a).is_some() && device(a) == device(b)
}

/// Copies `from` to `to` until either end fails (the program's terminal
/// reads EIO once nobody holds it).
fn copy(from: RawFd, to: RawFd) {
    let mut buf = [0u8; 4096];
    loop {
        // Safety: reads into our buffer.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        let mut done = 0;
        while done < n as usize {
            // Safety: writes bytes of our buffer.
            let w = unsafe {
                libc::write(to, buf[done..n as usize].as_ptr().cast(), n as usize - done)
            };
            if w < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if w <= 0 {
                return;
            }
            done += w as usize;
        }
    }
}
