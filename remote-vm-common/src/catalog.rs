//! The metric catalog: every metric family the daemon exports, declared once —
//! name, help, type, unit, labels with their value sets, and what it needs to be
//! exported. The daemon's exposition, `check`'s `metrics:` lines, the metrics
//! table of docs/operating.md, the dashboards and rules generator and the tests' expectations all
//! derive from it; no other source spells a `remote_vm_` name.
use crate::{
    Point,
    classify::{Level, Path, Reason},
    holder::HolderOp,
    series::Series,
    registry::Family,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The base unit of a family's values (Prometheus conventions: seconds, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A count of events or things.
    Count,
    Seconds,
    Bytes,
    /// An `_info` gauge: always 1, the facts are in the labels.
    Info,
}

/// The values one label can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// `classify::Path` labels.
    Path,
    /// The paths on which GUP runs: `fallback`, `slow`.
    GupPath,
    /// `classify::Reason` labels.
    Reason,
    /// `classify::Level` labels.
    Level,
    /// `holder::HolderOp` labels.
    HolderOp,
    /// `series::Series` labels.
    Series,
    /// `Point` names.
    Probe,
    /// Every mode name of the registry, and `none`.
    Mode,
    /// A closed set written here.
    Fixed(&'static [&'static str]),
    /// Free text from the host (kernel release, version): one series per host.
    Free,
}

impl Values {
    /// Calls `f` with every value of a closed set (nothing for `Free`).
    pub fn each(self, mut f: impl FnMut(&'static str)) {
        match self {
            Values::Path => Path::ALL.iter().for_each(|p| f(p.label())),
            Values::GupPath => [Path::Fallback, Path::Slow].iter().for_each(|p| f(p.label())),
            Values::Reason => Reason::ALL.iter().for_each(|r| f(r.label())),
            Values::Level => Level::ALL.iter().for_each(|l| f(l.label())),
            Values::HolderOp => HolderOp::ALL.iter().for_each(|o| f(o.label())),
            Values::Series => Series::ALL.iter().for_each(|v| f(v.label())),
            Values::Probe => Point::ALL.iter().for_each(|p| f(p.name())),
            Values::Mode => {
                // Each name once, in registry order.
                for (i, family) in Family::ALL.iter().enumerate() {
                    for m in family.modes() {
                        let earlier = Family::ALL[..i].iter().any(|e| e.mode(m.name).is_some());
                        if !earlier {
                            f(m.name);
                        }
                    }
                }
                f(NO_MODE);
            }
            Values::Fixed(values) => values.iter().for_each(|v| f(v)),
            Values::Free => {}
        }
    }

    pub fn contains(self, value: &str) -> bool {
        let mut found = matches!(self, Values::Free);
        self.each(|v| found |= v == value);
        found
    }
}

/// The `mode` of a probe that is not attached.
pub const NO_MODE: &str = "none";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    pub name: &'static str,
    pub values: Values,
}

const fn label(name: &'static str, values: Values) -> Label {
    Label { name, values }
}

pub const PATH: Label = label("path", Values::Path);
pub const GUP_PATH: Label = label("path", Values::GupPath);
pub const REASON: Label = label("reason", Values::Reason);
pub const LEVEL: Label = label("level", Values::Level);
pub const PROBE: Label = label("probe", Values::Probe);
pub const MODE: Label = label("mode", Values::Mode);
/// Whose mmap_lock: a remote access's own acquisitions of the target's, or host-wide.
pub const WAIT_CONTEXT: Label = label("context", Values::Fixed(&[CONTEXT_REMOTE, CONTEXT_HOST]));
pub const LOCK_VMA_CONTEXT: Label = label("context", Values::Fixed(&[CONTEXT_REMOTE, CONTEXT_OTHER]));
pub const LOCK_MODE: Label = label("mode", Values::Fixed(&[LOCK_READ, LOCK_WRITE]));
/// The lock mode a stalled remote access asked for.
pub const STALL_LOCK_MODE: Label = label("lock_mode", Values::Fixed(&[LOCK_READ, LOCK_WRITE]));
/// What the holder of a stalled wait's lock was doing (`HolderOp`).
pub const STALL_OP: Label = label("op", Values::HolderOp);
pub const CONTEXT_REMOTE: &str = "remote_vm";
pub const CONTEXT_HOST: &str = "host";
pub const CONTEXT_OTHER: &str = "other";
pub const LOCK_READ: &str = "read";
pub const LOCK_WRITE: &str = "write";
const YES_NO_UNKNOWN: Values = Values::Fixed(&["yes", "no", "unknown"]);

