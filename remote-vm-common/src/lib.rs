//! Types shared by the eBPF programs (`remote-vm-ebpf`) and the daemon, and the
//! classifier both run.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of pointers so the same
//! bytes mean the same thing on both sides of a BPF map.
#![no_std]
#[cfg(feature = "user")]
extern crate std;

pub mod catalog;
pub mod classify;
pub mod point;
pub mod registry;
pub mod stats;

pub use point::Point;
pub use registry::Family;

/// Written by user space into the `CONTROL` array (one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Control {
    /// Thread id of the daemon's start-up probe read, kept out of the counters.
    pub selftest_tid: u32,
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
    /// `Path` of the last one (+1; 0: none).
    pub path: u32,
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

/// Which `/proc` interface a remote access came through, as far as the kernel
/// lets a probe tell: `cmdline`/`environ` from the address lying in the
/// target's argument or environment range with FOLL_ANON; everything else is
/// `Other` (for now: `mem` and `ptrace` are not told apart yet).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Other = 0,
    Cmdline = 1,
    Environ = 2,
}

impl Interface {
    pub const ALL: [Interface; 3] = [Interface::Other, Interface::Cmdline, Interface::Environ];

    pub const fn label(self) -> &'static str {
        match self {
            Interface::Other => "other",
            Interface::Cmdline => "cmdline",
            Interface::Environ => "environ",
        }
    }

    /// From the access's address and FOLL_ANON, and the target mm's ranges
    /// (`[arg_start, arg_end)`, `[env_start, env_end)`; 0s when unknown).
    #[inline(always)]
    pub fn of(addr: u64, anon: bool, arg: (u64, u64), env: (u64, u64)) -> Interface {
        if !anon {
            Interface::Other
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

/// One stall (the `STALL_EVENTS` ring buffer): a remote access that waited at
/// least the threshold for the target's mmap_lock. Pids as the kernel's init
/// namespace numbers them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StallEvent {
    /// `bpf_ktime_get_ns()` when the wait ended.
    pub end_ns: u64,
    pub wait_ns: u64,
    /// The reader's cgroup (v2) id: its directory's inode number.
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

/// "Not found in BTF" for the offset globals handed to the programs.
pub const UNKNOWN_OFFSET: u64 = u64::MAX;

#[cfg(feature = "user")]
pub mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_from_the_targets_ranges() {
        let arg = (0x1000, 0x1010);
        let env = (0x1010, 0x1100);
        assert_eq!(Interface::of(0x100f, true, arg, env), Interface::Cmdline);
        assert_eq!(Interface::of(0x1010, true, arg, env), Interface::Environ);
        assert_eq!(Interface::of(0x1100, true, arg, env), Interface::Other);
        assert_eq!(Interface::of(0x1000, false, arg, env), Interface::Other);
        // Unknown ranges (zeros) never match.
        assert_eq!(Interface::of(0, true, (0, 0), (0, 0)), Interface::Other);
        for i in Interface::ALL {
            assert_eq!(Interface::from_u32(i as u32), i);
        }
    }
}
