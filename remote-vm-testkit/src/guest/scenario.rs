//! One daemon configuration (scenario): what attached, the exported series, the
//! classification workload and host-wide contention; and the counting load
//! (suite `load`).
use std::{os::unix::fs::FileExt, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use remote_vm_common::{
    Family, Point,
    catalog::{self as cat, NO_MODE},
    classify::{Path, Reason},
};

use crate::{
    classes::{self, Kernel},
    prom::{self, Scrape},
    workload::{self, Target},
};

use super::{
    expect::{Scenario, expected_mode, lockless_probe},
    harness::{ACCESS_PROBES, DAEMON_LOG, Daemon, LISTEN, Report, delta, delta_all, delta_sum, delta_value, hits},
};

pub(super) fn run_scenario(report: &mut Report, sc: &Scenario, kernel: Option<Kernel>, first: bool) -> Result<()> {
    let extra: &[&str] = if first { &["--log-level", "debug"] } else { &[] };
    let mut daemon = Daemon::start(&sc.config(), extra)?;
    let name = sc.name;
    let result = (|| -> Result<()> {
        let start = Scrape::fetch(LISTEN)?;
        let mut as_expected = true;
        for (probe, mode) in sc.modes() {
            let mode = expected_mode(kernel, probe, mode);
            as_expected &= report.check(
                format!("{name}.attached.{probe}"),
                u8::from(mode != NO_MODE),
                start.value(cat::PROBE_ATTACHED.name, &[("probe", probe), ("mode", mode)]).unwrap_or(-1.0),
            );
        }
        if !as_expected {
            // Why not: the daemon says it (a verifier's message among them).
            let log = std::fs::read_to_string(DAEMON_LOG).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("probe")).take(40) {
                println!("vmtest: {name}: daemon: {}", line.chars().take(2000).collect::<String>());
            }
        }
        golden_series(report, name, &start, sc, kernel);
        if sc.name == "fallback" && kernel.is_some() {
            // Kprobe modes say where their misses are counted (Linux 6.7+: on the link).
            let (_, health) = prom::get(LISTEN, "/healthz")?;
            let legacy = kernel == Some(Kernel::Legacy);
            let probes = [
                (Point::AccessRemoteVmEntry, 1),
                (Point::AccessRemoteVmExit, 1),
                (Point::LockVmaUnderRcuExit, 2),
                (Point::MmapLockRemoteStart, 1),
            ];
            for (probe, links) in probes.map(|(p, n)| (p.name(), n)) {
                if legacy && lockless_probe(probe) {
                    continue;
                }
                let source = if legacy {
                    "this kernel keeps no kprobe miss counter (Linux < 6.7)".to_string()
                } else {
                    format!("the kernel counts them on {links} kprobe link(s)")
                };
                let want = format!("probe {probe}: kprobe (may miss events; see {}: {source})", cat::PROBE_MISSES.name);
                report.check(format!("{name}.healthz.{probe}"), true, health.lines().any(|l| l == want));
            }
        }
        if first {
            // Scraping must not itself read remote memory.
            let again = Scrape::fetch(LISTEN)?;
            for probe in ACCESS_PROBES.map(Point::name) {
                report.check(format!("{name}.scrape_makes_no_remote_reads.{probe}"), 0, hits(&again, probe) - hits(&start, probe));
            }
        }
        probe_costs(report, sc)?;
        classification(report, name, kernel, sc.remote_writes(), sc.vma_probed())?;
        host_contention(report, name)?;
        if first {
            // aya-log: the eBPF side's debug messages reach the daemon's log.
            let log = std::fs::read_to_string(DAEMON_LOG)?;
            let lines = log.lines().filter(|l| l.contains("__access_remote_vm entry: tid")).count();
            report.check(format!("{name}.ebpf_log_messages_reach_the_daemon_log"), true, lines > 0);
        }
        Ok(())
    })();
    daemon.stop(report, name)?;
    result
}

