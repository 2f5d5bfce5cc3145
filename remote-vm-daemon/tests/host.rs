//! Host integration tests: the daemon on the machine they run on. What it
//! must attach there is derived from what the kernel allows, established by
//! the tests themselves (`remote_vm_testkit::allows`: trivial fentry and
//! kprobe programs of their own, /proc/kallsyms, the tracepoints in the
//! kernel's BTF) and the probe registry, never from one machine's verdicts.
//! They need root and run under `cargo xtask test` (`cargo test --
//! --include-ignored`) on the host, and in VMs of Debian's 6.12 and 7.3 as if
//! those were the host (`cargo xtask vm-test`, suite `host_tests`; there
//! `REMOTE_VM_EXPECT_PATCHED` says what the kernel's `patched` must be).
use std::{
    io::{Read, Write},
    process::{Command, Output, Stdio},
};

use remote_vm_common::{
    catalog::*,
    registry::Family,
};
use remote_vm_testkit::{
    allows::{Allows, Expected},
    golden,
    prom::{self, Scrape},
};

mod common;

use common::{DAEMON, Running};

fn allows() -> &'static Allows {
    Allows::of_this_kernel()
}

fn expected() -> Vec<Expected> {
    allows().expected()
}

fn attached(family: Family) -> bool {
    let e = expected();
    family.spec().points.iter().all(|p| e.iter().any(|x| x.probe == p.name() && x.mode.is_some()))
}

/// `check`'s line for one probe: exactly, or the start of it where the test
/// cannot tell the rest (an inexact mode's miss counter, a reason it cannot
/// word).
fn probe_line(e: &Expected) -> (String, bool) {
    match (e.mode, &e.reason) {
        (Some(m), _) if m.exact => (format!("probe {}: {} (exact)", e.probe, m.name), true),
        (Some(m), _) => (format!("probe {}: {} (may miss events; ", e.probe, m.name), false),
        (None, Some(why)) => (format!("probe {}: none ({why})", e.probe), true),
        (None, None) => (format!("probe {}: none (", e.probe), false),
    }
}

/// The coverages that must be exported and those that must be absent, from
/// what attaches: only host-wide waits where the access probes cannot attach;
/// with every probe in its default mode, everything but the opt-in write
/// waits (and the rest as `check` says, which `check_json_says_what_check_says`
/// and `metrics_tell_what_attached_and_pass_promtool` compare).
fn coverage() -> (Vec<Coverage>, Vec<Coverage>) {
    let host = attached(Family::MmapLockHost);
    if !attached(Family::AccessRemoteVm) {
        let (on, off): (Vec<Coverage>, Vec<Coverage>) =
            Coverage::REPORTED.iter().partition(|c| **c == Coverage::HostLock && host);
        return (on, off);
    }
    // Every family with a default mode (the opt-in-only VMA step is not).
    if Family::ALL.into_iter().filter(|f| !f.opt_in_only()).all(attached) {
        let on = [Coverage::Reads, Coverage::Fallbacks, Coverage::RemoteLock, Coverage::HostLock, Coverage::Gup];
        return (on.to_vec(), vec![Coverage::RemoteWrites, Coverage::LockVma, Coverage::VmaSteps]);
    }
    (Vec::new(), Vec::new())
}

/// `patched` as the kernel must say it: `unknown` without the access probes,
/// else what the VM harness says (`REMOTE_VM_EXPECT_PATCHED`), else yes or no.
fn expected_patched() -> Option<String> {
    if !attached(Family::AccessRemoteVm) {
        return Some("unknown".into());
    }
    std::env::var("REMOTE_VM_EXPECT_PATCHED").ok()
}

/// `series` as the kernel must say it: `unknown` where `patched` is, `none`
/// where the kernel is not patched, else what the VM harness says
/// (`REMOTE_VM_EXPECT_SERIES`, from the kernel list).
fn expected_series() -> Option<String> {
    match expected_patched().as_deref() {
        Some("unknown") => Some("unknown".into()),
        Some("no") => Some("none".into()),
        _ => std::env::var("REMOTE_VM_EXPECT_SERIES").ok(),
    }
}

