//! The probe registry: every probe family, its attach modes and their
//! properties, as data. This is the one place a family or a mode is named:
//! config keys, `probe`/`mode` label values, program names, `check` lines and the
//! tests' expectations all derive from it, and behaviour is switched on the
//! properties here, never on a mode's name.
//!
//! A *family* attaches as one unit (e.g. entry and exit of one function): a mode
//! attaches all its programs or none. Modes are tried in order (`modes`);
//! `opt_in` modes only when the config names them.
use crate::Point;

/// The kernel hook of one program; the attach target is written here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    FEntry(&'static str),
    FExit(&'static str),
    KProbe(&'static str),
    KRetProbe(&'static str),
    TpBtf(&'static str),
}

impl Hook {
    pub const fn target(&self) -> &'static str {
        match *self {
            Hook::FEntry(f) | Hook::FExit(f) | Hook::KProbe(f) | Hook::KRetProbe(f) => f,
            Hook::TpBtf(t) => t,
        }
    }

    pub const fn kind(&self) -> &'static str {
        match self {
            Hook::FEntry(_) => "fentry",
            Hook::FExit(_) => "fexit",
            Hook::KProbe(_) => "kprobe",
            Hook::KRetProbe(_) => "kretprobe",
            Hook::TpBtf(_) => "tp_btf",
        }
    }

    /// A kprobe or kretprobe: the kernel counts its misses on the link.
    pub const fn is_kprobe(&self) -> bool {
        matches!(self, Hook::KProbe(_) | Hook::KRetProbe(_))
    }
}

/// Which kernels a program is for, within its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// The mmap_lock tracepoints with `bool write` at this argument position.
    MmapLockWriteArg(u32),
}

/// A kernel fact (from BTF) a mode cannot work without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    MmMmapLock,
    TaskMm,
    MmapLockTracepointArgs,
    /// `rw_semaphore.count` in BTF: the semaphore is the lock its contention
    /// events name (on PREEMPT_RT it wraps an rtmutex, which they name instead).
    RwsemCountWord,
}

/// One program of the eBPF object and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramSpec {
    /// The program's name in the object (its function name in `remote-vm-ebpf`).
    pub program: &'static str,
    pub hook: Hook,
    /// The point whose accuracy this program serves (its misses count there).
    pub point: Point,
    pub when: When,
}

/// One way of attaching a family, and what it can see.
#[derive(Debug, PartialEq, Eq)]
pub struct ModeSpec {
    /// The value of the `mode` label and the config: `fentry`, `kprobe`, …
    pub name: &'static str,
    /// Every run is seen or counted as missed. Only trampolines (fentry/fexit)
    /// and tracepoints are exact; kprobes can miss runs and kretprobes drop
    /// returns beyond `maxactive`.
    pub exact: bool,
    /// Sees write-lock acquisitions (for the remote family: `expand_stack`).
    pub sees_write_waits: bool,
    /// A failed acquisition it reports is a killed waiter. The mmap_lock
    /// tracepoints report failed trylocks the same way, so host-wide they are not.
    pub reports_failures: bool,
    /// Remote waits come from the lock's contention events, which fire only
    /// when the lock is contended: an acquisition without one is counted at
    /// the access's exit as a wait of 0 (`Control::remote_waits_from_contention`).
    pub waits_from_contention: bool,
    pub programs: &'static [ProgramSpec],
    pub needs: &'static [Need],
}

#[derive(Debug)]
pub struct FamilySpec {
    /// Config key under `[probes]`.
    pub name: &'static str,
    /// What the family observes (the `probe` label values).
    pub points: &'static [Point],
    /// Tried in this order by default.
    pub modes: &'static [ModeSpec],
    /// Tried only when the config asks for them.
    pub opt_in: &'static [ModeSpec],
    /// A family whose data this one only refines: without it attached, this one
    /// would cost without telling anything, so it is not attached either.
    pub requires: Option<Family>,
    /// Its hook runs on every user page fault of the host, remote access or not:
    /// what it costs there is paid by every process (see docs/benchmarks.md).
    pub on_fault_path: bool,
}