/// Histogram buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buckets {
    None,
    /// Log2 nanosecond buckets exported in seconds, over the configured range.
    Log2Seconds,
    /// Log2 buckets of a count, `2^min ..= 2^max`.
    Log2 { min: u32, max: u32 },
}

/// What a family needs to be exported: the attached probes and BTF facts that
/// make its numbers exact. A family whose needs are unmet is absent, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coverage {
    /// Always exported.
    Always,
    /// Reads by path, bytes, durations, writes: entry/exit, the target-lock
    /// probes, and the lockless loop's first step (unless the kernel has none).
    Reads,
    /// Fallback reasons and lockless bytes: also the walks.
    Fallbacks,
    /// The remote access's own lock waits, failures and hold times.
    RemoteLock,
    /// ... including its write-lock acquisitions (`expand_stack`).
    RemoteWrites,
    HostLock,
    LockVma,
    /// VMAs locked per read: the lockless loop's VMA steps.
    VmaSteps,
    Gup,
    WalkLevels,
    FollAnon,
    /// Remote mmap_lock waits in progress (the task iterator at each scrape).
    WaitsNow,
}

impl Coverage {
    /// The coverages `check` and `/healthz` report, in order.
    pub const REPORTED: [Coverage; 11] = [
        Coverage::Reads,
        Coverage::Fallbacks,
        Coverage::RemoteLock,
        Coverage::RemoteWrites,
        Coverage::HostLock,
        Coverage::LockVma,
        Coverage::VmaSteps,
        Coverage::Gup,
        Coverage::WalkLevels,
        Coverage::FollAnon,
        Coverage::WaitsNow,
    ];

    /// What the coverage exports, in words.
    pub const fn what(self) -> &'static str {
        match self {
            Coverage::Always => "always",
            Coverage::Reads => "reads, writes, bytes, durations",
            Coverage::Fallbacks => "fallback reasons, lockless bytes",
            Coverage::RemoteLock => "remote mmap_lock wait and hold",
            Coverage::RemoteWrites => "remote mmap_lock write waits (expand_stack)",
            Coverage::HostLock => "host mmap_lock wait",
            Coverage::LockVma => "lock_vma_under_rcu calls",
            Coverage::VmaSteps => "VMAs locked per read, multi-VMA reads",
            Coverage::Gup => "GUP calls",
            Coverage::WalkLevels => "folio walk levels, lockless PTE pages",
            Coverage::FollAnon => "FOLL_ANON file-backed lockless reads",
            Coverage::WaitsNow => "remote mmap_lock waits in progress",
        }
    }

    /// What it needs, in words.
    pub const fn needs(self) -> &'static str {
        match self {
            Coverage::Always => "nothing",
            Coverage::Reads => {
                "needs access_remote_vm, mmap_lock_remote, and lock_vma_under_rcu or folio_walk_start with the start-up probe read's verdict"
            }
            Coverage::Fallbacks => {
                "needs the read probes, folio_walk_start, and lock_vma_under_rcu or folio_walk.level in BTF"
            }
            Coverage::RemoteLock => "needs access_remote_vm and mmap_lock_remote",
            Coverage::RemoteWrites => {
                "needs mmap_lock_remote in an opt-in read+write mode (fentry_rw, kprobe_rw) or mmap_lock_tp"
            }
            Coverage::HostLock => "needs mmap_lock_host",
            Coverage::LockVma => "needs access_remote_vm and lock_vma_under_rcu",
            Coverage::VmaSteps => "needs the read probes and lock_vma_under_rcu (opt-in)",
            Coverage::Gup => "needs the read probes and get_user_pages_remote",
            Coverage::WalkLevels => "needs folio_walk_start and folio_walk.level in BTF",
            Coverage::FollAnon => "needs folio_walk_start, vm_area_struct.vm_ops and FOLL_ANON in BTF",
            Coverage::WaitsNow => {
                "needs access_remote_vm and mmap_lock_remote, the task iterator (BTF, Linux 5.15+) and the host PID namespace"
            }
        }
    }
}

