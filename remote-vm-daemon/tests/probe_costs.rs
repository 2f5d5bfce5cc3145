//! Probe costs (`self_stats`, `remote_vm_probe_runs_total`,
//! `remote_vm_probe_run_seconds_total`): the kernel's BPF run-time statistics
//! of the daemon's programs, present exactly while the kernel collects them.
//! Host tests (root and BPF), under `cargo xtask test`. They switch the host's
//! `kernel.bpf_stats_enabled` and put it back; one test, so nothing else in this
//! binary sees it change.
use std::time::{Duration, Instant};

mod common;

use common::Running;
use remote_vm_common::{Point, catalog as cat};
use remote_vm_testkit::prom::{self, Scrape};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn sysctl() -> String {
    std::fs::read_to_string(SYSCTL).unwrap().trim().to_string()
}

fn healthz_line(d: &Running) -> String {
    let (_, body) = prom::get(&d.addr, "/healthz").unwrap();
    body.lines().find(|l| l.starts_with("probe costs: ")).unwrap_or("none").to_string()
}

/// Waits (5 s at most) for `cond`.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Puts the sysctl back however the test ends.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn run_statistics_are_exported_exactly_while_the_kernel_collects_them() {
    let _restore = Restore(sysctl());
    std::fs::write(SYSCTL, "0").unwrap();

    // Off: the families are absent and /healthz says why.
    let d = Running::start("costs-off", "", &[]);
    let s = Scrape::fetch(&d.addr).unwrap();
    assert_eq!(s.series(cat::PROBE_RUNS.name).count(), 0);
    assert_eq!(s.series(cat::PROBE_RUN_SECONDS.name).count(), 0);
    assert!(healthz_line(&d).starts_with("probe costs: absent (kernel.bpf_stats_enabled = 0 "), "{}", healthz_line(&d));

    // Switched on outside the daemon: the host-wide contention probe's runs
    // are counted, as many as the program counts itself.
    std::fs::write(SYSCTL, "1").unwrap();
    assert!(healthz_line(&d).starts_with("probe costs: collected (the kernel's BPF run-time statistics are on"));
    let on = contended(&d);
    assert!(on.hits > 0.0, "no contended wait in ten rounds");
    assert_eq!(on.runs, on.hits);
    assert!(on.seconds > 0.0);
    // Off again: absent again (not frozen, not reset) once a probe has run
    // uncounted — runs in the moment before the switch would look like
    // another holder's.
    std::fs::write(SYSCTL, "0").unwrap();
    let off = contended(&d);
    assert!(off.hits > 0.0 && off.runs.is_nan(), "runs still exported after the sysctl went off");
    assert_eq!(Scrape::fetch(&d.addr).unwrap().series(cat::PROBE_RUNS.name).count(), 0);
    assert_eq!(d.stop(), 0);

    // self_stats = true: the daemon holds collection on while it runs (a
    // descriptor: the sysctl does not show it) ...
    let d = Running::start("costs-held", "self_stats = true\n", &[]);
    assert!(healthz_line(&d).starts_with("probe costs: collected (self_stats = true"), "{}", healthz_line(&d));
    let held = contended(&d);
    assert_eq!(held.runs, held.hits);
    assert!(held.hits > 0.0 && held.seconds > 0.0);
    // ... and the kernel switches it off when the daemon dies, even by SIGKILL:
    // the next daemon's programs then run uncounted.
    d.signal(libc::SIGKILL);
    drop(d);
    let d = Running::start("costs-after-kill", "", &[]);
    let after = contended(&d);
    assert!(after.hits > 0.0, "no contended wait in ten rounds");
    assert!(after.runs.is_nan(), "runs counted after the holder was killed");
    assert!(healthz_line(&d).starts_with("probe costs: absent ("), "{}", healthz_line(&d));
    assert_eq!(d.stop(), 0);
    assert!(eventually(|| sysctl() == "0"));
}

/// What the host-wide contention probe's hits, runs and run time grew by over
/// contention in a process of our own (runs and time NaN where absent).
struct Grew {
    hits: f64,
    runs: f64,
    seconds: f64,
}

fn contended(d: &Running) -> Grew {
    let probe = [("probe", Point::MmapLockHostStart.name())];
    let before = Scrape::fetch(&d.addr).unwrap();
    let mut after = before.clone();
    // Only a sleeping waiter is traced: up to ten rounds until one is.
    for _ in 0..10 {
        remote_vm_testkit::workload::contend(200, 64).unwrap();
        after = Scrape::fetch(&d.addr).unwrap();
        if after.value(cat::PROBE_HITS.name, &probe) > before.value(cat::PROBE_HITS.name, &probe) {
            break;
        }
    }
    let delta = |s: &str| match (after.value(s, &probe), before.value(s, &probe)) {
        (Some(a), Some(b)) => a - b,
        _ => f64::NAN,
    };
    Grew {
        hits: delta(cat::PROBE_HITS.name),
        runs: delta(cat::PROBE_RUNS.name),
        seconds: delta(cat::PROBE_RUN_SECONDS.name),
    }
}
