//! The `mmap_lock:*` tracepoints: every mmap_lock acquisition and release on the
//! host. They tax every mmap_lock user (and on 6.12 make the kernel format a memcg
//! path per event), so later families prefer narrower probes.
use remote_vm_common::Point;

use super::{FamilySpec, Hook, ModeSpec, ProgramSpec};

pub static FAMILY: FamilySpec = FamilySpec {
    name: "mmap_lock_tracepoints",
    modes: &[ModeSpec {
        name: "tp_btf",
        exact: true,
        programs: &[
            ProgramSpec {
                program: "mmap_lock_start_locking",
                hook: Hook::TpBtf("mmap_lock_start_locking"),
                point: Point::MmapLockStartLocking,
            },
            ProgramSpec {
                program: "mmap_lock_acquire_returned",
                hook: Hook::TpBtf("mmap_lock_acquire_returned"),
                point: Point::MmapLockAcquireReturned,
            },
            ProgramSpec {
                program: "mmap_lock_released",
                hook: Hook::TpBtf("mmap_lock_released"),
                point: Point::MmapLockReleased,
            },
        ],
    }],
};
