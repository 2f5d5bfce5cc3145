//! The probe registry: every probe family, its attach modes in order of
//! preference (plus opt-in modes tried only when configured), and the logic that
//! tries them at run time.
//!
//! A *family* attaches as one unit (e.g. entry and exit of one function): a mode
//! either attaches all its programs or none, so a family never runs half-attached.
//! A failure is recorded per mode with its reason and the next mode is tried;
//! nothing here is fatal to the daemon.
pub mod access;
pub mod lock;
pub mod vma;

use std::fmt::Write as _;

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError},
};
use remote_vm_common::Point;

use crate::layout::Layout;

/// The kernel hook of one program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    FEntry(&'static str),
    FExit(&'static str),
    KProbe(&'static str),
    KRetProbe(&'static str),
    TpBtf(&'static str),
}

impl Hook {
    pub fn target(&self) -> &'static str {
        match *self {
            Hook::FEntry(f) | Hook::FExit(f) | Hook::KProbe(f) | Hook::KRetProbe(f) => f,
            Hook::TpBtf(t) => t,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Hook::FEntry(_) => "fentry",
            Hook::FExit(_) => "fexit",
            Hook::KProbe(_) => "kprobe",
            Hook::KRetProbe(_) => "kretprobe",
            Hook::TpBtf(_) => "tp_btf",
        }
    }
}

/// One program of the eBPF object and where it goes.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// The program's name in the object (its function name in `remote-vm-ebpf`).
    pub program: &'static str,
    pub hook: Hook,
    /// The point whose accuracy this program serves (its misses count there).
    pub point: Point,
    pub when: When,
}

/// Which kernels a program is for, within its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// The mmap_lock tracepoints with `bool write` at this argument position.
    MmapLockWriteArg(u32),
}

impl When {
    fn applies(self, layout: &Layout) -> bool {
        match self {
            When::Always => true,
            When::MmapLockWriteArg(w) => layout.mmap_lock_tp_args.as_ref().is_ok_and(|(write, _)| *write == w),
        }
    }
}

/// A kernel fact a mode cannot work without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    MmMmapLock,
    TaskMm,
    MmapLockTracepointArgs,
}

impl Need {
    fn check(self, layout: &Layout) -> Result<(), String> {
        let r = match self {
            Need::MmMmapLock => layout.mm_mmap_lock.as_ref().map(drop),
            Need::TaskMm => layout.task_mm.as_ref().map(drop),
            Need::MmapLockTracepointArgs => layout.mmap_lock_tp_args.as_ref().map(drop),
        };
        r.map_err(Clone::clone)
    }
}

/// One way of attaching a family.
#[derive(Debug)]
pub struct ModeSpec {
    /// The value of the `mode` label: `fentry`, `fexit`, `kprobe`, …
    pub name: &'static str,
    /// Whether every run is seen or counted as missed. Only trampolines
    /// (fentry/fexit) and tracepoints are exact; kprobes can miss runs and
    /// kretprobes drop returns beyond `maxactive`.
    pub exact: bool,
    pub programs: &'static [ProgramSpec],
    pub needs: &'static [Need],
}

#[derive(Debug)]
pub struct FamilySpec {
    pub name: &'static str,
    /// What the family observes (the `probe` label values).
    pub points: &'static [Point],
    /// Tried in this order by default.
    pub modes: &'static [ModeSpec],
    /// Tried only when the config asks for them.
    pub opt_in: &'static [ModeSpec],
    /// A family whose data this one only refines: without it attached, this one
    /// would cost without telling anything, so it is not attached either.
    pub requires: Option<&'static str>,
}

impl FamilySpec {
    pub fn mode(&self, name: &str) -> Option<&'static ModeSpec> {
        self.modes.iter().chain(self.opt_in).find(|m| m.name == name)
    }

    pub fn mode_names(&self) -> Vec<&'static str> {
        self.modes.iter().chain(self.opt_in).map(|m| m.name).collect()
    }
}

/// Every family the daemon knows, in attach order.
pub static FAMILIES: &[&FamilySpec] = &[
    &access::ACCESS,
    &vma::LOCK_VMA,
    &vma::FOLIO_WALK,
    &vma::GUP,
    &lock::REMOTE,
    &lock::HOST,
];

pub fn family(name: &str) -> Option<&'static FamilySpec> {
    FAMILIES.iter().copied().find(|f| f.name == name)
}

