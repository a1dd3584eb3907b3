#!/usr/bin/env python3
"""Writes crates/runtime/src/syscall/table.rs: every x86-64 syscall number
(from the system's <asm/unistd_64.h>, plus the numbers newer kernels added)
with Lego's disposition and note for it. Edit the dispositions here, run
`python3 crates/runtime/tools/gen_table.py` from the workspace root, then
`LEGO_UPDATE_DOCS=1 cargo test -p lego-runtime syscall_doc` to refresh
docs/syscalls.md."""
import os
import re
names = {}
for line in open('/usr/include/x86_64-linux-gnu/asm/unistd_64.h'):
    m = re.match(r'#define __NR_(\w+) (\d+)', line)
    if m: names[int(m.group(2))] = m.group(1)
extra = {451:'cachestat',452:'fchmodat2',453:'map_shadow_stack',454:'futex_wake',455:'futex_wait',456:'futex_requeue',457:'statmount',458:'listmount',459:'lsm_get_self_attr',460:'lsm_set_self_attr',461:'lsm_list_modules',462:'mseal',463:'setxattrat',464:'getxattrat',465:'listxattrat',466:'removexattrat',467:'open_tree_attr',468:'file_getattr',469:'file_setattr'}
names.update(extra)

E = {}  # name -> (handler, note)
def emu(h, note, *ns):
    for n in ns: E[n] = ('Emulate(%s)' % h, note)
def ref(errno, note, *ns):
    for n in ns: E[n] = ('Refuse(libc::%s)' % errno, note)
def pas(note, *ns):
    for n in ns: E[n] = ('Pass', note)

