//! `__access_remote_vm()`: every remote-memory access (`/proc/PID/mem`,
//! `cmdline`, `environ`, ptrace PEEK/POKE) passes through it.
use remote_vm_common::Point;

use super::{FamilySpec, Hook, ModeSpec, ProgramSpec};

const FUNCTION: &str = "__access_remote_vm";

pub static FAMILY: FamilySpec = FamilySpec {
    name: "access_remote_vm",
    modes: &[
        ModeSpec {
            name: "fentry",
            exact: true,
            programs: &[
                ProgramSpec {
                    program: "access_entry_fentry",
                    hook: Hook::FEntry(FUNCTION),
                    point: Point::AccessRemoteVmEntry,
                },
                ProgramSpec {
                    program: "access_exit_fexit",
                    hook: Hook::FExit(FUNCTION),
                    point: Point::AccessRemoteVmExit,
                },
            ],
        },
        ModeSpec {
            name: "kprobe",
            exact: false,
            programs: &[
                ProgramSpec {
                    program: "access_entry_kprobe",
                    hook: Hook::KProbe(FUNCTION),
                    point: Point::AccessRemoteVmEntry,
                },
                ProgramSpec {
                    program: "access_exit_kretprobe",
                    hook: Hook::KRetProbe(FUNCTION),
                    point: Point::AccessRemoteVmExit,
                },
            ],
        },
    ],
};