/// One metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub labels: &'static [Label],
    pub buckets: Buckets,
    /// Exported when any of these is met (series by series where a family spans
    /// several: `mmap_lock_wait_seconds` by `context` and `mode`).
    pub coverage: &'static [Coverage],
}

const fn metric(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    labels: &'static [Label],
    coverage: &'static [Coverage],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        help,
        kind,
        unit,
        labels,
        buckets: match kind {
            Kind::Histogram => Buckets::Log2Seconds,
            _ => Buckets::None,
        },
        coverage,
    }
}

use Coverage as C;
use Kind::{Counter, Gauge, Histogram};

pub const BUILD_INFO: Metric = metric(
    "remote_vm_build_info",
    Gauge,
    Unit::Info,
    &[label("version", Values::Free), label("revision", Values::Free), label("rustc", Values::Free)],
    &[C::Always],
    "remote-vm daemon build: its version, the git revision it was built from (unknown outside a checkout) and the rustc that built it; always 1.",
);
pub const KERNEL_INFO: Metric = metric(
    "remote_vm_kernel_info",
    Gauge,
    Unit::Info,
    &[
        label("release", Values::Free),
        label("per_vma_lock", YES_NO_UNKNOWN),
        label("rcu_table_free", YES_NO_UNKNOWN),
        label("patched", YES_NO_UNKNOWN),
        label("series", Values::Series),
    ],
    &[C::Always],
    "The running kernel: release, the config options the lockless remote-read path needs, whether it runs that path (patched: decided by a probe read at start-up) and which version of the series it behaves as (series: v1 crosses VMAs locklessly, v2 sends a read that crosses its VMA's end to the mmap_lock path whole; none when not patched; decided by a second probe read across two VMAs); always 1.",
);
pub const PROBE_ATTACHED: Metric = metric(
    "remote_vm_probe_attached",
    Gauge,
    Unit::Count,
    &[PROBE, MODE],
    &[C::Always],
    "1 if the probe is attached in the given mode; 0 with mode=\"none\" if no mode could attach (see /healthz or `check` for why).",
);
pub const PROBE_HITS: Metric = metric(
    "remote_vm_probe_hits_total",
    Counter,
    Unit::Count,
    &[PROBE],
    &[C::Always],
    "Times the probe's programs ran (an exit or walk inside a call counts when the call ends).",
);
pub const PROBE_MISSES: Metric = metric(
    "remote_vm_probe_misses_total",
    Counter,
    Unit::Count,
    &[PROBE],
    &[C::Always],
    "Runs of the probe the kernel reports it skipped (program recursion, which on fully preemptible kernels includes a run of the same program preempted on that CPU; kprobe misses; kretprobe maxactive overflows); where the kernel keeps no count (kprobes before Linux 6.7), remote accesses seen without their entry or exit.",
);
pub const PROBE_RUNS: Metric = metric(
    "remote_vm_probe_runs_total",
    Counter,
    Unit::Count,
    &[PROBE],
    &[C::Always],
    "Runs of the probe's programs the kernel counted while it collects BPF run-time statistics (self_stats = true, or kernel.bpf_stats_enabled = 1); absent while it does not.",
);
pub const PROBE_RUN_SECONDS: Metric = metric(
    "remote_vm_probe_run_seconds_total",
    Counter,
    Unit::Seconds,
    &[PROBE],
    &[C::Always],
    "Time the probe's programs ran, as the kernel's BPF run-time statistics count it (divided by remote_vm_probe_runs_total: the cost per run on this host); absent while it does not collect.",
);
pub const READS: Metric = metric(
    "remote_vm_reads_total",
    Counter,
    Unit::Count,
    &[PATH],
    &[C::Reads],
    "Remote-memory reads (__access_remote_vm without FOLL_WRITE) by path: fast (no mmap_lock), fallback (lockless loop, then mmap_lock), slow (mmap_lock only).",
);
pub const READ_BYTES: Metric = metric(
    "remote_vm_read_bytes_total",
    Counter,
    Unit::Bytes,
    &[PATH],
    &[C::Reads],
    "Bytes returned by remote reads, by path.",
);
pub const READ_DURATION: Metric = metric(
    "remote_vm_read_duration_seconds",
    Histogram,
    Unit::Seconds,
    &[PATH],
    &[C::Reads],
    "Duration of remote reads (__access_remote_vm entry to exit), by path.",
);
pub const READ_VMAS: Metric = Metric {
    buckets: Buckets::Log2 { min: 0, max: 6 },
    ..metric(
        "remote_vm_read_vmas",
        Histogram,
        Unit::Count,
        &[PATH],
        &[C::VmaSteps],
        "VMAs locked by lock_vma_under_rcu() per remote read, by path (0 for reads with no lockless attempt).",
    )
};
pub const MULTI_VMA_READS: Metric = metric(
    "remote_vm_multi_vma_reads_total",
    Counter,
    Unit::Count,
    &[PATH],
    &[C::VmaSteps],
    "Remote reads that locked two or more VMAs in the lockless loop, by path (0 by construction on series v2, which locks one VMA per call; see remote_vm_kernel_info's series).",
);
pub const WRITES: Metric = metric(
    "remote_vm_writes_total",
    Counter,
    Unit::Count,
    &[],
    &[C::Reads],
    "Remote-memory writes (__access_remote_vm with FOLL_WRITE).",
);
pub const WRITTEN_BYTES: Metric = metric(
    "remote_vm_written_bytes_total",
    Counter,
    Unit::Bytes,
    &[],
    &[C::Reads],
    "Bytes returned by remote writes.",
);
pub const WRITE_DURATION: Metric = metric(
    "remote_vm_write_duration_seconds",
    Histogram,
    Unit::Seconds,
    &[],
    &[C::Reads],
    "Duration of remote writes.",
);
pub const UNTRACKED_CALLS: Metric = metric(
    "remote_vm_untracked_calls_total",
    Counter,
    Unit::Count,
    &[],
    &[C::Reads],
    "Remote accesses not classified because no per-thread state could be allocated (on preemptible kernels: another BPF program was preempted inside task storage on that CPU).",
);
pub const UNOBSERVED_READS: Metric = metric(
    "remote_vm_unobserved_reads_total",
    Counter,
    Unit::Count,
    &[],
    &[C::Reads],
    "Remote reads not classified because a probe their path depends on did not run (the kernel skipped it: see remote_vm_probe_misses_total); never counted as fast.",
);
pub const FALLBACKS: Metric = metric(
    "remote_vm_fallbacks_total",
    Counter,
    Unit::Count,
    &[REASON],
    &[C::Fallbacks],
    "Fallback reads by the reason the lockless loop stopped: vma_lock_failed, vma_unsuitable and crosses_vma_end (a locked VMA the request runs past, no walk: v2's bail for a read not inside one VMA; on v1 only where that VMA was also unsuitable) where the opt-in lock_vma_under_rcu probe is attached, all three merged into vma_lock_failed_or_unsuitable where not.",
);
pub const FALLBACK_LOCKLESS_BYTES: Metric = metric(
    "remote_vm_fallback_lockless_bytes_total",
    Counter,
    Unit::Bytes,
    &[],
    &[C::Fallbacks],
    "Bytes of fallback reads done by the lockless loop before it stopped (stop address - start address).",
);
pub const LOCKLESS_BYTES_DISCARDED: Metric = metric(
    "remote_vm_lockless_bytes_discarded_total",
    Counter,
    Unit::Bytes,
    &[],
    &[C::Fallbacks],
    "Bytes the lockless loop had copied that the call did not return (v1 returns 0 when the old path's vma_lookup/expand_stack fails; 0 by construction on series v2, which returns the bytes already copied).",
);
pub const LOCKLESS_DISCARDED_READS: Metric = metric(
    "remote_vm_lockless_discarded_reads_total",
    Counter,
    Unit::Count,
    &[],
    &[C::Fallbacks],
    "Remote reads that returned fewer bytes than the lockless loop had copied (0 by construction on series v2).",
);
pub const FOLIO_WALKS: Metric = metric(
    "remote_vm_folio_walks_total",
    Counter,
    Unit::Count,
    &[LEVEL],
    &[C::WalkLevels],
    "Successful lockless folio_walk_start() calls inside remote reads, by the level of the mapping found.",
);
pub const LOCKLESS_PTE_PAGES: Metric = metric(
    "remote_vm_lockless_pte_pages_total",
    Counter,
    Unit::Count,
    &[],
    &[C::WalkLevels],
    "PTE-mapped pages read by the lockless loop: series v1 does not folio_mark_accessed() them (the old path does), v2 does.",
);
pub const FOLL_ANON_FILE_BACKED: Metric = metric(
    "remote_vm_foll_anon_file_backed_lockless_reads_total",
    Counter,
    Unit::Count,
    &[],
    &[C::FollAnon],
    "Remote reads with FOLL_ANON (cmdline, environ) in which a lockless walk succeeded in a VMA that is not anonymous, whether or not they fell back afterwards (series v1's gap; 0 by construction on v2, which refuses such a VMA).",
);
pub const GUP_CALLS: Metric = metric(
    "remote_vm_gup_calls_total",
    Counter,
    Unit::Count,
    &[GUP_PATH],
    &[C::Gup],
    "get_user_pages_remote() calls made by remote reads, by path.",
);
pub const MMAP_LOCK_WAIT: Metric = metric(
    "remote_vm_mmap_lock_wait_seconds",
    Histogram,
    Unit::Seconds,
    &[WAIT_CONTEXT, LOCK_MODE],
    &[C::RemoteLock, C::HostLock],
    "mmap_lock acquisition waits, one observation per acquisition: context=\"remote_vm\" for a remote access's own acquisitions of the target's lock (in the default mode timed from the lock's contention events, an acquisition that did not wait observed as 0), \"host\" for host-wide contended waits on a thread's own mm.",
);
pub const MMAP_LOCK_ACQUIRE_FAILURES: Metric = metric(
    "remote_vm_mmap_lock_acquire_failures_total",
    Counter,
    Unit::Count,
    &[WAIT_CONTEXT],
    &[C::RemoteLock, C::HostLock],
    "mmap_lock acquisitions that failed (the waiter was killed), by context.",
);
pub const MMAP_LOCK_HOLD: Metric = metric(
    "remote_vm_mmap_lock_hold_seconds",
    Histogram,
    Unit::Seconds,
    &[],
    &[C::RemoteLock],
    "Time from a remote access's first acquisition of the target's mmap_lock to the call's exit (acquired: where it waited, at the wait's end; else at the call's start when it takes the lock first, or at the first GUP or expand_stack() call after the lockless loop).",
);
pub const STALLS: Metric = metric(
    "remote_vm_stalls_total",
    Counter,
    Unit::Count,
    &[STALL_LOCK_MODE, STALL_OP],
    &[C::RemoteLock],
    "Remote accesses whose wait for the target's mmap_lock reached stalls.threshold_seconds, by the lock mode asked for (write: expand_stack; its series needs a read+write mode) and what the lock's holder was doing when last observed during the wait (op: its system call grouped, fault, kthread, readers for a reader-owned lock, other, unknown).",
);
pub const STALL_EVENTS_DROPPED: Metric = metric(
    "remote_vm_stall_events_dropped_total",
    Counter,
    Unit::Count,
    &[],
    &[C::RemoteLock],
    "Stall events lost because the ring buffer to the daemon was full (the stalls are still counted).",
);
pub const MMAP_LOCK_WAITERS: Metric = metric(
    "remote_vm_mmap_lock_waiters",
    Gauge,
    Unit::Count,
    &[],
    &[C::WaitsNow],
    "Remote accesses waiting for a target's mmap_lock now (read at the scrape; identities in /stalls' in_progress).",
);
pub const MMAP_LOCK_OLDEST_WAIT: Metric = metric(
    "remote_vm_mmap_lock_oldest_wait_seconds",
    Gauge,
    Unit::Seconds,
    &[],
    &[C::WaitsNow],
    "Age of the longest remote wait for a target's mmap_lock in progress now; 0 when none.",
);
pub const LOCK_VMA_CALLS: Metric = metric(
    "remote_vm_lock_vma_under_rcu_total",
    Counter,
    Unit::Count,
    &[LOCK_VMA_CONTEXT],
    &[C::LockVma],
    "lock_vma_under_rcu() calls: inside remote reads (context=\"remote_vm\") and elsewhere, mostly page faults (\"other\").",
);
pub const LOCK_VMA_FAILURES: Metric = metric(
    "remote_vm_lock_vma_under_rcu_failures_total",
    Counter,
    Unit::Count,
    &[LOCK_VMA_CONTEXT],
    &[C::LockVma],
    "lock_vma_under_rcu() calls that returned NULL, by context.",
);