emu('mem::mmap', 'via the memory manager; private file mappings (and read-only shared ones) of storage files read their pages from the storage manager on first touch, copy on write; private mappings of host files are copied at the call; shared mappings of host objects (POSIX shared memory, memfd, host files) and shared anonymous memory are the host kernel\'s own mappings inside the arena (the memory manager reserves the range), shared across fork; writable shared mappings of storage files refused with ENODEV', 'mmap')
emu('mem::munmap', 'via the memory manager; cached pages dropped', 'munmap')
emu('mem::mprotect', 'via the memory manager; host protections mirror it', 'mprotect')
emu('mem::pkey_mprotect', 'as mprotect for pkey -1; protection keys refused with EINVAL', 'pkey_mprotect')
emu('mem::mremap', 'via the memory manager; cached pages move with the mapping; shared host mappings refused with EINVAL', 'mremap')
emu('mem::brk', 'via the memory manager', 'brk')
emu('mem::madvise', 'DONTNEED and FREE drop pages on both sides; WIPEONFORK, KEEPONFORK, DONTFORK and DOFORK are honoured by fork; on shared host mappings, the host\'s; other advice is accepted as a hint', 'madvise')
emu('mem::accept_noop', 'accepted; the ExCache decides residency', 'mlock', 'munlock', 'mlockall', 'munlockall', 'mlock2')
emu('mem::accept_noop', 'accepted; anonymous memory has no file to sync', 'msync')
emu('proc::arch_prctl', 'FS base virtualised; ARCH_SET_GS refused (GS belongs to the runtime); others passed through', 'arch_prctl')
emu('proc::exit_group', 'ends the process; ExCache counters are reported', 'exit_group')
emu('thread::exit', 'ends the calling thread and its runtime thread (its CLONE_CHILD_CLEARTID address is cleared and woken; a new thread gets a new host thread and tid); the last thread ends the process as exit_group', 'exit')
emu('proc::prctl', 'passed through, except syscall user dispatch, seccomp and PR_SET_MM (EINVAL)', 'prctl')
emu('proc::prlimit64', 'passed through; new RLIMIT_AS and RLIMIT_DATA values accepted but not applied (the arena is reserved up front)', 'prlimit64')
emu('proc::setrlimit', 'as prlimit64', 'setrlimit')
emu('signal::rt_sigaction', 'handlers run on the application\'s stack or alternate stack with Linux\'s frame; SA_SIGINFO, SA_ONSTACK, SA_RESTART, SA_NODEFER, SA_RESETHAND honoured; a SIGSYS disposition is recorded, never installed (SIGSYS is the runtime\'s); signal 64 (SIGRTMAX) is the runtime\'s and refused with EINVAL, as glibc keeps 32 and 33', 'rt_sigaction')
emu('signal::rt_sigprocmask', 'the application\'s mask is kept by the runtime and applied whenever application code runs or one of its calls blocks', 'rt_sigprocmask')
emu('signal::sigaltstack', 'the application\'s alternate stack, used for its SA_ONSTACK handlers (the runtime keeps its own for itself)', 'sigaltstack')
emu('signal::rt_sigreturn', 'restores the registers, FPU state and mask saved in the frame the runtime built', 'rt_sigreturn')
emu('signal::rt_sigpending', 'pending signals among those the application blocks', 'rt_sigpending')
emu('signal::rt_sigsuspend', 'waits with the temporary mask; the waking signal is delivered before the call returns EINTR', 'rt_sigsuspend')
emu('fs::readlink', '/proc/self/exe names the program; other paths ' + 'from the storage manager when the program has one, else the host', 'readlink')
emu('fs::readlinkat', 'as readlink', 'readlinkat')
ref('ENOSYS', 'glibc falls back to running without restartable sequences', 'rseq')
emu('thread::clone', 'threads (CLONE_THREAD with CLONE_VM and CLONE_SIGHAND; SETTLS, PARENT_SETTID, CHILD_SETTID, CHILD_CLEARTID): each on a runtime thread of its own that traps its syscalls; without CLONE_THREAD a new process as fork (CLONE_VM only with CLONE_VFORK, served as vfork; sharing flags refused with EINVAL; the exit signal is always SIGCHLD)', 'clone')
emu('thread::set_tid_address', 'recorded (and passed through): an ending thread\'s word is cleared and woken before its runtime thread is reused', 'set_tid_address')
emu('thread::clone3', 'as clone, from clone_args (the stack is stack + stack_size); CLONE_PIDFD, set_tid and CLONE_INTO_CGROUP answered ENOSYS, on which callers fall back to clone', 'clone3')
emu('fork::fork', 'a new process: copy-on-write copy of the address space made by the memory manager, a new runtime forked from the parent\'s on the same processor with every descriptor, the file table and signal dispositions; storage-file offsets are shared with the parent, as Linux shares an open file description\'s', 'fork')
emu('fork::vfork', 'as fork, and the parent waits until the child execs or ends; the child writes its own copy, not the parent\'s memory', 'vfork')
emu('exec::execve', 'replaces the program: address space rebuilt by the memory manager, close-on-exec descriptors closed, handled signals reset; every other thread ends first (the runtime\'s own signal 64, SIGRTMAX, reaches it wherever it is)', 'execve')
emu('exec::execveat', 'as execve, for AT_FDCWD or absolute paths without flags; other forms ENOSYS', 'execveat')
ref('ENOSYS', 'System V shared memory would map host memory outside the arena', 'shmget', 'shmat', 'shmdt', 'shmctl')
ref('ENOSYS', 'maps kernel memory outside the arena', 'io_setup', 'io_destroy', 'io_getevents', 'io_submit', 'io_cancel', 'io_pgetevents', 'io_uring_setup', 'io_uring_enter', 'io_uring_register', 'memfd_secret', 'map_shadow_stack', 'remap_file_pages')
ref('ENOSYS', 'the runtime owns userfaultfd for the ExCache', 'userfaultfd')
ref('ENOSYS', 'would filter the runtime\'s own syscalls', 'seccomp')
ref('ENOSYS', 'NUMA placement is the monitor\'s job, not the host\'s', 'mbind', 'set_mempolicy', 'get_mempolicy', 'migrate_pages', 'move_pages', 'set_mempolicy_home_node')
ref('ENOSYS', 'not supported on x86-64 user space', 'modify_ldt', 'set_thread_area', 'get_thread_area', 'uselib', 'create_module', 'get_kernel_syms', 'query_module', 'nfsservctl', 'getpmsg', 'putpmsg', 'afs_syscall', 'tuxcall', 'security', 'vserver', 'epoll_ctl_old', 'epoll_wait_old', '_sysctl')
ref('ENOSYS', 'memory sealing is not supported yet', 'mseal')
ref('EPERM', 'privileged: not available to a Lego process', 'mount', 'umount2', 'pivot_root', 'chroot', 'swapon', 'swapoff', 'reboot', 'sethostname', 'setdomainname', 'iopl', 'ioperm', 'init_module', 'finit_module', 'delete_module', 'kexec_load', 'kexec_file_load', 'acct', 'quotactl', 'quotactl_fd', 'settimeofday', 'clock_settime', 'clock_adjtime', 'adjtimex', 'vhangup', 'syslog', 'lookup_dcookie', 'bpf', 'perf_event_open', 'fanotify_init', 'fanotify_mark', 'open_by_handle_at', 'name_to_handle_at', 'setns', 'unshare', 'mount_setattr', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'move_mount', 'open_tree', 'open_tree_attr', 'ptrace', 'process_vm_readv', 'process_vm_writev', 'kcmp', 'process_madvise', 'process_mrelease', 'pidfd_getfd', 'keyctl', 'add_key', 'request_key', 'landlock_create_ruleset', 'landlock_add_rule', 'landlock_restrict_self', 'statmount', 'listmount', 'lsm_set_self_attr')

