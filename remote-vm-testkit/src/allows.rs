//! What the running kernel allows, found without the daemon: the tests load a
//! trivial fentry program and a trivial kprobe program themselves (raw
//! `bpf()` and `perf_event_open()`), read which functions exist from
//! /proc/kallsyms and which tracepoints from the kernel's BTF (aya's reader,
//! not the daemon's), and derive from that and the probe registry what the
//! daemon must attach. The host integration tests expect that, on any kernel,
//! instead of one machine's verdicts.
use std::{collections::HashSet, io, os::fd::FromRawFd};

use remote_vm_common::registry::{Family, Hook, ModeSpec};

/// The function the trial programs attach to: in every kernel the daemon
/// supports (the remote read's own mmap_lock acquisition).
const TRIAL_FUNCTION: &str = "down_read_killable";
const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Why the kernel refused a trial program, as the daemon would word it.
#[derive(Debug)]
pub enum Refusal {
    /// `BPF_PROG_LOAD` failed.
    Load(io::Error),
    /// The kprobe PMU cannot be found (kprobes compiled out).
    Pmu(io::Error),
    /// Loaded, but attaching failed.
    Attach(io::Error),
    /// Something before the kernel was asked (no BTF, no such function).
    Other(String),
}

impl Refusal {
    /// The daemon's reason for a program with `hook` refused the same way:
    /// exact for a refused load and a missing PMU, else `None` (the test
    /// then checks only that a reason is given).
    fn reason(&self, hook: &Hook) -> Option<String> {
        let head = format!("{} {}", hook.kind(), hook.target());
        match self {
            Refusal::Load(e) => Some(format!("{head}: the BPF_PROG_LOAD syscall returned {e}")),
            Refusal::Pmu(e) => Some(format!("{head}: `{KPROBE_PMU_TYPE}`: {e}")),
            Refusal::Attach(_) | Refusal::Other(_) => None,
        }
    }
}

/// What the running kernel allows.
#[derive(Debug)]
pub struct Allows {
    pub fentry: Result<(), Refusal>,
    pub kprobe: Result<(), Refusal>,
    functions: HashSet<String>,
    tracepoints: HashSet<String>,
    /// A PREEMPT_RT kernel (`uname -v`): its rw_semaphore wraps an rtmutex,
    /// which the lock's contention events name (`Need::RwsemCountWord` fails).
    preempt_rt: bool,
}

/// What `check` must say of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub probe: &'static str,
    /// The mode that attaches, or `None`.
    pub mode: Option<&'static ModeSpec>,
    /// Where nothing attaches: the reasons, mode by mode, where the test can
    /// tell them exactly (`None`: only that there is one).
    pub reason: Option<String>,
    /// Counted in `check`'s "N of M probes": not an opt-in-only family.
    pub wanted: bool,
}

/// `check`'s "N of M probes attached": (attached, wanted).
pub fn probe_counts(expected: &[Expected]) -> (usize, usize) {
    (expected.iter().filter(|e| e.mode.is_some()).count(), expected.iter().filter(|e| e.wanted).count())
}

