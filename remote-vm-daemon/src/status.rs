//! The daemon's status as people read it (`check`, `/healthz`, the log) and as
//! programs read it (`check --format json`): kernel facts, one verdict per probe,
//! `patched`, and which metric families are exported or absent and why.
use remote_vm_common::catalog::Coverage;
use serde::Serialize;

use crate::{
    bpf::Attached,
    kernel::{KernelFacts, Layout},
    metrics::coverage::Sight,
};

/// One line per probe: its mode and whether it is exact, or `none` and why.
pub fn verdict_lines(attached: &Attached) -> Vec<String> {
    probes(attached).iter().map(ProbeStatus::line).collect()
}

pub fn kernel_line(f: &KernelFacts) -> String {
    format!(
        "kernel: release={} btf={} per_vma_lock={} rcu_table_free={} config={}",
        f.release,
        f.btf,
        f.per_vma_lock,
        f.rcu_table_free,
        config_source(f),
    )
}

/// Where the kernel config and the kernel's functions disagree: one
/// warning each (the kernel decided; see `KernelFacts::contradictions`).
pub fn contradiction_lines(f: &KernelFacts) -> Vec<String> {
    f.contradictions.iter().map(|c| format!("warning: kernel: {c}")).collect()
}

/// The preemption model and what it means for the probes.
pub fn preempt_line(f: &KernelFacts) -> String {
    let mut line = format!("preemption: {}", f.preempt);
    if f.preempt.model.skips_trampolines() {
        line.push_str(&format!(
            ": the kernel skips a trampoline program (fentry/fexit) on a CPU while a run of it there is preempted; \
             skipped runs are counted in {}, and a read whose lock or VMA probe run was skipped may be counted on the wrong path",
            remote_vm_common::catalog::PROBE_MISSES.name
        ));
    }
    line
}

fn config_source(f: &KernelFacts) -> String {
    f.config_source.as_ref().map_or("unknown".to_string(), |p| p.display().to_string())
}

pub fn patched_line(attached: &Attached) -> String {
    format!("patched: {} ({})", attached.patched.as_str(), attached.patched_why)
}

pub fn series_line(attached: &Attached) -> String {
    format!("series: {} ({})", attached.series.label(), attached.series_why)
}

/// Which metric families are exported and which are absent, and why.
pub fn coverage_lines(sight: &Sight, attached: &Attached) -> Vec<String> {
    coverage(sight, attached)
        .iter()
        .map(|c| match (c.exported, &c.why) {
            (true, _) => format!("metrics: {}: exported", c.what),
            (false, Some(why)) => format!("metrics: {}: absent ({why}; {})", c.what, c.needs),
            (false, None) => format!("metrics: {}: absent ({})", c.what, c.needs),
        })
        .collect()
}

pub fn summary_line(attached: &Attached) -> String {
    let (n, total) = attached.probe_counts();
    if n == total {
        format!("summary: all {total} probes attached")
    } else {
        format!("summary: degraded: {n} of {total} probes attached")
    }
}

/// `/healthz`: "ok", then the same lines as `check` after its BTF lines, then
/// why the last scrape failed while it does (`scrape_failure`).
pub fn healthz(facts: &KernelFacts, attached: &Attached, sight: &Sight, session_lines: &[String], scrape_failure: Option<&str>) -> String {
    let mut body = String::from("ok\n");
    let lines = [kernel_line(facts)]
        .into_iter()
        .chain(contradiction_lines(facts))
        .chain([preempt_line(facts)])
        .chain(verdict_lines(attached))
        .chain([patched_line(attached), series_line(attached)])
        .chain(coverage_lines(sight, attached))
        .chain(session_lines.iter().cloned())
        .chain(scrape_failure.map(scrape_failed_line));
    for line in lines {
        body.push_str(&line);
        body.push('\n');
    }
    body
}

/// The `/healthz` line while scrapes fail (503).
fn scrape_failed_line(why: &str) -> String {
    format!("scrape: failed, /metrics answers 503: {why}")
}

/// One probe's verdict.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ProbeStatus {
    pub probe: &'static str,
    pub family: &'static str,
    /// The mode it attached in, or `none`.
    pub mode: &'static str,
    pub attached: bool,
    /// Every run is seen (trampolines, tracepoints) or may be missed (kprobes).
    pub exact: bool,
    /// Kprobe links whose misses the kernel counts (kprobe modes only).
    pub kprobe_links: usize,
    /// Why it did not attach: per mode tried, or why none was tried.
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Reason {
    /// The mode tried, or `null` when the family was not tried.
    pub mode: Option<&'static str>,
    pub error: String,
    /// The OS error code the kernel refused with (e.g. 1 for EPERM), if any.
    pub errno: Option<i32>,
}

