//! The test runner inside a VM (started by /init): drives the daemon and the
//! workloads and checks exact numbers. Each check prints one line
//! (`vmtest <name> ok|FAIL …`); a JSON report closes the run for the host harness.
//!
//! `main` runs the suites in order; the harness (`Report`, `Daemon`) and the
//! registry-derived expectations are shared by them:
//! - `harness`: the report and its checks, the daemon under test, metric deltas;
//! - `expect`: what must attach where, and the scenarios;
//! - `check`: the `check` subcommand, also with the least capabilities;
//! - `scenario`: one daemon configuration and its workloads;
//! - `lifecycle`: start, stop, kill and restart;
//! - `soak`: 1000 readers killed and replaced, counts and memory (only when named);
//! - `host_tests`: the host integration tests inside the VM (only when named);
//! - `modes`: `rvm.mode=serve|ab|bench`, which run no tests.
mod check;
mod expect;
mod harness;
mod host_tests;
mod lifecycle;
mod modes;
mod readers;
mod scenario;
mod soak;
mod stalls;
mod waits;

use anyhow::Result;

use crate::classes::Kernel;

use check::{check_command, least_capabilities};
use expect::SCENARIOS;
use harness::cmdline_arg;
use lifecycle::lifecycle;
use modes::{ab, bench, serve};
use scenario::{load_suite, run_scenario};
use stalls::stalls;
use waits::waits;

pub use harness::{Check, DAEMON, Report};
pub use readers::unit_readers;

/// Suites `rvm.only` or `rvm.with` must name to run.
const ONLY_WHEN_NAMED: [&str; 3] = ["soak", "host_tests", "readers"];

pub fn main() -> Result<bool> {
    if cmdline_arg("rvm.mode").as_deref() == Some("serve") {
        return serve();
    }
    if cmdline_arg("rvm.mode").as_deref() == Some("ab") {
        return ab();
    }
    if cmdline_arg("rvm.mode").as_deref() == Some("bench") {
        return bench();
    }
    if cmdline_arg("rvm.mode").as_deref() == Some("icount") {
        return modes::icount();
    }
    let expect = cmdline_arg("rvm.expect").unwrap_or_else(|| "unknown".into());
    let kernel = Kernel::from_expect(&expect);
    let mut report = Report {
        kernel: cmdline_arg("rvm.kernel").unwrap_or_else(|| "unnamed".into()),
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string(),
        expect,
        check: serde_json::Value::Null,
        checks: Vec::new(),
    };
    println!("vmtest: kernel {} ({}), expecting {}", report.kernel, report.release, report.expect);
    if kernel.is_none() && report.expect != "unknown" {
        // A word the harness does not know would silently weaken every check.
        report.error("expect", anyhow::anyhow!("rvm.expect={}: one of patched-v1, patched-v2, unpatched, legacy, unknown", report.expect));
    }
    // Hugetlb pages must be reserved before use.
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", "8");

    if let Err(e) = check_command(&mut report, kernel, &[], "check") {
        report.error("check", e);
    }
    // `rvm.only=SUITE` (`cargo xtask vm-test --only`): that suite alone after `check`.
    let only = cmdline_arg("rvm.only");
    // `rvm.only=A,B`: those suites; those of `ONLY_WHEN_NAMED` run only when named.
    // `rvm.skip=A,B`: not those (run in a boot of their own, see xtask's `Kernel::isolate`).
    let skip = cmdline_arg("rvm.skip");
    let skipped = |suite: &str| skip.as_deref().is_some_and(|s| s.split(',').any(|s| s == suite));
    // `rvm.with=A,B`: those of `ONLY_WHEN_NAMED` too.
    let with = cmdline_arg("rvm.with");
    let named = |list: &Option<String>, suite: &str| list.as_deref().is_some_and(|l| l.split(',').any(|s| s == suite));
    let run = |suite: &str| {
        !skipped(suite)
            && match only {
                Some(_) => named(&only, suite),
                None => !ONLY_WHEN_NAMED.contains(&suite) || named(&with, suite),
            }
    };
    if run("check_btf_file") {
        // --btf PATH with the kernel's own BTF copied to a file.
        let btf_copy = "/tmp/vmlinux.btf";
        match std::fs::copy("/sys/kernel/btf/vmlinux", btf_copy) {
            Ok(_) => {
                if let Err(e) = check_command(&mut report, kernel, &["--btf", btf_copy], "check_btf_file") {
                    report.error("check_btf_file", e);
                }
            }
            Err(e) => report.error("check_btf_file", e.into()),
        }
    }
    if run("least_capabilities")
        && let Err(e) = least_capabilities(&mut report, kernel)
    {
        report.error("least_capabilities", e);
    }
    for (i, scenario) in SCENARIOS.iter().enumerate() {
        if !run(scenario.name) {
            continue;
        }
        if let Err(e) = run_scenario(&mut report, scenario, kernel, i == 0) {
            report.error(scenario.name, e);
        }
    }
    if run("load")
        && let Err(e) = load_suite(&mut report, kernel)
    {
        report.error("load", e);
    }
    if run("soak")
        && let Err(e) = soak::soak(&mut report)
    {
        report.error("soak", e);
    }
    if run("host_tests")
        && let Err(e) = host_tests::host_tests(&mut report, kernel)
    {
        report.error("host_tests", e);
    }
    if run("stalls")
        && let Err(e) = stalls(&mut report, kernel)
    {
        report.error("stalls", e);
    }
    if run("waits")
        && let Err(e) = waits(&mut report, kernel)
    {
        report.error("waits", e);
    }
    if run("readers")
        && let Err(e) = readers::readers(&mut report, kernel)
    {
        report.error("readers", e);
    }
    if run("phantom")
        && kernel.is_some()
        && let Err(e) = waits::phantom(&mut report)
    {
        report.error("phantom", e);
    }
    if run("lifecycle")
        && let Err(e) = lifecycle(&mut report, kernel)
    {
        report.error("lifecycle", e);
    }

    let ok = report.checks.iter().all(|c| c.ok);
    println!("vmtest-report {}", serde_json::to_string(&report)?);
    Ok(ok)
}
