//! What stays alive while the probes are attached, and reading its maps.
use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
};

use crate::stacks::StackWatch;

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, RingBuf},
    sys::SyscallError,
};
use remote_vm_common::{Point, stats::Stats};

use super::{
    HITS, STATS, misses,
    runstats::{Collecting, RunStats},
    waits::{TaskIter, WaitsIter, WaitsNow},
};

/// Counters read from the maps at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every CPU's `Stats` summed.
    pub stats: Stats,
    /// Per point (by index): runs of its programs.
    pub hits: [u64; Point::ALL.len()],
    /// Per point: runs the kernel reports missed.
    pub kernel_misses: [u64; Point::ALL.len()],
    /// Remote accesses waiting for a target's mmap_lock now; `None` when the
    /// task iterator is not attached or failed this time (the gauges are then
    /// absent, never 0).
    pub waits: Option<WaitsNow>,
    /// Per point: (runs, run time in ns) of its programs, while the kernel
    /// collects run statistics (`None`: it does not; the families are absent).
    pub runs: Option<[(u64, u64); Point::ALL.len()]>,
}

impl Snapshot {
    pub const ZERO: Snapshot = Snapshot {
        stats: Stats::ZERO,
        hits: [0; Point::ALL.len()],
        kernel_misses: [0; Point::ALL.len()],
        waits: None,
        runs: None,
    };
}

/// Everything that stays alive while the probes are attached (built by `load`).
pub struct Session {
    /// Owns the programs and their links; dropping it detaches everything.
    pub(super) ebpf: Ebpf,
    /// The eBPF programs' log records, until `forward_logs` hands them to a thread.
    pub(super) logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub(super) hits: PerCpuArray<MapData, u64>,
    pub(super) stats: PerCpuArray<MapData, Stats>,
    /// Per point: the program fds whose recursion misses count there, and the
    /// kprobe links whose `missed` does.
    pub(super) miss_sources: BTreeMap<Point, (Vec<OwnedFd>, Vec<OwnedFd>)>,
    /// The stall events, until `take_stall_events` hands them to their reader.
    pub(super) stall_events: Option<RingBuf<MapData>>,
    /// The task iterator of waits in progress, when it attached.
    pub(super) waits: Option<WaitsIter>,
    /// Holders' stacks (shared with the watcher and the stall reader), once
    /// `start_stacks` made them from `pending_stacks`: the attached iterator
    /// and its map, or why there are none.
    pub(super) stacks: Option<Arc<StackWatch>>,
    pub(super) pending_stacks: Result<(TaskIter, aya::maps::HashMap<MapData, u32, u32>), String>,
    /// The watcher's ring buffer, until `start_watcher` hands it over.
    pub(super) wait_begun: Option<RingBuf<MapData>>,
    /// The kernel's run statistics of our programs (`self_stats`).
    pub(super) run_stats: RunStats,
}

impl Session {
    /// `self_stats`: switch the kernel's run statistics on while the session
    /// lives (before the capabilities are dropped).
    pub fn enable_run_stats(&mut self, asked: bool) {
        self.run_stats = RunStats::enable(asked);
    }

    /// The `/healthz` line on probe costs.
    pub fn run_stats_line(&self) -> String {
        self.run_stats.line()
    }

    /// Reads the kernel's symbols and makes the holders' stacks (once): after
    /// the BTF is gone (the two would add up at the peak) and before the
    /// capabilities are (a daemon run as root reads `/proc/kallsyms` itself).
    pub fn start_stacks(&mut self, release: &str) {
        let pending = std::mem::replace(&mut self.pending_stacks, Err("started".into()));
        let watch = StackWatch::new(pending, || crate::kernel::symbols::Symbols::load(release));
        self.stacks = Some(Arc::new(watch));
    }

    /// Holders' stacks, for the stall reader.
    pub fn stacks(&self) -> Option<Arc<StackWatch>> {
        self.stacks.clone()
    }

    /// The `/healthz` line on holders' stacks.
    pub fn stacks_line(&self) -> String {
        self.stacks.as_ref().map_or_else(|| "stacks: holders' kernel stacks not shown: not loaded".into(), |s| s.line())
    }

    /// Starts the watcher (once): it runs the task iterators while waits
    /// last (see `crate::stacks`).
    pub fn start_watcher(&mut self, threshold_ns: u64) {
        let (Some(ring), Some(waits), Some(stacks)) = (self.wait_begun.take(), self.waits.as_ref(), self.stacks.clone()) else {
            log::info!("watch: waits are looked at only when /metrics or /stalls is read (no task iterator or no {} ring buffer)", crate::stacks::WAIT_BEGUN);
            return;
        };
        match waits.try_clone() {
            Ok(waits) => crate::stacks::spawn_watcher(ring, waits, stacks, threshold_ns),
            Err(e) => log::warn!("watch: waits are looked at only when /metrics or /stalls is read: {e}"),
        }
    }