/// How the config wants a family attached.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Choice {
    /// The default modes, in order.
    #[default]
    Auto,
    /// Exactly this mode.
    Force(String),
    Disabled,
}

/// What happened when a family was attached.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub family: &'static FamilySpec,
    /// The mode that attached, if any.
    pub mode: Option<&'static ModeSpec>,
    /// Each mode that was tried and failed, with why (or why none was tried).
    pub failures: Vec<(&'static str, String)>,
}

impl Verdict {
    pub fn attached(&self) -> bool {
        self.mode.is_some()
    }

    pub fn mode_name(&self) -> &'static str {
        self.mode.map_or("none", |m| m.name)
    }

    /// All failures as one line: `fentry: …; kprobe: …`.
    pub fn reason(&self) -> String {
        let mut out = String::new();
        for (i, (mode, why)) in self.failures.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            if mode.is_empty() {
                out.push_str(why);
            } else {
                let _ = write!(out, "{mode}: {why}");
            }
        }
        out
    }
}

/// Tries the modes `choice` allows for `family`, in order, and returns what attached.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    layout: &Layout,
    family: &'static FamilySpec,
    choice: &Choice,
    earlier: &[Verdict],
) -> Verdict {
    if let Some(required) = family.requires {
        if *choice != Choice::Disabled && !earlier.iter().any(|v| v.family.name == required && v.attached()) {
            return Verdict {
                family,
                mode: None,
                failures: vec![("", format!("not tried: it only refines {required}, which is not attached"))],
            };
        }
    }
    let modes: Vec<&'static ModeSpec> = match choice {
        Choice::Disabled => {
            return Verdict {
                family,
                mode: None,
                failures: vec![("", "disabled by config".to_string())],
            };
        }
        Choice::Auto => family.modes.iter().collect(),
        Choice::Force(name) => match family.mode(name) {
            Some(m) => vec![m],
            None => {
                return Verdict {
                    family,
                    mode: None,
                    failures: vec![("", format!("config asks for unknown mode {name}"))],
                };
            }
        },
    };
    let mut failures = Vec::new();
    for mode in modes {
        let result = ready(mode, layout).and_then(|()| attach_mode(ebpf, btf, layout, mode));
        match result {
            Ok(()) => {
                return Verdict {
                    family,
                    mode: Some(mode),
                    failures,
                };
            }
            Err(why) => failures.push((mode.name, why)),
        }
    }
    Verdict {
        family,
        mode: None,
        failures,
    }
}

/// Whether this kernel's layout has what `mode` needs.
pub fn ready(mode: &ModeSpec, layout: &Layout) -> Result<(), String> {
    mode.needs.iter().try_for_each(|need| need.check(layout))
}

/// The programs of `mode` that apply to this kernel.
pub fn programs<'a>(mode: &'a ModeSpec, layout: &'a Layout) -> impl Iterator<Item = &'a ProgramSpec> + 'a {
    mode.programs.iter().filter(move |p| p.when.applies(layout))
}

fn attach_mode(ebpf: &mut Ebpf, btf: Option<&Btf>, layout: &Layout, mode: &ModeSpec) -> Result<(), String> {
    let chosen: Vec<&ProgramSpec> = programs(mode, layout).collect();
    for (done, spec) in chosen.iter().enumerate() {
        if let Err(why) = attach_program(ebpf, btf, spec) {
            // Leave nothing of a half-attached mode behind.
            for earlier in &chosen[..=done] {
                if let Some(program) = ebpf.program_mut(earlier.program) {
                    let _ = unload(program);
                }
            }
            return Err(why);
        }
    }
    Ok(())
}

