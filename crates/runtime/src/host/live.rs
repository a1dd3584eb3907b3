//! This process's live-counters page (its layout is the protocol's,
//! `lego_proto::live`), which the processor reads for heartbeats and
//! `lego ps`.

use lego_proto::live::{LiveStats, STATS_FD};
use std::sync::OnceLock;

static LIVE: OnceLock<LiveStats> = OnceLock::new();

/// The page, if the processor handed one over.
pub fn get() -> Option<&'static LiveStats> {
    LIVE.get()
}

/// Makes `stats` this process's page (a forked process's new one).
pub fn set(stats: LiveStats) {
    let _ = LIVE.set(stats);
}

/// Maps the live-counters page handed over as [`STATS_FD`] and frees the
/// descriptor number for the program (a runtime started without one just
/// has no live counters).
pub fn attach() {
    if let Ok(stats) = LiveStats::map(STATS_FD) {
        set(stats);
    }
    // Safety: STATS_FD was handed to us for this mapping only.
    unsafe { libc::close(STATS_FD) };
}
