//! Builds the metric families from the daemon's state on every scrape.
//!
//! Scraping reads BPF maps and `/proc/self/{stat,status,limits,fd}` only: never
//! another process's memory, so a scrape is never counted as a remote access.
//!
//! A family whose probes are not attached is absent, never zero: nothing reads
//! "0 % fast path" where the daemon cannot see. Where the kernel has no lockless
//! path at all, the families that depend on it are present and exact (there is
//! nothing to miss).
use remote_vm_common::{
    Point,
    classify::{Level, Path, Reason},
    stats::{Counter, Hist, Stats},
};

use crate::{
    kernel::KernelFacts,
    loader::Loaded,
    metrics::{Family, Kind, encode_all},
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct State {
    pub facts: KernelFacts,
    pub loaded: Loaded,
    /// Exported bucket range of the `_seconds` histograms (log2 of ns).
    pub hist_min_log2: u32,
    pub hist_max_log2: u32,
}

/// Which metric families the attached probes make exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sight {
    /// Reads by path, bytes, durations, writes: entry/exit, the target-lock
    /// probes, and the lockless loop's first step (unless the kernel has none).
    pub reads: bool,
    /// Fallback reasons and lockless bytes: also the walks.
    pub fallbacks: bool,
    /// The remote access's own lock waits, failures and hold times.
    pub remote_lock: bool,
    /// ... including its write-lock acquisitions (`expand_stack`).
    pub remote_writes: bool,
    pub host_lock: bool,
    /// Killed host-wide waiters: not in the mmap_lock tracepoint mode, which
    /// reports failed trylocks the same way.
    pub host_failures: bool,
    pub lock_vma: bool,
    pub gup: bool,
    /// FOLL_ANON gap: walks, `vm_area_struct.vm_ops` and `FOLL_ANON` from BTF.
    pub foll_anon: bool,
    /// Walk levels: `folio_walk.level` and the level values from BTF.
    pub walk_levels: bool,
}

impl Sight {
    pub fn of(loaded: &Loaded) -> Sight {
        let l = &loaded.layout;
        let lockless = l.has_lockless_path();
        let access = loaded.attached("access_remote_vm");
        let remote = loaded.attached("mmap_lock_remote");
        let lock_vma = loaded.attached("lock_vma_under_rcu");
        let walk = loaded.attached("folio_walk_start");
        let reads = access && remote && (!lockless || lock_vma);
        Sight {
            reads,
            fallbacks: reads && (!lockless || walk),
            remote_lock: access && remote,
            remote_writes: access
                && loaded
                    .verdict("mmap_lock_remote")
                    .and_then(|v| v.mode)
                    .is_some_and(|m| crate::probes::lock::remote_mode_sees_writes(m.name)),
            host_lock: loaded.attached("mmap_lock_host"),
            host_failures: loaded
                .verdict("mmap_lock_host")
                .is_some_and(|v| v.mode.is_some_and(|m| m.name == "contention_tp")),
            lock_vma: access && lock_vma,
            gup: reads && loaded.attached("get_user_pages_remote"),
            foll_anon: reads && walk && l.vma_vm_ops.is_ok() && l.foll_anon.is_ok(),
            walk_levels: reads && walk && l.fw_level.is_ok() && l.fw_levels.is_ok(),
        }
    }
}

pub fn families(state: &State) -> Vec<Family> {
    let mut out = Vec::new();
    let loaded = &state.loaded;

    let mut build = Family::new("remote_vm_build_info", Kind::Gauge, "remote-vm daemon build; always 1.");
    build.push(&[("version", VERSION)], 1u64);
    out.push(build);

    let f = &state.facts;
    let mut kernel = Family::new(
        "remote_vm_kernel_info",
        Kind::Gauge,
        "The running kernel: release, the config options the lockless remote-read path needs, and whether it runs that path (patched: decided by a probe read at start-up); always 1.",
    );
    kernel.push(
        &[
            ("release", &f.release),
            ("per_vma_lock", f.per_vma_lock.as_str()),
            ("rcu_table_free", f.rcu_table_free.as_str()),
            ("patched", loaded.patched.as_str()),
        ],
        1u64,
    );
    out.push(kernel);

    let stats = loaded.stats();
    out.extend(probe_families(loaded, &stats));
    out.extend(access_families(state, &stats, Sight::of(loaded)));
    out
}

