//! Types shared by the eBPF programs (`remote-vm-ebpf`) and the daemon, and the
//! classifier both run.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of pointers so the same
//! bytes mean the same thing on both sides of a BPF map.
#![no_std]
// The BPF target has no atomic read-modify-write in `core` (no compare-and-swap):
// `stats::bump` writes its one instruction in assembly there.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#[cfg(feature = "user")]
extern crate std;

pub mod catalog;
pub mod classify;
pub mod holder;
pub mod point;
pub mod registry;
pub mod series;
pub mod stats;

pub use point::Point;
pub use registry::Family;

/// Written by user space into the `CONTROL` array (one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Control {
    /// Thread id of the daemon's start-up probe read, kept out of the counters,
    /// as the daemon's own PID namespace numbers it (0: no probe read now)...
    pub selftest_tid: u32,
    /// `classify::ReadPath`: how a read's lockless loop is known.
    pub read_path: u32,
    /// ... that namespace: `st_dev` and `st_ino` of `/proc/self/ns/pid`.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// 1: the remote family attached in a mode whose waits come from the
    /// lock's contention events (`classify::F_WAITS_CONTENTION`).
    pub remote_waits_from_contention: u32,
    pub _pad: u32,
}

/// What the daemon's start-up probe read saw (the `SELFTEST` array, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfTest {
    /// Number of finished probe calls.
    pub calls: u32,
    /// Those in which the lockless loop ran (`lock_vma_under_rcu()` was called).
    pub lockless: u32,
    /// Successful lockless walks inside them.
    pub walks: u32,
    /// VMAs `lock_vma_under_rcu()` locked inside them (where it is probed).
    pub vmas: u32,
    /// `Path` of the last one (+1; 0: none).
    pub path: u32,
    /// The probe-read thread's id as the kernel's initial PID namespace numbers
    /// it: another number than the daemon's own `gettid()` means the daemon
    /// runs in a PID namespace of its own.
    pub host_tid: u32,
}

/// A host-wide mmap_lock wait in progress on one thread (the `WAITS` task storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HostWait {
    /// The `rw_semaphore *` waited on (0: no wait in progress).
    pub lock: u64,
    pub start_ns: u64,
    pub write: u32,
    pub _pad: u32,
}

/// Which interface a remote access came through, as far as the kernel lets a
/// probe tell without `/proc/kallsyms`: `cmdline`/`environ` from the address
/// lying in the target's argument or environment range with FOLL_ANON (what
/// `/proc/PID/cmdline` and `environ` pass); without FOLL_ANON, `ptrace` or
/// `mem` (`/proc/PID/mem`) by the reader's system call; `Other` for the rest
/// (e.g. io_uring workers, other kernel callers).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Other = 0,
    Cmdline = 1,
    Environ = 2,
    Mem = 3,
    Ptrace = 4,
}

/// How many system calls read or write `/proc/PID/mem` (`SYSCALLS_MEM`):
/// read, write, pread64, pwrite64, readv, writev, preadv, pwritev, preadv2,
/// pwritev2.
pub const MEM_SYSCALLS: usize = 10;

/// The system call numbers that tell `mem` from `ptrace`, handed to the
/// programs as globals by the daemon (its architecture's numbers; `u32::MAX`:
/// unknown, matches nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscalls {
    pub ptrace: u32,
    pub mem: [u32; MEM_SYSCALLS],
}

impl Interface {
    pub const ALL: [Interface; 5] = [Interface::Other, Interface::Cmdline, Interface::Environ, Interface::Mem, Interface::Ptrace];

    pub const fn label(self) -> &'static str {
        match self {
            Interface::Other => "other",
            Interface::Cmdline => "cmdline",
            Interface::Environ => "environ",
            Interface::Mem => "mem",
            Interface::Ptrace => "ptrace",
        }
    }

    /// From the access's address and FOLL_ANON (`None`: the flag's value is
    /// not known, as on 6.1 where it is a `#define`), the target mm's ranges
    /// (`[arg_start, arg_end)`, `[env_start, env_end)`; 0s when unknown) and
    /// the reader's system call number `nr`.
    #[inline(always)]
    pub fn of(addr: u64, anon: Option<bool>, arg: (u64, u64), env: (u64, u64), nr: u32, syscalls: &Syscalls) -> Interface {
        let Some(anon) = anon else {
            // A cmdline read is a read(2) too: without the flag, nothing is told apart.
            return Interface::Other;
        };
        if !anon {
            if nr == syscalls.ptrace {
                Interface::Ptrace
            } else if syscalls.mem.contains(&nr) {
                Interface::Mem
            } else {
                Interface::Other
            }
        } else if arg.0 < arg.1 && addr >= arg.0 && addr < arg.1 {
            Interface::Cmdline
        } else if env.0 < env.1 && addr >= env.0 && addr < env.1 {
            Interface::Environ
        } else {
            Interface::Other
        }
    }

    pub fn from_u32(v: u32) -> Interface {
        Interface::ALL.into_iter().find(|i| *i as u32 == v).unwrap_or(Interface::Other)
    }
}

