//! The report channel to the processor: what the process's runtime says
//! once when the process ends (its ExCache counters, and why, if the
//! runtime ended it), and [`fatal`], the one way the runtime ends a
//! process it cannot serve any more.

use lego_proto::runtime::{RuntimeReport, REPORT_FD, RUNTIME_FAILURE_EXIT};
use lego_proto::ExcacheStats;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

/// Where the report descriptor lives once moved above the floor (-1: a
/// forked process with nobody to tell).
static REPORT: AtomicI32 = AtomicI32::new(REPORT_FD);

/// Whether the report was written.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Where the counters come from (the process's ExCache), once it exists.
static STATS: OnceLock<fn() -> ExcacheStats> = OnceLock::new();

/// Names the function the report takes its counters from.
pub fn set_stats_source(stats: fn() -> ExcacheStats) {
    let _ = STATS.set(stats);
}

fn write_report(report: &RuntimeReport) {
    let fd = REPORT.load(Ordering::SeqCst);
    if fd < 0 {
        // A forked process that could not announce itself: nobody to tell.
        return;
    }
    if let Ok(bytes) = postcard::to_stdvec(report) {
        // Safety: REPORT_FD was handed to us by the processor for this; the
        // File is forgotten so the descriptor is not closed twice.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = file.write_all(&bytes);
        std::mem::forget(file);
    }
}

/// Makes `fd` the descriptor the end-of-process report goes to (a forked
/// process's connection to its processor), closing the inherited one.
pub fn set_report_fd(fd: RawFd) {
    let old = REPORT.swap(fd, Ordering::SeqCst);
    if old != fd {
        // Safety: the old report descriptor is the runtime's own, and no
        // longer used once swapped out.
        unsafe { libc::close(old) };
    }
}

/// Moves the inherited report descriptor above the descriptor floor.
pub fn lift_report_fd() {
    if let Ok(fd) = lego_transport::fdfloor::lift_fd(REPORT_FD) {
        REPORT.store(fd, Ordering::SeqCst);
    }
}

/// Reports the ExCache counters (and an error, if the runtime is ending
/// the process) to the processor, once.
pub fn finish(error: Option<String>) {
    if REPORTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let stats = STATS
        .get()
        .map_or_else(ExcacheStats::default, |stats| stats());
    write_report(&RuntimeReport { stats, error });
}

/// Ends the process because the runtime cannot go on, telling the processor
/// why. Safe to call from any runtime thread.
pub fn fatal(message: &str) -> ! {
    tracing::error!("{message}");
    static ENDING: AtomicBool = AtomicBool::new(false);
    if !ENDING.swap(true, Ordering::SeqCst) {
        finish(Some(message.to_string()));
    }
    // Safety: ends the whole process at once, application included.
    unsafe { libc::_exit(RUNTIME_FAILURE_EXIT) }
}
