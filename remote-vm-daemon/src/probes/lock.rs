//! mmap_lock acquisitions: the remote access's own (on the target's lock) and
//! host-wide waits.
use remote_vm_common::Point;

use super::{FamilySpec, Hook, ModeSpec, Need, ProgramSpec, When};

const fn p(program: &'static str, hook: Hook, point: Point) -> ProgramSpec {
    ProgramSpec { program, hook, point, when: When::Always }
}

/// An mmap_lock tracepoint program for the kernels whose `write` argument is at
/// position `write_arg`.
const fn tp(program: &'static str, tracepoint: &'static str, write_arg: u32, point: Point) -> ProgramSpec {
    ProgramSpec {
        program,
        hook: Hook::TpBtf(tracepoint),
        point,
        when: When::MmapLockWriteArg(write_arg),
    }
}

/// The remote read's own acquisitions: `mmap_read_lock_killable()` is inlined
/// into `__access_remote_vm()` and calls `down_read_killable()`; `expand_stack()`
/// re-takes the lock with `down_write_killable()`. Filtered in the programs to
/// threads inside a remote access and to the target mm's `mmap_lock`.
pub static REMOTE: FamilySpec = FamilySpec {
    name: "mmap_lock_remote",
    points: &[Point::MmapLockRemoteStart, Point::MmapLockRemoteEnd],
    // By default only the read lock: `down_write_killable` is taken by every
    // mmap()/munmap() on the host, and a remote read only asks for the write lock
    // in `expand_stack` (reads at unmapped addresses). Its waits are opt-in
    // (`fentry_rw`), and without them the `mode="write"` series are absent.
    modes: &[
        ModeSpec {
            name: "fentry",
            exact: true,
            programs: &[
                p("down_read_fentry", Hook::FEntry("down_read_killable"), Point::MmapLockRemoteStart),
                p("down_read_fexit", Hook::FExit("down_read_killable"), Point::MmapLockRemoteEnd),
            ],
            needs: &[Need::MmMmapLock],
        },
        ModeSpec {
            name: "kprobe",
            exact: false,
            programs: &[
                p("down_read_kprobe", Hook::KProbe("down_read_killable"), Point::MmapLockRemoteStart),
                p("down_read_kretprobe", Hook::KRetProbe("down_read_killable"), Point::MmapLockRemoteEnd),
            ],
            needs: &[Need::MmMmapLock],
        },
        ModeSpec {
            name: "mmap_lock_tp",
            exact: true,
            programs: &[
                tp("remote_start_locking_tp_w1", "mmap_lock_start_locking", 1, Point::MmapLockRemoteStart),
                tp("remote_start_locking_tp_w2", "mmap_lock_start_locking", 2, Point::MmapLockRemoteStart),
                tp("remote_acquire_returned_tp_w1", "mmap_lock_acquire_returned", 1, Point::MmapLockRemoteEnd),
                tp("remote_acquire_returned_tp_w2", "mmap_lock_acquire_returned", 2, Point::MmapLockRemoteEnd),
            ],
            needs: &[Need::MmapLockTracepointArgs],
        },
    ],
    opt_in: &[
        ModeSpec {
            name: "fentry_rw",
            exact: true,
            programs: &[
                p("down_read_fentry_rw", Hook::FEntry("down_read_killable"), Point::MmapLockRemoteStart),
                p("down_read_fexit_rw", Hook::FExit("down_read_killable"), Point::MmapLockRemoteEnd),
                p("down_write_fentry", Hook::FEntry("down_write_killable"), Point::MmapLockRemoteStart),
                p("down_write_fexit", Hook::FExit("down_write_killable"), Point::MmapLockRemoteEnd),
            ],
            needs: &[Need::MmMmapLock],
        },
        ModeSpec {
            name: "kprobe_rw",
            exact: false,
            programs: &[
                p("down_read_kprobe_rw", Hook::KProbe("down_read_killable"), Point::MmapLockRemoteStart),
                p("down_read_kretprobe_rw", Hook::KRetProbe("down_read_killable"), Point::MmapLockRemoteEnd),
                p("down_write_kprobe", Hook::KProbe("down_write_killable"), Point::MmapLockRemoteStart),
                p("down_write_kretprobe", Hook::KRetProbe("down_write_killable"), Point::MmapLockRemoteEnd),
            ],
            needs: &[Need::MmMmapLock],
        },
    ],
    requires: Some("access_remote_vm"),
};

/// Whether `mode` of the remote family sees write-lock acquisitions.
pub fn remote_mode_sees_writes(mode: &str) -> bool {
    matches!(mode, "fentry_rw" | "kprobe_rw" | "mmap_lock_tp")
}

/// Host-wide waits on a thread's own mm's mmap_lock. `lock:contention_begin/end`
/// fire only when a lock is contended (measured 1.00x on an mmap loop); the
/// mmap_lock tracepoints see every acquisition but tax every mmap_lock user
/// (>= 1.06x, and on 6.12 a memcg path formatted per event), so they are opt-in.
pub static HOST: FamilySpec = FamilySpec {
    name: "mmap_lock_host",
    points: &[Point::MmapLockHostStart, Point::MmapLockHostEnd],
    modes: &[ModeSpec {
        name: "contention_tp",
        exact: true,
        programs: &[
            p("host_contention_begin_tp", Hook::TpBtf("contention_begin"), Point::MmapLockHostStart),
            p("host_contention_end_tp", Hook::TpBtf("contention_end"), Point::MmapLockHostEnd),
        ],
        needs: &[Need::MmMmapLock, Need::TaskMm],
    }],
    opt_in: &[ModeSpec {
        name: "mmap_lock_tp",
        exact: true,
        programs: &[
            tp("host_start_locking_tp_w1", "mmap_lock_start_locking", 1, Point::MmapLockHostStart),
            tp("host_start_locking_tp_w2", "mmap_lock_start_locking", 2, Point::MmapLockHostStart),
            tp("host_acquire_returned_tp_w1", "mmap_lock_acquire_returned", 1, Point::MmapLockHostEnd),
            tp("host_acquire_returned_tp_w2", "mmap_lock_acquire_returned", 2, Point::MmapLockHostEnd),
        ],
        needs: &[Need::MmMmapLock, Need::TaskMm, Need::MmapLockTracepointArgs],
    }],
    requires: None,
};
