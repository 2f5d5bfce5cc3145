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

/// `lock:contention_begin` flags (`include/trace/events/lock.h`, a stable set of
/// `#define`s since 5.19 that BTF does not carry).
pub const LCB_F_WRITE: u32 = 1 << 2;

/// "Not found in BTF" for the offset globals handed to the programs.
pub const UNKNOWN_OFFSET: u64 = u64::MAX;

#[cfg(feature = "user")]
pub mod user;