    /// The ring buffer of stall events (once).
    pub fn take_stall_events(&mut self) -> Option<RingBuf<MapData>> {
        self.stall_events.take()
    }

    /// Starts the thread that forwards the eBPF programs' log records into ours
    /// (after any privilege drop: threads inherit the capabilities of their creator).
    pub fn forward_logs(&mut self) {
        if let Some(logger) = self.logger.take() {
            crate::logging::forward_ebpf_logs(logger);
        }
    }

    /// Reads every counter once; any failed read fails the whole snapshot (a
    /// zero would look like a counter reset). The waits gauges only go absent.
    /// `stacks`: also look at the waits' holders' stacks (for `/stalls`).
    pub fn snapshot(&self, stacks: bool) -> Result<Snapshot, ReadError> {
        let mut snap = Snapshot::ZERO;
        snap.stats = self.stats()?;
        let mut runs = [(0, 0); Point::ALL.len()];
        for point in Point::ALL {
            let i = point.index() as usize;
            // (The calls' own counters count the runs of a call's programs.)
            snap.hits[i] = self.hits(point)? + snap.stats.implied_hits(point);
            (snap.kernel_misses[i], runs[i]) = self.kernel_counts(point)?;
        }
        let counts = (snap.hits.iter().sum(), runs.iter().map(|(r, _)| r).sum());
        let collecting = !matches!(self.run_stats.collecting(Some(counts)), Collecting::No(_));
        snap.runs = collecting.then_some(runs);
        snap.waits = self.waits_now();
        if let (true, Some(w), Some(watch)) = (stacks, &snap.waits, &self.stacks) {
            watch.observe(&w.listed);
        }
        Ok(snap)
    }

    /// Runs the task iterator (`None`: not attached, or it failed: logged).
    fn waits_now(&self) -> Option<WaitsNow> {
        let it = self.waits.as_ref()?;
        match it.read() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("waits in progress not read this time: task iterator: {e}");
                None
            }
        }
    }

    fn hits(&self, point: Point) -> Result<u64, ReadError> {
        let per_cpu = self.hits.get(&point.index(), 0).map_err(|e| ReadError::map(HITS, e))?;
        Ok(per_cpu.iter().sum())
    }

    /// The runs the kernel reports missed at `point`, and its programs' (runs,
    /// run time in ns).
    fn kernel_counts(&self, point: Point) -> Result<(u64, (u64, u64)), ReadError> {
        let Some((progs, links)) = self.miss_sources.get(&point) else {
            return Ok((0, (0, 0)));
        };
        let (mut total, mut runs, mut ns) = (0, 0, 0);
        for fd in progs {
            let (m, r, t) = misses::prog_counts(fd.as_raw_fd()).map_err(|e| ReadError::ProgramInfo {
                point: point.name(),
                reason: e.to_string(),
            })?;
            total += m;
            runs += r;
            ns += t;
        }
        for fd in links {
            total += misses::link_missed(fd).map_err(|e| ReadError::LinkInfo {
                point: point.name(),
                reason: e.to_string(),
            })?;
        }
        Ok((total, (runs, ns)))
    }

    fn stats(&self) -> Result<Stats, ReadError> {
        let per_cpu = self.stats.get(&0, 0).map_err(|e| ReadError::map(STATS, e))?;
        let mut total = Stats::ZERO;
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
        Ok(total)
    }
}

/// A read that feeds a counter failed: the scrape is refused, never answered
/// with zeros or a partial set.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("map {map}: read failed: {reason}")]
    Map { map: &'static str, reason: String },
    /// `BPF_OBJ_GET_INFO_BY_FD` on a program (its recursion misses).
    #[error("program info of {point}: read failed: {reason}")]
    ProgramInfo { point: &'static str, reason: String },
    /// `BPF_OBJ_GET_INFO_BY_FD` on a kprobe link (its `missed`).
    #[error("kprobe link info of {point}: read failed: {reason}")]
    LinkInfo { point: &'static str, reason: String },
}

impl ReadError {
    fn map(map: &'static str, e: MapError) -> ReadError {
        let reason = match e {
            // aya's text names the call only: add the OS error.
            MapError::SyscallError(SyscallError { call, io_error }) => format!("{call}: {io_error}"),
            e => e.to_string(),
        };
        ReadError::Map { map, reason }
    }
}