/// The kernel line `check` prints, and a warning line after it for each
/// option a readable config (/proc/config.gz, /boot/config-RELEASE) says
/// otherwise: the options come from which functions the kernel has
/// (PER_VMA_LOCK: lock_vma_under_rcu; MMU_GATHER_RCU_TABLE_FREE:
/// tlb_remove_table_sync_one), the config is a hint.
fn expected_kernel_lines() -> Vec<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_string();
    let gz = std::fs::read("/proc/config.gz").ok().and_then(|b| {
        let mut text = String::new();
        flate2::read::GzDecoder::new(b.as_slice()).read_to_string(&mut text).ok().map(|_| text)
    });
    let boot = format!("/boot/config-{release}");
    let config = gz
        .map(|t| ("/proc/config.gz".to_string(), t))
        .or_else(|| std::fs::read_to_string(&boot).ok().map(|t| (boot.clone(), t)));
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let options = [
        ("CONFIG_PER_VMA_LOCK", "per_vma_lock", "lock_vma_under_rcu"),
        ("CONFIG_MMU_GATHER_RCU_TABLE_FREE", "rcu_table_free", "tlb_remove_table_sync_one"),
    ];
    let has: Vec<bool> = options.iter().map(|(_, _, f)| allows().has_function(f)).collect();
    let mut lines = vec![format!(
        "kernel: release={release} btf=/sys/kernel/btf/vmlinux per_vma_lock={} rcu_table_free={} config=functions in BTF",
        yes_no(has[0]),
        yes_no(has[1])
    )];
    if let Some((source, text)) = &config {
        for ((option, fact, function), has) in options.iter().zip(has) {
            let set = text.lines().any(|l| l == format!("{option}=y") || l == format!("{option}=m"));
            if set != has {
                let (config, kernel) = if has { ("is not set", "has") } else { ("is set", "does not have") };
                lines.push(format!(
                    "warning: kernel: {option} {config} in {source}, but the kernel {kernel} {function}() (functions in BTF): {fact}={} from the kernel",
                    yes_no(has)
                ));
            }
        }
    }
    lines
}

/// The sample names of the catalog's families with (`met`) or without a
/// coverage in `covered` (families exported always are left out).
fn families(covered: &[Coverage], met: bool) -> Vec<String> {
    ALL.iter()
        .filter(|m| !m.coverage.contains(&Coverage::Always))
        .filter(|m| m.coverage.iter().any(|c| covered.contains(c)) == met)
        .map(|m| if m.kind == Kind::Histogram { m.count() } else { m.name.to_string() })
        .collect()
}

fn daemon(args: &[&str]) -> Output {
    Command::new(DAEMON).args(args).output().expect("run daemon")
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn check_reports_every_probe_as_the_kernel_allows() {
    let out = daemon(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = expected();
    let (n, total) = remote_vm_testkit::allows::probe_counts(&expected);
    let all = n == total;
    assert_eq!(out.status.code(), Some(if all { 0 } else { 2 }), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "config: ok (embedded defaults)");
    let kernel = expected_kernel_lines();
    assert_eq!(lines[1..=kernel.len()], kernel[..], "{stdout}");
    // The preemption line follows the kernel's (the detection is
    // unit-tested in kernel/preempt.rs).
    assert!(lines[kernel.len() + 1].starts_with("preemption: "), "{stdout}");
    let probes: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("probe ")).collect();
    assert_eq!(probes.len(), expected.len(), "{stdout}");
    for (line, e) in probes.iter().zip(&expected) {
        let (want, exact) = probe_line(e);
        if exact {
            assert_eq!(*line, want);
        } else {
            assert!(line.starts_with(&want), "{line:?} should start {want:?}");
        }
    }
    let patched = lines.iter().find_map(|l| l.strip_prefix("patched: ")).expect("a patched line");
    match expected_patched() {
        Some(p) if p == "unknown" => assert_eq!(patched, "unknown (probe family access_remote_vm is not attached)"),
        Some(p) => assert!(patched.starts_with(&format!("{p} (")), "{patched}"),
        None => assert!(patched.starts_with("yes (") || patched.starts_with("no ("), "{patched}"),
    }
    let series = lines.iter().find_map(|l| l.strip_prefix("series: ")).expect("a series line");
    match expected_series() {
        Some(s) => assert!(series.starts_with(&format!("{s} (")), "{series}"),
        None => assert!(["v1 (", "v2 (", "none (", "unknown ("].iter().any(|s| series.starts_with(s)), "{series}"),
    }
    let (on, off) = coverage();
    for c in Coverage::REPORTED {
        let line = lines.iter().find(|l| l.starts_with(&format!("metrics: {}: ", c.what()))).unwrap_or_else(|| panic!("{c:?}: {stdout}"));
        if on.contains(&c) {
            assert_eq!(*line, format!("metrics: {}: exported", c.what()));
        } else if off.contains(&c) {
            assert!(line.starts_with(&format!("metrics: {}: absent (needs ", c.what())), "{line}");
        }
    }
    let summary = if all { format!("summary: all {n} probes attached") } else { format!("summary: degraded: {n} of {total} probes attached") };
    assert_eq!(lines.last().copied(), Some(summary.as_str()), "{stdout}");
    // The BTF lines carry this kernel's offsets: every item is found.
    let btf: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("btf: ")).collect();
    assert_eq!(btf.len(), 13, "{btf:?}");
    assert!(btf.iter().all(|l| !l.contains("unknown")), "{btf:?}");
}