/// Every probe family, in attach order.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `__access_remote_vm()`: every remote-memory access.
    AccessRemoteVm,
    /// `lock_vma_under_rcu()` returns: the lockless loop's VMA locks.
    LockVmaUnderRcu,
    /// `folio_walk_start()` returns: the lockless loop's page walks.
    FolioWalkStart,
    /// `get_user_pages_remote()` entries: pages the old path had GUP fetch.
    GetUserPagesRemote,
    /// The remote access's own acquisitions of the target's mmap_lock.
    MmapLockRemote,
    /// Host-wide waits on a thread's own mm's mmap_lock.
    MmapLockHost,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::AccessRemoteVm,
        Family::LockVmaUnderRcu,
        Family::FolioWalkStart,
        Family::GetUserPagesRemote,
        Family::MmapLockRemote,
        Family::MmapLockHost,
    ];

    pub fn spec(self) -> &'static FamilySpec {
        match self {
            Family::AccessRemoteVm => &ACCESS,
            Family::LockVmaUnderRcu => &LOCK_VMA,
            Family::FolioWalkStart => &FOLIO_WALK,
            Family::GetUserPagesRemote => &GUP,
            Family::MmapLockRemote => &REMOTE,
            Family::MmapLockHost => &HOST,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The family that observes `point`.
    pub fn of(point: Point) -> Family {
        // Every point belongs to exactly one family (unit-tested).
        Family::ALL
            .into_iter()
            .find(|f| f.spec().points.contains(&point))
            .unwrap_or(Family::AccessRemoteVm)
    }

    /// Every mode: the default ones in order, then the opt-in ones.
    pub fn modes(self) -> impl Iterator<Item = &'static ModeSpec> {
        let s = self.spec();
        s.modes.iter().chain(s.opt_in.iter())
    }

    pub fn mode(self, name: &str) -> Option<&'static ModeSpec> {
        self.modes().find(|m| m.name == name)
    }

    /// The first mode `auto` tries (none for a family that is opt-in only).
    pub fn first_mode(self) -> Option<&'static ModeSpec> {
        self.spec().modes.first()
    }

    /// No default mode: attached only when the config names one of its opt-in
    /// modes (`auto` leaves it alone, and it does not count as missing).
    pub fn opt_in_only(self) -> bool {
        self.spec().modes.is_empty()
    }
}

const fn p(program: &'static str, hook: Hook, point: Point) -> ProgramSpec {
    ProgramSpec {
        program,
        hook,
        point,
        when: When::Always,
    }
}

/// An mmap_lock tracepoint program for kernels whose `write` argument is at `write_arg`.
const fn tp(program: &'static str, tracepoint: &'static str, write_arg: u32, point: Point) -> ProgramSpec {
    ProgramSpec {
        program,
        hook: Hook::TpBtf(tracepoint),
        point,
        when: When::MmapLockWriteArg(write_arg),
    }
}

/// A mode with the common properties: sees no write waits, failures are real.
const fn mode(name: &'static str, exact: bool, programs: &'static [ProgramSpec], needs: &'static [Need]) -> ModeSpec {
    ModeSpec {
        name,
        exact,
        sees_write_waits: false,
        reports_failures: true,
        waits_from_contention: false,
        programs,
        needs,
    }
}

/// The same mode, seeing write-lock acquisitions too.
const fn with_writes(m: ModeSpec) -> ModeSpec {
    ModeSpec {
        sees_write_waits: true,
        ..m
    }
}

use Point::*;

const ARV: &str = "__access_remote_vm";

/// `__access_remote_vm()`: every remote-memory access (`/proc/PID/mem`,
/// `cmdline`, `environ`, ptrace PEEK/POKE) passes through it. Where it is
/// inlined, its two callers instead (`*_callers`).
static ACCESS: FamilySpec = FamilySpec {
    name: "access_remote_vm",
    points: &[AccessRemoteVmEntry, AccessRemoteVmExit],
    modes: &[
        mode(
            "fentry",
            true,
            &[
                p("access_entry_fentry", Hook::FEntry(ARV), AccessRemoteVmEntry),
                p("access_exit_fexit", Hook::FExit(ARV), AccessRemoteVmExit),
            ],
            &[],
        ),
        mode(
            "kprobe",
            false,
            &[
                p("access_entry_kprobe", Hook::KProbe(ARV), AccessRemoteVmEntry),
                p("access_exit_kretprobe", Hook::KRetProbe(ARV), AccessRemoteVmExit),
            ],
            &[],
        ),
        mode(
            "fentry_callers",
            true,
            &[
                p("access_remote_vm_entry_fentry", Hook::FEntry("access_remote_vm"), AccessRemoteVmEntry),
                p("access_remote_vm_exit_fexit", Hook::FExit("access_remote_vm"), AccessRemoteVmExit),
                p("access_process_vm_entry_fentry", Hook::FEntry("access_process_vm"), AccessRemoteVmEntry),
                p("access_process_vm_exit_fexit", Hook::FExit("access_process_vm"), AccessRemoteVmExit),
            ],
            &[Need::TaskMm],
        ),
        mode(
            "kprobe_callers",
            false,
            &[
                p("access_remote_vm_entry_kprobe", Hook::KProbe("access_remote_vm"), AccessRemoteVmEntry),
                p("access_remote_vm_exit_kretprobe", Hook::KRetProbe("access_remote_vm"), AccessRemoteVmExit),
                p("access_process_vm_entry_kprobe", Hook::KProbe("access_process_vm"), AccessRemoteVmEntry),
                p("access_process_vm_exit_kretprobe", Hook::KRetProbe("access_process_vm"), AccessRemoteVmExit),
            ],
            &[Need::TaskMm],
        ),
    ],
    opt_in: &[],
    requires: None,
    on_fault_path: false,
};