impl Allows {
    /// What the running kernel allows, tried once per process (and said on stderr).
    pub fn of_this_kernel() -> &'static Allows {
        static ALLOWS: std::sync::OnceLock<Allows> = std::sync::OnceLock::new();
        ALLOWS.get_or_init(|| {
            let a = Allows::probe();
            eprintln!("this kernel allows: fentry {:?}, kprobe {:?}", a.fentry, a.kprobe);
            a
        })
    }

    /// Tries the trial programs (needs root) and reads the kernel's symbols.
    pub fn probe() -> Allows {
        let btf = aya_obj::btf::Btf::from_sys_fs().map_err(|e| e.to_string());
        let mut tracepoints = HashSet::new();
        if let Ok(btf) = &btf {
            for tp in ["contention_begin", "contention_end", "mmap_lock_start_locking", "mmap_lock_acquire_returned"] {
                if btf.id_by_type_name_kind(&format!("btf_trace_{tp}"), aya_obj::btf::BtfKind::Typedef).is_ok() {
                    tracepoints.insert(tp.to_string());
                }
            }
        }
        let fentry = match &btf {
            Ok(btf) => match btf.id_by_type_name_kind(TRIAL_FUNCTION, aya_obj::btf::BtfKind::Func) {
                Ok(id) => trial_fentry(id),
                Err(e) => Err(Refusal::Other(e.to_string())),
            },
            Err(e) => Err(Refusal::Other(format!("no kernel BTF: {e}"))),
        };
        Allows {
            fentry,
            kprobe: trial_kprobe(),
            functions: kallsyms(),
            tracepoints,
            preempt_rt: preempt_rt(),
        }
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains(name)
    }

    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.tracepoints.contains(name)
    }

    /// Whether the kernel has what a mode needs beyond its hooks (the test
    /// kernels all have the offsets; only the rwsem's layout differs).
    fn has(&self, need: remote_vm_common::registry::Need) -> bool {
        use remote_vm_common::registry::Need;
        match need {
            Need::RwsemCountWord => !self.preempt_rt,
            Need::MmMmapLock | Need::TaskMm | Need::MmapLockTracepointArgs => true,
        }
    }

    /// Why a program on `hook` would not attach (the daemon's words, where
    /// the test can tell them), or `Ok`.
    pub fn hook(&self, hook: &Hook) -> Result<(), Option<String>> {
        let (allowed, target) = match hook {
            Hook::FEntry(f) | Hook::FExit(f) => (&self.fentry, *f),
            Hook::KProbe(f) | Hook::KRetProbe(f) => (&self.kprobe, *f),
            Hook::TpBtf(t) => return if self.tracepoints.contains(*t) { Ok(()) } else { Err(None) },
        };
        if !self.has_function(target) {
            return Err(None);
        }
        allowed.as_ref().map(drop).map_err(|r| r.reason(hook))
    }

    /// Every probe in the registry's order with the mode it must attach in
    /// (the first default mode all of whose programs the kernel allows, for
    /// a family whose refined family attached), or why none.
    pub fn expected(&self) -> Vec<Expected> {
        let mut attached: Vec<Family> = Vec::new();
        let mut out = Vec::new();
        for family in Family::ALL {
            let spec = family.spec();
            let (mode, reason) = match spec.requires.filter(|r| !attached.contains(r)) {
                // Opt-in only: not tried, whatever else (the daemon's words for it are its own).
                _ if family.opt_in_only() => (None, None),
                Some(r) => (None, Some(format!("not tried: it only refines {}, which is not attached", r.name()))),
                None => {
                    let mut reasons = Some(Vec::new());
                    let mut found = None;
                    for m in spec.modes {
                        let ready = m.needs.iter().all(|n| self.has(*n));
                        match m.programs.iter().try_for_each(|p| self.hook(&p.hook)).and(if ready { Ok(()) } else { Err(None) }) {
                            Ok(()) => {
                                found = Some(m);
                                break;
                            }
                            Err(why) => match (why, reasons.as_mut()) {
                                (Some(why), Some(list)) => list.push(format!("{}: {why}", m.name)),
                                _ => reasons = None,
                            },
                        }
                    }
                    (found, if found.is_some() { None } else { reasons.map(|r| r.join("; ")) })
                }
            };
            if mode.is_some() {
                attached.push(family);
            }
            for point in spec.points {
                out.push(Expected { probe: point.name(), mode, reason: reason.clone(), wanted: !family.opt_in_only() });
            }
        }
        out
    }
}

/// Whether the running kernel is PREEMPT_RT (`uname -v`).
pub fn preempt_rt() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default().contains("PREEMPT_RT")
}

/// Every function name in /proc/kallsyms.
fn kallsyms() -> HashSet<String> {
    std::fs::read_to_string("/proc/kallsyms")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|s| s.to_string())
        .collect()
}

/// `r0 = 0; exit`.
static TRIVIAL: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
const BPF_PROG_LOAD: i64 = 5;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_TRACE_FEXIT: u32 = 25;
const PERF_FLAG_FD_CLOEXEC: u64 = 1 << 3;
/// `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: u64 = 0x4004_2408;

