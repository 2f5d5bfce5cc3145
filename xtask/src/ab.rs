//! `cargo xtask ab`: the contention workload on each kernel, one after another,
//! with the daemon attached; a report with the daemon's and the workload's own
//! numbers, and plots.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use remote_vm_common::{
    Point,
    catalog::{self, CONTEXT_HOST, CONTEXT_REMOTE, LOCK_READ, LOCK_WRITE, Metric},
    classify::{self, Reason},
};
use serde_json::Value;

use crate::{vm, util::say};

/// The workload, as `key=value,…` for `rvm.ab=` (see `rvm-testkit stress --help`).
pub const DEFAULT_WORKLOAD: &str = "churn_threads=2,readers=2,rate=200,duration=20,memory_mb=64";
/// The reduced run inside `cargo xtask test`.
pub const TEST_WORKLOAD: &str = "churn_threads=2,readers=2,rate=100,duration=6,memory_mb=32";

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
        let fast = r.delta(&reads_key(classify::Path::Fast));
        match r.kernel.expect() {
            "patched" if !(fast > 0.0) => problems.push(format!("{}: no fast-path read", r.kernel.name)),
            "unpatched" | "legacy" if fast != 0.0 => problems.push(format!("{}: {fast} fast-path reads", r.kernel.name)),
            _ => {}
        }
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
        format!("{}", r.delta(&entries_key()))
    });
    for p in classify::Path::ALL {
        row(&mut o, &format!("reads `{}`", p.label()), &|r| format!("{}", r.delta(&reads_key(p))));
    }
    row(&mut o, "fast-path ratio", &|r| {
        let fast = r.delta(&reads_key(classify::Path::Fast));
        let all: f64 = classify::Path::ALL.iter().map(|&p| r.delta(&reads_key(p))).sum();
        if all > 0.0 { format!("{:.1} %", 100.0 * fast / all) } else { "–".into() }
    });
    for reason in Reason::ALL.map(Reason::label) {
        row(&mut o, &format!("fallbacks `{reason}`"), &|r| {
            let k = format!("{}{{reason=\"{reason}\"}}", catalog::FALLBACKS.name);
            if r.has(&k) { format!("{}", r.delta(&k)) } else { "absent".into() }
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
            format!("{}", r.delta(&format!("{}{{{labels}}}", catalog::MMAP_LOCK_WAIT.count())))
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
        format!("{read} read, {write} write")
    });
    row(&mut o, "target churn throughput", &|r| {
        let ops = r.workload()["churn_ops"].as_f64().unwrap_or(0.0);
        let secs = r.workload()["seconds"].as_f64().unwrap_or(1.0);
        format!("{:.0} ops/s", ops / secs)
    });
    let _ = writeln!(o, "\nPlots: `latency-cdf.svg` (remote-read latency seen by the readers, per kernel), `wait-cdf.svg` (remote reads' mmap_lock read waits, from the daemon's log2 histogram, per kernel).");
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
    Ok(())
}
