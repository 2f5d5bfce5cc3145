//! `cargo xtask ab`: the contention workload on each kernel, one after another,
//! with the daemon attached; a report with the daemon's and the workload's own
//! numbers, and plots.
use remote_vm_common::series::Expectation;
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use remote_vm_common::{
    Point,
    catalog::{self, CONTEXT_HOST, CONTEXT_REMOTE, LOCK_READ, LOCK_WRITE, Metric},
    classify::{self, HolderKind, Reason},
};
use serde_json::Value;

use crate::{vm, util::say};

/// The workload, as `key=value,…` for `rvm.ab=` (see `rvm-testkit stress --help`).
pub const DEFAULT_WORKLOAD: &str = "churn_threads=2,readers=2,rate=200,duration=20,memory_mb=64,hold_ms=800,hold_gap_ms=1500";
/// The reduced run inside `cargo xtask test`.
pub const TEST_WORKLOAD: &str = "churn_threads=2,readers=2,rate=100,duration=8,memory_mb=32,hold_ms=500,hold_gap_ms=500";

/// Reads within this of a decision's edge (the stall threshold, a hold's end)
/// are left undecided: the workload's clocks and the kernel's differ by the
/// syscall's own entry and exit.
const EDGE_S: f64 = 0.005;
/// How far apart the holder's end stamp and a blocked reader's return may be.
const END_SLACK_S: f64 = 0.05;

/// What the holder's write holds did to the readers, from the workload's own
/// clocks only.
#[derive(Debug, Default)]
struct HoldTruth {
    /// Hold lengths (s), by the holder's clock.
    holds: Vec<f64>,
    /// Per hold: the longest latency of a read that started in it (s).
    blocked: Vec<f64>,
    /// Reads started during a hold.
    reads_in_holds: u64,
    /// Reads that certainly stalled: started in a hold more than the
    /// threshold before its end, at least the threshold long, and returned as
    /// it ended (one stall each: a cmdline read's second call finds the lock
    /// free).
    certain: u64,
    /// Reads that may have stalled: at least the threshold long, but not
    /// certainly waiting that long for the lock (churn, scheduling, a hold
    /// that began between a cmdline read's two calls, the edges).
    undecided: u64,
    /// The longest certain stall's read (s).
    longest: f64,
    /// The longest read of all (s): no wait seen in progress can be longer.
    longest_read: f64,
}

impl HoldTruth {
    fn of(workload: &Value, threshold: f64) -> HoldTruth {
        let holds: Vec<(f64, f64)> = workload["holds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h[0].as_f64()? / 1e9, h[1].as_f64()? / 1e9)))
            .collect();
        let mut t = HoldTruth {
            holds: holds.iter().map(|(s, e)| e - s).collect(),
            blocked: vec![0.0; holds.len()],
            ..HoldTruth::default()
        };
        for r in workload["reads"].as_array().into_iter().flatten() {
            let (Some(start), Some(took)) = (r["start_ns"].as_f64(), r["took_ns"].as_f64()) else { continue };
            let (start, took) = (start / 1e9, took / 1e9);
            t.longest_read = t.longest_read.max(took);
            let hold = holds.iter().position(|(s, e)| *s <= start && start < *e);
            if let Some(i) = hold {
                t.reads_in_holds += 1;
                t.blocked[i] = t.blocked[i].max(took);
            }
            if took < threshold - EDGE_S {
                continue;
            }
            let certain = hold.is_some_and(|i| {
                let end = holds[i].1;
                // Blocked by this hold: it returned as the hold ended. The
                // holder stamps its end after mprotect() has returned, which
                // under emulation came up to 10 ms after the woken reader's.
                end - start >= threshold + END_SLACK_S && took >= threshold + EDGE_S && (start + took - end).abs() <= END_SLACK_S
            });
            if certain {
                t.certain += 1;
                t.longest = t.longest.max(took);
            } else {
                t.undecided += 1;
            }
        }
        t
    }
}

/// The sample key of the daemon's `__access_remote_vm()` entries.
fn entries_key() -> String {
    format!("{}{{probe=\"{}\"}}", catalog::PROBE_HITS.name, Point::AccessRemoteVmEntry.name())
}

/// The sample key of the reads by path `p`.
fn reads_key(p: classify::Path) -> String {
    format!("{}{{path=\"{}\"}}", catalog::READS.name, p.label())
}

/// One kernel's run.
struct Run {
    kernel: vm::Kernel,
    result: Value,
}

impl Run {
    fn delta(&self, key: &str) -> f64 {
        let get = |side: &str| self.result[side][key].as_f64();
        match (get("before"), get("after")) {
            (Some(b), Some(a)) => a - b,
            _ => f64::NAN,
        }
    }