/// The series this scenario exports against the golden file of every series the
/// daemon can export (`remote-vm-daemon/golden/exposition.txt`): none unknown,
/// and on a patched or unpatched kernel, every golden series whose probes
/// attached here.
fn golden_series(report: &mut Report, name: &str, scrape: &Scrape, sc: &Scenario, kernel: Option<Kernel>) {
    let golden = crate::golden::Golden::load();
    let got = crate::golden::scrape_series(scrape);
    let unknown: Vec<&String> = got.iter().filter(|s| !golden.knows(s)).collect();
    report.check(format!("{name}.golden.unknown_series"), "[]", format!("{unknown:?}"));
    if matches!(kernel, Some(Kernel::Patched(_) | Kernel::Unpatched)) {
        // Everything attaches on these kernels: what is missing is what the
        // scenario's modes cannot see (the remote write waits without them).
        let write = format!("mode=\"{}\"", cat::LOCK_WRITE);
        let remote = format!("context=\"{}\"", cat::CONTEXT_REMOTE);
        let host_failures = format!("{}{{context=\"{}\"}}", cat::MMAP_LOCK_ACQUIRE_FAILURES.name, cat::CONTEXT_HOST);
        let missing: Vec<&String> = golden
            .missing_from(&got)
            .filter(|g| !g.starts_with(cat::PROBE_ATTACHED.name))
            .filter(|g| {
                let remote_write = (g.contains(&write) && g.contains(&remote))
                    || g.starts_with(&format!("{}{{lock_mode=\"{}\"", cat::STALLS.name, cat::LOCK_WRITE));
                sc.remote_writes() || !remote_write
            })
            .filter(|g| sc.host_failures() || **g != host_failures)
            .filter(|g| sc.vma_probed() || !needs_vma_probe(g))
            .filter(|g| !sc.vma_probed() || !g.contains(&reason(Reason::VmaLockFailedOrUnsuitable)))
            .filter(|g| sc.self_stats || ![cat::PROBE_RUNS.name, cat::PROBE_RUN_SECONDS.name].iter().any(|m| g.starts_with(*m)))
            .collect();
        report.check(format!("{name}.golden.missing_series"), "[]", format!("{missing:?}"));
    }
}

/// `self_stats`: the kernel counts every run of the programs while the daemon
/// holds its statistics on, as many as the programs count themselves; without
/// it (and nothing else switching them on) the families are absent. Either way
/// `/healthz` says so.
fn probe_costs(report: &mut Report, sc: &Scenario) -> Result<()> {
    let name = sc.name;
    let (_, health) = prom::get(LISTEN, "/healthz")?;
    let line = health.lines().find(|l| l.starts_with("probe costs: ")).unwrap_or("none").to_string();
    let want = if sc.self_stats { "probe costs: collected (self_stats = true" } else { "probe costs: absent (kernel.bpf_stats_enabled = 0" };
    report.check(format!("{name}.probe_costs.healthz"), true, line.starts_with(want));
    let target = Target::spawn(4, 1)?;
    let before = Scrape::fetch(LISTEN)?;
    for i in 0..100u64 {
        let _ = target.pread(target.layout.resident + (i % 4) * workload::PAGE as u64, 64);
    }
    let after = Scrape::fetch(LISTEN)?;
    drop(target);
    for probe in ACCESS_PROBES.map(Point::name) {
        let runs = delta(&before, &after, cat::PROBE_RUNS.name, &[("probe", probe)]);
        let want = if sc.self_stats { delta(&before, &after, cat::PROBE_HITS.name, &[("probe", probe)]) } else { "absent".into() };
        report.check(format!("{name}.probe_costs.runs.{probe}"), want, runs);
        let seconds = after.value(cat::PROBE_RUN_SECONDS.name, &[("probe", probe)]).zip(before.value(cat::PROBE_RUN_SECONDS.name, &[("probe", probe)]));
        // Present and monotonic (the kernel's run clock may be too coarse to
        // move over 100 short runs: PREEMPT_LAZY 7.3 under TCG showed 0).
        report.check(format!("{name}.probe_costs.time_counted.{probe}"), sc.self_stats, seconds.is_some_and(|(a, b)| a >= b));
    }
    Ok(())
}

/// `reason="…"` as a series shows it.
fn reason(r: Reason) -> String {
    format!("reason=\"{}\"", r.label())
}

