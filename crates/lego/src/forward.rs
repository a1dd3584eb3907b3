//! Signals sent to `lego run` are the program's: Ctrl-C at the terminal,
//! `kill -TERM` or a hang-up reach the program's runtime (on this host:
//! the launch socket is local), and `lego run` keeps waiting to report
//! how the program ended; for another user's cluster, through the
//! processor (`SignalProcess`). A SIGKILL cannot be forwarded; the processor
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
            let target = TARGET.load(Ordering::SeqCst);
            let group = matches!(sig, libc::SIGINT | libc::SIGQUIT | libc::SIGHUP);
            let mut via = VIA.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((sender, pid)) = via.as_mut() {
                let ask = Message::SignalProcess {
                    pid: *pid,
                    signal: sig,
                    group,
                };
                // A lost processor ends `lego run` through its own
                // connection; nothing to do here.
                stdio::send(sender, 0, &ask, &[]);
            } else if target > 0 {
                // What a terminal sends its foreground group (Ctrl-C,
                // Ctrl-\, a hang-up) goes to the program's process group,
                // its children included; the rest to the program, as a
                // `kill` of its pid would. The program leads its group
                // unless it left it.
                // Safety: kill(2) with plain integers.
                if !group || unsafe { libc::kill(-target, sig) } != 0 {
                    // Safety: as above.
                    unsafe { libc::kill(target, sig) };
                }
            } else {
                crate::tty::restore();
                std::process::exit(128 + sig);
            }
        });
    if let Err(e) = spawned {
        eprintln!("lego: cannot forward signals to the program: {e}");
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
