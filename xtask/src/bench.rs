//! `cargo xtask bench`: what the daemon costs, natively on this host (for what
//! attaches here) and in the patched-kernel VM (emulated time), as off/on ratios
//! from one run. Writes `target/bench/report.md`.
use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{vm, util::say};

pub struct Args {
    pub reps: usize,
    pub scale: f64,
    pub scrape_seconds: u64,
}

fn native(root: &Path, a: &Args) -> Result<Value> {
    say!("bench: natively on this host (reps {}, scale {})", a.reps, a.scale);
    let out = Command::new(root.join("target/release/rvm-testkit"))
        .arg("bench")
        .arg("--daemon")
        .arg(root.join("target/release/remote-vm-daemon"))
        .args(["--reps", &a.reps.to_string(), "--scale", &a.scale.to_string()])
        .args(["--scrape-seconds", &a.scrape_seconds.to_string()])
        .output()
        .context("run rvm-testkit bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines().filter(|l| l.starts_with("bench: ")) {
        say!("  {l}");
    }
    if !out.status.success() {
        bail!("bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json = text.lines().find_map(|l| l.strip_prefix("bench-result ")).context("no bench-result")?;
    Ok(serde_json::from_str(json)?)
}

fn in_vm(root: &Path, a: &Args) -> Result<Value> {
    let kernel = vm::shared_kernels(root).into_iter().next().context("shared kernels")?;
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let initramfs = dir.join("initramfs.cpio");
    vm::write_test_initramfs(root, &initramfs)?;
    say!("bench: in the {} VM under QEMU TCG (emulated time)", kernel.name);
    let boot = vm::boot_with(
        &kernel,
        &initramfs,
        &dir.join(&kernel.name),
        &format!("rvm.mode=bench rvm.bench=reps={},scale={},scrape_seconds={}", a.reps, a.scale, a.scrape_seconds),
        Duration::from_secs(1800),
        "bench-result ",
    )?;
    let console = std::fs::read_to_string(&boot.console).unwrap_or_default();
    for l in console.lines().filter(|l| l.starts_with("bench: ")) {
        say!("  [{}] {l}", kernel.name);
    }
    boot.report.with_context(|| format!("no bench-result; console {}", boot.console.display()))
}

fn table(title: &str, r: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### {title} (Linux {})\n", r["release"].as_str().unwrap_or("?"));
    let attached: Vec<String> = r["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")))
        .collect();
    let _ = writeln!(o, "Attached in the default mode: {}.\n", attached.join(", "));
    let _ = writeln!(o, "| workload | daemon mode | off | on | on / off | on / (daemon, nothing attached) |");
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    let ratios: Vec<&Value> = r["ratios"].as_array().into_iter().flatten().collect();
    for x in &ratios {
        let baseline = ratios
            .iter()
            .find(|b| b["workload"] == x["workload"] && b["mode"] == "daemon running, nothing attached")
            .and_then(|b| b["on_ns"].as_f64());
        let on = x["on_ns"].as_f64().unwrap_or(f64::NAN);
        let vs_baseline = if x["mode"] == "daemon running, nothing attached" {
            "–".to_string()
        } else {
            baseline.map_or("–".into(), |b| format!("**{:.3}x**", on / b))
        };
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} ns | {on:.0} ns | {:.3}x | {vs_baseline} |",
            x["workload"].as_str().unwrap_or(""),
            x["mode"].as_str().unwrap_or(""),
            x["off_ns"].as_f64().unwrap_or(f64::NAN),
            x["ratio"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(
        o,
        "\nDaemon at a 1 s scrape under 500 remote reads/s: **{:.3} % of a core**, **RSS {:.1} MiB**; `/metrics` ({} bytes) p50 **{:.2} ms**, p99 **{:.2} ms**.\n",
        r["daemon_cpu_percent"].as_f64().unwrap_or(f64::NAN),
        r["daemon_rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        r["metrics_bytes"],
        r["metrics_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["metrics_p99_ms"].as_f64().unwrap_or(f64::NAN)
    );
    o
}

pub fn run(root: &Path, a: &Args) -> Result<String> {
    let host = native(root, a)?;
    let guest = in_vm(root, a)?;
    let mut report = format!(
        "Command: `cargo xtask bench --reps {} --scale {} --scrape-seconds {}`\n\n",
        a.reps, a.scale, a.scrape_seconds
    );
    report.push_str(&table("Native, this host", &host));
    report.push_str(&table("Patched 6.12 kernel in QEMU TCG (emulated time)", &guest));
    std::fs::create_dir_all(root.join("target/bench"))?;
    std::fs::write(root.join("target/bench/report.md"), &report)?;
    say!("bench: report in {}", root.join("target/bench/report.md").display());
    println!("{report}");
    Ok(report)
}

/// How far two boots' figures may differ: instructions are deterministic up to
/// the few interrupts a run catches.
pub const AGREE_PERCENT: f64 = 0.5;

/// One boot's figure for (configuration, workload).
fn per_op(r: &Value, configuration: &str, workload: &str) -> Option<f64> {
    r["measured"]
        .as_array()?
        .iter()
        .find(|m| m["configuration"] == configuration && m["workload"] == workload)
        .and_then(|m| m["per_op"].as_f64())
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect()
}

/// The workloads in the order measured.
fn workloads(r: &Value) -> Vec<String> {
    let mut w: Vec<String> = Vec::new();
    for m in r["measured"].as_array().into_iter().flatten() {
        let name = m["workload"].as_str().unwrap_or("").to_string();
        if !w.contains(&name) {
            w.push(name);
        }
    }
    w
}

/// A difference in % and where it was seen.
type Worst = (f64, String);

/// Whether difference `d` is worse than `than` (a figure missing in one boot, NaN, is).
fn is_worse(d: f64, than: f64) -> bool {
    d.is_nan() || d > than
}

/// The largest difference between the boots, in % of the first, and where.
fn disagreement(runs: &[Value]) -> Worst {
    let mut worst = (0.0, String::new());
    let Some(first) = runs.first() else {
        return worst;
    };
    for c in strs(&first["configurations"]) {
        for w in workloads(first) {
            let Some(a) = per_op(first, &c, &w) else {
                continue;
            };
            for r in &runs[1..] {
                let b = per_op(r, &c, &w).unwrap_or(f64::NAN);
                let d = 100.0 * (b - a).abs() / a;
                if is_worse(d, worst.0) {
                    worst = (d, format!("{c}, {w}: {a:.1} vs {b:.1}"));
                }
            }
        }
    }
    worst
}

/// What the agreement check compared, as a sentence: `runs` results, each of
/// `boots` boots (a boot per configuration: only "off" is in every boot),
/// and the largest difference `worst` at `at`; `em` marks the figure up.
fn agreement(runs: usize, boots: u64, (worst, at): &Worst, em: &str) -> String {
    match (runs, boots) {
        (0 | 1, 0 | 1) => "one boot: no other to agree with (`--runs 2` boots again and compares)".to_string(),
        (0 | 1, b) => format!("\"off\" agrees between the {b} boots within {em}{worst:.3} %{em} ({at})"),
        (n, 0 | 1) => format!("the {n} boots agree within {em}{worst:.3} %{em} on every figure ({at})"),
        (n, b) => format!("the {n} runs of {b} boots each agree within {em}{worst:.3} %{em} on every figure, \"off\" between all boots ({at})"),
    }
}

/// The boots behind each result (1 where every configuration had one boot).
fn boots_of(r: &Value) -> u64 {
    r["boots"].as_u64().unwrap_or(1)
}

/// The report for one kernel from its boots (the first boot's figures; the
/// others only for agreement, `agree` the largest difference found).
fn icount_tables(kernel: &vm::Kernel, runs: &[Value], agree: &Worst) -> String {
    let r = &runs[0];
    let mut o = String::new();
    let _ = writeln!(o, "### {} kernel (Linux {})\n", kernel.name, r["release"].as_str().unwrap_or("?"));
    if let Some(n) = r["boots"].as_u64() {
        let why = if boot_per_configuration(kernel) {
            ": a function switched between a kprobe and a BPF trampoline within a boot oopses this kernel"
        } else {
            " (--configuration)"
        };
        let _ = writeln!(o, "Each configuration in a boot of its own ({n} boots, each measuring \"off\" too){why}.\n");
    }
    let ws = workloads(r);
    let configs = strs(&r["configurations"]);
    let off = configs.first().cloned().unwrap_or_default();
    let _ = writeln!(o, "Guest instructions per operation (× the same workload with no daemon):\n");
    let _ = writeln!(o, "| configuration | {} |", ws.join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(ws.len()));
    for c in &configs {
        let cells: Vec<String> = ws
            .iter()
            .map(|w| {
                let v = per_op(r, c, w).unwrap_or(f64::NAN);
                if *c == off {
                    format!("{v:.0}")
                } else {
                    let base = per_op(r, &off, w).unwrap_or(f64::NAN);
                    format!("{v:.0} ({:.3}×)", v / base)
                }
            })
            .collect();
        let _ = writeln!(o, "| {c} | {} |", cells.join(" | "));
    }
    per_call_table(&mut o, r, &off);
    let sentence = agreement(runs.len(), boots_of(r), agree, "**");
    // (A sentence: its first letter, after any quote, upper case.)
    let first = sentence.find(char::is_alphabetic).unwrap_or(0);
    let _ = writeln!(o, "\n{}{}{}.\n", &sentence[..first], sentence[first..first + 1].to_uppercase(), &sentence[first + 1..]);
    let (d, at) = drift(r);
    let _ = writeln!(o, "\"Off, again\" (after every configuration) is within **{d:.3} %** of \"off\" ({at}).\n");
    let ((spread, at), _) = per_call_spread(r);
    if !at.is_empty() {
        let _ = writeln!(
            o,
            "The default's and the floor's added instructions per call agree between the reads within **{spread:.0} instructions** ({at}; the bench fails above {PER_CALL_AGREE_INSTRUCTIONS} and {PER_CALL_AGREE_PERCENT} %).\n"
        );
    }
    // Per program, from the kernel's run-time statistics (a separate pass).
    let _ = writeln!(
        o,
        "Per program (BPF run-time statistics, a separate pass), and what the daemon adds per program run:\n"
    );
    let _ = writeln!(
        o,
        "| configuration | workload | program (15-byte kernel name): runs per op × instructions per run | added per op | added per program run |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    // Every configuration with a daemon (the no-daemon ones are "off", "off, again …").
    for c in configs.iter().filter(|c| !c.starts_with(off.as_str())) {
        for w in &ws {
            let progs: Vec<&Value> = r["programs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["configuration"] == c.as_str() && p["workload"] == w.as_str())
                .collect();
            let added = per_op(r, c, w).unwrap_or(f64::NAN) - per_op(r, &off, w).unwrap_or(f64::NAN);
            let runs_per_op: f64 = progs.iter().filter_map(|p| p["runs_per_op"].as_f64()).sum();
            let list: Vec<String> = progs
                .iter()
                .map(|p| {
                    format!(
                        "`{}` {:.2} × {:.0}",
                        p["program"].as_str().unwrap_or(""),
                        p["runs_per_op"].as_f64().unwrap_or(f64::NAN),
                        p["instructions_per_run"].as_f64().unwrap_or(f64::NAN)
                    )
                })
                .collect();
            let per_run = if runs_per_op > 0.0 { format!("{:.0}", added / runs_per_op) } else { "–".into() };
            let _ = writeln!(
                o,
                "| {c} | {w} | {} | {added:+.0} | {per_run} |",
                if list.is_empty() { "none ran".to_string() } else { list.join(", ") }
            );
        }
    }
    let d = &r["daemon"];
    if d.is_null() {
        let _ = writeln!(o, "\nThe daemon's own cost: not measured (no boot ran the default configuration).\n");
        return o;
    }
    let _ = writeln!(
        o,
        "\nThe daemon (default configuration, every family populated): **{:.3} % of a core** at a 1 s scrape under 500 remote reads/s over {} s of guest time, **RSS {:.1} MiB**, **{:.0} instructions per `/metrics` render** ({} bytes).\n",
        d["cpu_percent"].as_f64().unwrap_or(f64::NAN),
        d["seconds"],
        d["rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        d["scrape_instructions"].as_f64().unwrap_or(f64::NAN),
        d["metrics_bytes"]
    );
    // The task iterator's share: every render walks every task once.
    let base = d["scrape_instructions"].as_f64().unwrap_or(f64::NAN);
    for pair in d["scrape_instructions_with_threads"].as_array().into_iter().flatten() {
        let (n, ins) = (pair[0].as_f64().unwrap_or(f64::NAN), pair[1].as_f64().unwrap_or(f64::NAN));
        let _ = writeln!(
            o,
            "With {n:.0} more idle threads: **{ins:.0} instructions per render**, {:+.0} ({:.0} per thread: the waits iterator's walk).\n",
            ins - base,
            (ins - base) / n
        );
    }
    o
}

/// The workloads that make `__access_remote_vm` calls, and how many per
/// operation (the guest's `calls_per_op`).
fn calls(r: &Value) -> Vec<(String, f64)> {
    r["calls_per_op"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c[0].as_str()?.to_string(), c[1].as_f64()?)))
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

/// Per `__access_remote_vm` call, for the workloads that make them: what no
/// daemon, the floor (`return 0` programs on the default's hooks) and the
/// default cost, so that a per-call budget and a per-operation ratio are read
/// off the same figures.
fn per_call_table(o: &mut String, r: &Value, off: &str) {
    let (default, floor) = (r["default"].as_str().unwrap_or(""), r["floor"].as_str().unwrap_or(""));
    let calls = calls(r);
    if calls.is_empty() || default.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nPer remote access (one `__access_remote_vm` call; calls per operation are the default's entry program's runs). The floor is a `return 0` program on every hook the default attaches, loaded without the daemon:\n"
    );
    let _ = writeln!(o, "| workload | calls per op | no daemon, per op | floor, added per call | default, added per call | default above the floor, per call | default, per op |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for (w, n) in &calls {
        let (w, n) = (w.as_str(), *n);
        let base = per_op(r, off, w).unwrap_or(f64::NAN);
        let added = |c: &str| (per_op(r, c, w).unwrap_or(f64::NAN) - base) / n;
        let d = per_op(r, default, w).unwrap_or(f64::NAN);
        let floor_cell = if per_op(r, floor, w).is_some() { format!("{:+.0}", added(floor)) } else { "–".into() };
        let above = if per_op(r, floor, w).is_some() { format!("{:+.0}", added(default) - added(floor)) } else { "–".into() };
        let _ = writeln!(o, "| {w} | {n:.2} | {base:.0} | {floor_cell} | {:+.0} | {above} | {d:.0} ({:.3}×) |", added(default), d / base);
    }
    price_table(o, r, &calls);
}

/// What each family the default attaches costs per call: the default minus
/// the default without it, where such configurations were measured.
fn price_table(o: &mut String, r: &Value, calls: &[(String, f64)]) {
    let without: Vec<(String, String)> = r["without"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| Some((w[0].as_str()?.to_string(), w[1].as_str()?.to_string())))
        .collect();
    let default = r["default"].as_str().unwrap_or("");
    if without.is_empty() {
        return;
    }
    let _ = writeln!(o, "
What a family of the default costs per call (the default minus the default without it; its features are what it costs):
");
    let _ = writeln!(o, "| family | {} |", calls.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(calls.len()));
    for (label, family) in &without {
        let cells: Vec<String> = calls
            .iter()
            .map(|(w, n)| match (per_op(r, default, w), per_op(r, label, w)) {
                (Some(d), Some(x)) => format!("{:+.0}", (d - x) / n),
                _ => "–".into(),
            })
            .collect();
        let _ = writeln!(o, "| `{family}` | {} |", cells.join(" | "));
    }
}

/// One boot of `kernel` under `-icount`: every configuration, or (`only`) the
/// one of that index.
fn icount_boot(kernel: &vm::Kernel, initramfs: &Path, dir: &Path, scale: f64, threads: bool, only: Option<usize>, tag: &str) -> Result<Value> {
    let config = only.map_or(String::new(), |i| format!(" rvm.icount_configuration={i}"));
    let boot = vm::boot_clocked(
        kernel,
        initramfs,
        &dir.join(format!("icount-{}-{tag}", kernel.name)),
        // norandmaps: every boot lays its processes out alike (where a
        // mapping lands decides what faulting it costs).
        &format!("rvm.mode=icount rvm.scale={scale} rvm.threads={}{config} norandmaps", u8::from(threads)),
        Duration::from_secs(3600),
        "icount-result ",
        vm::Clock::Instructions,
    )?;
    let r = boot.report.with_context(|| format!("no icount-result; console {}", boot.console.display()))?;
    let (d, at) = drift(&r);
    say!("bench: {} boot {tag}: {:.0} s; \"off, again\" within {d:.3} % of \"off\" ({at})", kernel.name, boot.seconds);
    Ok(r)
}

/// Whether `kernel` gets a boot per configuration: where switching a
/// function between a kprobe and a BPF trampoline within a boot oopses (the
/// 7.3.4 test images; the same kernels vm-test isolates suites on).
fn boot_per_configuration(kernel: &vm::Kernel) -> bool {
    !kernel.isolate.is_empty()
}

/// The boots of one configuration each, as one result: "off" and the
/// release from the first boot, each configuration from its own boot, "off,
/// again" from the last, the daemon's cost from the default's. Every boot's
/// "off" must agree with the first boot's (the same kernel and workload): the
/// largest difference is returned.
fn merge_configuration_boots(parts: &[Value]) -> Result<(Value, Worst)> {
    let first = parts.first().context("no boots")?;
    // Every boot measures with no daemon first (the guest's `icount::OFF`)
    // and last (`OFF_AGAIN`, a label that starts with it).
    let off_label = strs(&first["configurations"]).into_iter().next().context("no configurations")?;
    let off_label = off_label.as_str();
    let is_off = |c: &str| c.starts_with(off_label);
    let last = parts.len() - 1;
    let mut configurations = vec![Value::from(off_label)];
    let mut measured: Vec<Value> = Vec::new();
    let mut programs: Vec<Value> = Vec::new();
    let mut daemon = Value::Null;
    let mut calls = Value::Array(Vec::new());
    let mut without: Vec<Value> = Vec::new();
    let mut worst = (0.0, String::new());
    for (i, p) in parts.iter().enumerate() {
        for m in p["measured"].as_array().into_iter().flatten() {
            let c = m["configuration"].as_str().unwrap_or("");
            if !is_off(c) {
                measured.push(m.clone());
                continue;
            }
            if i > 0 && c == off_label {
                let w = m["workload"].as_str().unwrap_or("");
                let (a, b) = (per_op(first, off_label, w).unwrap_or(f64::NAN), m["per_op"].as_f64().unwrap_or(f64::NAN));
                let d = 100.0 * (b - a).abs() / a;
                if is_worse(d, worst.0) {
                    worst = (d, format!("{off_label} in the first boot and in boot {}, {w}: {a:.1} vs {b:.1}", i + 1));
                }
            }
            if (i == 0 && c == off_label) || (i == last && c != off_label) {
                measured.push(m.clone());
            }
        }
        configurations.extend(strs(&p["configurations"]).into_iter().filter(|c| !is_off(c)).map(Value::from));
        programs.extend(p["programs"].as_array().into_iter().flatten().cloned());
        if !p["daemon"].is_null() {
            daemon = p["daemon"].clone();
        }
        if p["calls_per_op"].as_array().is_some_and(|c| !c.is_empty()) {
            calls = p["calls_per_op"].clone();
        }
        without.extend(p["without"].as_array().into_iter().flatten().cloned());
    }
    configurations.extend(strs(&parts[last]["configurations"]).into_iter().filter(|c| is_off(c) && c != off_label).map(Value::from));
    let merged = serde_json::json!({
        "release": first["release"],
        "configurations": configurations,
        "measured": measured,
        "programs": programs,
        "daemon": daemon,
        "configuration_count": first["configuration_count"],
        "default": first["default"],
        "floor": first["floor"],
        "calls_per_op": calls,
        "without": without,
        "boots": parts.len(),
    });
    Ok((merged, worst))
}

/// Within one result: how far "off, again" (measured after every
/// configuration) is from "off" (measured before), in %, and where.
fn drift(r: &Value) -> Worst {
    let mut worst = (0.0, String::new());
    let configs = strs(&r["configurations"]);
    let Some(off) = configs.first() else {
        return worst;
    };
    for c in configs.iter().skip(1).filter(|c| c.starts_with(off.as_str())) {
        for w in workloads(r) {
            let (a, b) = (per_op(r, off, &w).unwrap_or(f64::NAN), per_op(r, c, &w).unwrap_or(f64::NAN));
            let d = 100.0 * (b - a).abs() / a;
            if is_worse(d, worst.0) {
                worst = (d, format!("{off} and {c}, {w}: {a:.1} vs {b:.1}"));
            }
        }
    }
    worst
}

/// The default's and the floor's added instructions per call must be the same
/// whichever read makes the calls (a 4 KiB read is one call, a cmdline read
/// two): where they differ by more than this share of the lesser and by more
/// than `PER_CALL_AGREE_INSTRUCTIONS`, "off" was not measured in the state
/// the configuration ran in (on the 7.3.4 images such an "off" was off by
/// 198 to 1137 instructions per read; "off" moves by 10 between settled
/// measurements there).
pub const PER_CALL_AGREE_PERCENT: f64 = 5.0;
pub const PER_CALL_AGREE_INSTRUCTIONS: f64 = 25.0;

/// The largest difference, in instructions per call, of the default's and
/// the floor's added instructions per call across the workloads that make
/// calls, where, and whether any is beyond both tolerances.
fn per_call_spread(r: &Value) -> (Worst, bool) {
    let mut worst = (0.0, String::new());
    let mut beyond = false;
    let off = strs(&r["configurations"]).into_iter().next().unwrap_or_default();
    let calls = calls(r);
    for c in [r["default"].as_str().unwrap_or(""), r["floor"].as_str().unwrap_or("")] {
        let added: Vec<(&str, f64)> = calls
            .iter()
            .filter_map(|(w, n)| Some((w.as_str(), (per_op(r, c, w)? - per_op(r, &off, w)?) / n)))
            .collect();
        let (Some(lo), Some(hi)) = (
            added.iter().min_by(|a, b| a.1.total_cmp(&b.1)),
            added.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
        ) else {
            continue;
        };
        if added.len() < 2 {
            continue;
        }
        let d = if lo.1 > 0.0 { hi.1 - lo.1 } else { f64::NAN };
        beyond |= !(d <= PER_CALL_AGREE_INSTRUCTIONS || d <= lo.1 * PER_CALL_AGREE_PERCENT / 100.0);
        if is_worse(d, worst.0) {
            worst = (d, format!("{c}: {:+.0} per call on {} vs {:+.0} on {}, {:.2} %", lo.1, lo.0, hi.1, hi.0, 100.0 * d / lo.1));
        }
    }
    (worst, beyond)
}

/// `runs` results of `kernel` under `-icount` (each one boot, or a boot per
/// configuration, see `boot_per_configuration`), and the largest
/// disagreement of "off" between the boots of one result.
fn icount_boots(kernel: &vm::Kernel, initramfs: &Path, dir: &Path, o: &IcountOptions) -> Result<(Vec<Value>, Worst)> {
    let (scale, runs, threads) = (o.scale, o.runs, o.threads);
    let mut results = Vec::new();
    let mut worst = (0.0, String::new());
    for run in 1..=runs.max(1) {
        if !boot_per_configuration(kernel) && o.only.is_empty() {
            say!("bench: {} under QEMU -icount shift=0 (guest instructions), boot {run} of {runs}", kernel.name);
            results.push(icount_boot(kernel, initramfs, dir, scale, threads, None, &run.to_string())?);
            continue;
        }
        say!("bench: {} under QEMU -icount shift=0, run {run} of {runs}: a boot per configuration", kernel.name);
        let first_index = o.only.first().copied().unwrap_or(0);
        let first = icount_boot(kernel, initramfs, dir, scale, threads, Some(first_index), &format!("{run}-c{first_index}"))?;
        let n = first["configuration_count"].as_u64().context("the guest did not say how many configurations there are")? as usize;
        let rest: Vec<usize> = if o.only.is_empty() { (1..n).collect() } else { o.only[1..].to_vec() };
        let mut parts = vec![first];
        for i in rest {
            anyhow::ensure!(i < n, "--configuration {i}: there are {n} (0 to {})", n - 1);
            parts.push(icount_boot(kernel, initramfs, dir, scale, threads, Some(i), &format!("{run}-c{i}"))?);
        }
        let (merged, off) = merge_configuration_boots(&parts)?;
        if is_worse(off.0, worst.0) {
            worst = off;
        }
        results.push(merged);
    }
    Ok((results, worst))
}

/// What `bench --icount` measures.
pub struct IcountOptions {
    /// Work per measurement, relative to the default.
    pub scale: f64,
    /// Measurements per kernel (they must agree within `AGREE_PERCENT`).
    pub runs: usize,
    /// Also a render with many more idle threads.
    pub threads: bool,
    /// Only these configurations, by index in the guest's list (the daemon's
    /// configurations in the report's order, then the floor), each in a boot of
    /// its own; empty: all.
    pub only: Vec<usize>,
    /// The kernels' boots side by side (one core each), else one kernel after
    /// the other (one core in all: beside another test's VM).
    pub side_by_side: bool,
}

/// `cargo xtask bench --icount`: guest instructions under QEMU `-icount
/// shift=0,sleep=off -smp 1` on `kernels` (an A/B pair: unpatched, every
/// remote read takes the free mmap_lock; patched, the lockless path), each
/// kernel measured `runs` times. Fails when two results differ by more than
/// `AGREE_PERCENT`. Writes `target/bench/icount.md` and `icount.json`.
pub fn icount(root: &Path, kernels: Vec<vm::Kernel>, command: &str, o: &IcountOptions) -> Result<String> {
    let (scale, runs, threads) = (o.scale, o.runs, o.threads);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let initramfs = dir.join("initramfs.cpio");
    vm::write_test_initramfs(root, &initramfs)?;
    let mut report = format!(
        "Command: `cargo xtask bench --icount{command} --scale {scale} --runs {runs}{}`\n\n",
        if threads { " --threads" } else { "" }
    );
    let mut all = serde_json::Map::new();
    let mut disagree = Vec::new();
    let mut unsettled = Vec::new();
    if kernels.is_empty() {
        bail!("bench --icount: no kernels (../shared/kernels is not there; pass a pair with --kernel NAME:patched-v1=PATH --kernel NAME:unpatched=PATH)");
    }
    // Each kernel's boots side by side with the other's: guest instructions do
    // not depend on what else the host runs (two boots agree to the
    // instruction, docs/benchmarks.md).
    type Booted = (vm::Kernel, Result<(Vec<Value>, Worst)>);
    let boot = |kernel: vm::Kernel| -> Booted {
        let boots = icount_boots(&kernel, &initramfs, &dir, o);
        (kernel, boots)
    };
    let booted: Vec<Booted> = if o.side_by_side {
        std::thread::scope(|scope| {
            let handles: Vec<_> = kernels.into_iter().map(|kernel| scope.spawn(move || boot(kernel))).collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
    } else {
        kernels.into_iter().map(boot).collect()
    };
    for (kernel, boots) in booted {
        let (boots, off) = boots?;
        let mut agree = disagreement(&boots);
        if is_worse(off.0, agree.0) {
            agree = off;
        }
        for ((spread, at), beyond) in boots.iter().map(per_call_spread).filter(|w| !w.0.1.is_empty()) {
            say!("bench: {}: added per call differs between the reads by {spread:.0} instructions at most ({at})", kernel.name);
            if beyond {
                unsettled.push(format!("{}: {spread:.0} instructions ({at})", kernel.name));
            }
        }
        let boots_each = boots.first().map_or(1, boots_of);
        say!("bench: {}: {}", kernel.name, agreement(boots.len(), boots_each, &agree, ""));
        if agree.0 > AGREE_PERCENT {
            disagree.push(format!("{}: {:.3} % ({})", kernel.name, agree.0, agree.1));
        }
        report.push_str(&icount_tables(&kernel, &boots, &agree));
        all.insert(kernel.name.clone(), Value::Array(boots));
    }
    std::fs::write(dir.join("icount.md"), &report)?;
    std::fs::write(dir.join("icount.json"), serde_json::to_string_pretty(&Value::Object(all))?)?;
    say!("bench: report in {}", dir.join("icount.md").display());
    println!("{report}");
    if !disagree.is_empty() {
        bail!("boots disagree by more than {AGREE_PERCENT} %: {}", disagree.join("; "));
    }
    if !unsettled.is_empty() {
        bail!(
            "the added instructions per call differ between the reads by more than {PER_CALL_AGREE_INSTRUCTIONS} and {PER_CALL_AGREE_PERCENT} %: \"off\" was not measured in the state the configurations ran in: {}",
            unsettled.join("; ")
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// One boot's result with "off" and `config` measured on `w`.
    fn boot(off: f64, config: Option<(&str, f64)>, daemon: bool) -> Value {
        let mut configurations = vec![json!("off")];
        let mut measured = vec![json!({"configuration": "off", "workload": "w", "per_op": off})];
        if let Some((c, v)) = config {
            configurations.push(json!(c));
            measured.push(json!({"configuration": c, "workload": "w", "per_op": v}));
        }
        json!({
            "release": "7.3.4",
            "configurations": configurations,
            "measured": measured,
            "programs": [{"configuration": config.map(|c| c.0), "workload": "w", "program": "p", "runs_per_op": 1.0, "instructions_per_run": 5.0}],
            "daemon": if daemon { json!({"cpu_percent": 0.1}) } else { Value::Null },
            "configuration_count": 3,
        })
    }

    #[test]
    fn a_boot_per_configuration_reads_as_one_boot_of_all() {
        let parts = [boot(1000.0, Some(("baseline", 1001.0)), false), boot(1000.0, Some(("default", 1500.0)), true), boot(1002.0, Some(("opt-in", 1900.0)), false)];
        let (merged, (worst, at)) = merge_configuration_boots(&parts).unwrap();
        assert_eq!(strs(&merged["configurations"]), ["off", "baseline", "default", "opt-in"]);
        assert_eq!(per_op(&merged, "off", "w"), Some(1000.0), "off is the first boot's");
        assert_eq!(per_op(&merged, "default", "w"), Some(1500.0));
        assert_eq!(per_op(&merged, "opt-in", "w"), Some(1900.0));
        assert_eq!(merged["measured"].as_array().unwrap().len(), 4, "one off row, not one per boot");
        assert_eq!(merged["programs"].as_array().unwrap().len(), 3);
        assert_eq!(merged["daemon"]["cpu_percent"], 0.1, "the daemon's cost from the default's boot");
        assert_eq!(merged["boots"], 3);
        // The third boot's "off" is 0.2 % above the first's.
        assert!((worst - 0.2).abs() < 1e-9, "{worst} {at}");
        assert!(at.contains("boot 3"), "{at}");
    }

    #[test]
    fn off_again_comes_from_the_last_boot_and_its_drift_is_reported() {
        let again = |mut b: Value, v: f64| {
            b["configurations"].as_array_mut().unwrap().push(json!("off, again"));
            b["measured"].as_array_mut().unwrap().push(json!({"configuration": "off, again", "workload": "w", "per_op": v}));
            b
        };
        let parts = [
            again(boot(1000.0, Some(("baseline", 1001.0)), false), 1001.0),
            again(boot(1000.0, Some(("default", 1500.0)), true), 1030.0),
            again(boot(1000.0, Some(("opt-in", 1900.0)), false), 1002.0),
        ];
        let (merged, (worst, at)) = merge_configuration_boots(&parts).unwrap();
        assert_eq!(strs(&merged["configurations"]), ["off", "baseline", "default", "opt-in", "off, again"]);
        assert_eq!(per_op(&merged, "off, again", "w"), Some(1002.0), "the last boot's");
        assert_eq!(merged["measured"].as_array().unwrap().len(), 5);
        // Every boot's "off" was 1000: only "off, again" moved, which the
        // report shows and the boots' agreement does not count.
        assert_eq!(worst, 0.0, "{at}");
        // Within the merged result, "off, again" (the last boot's) is 0.2 % from "off".
        let (d, at) = drift(&merged);
        assert!((d - 0.2).abs() < 1e-9, "{d} {at}");
        // The default's boot measured 1030 after the daemon stopped: 3 %.
        let (d, at) = drift(&parts[1]);
        assert!((d - 3.0).abs() < 1e-9, "{d} {at}");
    }

    #[test]
    fn a_read_that_pays_more_per_call_than_the_other_shows_an_unsettled_off() {
        let m = |c: &str, w: &str, v: f64| json!({"configuration": c, "workload": w, "per_op": v});
        let r = |default_cmdline: f64| {
            json!({
                "configurations": ["off", "default", "floor"],
                "measured": [
                    m("off", "mem", 10000.0), m("default", "mem", 10900.0), m("floor", "mem", 10300.0),
                    m("off", "cmdline", 3000.0), m("default", "cmdline", default_cmdline), m("floor", "cmdline", 3600.0),
                    m("off", "fault", 8000.0), m("default", "fault", 8001.0),
                ],
                "default": "default",
                "floor": "floor",
                "calls_per_op": [["mem", 1.0], ["cmdline", 2.0], ["fault", 0.0]],
            })
        };
        // +900 per call on both reads, +300 for the floor on both.
        let ((spread, at), beyond) = per_call_spread(&r(4800.0));
        assert_eq!(spread, 0.0, "{at}");
        assert!(!beyond);
        // 20 more per call on the cmdline read: 2.2 %, within both tolerances;
        // 30 more: 3.3 %, within one; 60 more: 6.7 %, beyond both.
        assert!(!per_call_spread(&r(4840.0)).1);
        assert!(!per_call_spread(&r(4860.0)).1);
        let ((spread, _), beyond) = per_call_spread(&r(4920.0));
        assert_eq!((spread, beyond), (60.0, true));
        // The cmdline read measured against an "off" about 1137 too high, as on the 7.3.4 images.
        let ((spread, at), beyond) = per_call_spread(&r(4800.0 - 1138.0));
        assert!(beyond, "{spread} {at}");
        assert!(at.starts_with("default: +331 per call on cmdline vs +900 on mem"), "{at}");
        // A default below "off" is never an agreement.
        assert!(per_call_spread(&r(2000.0)).1);
    }

    #[test]
    fn the_agreement_says_what_was_compared() {
        let w = (0.102, "off in the first boot and in boot 2, w: 8695.4 vs 8686.5".to_string());
        assert_eq!(agreement(1, 1, &(0.0, String::new()), "**"), "one boot: no other to agree with (`--runs 2` boots again and compares)");
        assert_eq!(agreement(1, 3, &w, ""), "\"off\" agrees between the 3 boots within 0.102 % (off in the first boot and in boot 2, w: 8695.4 vs 8686.5)");
        assert_eq!(agreement(2, 1, &w, "**"), "the 2 boots agree within **0.102 %** on every figure (off in the first boot and in boot 2, w: 8695.4 vs 8686.5)");
        assert_eq!(agreement(2, 3, &w, ""), "the 2 runs of 3 boots each agree within 0.102 % on every figure, \"off\" between all boots (off in the first boot and in boot 2, w: 8695.4 vs 8686.5)");
        // The report says it of a merged result, whose boots it counts.
        let parts = [boot(1000.0, Some(("baseline", 1001.0)), false), boot(1002.0, Some(("default", 1500.0)), true)];
        let (merged, off) = merge_configuration_boots(&parts).unwrap();
        let k = vm::Kernel::parse("k:unpatched=/nonexistent").unwrap();
        let report = icount_tables(&k, &[merged], &off);
        assert!(report.contains("\n\"Off\" agrees between the 2 boots within **0.200 %** (off in the first boot and in boot 2, w: 1000.0 vs 1002.0).\n"), "{report}");
    }

    #[test]
    fn a_boot_without_the_default_reports_no_daemon_cost() {
        let (merged, _) = merge_configuration_boots(&[boot(10.0, Some(("baseline", 11.0)), false)]).unwrap();
        assert!(merged["daemon"].is_null());
        let k = vm::Kernel::parse("k:unpatched=/nonexistent").unwrap();
        assert!(icount_tables(&k, &[merged], &(0.0, String::new())).contains("not measured"));
    }

    #[test]
    fn per_call_figures_divide_by_the_calls_per_op() {
        let m = |c: &str, v: f64| json!({"configuration": c, "workload": "cmdline", "per_op": v});
        let r = json!({
            "configurations": ["off", "default", "floor"],
            "measured": [m("off", 1000.0), m("default", 1800.0), m("floor", 1200.0)],
            "default": "default",
            "floor": "floor",
            "calls_per_op": [["cmdline", 2.0], ["page fault", 0.0]],
        });
        let mut o = String::new();
        per_call_table(&mut o, &r, "off");
        assert!(o.contains("| cmdline | 2.00 | 1000 | +100 | +400 | +300 | 1800 (1.800×) |"), "{o}");
        assert!(!o.contains("page fault"), "a workload without calls has no per-call row: {o}");
        assert!(!o.contains("costs per call"), "no price table without its configurations: {o}");
        // A family's price: the default minus the default without it, per call.
        let mut r = r;
        r["measured"].as_array_mut().unwrap().push(m("default without walk", 1500.0));
        r["without"] = json!([["default without walk", "walk"]]);
        let mut o = String::new();
        per_call_table(&mut o, &r, "off");
        assert!(o.contains("| family | cmdline |\n|---|---|\n| `walk` | +150 |"), "{o}");
    }

    #[test]
    fn a_missing_figure_is_worse_than_any() {
        assert!(is_worse(f64::NAN, 0.0));
        assert!(is_worse(0.3, 0.2));
        assert!(!is_worse(0.1, 0.2));
    }
}
