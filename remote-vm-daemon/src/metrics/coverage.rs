//! Which of the catalog's coverages the attached probes and the kernel's BTF
//! make exact on this host. A family whose coverage is unmet is absent, never
//! zero: nothing reads "0 % fast path" where the daemon cannot see. Where the
//! kernel has no lockless path at all, the families that depend on it are
//! present and exact (there is nothing to miss).
use remote_vm_common::{Family, catalog::Coverage};

use crate::{bpf::Attached, kernel::Layout};

/// What is covered here; decided once after attaching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sight {
    /// Bit `c as u32` set: coverage `c` is met.
    met: u32,
    /// Host-wide acquisition failures are killed waiters (not failed trylocks).
    pub host_failures: bool,
}

impl Sight {
    pub fn of(layout: &Layout, attached: &Attached) -> Sight {
        let lockless = layout.has_lockless_path();
        let on = |f: Family| attached.attached(f);
        let mode = |f: Family| attached.verdict(f).and_then(|v| v.mode);
        let access = on(Family::AccessRemoteVm);
        let remote = on(Family::MmapLockRemote);
        let walk = on(Family::FolioWalkStart);
        let vma = on(Family::LockVmaUnderRcu);
        // Where the kernel has the lockless path, a read's path needs evidence of
        // the loop: its VMA step probed, or its walks probed and the start-up
        // probe read's verdict (the loop runs for every read, or never).
        let loop_seen = vma || (walk && attached.patched != crate::bpf::Patched::Unknown);
        let reads = access && remote && (!lockless || loop_seen);
        let met = |c: Coverage| match c {
            Coverage::Always => true,
            Coverage::Reads => reads,
            // Without the VMA step, a VMA-level stop is at the end of the last
            // walked entry: its level must be known.
            Coverage::Fallbacks => {
                reads && (!lockless || (walk && (vma || (layout.fw_level.is_ok() && layout.fw_levels.is_ok()))))
            }
            Coverage::VmaSteps => reads && (!lockless || vma),
            Coverage::RemoteLock => access && remote,
            Coverage::RemoteWrites => access && mode(Family::MmapLockRemote).is_some_and(|m| m.sees_write_waits),
            Coverage::HostLock => on(Family::MmapLockHost),
            Coverage::LockVma => access && on(Family::LockVmaUnderRcu),
            Coverage::Gup => reads && on(Family::GetUserPagesRemote),
            Coverage::WalkLevels => reads && walk && layout.fw_level.is_ok() && layout.fw_levels.is_ok(),
            Coverage::FollAnon => reads && walk && layout.vma_vm_ops.is_ok() && layout.foll_anon.is_ok(),
            Coverage::WaitsNow => access && remote && attached.waits.is_ok(),
        };
        Sight {
            met: [Coverage::Always]
                .iter()
                .chain(&Coverage::REPORTED)
                .filter(|c| met(**c))
                .fold(0, |bits, c| bits | 1 << *c as u32),
            host_failures: mode(Family::MmapLockHost).is_some_and(|m| m.reports_failures),
        }
    }

    pub fn covers(&self, c: Coverage) -> bool {
        self.met & 1 << c as u32 != 0
    }

    /// Any of `cs` (a family's declared coverage).
    pub fn covers_any(&self, cs: &[Coverage]) -> bool {
        cs.iter().any(|c| self.covers(*c))
    }
}