/// The coverages `check --format json` says are exported, checked against
/// what the test derived itself.
fn covered() -> Vec<Coverage> {
    let json = daemon(&["check", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON document");
    let exported: Vec<&str> =
        doc["metrics"].as_array().unwrap().iter().filter(|c| c["exported"] == true).filter_map(|c| c["what"].as_str()).collect();
    let covered: Vec<Coverage> = Coverage::REPORTED.into_iter().filter(|c| exported.contains(&c.what())).collect();
    let (on, off) = coverage();
    assert!(on.iter().all(|c| covered.contains(c)), "{covered:?} lacks some of {on:?}");
    assert!(off.iter().all(|c| !covered.contains(c)), "{covered:?} has some of {off:?}");
    covered
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn metrics_tell_what_attached_and_pass_promtool() {
    let covered = covered();
    let running = Running::start("metrics", "", &[]);
    let (status, body) = prom::get(&running.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let scrape = Scrape::parse(&body).unwrap();
    let expected = expected();
    for e in &expected {
        let mode = e.mode.map_or(NO_MODE, |m| m.name);
        let on = e.mode.is_some();
        assert_eq!(scrape.value(PROBE_ATTACHED.name, &[("probe", e.probe), ("mode", mode)]), Some(if on { 1.0 } else { 0.0 }), "{}", e.probe);
        // Hits exist only where a program runs: no zero where nothing can see.
        assert_eq!(scrape.value(PROBE_HITS.name, &[("probe", e.probe)]).is_some(), on, "{}", e.probe);
        assert_eq!(scrape.value(PROBE_MISSES.name, &[("probe", e.probe)]).is_some(), on, "{}", e.probe);
    }
    assert_eq!(scrape.series(PROBE_ATTACHED.name).count(), expected.len());
    for name in families(&covered, true) {
        assert!(scrape.series(&name).count() > 0, "{name} should be exported");
    }
    for name in families(&covered, false) {
        assert_eq!(scrape.series(&name).count(), 0, "{name} should be absent");
    }
    // Nothing that is not in the golden file of every exportable series.
    let golden = golden::Golden::load();
    let unknown: Vec<String> = golden::scrape_series(&scrape).into_iter().filter(|s| !golden.knows(s)).collect();
    assert_eq!(unknown, Vec::<String>::new());
    // Host-wide waits where they attach; no remote_vm context without the access probes.
    if attached(Family::MmapLockHost) {
        for mode in ["read", "write"] {
            assert!(scrape.value(&MMAP_LOCK_WAIT.count(), &[("context", "host"), ("mode", mode)]).is_some());
        }
    }
    if !attached(Family::AccessRemoteVm) {
        let host = if attached(Family::MmapLockHost) { 2 } else { 0 };
        assert_eq!(scrape.series(&MMAP_LOCK_WAIT.count()).count(), host);
    }
    // remote_vm_kernel_info says what `check` says.
    let line = expected_kernel_lines().remove(0);
    let word = |key: &str| line.split_once(&format!(" {key}=")).unwrap().1.split(' ').next().unwrap().to_string();
    let info: Vec<String> = scrape.series(KERNEL_INFO.name).map(|(key, _)| key.to_string()).collect();
    assert_eq!(info.len(), 1, "{info:?}");
    for key in ["release", "per_vma_lock", "rcu_table_free"] {
        assert!(info[0].contains(&format!("{key}=\"{}\"", word(key))), "{key}: {info:?}");
    }
    match expected_patched() {
        Some(p) => assert!(info[0].contains(&format!("patched=\"{p}\"")), "{info:?}"),
        None => assert!(info[0].contains("patched=\"yes\"") || info[0].contains("patched=\"no\""), "{info:?}"),
    }
    if let Some(s) = expected_series() {
        assert!(info[0].contains(&format!("series=\"{s}\"")), "{info:?}");
    }
    let build = [("version", env!("CARGO_PKG_VERSION")), ("revision", env!("REMOTE_VM_REVISION")), ("rustc", env!("REMOTE_VM_RUSTC"))];
    assert_eq!(scrape.value(BUILD_INFO.name, &build), Some(1.0), "{:?}", scrape.series(BUILD_INFO.name).collect::<Vec<_>>());
    // Where the checkout and the compiler are at hand (not in the VMs), the
    // labels are theirs.
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd).args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(head) = run("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=12", "HEAD"]) {
        assert!(env!("REMOTE_VM_REVISION").starts_with(&head), "{} vs {head}", env!("REMOTE_VM_REVISION"));
    }
    if let Some(v) = run("rustc", &["--version"]) {
        assert_eq!(v.split_whitespace().nth(1), Some(env!("REMOTE_VM_RUSTC")));
    }
    assert!(scrape.value("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));

    // promtool finds nothing to complain about.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!((out.status.code(), complaints.as_str()), (Some(0), ""));

    let (status, health) = prom::get(&running.addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(health.starts_with("ok\n"), "{health}");
    for e in &expected {
        let (line, exact) = probe_line(e);
        let line = if exact { format!("{line}\n") } else { line };
        assert!(health.contains(&line), "{line:?} not in:\n{health}");
    }
    if expected_patched().as_deref() == Some("unknown") {
        assert!(health.contains("patched: unknown (probe family access_remote_vm is not attached)\n"), "{health}");
    }
    let (status, landing) = prom::get(&running.addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(landing.contains("href=\"/metrics\""));
    assert_eq!(prom::get(&running.addr, "/nope").unwrap().0, 404);

    assert_eq!(running.stop(), 0, "SIGTERM exits 0");
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn check_json_says_what_check_says() {
    let text = daemon(&["check"]);
    let json = daemon(&["check", "--format", "json"]);
    assert_eq!(json.status.code(), text.status.code());
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON document");
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["summary"]["exit"].as_i64(), text.status.code().map(i64::from));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let probes = doc["probes"].as_array().unwrap();
    let expected = expected();
    assert_eq!(probes.len(), expected.len());
    for (e, p) in expected.iter().zip(probes) {
        assert_eq!(p["probe"], e.probe);
        assert_eq!(p["mode"], e.mode.map_or(NO_MODE, |m| m.name));
        assert_eq!(p["attached"], e.mode.is_some());
        let reasons: Vec<String> = p["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| match r["mode"].as_str() {
                Some(m) => format!("{m}: {}", r["error"].as_str().unwrap()),
                None => r["error"].as_str().unwrap().to_string(),
            })
            .collect();
        if let Some(why) = &e.reason {
            assert_eq!(reasons.join("; "), *why, "{}", e.probe);
        }
        assert_eq!(reasons.is_empty(), e.mode.is_some(), "{}", e.probe);
        // Each refusal carries the OS error its text names (`(os error N)`).
        for r in p["reasons"].as_array().unwrap() {
            let text = r["error"].as_str().unwrap();
            let named: Option<i64> = text.split("(os error ").nth(1).map(|rest| rest.split(')').next().unwrap().parse().unwrap());
            assert_eq!(r["errno"].as_i64(), named, "{text}");
        }
    }
    let patched = format!("patched: {} ({})", doc["patched"]["value"].as_str().unwrap(), doc["patched"]["why"].as_str().unwrap());
    assert!(stdout.lines().any(|l| l == patched), "{patched}");
    let btf: Vec<&str> = stdout.lines().filter(|l| l.starts_with("btf: ")).collect();
    let json_btf: Vec<&str> = doc["btf"].as_array().unwrap().iter().map(|b| b["line"].as_str().unwrap()).collect();
    assert_eq!(json_btf, btf);
    for c in doc["metrics"].as_array().unwrap() {
        let word = if c["exported"] == true { "exported".to_string() } else { format!("absent ({})", c["needs"].as_str().unwrap()) };
        let line = format!("metrics: {}: {word}", c["what"].as_str().unwrap());
        assert!(stdout.lines().any(|l| l == line), "{line}");
    }
}
