//! A seccomp filter behind the table: the calls the table refuses as
//! privileged stay refused for a program that escapes the trap (Syscall
//! User Dispatch is no boundary: the selector byte is the program's to
//! write) and makes them raw. Its verdict depends on the call number
//! alone, so the kernel caches it and allowed calls pay nothing.
//!
//! It also keeps the program's hands off its processor, whose host pid
//! it knows (the runtime's parent): no signal to it, its process group or
//! every process (`kill(-1)`), no change of its priority, scheduling,
//! affinity or limits, no pidfd of it, whether the call is trapped or raw.
//! Those checks read the call's arguments, so only these few calls pay
//! for them.
//!
//! What a program can still do, escaped from the trap or not: every other
//! call, with the runtime process's host identity. For a program on
//! storage that is an unprivileged host uid of a user and IPC namespace
//! of its own (`lego_processor::hostids`: Lego uid N is host uid 2^31+N,
//! with no capability outside its namespaces), so it can signal, ptrace
//! (the table refuses it; raw, the kernel does unless the target is
//! dumpable) or renice only processes of that host uid (its own tree,
//! and other Lego programs of the same Lego uid on this host), never the
//! processor, another component or another user's program; reach host
//! files only as any other user may (world-readable files, world-writable
//! directories, its own memfds); read what any user may read in the
//! host's /proc (other processes' status and command lines); use host
//! CPU and memory beyond its ExCache quota; open connections to any
//! component, which serve it only with its own process's key and a voucher
//! sealed for it. A program on the processor's own files
//! (`LEGO_FILES=host`) runs with the launching user's host ids instead.

use super::table::{self, SYSCALLS};
use super::{Disposition, Errno};

/// Privileged calls the runtime makes itself: its copies to and from the
/// program's memory (process_vm_readv, process_vm_writev).
const RUNTIME_USES: [u32; 2] = [310, 311];

/// The numbers the filter refuses with EPERM.
pub fn refused() -> Vec<u32> {
    SYSCALLS
        .iter()
        .filter(|s| {
            matches!(s.disposition, Disposition::Refuse(Errno::EPERM))
                && s.note == table::PRIVILEGED
                && !RUNTIME_USES.contains(&s.nr)
        })
        .map(|s| s.nr)
        .collect()
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `struct seccomp_data`: the call number, the architecture, then the
/// six arguments (8 bytes each; the low half first).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0: u32 = 16;
const DATA_ARG1: u32 = 24;

/// The processor the program must not touch: its pid and process group.
#[derive(Clone, Copy)]
pub struct Keeper {
    pub pid: u32,
    pub pgid: u32,
}

impl Keeper {
    /// The runtime's parent, the processor that started it (before the
    /// program runs).
    pub fn parent() -> Keeper {
        // Safety: getppid and getpgid take plain integers.
        let pid = unsafe { libc::getppid() };
        let pgid = unsafe { libc::getpgid(pid) };
        Keeper {
            pid: pid as u32,
            pgid: if pgid > 0 { pgid as u32 } else { pid as u32 },
        }
    }

    /// (call, argument offset, values it must not take): targets that are
    /// the processor, its group, or everyone.
    fn rules(self) -> Vec<(u32, u32, Vec<u32>)> {
        let pid = self.pid;
        let group = (self.pgid as i32).wrapping_neg() as u32;
        let everyone = u32::MAX;
        let signal = vec![pid, group, everyone];
        vec![
            (libc::SYS_kill as u32, DATA_ARG0, signal.clone()),
            (libc::SYS_rt_sigqueueinfo as u32, DATA_ARG0, signal),
            (libc::SYS_tkill as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_tgkill as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_rt_tgsigqueueinfo as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_pidfd_open as u32, DATA_ARG0, vec![pid]),
            (
                libc::SYS_setpriority as u32,
                DATA_ARG1,
                vec![pid, self.pgid],
            ),
            (libc::SYS_sched_setaffinity as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_sched_setscheduler as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_sched_setparam as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_sched_setattr as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_prlimit64 as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_ioprio_set as u32, DATA_ARG1, vec![pid]),
            (libc::SYS_process_vm_readv as u32, DATA_ARG0, vec![pid]),
            (libc::SYS_process_vm_writev as u32, DATA_ARG0, vec![pid]),
        ]
    }
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: other architectures and the x32 ABI get ENOSYS, calls at
/// the processor EPERM, the refused numbers EPERM, everything else passes.
fn program(keeper: Keeper) -> Vec<libc::sock_filter> {
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    for (nr, arg, values) in keeper.rules() {
        // Not this call: skip its block (which ends in a return, so the
        // call number stays loaded for the next comparison).
        let block = 1 + 2 * values.len() + 1;
        prog.push(jump(BPF_JEQ_K, nr, 0, block as u8));
        prog.push(stmt(BPF_LD_W_ABS, arg));
        for v in values {
            prog.push(jump(BPF_JEQ_K, v, 0, 1));
            prog.push(stmt(BPF_RET_K, eperm));
        }
        prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    }
    for nr in refused() {
        prog.push(jump(BPF_JEQ_K, nr, 0, 1));
        prog.push(stmt(BPF_RET_K, eperm));
    }
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    prog
}

/// Installs the filter on every thread of the process (new threads and
/// forked processes inherit it): last, before the program runs.
pub fn install(keeper: Keeper) -> Result<(), String> {
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
    let prog = program(keeper);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // Safety: prctl with plain integers; seccomp reads `fprog`, which
    // points to `prog`, alive for the call. No new privileges: the
    // runtime never executes a host program.
    let ret = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        crate::host::raw_syscall(
            libc::SYS_seccomp as u64,
            [
                SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_TSYNC,
                &fprog as *const libc::sock_fprog as u64,
                0,
                0,
                0,
            ],
        )
    };
    if ret != 0 {
        return Err(format!(
            "cannot install the seccomp backstop: {}",
            if ret < 0 {
                std::io::Error::from_raw_os_error(-ret as i32).to_string()
            } else {
                format!("thread {ret} could not take it")
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backstop_refuses_what_the_table_refuses_as_privileged_but_the_runtimes_own() {
        let refused = refused();
        for nr in [101, 165, 169, 175, 272, 308, 321] {
            // ptrace, mount, reboot, init_module, unshare, setns, bpf
            assert!(refused.contains(&nr), "{nr}");
        }
        for nr in RUNTIME_USES {
            assert!(!refused.contains(&nr));
        }
        // Nothing the table passes through or emulates.
        for s in SYSCALLS {
            if !matches!(s.disposition, Disposition::Refuse(_)) {
                assert!(!refused.contains(&s.nr), "{}", s.name);
            }
        }
        let keeper = Keeper { pid: 77, pgid: 70 };
        let guarded: usize = keeper.rules().iter().map(|(_, _, v)| 3 + 2 * v.len()).sum();
        assert_eq!(program(keeper).len(), 7 + guarded + 2 * refused.len());
    }
}