/// `lock_vma_under_rcu(mm, addr)` exit: fexit sees the arguments and the result;
/// the kprobe pair stashes the arguments for the return probe.
///
/// Opt-in only: every user page fault of the host calls it, and a program there
/// costs every fault about 350 guest instructions (4.4 %, docs/benchmarks.md).
/// Without it reads are classified all the same on a kernel the start-up probe
/// read showed runs the lockless loop; only the split of a VMA-level stop into
/// `vma_lock_failed` / `vma_unsuitable`, the VMAs locked per read and the
/// `lock_vma_under_rcu()` call counts need it.
static LOCK_VMA: FamilySpec = FamilySpec {
    name: "lock_vma_under_rcu",
    points: &[LockVmaUnderRcuExit],
    modes: &[],
    opt_in: &[
        mode("fexit", true, &[p("lock_vma_fexit", Hook::FExit("lock_vma_under_rcu"), LockVmaUnderRcuExit)], &[]),
        mode(
            "kprobe",
            false,
            &[
                p("lock_vma_kprobe", Hook::KProbe("lock_vma_under_rcu"), LockVmaUnderRcuExit),
                p("lock_vma_kretprobe", Hook::KRetProbe("lock_vma_under_rcu"), LockVmaUnderRcuExit),
            ],
            &[],
        ),
    ],
    requires: Some(Family::AccessRemoteVm),
    on_fault_path: true,
};

/// `folio_walk_start(fw, vma, addr, flags)` exit: the `folio_walk` it filled
/// (page, level) and the address.
static FOLIO_WALK: FamilySpec = FamilySpec {
    name: "folio_walk_start",
    points: &[FolioWalkStartExit],
    modes: &[
        mode("fexit", true, &[p("folio_walk_fexit", Hook::FExit("folio_walk_start"), FolioWalkStartExit)], &[]),
        mode(
            "kprobe",
            false,
            &[
                p("folio_walk_kprobe", Hook::KProbe("folio_walk_start"), FolioWalkStartExit),
                p("folio_walk_kretprobe", Hook::KRetProbe("folio_walk_start"), FolioWalkStartExit),
            ],
            &[],
        ),
    ],
    opt_in: &[],
    requires: Some(Family::AccessRemoteVm),
    on_fault_path: false,
};

/// `get_user_pages_remote()` entry: pages the old path had GUP fetch.
static GUP: FamilySpec = FamilySpec {
    name: "get_user_pages_remote",
    points: &[GetUserPagesRemoteEntry],
    modes: &[
        mode("fentry", true, &[p("gup_fentry", Hook::FEntry("get_user_pages_remote"), GetUserPagesRemoteEntry)], &[]),
        mode("kprobe", false, &[p("gup_kprobe", Hook::KProbe("get_user_pages_remote"), GetUserPagesRemoteEntry)], &[]),
    ],
    opt_in: &[],
    requires: Some(Family::AccessRemoteVm),
    on_fault_path: false,
};

