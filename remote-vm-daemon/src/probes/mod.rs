//! The probe registry: every probe family, its attach modes in order of
//! preference, and the logic that tries them at run time.
//!
//! A *family* attaches as one unit (e.g. entry and exit of one function): a mode
//! either attaches all its programs or none, so a family never runs half-attached.
//! A failure is recorded per mode with its reason and the next mode is tried;
//! nothing here is fatal to the daemon.
pub mod access;
pub mod mmap_lock;

use std::fmt::Write as _;

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError},
};
use remote_vm_common::Point;

/// The kernel hook of one program.
#[derive(Clone, Copy, Debug)]
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
}

/// One program of the eBPF object and where it goes.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// The program's name in the object (its function name in `remote-vm-ebpf`).
    pub program: &'static str,
    pub hook: Hook,
    /// The point whose hits this program counts.
    pub point: Point,
}

/// One way of attaching a family.
#[derive(Debug)]
pub struct ModeSpec {
    /// `fentry`, `kprobe`, `tp_btf`, …: the value of the `mode` label.
    pub name: &'static str,
    /// Whether the kernel reports every missed run for this mode. Only trampolines
    /// (fentry/fexit) and tracepoints are exact; kretprobes drop returns when
    /// `maxactive` instances are in flight.
    pub exact: bool,
    pub programs: &'static [ProgramSpec],
}

#[derive(Debug)]
pub struct FamilySpec {
    pub name: &'static str,
    pub modes: &'static [ModeSpec],
}

impl FamilySpec {
    /// The points of this family (taken from its first mode; every mode of a family
    /// covers the same points).
    pub fn points(&self) -> impl Iterator<Item = Point> + '_ {
        self.modes[0].programs.iter().map(|p| p.point)
    }
}

/// Every family the daemon knows, in attach order.
pub const FAMILIES: &[&FamilySpec] = &[&access::FAMILY, &mmap_lock::FAMILY];

/// What happened when a family was attached.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub family: &'static FamilySpec,
    /// The mode that attached, if any.
    pub mode: Option<&'static ModeSpec>,
    /// Each mode that was tried and failed, with why.
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
            let _ = write!(out, "{mode}: {why}");
        }
        out
    }
}

/// Tries the modes of `family` in order and returns what attached.
pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, family: &'static FamilySpec) -> Verdict {
    let mut failures = Vec::new();
    for mode in family.modes {
        match attach_mode(ebpf, btf, mode) {
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

fn attach_mode(ebpf: &mut Ebpf, btf: Option<&Btf>, mode: &ModeSpec) -> Result<(), String> {
    for (done, spec) in mode.programs.iter().enumerate() {
        if let Err(why) = attach_program(ebpf, btf, spec) {
            // Leave nothing of a half-attached mode behind.
            for earlier in &mode.programs[..=done] {
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
    result.map_err(|e| format!("{} {}: {}", hook_kind(spec.hook), spec.hook.target(), describe(e)))
}

fn hook_kind(hook: Hook) -> &'static str {
    match hook {
        Hook::FEntry(_) => "fentry",
        Hook::FExit(_) => "fexit",
        Hook::KProbe(_) => "kprobe",
        Hook::KRetProbe(_) => "kretprobe",
        Hook::TpBtf(_) => "tp_btf",
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

/// An error and its sources on one line, with an empty verifier log left out.
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
    out = out.replace(". Verifier output: ", "; verifier: ");
    if out.ends_with("; verifier: ") {
        out.truncate(out.len() - "; verifier: ".len());
    }
    out.lines().next().unwrap_or_default().trim().to_string()
}
