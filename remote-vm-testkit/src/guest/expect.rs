//! What must attach where, derived from the probe registry, and the daemon
//! configurations (scenarios) the runner tries.
use remote_vm_common::{Family, Point, catalog::NO_MODE, registry::ModeSpec};

use crate::classes::Kernel;

/// A probe and the mode it must attach in.
type ProbeMode = (&'static str, &'static str);

/// Every probe of `modes`' families (family, mode name) with that mode.
fn probe_modes(modes: &[(Family, &'static str)]) -> Vec<ProbeMode> {
    modes
        .iter()
        .flat_map(|(f, m)| f.spec().points.iter().map(move |p| (p.name(), *m)))
        .collect()
}

/// Every probe in the mode `auto` tries first (the test kernels take it).
pub(super) fn first_modes() -> Vec<ProbeMode> {
    probe_modes(&Family::ALL.map(|f| (f, f.first_mode().map_or(NO_MODE, |m| m.name))))
}

/// Probes of functions a legacy kernel (6.1) does not have.
pub(super) fn lockless_probe(probe: &str) -> bool {
    [Family::LockVmaUnderRcu, Family::FolioWalkStart]
        .iter()
        .any(|f| f.spec().points.iter().any(|p| p.name() == probe))
}

/// The mode `probe` must attach in on `kernel`, given the configured `mode`.
pub(super) fn expected_mode(kernel: Option<Kernel>, probe: &str, mode: &'static str) -> &'static str {
    let gup = Point::GetUserPagesRemoteEntry.name();
    if kernel == Some(Kernel::Legacy) && lockless_probe(probe) {
        NO_MODE
    } else if kernel == Some(Kernel::Legacy) && probe == gup && Family::GetUserPagesRemote.first_mode().is_some_and(|m| m.name == mode) {
        // 6.1's get_user_pages_remote has 7 arguments; its trampolines take 6:
        // the next mode, the kprobe.
        Family::GetUserPagesRemote.spec().modes[1].name
    } else if super::harness::preempt_rt() {
        // PREEMPT_RT's rw_semaphore wraps an rtmutex (no `count` word, which
        // its contention events would name): a mode that needs it is passed over.
        use remote_vm_common::registry::Need;
        let Some(family) = Family::ALL.into_iter().find(|f| f.spec().points.iter().any(|p| p.name() == probe)) else {
            return mode;
        };
        let needs_count = |m: &remote_vm_common::registry::ModeSpec| m.needs.contains(&Need::RwsemCountWord);
        match family.spec().modes.iter().find(|m| m.name == mode) {
            Some(m) if needs_count(m) => family.spec().modes.iter().find(|m| !needs_count(m)).map_or(NO_MODE, |m| m.name),
            _ => mode,
        }
    } else {
        mode
    }
}

/// `check`'s exit status on `kernel`: 2 (degraded) where probes cannot exist.
pub(super) fn expected_check_exit(kernel: Option<Kernel>) -> i32 {
    if kernel == Some(Kernel::Legacy) { 2 } else { 0 }
}

/// A daemon configuration: families forced into modes (the rest `auto`).
pub(super) struct Scenario {
    pub(super) name: &'static str,
    forced: &'static [(Family, &'static str)],
    /// `self_stats = true`: the kernel's run statistics of the programs.
    pub(super) self_stats: bool,
}

impl Scenario {
    pub(super) fn config(&self) -> String {
        let mut config = String::from(if self.self_stats { "self_stats = true\n[probes]\n" } else { "[probes]\n" });
        for (family, mode) in self.forced {
            config.push_str(&format!("{} = \"{mode}\"\n", family.name()));
        }
        config
    }

    /// The modes it must attach in: the forced ones, or all first modes.
    pub(super) fn modes(&self) -> Vec<ProbeMode> {
        if self.forced.is_empty() { first_modes() } else { probe_modes(self.forced) }
    }

    /// The mode it attaches `family` in (none: an opt-in family not asked for).
    fn mode(&self, family: Family) -> Option<&'static ModeSpec> {
        match self.forced.iter().find(|(f, _)| *f == family) {
            Some((_, m)) => family.mode(m),
            None => family.first_mode(),
        }
    }

    /// Its host-wide mode reports killed waiters (so the failures series exists).
    pub(super) fn host_failures(&self) -> bool {
        self.mode(Family::MmapLockHost).is_some_and(|m| m.reports_failures)
    }

    /// Its remote-lock mode sees expand_stack's write-lock acquisitions.
    pub(super) fn remote_writes(&self) -> bool {
        self.mode(Family::MmapLockRemote).is_some_and(|m| m.sees_write_waits)
    }

    /// It probes the lockless loop's VMA step (the opt-in `lock_vma_under_rcu`).
    pub(super) fn vma_probed(&self) -> bool {
        self.mode(Family::LockVmaUnderRcu).is_some()
    }
}

use Family::*;

pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario { name: "first", forced: &[], self_stats: false },
    Scenario {
        name: "fallback",
        forced: &[
            (AccessRemoteVm, "kprobe"),
            (LockVmaUnderRcu, "kprobe"),
            (FolioWalkStart, "kprobe"),
            (GetUserPagesRemote, "kprobe"),
            (MmapLockRemote, "kprobe"),
            (MmapLockHost, "mmap_lock_tp"),
        ],
        self_stats: false,
    },
    Scenario {
        name: "callers",
        forced: &[(AccessRemoteVm, "fentry_callers"), (LockVmaUnderRcu, "fexit"), (MmapLockRemote, "mmap_lock_tp")],
        self_stats: true,
    },
    Scenario {
        name: "kprobe_callers",
        forced: &[(AccessRemoteVm, "kprobe_callers"), (MmapLockRemote, "fentry_rw")],
        self_stats: false,
    },
];

/// A scenario by name.
pub(super) fn scenario(name: &str) -> &'static Scenario {
    SCENARIOS.iter().find(|s| s.name == name).expect("a scenario of SCENARIOS")
}