/// Every family of ours, in exposition order.
pub const ALL: &[&Metric] = &[
    &BUILD_INFO,
    &KERNEL_INFO,
    &PROBE_ATTACHED,
    &PROBE_HITS,
    &PROBE_MISSES,
    &PROBE_RUNS,
    &PROBE_RUN_SECONDS,
    &READS,
    &READ_BYTES,
    &READ_DURATION,
    &READ_VMAS,
    &MULTI_VMA_READS,
    &WRITES,
    &WRITTEN_BYTES,
    &WRITE_DURATION,
    &UNTRACKED_CALLS,
    &UNOBSERVED_READS,
    &FALLBACKS,
    &FALLBACK_LOCKLESS_BYTES,
    &LOCKLESS_BYTES_DISCARDED,
    &LOCKLESS_DISCARDED_READS,
    &FOLIO_WALKS,
    &LOCKLESS_PTE_PAGES,
    &FOLL_ANON_FILE_BACKED,
    &GUP_CALLS,
    &MMAP_LOCK_WAIT,
    &MMAP_LOCK_ACQUIRE_FAILURES,
    &MMAP_LOCK_HOLD,
    &STALLS,
    &STALL_EVENTS_DROPPED,
    &MMAP_LOCK_WAITERS,
    &MMAP_LOCK_OLDEST_WAIT,
    &LOCK_VMA_CALLS,
    &LOCK_VMA_FAILURES,
];