/// How often the daemon drains the `STALL_EVENTS` ring buffer (ms): stall
/// events are written without a wakeup (`BPF_RB_NO_WAKEUP`), so a stall
/// reaches `/stalls` and the log at most this long after its wait ended. A
/// wakeup would be an `irq_work` — on PREEMPT_RT a SCHED_FIFO thread that
/// preempts the reader inside the program, and the kernel then skips (counts
/// as missed) the wait ends of the other readers woken on that CPU.
pub const STALL_POLL_MS: u64 = 250;

/// One stall (the `STALL_EVENTS` ring buffer): a remote access that waited at
/// least the threshold for the target's mmap_lock; or, from the task
/// iterator, a wait still in progress (`end_ns` is then when it was seen,
/// `wait_ns` its age so far). Pids as the kernel's init namespace numbers them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StallEvent {
    /// `bpf_ktime_get_ns()` when the wait ended.
    pub end_ns: u64,
    pub wait_ns: u64,
    /// The reader's cgroup (v2) id: its directory's inode number (0: unknown).
    pub cgroup_id: u64,
    pub reader_tgid: u32,
    pub reader_tid: u32,
    /// 0 when unknown (no `mm_struct.owner` in BTF, or the target is exiting).
    pub target_tgid: u32,
    /// 1: the wait was for the write lock (`expand_stack`).
    pub lock_write: u32,
    /// 1: the remote access writes (FOLL_WRITE).
    pub access_write: u32,
    /// `Interface`.
    pub interface: u32,
    /// 1: the waiter was killed before it got the lock.
    pub failed: u32,
    pub _pad: u32,
    pub reader_comm: [u8; 16],
    pub target_comm: [u8; 16],
    /// Who held the lock when the wait began.
    pub holder: classify::HolderSnap,
}

/// `lock:contention_begin` flags (`include/trace/events/lock.h`, a stable set of
/// `#define`s since 5.19 that BTF does not carry).
pub const LCB_F_WRITE: u32 = 1 << 2;
/// `LCB_F_READ`: the waiter wants a lock for reading (an rwsem's readers).
pub const LCB_F_READ: u32 = 1 << 1;

/// `[web] max_connections` when the config does not set it.
pub const MAX_CONNECTIONS_DEFAULT: usize = 64;

/// The endpoint's socket budget beyond `[web] max_connections`: evicted
/// sockets on their way out and each acceptor's next one. With
/// `RENDER_FDS` (a render's task iterator and `/proc/self` reads), what the
/// daemon's descriptors stay within over those it holds once serving.
pub const WEB_FD_MARGIN: usize = 8;
pub const RENDER_FDS: usize = 2;

/// At most this many waits in progress are listed (`/stalls`' `in_progress`,
/// the oldest); all are counted.
pub const WAITS_LISTED_MAX: usize = 256;

/// The most stalls `/stalls` keeps (`[stalls] keep`): one answer stays under
/// about 1 MiB (a stall is some 600 bytes of JSON, and `in_progress` lists up
/// to `WAITS_LISTED_MAX` more).
pub const STALLS_KEEP_MAX: usize = 1024;

/// "Not found in BTF" for the offset globals handed to the programs.
pub const UNKNOWN_OFFSET: u64 = u64::MAX;

#[cfg(feature = "user")]
pub mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_from_the_targets_ranges_and_the_syscall() {
        let arg = (0x1000, 0x1010);
        let env = (0x1010, 0x1100);
        let sys = Syscalls { ptrace: 101, mem: [0, 1, 17, 18, 19, 20, 295, 296, 327, 328] };
        let read = 0;
        assert_eq!(Interface::of(0x100f, Some(true), arg, env, read, &sys), Interface::Cmdline);
        assert_eq!(Interface::of(0x1010, Some(true), arg, env, read, &sys), Interface::Environ);
        assert_eq!(Interface::of(0x1100, Some(true), arg, env, read, &sys), Interface::Other);
        // Without FOLL_ANON the address does not matter, the syscall does.
        assert_eq!(Interface::of(0x1000, Some(false), arg, env, read, &sys), Interface::Mem);
        assert_eq!(Interface::of(0x1000, Some(false), arg, env, 327, &sys), Interface::Mem);
        assert_eq!(Interface::of(0x1000, Some(false), arg, env, 101, &sys), Interface::Ptrace);
        assert_eq!(Interface::of(0x1000, Some(false), arg, env, 59, &sys), Interface::Other);
        // FOLL_ANON is never ptrace or mem, whatever the syscall.
        assert_eq!(Interface::of(0x2000, Some(true), arg, env, 101, &sys), Interface::Other);
        // Unknown ranges (zeros) and numbers (u32::MAX) never match.
        assert_eq!(Interface::of(0, Some(true), (0, 0), (0, 0), read, &sys), Interface::Other);
        // FOLL_ANON unknown: a cmdline read cannot be told from a mem read.
        assert_eq!(Interface::of(0x1000, None, arg, env, read, &sys), Interface::Other);
        let unknown = Syscalls { ptrace: u32::MAX, mem: [u32::MAX; MEM_SYSCALLS] };
        assert_eq!(Interface::of(0x1000, Some(false), arg, env, read, &unknown), Interface::Other);
        for i in Interface::ALL {
            assert_eq!(Interface::from_u32(i as u32), i);
        }
    }
}
