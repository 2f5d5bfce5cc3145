//! Stage 2, the BPF object: loads the embedded object with the kernel's layout
//! patched in as globals, attaches every family the config allows, runs the
//! start-up probe read that decides `patched`, and reads the maps on scrape.
pub mod attach;
#[cfg(test)]
mod bucket_check;
mod misses;
#[cfg(test)]
mod object_check;
pub mod runstats;
mod selftest;
mod session;
pub mod waits;

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
};
use remote_vm_common::{Family, Point, UNKNOWN_OFFSET, classify::ReadPath};

pub use self::{
    attach::{AttachError, Choice, Verdict},
    selftest::Patched,
    session::{Session, Snapshot},
};
use crate::kernel::{Kernel, Layout};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remote-vm"));

/// The maps user space reads.
const HITS: &str = "HITS";
const STATS: &str = "STATS";
const STALL_EVENTS: &str = "STALL_EVENTS";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// aya refused the object (a map or program the kernel would not take).
    #[error("cannot load the eBPF object: {}{hint}", attach::describe(.source.as_ref()))]
    Object {
        #[source]
        source: Box<aya::EbpfError>,
        hint: String,
    },
    #[error("the eBPF object has no map {0}")]
    Map(&'static str),
}

/// What the attach stage decided; fixed for the daemon's life.
#[derive(Debug, Clone)]
pub struct Attached {
    pub verdicts: Vec<Verdict>,
    pub patched: Patched,
    /// How `patched` was decided, for `check` and /healthz.
    pub patched_why: String,
    /// Which version of the series the kernel behaves as, and how that was decided.
    pub series: remote_vm_common::series::Series,
    pub series_why: String,
    /// Per point: kprobe links whose `missed` the kernel keeps (kprobe modes).
    pub kprobe_links: BTreeMap<Point, usize>,
    /// Waits in progress are reported (the task iterator runs), or why not.
    pub waits: Result<(), String>,
}

impl Attached {
    pub fn verdict(&self, family: Family) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| v.family == family)
    }

    pub fn attached(&self, family: Family) -> bool {
        self.verdict(family).is_some_and(Verdict::attached)
    }

    /// (probes attached, probes known).
    pub fn probe_counts(&self) -> (usize, usize) {
        let points = |v: &&Verdict| v.family.spec().points.len();
        (
            self.verdicts.iter().filter(|v| v.attached()).map(|v| points(&v)).sum(),
            self.verdicts.iter().filter(|v| v.wanted()).map(|v| points(&v)).sum(),
        )
    }
}

pub struct LoadOptions<'a> {
    pub log_level: log::LevelFilter,
    /// A remote wait at least this long is a stall.
    pub stall_threshold_ns: u64,
    /// `[stalls] kernel_stacks`.
    pub kernel_stacks: bool,
    /// Per family: how to attach it.
    pub choices: &'a BTreeMap<Family, Choice>,
}

