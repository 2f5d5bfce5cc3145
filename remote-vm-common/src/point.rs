//! Probe points: one kernel hook each, and the index of its hit counter.

/// One attachment point of one eBPF program. The discriminant is the index of the
/// point's slot in the `HITS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// Entry of `__access_remote_vm()`.
    AccessRemoteVmEntry = 0,
    /// Return of `__access_remote_vm()`.
    AccessRemoteVmExit = 1,
    /// `mmap_lock:mmap_lock_start_locking`.
    MmapLockStartLocking = 2,
    /// `mmap_lock:mmap_lock_acquire_returned`.
    MmapLockAcquireReturned = 3,
    /// `mmap_lock:mmap_lock_released`.
    MmapLockReleased = 4,
}

impl Point {
    /// Every point, in index order.
    pub const ALL: [Point; 5] = [
        Point::AccessRemoteVmEntry,
        Point::AccessRemoteVmExit,
        Point::MmapLockStartLocking,
        Point::MmapLockAcquireReturned,
        Point::MmapLockReleased,
    ];

    /// Size of the `HITS` array (room to grow without changing the map layout).
    pub const CAPACITY: u32 = 32;

    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The name used in `probe` labels and `check` output.
    pub const fn name(self) -> &'static str {
        match self {
            Point::AccessRemoteVmEntry => "access_remote_vm_entry",
            Point::AccessRemoteVmExit => "access_remote_vm_exit",
            Point::MmapLockStartLocking => "mmap_lock_start_locking",
            Point::MmapLockAcquireReturned => "mmap_lock_acquire_returned",
            Point::MmapLockReleased => "mmap_lock_released",
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn indexes_are_dense_and_fit() {
        for (i, p) in Point::ALL.iter().enumerate() {
            assert_eq!(p.index(), i as u32);
        }
        assert!((Point::ALL.len() as u32) <= Point::CAPACITY);
    }

    #[test]
    fn names_are_unique() {
        let mut names: std::vec::Vec<_> = Point::ALL.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Point::ALL.len());
    }
}