HOSTFILE = 'passed to the host kernel as is (not routed to the storage manager)'
pas(HOSTFILE, 'read','write','open','stat','fstat','lstat','lseek','ioctl','pread64','pwrite64','readv','writev','access','dup','fcntl','flock','fsync','fdatasync','truncate','ftruncate','getdents','getdents64','getcwd','chdir','fchdir','rename','mkdir','rmdir','creat','link','unlink','symlink','chmod','fchmod','chown','fchown','lchown','umask','mknod','statfs','fstatfs','sync','syncfs','readahead','setxattr','lsetxattr','fsetxattr','getxattr','lgetxattr','fgetxattr','listxattr','llistxattr','flistxattr','removexattr','lremovexattr','fremovexattr','fadvise64','openat','mkdirat','mknodat','fchownat','futimesat','newfstatat','unlinkat','renameat','linkat','symlinkat','fchmodat','faccessat','faccessat2','fchmodat2','utime','utimes','utimensat','fallocate','sync_file_range','preadv','pwritev','preadv2','pwritev2','renameat2','copy_file_range','statx','openat2','sendfile','splice','tee','vmsplice','cachestat','ustat','sysfs','setxattrat','getxattrat','listxattrat','removexattrat','file_getattr','file_setattr','inotify_init','inotify_init1','inotify_add_watch','inotify_rm_watch')
HOSTOBJ = 'host kernel object'
pas(HOSTOBJ, 'pipe','pipe2','socket','connect','accept','accept4','sendto','recvfrom','sendmsg','recvmsg','sendmmsg','recvmmsg','shutdown','bind','listen','getsockname','getpeername','socketpair','setsockopt','getsockopt','poll','ppoll','select','pselect6','epoll_create','epoll_create1','epoll_ctl','epoll_wait','epoll_pwait','epoll_pwait2','eventfd','eventfd2','timerfd_create','timerfd_settime','timerfd_gettime','signalfd','signalfd4','memfd_create','semget','semop','semctl','semtimedop','msgget','msgsnd','msgrcv','msgctl','mq_open','mq_unlink','mq_timedsend','mq_timedreceive','mq_notify','mq_getsetattr','pidfd_open','pidfd_send_signal','futex_waitv')
pas('host clock and timers', 'nanosleep','clock_nanosleep','clock_gettime','clock_getres','gettimeofday','time','getitimer','setitimer','alarm','timer_create','timer_settime','timer_gettime','timer_getoverrun','timer_delete','pause','times')
pas('host ids: a Lego process is its runtime\'s host process, whose parent, group and session are the host kernel\'s (its Lego id is what lego ps shows)', 'getpid','getppid','gettid','getuid','geteuid','getgid','getegid','getgroups','getresuid','getresgid','getpgid','getpgrp','getsid','setpgid','setsid','setuid','setgid','setreuid','setregid','setresuid','setresgid','setgroups','setfsuid','setfsgid','capget','capset')
pas('host scheduler', 'sched_yield','sched_setparam','sched_getparam','sched_setscheduler','sched_getscheduler','sched_get_priority_max','sched_get_priority_min','sched_rr_get_interval','sched_setaffinity','sched_getaffinity','sched_setattr','sched_getattr','getpriority','setpriority','getcpu','ioprio_set','ioprio_get')
emu('proc::sysinfo', 'RAM is the home memory manager\'s pool (what was unpromised at launch is free); uptime, load and process count are the host\'s', 'sysinfo')
pas('host kernel', 'uname','getrusage','getrandom','getrlimit','personality','membarrier','restart_syscall','kill','tkill','tgkill','rt_sigtimedwait','rt_sigqueueinfo','rt_tgsigqueueinfo','set_robust_list','get_robust_list','lsm_get_self_attr','lsm_list_modules')
pas('host process relations: a Lego child is its parent runtime\'s host child, so statuses, rusage and SIGCHLD are the kernel\'s', 'wait4', 'waitid')
pas('on arena addresses (host futexes: every operation, PI and requeue included)', 'futex','futex_wake','futex_wait','futex_requeue')
pas('reports which pages are resident in the ExCache', 'mincore')