/// The remote read's own acquisitions: `mmap_read_lock_killable()` is inlined
/// into `__access_remote_vm()` and calls `down_read_killable()`; `expand_stack()`
/// re-takes the lock with `down_write_killable()`. Filtered in the programs to
/// threads inside a remote access and to the target mm's `mmap_lock`.
///
/// By default only the read lock: `down_write_killable` is taken by every
/// mmap()/munmap() on the host, and a remote read only asks for the write lock in
/// `expand_stack` (reads at unmapped addresses). Its waits are opt-in
/// (`fentry_rw`, `kprobe_rw`); without them the `mode="write"` series are absent.
static REMOTE: FamilySpec = FamilySpec {
    name: "mmap_lock_remote",
    points: &[MmapLockRemoteStart, MmapLockRemoteEnd],
    modes: &[
        // Only contended acquisitions run a program (docs/benchmarks.md: two
        // trampolines fewer on every slow read); the uncontended ones are
        // counted at the access's exit, from the call's own state.
        ModeSpec {
            waits_from_contention: true,
            ..mode(
                "contention_tp",
                true,
                &[
                    p("remote_contention_begin_tp", Hook::TpBtf("contention_begin"), MmapLockRemoteStart),
                    p("remote_contention_end_tp", Hook::TpBtf("contention_end"), MmapLockRemoteEnd),
                    // Where the slow path takes the lock and makes no GUP call.
                    p("remote_expand_stack_fentry", Hook::FEntry("expand_stack"), MmapLockRemoteStart),
                ],
                &[Need::MmMmapLock, Need::RwsemCountWord],
            )
        },
        mode(
            "fentry",
            true,
            &[
                p("down_read_fentry", Hook::FEntry("down_read_killable"), MmapLockRemoteStart),
                p("down_read_fexit", Hook::FExit("down_read_killable"), MmapLockRemoteEnd),
            ],
            &[Need::MmMmapLock],
        ),
        mode(
            "kprobe",
            false,
            &[
                p("down_read_kprobe", Hook::KProbe("down_read_killable"), MmapLockRemoteStart),
                p("down_read_kretprobe", Hook::KRetProbe("down_read_killable"), MmapLockRemoteEnd),
            ],
            &[Need::MmMmapLock],
        ),
        with_writes(mode(
            "mmap_lock_tp",
            true,
            &[
                tp("remote_start_locking_tp_w1", "mmap_lock_start_locking", 1, MmapLockRemoteStart),
                tp("remote_start_locking_tp_w2", "mmap_lock_start_locking", 2, MmapLockRemoteStart),
                tp("remote_acquire_returned_tp_w1", "mmap_lock_acquire_returned", 1, MmapLockRemoteEnd),
                tp("remote_acquire_returned_tp_w2", "mmap_lock_acquire_returned", 2, MmapLockRemoteEnd),
            ],
            &[Need::MmapLockTracepointArgs],
        )),
    ],
    opt_in: &[
        with_writes(mode(
            "fentry_rw",
            true,
            &[
                p("down_read_fentry_rw", Hook::FEntry("down_read_killable"), MmapLockRemoteStart),
                p("down_read_fexit_rw", Hook::FExit("down_read_killable"), MmapLockRemoteEnd),
                p("down_write_fentry", Hook::FEntry("down_write_killable"), MmapLockRemoteStart),
                p("down_write_fexit", Hook::FExit("down_write_killable"), MmapLockRemoteEnd),
            ],
            &[Need::MmMmapLock],
        )),
        with_writes(mode(
            "kprobe_rw",
            false,
            &[
                p("down_read_kprobe_rw", Hook::KProbe("down_read_killable"), MmapLockRemoteStart),
                p("down_read_kretprobe_rw", Hook::KRetProbe("down_read_killable"), MmapLockRemoteEnd),
                p("down_write_kprobe", Hook::KProbe("down_write_killable"), MmapLockRemoteStart),
                p("down_write_kretprobe", Hook::KRetProbe("down_write_killable"), MmapLockRemoteEnd),
            ],
            &[Need::MmMmapLock],
        )),
    ],
    requires: Some(Family::AccessRemoteVm),
    on_fault_path: false,
};

