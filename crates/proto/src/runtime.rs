//! The contract between a processor and the runtimes it starts: the
//! descriptors a runtime is handed, what it is told ([`RuntimeSpec`], on
//! [`SPEC_FD`]) and what it reports when its process ends
//! ([`RuntimeReport`], on [`REPORT_FD`]). The processor depends on this,
//! never on the runtime's code.

use crate::{ExcacheStats, LaunchSpec, ProcessId, Voucher};
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;

/// Exit status of a runtime that ended the process itself (a lost memory
/// manager, an unloadable program); the report says why.
pub const RUNTIME_FAILURE_EXIT: i32 = 125;

/// Descriptors a processor hands a runtime, besides the program's 0-2
/// (and the live-counters page, `live::STATS_FD`).
pub const SPEC_FD: RawFd = 3;
pub const REPORT_FD: RawFd = 4;
pub const LOG_FD: RawFd = 5;
/// `/dev/userfaultfd`, opened by the processor, for a runtime whose own
/// host identity may not open it (absent when the processor could not).
pub const USERFAULTFD_FD: RawFd = 7;
/// A socket on which the processor asks the tree's first process to
/// freeze (`Freeze`: every thread stopped at a boundary, its dirty pages
/// written back, its state taken) and to thaw (`Thaw`).
pub const CONTROL_FD: RawFd = 8;

/// What freezing a process took (`Message::Frozen`; the state itself is
/// the payload, a `state::ProcessState`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct FreezeReport {
    pub threads: u32,
    pub files: u32,
    /// Dirty ExCache pages written back to the memory manager.
    pub written_back_bytes: u64,
    /// How long stopping every thread took, and writing back, in µs.
    pub stop_us: u64,
    pub flush_us: u64,
    pub state_bytes: u64,
}

/// What a processor tells a new runtime (written to [`SPEC_FD`]).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RuntimeSpec {
    pub pid: ProcessId,
    /// What `lego run` asked for, as the monitor placed it.
    pub launch: LaunchSpec,
    /// The process tree this process belongs to (the pid of the process
    /// `lego run` started), and the process's own key: all the runtime
    /// holds instead of the cluster secret, which never enters a
    /// program's process.
    pub tree: ProcessId,
    pub key_hex: String,
    /// The process's credentials as it starts, vouched for by the
    /// processor (what every storage request carries).
    pub voucher: Voucher,
    /// The processor's abstract socket name (no leading NUL) and its name:
    /// a forked process's runtime announces itself there, and a process
    /// whose ids changed gets its new voucher there.
    pub processor_socket: Vec<u8>,
    pub processor_name: String,
}

/// What a runtime tells its processor when the process ends (written to
/// [`REPORT_FD`]).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RuntimeReport {
    pub stats: ExcacheStats,
    pub error: Option<String>,
}
