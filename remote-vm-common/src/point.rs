//! Probe points: one kernel hook each, and the index of its hit counter.

/// What one eBPF program observes. The discriminant is the index of the point's
/// slot in the `HITS` per-CPU array; a point's hits are the runs of whichever
/// program covers it in the attached mode.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// Entry of `__access_remote_vm()` (or of its callers in the callers modes).
    AccessRemoteVmEntry = 0,
    /// Return of `__access_remote_vm()` (or of its callers).
    AccessRemoteVmExit = 1,
    /// Return of `lock_vma_under_rcu()`.
    LockVmaUnderRcuExit = 2,
    /// Return of `folio_walk_start()`.
    FolioWalkStartExit = 3,
    /// Entry of `get_user_pages_remote()`.
    GetUserPagesRemoteEntry = 4,
    /// A remote access asks for the target's mmap_lock: `down_{read,write}_killable`
    /// entry (or `mmap_lock_start_locking`).
    MmapLockRemoteStart = 5,
    /// ... and gets it or fails: their return (or `mmap_lock_acquire_returned`).
    MmapLockRemoteEnd = 6,
    /// Host-wide: `lock:contention_begin` (or `mmap_lock_start_locking`).
    MmapLockHostStart = 7,
    /// Host-wide: `lock:contention_end` (or `mmap_lock_acquire_returned`).
    MmapLockHostEnd = 8,
}

impl Point {
    /// Every point, in index order.
    pub const ALL: [Point; 9] = [
        Point::AccessRemoteVmEntry,
        Point::AccessRemoteVmExit,
        Point::LockVmaUnderRcuExit,
        Point::FolioWalkStartExit,
        Point::GetUserPagesRemoteEntry,
        Point::MmapLockRemoteStart,
        Point::MmapLockRemoteEnd,
        Point::MmapLockHostStart,
        Point::MmapLockHostEnd,
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
            Point::LockVmaUnderRcuExit => "lock_vma_under_rcu_exit",
            Point::FolioWalkStartExit => "folio_walk_start_exit",
            Point::GetUserPagesRemoteEntry => "get_user_pages_remote_entry",
            Point::MmapLockRemoteStart => "mmap_lock_remote_start",
            Point::MmapLockRemoteEnd => "mmap_lock_remote_end",
            Point::MmapLockHostStart => "mmap_lock_host_start",
            Point::MmapLockHostEnd => "mmap_lock_host_end",
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