/// A golden series only the opt-in `lock_vma_under_rcu` family provides: its
/// probe's own series, the metrics only it sees, the split VMA-level reasons.
fn needs_vma_probe(series: &str) -> bool {
    let family = |m: &str| series.starts_with(m) && series[m.len()..].starts_with(['{', '_', ' ']);
    let probe = |p: &Point| series.contains(&format!("probe=\"{}\"", p.name()));
    [cat::LOCK_VMA_CALLS.name, cat::LOCK_VMA_FAILURES.name, cat::READ_VMAS.name, cat::MULTI_VMA_READS.name]
        .into_iter()
        .any(family)
        || Family::LockVmaUnderRcu.spec().points.iter().any(probe)
        || Reason::ALL.into_iter().filter(|r| !r.reported(false)).any(|r| series.contains(&reason(r)))
}

const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The classification workload: every class of access a known number of times.
pub(super) fn classification(
    report: &mut Report,
    name: &str,
    kernel: Option<Kernel>,
    remote_writes: bool,
    vma_probed: bool,
) -> Result<()> {
    let target = Target::spawn(4, 16)?;
    let counts = classes::Counts::for_layout(&target.layout);
    if target.layout.hugetlb.is_none() {
        println!("vmtest: {name}: no hugetlb page reserved; skipping the hugetlb class");
    }
    // A kernel with transparent huge pages (it has their sysfs knob) must give
    // the target one (MADV_HUGEPAGE); a kernel without (Debian's PREEMPT_RT
    // builds) skips the class.
    let thp_kernel = std::path::Path::new(THP_ENABLED).exists();
    if !thp_kernel {
        println!("vmtest: {name}: no transparent huge pages in this kernel ({THP_ENABLED} absent); skipping the THP class");
    }
    report.check(format!("{name}.classes.thp_available"), thp_kernel, target.layout.thp.is_some());
    report.check(format!("{name}.classes.argv_moved_into_a_file"), workload::CMDLINE.len(), target.layout.cmdline_len);
    let before = Scrape::fetch(LISTEN)?;
    let ground = classes::run(&target, &counts)?;
    let after = Scrape::fetch(LISTEN)?;
    drop(target);
    let Some(k) = kernel else {
        // Unknown kernel: only what holds everywhere.
        let [entry, exit] = ACCESS_PROBES.map(Point::name);
        let entries = hits(&after, entry) - hits(&before, entry);
        let exits = hits(&after, exit) - hits(&before, exit);
        report.check(format!("{name}.classes.entries_equal_exits"), entries, exits);
        return Ok(());
    };
    report.check(format!("{name}.classes.ground_truth"), format!("{:?}", classes::expected_ground(k, &counts)), format!("{ground:?}"));
    for (metric, labels, mut value) in classes::expected(k, &counts, vma_probed) {
        // Without a write-lock probe its series is absent, never zero.
        let write_series = (metric == cat::MMAP_LOCK_WAIT.count() && labels.contains(&("mode", cat::LOCK_WRITE)))
            || (metric == cat::STALLS.name && labels.contains(&("lock_mode", cat::LOCK_WRITE)));
        if write_series && !remote_writes {
            value = None;
        }
        let label_text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        report.check(
            format!("{name}.classes.{metric}{{{}}}", label_text.join(",")),
            value.map_or("absent".to_string(), |v| v.to_string()),
            // Over the labels the expectation leaves out (stalls: every op).
            delta_sum(&before, &after, metric, &labels),
        );
    }
    Ok(())
}