fn attach_program(ebpf: &mut Ebpf, btf: Option<&Btf>, spec: &ProgramSpec) -> Result<(), String> {
    let program = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| format!("program {} missing from the eBPF object", spec.program))?;
    let need_btf = || btf.ok_or_else(|| "no kernel BTF (see --btf)".to_string());
    let result: Result<(), ProgramError> = match spec.hook {
        Hook::FEntry(function) => {
            let btf = need_btf()?;
            let p: &mut FEntry = program.try_into().map_err(describe)?;
            p.load(function, btf).and_then(|()| p.attach().map(drop))
        }
        Hook::FExit(function) => {
            let btf = need_btf()?;
            let p: &mut FExit = program.try_into().map_err(describe)?;
            p.load(function, btf).and_then(|()| p.attach().map(drop))
        }
        Hook::KProbe(function) | Hook::KRetProbe(function) => {
            let p: &mut KProbe = program.try_into().map_err(describe)?;
            p.load().and_then(|()| p.attach(function, 0).map(drop))
        }
        Hook::TpBtf(tracepoint) => {
            let btf = need_btf()?;
            let p: &mut BtfTracePoint = program.try_into().map_err(describe)?;
            p.load(tracepoint, btf).and_then(|()| p.attach().map(drop))
        }
    };
    result.map_err(|e| {
        let why = describe(e);
        // Refused for want of privilege: say which.
        let missing = crate::caps::missing_for_loading();
        let refused = why.contains("Operation not permitted") || why.contains("Permission denied");
        let hint = if refused && !missing.is_empty() {
            format!(" (missing capability {})", missing.join(", "))
        } else if refused && why.contains("perf_event_open") && !crate::caps::has(crate::caps::CAP_SYS_ADMIN) {
            perf_paranoid_hint()
        } else {
            String::new()
        };
        format!("{} {}: {why}{hint}", spec.hook.kind(), spec.hook.target())
    })
}

/// Debian's kernels add `kernel.perf_event_paranoid=3` (their default), which
/// reserves perf events, and so kprobes, to CAP_SYS_ADMIN even with CAP_PERFMON.
fn perf_paranoid_hint() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
    {
        Some(level) if level > 2 => format!(
            " (kernel.perf_event_paranoid={level} reserves kprobes to CAP_SYS_ADMIN; set it to 2 or grant CAP_SYS_ADMIN)"
        ),
        _ => String::new(),
    }
}

fn unload(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        _ => Ok(()),
    }
}

/// An error and its sources on one line; of a verifier log, its last line.
pub fn describe(e: impl std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    match out.split_once(". Verifier output: ") {
        Some((head, log)) => {
            log::debug!("verifier log:\n{log}");
            // The error is the last line before the verifier's statistics.
            let last = log
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("processed ")
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                })
                .last();
            match last {
                Some(last) => format!("{head} (verifier: {last})"),
                None => head.to_string(),
            }
        }
        None => out.lines().next().unwrap_or_default().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_in_the_object_once_per_family_mode() {
        // Programs are unique across all modes of all families: aya loads each once.
        let mut names: Vec<&str> = FAMILIES
            .iter()
            .flat_map(|f| f.modes.iter().chain(f.opt_in))
            .flat_map(|m| m.programs.iter().map(|p| p.program))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a program appears in two modes");
    }

    #[test]
    fn points_are_each_covered_by_one_family() {
        let mut points: Vec<Point> = FAMILIES.iter().flat_map(|f| f.points.iter().copied()).collect();
        points.sort();
        assert_eq!(points, Point::ALL.to_vec());
    }

    #[test]
    fn an_unexpected_tracepoint_signature_keeps_its_modes_off() {
        use crate::btf::{Btf, KIND_STRUCT, tests::Builder};
        // mmap_lock_start_locking(mm, write) but acquire_returned(mm, success) only.
        let mut b = Builder::new();
        let boolean = b.int("_Bool", 1);
        let void_ptr = b.ptr(0);
        let mm = b.structure(KIND_STRUCT, "mm_struct", 8, &[]);
        let mm_ptr = b.ptr(mm);
        for (tp, args) in [
            ("mmap_lock_start_locking", vec![void_ptr, mm_ptr, boolean]),
            ("mmap_lock_acquire_returned", vec![void_ptr, mm_ptr, boolean]),
        ] {
            let proto = b.proto(0, &args);
            let fp = b.ptr(proto);
            b.typedef(&format!("btf_trace_{tp}"), fp);
        }
        let layout = Layout::from_btf(&Btf::parse(&b.build()).unwrap());
        let tp_mode = lock::HOST.mode("mmap_lock_tp").unwrap();
        assert_eq!(
            ready(tp_mode, &layout),
            Err("struct mm_struct has no field mmap_lock in BTF".to_string())
        );
        let remote_tp = lock::REMOTE.mode("mmap_lock_tp").unwrap();
        assert_eq!(
            ready(remote_tp, &layout),
            Err("unexpected mmap_lock tracepoint signature (bool args at [1] and [1])".to_string())
        );
        // And no program of any mode is for such a kernel.
        assert_eq!(programs(remote_tp, &layout).count(), 0);
    }

    #[test]
    fn mode_names_are_unique_per_family() {
        for f in FAMILIES {
            let mut names = f.mode_names();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n, "{}", f.name);
        }
    }
}