/// A global's name in the object and its value.
type Global<T> = (&'static str, T);

/// The offsets and values from `layout` (and the stall threshold) the programs
/// read as globals, by their names in `remote-vm-ebpf/src/programs/layout.rs`.
fn globals(layout: &Layout, stall_threshold_ns: u64) -> (Vec<Global<u64>>, Vec<Global<u32>>) {
    let off = |item: &Result<u64, String>| *item.as_ref().unwrap_or(&UNKNOWN_OFFSET);
    let (fw_pmd, fw_pud) = layout.fw_levels.clone().unwrap_or((1, 2));
    let mut globals64 = vec![
        ("MM_MMAP_LOCK_OFF", off(&layout.mm_mmap_lock)),
        ("TASK_MM_OFF", off(&layout.task_mm)),
        ("FW_PAGE_OFF", off(&layout.fw_page)),
        ("FW_LEVEL_OFF", off(&layout.fw_level)),
        ("VMA_VM_OPS_OFF", off(&layout.vma_vm_ops)),
        ("VMA_VM_END_OFF", off(&layout.vma_vm_end)),
        ("STALL_THRESHOLD_NS", stall_threshold_ns),
    ];
    globals64.extend(layout.stall_ids.named().iter().map(|(global, _, item)| (*global, off(item))));
    (
        globals64,
        vec![
            ("FW_LEVEL_PMD", fw_pmd),
            ("FW_LEVEL_PUD", fw_pud),
            ("FOLL_WRITE", layout.foll_write),
            ("FOLL_ANON", layout.foll_anon.clone().unwrap_or(0)),
            ("RWSEM_WAITING_FOR_WRITE", layout.stall_ids.waiting_for_write.clone().unwrap_or(u32::MAX)),
            ("SYSCALL_PTRACE", SYSCALLS.ptrace),
        ],
    )
}

/// This architecture's system call numbers that tell `mem` from `ptrace`
/// (the `SYSCALL_PTRACE` and `SYSCALLS_MEM` globals).
const SYSCALLS: remote_vm_common::Syscalls = {
    const fn nr(n: libc::c_long) -> u32 {
        n as u32
    }
    remote_vm_common::Syscalls {
        ptrace: nr(libc::SYS_ptrace),
        mem: [
            nr(libc::SYS_read),
            nr(libc::SYS_write),
            nr(libc::SYS_pread64),
            nr(libc::SYS_pwrite64),
            nr(libc::SYS_readv),
            nr(libc::SYS_writev),
            nr(libc::SYS_preadv),
            nr(libc::SYS_pwritev),
            nr(libc::SYS_preadv2),
            nr(libc::SYS_pwritev2),
        ],
    }
};

pub fn load(kernel: &Kernel, opts: &LoadOptions<'_>) -> Result<(Session, Attached), LoadError> {
    raise_memlock_limit();
    let level = opts.log_level as usize as u8; // aya-log: Error = 1 … Trace = 5; 0 off
    let (globals64, globals32) = globals(&kernel.layout, opts.stall_threshold_ns);
    let mut loader = EbpfLoader::new();
    loader
        .btf(kernel.btf.as_ref())
        .allow_unsupported_maps()
        .override_global(aya_log::LEVEL, &level, false);
    for (name, value) in &globals64 {
        loader.override_global(name, value, true);
    }
    for (name, value) in &globals32 {
        loader.override_global(name, value, true);
    }
    loader.override_global("SYSCALLS_MEM", &SYSCALLS.mem, true);
    let syscall_ops = crate::kernel::syscalls::ops();
    loader.override_global("SYSCALL_OPS", &syscall_ops, true);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| LoadError::Object {
        source: Box::new(e),
        hint: privilege_hint(),
    })?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::warn!("eBPF log messages will not be shown: {}", attach::describe(&e));
            None
        }
    };
    // Until the start-up probe read decides, a read whose loop's first step is
    // not probed is classified only on evidence (see `ReadPath`).
    selftest::set_read_path(&mut ebpf, if kernel.layout.has_lockless_path() { ReadPath::Pending } else { ReadPath::NoLockless });
    let mut verdicts: Vec<Verdict> = Vec::new();
    for family in Family::ALL {
        let choice = opts.choices.get(&family).cloned().unwrap_or_default();
        let verdict = attach::attach(&mut ebpf, kernel.btf.as_ref(), &kernel.layout, family, &choice, &verdicts);
        verdicts.push(verdict);
    }
    let from_contention = verdicts.iter().any(|v| v.mode.is_some_and(|m| m.waits_from_contention));
    if let Err(e) = selftest::set_remote_waits_from_contention(&mut ebpf, from_contention) {
        log::warn!("cannot write the remote waits' mode to the CONTROL map ({e}): uncontended acquisitions are not counted");
    }
    let miss_sources = miss_sources(&ebpf, &verdicts);
    let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(LoadError::Map(name));
    let hits = PerCpuArray::try_from(take(&mut ebpf, HITS)?).map_err(|_| LoadError::Map(HITS))?;
    let stats = PerCpuArray::try_from(take(&mut ebpf, STATS)?).map_err(|_| LoadError::Map(STATS))?;
    let kprobe_links = miss_sources.iter().map(|(p, (_, links))| (*p, links.len())).collect();
    let stall_events = match ebpf.take_map(STALL_EVENTS).map(aya::maps::RingBuf::try_from) {
        Some(Ok(ring)) => Some(ring),
        _ => {
            log::warn!("no stall events: the eBPF object's {STALL_EVENTS} ring buffer could not be opened");
            None
        }
    };
    let mut session = Session {
        ebpf,
        logger,
        hits,
        stats,
        miss_sources,
        stall_events,
        waits: None,
        stacks: None,
        pending_stacks: Err("not loaded".into()),
        wait_begun: None,
        run_stats: runstats::RunStats::enable(false),
    };
    let decision = selftest::decide_patched(&mut session.ebpf, &kernel.layout, &verdicts);
    // After the probe read: it tells whether this process is in the initial
    // PID namespace (its thread id there against its own gettid()).
    let attached = |f: Family| verdicts.iter().any(|v| v.family == f && v.attached());
    // SAFETY: no preconditions.
    let own_tid = unsafe { libc::gettid() } as u32;
    let waits = if attached(Family::AccessRemoteVm) && attached(Family::MmapLockRemote) {
        waits::WaitsIter::attach(&mut session.ebpf, kernel.btf.as_ref(), decision.host_tid.map(|h| h != own_tid))
    } else {
        Err(format!("needs {} and {}", Family::AccessRemoteVm.name(), Family::MmapLockRemote.name()))
    };
    let waits_why = waits.as_ref().map(|_| ()).map_err(Clone::clone);
    // Holders' stacks: only where waits are seen, asked for, and the unwinder
    // is reliable; the iterator is attached here (it needs the BTF), the
    // symbols are read by `Session::start_stacks` once the BTF is dropped.
    let nested = decision.host_tid.map(|h| h != own_tid);
    session.pending_stacks = match (&waits_why, &kernel.layout.unwinder) {
        (Err(why), _) => Err(format!("no waits in progress ({why})")),
        _ if !opts.kernel_stacks => Err("off ([stalls] kernel_stacks = false)".to_string()),
        (_, Ok(u)) if !u.reliable() => Err(format!("unwinder unreliable ({})", u.label())),
        (_, Err(why)) => Err(format!("unwinder unknown ({why})")),
        _ => (|| {
            let iter = waits::TaskIter::attach(&mut session.ebpf, kernel.btf.as_ref(), nested, crate::stacks::PROGRAM)?;
            let map = session.ebpf.take_map(crate::stacks::WANTED).ok_or("no STACK_WANTED map")?;
            let wanted = aya::maps::HashMap::try_from(map).map_err(|e| format!("STACK_WANTED: {e}"))?;
            Ok((iter, wanted))
        })(),
    };
    session.wait_begun = match session.ebpf.take_map(crate::stacks::WAIT_BEGUN).map(aya::maps::RingBuf::try_from) {
        Some(Ok(ring)) => Some(ring),
        _ => None,
    };
    session.waits = waits.ok();
    let (patched, patched_why) = (decision.patched, decision.why);
    Ok((
        session,
        Attached {
            verdicts,
            patched,
            patched_why,
            series: decision.series,
            series_why: decision.series_why,
            kprobe_links,
            waits: waits_why,
        },
    ))
}

