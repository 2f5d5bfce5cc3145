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

/// `cargo xtask bench --icount`: guest instructions under QEMU `-icount
/// shift=0,sleep=off -smp 1` on the shared 6.12 pair (unpatched: every remote
/// read takes the free mmap_lock; patched: the lockless path). Writes
/// `target/bench/icount.md`.
pub fn icount(root: &Path, scale: f64) -> Result<String> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let initramfs = dir.join("initramfs.cpio");
    vm::write_test_initramfs(root, &initramfs)?;
    let mut report = format!("Command: `cargo xtask bench --icount --scale {scale}`\n\n");
    for kernel in vm::shared_kernels(root) {
        say!("bench: {} under QEMU -icount shift=0 (guest instructions)", kernel.name);
        let boot = vm::boot_clocked(
            &kernel,
            &initramfs,
            &dir.join(format!("icount-{}", kernel.name)),
            &format!("rvm.mode=icount rvm.scale={scale}"),
            Duration::from_secs(1800),
            "icount-result ",
            vm::Clock::Instructions,
        )?;
        let r = boot.report.with_context(|| format!("no icount-result; console {}", boot.console.display()))?;
        let _ = writeln!(report, "### {} kernel (Linux {})\n", kernel.name, r["release"].as_str().unwrap_or("?"));
        let _ = writeln!(report, "| workload | daemon off | daemon on (default modes) | added |");
        let _ = writeln!(report, "|---|---|---|---|");
        for w in r["workloads"].as_array().into_iter().flatten() {
            let (off, on) = (w["off"].as_f64().unwrap_or(f64::NAN), w["on"].as_f64().unwrap_or(f64::NAN));
            let _ = writeln!(report, "| {} | {off:.0} | {on:.0} | {:+.0} |", w["workload"].as_str().unwrap_or(""), on - off);
        }
        let _ = writeln!(report, "\n| workload | program (kernel's 15-byte name) | runs | instructions per run |");
        let _ = writeln!(report, "|---|---|---|---|");
        for p in r["programs"].as_array().into_iter().flatten() {
            let _ = writeln!(
                report,
                "| {} | `{}` | {} | {:.0} |",
                p["workload"].as_str().unwrap_or(""),
                p["program"].as_str().unwrap_or(""),
                p["runs"],
                p["instructions_per_run"].as_f64().unwrap_or(f64::NAN)
            );
        }
        report.push('\n');
    }
    std::fs::write(dir.join("icount.md"), &report)?;
    say!("bench: report in {}", dir.join("icount.md").display());
    println!("{report}");
    Ok(report)
}