impl ProbeStatus {
    fn line(&self) -> String {
        if !self.attached {
            let reasons: Vec<String> = self
                .reasons
                .iter()
                .map(|r| match r.mode {
                    Some(m) => format!("{m}: {}", r.error),
                    None => r.error.clone(),
                })
                .collect();
            return format!("probe {}: none ({})", self.probe, reasons.join("; "));
        }
        if self.exact {
            return format!("probe {}: {} (exact)", self.probe, self.mode);
        }
        let source = if self.kprobe_links > 0 {
            format!("the kernel counts them on {} kprobe link(s)", self.kprobe_links)
        } else {
            "this kernel keeps no kprobe miss counter (Linux < 6.7)".to_string()
        };
        format!(
            "probe {}: {} (may miss events; see {}: {source})",
            self.probe,
            self.mode,
            remote_vm_common::catalog::PROBE_MISSES.name
        )
    }
}

pub fn probes(attached: &Attached) -> Vec<ProbeStatus> {
    let mut out = Vec::new();
    for v in &attached.verdicts {
        for point in v.family.spec().points {
            out.push(ProbeStatus {
                probe: point.name(),
                family: v.family.name(),
                mode: v.mode_name(),
                attached: v.attached(),
                exact: v.mode.is_some_and(|m| m.exact),
                kprobe_links: attached.kprobe_links.get(point).copied().unwrap_or(0),
                reasons: v
                    .failures
                    .iter()
                    .map(|(mode, why)| Reason {
                        mode: *mode,
                        error: why.to_string(),
                        errno: match why {
                            crate::bpf::AttachError::Kernel { errno, .. } => *errno,
                            _ => None,
                        },
                    })
                    .collect(),
            });
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct CoverageStatus {
    pub what: &'static str,
    pub exported: bool,
    pub needs: &'static str,
    /// What failed here, when more is known than `needs` says (e.g. the task
    /// iterator's error), else `null`.
    pub why: Option<String>,
    /// The metric families it exports.
    pub metrics: Vec<&'static str>,
}

pub fn coverage(sight: &Sight, attached: &Attached) -> Vec<CoverageStatus> {
    Coverage::REPORTED
        .iter()
        .map(|c| CoverageStatus {
            what: c.what(),
            exported: sight.covers(*c),
            needs: c.needs(),
            why: match c {
                // The iterator's own failure (its probes attached).
                Coverage::WaitsNow if !sight.covers(*c) && sight.covers(Coverage::RemoteLock) => attached.waits.clone().err(),
                _ => None,
            },
            metrics: remote_vm_common::catalog::ALL
                .iter()
                .filter(|m| m.coverage.contains(c))
                .map(|m| m.name)
                .collect(),
        })
        .collect()
}

/// The document `check --format json` prints: a stable shape, documented in
/// docs/operating.md ("check --format json"). Fields are only ever added.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The version of this shape.
    pub format: u32,
    pub config: String,
    pub kernel: KernelStatus,
    pub btf: Vec<BtfItem>,
    pub probes: Vec<ProbeStatus>,
    pub patched: Decided,
    /// Which version of the series the kernel behaves as.
    pub series: Decided,
    pub metrics: Vec<CoverageStatus>,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct KernelStatus {
    pub release: String,
    pub btf: String,
    pub per_vma_lock: &'static str,
    pub rcu_table_free: &'static str,
    pub config: String,
    /// Where the config contradicts the kernel's functions (empty: nowhere).
    pub contradictions: Vec<String>,
    pub preempt: PreemptStatus,
}

#[derive(Debug, Serialize)]
pub struct PreemptStatus {
    /// `none`, `voluntary`, `full`, `lazy`, `rt` or `unknown`.
    pub model: &'static str,
    /// Where it was read.
    pub source: String,
    /// Trampoline programs can be skipped while a run of theirs is preempted.
    pub skips_trampolines: bool,
}

#[derive(Debug, Serialize)]
pub struct BtfItem {
    /// The line `check` prints for it.
    pub line: String,
}

/// A value the start-up probe reads decided, and how.
#[derive(Debug, Serialize)]
pub struct Decided {
    /// `patched`: `yes`, `no` or `unknown`; `series`: `v1`, `v2`, `none` or `unknown`.
    pub value: &'static str,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub attached: usize,
    pub total: usize,
    /// `check`'s exit status: 0 all attached, 2 degraded.
    pub exit: u8,
}

pub fn check_report(config: String, facts: &KernelFacts, layout: &Layout, attached: &Attached, sight: &Sight, exit: u8) -> CheckReport {
    let (n, total) = attached.probe_counts();
    CheckReport {
        format: 1,
        config,
        kernel: KernelStatus {
            release: facts.release.clone(),
            btf: facts.btf.to_string(),
            per_vma_lock: facts.per_vma_lock.as_str(),
            rcu_table_free: facts.rcu_table_free.as_str(),
            config: config_source(facts),
            contradictions: facts.contradictions.clone(),
            preempt: PreemptStatus {
                model: facts.preempt.model.as_str(),
                source: facts.preempt.source.clone(),
                skips_trampolines: facts.preempt.model.skips_trampolines(),
            },
        },
        btf: layout.lines().into_iter().map(|line| BtfItem { line }).collect(),
        probes: probes(attached),
        patched: Decided {
            value: attached.patched.as_str(),
            why: attached.patched_why.clone(),
        },
        series: Decided {
            value: attached.series.label(),
            why: attached.series_why.clone(),
        },
        metrics: coverage(sight, attached),
        summary: Summary {
            attached: n,
            total,
            exit,
        },
    }
}