    fn has(&self, key: &str) -> bool {
        self.result["after"][key].is_number()
    }

    fn workload(&self) -> &Value {
        &self.result["workload"]
    }

    fn threshold(&self) -> f64 {
        self.result["stall_threshold_seconds"].as_f64().unwrap_or(f64::NAN)
    }

    fn truth(&self) -> HoldTruth {
        HoldTruth::of(self.workload(), self.threshold())
    }

    /// Stalls of the read lock, over every holder op (the series' labels
    /// are sorted: `lock_mode` comes first).
    fn stalls(&self) -> f64 {
        let prefix = format!("{}{{lock_mode=\"{LOCK_READ}\",", catalog::STALLS.name);
        let sum = |side: &str| -> Option<f64> {
            let series = self.result[side].as_object()?;
            let values: Vec<f64> = series.iter().filter(|(k, _)| k.starts_with(&prefix)).filter_map(|(_, v)| v.as_f64()).collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        match (sum("before"), sum("after")) {
            (Some(b), Some(a)) => a - b,
            _ => f64::NAN,
        }
    }

    /// Stalls in `/stalls` by who held the lock when the wait began: the
    /// target's holder thread or a churn thread (writers), readers (e.g.
    /// another remote access, with a writer queued: `writer_waiting`), other.
    fn stalls_by_role(&self) -> [u64; 4] {
        let holder = self.workload()["holder_tid"].as_u64().unwrap_or(0);
        let churn: Vec<u64> = self.workload()["churn_tids"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
        let mut by = [0; 4];
        for s in self.result["stalls"].as_array().into_iter().flatten() {
            let (kind, tid) = (s["holder"]["kind"].as_str().unwrap_or(""), s["holder"]["tid"].as_u64().unwrap_or(0));
            let (writer, readers) = (HolderKind::Writer.label(), HolderKind::Readers.label());
            let role = match kind {
                k if k == writer && holder != 0 && tid == holder => 0,
                k if k == writer && churn.contains(&tid) => 1,
                k if k == readers => 2,
                _ => 3,
            };
            by[role] += 1;
        }
        by
    }

    fn calls(&self) -> u64 {
        ["mem", "cmdline", "environ", "peek"]
            .iter()
            .map(|k| self.workload()[k]["calls"].as_u64().unwrap_or(0))
            .sum()
    }

    fn latencies(&self) -> Vec<u64> {
        self.workload()["latencies_ns"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    fn quantile(&self, q: f64) -> f64 {
        let l = self.latencies();
        if l.is_empty() {
            return f64::NAN;
        }
        l[(((l.len() - 1) as f64) * q).round() as usize] as f64 / 1e9
    }

    /// Cumulative `(le, count)` of a histogram over the run, summed over every
    /// series whose labels include `labels` (comma-separated `k="v"`).
    fn buckets(&self, metric: &Metric, labels: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{}{{", metric.sample("_bucket"));
        let mut by_le: std::collections::BTreeMap<u64, (f64, f64)> = std::collections::BTreeMap::new();
        for (k, _) in self.result["after"].as_object().into_iter().flatten() {
            if !k.starts_with(&prefix) || !labels.split(',').filter(|l| !l.is_empty()).all(|l| k.contains(l)) {
                continue;
            }
            let Some(le) = k.split("le=\"").nth(1).and_then(|s| s.split('"').next()) else { continue };
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            let entry = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            entry.1 += self.delta(k);
        }
        let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// The upper bound of the bucket that holds quantile `q` (log2 buckets: "≤").
    fn bucket_quantile(&self, metric: &Metric, labels: &str, q: f64) -> Option<f64> {
        let b = self.buckets(metric, labels);
        let total = b.last()?.1;
        if total <= 0.0 {
            return None;
        }
        b.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
    }
}

/// A count, or `–` where it was not measured (no such series: e.g. write
/// waits when no write-mode probe ran).
fn fmt_n(v: f64) -> String {
    if v.is_nan() { "–".into() } else { format!("{v}") }
}

fn fmt_s(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.is_nan() => "–".into(),
        Some(v) if v.is_infinite() => "> range".into(),
        Some(v) if v < 1e-3 => format!("{:.1} µs", v * 1e6),
        Some(v) if v < 1.0 => format!("{:.2} ms", v * 1e3),
        Some(v) => format!("{v:.2} s"),
    }
}

pub fn run(root: &Path, kernels: Vec<vm::Kernel>, workload: &str) -> Result<PathBuf> {
    let stamp = {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        format!("run-{secs}")
    };
    let dir = root.join("target/ab").join(&stamp);
    std::fs::create_dir_all(&dir)?;
    let initramfs = dir.join("initramfs.cpio");
    vm::write_test_initramfs(root, &initramfs)?;
    let mut runs = Vec::new();
    for k in &kernels {
        say!("ab: {}: booting under QEMU TCG, workload {workload}", k.name);
        let boot = vm::boot_with(k, &initramfs, &dir.join(&k.name), &format!("rvm.mode=ab rvm.ab={workload}"), Duration::from_secs(900), "ab-result ")?;
        let result = boot.report.with_context(|| format!("{}: no ab-result; console {}", k.name, boot.console.display()))?;
        say!("ab: {}: done in {:.0} s", k.name, boot.seconds);
        runs.push(Run {
            kernel: k.clone(),
            result,
        });
    }
    let report = report(&runs, workload, &stamp);
    std::fs::write(dir.join("report.md"), &report)?;
    plots(&dir, &runs)?;
    say!("ab: report {}", dir.join("report.md").display());
    println!("{report}");
    // The report must agree with the workload's own ground truth.
    let mut problems = Vec::new();
    for r in &runs {
        let entries = r.delta(&entries_key());
        if entries != r.calls() as f64 {
            problems.push(format!("{}: daemon saw {entries} calls, the workload made {}", r.kernel.name, r.calls()));
        }
        let reads: f64 = classify::Path::ALL.iter().map(|&p| r.delta(&reads_key(p))).sum();
        if reads != r.calls() as f64 {
            problems.push(format!("{}: {reads} reads classified, {} calls made", r.kernel.name, r.calls()));
        }
        // Stalls: the daemon's count lies in the workload's bounds; each
        // certain stall names who held the lock; the longest wait seen in
        // progress is no longer than the longest read.
        if !r.workload()["holds"].as_array().is_none_or(|h| h.is_empty()) {
            let (t, stalls) = (r.truth(), r.stalls());
            if stalls < t.certain as f64 || stalls > (t.certain + t.undecided) as f64 {
                problems.push(format!("{}: {stalls} stalls, the workload says {} certain + {} undecided", r.kernel.name, t.certain, t.undecided));
            }
            // (A hold that began after the readers stopped has no reads.)
            if r.kernel.expectation() == Expectation::Unpatched && t.reads_in_holds > 0 && t.certain == 0 {
                problems.push(format!("{}: no read stalled on the holds", r.kernel.name));
            }
            // Who held the lock when a certain stall's wait began: the holder
            // thread, or a churn thread the holder itself was queued behind
            // (its mprotect() clock includes that wait), or readers with a
            // writer queued — never nobody.
            let [holder, churn, readers, _] = r.stalls_by_role();
            if holder + churn + readers < t.certain {
                problems.push(format!(
                    "{}: {} stalls name a holder in the target, {} certainly waited for one",
                    r.kernel.name,
                    holder + churn + readers,
                    t.certain
                ));
            }
            let seen = r.result["in_progress_max"]["oldest_wait_seconds"].as_f64().unwrap_or(f64::NAN);
            if !(seen <= t.longest_read + EDGE_S) {
                problems.push(format!("{}: a wait of {seen} s seen in progress, the longest read took {} s", r.kernel.name, t.longest_read));
            }
        }
        let fast = r.delta(&reads_key(classify::Path::Fast));
        match r.kernel.expectation() {
            _ if r.kernel.is_patched() && !(fast > 0.0) => problems.push(format!("{}: no fast-path read", r.kernel.name)),
            Expectation::Unpatched | Expectation::Legacy if fast != 0.0 => problems.push(format!("{}: {fast} fast-path reads", r.kernel.name)),
            _ => {}
        }
    }
    if report.contains("NaN") {
        problems.push("the report prints NaN (a figure not measured must read –)".into());
    }
    if !problems.is_empty() {
        bail!("A/B report does not hold: {}", problems.join("; "));
    }
    Ok(dir)
}

fn report(runs: &[Run], workload: &str, stamp: &str) -> String {
    let mut o = String::new();
    let names: Vec<&str> = runs.iter().map(|r| r.kernel.name.as_str()).collect();
    let _ = writeln!(o, "# A/B: remote reads under mmap_lock contention ({stamp})\n");
    let _ = writeln!(
        o,
        "Workload `{workload}` (`rvm-testkit stress`): a target whose threads churn its address space (mmap, fault, mprotect, madvise, munmap of 1 MiB, flat out), read by monitoring-like readers (`/proc/PID/mem` 4 KiB, `cmdline`, `environ`, ptrace PEEKDATA) at a fixed rate, with remote-vm-daemon attached.\n"
    );
    let _ = writeln!(
        o,
        "**Emulated time.** Each kernel ran alone in QEMU with TCG (KVM does not work on this machine): absolute times are emulation times, not bare-metal ones; compare kernels within this run only. Where KVM works, the same command gives native-speed numbers.\n"
    );
    let _ = writeln!(o, "| | {} |", names.join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(runs.len()));
    let row = |o: &mut String, title: &str, f: &dyn Fn(&Run) -> String| {
        let _ = writeln!(o, "| {title} | {} |", runs.iter().map(f).collect::<Vec<_>>().join(" | "));
    };
    row(&mut o, "kernel", &|r| r.kernel.origin.clone());
    row(&mut o, "`patched`", &|r| {
        r.result["after"]
            .as_object()
            .and_then(|m| m.keys().find(|k| k.starts_with(catalog::KERNEL_INFO.name)).cloned())
            .and_then(|k| k.split("patched=\"").nth(1).and_then(|s| s.split('"').next()).map(str::to_string))
            .unwrap_or_else(|| "?".into())
    });
    row(&mut o, "calls made (workload ground truth)", &|r| r.calls().to_string());
    row(&mut o, "calls seen (daemon, entries)", &|r| {
        fmt_n(r.delta(&entries_key()))
    });
    for p in classify::Path::ALL {
        row(&mut o, &format!("reads `{}`", p.label()), &|r| fmt_n(r.delta(&reads_key(p))));
    }
    row(&mut o, "fast-path ratio", &|r| {
        let fast = r.delta(&reads_key(classify::Path::Fast));
        let all: f64 = classify::Path::ALL.iter().map(|&p| r.delta(&reads_key(p))).sum();
        if all > 0.0 { format!("{:.1} %", 100.0 * fast / all) } else { "–".into() }
    });
    for reason in Reason::ALL.map(Reason::label) {
        row(&mut o, &format!("fallbacks `{reason}`"), &|r| {
            let k = format!("{}{{reason=\"{reason}\"}}", catalog::FALLBACKS.name);
            if r.has(&k) { fmt_n(r.delta(&k)) } else { "absent".into() }
        });
    }
    for (q, label) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        row(&mut o, &format!("remote-read latency {label}, workload (user space)"), &|r| fmt_s(Some(r.quantile(q))));
        row(&mut o, &format!("remote-read latency {label}, daemon (≤ log2 bucket)"), &|r| {
            fmt_s(r.bucket_quantile(&catalog::READ_DURATION, "", q))
        });
    }
    for mode in [LOCK_READ, LOCK_WRITE] {
        let labels = format!("context=\"{CONTEXT_REMOTE}\",mode=\"{mode}\"");
        row(&mut o, &format!("remote reads' mmap_lock {mode} waits"), &|r| {
            fmt_n(r.delta(&format!("{}{{{labels}}}", catalog::MMAP_LOCK_WAIT.count())))
        });
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            row(&mut o, &format!("… {mode} wait {label} (≤)"), &|r| {
                fmt_s(r.bucket_quantile(&catalog::MMAP_LOCK_WAIT, &labels, q))
            });
        }
    }
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        row(&mut o, &format!("mmap_lock hold {label} (≤)"), &|r| fmt_s(r.bucket_quantile(&catalog::MMAP_LOCK_HOLD, "", q)));
    }
    row(&mut o, "host-wide contended waits", &|r| {
        let host = |mode: &str| format!("{}{{context=\"{CONTEXT_HOST}\",mode=\"{mode}\"}}", catalog::MMAP_LOCK_WAIT.count());
        let read = r.delta(&host(LOCK_READ));
        let write = r.delta(&host(LOCK_WRITE));
        format!("{} read, {} write", fmt_n(read), fmt_n(write))
    });
    let range = |v: &[f64]| -> String {
        let (lo, hi) = (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
        if v.is_empty() { "–".into() } else { format!("{}–{}", fmt_s(Some(lo)), fmt_s(Some(hi))) }
    };
    row(&mut o, "write holds by the target's holder thread (its clock)", &|r| {
        let t = r.truth();
        format!("{} of {}", t.holds.len(), range(&t.holds))
    });
    row(&mut o, "reads started during a hold", &|r| r.truth().reads_in_holds.to_string());
    row(&mut o, "… the longest of them per hold (blocked)", &|r| range(&r.truth().blocked));
    row(&mut o, &format!("stalls (daemon, `{}`)", catalog::STALLS.name), &|r| fmt_n(r.stalls()));
    row(&mut o, "stalls (workload: certain + undecided)", &|r| {
        let t = r.truth();
        format!("{} + {} (threshold {})", t.certain, t.undecided, fmt_s(Some(r.threshold())))
    });
    row(&mut o, "longest wait seen in progress (daemon, sampled 4/s)", &|r| {
        fmt_s(r.result["in_progress_max"]["oldest_wait_seconds"].as_f64())
    });
    row(&mut o, "… longest stalled read (workload)", &|r| fmt_s(Some(r.truth().longest)));
    row(&mut o, "most readers waiting at once (daemon, sampled)", &|r| {
        fmt_n(r.result["in_progress_max"]["waiters"].as_f64().unwrap_or(f64::NAN))
    });
    row(&mut o, "stalls by who held the lock: holder thread / churn thread / readers / other", &|r| {
        let [h, c, readers, other] = r.stalls_by_role();
        format!("{h} / {c} / {readers} / {other}")
    });
    row(&mut o, "target churn throughput", &|r| {
        let ops = r.workload()["churn_ops"].as_f64().unwrap_or(0.0);
        let secs = r.workload()["seconds"].as_f64().unwrap_or(1.0);
        format!("{:.0} ops/s", ops / secs)
    });
    let _ = writeln!(o, "\nPlots: `latency-cdf.svg` (remote-read latency seen by the readers, per kernel), `wait-cdf.svg` (remote reads' mmap_lock read waits, from the daemon's log2 histogram, per kernel), `holds.svg` (the latency of each read started within 0.5 s of a hold against when it started, the holder's write holds shaded, per kernel).");
    let _ = writeln!(
        o,
        "\nStalls are checked, not just shown: the daemon's count must lie between the reads that certainly stalled (started in a hold more than the threshold before its end, at least the threshold long, returned within 50 ms of its end) and those plus the undecided ones (at least the threshold long otherwise); every certain stall must name a holder in `/stalls` (the holder thread; a churn thread when the holder's own `mprotect()` was still queued behind it; or readers with a writer queued); the longest wait the daemon saw in progress must not exceed the longest read."
    );
    o
}

fn plots(dir: &Path, runs: &[Run]) -> Result<()> {
    use plotters::prelude::*;
    let font: &'static [u8] = Box::leak(
        std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
            .context("read the DejaVu font (Debian package fonts-dejavu-core)")?
            .into_boxed_slice(),
    );
    let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, font);
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    let draw = |file: &str, title: &str, x_desc: &str, series: Vec<(String, Vec<(f64, f64)>)>| -> Result<()> {
        let path = dir.join(file);
        let root = SVGBackend::new(&path, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let xs: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).filter(|x| *x > 0.0 && x.is_finite()).collect();
        let (lo, hi) = (
            xs.iter().copied().fold(f64::INFINITY, f64::min).max(1e-9),
            xs.iter().copied().fold(0.0, f64::max).max(1e-8),
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..1.0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("fraction ≤ x")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, (name, points)) in series.into_iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(points.into_iter().filter(|(x, _)| *x > 0.0 && x.is_finite()), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    };
    let cdf = runs
        .iter()
        .map(|r| {
            let l = r.latencies();
            let n = l.len().max(1) as f64;
            let step = (l.len() / 400).max(1);
            let pts = l
                .iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0 || *i + 1 == l.len())
                .map(|(i, v)| (*v as f64 / 1e9, (i + 1) as f64 / n))
                .collect();
            (r.kernel.name.clone(), pts)
        })
        .collect();
    draw("latency-cdf.svg", "Remote-read latency seen by the readers (TCG)", "seconds", cdf)?;
    let waits = runs
        .iter()
        .map(|r| {
            let b = r.buckets(&catalog::MMAP_LOCK_WAIT, &format!("context=\"{CONTEXT_REMOTE}\",mode=\"{LOCK_READ}\""));
            let total = b.last().map_or(0.0, |x| x.1).max(1.0);
            (r.kernel.name.clone(), b.into_iter().map(|(le, c)| (le, c / total)).collect())
        })
        .collect();
    draw("wait-cdf.svg", "Remote reads' mmap_lock read waits (daemon, log2 buckets, TCG)", "seconds", waits)?;
    holds_plot(dir, runs)
}

/// Each read's latency against when it started, the holds shaded; one panel per kernel.
fn holds_plot(dir: &Path, runs: &[Run]) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let path = dir.join("holds.svg");
    let root = SVGBackend::new(&path, (900, 300 * runs.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    for (area, r) in root.split_evenly((runs.len().max(1), 1)).iter().zip(runs) {
        let w = r.workload();
        let holds: Vec<(f64, f64)> = w["holds"].as_array().into_iter().flatten().filter_map(|h| Some((h[0].as_f64()?, h[1].as_f64()?))).collect();
        let all: Vec<(f64, f64)> = w["reads"].as_array().into_iter().flatten().filter_map(|x| Some((x["start_ns"].as_f64()?, x["took_ns"].as_f64()?))).collect();
        let t0 = all.first().map_or(0.0, |x| x.0);
        // The reads around the holds (half a second either side), at most ~1500.
        let near: Vec<(f64, f64)> = all
            .iter()
            .copied()
            .filter(|(start, _)| holds.iter().any(|(s, e)| *start >= s - 5e8 && *start < e + 5e8))
            .collect();
        let step = (near.len() / 1500).max(1);
        let reads: Vec<(f64, f64)> = near.iter().copied().enumerate().filter(|(i, (_, took))| i % step == 0 || *took > 1e8).map(|(_, r)| r).collect();
        let span = all.last().map_or(1.0, |x| (x.0 - t0) / 1e9).max(1.0);
        let top = reads.iter().map(|x| x.1 / 1e9).fold(0.01, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{}: read latency vs start, write holds shaded (TCG)", r.kernel.name), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..span, 0f64..top)
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc("seconds into the run").y_desc("read latency, s").draw().map_err(|e| err(&e))?;
        chart
            .draw_series(holds.iter().map(|(s, e)| Rectangle::new([((s - t0) / 1e9, 0.0), ((e - t0) / 1e9, top)], RGBColor(255, 200, 120).mix(0.5).filled())))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(reads.iter().map(|(s, took)| Circle::new(((s - t0) / 1e9, took / 1e9), 1, BLUE.filled())))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose daemon had no write-mode probe: its write waits (and
    /// everything else absent) read `–`, never NaN.
    #[test]
    fn figures_not_measured_read_a_dash() {
        let read_waits = format!("{}{{context=\"{CONTEXT_REMOTE}\",mode=\"{LOCK_READ}\"}}", catalog::MMAP_LOCK_WAIT.count());
        let side = |n: f64| serde_json::json!({ entries_key(): n, reads_key(classify::Path::Slow): n, read_waits.clone(): n });
        let run = Run {
            kernel: vm::Kernel {
                name: "k".into(),
                image: PathBuf::new(),
                expect: "unpatched".into(),
                origin: "a kernel".into(),
                params: String::new(),
                isolate: Vec::new(),
                only: None,
            },
            result: serde_json::json!({ "before": side(0.0), "after": side(3.0), "workload": {} }),
        };
        let text = report(&[run], "w", "run-0");
        assert!(!text.contains("NaN"), "{text}");
        assert!(text.contains("| remote reads' mmap_lock write waits | – |"), "{text}");
        assert!(text.contains("| remote reads' mmap_lock read waits | 3 |"), "{text}");
    }
}