/// `remote_vm_probe_attached` (every probe, `mode="none"` when not attached),
/// `remote_vm_probe_hits_total` and `remote_vm_probe_misses_total` (attached
/// probes only).
fn probe_families(loaded: &Loaded, stats: &Stats) -> Vec<Family> {
    let mut attached = Family::new(
        "remote_vm_probe_attached",
        Kind::Gauge,
        "1 if the probe is attached in the given mode; 0 with mode=\"none\" if no mode could attach (see /healthz or `check` for why).",
    );
    let mut hits = Family::new("remote_vm_probe_hits_total", Kind::Counter, "Times the probe's programs ran.");
    let mut misses = Family::new(
        "remote_vm_probe_misses_total",
        Kind::Counter,
        "Runs of the probe the kernel reports missed (program recursion, kprobe misses and kretprobe maxactive overflows), plus remote accesses seen without their entry or exit.",
    );
    for v in &loaded.verdicts {
        for point in v.family.points {
            attached.push(&[("probe", point.name()), ("mode", v.mode_name())], u64::from(v.attached()));
            if v.attached() {
                hits.push(&[("probe", point.name())], loaded.hits(*point));
                let seen = match point {
                    Point::AccessRemoteVmEntry => stats.counters[Counter::MissedEntries as usize],
                    Point::AccessRemoteVmExit => stats.counters[Counter::MissedExits as usize],
                    _ => 0,
                };
                misses.push(&[("probe", point.name())], loaded.kernel_misses(*point) + seen);
            }
        }
    }
    vec![attached, hits, misses]
}

fn c(stats: &Stats, counter: Counter) -> u64 {
    stats.counters[counter as usize]
}

/// The counter `offset` places after `base`: the counters of one kind (paths,
/// reasons, levels) are consecutive in `remote_vm_common::stats::Counter`.
fn c_at(stats: &Stats, base: Counter, offset: u32) -> u64 {
    stats.counters[base as usize + offset as usize]
}

fn hist_at(base: Hist, offset: u32) -> usize {
    base as usize + offset as usize
}