/// The standard process metrics (the names every Prometheus client library
/// exports), after ours. Read from `/proc/self` on each scrape.
pub const PROCESS_CPU: Metric = metric(
    "process_cpu_seconds_total",
    Counter,
    Unit::Seconds,
    &[],
    &[C::Always],
    "Total user and system CPU time spent in seconds.",
);
pub const PROCESS_OPEN_FDS: Metric =
    metric("process_open_fds", Gauge, Unit::Count, &[], &[C::Always], "Number of open file descriptors.");
pub const PROCESS_MAX_FDS: Metric =
    metric("process_max_fds", Gauge, Unit::Count, &[], &[C::Always], "Maximum number of open file descriptors.");
pub const PROCESS_VIRTUAL_MEMORY: Metric =
    metric("process_virtual_memory_bytes", Gauge, Unit::Bytes, &[], &[C::Always], "Virtual memory size in bytes.");
pub const PROCESS_RESIDENT_MEMORY: Metric =
    metric("process_resident_memory_bytes", Gauge, Unit::Bytes, &[], &[C::Always], "Resident memory size in bytes.");
pub const PROCESS_START_TIME: Metric = metric(
    "process_start_time_seconds",
    Gauge,
    Unit::Seconds,
    &[],
    &[C::Always],
    "Start time of the process since unix epoch in seconds.",
);
pub const PROCESS_THREADS: Metric =
    metric("process_threads", Gauge, Unit::Count, &[], &[C::Always], "Number of OS threads in the process.");

