//! Attaching the registry's probe families (`remote_vm_common::registry`): tries
//! the modes a family's config allows, in order, and records per mode why it
//! failed. A family never runs half-attached, and nothing here is fatal to the
//! daemon.
use std::{fmt::Write as _, io};


use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError},
};
use remote_vm_common::{
    Family,
    registry::{Hook, ModeSpec, Need, ProgramSpec, When},
};

use crate::{caps, kernel::Layout};

/// How the config wants a family attached.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Choice {
    /// The default modes, in order.
    #[default]
    Auto,
    /// Exactly this mode.
    Force(&'static ModeSpec),
    Disabled,
}

/// Why a mode (or a whole family) did not attach.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AttachError {
    #[error("disabled by config")]
    Disabled,
    /// A family with no default mode, not asked for: not a degradation.
    #[error("opt-in, not asked for (set {} = \"{}\" to attach)", .0.name(), .0.spec().opt_in.first().map_or("", |m| m.name))]
    OptIn(Family),
    #[error("not tried: it only refines {}, which is not attached", .0.name())]
    Unrefined(Family),
    #[error("{0}")]
    NotReady(String),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("no kernel BTF (see --btf)")]
    NoBtf,
    /// The kernel refused: load, verifier or attach. `errno` is the OS error
    /// the refusal carried, if any.
    #[error("{} {}: {detail}{hint}", .hook.kind(), .hook.target())]
    Kernel {
        hook: Hook,
        detail: String,
        errno: Option<i32>,
        hint: String,
    },
}

/// What happened when a family was attached.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub family: Family,
    /// The mode that attached, if any.
    pub mode: Option<&'static ModeSpec>,
    /// Each mode that was tried and failed (`None`: the family was not tried).
    pub failures: Vec<(Option<&'static str>, AttachError)>,
}

impl Verdict {
    pub fn attached(&self) -> bool {
        self.mode.is_some()
    }

    /// Attached or meant to be: not an opt-in-only family left as it is.
    pub fn wanted(&self) -> bool {
        !matches!(self.failures.as_slice(), [(None, AttachError::OptIn(_))])
    }

    pub fn mode_name(&self) -> &'static str {
        self.mode.map_or("none", |m| m.name)
    }

    fn not_tried(family: Family, why: AttachError) -> Verdict {
        Verdict {
            family,
            mode: None,
            failures: vec![(None, why)],
        }
    }
}

/// Tries the modes `choice` allows for `family`, in order, and returns what attached.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    layout: &Layout,
    family: Family,
    choice: &Choice,
    earlier: &[Verdict],
) -> Verdict {
    let modes: Vec<&'static ModeSpec> = match choice {
        Choice::Disabled => return Verdict::not_tried(family, AttachError::Disabled),
        Choice::Auto if family.opt_in_only() => return Verdict::not_tried(family, AttachError::OptIn(family)),
        Choice::Auto => family.spec().modes.iter().collect(),
        Choice::Force(mode) => vec![*mode],
    };
    if let Some(required) = family.spec().requires
        && !earlier.iter().any(|v| v.family == required && v.attached()) {
            return Verdict::not_tried(family, AttachError::Unrefined(required));
        }
    let mut failures = Vec::new();
    for mode in modes {
        match ready(mode, layout).and_then(|()| attach_mode(ebpf, btf, layout, mode)) {
            Ok(()) => {
                return Verdict {
                    family,
                    mode: Some(mode),
                    failures,
                };
            }
            Err(why) => failures.push((Some(mode.name), why)),
        }
    }
    Verdict {
        family,
        mode: None,
        failures,
    }
}

/// Whether this kernel's layout has what `mode` needs.
pub fn ready(mode: &ModeSpec, layout: &Layout) -> Result<(), AttachError> {
    mode.needs.iter().try_for_each(|need| {
        let r = match need {
            Need::MmMmapLock => layout.mm_mmap_lock.as_ref().map(drop),
            Need::TaskMm => layout.task_mm.as_ref().map(drop),
            Need::MmapLockTracepointArgs => layout.mmap_lock_tp_args.as_ref().map(drop),
            Need::RwsemCountWord => layout.stall_ids.rwsem_count.as_ref().map(drop),
        };
        r.map_err(|why| AttachError::NotReady(why.clone()))
    })
}

/// The programs of `mode` that apply to this kernel.
pub fn programs<'a>(mode: &'a ModeSpec, layout: &'a Layout) -> impl Iterator<Item = &'a ProgramSpec> + 'a {
    mode.programs.iter().filter(move |p| match p.when {
        When::Always => true,
        When::MmapLockWriteArg(w) => layout.mmap_lock_tp_args.as_ref().is_ok_and(|(write, _)| *write == w),
    })
}

