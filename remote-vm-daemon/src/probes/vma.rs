//! The lockless loop's steps: `lock_vma_under_rcu()` and `folio_walk_start()`
//! returns, and the old path's `get_user_pages_remote()` calls.
use remote_vm_common::Point;

use super::{FamilySpec, Hook, ModeSpec, ProgramSpec, When};

const fn p(program: &'static str, hook: Hook, point: Point) -> ProgramSpec {
    ProgramSpec { program, hook, point, when: When::Always }
}

/// `lock_vma_under_rcu(mm, addr)` exit: fexit sees the arguments and the result;
/// the kprobe pair stashes the arguments for the return probe.
pub static LOCK_VMA: FamilySpec = FamilySpec {
    name: "lock_vma_under_rcu",
    points: &[Point::LockVmaUnderRcuExit],
    modes: &[
        ModeSpec {
            name: "fexit",
            exact: true,
            programs: &[p("lock_vma_fexit", Hook::FExit("lock_vma_under_rcu"), Point::LockVmaUnderRcuExit)],
            needs: &[],
        },
        ModeSpec {
            name: "kprobe",
            exact: false,
            programs: &[
                p("lock_vma_kprobe", Hook::KProbe("lock_vma_under_rcu"), Point::LockVmaUnderRcuExit),
                p("lock_vma_kretprobe", Hook::KRetProbe("lock_vma_under_rcu"), Point::LockVmaUnderRcuExit),
            ],
            needs: &[],
        },
    ],
    opt_in: &[],
    requires: Some("access_remote_vm"),
};

/// `folio_walk_start(fw, vma, addr, flags)` exit: the `folio_walk` it filled
/// (page, level) and the address.
pub static FOLIO_WALK: FamilySpec = FamilySpec {
    name: "folio_walk_start",
    points: &[Point::FolioWalkStartExit],
    modes: &[
        ModeSpec {
            name: "fexit",
            exact: true,
            programs: &[p("folio_walk_fexit", Hook::FExit("folio_walk_start"), Point::FolioWalkStartExit)],
            needs: &[],
        },
        ModeSpec {
            name: "kprobe",
            exact: false,
            programs: &[
                p("folio_walk_kprobe", Hook::KProbe("folio_walk_start"), Point::FolioWalkStartExit),
                p("folio_walk_kretprobe", Hook::KRetProbe("folio_walk_start"), Point::FolioWalkStartExit),
            ],
            needs: &[],
        },
    ],
    opt_in: &[],
    requires: Some("access_remote_vm"),
};

/// `get_user_pages_remote()` entry: pages the old path had GUP fetch.
pub static GUP: FamilySpec = FamilySpec {
    name: "get_user_pages_remote",
    points: &[Point::GetUserPagesRemoteEntry],
    modes: &[
        ModeSpec {
            name: "fentry",
            exact: true,
            programs: &[p("gup_fentry", Hook::FEntry("get_user_pages_remote"), Point::GetUserPagesRemoteEntry)],
            needs: &[],
        },
        ModeSpec {
            name: "kprobe",
            exact: false,
            programs: &[p("gup_kprobe", Hook::KProbe("get_user_pages_remote"), Point::GetUserPagesRemoteEntry)],
            needs: &[],
        },
    ],
    opt_in: &[],
    requires: Some("access_remote_vm"),
};
