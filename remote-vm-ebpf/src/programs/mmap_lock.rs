//! The `mmap_lock:*` tracepoints as tp_btf programs.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use remote_vm_common::Point;

use super::maps::hit;

#[btf_tracepoint(function = "mmap_lock_start_locking")]
pub fn mmap_lock_start_locking(_ctx: BtfTracePointContext) -> i32 {
    hit(Point::MmapLockStartLocking);
    0
}

#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_returned(_ctx: BtfTracePointContext) -> i32 {
    hit(Point::MmapLockAcquireReturned);
    0
}

#[btf_tracepoint(function = "mmap_lock_released")]
pub fn mmap_lock_released(_ctx: BtfTracePointContext) -> i32 {
    hit(Point::MmapLockReleased);
    0
}
