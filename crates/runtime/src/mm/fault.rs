//! The fault thread: reads userfaultfd messages and serves each miss
//! through the ExCache. It spins briefly on an empty queue before it
//! sleeps, because waking a halted vCPU costs far more than a miss
//! (measured on a 2-vCPU VM: ~75 µs against ~10 µs).

use super::excache::FaultScratch;
use super::Memory;
use crate::host::report::fatal;
use crate::host::uffd::{UffdMsg, UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_WRITE};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long to poll an empty queue before blocking.
const SPIN: Duration = Duration::from_micros(50);

/// Most fault threads: one per application thread, up to this many.
pub const MAX_SERVERS: usize = super::remote::LANES;

/// Fault threads running.
static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// Starts the first fault thread, on the application thread's CPU.
pub fn spawn(mm: &'static Memory) -> io::Result<()> {
    SERVERS.store(0, Ordering::SeqCst);
    // A lost holder of spilled regions is replaced off the fault path
    // (a forked child starts with no thread doing it).
    super::REPAIRING.store(false, Ordering::SeqCst);
    mm.remote
        .spilled()
        .on_lost(Box::new(move || super::repair_regions(mm)));
    mm.remote
        .spilled()
        .on_refresh(Box::new(move || mm.remote.refresh_holders()));
    let fd = mm.arena.uffd.raw();
    // Safety: fcntl on our own descriptor.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // The application thread and the fault thread share one CPU: while a
    // miss is served the application is blocked anyway, and handing the CPU
    // back to it on the same core skips the cross-CPU wake-up that
    // otherwise doubles the miss latency on a small VM (measured: median
    // 17-32 us bimodal unpinned, 20 us pinned). LEGO_NO_PIN=1 turns it off.
    // Safety: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let pinned = cpu >= 0 && std::env::var_os("LEGO_NO_PIN").is_none();
    if pinned {
        pin(cpu);
    }
    start(mm, pinned.then_some(cpu))
}

/// One more fault thread, when the application runs one more thread
/// (up to [`MAX_SERVERS`]): then several misses are served at once.
/// Unpinned: the application's threads run on any CPU.
pub fn add_server(mm: &'static Memory, app_threads: usize) {
    if SERVERS.load(Ordering::SeqCst) >= app_threads.min(MAX_SERVERS) {
        return;
    }
    if let Err(e) = start(mm, None) {
        tracing::warn!("cannot start another fault thread: {e}");
    }
}

fn start(mm: &'static Memory, cpu: Option<i32>) -> io::Result<()> {
    let lane = SERVERS.fetch_add(1, Ordering::SeqCst);
    let spawned = std::thread::Builder::new()
        .name(format!("excache-fault-{lane}"))
        .spawn(move || {
            crate::host::block_all_signals();
            if let Some(cpu) = cpu {
                pin(cpu);
            }
            super::remote::set_lane(lane);
            serve(mm)
        });
    if spawned.is_err() {
        SERVERS.fetch_sub(1, Ordering::SeqCst);
    }
    spawned.map(|_| ())
}

fn serve(mm: &'static Memory) -> ! {
    let mut msgs = [UffdMsg::ZERO; 16];
    let mut scratch = FaultScratch::default();
    let mut idle_since: Option<Instant> = None;
    let mut last_publish = Instant::now();
    loop {
        let n = match mm.arena.uffd.read(&mut msgs) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SPIN {
                    // Yield rather than spin: on a small machine the thread
                    // we are waiting for (the application, woken by the
                    // last fix) may need this very CPU.
                    std::thread::yield_now();
                } else {
                    publish(mm);
                    last_publish = Instant::now();
                    wait_readable(mm.arena.uffd.raw());
                    idle_since = None;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => fatal(&format!("reading userfaultfd: {e}")),
        };
        idle_since = None;
        for msg in &msgs[..n] {
            if msg.event != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let write = msg.fault_flags() & UFFD_PAGEFAULT_FLAG_WRITE != 0;
            if let Err(e) = mm.cache.fault(
                &mm.arena,
                &mm.remote,
                msg.fault_address(),
                write,
                &mut scratch,
            ) {
                fatal(&format!(
                    "cannot serve a page fault at {:#x}: {e}",
                    msg.fault_address()
                ));
            }
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            publish(mm);
            last_publish = Instant::now();
        }
    }
}

/// How often a busy fault thread refreshes the live counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Refreshes the counters the processor reports (`lego ps`).
fn publish(mm: &Memory) {
    if let Some(live) = crate::host::live::get() {
        let (resident, misses) = mm.cache.live();
        live.publish(resident, misses);
    }
}

fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Safety: one pollfd of ours; an error just means we poll again.
    unsafe { libc::poll(&mut pfd, 1, -1) };
}

/// Restricts the calling thread to `cpu`; failure leaves it unpinned,
/// which is only slower.
fn pin(cpu: i32) {
    // Safety: cpu_set_t is plain data, and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}
