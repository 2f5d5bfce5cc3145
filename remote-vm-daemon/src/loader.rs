//! Loads the embedded eBPF object with the running kernel's layout patched in,
//! attaches every family it can, runs the start-up probe read that tells whether
//! the kernel has the lockless path, and hands out the maps the exporter reads.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{Array, MapData, PerCpuArray},
};
use remote_vm_common::{Control, Point, SelfTest, UNKNOWN_OFFSET, stats::Stats};

use crate::{
    btf,
    layout::Layout,
    misses,
    probes::{self, Choice, Verdict},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remote-vm"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read BTF from {path}: {reason}")]
    Btf { path: String, reason: String },
    #[error("cannot load the eBPF object: {reason}{hint}")]
    Object { reason: String, hint: String },
    #[error("the eBPF object has no map {0}")]
    Map(&'static str),
}

/// Whether the kernel runs the lockless read path, decided by the kernel itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patched {
    Yes,
    No,
    Unknown,
}

impl Patched {
    pub fn as_str(self) -> &'static str {
        match self {
            Patched::Yes => "yes",
            Patched::No => "no",
            Patched::Unknown => "unknown",
        }
    }
}

/// Everything that stays alive while the probes are attached.
pub struct Loaded {
    /// Owns the programs and their links; dropping it detaches everything.
    pub ebpf: Ebpf,
    /// The eBPF programs' log records, until `forward_logs` hands them to a thread.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub verdicts: Vec<Verdict>,
    pub layout: Layout,
    pub patched: Patched,
    /// How `patched` was decided, for `check` and /healthz.
    pub patched_why: String,
    hits: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, Stats>,
    /// Per point: the program fds whose recursion misses count there, and the
    /// kprobe links whose `missed` does.
    miss_sources: BTreeMap<Point, (Vec<OwnedFd>, Vec<OwnedFd>)>,
}

pub struct LoadOptions<'a> {
    pub btf_path: Option<&'a Path>,
    pub log_level: log::LevelFilter,
    /// Per family (by name): how to attach it.
    pub choices: &'a BTreeMap<String, Choice>,
}

/// Reads the BTF the daemon should use: `--btf PATH`, else the kernel's own, else
/// none. Returns aya's view (for loading programs) and ours (for the layout).
pub fn read_btf(btf_path: Option<&Path>) -> Result<Option<(Btf, btf::Btf)>, LoadError> {
    let path = btf_path.unwrap_or(Path::new(crate::kernel::SYS_BTF));
    let bad = |reason: String| LoadError::Btf {
        path: path.display().to_string(),
        reason,
    };
    if btf_path.is_none() && !path.exists() {
        log::warn!("no kernel BTF at {}; only kprobes can attach (see --btf)", path.display());
        return Ok(None);
    }
    let ours = btf::Btf::from_file(path).map_err(bad)?;
    let theirs = Btf::parse_file(path, Endianness::default()).map_err(|e| bad(probes::describe(e)))?;
    Ok(Some((theirs, ours)))
}