/// Host-wide waits on a thread's own mm's mmap_lock. `lock:contention_begin/end`
/// fire only when a lock is contended (measured 1.00x on an mmap loop); the
/// mmap_lock tracepoints see every acquisition but tax every mmap_lock user
/// (>= 1.06x, and on 6.12 a memcg path formatted per event), so they are opt-in.
static HOST: FamilySpec = FamilySpec {
    name: "mmap_lock_host",
    points: &[MmapLockHostStart, MmapLockHostEnd],
    modes: &[with_writes(mode(
        "contention_tp",
        true,
        &[
            p("host_contention_begin_tp", Hook::TpBtf("contention_begin"), MmapLockHostStart),
            p("host_contention_end_tp", Hook::TpBtf("contention_end"), MmapLockHostEnd),
        ],
        &[Need::MmMmapLock, Need::TaskMm],
    ))],
    opt_in: &[ModeSpec {
        // Failed trylocks look like failed acquisitions here.
        reports_failures: false,
        ..with_writes(mode(
            "mmap_lock_tp",
            true,
            &[
                tp("host_start_locking_tp_w1", "mmap_lock_start_locking", 1, MmapLockHostStart),
                tp("host_start_locking_tp_w2", "mmap_lock_start_locking", 2, MmapLockHostStart),
                tp("host_acquire_returned_tp_w1", "mmap_lock_acquire_returned", 1, MmapLockHostEnd),
                tp("host_acquire_returned_tp_w2", "mmap_lock_acquire_returned", 2, MmapLockHostEnd),
            ],
            &[Need::MmMmapLock, Need::TaskMm, Need::MmapLockTracepointArgs],
        ))
    }],
    requires: None,
    on_fault_path: false,
};

/// The probes table of docs/probes-and-kernels.md, generated from the registry.
#[cfg(feature = "user")]
pub fn readme_table() -> std::string::String {
    use std::{format, string::String, vec::Vec};
    let mode_text = |m: &ModeSpec| {
        let mut hooks: Vec<String> = Vec::new();
        for p in m.programs {
            let h = format!("{} `{}`", p.hook.kind(), p.hook.target());
            if !hooks.contains(&h) {
                hooks.push(h);
            }
        }
        let exact = if m.exact { "exact" } else { "may miss" };
        format!("`{}` ({}; {exact})", m.name, hooks.join(", "))
    };
    let mut out = String::from(
        "| family (config key) | probes (`probe` label) | modes, in `auto` order | opt-in modes | only with |\n|---|---|---|---|---|\n",
    );
    for f in Family::ALL {
        let s = f.spec();
        let points: Vec<String> = s.points.iter().map(|p| format!("`{}`", p.name())).collect();
        let modes: Vec<String> = s.modes.iter().map(mode_text).collect();
        let opt_in: Vec<String> = s.opt_in.iter().map(mode_text).collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            s.name,
            points.join(", "),
            if modes.is_empty() {
                format!("none: opt-in only{}", if s.on_fault_path { " (on every page fault)" } else { "" })
            } else {
                modes.join("<br>")
            },
            if opt_in.is_empty() { "—".into() } else { opt_in.join("<br>") },
            s.requires.map_or("—".into(), |r| format!("`{}`", r.name())),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn every_program_appears_once() {
        // aya loads each program once: no program in two modes.
        let mut names: Vec<&str> = Family::ALL
            .iter()
            .flat_map(|f| f.modes())
            .flat_map(|m| m.programs.iter().map(|p| p.program))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a program appears in two modes");
    }

    #[test]
    fn points_are_each_covered_by_one_family() {
        let mut points: Vec<Point> = Family::ALL.iter().flat_map(|f| f.spec().points.iter().copied()).collect();
        points.sort();
        assert_eq!(points, Point::ALL.to_vec());
        for point in Point::ALL {
            assert!(Family::of(point).spec().points.contains(&point));
        }
    }

    #[test]
    fn programs_serve_their_familys_points() {
        for f in Family::ALL {
            for m in f.modes() {
                for p in m.programs {
                    assert!(f.spec().points.contains(&p.point), "{} {}", m.name, p.program);
                }
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut families: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        families.sort();
        families.dedup();
        assert_eq!(families.len(), Family::ALL.len());
        for f in Family::ALL {
            assert_eq!(Family::from_name(f.name()), Some(f));
            let mut modes: Vec<&str> = f.modes().map(|m| m.name).collect();
            let n = modes.len();
            modes.sort();
            modes.dedup();
            assert_eq!(modes.len(), n, "{}", f.name());
            // "auto" and "off" are config words, not modes.
            assert!(f.mode("auto").is_none() && f.mode("off").is_none());
        }
        for (i, f) in Family::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
    }

    #[test]
    fn families_required_come_first() {
        for f in Family::ALL {
            if let Some(r) = f.spec().requires {
                assert!(r < f, "{} requires {}, attached later", f.name(), r.name());
            }
        }
    }
}
