//! The soak (suite `soak`): 1000 reader threads over 4 targets for
//! `rvm.soak_seconds` (default 40), threads exiting and replaced all the time,
//! a reader process killed (SIGKILL, mid-read) every 2 s and replaced. Then:
//! every call the kernel saw counted once (entry = exit = reads by path, no
//! miss, nothing untracked), the reads counted between the readers' completed
//! and started reads (ground truth kept in a shared file the kill cannot
//! lose), no read error, and the daemon's RSS and descriptors and the kernel's
//! slab back within 16 MiB of where it started once the readers are gone
//! (freed task storage included; the kernel frees exited threads after RCU
//! grace periods, so it is given up to 30 s).
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use remote_vm_common::{Point, catalog as cat, classify::Path};

use crate::{
    prom::Scrape,
    soak::{COMPLETED, Counts, ERRORS, Rng, STARTED},
    workload::Target,
};

use super::{
    expect::SCENARIOS,
    harness::{ACCESS_PROBES, Daemon, LISTEN, Report, cmdline_arg, delta, delta_all, delta_value, skips_possible},
};

const TARGETS: usize = 4;
const PROCESSES: usize = 10;
const THREADS_PER_PROCESS: usize = 100;
const KILL_EVERY: Duration = Duration::from_secs(2);
const COUNTS_FILE: &str = "/tmp/soak.counts";
const SLAB_SLACK_KIB: u64 = 16 * 1024;
/// Slots for every reader process the run can start.
const SLOTS: usize = 4096;

/// What is sampled to show nothing grows.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    slab_kib: u64,
}

