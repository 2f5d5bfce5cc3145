//! The `check` subcommand: its JSON document, and its verdict with the least
//! capabilities.
use std::{collections::BTreeMap, process::Command};

use anyhow::{Context, Result};

use remote_vm_common::{Point, catalog::NO_MODE};

use crate::classes::Kernel;

use super::{
    expect::{expected_check_exit, expected_mode, first_modes},
    harness::{DAEMON, Report},
};

/// `remote-vm-daemon check --format json`: exit 0, every probe in its first
/// mode, and the kernel's own verdict on the lockless path.
pub(super) fn check_command(report: &mut Report, kernel: Option<Kernel>, extra: &[&str], name: &str) -> Result<()> {
    let (code, json) = check_json(extra)?;
    for line in serde_json::to_string_pretty(&json)?.lines() {
        println!("vmtest: {name}| {line}");
    }
    if name == "check" {
        report.check = json.clone();
    }
    report.check(format!("{name}.exit_code"), expected_check_exit(kernel), code);
    report.check(format!("{name}.json.summary.exit"), code, json["summary"]["exit"].as_i64().unwrap_or(-1));
    let probes = json["probes"].as_array().cloned().unwrap_or_default();
    let modes: BTreeMap<String, String> = probes
        .iter()
        .map(|p| (p["probe"].as_str().unwrap_or("").to_string(), p["mode"].as_str().unwrap_or("").to_string()))
        .collect();
    let first = first_modes();
    for (probe, mode) in &first {
        report.check(
            format!("{name}.mode.{probe}"),
            expected_mode(kernel, probe, mode),
            modes.get(*probe).map_or("missing", String::as_str),
        );
    }
    report.check(format!("{name}.probe_count"), first.len(), modes.len());
    // The preemption model as the kernel shows it, where it is dynamic.
    if let Some(current) = super::harness::preempt_model() {
        report.check(format!("{name}.preempt_model"), current, json["kernel"]["preempt"]["model"].as_str().unwrap_or("missing"));
    }
    if report.expect != "unknown" {
        let patched = json["patched"]["value"].as_str().unwrap_or("missing");
        let want = if kernel.is_some_and(Kernel::is_patched) { "yes" } else { "no" };
        report.check(format!("{name}.patched"), want, patched);
        // The series version the kernel list records, against what the
        // daemon's crossing probe read found.
        if let Some(k) = kernel {
            report.check(format!("{name}.series"), k.series().label(), json["series"]["value"].as_str().unwrap_or("missing"));
        }
    }
    Ok(())
}

/// `check --format json`: its exit status and document.
fn check_json(extra: &[&str]) -> Result<(i32, serde_json::Value)> {
    let out = Command::new(DAEMON)
        .args(["check", "--format", "json"])
        .args(extra)
        .output()
        .context("run check --format json")?;
    let json = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("check --format json printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), json))
}

/// `check` as user nobody with only CAP_BPF and CAP_PERFMON attaches every probe;
/// with CAP_BPF alone it is refused and the missing capability named.
pub(super) fn least_capabilities(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    let exe = std::env::current_exe()?;
    // `check --format json` as nobody with `caps`: exit status, probes, stderr.
    let with = |caps: &str| -> Result<(i32, Vec<serde_json::Value>, String)> {
        let out = Command::new(&exe)
            .args(["with-caps", caps, "--", DAEMON, "check", "--format", "json"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).with_context(|| format!("check printed no JSON: {stderr}"))?;
        Ok((out.status.code().unwrap_or(-1), json["probes"].as_array().cloned().unwrap_or_default(), stderr))
    };
    let errors = |p: &serde_json::Value| -> Vec<String> {
        p["reasons"]
            .as_array()
            .map(|rs| rs.iter().map(|r| r["error"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    };
    let (code, probes, stderr) = with("38,39")?;
    report.check("least_capabilities.bpf_perfmon.exit_code", expected_check_exit(kernel), code);
    let attached = probes.iter().filter(|p| p["attached"] == true).count();
    // Debian's kernels reserve perf events (kprobes) to CAP_SYS_ADMIN
    // (perf_event_paranoid=3): 6.1's get_user_pages_remote, a kprobe there, stays off.
    let legacy = kernel == Some(Kernel::Legacy);
    let gup = Point::GetUserPagesRemoteEntry.name();
    let attachable = first_modes()
        .iter()
        .filter(|(p, m)| expected_mode(kernel, p, m) != NO_MODE && !(legacy && *p == gup))
        .count();
    if legacy {
        let says_why = probes.iter().any(|p| {
            p["probe"] == gup
                && p["attached"] == false
                && errors(p).iter().any(|e| e.contains("perf_event_paranoid=3 reserves kprobes to CAP_SYS_ADMIN"))
        });
        report.check("least_capabilities.bpf_perfmon.kprobe_says_why", true, says_why);
    }
    report.check("least_capabilities.bpf_perfmon.probes_attached", attachable, attached);
    if code != expected_check_exit(kernel) || attached != attachable {
        println!("vmtest: least_capabilities: {probes:?}{stderr}");
    }
    let (code, probes, _) = with("39")?;
    report.check("least_capabilities.bpf_only.exit_code", 2, code);
    // Opt-in families left as they are are not tried at all.
    let opt_in = |p: &serde_json::Value| first_modes().iter().any(|(probe, m)| p["probe"] == *probe && *m == NO_MODE);
    let named = probes.iter().filter(|p| !opt_in(p)).all(|p| {
        let e = errors(p);
        e.iter().any(|e| e.contains("(missing capability CAP_PERFMON)") || e.contains("not tried"))
    });
    report.check("least_capabilities.bpf_only.names_cap_perfmon", true, named);
    Ok(())
}