fn put32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn bpf(cmd: i64, attr: &mut [u8; 144]) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: a bpf_attr-sized buffer the kernel reads (and may write) within its size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor this owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = 0; exit` as `prog_type` (`union bpf_attr` for BPF_PROG_LOAD).
fn load(prog_type: u32, expected_attach_type: u32, attach_btf_id: u32) -> io::Result<std::os::fd::OwnedFd> {
    load_named(prog_type, expected_attach_type, attach_btf_id, "")
}

/// The same with a program name (at most 15 bytes: the kernel's).
fn load_named(prog_type: u32, expected_attach_type: u32, attach_btf_id: u32, name: &str) -> io::Result<std::os::fd::OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u8; 144];
    let name = &name.as_bytes()[..name.len().min(15)];
    attr[48..48 + name.len()].copy_from_slice(name);
    put32(&mut attr, 0, prog_type);
    put32(&mut attr, 4, 2);
    put64(&mut attr, 8, TRIVIAL.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 68, expected_attach_type);
    put32(&mut attr, 108, attach_btf_id);
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// A trivial fentry program on the trial function (BTF id `id`), loaded and
/// attached (`BPF_RAW_TRACEPOINT_OPEN` makes the trampoline), then closed.
fn trial_fentry(id: u32) -> Result<(), Refusal> {
    let prog = load(BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, id).map_err(Refusal::Load)?;
    raw_tracepoint_open(&prog).map(drop).map_err(Refusal::Attach)
}

/// Attaches a tracing program (fentry, fexit, tp_btf): the link.
fn raw_tracepoint_open(prog: &std::os::fd::OwnedFd) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = [0u8; 144];
    put32(&mut attr, 8, std::os::fd::AsRawFd::as_raw_fd(prog) as u32);
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// A `return 0` program attached on `hook` (fentry, fexit and tp_btf through
/// `BPF_RAW_TRACEPOINT_OPEN`, kprobes through the kprobe PMU): the cost of a
/// program there with nothing in it, the floor `bench --icount` measures the
/// daemon's programs against. Attached while the descriptors live.
pub fn attach_empty(btf: &aya_obj::btf::Btf, hook: &Hook) -> anyhow::Result<Vec<std::os::fd::OwnedFd>> {
    use anyhow::Context as _;
    let what = format!("an empty {} program on {}", hook.kind(), hook.target());
    // Its name in the kernel's statistics: `empty_` and the hook's kind.
    let name = format!("empty_{}", hook.kind());
    let tracing = |attach: u32, id: u32| -> anyhow::Result<Vec<std::os::fd::OwnedFd>> {
        let prog = load_named(BPF_PROG_TYPE_TRACING, attach, id, &name).with_context(|| format!("load {what}"))?;
        let link = raw_tracepoint_open(&prog).with_context(|| format!("attach {what}"))?;
        Ok(vec![link, prog])
    };
    let func = |f: &str| btf.id_by_type_name_kind(f, aya_obj::btf::BtfKind::Func).with_context(|| format!("{f}: not in the kernel's BTF"));
    match *hook {
        Hook::FEntry(f) => tracing(BPF_TRACE_FENTRY, func(f)?),
        Hook::FExit(f) => tracing(BPF_TRACE_FEXIT, func(f)?),
        Hook::TpBtf(t) => {
            let id = btf
                .id_by_type_name_kind(&format!("btf_trace_{t}"), aya_obj::btf::BtfKind::Typedef)
                .with_context(|| format!("tracepoint {t}: not in the kernel's BTF"))?;
            tracing(BPF_TRACE_RAW_TP, id)
        }
        Hook::KProbe(f) | Hook::KRetProbe(f) => {
            let prog = load_named(BPF_PROG_TYPE_KPROBE, 0, 0, &name).with_context(|| format!("load {what}"))?;
            let pmu = kprobe_pmu().with_context(|| format!("attach {what}"))?;
            let event = kprobe_event(pmu, f, matches!(hook, Hook::KRetProbe(_))).with_context(|| format!("attach {what}"))?;
            set_bpf(&event, &prog).with_context(|| format!("attach {what}"))?;
            Ok(vec![event, prog])
        }
    }
}

/// The kprobe PMU's type (`KPROBE_PMU_TYPE`; missing where kprobes are compiled out).
fn kprobe_pmu() -> io::Result<u32> {
    parse_pmu(&std::fs::read_to_string(KPROBE_PMU_TYPE)?)
}

fn parse_pmu(text: &str) -> io::Result<u32> {
    text.trim().parse().map_err(|e| io::Error::other(format!("{KPROBE_PMU_TYPE}: {e}")))
}

/// A kprobe (or, `ret`, kretprobe) perf event on `function` from the kprobe PMU `pmu`.
fn kprobe_event(pmu: u32, function: &str, ret: bool) -> io::Result<std::os::fd::OwnedFd> {
    // "config:N": the config bit that makes a kretprobe.
    let ret_bit = if ret {
        let f = std::fs::read_to_string("/sys/bus/event_source/devices/kprobe/format/retprobe")?;
        let bit: u32 = f.trim().trim_start_matches("config:").parse().map_err(io::Error::other)?;
        1u64 << bit
    } else {
        0
    };
    let func = std::ffi::CString::new(function).map_err(io::Error::other)?;
    // struct perf_event_attr: type, size, config, …, config1 (the function), config2 (the offset).
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, pmu);
    put32(&mut attr, 4, 128);
    put64(&mut attr, 8, ret_bit);
    put64(&mut attr, 56, func.as_ptr() as u64);
    // SAFETY: a perf_event_attr of the size it says; all CPUs of no task.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1, 0, -1, PERF_FLAG_FD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor this owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// `PERF_EVENT_IOC_SET_BPF`: runs `prog` on `event`'s hits.
fn set_bpf(event: &std::os::fd::OwnedFd, prog: &std::os::fd::OwnedFd) -> io::Result<()> {
    // SAFETY: PERF_EVENT_IOC_SET_BPF with a program descriptor.
    let r = unsafe {
        libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(event), PERF_EVENT_IOC_SET_BPF as _, std::os::fd::AsRawFd::as_raw_fd(prog))
    };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A kprobe on the trial function through the kprobe PMU
/// (`perf_event_open`), with a trivial kprobe program set on it, then closed.
fn trial_kprobe() -> Result<(), Refusal> {
    // In aya's order: the program is loaded first, the PMU read when it attaches.
    let prog = load(BPF_PROG_TYPE_KPROBE, 0, 0).map_err(Refusal::Load)?;
    let text = std::fs::read_to_string(KPROBE_PMU_TYPE).map_err(Refusal::Pmu)?;
    let pmu = parse_pmu(&text).map_err(|e| Refusal::Other(e.to_string()))?;
    let event = kprobe_event(pmu, TRIAL_FUNCTION, false).map_err(Refusal::Attach)?;
    set_bpf(&event, &prog).map_err(Refusal::Attach)
}
