//! `__access_remote_vm()`: every remote-memory access (`/proc/PID/mem`,
//! `cmdline`, `environ`, ptrace PEEK/POKE) passes through it.
use remote_vm_common::Point;

use super::{FamilySpec, Hook, ModeSpec, Need, ProgramSpec, When};

const F: &str = "__access_remote_vm";

const fn p(program: &'static str, hook: Hook, point: Point) -> ProgramSpec {
    ProgramSpec { program, hook, point, when: When::Always }
}

pub static ACCESS: FamilySpec = FamilySpec {
    name: "access_remote_vm",
    points: &[Point::AccessRemoteVmEntry, Point::AccessRemoteVmExit],
    modes: &[
        ModeSpec {
            name: "fentry",
            exact: true,
            programs: &[p("access_entry_fentry", Hook::FEntry(F), Point::AccessRemoteVmEntry), p("access_exit_fexit", Hook::FExit(F), Point::AccessRemoteVmExit)],
            needs: &[],
        },
        ModeSpec {
            name: "kprobe",
            exact: false,
            programs: &[p("access_entry_kprobe", Hook::KProbe(F), Point::AccessRemoteVmEntry), p("access_exit_kretprobe", Hook::KRetProbe(F), Point::AccessRemoteVmExit)],
            needs: &[],
        },
        // Where __access_remote_vm is inlined: its two callers instead.
        ModeSpec {
            name: "fentry_callers",
            exact: true,
            programs: &[
                p("access_remote_vm_entry_fentry", Hook::FEntry("access_remote_vm"), Point::AccessRemoteVmEntry),
                p("access_remote_vm_exit_fexit", Hook::FExit("access_remote_vm"), Point::AccessRemoteVmExit),
                p("access_process_vm_entry_fentry", Hook::FEntry("access_process_vm"), Point::AccessRemoteVmEntry),
                p("access_process_vm_exit_fexit", Hook::FExit("access_process_vm"), Point::AccessRemoteVmExit),
            ],
            needs: &[Need::TaskMm],
        },
        ModeSpec {
            name: "kprobe_callers",
            exact: false,
            programs: &[
                p("access_remote_vm_entry_kprobe", Hook::KProbe("access_remote_vm"), Point::AccessRemoteVmEntry),
                p("access_remote_vm_exit_kretprobe", Hook::KRetProbe("access_remote_vm"), Point::AccessRemoteVmExit),
                p("access_process_vm_entry_kprobe", Hook::KProbe("access_process_vm"), Point::AccessRemoteVmEntry),
                p("access_process_vm_exit_kretprobe", Hook::KRetProbe("access_process_vm"), Point::AccessRemoteVmExit),
            ],
            needs: &[Need::TaskMm],
        },
    ],
    opt_in: &[],
    requires: None,
};
