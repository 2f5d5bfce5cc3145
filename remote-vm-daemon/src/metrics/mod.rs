//! Stage 3, metrics: fills the catalog's families (`remote_vm_common::catalog`)
//! from one snapshot of the maps and the facts fixed at start-up, then writes
//! them in the text exposition format.
//!
//! Scraping reads BPF maps and `/proc/self/{stat,status,limits,fd}` only: never
//! another process's memory, so a scrape is never counted as a remote access.
pub mod coverage;
pub mod exposition;
mod process;

use remote_vm_common::{
    Point,
    catalog::{self as cat, Buckets, Coverage, Metric},
    classify::{Level, Path, Reason},
    holder::HolderOp,
    stats::{Counter, Hist, Stats},
};

use self::{
    coverage::Sight,
    exposition::{Family, encode_all},
};
use crate::{
    bpf::{Attached, Snapshot},
    kernel::KernelFacts,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a scrape needs besides the snapshot; fixed after start-up.
pub struct View<'a> {
    pub facts: &'a KernelFacts,
    pub attached: &'a Attached,
    pub sight: Sight,
    /// Exported bucket range of the `_seconds` histograms (log2 of ns).
    pub hist_min_log2: u32,
    pub hist_max_log2: u32,
}

/// The full /metrics body: our families, then the standard process metrics,
/// through one writer.
pub fn render(view: &View, snap: &Snapshot) -> String {
    let mut families = collect(view, snap);
    families.extend(process::collect());
    encode_all(&families)
}

/// Every family the view covers, in catalog order.
pub fn collect(view: &View, snap: &Snapshot) -> Vec<Family> {
    cat::ALL
        .iter()
        .copied()
        .filter(|m| view.sight.covers_any(m.coverage))
        .map(|m| {
            let mut f = Family::new(m);
            fill(&mut f, view, snap);
            f
        })
        // A family with nothing to say this time (the waits gauges when the
        // task iterator failed) is left out, not written empty.
        .filter(|f| !f.samples.is_empty())
        .collect()
}

/// The counter `offset` places after `base`: the counters of one kind (paths,
/// reasons, levels) are consecutive in `remote_vm_common::stats::Counter`.
fn c_at(stats: &Stats, base: Counter, offset: u32) -> u64 {
    stats.counters[base as usize + offset as usize]
}

fn c(stats: &Stats, counter: Counter) -> u64 {
    c_at(stats, counter, 0)
}

fn h_at(stats: &Stats, base: Hist, offset: u32) -> &remote_vm_common::stats::Histogram {
    &stats.hists[base as usize + offset as usize]
}