/// Host-wide waits: contention in a process of its own (not controlled to the
/// last event, so a lower bound): the contention tracepoints see some waits; the
/// mmap_lock tracepoints see at least every write-lock request the workload made.
fn host_contention(report: &mut Report, name: &str) -> Result<()> {
    let count = |s: &Scrape, mode: &str| {
        s.value(&cat::MMAP_LOCK_WAIT.count(), &[("context", cat::CONTEXT_HOST), ("mode", mode)])
            .unwrap_or(f64::NAN)
    };
    let before = Scrape::fetch(LISTEN)?;
    // Whether a waiter sleeps (and so is traced) depends on scheduling — a
    // writer that wins by optimistic spinning is not: up to ten rounds until
    // some contended wait is seen (PREEMPT_LAZY guests needed more than three).
    let mut requests = 0u64;
    let mut after = before.clone();
    for _ in 0..10 {
        let out = Command::new(std::env::current_exe()?)
            .args(["contend", "--iterations", "200", "--region-mb", "64"])
            .output()?;
        if !out.status.success() {
            bail!("contend failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        requests += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?;
        after = Scrape::fetch(LISTEN)?;
        let both = |s: &Scrape| count(s, cat::LOCK_WRITE) + count(s, cat::LOCK_READ);
        if both(&after) > both(&before) {
            break;
        }
    }
    let writes = count(&after, cat::LOCK_WRITE) - count(&before, cat::LOCK_WRITE);
    let reads = count(&after, cat::LOCK_READ) - count(&before, cat::LOCK_READ);
    let mode = after
        .series(cat::PROBE_ATTACHED.name)
        .find(|(k, v)| *v == 1.0 && k.contains(&format!("probe=\"{}\"", Point::MmapLockHostStart.name())))
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    println!("vmtest: {name}: host contention: {requests} write-lock requests, {writes} write and {reads} read waits seen ({mode})");
    if mode.contains("mmap_lock_tp") {
        report.check(format!("{name}.host.every_write_request_seen"), true, writes >= requests as f64);
    } else {
        report.check(format!("{name}.host.contended_waits_seen"), true, writes + reads > 0.0);
    }
    // Nobody was killed while waiting. (The mmap_lock tracepoints cannot tell a
    // failed trylock from a killed waiter: there the series is absent.)
    report.check(
        format!("{name}.host.acquire_failures"),
        if mode.contains("mmap_lock_tp") { "absent" } else { "0" },
        delta(&before, &after, cat::MMAP_LOCK_ACQUIRE_FAILURES.name, &[("context", cat::CONTEXT_HOST)]),
    );
    Ok(())
}

/// The counting load (suite `load`): 100 k reads of resident pages from 8
/// threads, in the first scenario's configuration. Where BPF programs can be
/// preempted (the kernel's build string says which model), runs interleave on
/// a CPU: every read must still be counted once, entry and exit, none missed.
pub(super) fn load_suite(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    let version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    let model = super::harness::preempt_model();
    println!("vmtest: load: kernel {}, preemption {}", version.trim(), model.as_deref().unwrap_or("not dynamic"));
    if super::harness::cmdline_arg("preempt").as_deref() == Some("full") {
        // The boot parameter took: the dynamic model is `full`.
        report.check("load.preempt_model_full", true, model.as_deref() == Some("full"));
    }
    let skips_possible = super::harness::skips_possible();
    let mut patched = None;
    // `auto` (trampolines, skipped while preempted on preemptible kernels),
    // then every access family a kprobe (handlers run with preemption
    // disabled, but a kretprobe keeps `maxactive` calls in flight: 8 readers
    // stay within it unless preempted inside — Debian's 7.3.4 missed ~5 %).
    for sc in ["first", "fallback"].map(super::expect::scenario) {
        let name = format!("{LOAD}.{}", sc.name);
        let mut daemon = Daemon::start(&sc.config(), &[])?;
        let result = load(report, &name, kernel, skips_possible);
        if patched.is_none() {
            patched = Some(Scrape::fetch(LISTEN).map(|s| patched_label(&s)));
        }
        daemon.stop(report, &name)?;
        result?;
    }
    if !std::path::Path::new("/proc/self/ns/pid").exists() {
        println!("vmtest: load.pid_namespace: this kernel has no PID namespaces (CONFIG_PID_NS): nothing to test");
        return Ok(());
    }
    // The first modes inside a PID namespace with a /proc of its own: the same
    // verdict and exact counts as outside.
    let name = "load.pid_namespace";
    let sc = super::expect::scenario("first");
    let mut daemon = Daemon::start_in(&["unshare", "-p", "-f", "--mount-proc"], &sc.config(), &[], &[])?;
    let result = (|| -> Result<()> {
        let outside = patched.context("no load ran outside")??;
        report.check(format!("{name}.patched"), outside, patched_label(&Scrape::fetch(LISTEN)?));
        load(report, name, kernel, skips_possible)
    })();
    daemon.stop(report, name)?;
    result
}

/// The `patched` label of the kernel info metric.
fn patched_label(s: &Scrape) -> String {
    s.series(cat::KERNEL_INFO.name)
        .find_map(|(key, _)| key.split_once("patched=\"").and_then(|(_, v)| v.split_once('"')).map(|(v, _)| v.to_string()))
        .unwrap_or_else(|| "absent".into())
}

const LOAD: &str = "load";

/// 100 k reads of resident pages from 8 threads. Every call runs the entry
/// and exit programs or is a run the kernel reports missed (`hits + misses`
/// equal the calls, exactly). Where no run can be skipped, nothing is missed
/// and every read is counted on its path; where runs can be skipped (fully
/// preemptible kernels), calls that lost a run are not all classified, and
/// none is counted twice.
fn load(report: &mut Report, name: &str, kernel: Option<Kernel>, skips_possible: bool) -> Result<()> {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 12_500;
    let target = Target::spawn(8, 1)?;
    let before = Scrape::fetch(LISTEN)?;
    let started = Instant::now();
    let errors: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let target = &target;
                s.spawn(move || {
                    let mut buf = [0u8; 64];
                    let mut bad = 0;
                    for i in 0..PER_THREAD {
                        let page = (t + i) % target.layout.resident_pages;
                        let addr = target.layout.resident + (page * workload::PAGE) as u64;
                        match target.mem().read_at(&mut buf, addr) {
                            Ok(64) if buf.iter().all(|b| *b == workload::pattern(page)) => {}
                            _ => bad += 1,
                        }
                    }
                    bad
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(PER_THREAD)).sum()
    });
    let after = Scrape::fetch(LISTEN)?;
    println!("vmtest: {name}: {} reads from {THREADS} threads in {:.1} s", THREADS * PER_THREAD, started.elapsed().as_secs_f64());
    drop(target);
    let n = (THREADS * PER_THREAD) as u64;
    report.check(format!("{name}.read_errors"), 0, errors);
    let num = |name: &str, labels: &[(&str, &str)]| delta_value(&before, &after, name, labels);
    let mut skipped = 0.0;
    for probe in ACCESS_PROBES.map(Point::name) {
        let hits = num(cat::PROBE_HITS.name, &[("probe", probe)]);
        let misses = num(cat::PROBE_MISSES.name, &[("probe", probe)]);
        report.check(format!("{name}.hits_plus_misses.{probe}"), n, hits + misses);
        skipped += misses;
    }
    let all_misses = delta_all(&before, &after, cat::PROBE_MISSES.name);
    let unobserved = num(cat::UNOBSERVED_READS.name, &[]);
    let untracked = num(cat::UNTRACKED_CALLS.name, &[]);
    // Where the kernel skipped nothing, every count is exact; where it skipped
    // programs (it says how many), a read it skipped a refining probe of is
    // unobserved — never on a path it did not take.
    if all_misses > 0.0 || untracked > 0.0 {
        println!(
            "vmtest: {name}: the kernel skipped {all_misses} program runs ({skipped} of the access entry and exit), {unobserved} reads unobserved, {untracked} untracked"
        );
    }
    if !skips_possible {
        report.check(format!("{name}.misses_all_probes"), 0, all_misses);
        // Where programs can be preempted, one preempted inside a task-storage
        // call holds that CPU's storage busy count (kernels whose task storage
        // has one, 6.12 among them): an entry there cannot create a new thread's state and
        // counts the call untracked (Debian's 6.12 with preempt=full: 343 of
        // 100 k calls from 8 new threads in one run).
        report.check(format!("{name}.untracked"), 0, untracked);
    }
    let reads: f64 = Path::ALL.iter().map(|p| num(cat::READS.name, &[("path", p.label())])).sum();
    report.check(format!("{name}.reads_counted_at_most_once"), true, reads + unobserved + untracked <= n as f64);
    if all_misses == 0.0 {
        report.check(format!("{name}.unobserved"), 0, delta(&before, &after, cat::UNOBSERVED_READS.name, &[]));
    }
    if let Some(k) = kernel {
        let path = if k.is_patched() { Path::Fast } else { Path::Slow };
        for p in Path::ALL {
            let got = delta(&before, &after, cat::READS.name, &[("path", p.label())]);
            if p != path {
                // Never a path the kernel cannot take: exact, skips or not.
                report.check(format!("{name}.reads.{}", p.label()), 0, got);
            } else if all_misses == 0.0 {
                report.check(format!("{name}.reads.{}", p.label()), n, got);
            } else {
                let on_path = num(cat::READS.name, &[("path", p.label())]);
                report.check(format!("{name}.reads.{}_plus_unobserved", p.label()), true, on_path + unobserved <= n as f64);
            }
        }
    }
    Ok(())
}