fn attach_mode(ebpf: &mut Ebpf, btf: Option<&Btf>, layout: &Layout, mode: &ModeSpec) -> Result<(), AttachError> {
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

fn attach_program(ebpf: &mut Ebpf, btf: Option<&Btf>, spec: &ProgramSpec) -> Result<(), AttachError> {
    let program = ebpf
        .program_mut(spec.program)
        .ok_or(AttachError::MissingProgram(spec.program))?;
    let need_btf = || btf.ok_or(AttachError::NoBtf);
    let kernel = |e: ProgramError| kernel_error(spec.hook, &e);
    let result: Result<(), ProgramError> = match spec.hook {
        Hook::FEntry(function) => {
            let btf = need_btf()?;
            let p: &mut FEntry = program.try_into().map_err(kernel)?;
            p.load(function, btf).and_then(|()| p.attach().map(drop))
        }
        Hook::FExit(function) => {
            let btf = need_btf()?;
            let p: &mut FExit = program.try_into().map_err(kernel)?;
            p.load(function, btf).and_then(|()| p.attach().map(drop))
        }
        Hook::KProbe(function) | Hook::KRetProbe(function) => {
            let p: &mut KProbe = program.try_into().map_err(kernel)?;
            p.load().and_then(|()| p.attach(function, 0).map(drop))
        }
        Hook::TpBtf(tracepoint) => {
            let btf = need_btf()?;
            let p: &mut BtfTracePoint = program.try_into().map_err(kernel)?;
            p.load(tracepoint, btf).and_then(|()| p.attach().map(drop))
        }
    };
    result.map_err(kernel)
}

/// The kernel's refusal as a typed error: the OS error code decides the hint.
fn kernel_error(hook: Hook, e: &ProgramError) -> AttachError {
    let errno = os_error(e).and_then(io::Error::raw_os_error);
    let refused = matches!(errno, Some(libc::EPERM) | Some(libc::EACCES));
    let perf_event = matches!(e, ProgramError::SyscallError(s) if s.call == "perf_event_open");
    let missing = caps::missing_for_loading();
    let hint = if refused && !missing.is_empty() {
        format!(" (missing capability {})", missing.join(", "))
    } else if refused && perf_event && !caps::has(caps::CAP_SYS_ADMIN) {
        perf_paranoid_hint()
    } else {
        String::new()
    };
    AttachError::Kernel {
        hook,
        detail: describe(e),
        errno,
        hint,
    }
}

/// The first OS error in an error's source chain.
pub fn os_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        next = err.source();
    }
    None
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

/// An error and its sources on one line. A verifier rejection (aya's typed
/// `LoadError`) is shown as the syscall's error and the verifier's last line;
/// the whole log goes to the debug log.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(ProgramError::LoadError { io_error, verifier_log }) = e.downcast_ref::<ProgramError>() {
        return describe_load(io_error, &verifier_log.to_string());
    }
    if let Some(aya::EbpfError::ProgramError(ProgramError::LoadError { io_error, verifier_log })) =
        e.downcast_ref::<aya::EbpfError>()
    {
        return describe_load(io_error, &verifier_log.to_string());
    }
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out.lines().next().unwrap_or_default().trim().to_string()
}

fn describe_load(io_error: &io::Error, log: &str) -> String {
    let head = format!("the BPF_PROG_LOAD syscall returned {io_error}");
    log::debug!("verifier log:\n{log}");
    // The error is the last line before the verifier's statistics.
    let last = log
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        });
    match last {
        Some(last) => format!("{head} (verifier: {last})"),
        None => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexpected_tracepoint_signature_keeps_its_modes_off() {
        use crate::kernel::btf::{Btf, KIND_STRUCT, tests::Builder};
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
        let tp_mode = Family::MmapLockHost.mode("mmap_lock_tp").unwrap();
        assert_eq!(
            ready(tp_mode, &layout).unwrap_err().to_string(),
            "struct mm_struct has no field mmap_lock in BTF"
        );
        let remote_tp = Family::MmapLockRemote.mode("mmap_lock_tp").unwrap();
        assert_eq!(
            ready(remote_tp, &layout).unwrap_err().to_string(),
            "unexpected mmap_lock tracepoint signature (bool args at [1] and [1])"
        );
        // And no program of any mode is for such a kernel.
        assert_eq!(programs(remote_tp, &layout).count(), 0);
    }

    #[test]
    fn os_errors_are_found_in_the_source_chain() {
        let e = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "perf_event_open",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        });
        let hook = Hook::KProbe("f");
        match kernel_error(hook, &e) {
            AttachError::Kernel { errno, .. } => assert_eq!(errno, Some(libc::EPERM)),
            other => panic!("{other:?}"),
        }
    }
}