pub const PROCESS: &[&Metric] = &[
    &PROCESS_CPU,
    &PROCESS_OPEN_FDS,
    &PROCESS_MAX_FDS,
    &PROCESS_VIRTUAL_MEMORY,
    &PROCESS_RESIDENT_MEMORY,
    &PROCESS_START_TIME,
    &PROCESS_THREADS,
];

/// The common prefix of every name.
pub const PREFIX: &str = "remote_vm_";

pub fn by_name(name: &str) -> Option<&'static Metric> {
    ALL.iter().copied().find(|m| m.name == name)
}

/// The suffixes of a histogram's sample lines.
pub const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// The family a sample name belongs to: the name itself, or a histogram's
/// `_bucket`, `_sum`, `_count` line.
pub fn family_of_sample(name: &str) -> Option<&'static Metric> {
    ALL.iter().copied().find(|m| {
        name == m.name
            || (m.kind == Kind::Histogram && HISTOGRAM_SUFFIXES.iter().any(|s| name.strip_suffix(s) == Some(m.name)))
    })
}

#[cfg(feature = "user")]
impl Metric {
    /// The name of one of its sample lines: `_bucket`, `_sum`, `_count`.
    pub fn sample(&self, suffix: &str) -> std::string::String {
        let mut s = std::string::String::from(self.name);
        s.push_str(suffix);
        s
    }