/// Writes one family's samples: the one function per family that knows where
/// its numbers live.
fn fill(f: &mut Family, view: &View, snap: &Snapshot) {
    let stats = &snap.stats;
    let m: &'static Metric = f.metric;
    let (lo, hi) = match m.buckets {
        Buckets::Log2 { min, max } => (min, max),
        _ => (view.hist_min_log2, view.hist_max_log2),
    };
    let divisor = if m.buckets == Buckets::Log2Seconds { 1e9 } else { 1.0 };
    let per_path = |f: &mut Family, value: &dyn Fn(u32) -> u64| {
        for path in Path::ALL {
            f.push(&[("path", path.label())], value(path as u32));
        }
    };
    let hist_per_path = |f: &mut Family, base: Hist| {
        for path in Path::ALL {
            f.push_log2(&[("path", path.label())], h_at(stats, base, path as u32), lo, hi, divisor);
        }
    };
    match m.name {
        n if n == cat::BUILD_INFO.name => {
            f.push(&[("version", VERSION), ("revision", env!("REMOTE_VM_REVISION")), ("rustc", env!("REMOTE_VM_RUSTC"))], 1u64);
        }
        n if n == cat::KERNEL_INFO.name => {
            let k = view.facts;
            f.push(
                &[
                    ("release", &k.release),
                    ("per_vma_lock", k.per_vma_lock.as_str()),
                    ("rcu_table_free", k.rcu_table_free.as_str()),
                    ("patched", view.attached.patched.as_str()),
                    ("series", view.attached.series.label()),
                ],
                1u64,
            );
        }
        n if n == cat::PROBE_ATTACHED.name => {
            for v in &view.attached.verdicts {
                for point in v.family.spec().points {
                    f.push(&[("probe", point.name()), ("mode", v.mode_name())], u64::from(v.attached()));
                }
            }
        }
        n if n == cat::PROBE_RUNS.name || n == cat::PROBE_RUN_SECONDS.name => {
            // Absent while the kernel does not collect (a family with no samples is left out).
            if let Some(runs) = &snap.runs {
                for v in view.attached.verdicts.iter().filter(|v| v.attached()) {
                    for point in v.family.spec().points {
                        let (count, ns) = runs[point.index() as usize];
                        if n == cat::PROBE_RUNS.name {
                            f.push(&[("probe", point.name())], count);
                        } else {
                            f.push(&[("probe", point.name())], ns as f64 / 1e9);
                        }
                    }
                }
            }
        }
        n if n == cat::PROBE_HITS.name || n == cat::PROBE_MISSES.name => {
            let misses = n == cat::PROBE_MISSES.name;
            for v in view.attached.verdicts.iter().filter(|v| v.attached()) {
                // The kernel counts the runs it skips for trampoline and tracepoint
                // programs, and on kprobe links (6.7+). Only where it does not is
                // what the programs notice themselves counted — an exit without
                // its entry, an entry finding the last call open — else a skipped
                // run would be counted twice, by the kernel and by its partner.
                let kernel_counts = |point: &Point| {
                    v.mode.is_some_and(|m| m.exact) || view.attached.kprobe_links.get(point).is_some_and(|n| *n > 0)
                };
                for point in v.family.spec().points {
                    let i = point.index() as usize;
                    let value = if misses {
                        let seen = match point {
                            _ if kernel_counts(point) => 0,
                            Point::AccessRemoteVmEntry => c(stats, Counter::MissedEntries),
                            Point::AccessRemoteVmExit => c(stats, Counter::MissedExits),
                            _ => 0,
                        };
                        snap.kernel_misses[i] + seen
                    } else {
                        snap.hits[i]
                    };
                    f.push(&[("probe", point.name())], value);
                }
            }
        }
        n if n == cat::READS.name => per_path(f, &|p| c_at(stats, Counter::ReadsFast, p)),
        n if n == cat::READ_BYTES.name => per_path(f, &|p| c_at(stats, Counter::ReadBytesFast, p)),
        n if n == cat::READ_DURATION.name => hist_per_path(f, Hist::ReadDurationFast),
        n if n == cat::READ_VMAS.name => hist_per_path(f, Hist::ReadVmasFast),
        n if n == cat::MULTI_VMA_READS.name => per_path(f, &|p| c_at(stats, Counter::MultiVmaReadsFast, p)),
        n if n == cat::WRITES.name => single(f, c(stats, Counter::Writes)),
        n if n == cat::WRITTEN_BYTES.name => single(f, c(stats, Counter::WrittenBytes)),
        n if n == cat::WRITE_DURATION.name => {
            f.push_log2(&[], &stats.hists[Hist::WriteDuration as usize], lo, hi, divisor);
        }
        n if n == cat::UNTRACKED_CALLS.name => single(f, c(stats, Counter::StateUnavailable)),
        n if n == cat::UNOBSERVED_READS.name => single(f, c(stats, Counter::ReadsUnobserved)),
        n if n == cat::FALLBACKS.name => {
            // The VMA-level reasons split where lock_vma_under_rcu() is probed, merged where not.
            let vma_probed = view.attached.attached(remote_vm_common::Family::LockVmaUnderRcu);
            for reason in Reason::ALL.into_iter().filter(|r| r.reported(vma_probed)) {
                f.push(&[("reason", reason.label())], c(stats, Counter::fallbacks(reason)));
            }
        }
        n if n == cat::FALLBACK_LOCKLESS_BYTES.name => single(f, c(stats, Counter::FallbackLocklessBytes)),
        n if n == cat::LOCKLESS_BYTES_DISCARDED.name => single(f, c(stats, Counter::DiscardedBytes)),
        n if n == cat::LOCKLESS_DISCARDED_READS.name => single(f, c(stats, Counter::DiscardedReads)),
        n if n == cat::FOLIO_WALKS.name => {
            for level in Level::ALL {
                f.push(&[("level", level.label())], c_at(stats, Counter::FolioWalksPte, level as u32));
            }
        }
        n if n == cat::LOCKLESS_PTE_PAGES.name => single(f, c(stats, Counter::FolioWalksPte)),
        n if n == cat::FOLL_ANON_FILE_BACKED.name => single(f, c(stats, Counter::FollAnonFileBackedLockless)),
        n if n == cat::GUP_CALLS.name => {
            f.push(&[("path", Path::Fallback.label())], c(stats, Counter::GupCallsFallback));
            f.push(&[("path", Path::Slow.label())], c(stats, Counter::GupCallsSlow));
        }
        n if n == cat::MMAP_LOCK_WAIT.name || n == cat::MMAP_LOCK_ACQUIRE_FAILURES.name => {
            let waits = n == cat::MMAP_LOCK_WAIT.name;
            let s = &view.sight;
            for (context, seen, base, fail, failures_seen) in [
                (cat::CONTEXT_REMOTE, s.covers(Coverage::RemoteLock), Hist::WaitRemoteRead, Counter::AcquireFailuresRemote, true),
                (cat::CONTEXT_HOST, s.covers(Coverage::HostLock), Hist::WaitHostRead, Counter::AcquireFailuresHost, s.host_failures),
            ] {
                if !seen {
                    continue;
                }
                if !waits {
                    if failures_seen {
                        f.push(&[("context", context)], c(stats, fail));
                    }
                    continue;
                }
                for (mode, offset) in [(cat::LOCK_READ, 0), (cat::LOCK_WRITE, 1)] {
                    if context == cat::CONTEXT_REMOTE && mode == cat::LOCK_WRITE && !s.covers(Coverage::RemoteWrites) {
                        continue;
                    }
                    f.push_log2(&[("context", context), ("mode", mode)], h_at(stats, base, offset), lo, hi, divisor);
                }
            }
        }
        n if n == cat::MMAP_LOCK_HOLD.name => {
            f.push_log2(&[], &stats.hists[Hist::Hold as usize], lo, hi, divisor);
        }
        n if n == cat::STALLS.name => {
            let modes: &[(&str, bool)] = if view.sight.covers(Coverage::RemoteWrites) {
                &[(cat::LOCK_READ, false), (cat::LOCK_WRITE, true)]
            } else {
                &[(cat::LOCK_READ, false)]
            };
            for (mode, write) in modes {
                for op in HolderOp::ALL {
                    f.push(&[("lock_mode", *mode), ("op", op.label())], stats.counters[Counter::stall_slot(*write, op as u32)]);
                }
            }
        }
        n if n == cat::STALL_EVENTS_DROPPED.name => single(f, c(stats, Counter::StallEventsDropped)),
        // Absent (no sample) when the iterator failed this time, never 0.
        n if n == cat::MMAP_LOCK_WAITERS.name => {
            if let Some(w) = &snap.waits {
                single(f, w.count);
            }
        }
        n if n == cat::MMAP_LOCK_OLDEST_WAIT.name => {
            if let Some(w) = &snap.waits {
                f.push(&[], w.oldest_ns as f64 / 1e9);
            }
        }
        n if n == cat::LOCK_VMA_CALLS.name => {
            f.push(&[("context", cat::CONTEXT_REMOTE)], c(stats, Counter::LockVmaRemote));
            f.push(&[("context", cat::CONTEXT_OTHER)], c(stats, Counter::LockVmaOther));
        }
        n if n == cat::LOCK_VMA_FAILURES.name => {
            f.push(&[("context", cat::CONTEXT_REMOTE)], c(stats, Counter::LockVmaFailuresRemote));
            f.push(&[("context", cat::CONTEXT_OTHER)], c(stats, Counter::LockVmaFailuresOther));
        }
        // A family declared without a filler: a unit test catches it.
        _ => {}
    }
}

fn single(f: &mut Family, value: u64) {
    f.push(&[], value);
}

#[cfg(test)]
mod tests;
