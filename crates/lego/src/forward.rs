//! Signals sent to `lego run` are the program's: Ctrl-C at the terminal,
//! `kill -TERM` or a hang-up reach the program, and `lego run` keeps
//! waiting to report how the program ended. They go through the
//! processor (`SignalProcess`) when the program's stdio is relayed (it may
//! run on another host) or it is another user's cluster; straight to the
//! runtime with `--stdio pass`. A SIGKILL cannot be forwarded; the processor
//! kills the program when `lego run`'s connection drops instead.

use crate::stdio::{self, Sender};
use lego_proto::{Message, ProcessId};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

/// The signals forwarded to the program.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The program's host pid, once it runs.
static TARGET: AtomicI32 = AtomicI32::new(0);

/// For a user who may not signal the program's runtime (another user's
/// cluster runs it as a host identity of its own): the launch connection
/// and the program's pid, to ask the processor instead.
static VIA: Mutex<Option<(Sender, ProcessId)>> = Mutex::new(None);

/// Whether the program's terminal is on its processor (relayed stdio):
/// window size changes are sent there.
static REMOTE_TERMINAL: AtomicBool = AtomicBool::new(false);

fn forwarded_set() -> libc::sigset_t {
    // Safety: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        // Not forwarded: a new window size is copied to the program's
        // terminal, whose kernel tells the program.
        libc::sigaddset(&mut set, libc::SIGWINCH);
        // Job control: the program stops and continues with `lego run`.
        libc::sigaddset(&mut set, libc::SIGTSTP);
        libc::sigaddset(&mut set, libc::SIGCONT);
        set
    }
}

/// Takes the forwarded signals away from every thread of `lego run` (call
/// it before any other thread starts) and hands them to one that forwards
/// them. Before the program runs, a signal ends `lego run` as it would
/// have by default.
pub fn start() {
    let set = forwarded_set();
    // Safety: blocks signals on the calling thread with a valid set; the
    // threads started afterwards inherit the mask. Child processes start
    // with an empty mask (std's spawn resets it).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let spawned = std::thread::Builder::new()
        .name("signal-forward".into())
        .spawn(move || loop {
            let mut sig = 0;
            // Safety: sigwait reads our set and writes one int.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if sig == libc::SIGWINCH {
                if !REMOTE_TERMINAL.load(Ordering::SeqCst) {
                    crate::tty::resize();
                } else if let (Some((sender, _)), Some(size)) = (
                    VIA.lock().unwrap_or_else(|p| p.into_inner()).as_ref(),
                    stdio::current_size(),
                ) {
                    stdio::send(sender, 0, &Message::Resize(size), &[]);
                }
                continue;
            }
            if sig == libc::SIGTSTP {
                // Ctrl-Z at the user's terminal (when the program has none
                // of its own) or `kill -TSTP`: the program's group stops,
                // then `lego run`, with the user's terminal as it was. A
                // SIGSTOP: the program leads a session of its own, so its
                // group is orphaned and the kernel would drop a SIGTSTP
                // of default action (a program's handler for SIGTSTP is
                // not run; on a terminal of its own, Ctrl-Z is its
                // terminal's and reaches it as natively).
                send_on(libc::SIGSTOP, true);
                let raw = crate::tty::restore();
                // Safety: kill(2) of ourselves with a plain signal.
                unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                if raw {
                    let _ = crate::tty::make_raw();
                }
                continue;
            }
            if sig == libc::SIGCONT {
                // Continued (`fg`, `bg`, `kill -CONT`): so is the program.
                send_on(libc::SIGCONT, true);
                continue;
            }
            let group = matches!(sig, libc::SIGINT | libc::SIGQUIT | libc::SIGHUP);
            if !send_on(sig, group) {
                crate::tty::restore();
                std::process::exit(128 + sig);
            }
        });
    if let Err(e) = spawned {
        eprintln!("lego: cannot forward signals to the program: {e}");
    }
}

/// Sends `sig` on to the program (to its group if `group`); false if it
/// does not run yet.
fn send_on(sig: libc::c_int, group: bool) -> bool {
    let target = TARGET.load(Ordering::SeqCst);
    let mut via = VIA.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((sender, pid)) = via.as_mut() {
        let ask = Message::SignalProcess {
            pid: *pid,
            signal: sig,
            group,
        };
        // A lost processor ends `lego run` through its own connection;
        // nothing to do here.
        stdio::send(sender, 0, &ask, &[]);
        true
    } else if target > 0 {
        // What a terminal sends its foreground group (Ctrl-C, Ctrl-\, a
        // hang-up, Ctrl-Z) goes to the program's process group, its
        // children included; the rest to the program, as a `kill` of its
        // pid would. The program leads its group unless it left it.
        // Safety: kill(2) with plain integers.
        if !group || unsafe { libc::kill(-target, sig) } != 0 {
            // Safety: as above.
            unsafe { libc::kill(target, sig) };
        }
        true
    } else {
        false
    }
}

/// From now on, forwarded signals go to `host_pid`.
pub fn target(host_pid: u32) {
    TARGET.store(host_pid as i32, Ordering::SeqCst);
}

/// From now on, forwarded signals go to program `pid` through its
/// processor, over the launch connection `sender` writes; and window size
/// changes too if `terminal` (its terminal is there).
pub fn through_processor(sender: Sender, pid: ProcessId, terminal: bool) {
    *VIA.lock().unwrap_or_else(|p| p.into_inner()) = Some((sender, pid));
    REMOTE_TERMINAL.store(terminal, Ordering::SeqCst);
}