fn access_families(state: &State, stats: &Stats, sight: Sight) -> Vec<Family> {
    let (lo, hi) = (state.hist_min_log2, state.hist_max_log2);
    let mut out = Vec::new();
    let counter = |name, help, value| {
        let mut f = Family::new(name, Kind::Counter, help);
        f.push(&[], value);
        f
    };

    if sight.reads {
        let mut reads = Family::new(
            "remote_vm_reads_total",
            Kind::Counter,
            "Remote-memory reads (__access_remote_vm without FOLL_WRITE) by path: fast (no mmap_lock), fallback (lockless loop, then mmap_lock), slow (mmap_lock only).",
        );
        let mut bytes = Family::new("remote_vm_read_bytes_total", Kind::Counter, "Bytes returned by remote reads, by path.");
        let mut duration = Family::new(
            "remote_vm_read_duration_seconds",
            Kind::Histogram,
            "Duration of remote reads (__access_remote_vm entry to exit), by path.",
        );
        let mut vmas = Family::new(
            "remote_vm_read_vmas",
            Kind::Histogram,
            "VMAs locked by lock_vma_under_rcu() per remote read, by path (0 for reads with no lockless attempt).",
        );
        let mut multi = Family::new(
            "remote_vm_multi_vma_reads_total",
            Kind::Counter,
            "Remote reads that locked two or more VMAs in the lockless loop, by path.",
        );
        for path in Path::ALL {
            let p = path as u32;
            let l = [("path", path.label())];
            reads.push(&l, c_at(stats, Counter::ReadsFast, p));
            bytes.push(&l, c_at(stats, Counter::ReadBytesFast, p));
            duration.push_log2(&l, &stats.hists[hist_at(Hist::ReadDurationFast, p)], lo, hi, 1e9);
            vmas.push_log2(&l, &stats.hists[hist_at(Hist::ReadVmasFast, p)], 0, 6, 1.0);
            multi.push(&l, c_at(stats, Counter::MultiVmaReadsFast, p));
        }
        out.extend([reads, bytes, duration, vmas, multi]);
        out.push(counter(
            "remote_vm_writes_total",
            "Remote-memory writes (__access_remote_vm with FOLL_WRITE).",
            c(stats, Counter::Writes),
        ));
        out.push(counter(
            "remote_vm_written_bytes_total",
            "Bytes returned by remote writes.",
            c(stats, Counter::WrittenBytes),
        ));
        let mut wd = Family::new("remote_vm_write_duration_seconds", Kind::Histogram, "Duration of remote writes.");
        wd.push_log2(&[], &stats.hists[Hist::WriteDuration as usize], lo, hi, 1e9);
        out.push(wd);
        out.push(counter(
            "remote_vm_untracked_calls_total",
            "Remote accesses not classified because no per-thread state could be allocated.",
            c(stats, Counter::StateUnavailable),
        ));
    }

    if sight.fallbacks {
        let mut fb = Family::new(
            "remote_vm_fallbacks_total",
            Kind::Counter,
            "Fallback reads by the reason the lockless loop stopped.",
        );
        for reason in Reason::ALL {
            fb.push(&[("reason", reason.label())], c_at(stats, Counter::FallbackVmaLockFailed, reason as u32));
        }
        out.push(fb);
        out.push(counter(
            "remote_vm_fallback_lockless_bytes_total",
            "Bytes of fallback reads done by the lockless loop before it stopped (stop address - start address).",
            c(stats, Counter::FallbackLocklessBytes),
        ));
        out.push(counter(
            "remote_vm_lockless_bytes_discarded_total",
            "Bytes the lockless loop had copied that the call did not return (v1 returns 0 when the old path's vma_lookup/expand_stack fails).",
            c(stats, Counter::DiscardedBytes),
        ));
        out.push(counter(
            "remote_vm_lockless_discarded_reads_total",
            "Remote reads that returned fewer bytes than the lockless loop had copied.",
            c(stats, Counter::DiscardedReads),
        ));
    }

    if sight.walk_levels {
        let mut walks = Family::new(
            "remote_vm_folio_walks_total",
            Kind::Counter,
            "Successful lockless folio_walk_start() calls inside remote reads, by the level of the mapping found.",
        );
        for level in Level::ALL {
            walks.push(&[("level", level.label())], c_at(stats, Counter::FolioWalksPte, level as u32));
        }
        out.push(walks);
        out.push(counter(
            "remote_vm_lockless_pte_pages_total",
            "PTE-mapped pages read by the lockless loop, which (unlike the old path) does not folio_mark_accessed() them.",
            c(stats, Counter::FolioWalksPte),
        ));
    }

    if sight.foll_anon {
        out.push(counter(
            "remote_vm_foll_anon_file_backed_lockless_reads_total",
            "Remote reads with FOLL_ANON (cmdline, environ) in which a lockless walk succeeded in a VMA that is not anonymous, whether or not they fell back afterwards.",
            c(stats, Counter::FollAnonFileBackedLockless),
        ));
    }

    if sight.gup {
        let mut gup = Family::new(
            "remote_vm_gup_calls_total",
            Kind::Counter,
            "get_user_pages_remote() calls made by remote reads, by path.",
        );
        gup.push(&[("path", "fallback")], c(stats, Counter::GupCallsFallback));
        gup.push(&[("path", "slow")], c(stats, Counter::GupCallsSlow));
        out.push(gup);
    }

    if sight.remote_lock || sight.host_lock {
        let mut wait = Family::new(
            "remote_vm_mmap_lock_wait_seconds",
            Kind::Histogram,
            "mmap_lock acquisition waits, one observation per acquisition: context=\"remote_vm\" for a remote access's own acquisitions of the target's lock, \"host\" for host-wide contended waits on a thread's own mm.",
        );
        let mut failures = Family::new(
            "remote_vm_mmap_lock_acquire_failures_total",
            Kind::Counter,
            "mmap_lock acquisitions that failed (the waiter was killed), by context.",
        );
        for (context, seen, base, fail, failures_seen) in [
            ("remote_vm", sight.remote_lock, Hist::WaitRemoteRead, Counter::AcquireFailuresRemote, true),
            ("host", sight.host_lock, Hist::WaitHostRead, Counter::AcquireFailuresHost, sight.host_failures),
        ] {
            if !seen {
                continue;
            }
            for (mode, offset) in [("read", 0), ("write", 1)] {
                if context == "remote_vm" && mode == "write" && !sight.remote_writes {
                    continue;
                }
                wait.push_log2(
                    &[("context", context), ("mode", mode)],
                    &stats.hists[hist_at(base, offset)],
                    lo,
                    hi,
                    1e9,
                );
            }
            if failures_seen {
                failures.push(&[("context", context)], c(stats, fail));
            }
        }
        out.extend([wait, failures]);
    }

    if sight.remote_lock {
        let mut hold = Family::new(
            "remote_vm_mmap_lock_hold_seconds",
            Kind::Histogram,
            "Time from a remote access's first acquisition of the target's mmap_lock to the call's exit.",
        );
        hold.push_log2(&[], &stats.hists[Hist::Hold as usize], lo, hi, 1e9);
        out.push(hold);
    }

    if sight.lock_vma {
        let mut total = Family::new(
            "remote_vm_lock_vma_under_rcu_total",
            Kind::Counter,
            "lock_vma_under_rcu() calls: inside remote reads (context=\"remote_vm\") and elsewhere, mostly page faults (\"other\").",
        );
        let mut failed = Family::new(
            "remote_vm_lock_vma_under_rcu_failures_total",
            Kind::Counter,
            "lock_vma_under_rcu() calls that returned NULL, by context.",
        );
        total.push(&[("context", "remote_vm")], c(stats, Counter::LockVmaRemote));
        total.push(&[("context", "other")], c(stats, Counter::LockVmaOther));
        failed.push(&[("context", "remote_vm")], c(stats, Counter::LockVmaFailuresRemote));
        failed.push(&[("context", "other")], c(stats, Counter::LockVmaFailuresOther));
        out.extend([total, failed]);
    }
    out
}