FILE = 'from the storage manager (the host\'s with LEGO_FILES=host or a cluster without one); /dev, /proc, /sys and host objects (pipes, sockets, terminals) are always the host\'s'
def emus(module, note, *names):
    for n in names: E[n] = ('Emulate(%s::%s)' % (module, n), note)
emus('file', FILE, 'open','creat','openat','openat2','read','write','pread64','pwrite64','readv','writev','lseek','getdents64','fallocate','ftruncate','fchmod','fchown','fcntl','ioctl')
emus('file', FILE + '; the runtime\'s own descriptors are refused with EBADF', 'close','dup','dup2','dup3','close_range')
E['preadv']=('Emulate(file::preadv)', FILE); E['preadv2']=('Emulate(file::preadv)', FILE + '; flags ignored')
E['pwritev']=('Emulate(file::pwritev)', FILE); E['pwritev2']=('Emulate(file::pwritev)', FILE + '; flags ignored')
E['fsync']=('Emulate(file::fsync)', FILE); E['fdatasync']=('Emulate(file::fsync)', FILE)
emus('path', 'storage paths: EPERM (special files cannot live on the storage manager); /dev paths passed to the host', 'mknod','mknodat')
for n in ['fadvise64','readahead','sync_file_range']: E[n]=('Emulate(file::noop_on_storage)', 'a hint: accepted on storage files; ' + FILE)
for n in ['copy_file_range','sendfile','splice']: E[n]=('Emulate(file::copy_unsupported)', 'storage files: EXDEV/EINVAL (callers fall back to read and write); host objects passed through')
emus('path', FILE, 'fstat','stat','lstat','newfstatat','statx','statfs','fstatfs','access','faccessat','faccessat2','mkdir','mkdirat','unlink','rmdir','unlinkat','symlink','symlinkat','rename','renameat','renameat2','link','linkat','chmod','fchmodat','fchmodat2','chown','lchown','fchownat','truncate','utimensat','getcwd','chdir','fchdir')
for n in ['utime','utimes','futimesat']: E[n]=('Emulate(path::utimes)', FILE)
for n in ['setxattr','lsetxattr','fsetxattr','getxattr','lgetxattr','fgetxattr','listxattr','llistxattr','flistxattr','removexattr','lremovexattr','fremovexattr']: E[n]=('Emulate(path::xattr)', 'storage files: ENOTSUP (no extended attributes); host files passed through')

out = []
out.append('//! The syscall table: every x86-64 syscall number, what Lego does with it,\n//! and why. `docs/syscalls.md` is generated from it (a test keeps the two in\n//! sync). Numbers missing here are unknown to Lego and fail with ENOSYS.\n//!\n//! Written by `crates/runtime/tools/gen_table.py`: change the dispositions\n//! there and run it again.\n')
out.append('use super::Disposition::{Emulate, Pass, Refuse};\nuse super::{exec, file, fork, fs, mem, path, proc, signal, thread, Syscall};\n')
out.append('pub static SYSCALLS: &[Syscall] = &[')
unknown_default = []
for nr in sorted(names):
    n = names[nr]
    d, note = E.get(n, ('Refuse(libc::ENOSYS)', 'not supported yet'))
    if n not in E: unknown_default.append(n)
    out.append('    Syscall { nr: %d, name: "%s", disposition: %s, note: "%s" },' % (nr, n, d, note.replace('"','\\"')))
out.append('];')
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src', 'syscall', 'table.rs'),'w').write('\n'.join(out)+'\n')
print("defaulted:", unknown_default)