    /// `NAME_count` of a histogram.
    pub fn count(&self) -> std::string::String {
        self.sample("_count")
    }

    /// The label set of this family as docs/operating.md's metrics table shows it.
    fn labels_md(&self) -> std::string::String {
        use std::{format, string::String, vec::Vec};
        let parts: Vec<String> = self
            .labels
            .iter()
            .map(|l| {
                let mut values = Vec::new();
                l.values.each(|v| values.push(format!("`{v}`")));
                match l.values {
                    Values::Free => format!("`{}`", l.name),
                    Values::Probe | Values::Mode => format!("`{}` ({} values)", l.name, values.len()),
                    _ => format!("`{}`={}", l.name, values.join("\\|")),
                }
            })
            .collect();
        parts.join(", ")
    }
}

/// The metrics table of docs/operating.md, generated from the catalog.
#[cfg(feature = "user")]
pub fn readme_table() -> std::string::String {
    use std::{format, string::String};
    let mut out = String::from("| metric | type | labels | exported when | meaning |\n|---|---|---|---|---|\n");
    for m in ALL {
        let when: std::vec::Vec<&str> = m.coverage.iter().map(|c| c.what()).collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            m.labels_md(),
            when.join("; "),
            m.help.replace('|', "\\|"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a name declared twice");
        for m in ALL {
            assert!(m.name.starts_with(PREFIX), "{}", m.name);
            match (m.kind, m.unit) {
                (Kind::Counter, _) => assert!(m.name.ends_with("_total"), "{}", m.name),
                (_, Unit::Info) => assert!(m.name.ends_with("_info") && m.kind == Kind::Gauge, "{}", m.name),
                (_, Unit::Seconds) => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                _ => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            if m.unit == Unit::Bytes {
                assert!(m.name.contains("bytes") && m.kind == Kind::Counter, "{}", m.name);
            }
            assert_eq!(m.kind == Kind::Histogram, m.buckets != Buckets::None, "{}", m.name);
            assert!(m.help.ends_with('.'), "{}", m.name);
            assert!(!m.coverage.is_empty(), "{}", m.name);
            // No pid or other unbounded label: free text only in _info families.
            for l in m.labels {
                assert!(l.values != Values::Free || m.unit == Unit::Info, "{} {}", m.name, l.name);
                assert!(l.name != "pid" && l.name != "tid" && l.name != "comm");
            }
        }
    }

    #[test]
    fn samples_find_their_family() {
        assert_eq!(family_of_sample(READS.name), Some(&READS));
        let bucket = std::format!("{}_bucket", READ_DURATION.name);
        assert_eq!(family_of_sample(&bucket), Some(&READ_DURATION));
        // Only histograms have suffixed lines.
        let not_a_line = std::format!("{}_count", READS.name);
        assert_eq!(family_of_sample(&not_a_line), None);
        assert_eq!(family_of_sample("process_threads"), None);
    }

    #[test]
    fn process_metrics_have_the_standard_names() {
        for m in PROCESS {
            assert!(m.name.starts_with("process_") && m.labels.is_empty(), "{}", m.name);
            assert_eq!(m.kind == Kind::Counter, m.name.ends_with("_total"), "{}", m.name);
        }
    }

    #[test]
    fn value_sets_are_closed_and_unique() {
        let mut modes = Vec::new();
        Values::Mode.each(|m| modes.push(m));
        let n = modes.len();
        modes.sort();
        modes.dedup();
        assert_eq!(modes.len(), n);
        assert!(Values::Mode.contains("contention_tp") && Values::Mode.contains(NO_MODE));
        assert!(!Values::Path.contains("other") && Values::Reason.contains("other"));
        assert!(Values::Free.contains("6.18.0"));
    }
}

/// `remote-vm-daemon compare --mode auto` fetches every raw sample of the range
/// up to this many expected samples (some 250 MB of JSON, below Prometheus'
/// default `query.max-samples` of 50 million), and asks the engine for chunk
/// summaries past it. Here, where the tests that hold it to that find it.
pub const COMPARE_AUTO_RAW_MAX_SAMPLES: f64 = 5_000_000.0;
