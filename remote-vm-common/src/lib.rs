//! Types shared by the eBPF programs (`remote-vm-ebpf`) and the daemon, and the
//! classifier both run.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of pointers so the same
//! bytes mean the same thing on both sides of a BPF map.
#![no_std]

pub mod classify;
pub mod point;
pub mod stats;

pub use point::Point;

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

/// User space only: sets this thread's capability sets.
#[cfg(feature = "user")]
pub mod caps {
    extern crate std;

    /// Sets the calling thread's effective, permitted and inheritable sets to
    /// `mask` (bit N: capability N) with `capset(2)`.
    pub fn set(mask: u64) -> std::io::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let word = |i: usize| (mask >> (32 * i)) as u32;
        let data = [0, 1].map(|i| Data {
            effective: word(i),
            permitted: word(i),
            inheritable: word(i),
        });
        let mut header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: capset with a v3 header and its two data words.
        if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data, any bit pattern valid.
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::SelfTest {}
    unsafe impl aya::Pod for super::stats::Stats {}
}