/// For each attached program: its fd (recursion misses) and, in kprobe modes,
/// its link (kprobe `missed`), grouped by the point they serve.
fn miss_sources(ebpf: &Ebpf, verdicts: &[Verdict]) -> BTreeMap<Point, (Vec<OwnedFd>, Vec<OwnedFd>)> {
    let mut by_point: BTreeMap<Point, (Vec<OwnedFd>, Vec<OwnedFd>)> = BTreeMap::new();
    let mut kprobe_ids: Vec<(u32, Point)> = Vec::new();
    for v in verdicts {
        let Some(mode) = v.mode else { continue };
        for spec in mode.programs {
            let Some(fd) = ebpf
                .program(spec.program)
                .and_then(|p| p.fd().ok())
                .and_then(|fd| fd.as_fd().try_clone_to_owned().ok())
            else {
                continue;
            };
            if let Ok(id) = misses::prog_id(fd.as_raw_fd())
                && spec.hook.is_kprobe() {
                    kprobe_ids.push((id, spec.point));
                }
            by_point.entry(spec.point).or_default().0.push(fd);
        }
    }
    if !kprobe_ids.is_empty() {
        let ids: Vec<u32> = kprobe_ids.iter().map(|(id, _)| *id).collect();
        for (prog_id, fd) in misses::kprobe_links(&ids) {
            if let Some((_, point)) = kprobe_ids.iter().find(|(id, _)| *id == prog_id) {
                by_point.entry(*point).or_default().1.push(fd);
            }
        }
    }
    by_point
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); not needed on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}

/// Names the capabilities loading needs when the effective set lacks them.
fn privilege_hint() -> String {
    let missing = crate::caps::missing_for_loading();
    if missing.is_empty() {
        String::new()
    } else {
        format!(
            " (missing capability {}; run as root or grant CAP_BPF and CAP_PERFMON)",
            missing.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bounds check LLVM keeps becomes a call to `panic_bounds_check` (a
    /// function that ends in a call): Linux 6.1 refuses every program that
    /// reaches it ("last insn is not an exit or jmp"), newer kernels load it.
    #[test]
    fn no_panic_path_is_in_the_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("parse the embedded object");
        let panics: Vec<&str> = obj.functions.values().map(|f| f.name.as_str()).filter(|n| n.contains("panic")).collect();
        assert!(panics.is_empty(), "panic paths in the eBPF object: {panics:?}");
    }

    #[test]
    fn every_registered_program_map_and_global_is_in_the_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("parse the embedded object");
        for family in Family::ALL {
            for mode in family.modes() {
                for spec in mode.programs {
                    assert!(obj.programs.contains_key(spec.program), "{} missing", spec.program);
                }
            }
        }
        assert!(obj.programs.contains_key(waits::PROGRAM), "{} missing", waits::PROGRAM);
        assert!(obj.programs.contains_key(crate::stacks::PROGRAM), "{} missing", crate::stacks::PROGRAM);
        for map in [HITS, STATS, STALL_EVENTS, "CONTROL", "SELFTEST", "CALLS", "WAITS", "AYA_LOGS"]
            .into_iter()
            .chain([crate::stacks::WANTED, crate::stacks::WAIT_BEGUN, "STACK_SCRATCH"])
        {
            assert!(obj.maps.contains_key(map), "map {map} missing");
        }
        let (g64, g32) = globals(&Layout::without_btf(), 1);
        // The symbol names are NUL-terminated in the object's string table.
        for name in g64.iter().map(|g| g.0).chain(g32.iter().map(|g| g.0)).chain(["SYSCALLS_MEM"]) {
            let symbol = [name.as_bytes(), b"\0"].concat();
            assert!(EBPF_OBJECT.windows(symbol.len()).any(|w| w == symbol), "global {name} missing");
        }
    }
}