fn status_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn sample(pid: i32) -> Sample {
    Sample {
        rss_kib: status_kib(&format!("/proc/{pid}/status"), "VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0),
        slab_kib: status_kib("/proc/meminfo", "Slab:"),
    }
}

fn spawn_reader(targets: &str, slot: usize) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["soak-reader", "--targets", targets, "--threads", &THREADS_PER_PROCESS.to_string()])
        .args(["--counts", COUNTS_FILE, "--slot", &slot.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("spawn soak reader")
}

fn kill(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

pub(super) fn soak(report: &mut Report) -> Result<()> {
    let seconds: u64 = cmdline_arg("rvm.soak_seconds").and_then(|s| s.parse().ok()).unwrap_or(40);
    let name = "soak";
    let mut daemon = Daemon::start(&SCENARIOS[0].config(), &[])?;
    let pid = daemon.pid()?;
    let targets: Vec<Target> = (0..TARGETS).map(|_| Target::spawn(8, 1)).collect::<Result<_>>()?;
    let spec = targets
        .iter()
        .map(|t| format!("{}:{}:{}", t.pid(), t.layout.resident, t.layout.resident_pages))
        .collect::<Vec<_>>()
        .join(",");
    let counts = Counts::map(COUNTS_FILE, SLOTS, true)?;
    let slab_before = sample(pid).slab_kib;
    let before = Scrape::fetch(LISTEN)?;
    let started = Instant::now();
    let mut readers: Vec<Child> = Vec::new();
    let mut next_slot = 0;
    let result = (|| -> Result<()> {
        for _ in 0..PROCESSES {
            readers.push(spawn_reader(&spec, next_slot)?);
            next_slot += 1;
        }
        let end = started + Duration::from_secs(seconds);
        let mut first: Option<Sample> = None;
        let mut kills = 0usize;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        while Instant::now() < end {
            std::thread::sleep(KILL_EVERY.min(end.saturating_duration_since(Instant::now())));
            if first.is_none() && started.elapsed() >= Duration::from_secs(seconds / 4) {
                first = Some(sample(pid));
            }
            let victim = (rng.next_u64() % readers.len() as u64) as usize;
            kill(&mut readers[victim]);
            kills += 1;
            if next_slot < SLOTS {
                readers[victim] = spawn_reader(&spec, next_slot)?;
                next_slot += 1;
            }
        }
        let last = sample(pid);
        for r in &mut readers {
            kill(r);
        }
        let after = Scrape::fetch(LISTEN)?;
        let settle = Instant::now();
        let mut slab_after = sample(pid).slab_kib;
        while slab_after > slab_before + SLAB_SLACK_KIB && settle.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_secs(1));
            slab_after = sample(pid).slab_kib;
        }
        println!("vmtest: soak: slab {slab_before} kB before, {slab_after} kB {:.0} s after the readers went", settle.elapsed().as_secs_f64());
        let (s, c, e) = (counts.sum(STARTED), counts.sum(COMPLETED), counts.sum(ERRORS));
        println!(
            "vmtest: soak: {seconds} s, {} reader processes ({kills} killed mid-run), {c} reads completed, {} in flight at a kill, first {first:?}, last {last:?}",
            next_slot,
            s - c - e,
        );
        let [entry, exit] = ACCESS_PROBES.map(Point::name);
        let d = |labels: &[(&str, &str)], n: &str| delta_value(&before, &after, n, labels);
        // Every call ran the entry and exit programs or the kernel reports the run missed.
        let calls = |probe| d(&[("probe", probe)], cat::PROBE_HITS.name) + d(&[("probe", probe)], cat::PROBE_MISSES.name);
        let entries = calls(entry);
        report.check(format!("{name}.exits_plus_misses_equal_entries_plus_misses"), entries, calls(exit));
        report.check(format!("{name}.calls_at_least_completed_reads"), true, entries >= c as f64);
        report.check(format!("{name}.calls_at_most_started_reads"), true, entries <= s as f64);
        let reads: f64 = Path::ALL.iter().map(|p| d(&[("path", p.label())], cat::READS.name)).sum();
        let writes = d(&[], cat::WRITES.name);
        let unobserved = d(&[], cat::UNOBSERVED_READS.name);
        let untracked = d(&[], cat::UNTRACKED_CALLS.name);
        let missed = delta_all(&before, &after, cat::PROBE_MISSES.name);
        if (missed > 0.0 || untracked > 0.0) && skips_possible() {
            // Preemptible: runs of trampolines preempted on a CPU make the
            // kernel skip them (reported above), and one preempted inside a
            // task-storage call keeps new threads on that CPU from getting
            // state (untracked); none counted twice, a read a refining probe
            // of was skipped counted unobserved.
            println!("vmtest: {name}: the kernel skipped {missed} program runs; {unobserved} reads unobserved, {untracked} calls untracked");
            report.check(format!("{name}.counted_at_most_once"), true, reads + writes + unobserved + untracked <= entries);
        } else {
            for probe in [entry, exit] {
                report.check(format!("{name}.misses.{probe}"), 0, delta(&before, &after, cat::PROBE_MISSES.name, &[("probe", probe)]));
            }
            report.check(format!("{name}.untracked"), 0, delta(&before, &after, cat::UNTRACKED_CALLS.name, &[]));
            report.check(format!("{name}.unobserved"), 0, delta(&before, &after, cat::UNOBSERVED_READS.name, &[]));
            report.check(format!("{name}.calls_seen_are_counted"), entries, reads + writes);
        }
        report.check(format!("{name}.read_errors"), 0, e);
        report.check(format!("{name}.reads_made"), true, c > 0);
        let first = first.unwrap_or(last);
        let stalls = delta_all(&before, &after, cat::STALLS.name);
        println!("vmtest: soak: daemon RSS {} → {} kB from the first quarter; {stalls} stalls counted", first.rss_kib, last.rss_kib);
        // Not asserted where runs are skipped: on Debian's 6.12 with
        // preempt=full the daemon's RSS rose by up to 5.5 MiB early in a 40 s
        // soak while stalls (readers starved of CPU inside down_read) filled
        // the stall log; the 600 s soak there was flat from 150 s on. The
        // figure is printed above.
        if missed == 0.0 {
            report.check(format!("{name}.daemon_rss_flat_within_4_mib"), true, last.rss_kib <= first.rss_kib + 4096);
        }
        report.check(format!("{name}.daemon_fds_flat"), first.fds, last.fds);
        report.check(format!("{name}.kernel_slab_back_within_16_mib"), true, slab_after <= slab_before + SLAB_SLACK_KIB);
        Ok(())
    })();
    for r in &mut readers {
        kill(r);
    }
    drop(targets);
    daemon.stop(report, name)?;
    result
}