pub fn load(opts: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    raise_memlock_limit();
    let btfs = read_btf(opts.btf_path)?;
    let layout = match &btfs {
        Some((_, ours)) => Layout::from_btf(ours),
        None => Layout::without_btf(),
    };
    let btf = btfs.as_ref().map(|(theirs, _)| theirs);
    let level = aya_log_level(opts.log_level);
    let off = |item: &Result<u64, String>| *item.as_ref().unwrap_or(&UNKNOWN_OFFSET);
    let (fw_pmd, fw_pud) = layout.fw_levels.clone().unwrap_or((1, 2));
    let foll_anon = layout.foll_anon.clone().unwrap_or(0);
    let globals = [
        ("MM_MMAP_LOCK_OFF", off(&layout.mm_mmap_lock)),
        ("TASK_MM_OFF", off(&layout.task_mm)),
        ("FW_PAGE_OFF", off(&layout.fw_page)),
        ("FW_LEVEL_OFF", off(&layout.fw_level)),
        ("VMA_VM_OPS_OFF", off(&layout.vma_vm_ops)),
    ];
    let globals32 = [
        ("FW_LEVEL_PMD", fw_pmd),
        ("FW_LEVEL_PUD", fw_pud),
        ("FOLL_WRITE", layout.foll_write),
        ("FOLL_ANON", foll_anon),
    ];
    let mut loader = EbpfLoader::new();
    loader
        .btf(btf)
        .allow_unsupported_maps()
        .override_global(aya_log::LEVEL, &level, false);
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    for (name, value) in &globals32 {
        loader.override_global(name, value, true);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| LoadError::Object {
        reason: probes::describe(&e),
        hint: privilege_hint(),
    })?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::warn!("eBPF log messages will not be shown: {}", probes::describe(e));
            None
        }
    };
    let mut verdicts: Vec<Verdict> = Vec::new();
    for family in probes::FAMILIES {
        let choice = opts.choices.get(family.name).cloned().unwrap_or_default();
        let verdict = probes::attach(&mut ebpf, btf, &layout, family, &choice, &verdicts);
        verdicts.push(verdict);
    }
    let miss_sources = miss_sources(&ebpf, &verdicts);
    let hits = PerCpuArray::try_from(ebpf.take_map("HITS").ok_or(LoadError::Map("HITS"))?)
        .map_err(|_| LoadError::Map("HITS"))?;
    let stats = PerCpuArray::try_from(ebpf.take_map("STATS").ok_or(LoadError::Map("STATS"))?)
        .map_err(|_| LoadError::Map("STATS"))?;
    let mut loaded = Loaded {
        ebpf,
        logger,
        verdicts,
        layout,
        patched: Patched::Unknown,
        patched_why: String::new(),
        hits,
        stats,
        miss_sources,
    };
    let (patched, why) = loaded.decide_patched();
    loaded.patched = patched;
    loaded.patched_why = why;
    Ok(loaded)
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
            if let Ok((id, _)) = misses::prog_id_and_misses(fd.as_raw_fd()) {
                if matches!(spec.hook, probes::Hook::KProbe(_) | probes::Hook::KRetProbe(_)) {
                    kprobe_ids.push((id, spec.point));
                }
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

impl Loaded {
    /// Starts the thread that forwards the eBPF programs' log records into ours
    /// (after any privilege drop: threads inherit the capabilities of their creator).
    pub fn forward_logs(&mut self) {
        if let Some(logger) = self.logger.take() {
            crate::logging::forward_ebpf_logs(logger);
        }
    }

    /// Hits of `point` summed over CPUs.
    pub fn hits(&self, point: Point) -> u64 {
        self.hits
            .get(&point.index(), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Runs of `point`'s programs the kernel reports as missed.
    pub fn kernel_misses(&self, point: Point) -> u64 {
        let Some((progs, links)) = self.miss_sources.get(&point) else {
            return 0;
        };
        let recursion: u64 = progs
            .iter()
            .filter_map(|fd| misses::prog_id_and_misses(fd.as_raw_fd()).ok())
            .map(|(_, m)| m)
            .sum();
        let kprobe: u64 = links.iter().filter_map(misses::link_missed).sum();
        recursion + kprobe
    }

    /// Kprobe links whose `missed` counts toward `point`.
    pub fn kprobe_links(&self, point: Point) -> usize {
        self.miss_sources.get(&point).map_or(0, |(_, links)| links.len())
    }

    /// Every CPU's `Stats` summed.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::ZERO;
        if let Ok(per_cpu) = self.stats.get(&0, 0) {
            for s in per_cpu.iter() {
                for (t, v) in total.counters.iter_mut().zip(s.counters.iter()) {
                    *t += v;
                }
                for (th, h) in total.hists.iter_mut().zip(s.hists.iter()) {
                    for (tb, b) in th.buckets.iter_mut().zip(h.buckets.iter()) {
                        *tb += b;
                    }
                    th.sum = th.sum.wrapping_add(h.sum);
                }
            }
        }
        total
    }

    /// (probes attached, probes known).
    pub fn probe_counts(&self) -> (usize, usize) {
        let points = |v: &&Verdict| v.family.points.len();
        (
            self.verdicts.iter().filter(|v| v.attached()).map(|v| points(&v)).sum(),
            self.verdicts.iter().map(|v| points(&v)).sum(),
        )
    }

    pub fn verdict(&self, family: &str) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| v.family.name == family)
    }

    pub fn attached(&self, family: &str) -> bool {
        self.verdict(family).is_some_and(Verdict::attached)
    }

    /// "no" when the kernel lacks the lockless path's functions; otherwise the
    /// kernel decides: read one resident page of our own memory through
    /// `/proc/self/mem` and see whether the lockless loop ran. That read is kept
    /// out of every counter (`CONTROL.selftest_tid`).
    fn decide_patched(&mut self) -> (Patched, String) {
        if !self.layout.has_lockless_path() {
            return (
                Patched::No,
                format!(
                    "the kernel has no lockless read path (lock_vma_under_rcu={}, folio_walk_start={})",
                    self.layout.has_lock_vma_under_rcu, self.layout.has_folio_walk_start
                ),
            );
        }
        for family in ["access_remote_vm", "lock_vma_under_rcu"] {
            if !self.attached(family) {
                return (Patched::Unknown, format!("probe family {family} is not attached"));
            }
        }
        match self.probe_read() {
            Ok(t) if t.calls == 0 => (
                Patched::Unknown,
                "the probe read of /proc/self/mem was not seen by the access probes".into(),
            ),
            Ok(t) if t.lockless > 0 => (
                Patched::Yes,
                format!("a read of a resident page of /proc/self/mem ran the lockless loop ({} lockless walk)", t.walks),
            ),
            Ok(_) => (
                Patched::No,
                "a read of a resident page of /proc/self/mem did not run the lockless loop".into(),
            ),
            Err(e) => (Patched::Unknown, format!("probe read failed: {e}")),
        }
    }

    fn probe_read(&mut self) -> Result<SelfTest, String> {
        let tid = unsafe { libc::gettid() } as u32;
        let mut control: Array<_, Control> =
            Array::try_from(self.ebpf.map_mut("CONTROL").ok_or("no CONTROL map")?).map_err(|e| e.to_string())?;
        control
            .set(0, Control { selftest_tid: tid, _pad: 0 }, 0)
            .map_err(|e| e.to_string())?;
        // One resident page of our own: written, so present.
        let page = vec![0x5au8; 4096];
        let addr = page.as_ptr() as u64;
        let result = (|| {
            use std::os::unix::fs::FileExt;
            let mem = std::fs::File::open("/proc/self/mem").map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            mem.read_at(&mut buf, addr).map_err(|e| e.to_string())?;
            if buf != [0x5a; 64] {
                return Err("read back different bytes".to_string());
            }
            Ok(())
        })();
        control
            .set(0, Control::default(), 0)
            .map_err(|e| e.to_string())?;
        drop(page);
        result?;
        let selftest: Array<_, SelfTest> =
            Array::try_from(self.ebpf.map("SELFTEST").ok_or("no SELFTEST map")?).map_err(|e| e.to_string())?;
        selftest.get(&0, 0).map_err(|e| e.to_string())
    }
}

/// aya-log's level numbering (Error = 1 … Trace = 5); 0 disables everything.
fn aya_log_level(level: log::LevelFilter) -> u8 {
    level as usize as u8
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

    #[test]
    fn every_registered_program_is_in_the_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("parse the embedded object");
        for family in probes::FAMILIES {
            for mode in family.modes.iter().chain(family.opt_in) {
                for spec in mode.programs {
                    assert!(obj.programs.contains_key(spec.program), "{} missing", spec.program);
                }
            }
        }
        for map in ["HITS", "STATS", "CONTROL", "SELFTEST", "CALLS", "WAITS", "AYA_LOGS"] {
            assert!(obj.maps.contains_key(map), "map {map} missing");
        }
    }
}