/// One line per probe: its mode and whether it is exact, or `none` and why.
/// Used by `check` and `/healthz`.
pub fn verdict_lines(loaded: &Loaded) -> Vec<String> {
    let mut lines = Vec::new();
    for v in &loaded.verdicts {
        for point in v.family.points {
            lines.push(match v.mode {
                Some(mode) if mode.exact => format!("probe {}: {} (exact)", point.name(), mode.name),
                Some(mode) => {
                    let links = loaded.kprobe_links(*point);
                    let source = if links > 0 {
                        format!("the kernel counts them on {links} kprobe link(s)")
                    } else {
                        "this kernel keeps no kprobe miss counter (Linux < 6.7)".to_string()
                    };
                    format!(
                        "probe {}: {} (may miss events; see remote_vm_probe_misses_total: {source})",
                        point.name(),
                        mode.name
                    )
                }
                None => format!("probe {}: none ({})", point.name(), v.reason()),
            });
        }
    }
    lines
}

pub fn kernel_line(f: &KernelFacts) -> String {
    format!(
        "kernel: release={} btf={} per_vma_lock={} rcu_table_free={} config={}",
        f.release,
        f.btf,
        f.per_vma_lock,
        f.rcu_table_free,
        f.config_source.as_ref().map_or("unknown".to_string(), |p| p.display().to_string()),
    )
}

pub fn patched_line(loaded: &Loaded) -> String {
    format!("patched: {} ({})", loaded.patched.as_str(), loaded.patched_why)
}

/// Which metric families are exported and which are absent, and why.
pub fn sight_lines(loaded: &Loaded) -> Vec<String> {
    let s = Sight::of(loaded);
    [
        ("reads, writes, bytes, durations", s.reads, "needs access_remote_vm, mmap_lock_remote and lock_vma_under_rcu"),
        ("fallback reasons, lockless bytes", s.fallbacks, "needs the read probes and folio_walk_start"),
        ("remote mmap_lock wait and hold", s.remote_lock, "needs access_remote_vm and mmap_lock_remote"),
        ("remote mmap_lock write waits (expand_stack)", s.remote_writes, "needs mmap_lock_remote in an opt-in read+write mode (fentry_rw, kprobe_rw) or mmap_lock_tp"),
        ("host mmap_lock wait", s.host_lock, "needs mmap_lock_host"),
        ("lock_vma_under_rcu calls", s.lock_vma, "needs access_remote_vm and lock_vma_under_rcu"),
        ("GUP calls", s.gup, "needs the read probes and get_user_pages_remote"),
        ("folio walk levels, lockless PTE pages", s.walk_levels, "needs folio_walk_start and folio_walk.level in BTF"),
        ("FOLL_ANON file-backed lockless reads", s.foll_anon, "needs folio_walk_start, vm_area_struct.vm_ops and FOLL_ANON in BTF"),
    ]
    .iter()
    .map(|(what, seen, needs)| {
        if *seen {
            format!("metrics: {what}: exported")
        } else {
            format!("metrics: {what}: absent ({needs})")
        }
    })
    .collect()
}

/// The full /metrics body: our families, then the standard process metrics.
pub fn render(state: &State) -> String {
    let mut text = encode_all(&families(state));
    text.push_str(&process_metrics());
    text
}

fn process_metrics() -> String {
    use prometheus::Encoder;
    let registry = prometheus::Registry::new();
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    if registry.register(Box::new(collector)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_runs_are_consecutive() {
        assert_eq!(Counter::ReadsFast as u32 + Path::Slow as u32, Counter::ReadsSlow as u32);
        assert_eq!(Counter::ReadBytesFast as u32 + Path::Slow as u32, Counter::ReadBytesSlow as u32);
        assert_eq!(Counter::MultiVmaReadsFast as u32 + Path::Slow as u32, Counter::MultiVmaReadsSlow as u32);
        assert_eq!(Counter::FallbackVmaLockFailed as u32 + Reason::Other as u32, Counter::FallbackOther as u32);
        assert_eq!(Counter::FolioWalksPte as u32 + Level::Pud as u32, Counter::FolioWalksPud as u32);
        assert_eq!(Hist::ReadDurationFast as u32 + Path::Slow as u32, Hist::ReadDurationSlow as u32);
        assert_eq!(Hist::ReadVmasFast as u32 + Path::Slow as u32, Hist::ReadVmasSlow as u32);
        assert_eq!(Counter::FolioWalksPud as usize, Counter::COUNT - 1);
    }
}
