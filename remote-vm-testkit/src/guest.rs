//! The test runner inside a VM (started by /init): drives the daemon and the
//! workloads and checks exact numbers. Each check prints one line
//! (`vmtest <name> ok|FAIL …`); a JSON report closes the run for the host harness.
use std::{
    collections::BTreeMap,
    os::unix::fs::FileExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use remote_vm_common::{
    Family, Point,
    catalog::{self as cat, NO_MODE},
    registry::ModeSpec,
    classify::Path,
};

use crate::{
    classes::{self, COUNTS, Kernel},
    prom::{self, Scrape},
    workload::{self, Target},
};

pub const DAEMON: &str = "/usr/bin/remote-vm-daemon";
const LISTEN: &str = "127.0.0.1:19361";
const DAEMON_LOG: &str = "/tmp/daemon.log";

/// A probe and the mode it must attach in.
type ProbeMode = (&'static str, &'static str);

/// Every probe of `modes`' families (family, mode name) with that mode.
fn probe_modes(modes: &[(Family, &'static str)]) -> Vec<ProbeMode> {
    modes
        .iter()
        .flat_map(|(f, m)| f.spec().points.iter().map(move |p| (p.name(), *m)))
        .collect()
}

/// Every probe in the mode `auto` tries first (the test kernels take it).
fn first_modes() -> Vec<ProbeMode> {
    probe_modes(&Family::ALL.map(|f| (f, f.first_mode().name)))
}

/// Probes of functions a legacy kernel (6.1) does not have.
fn lockless_probe(probe: &str) -> bool {
    [Family::LockVmaUnderRcu, Family::FolioWalkStart]
        .iter()
        .any(|f| f.spec().points.iter().any(|p| p.name() == probe))
}

/// The mode `probe` must attach in on `kernel`, given the configured `mode`.
fn expected_mode(kernel: Option<Kernel>, probe: &str, mode: &'static str) -> &'static str {
    let gup = Point::GetUserPagesRemoteEntry.name();
    if kernel == Some(Kernel::Legacy) && lockless_probe(probe) {
        NO_MODE
    } else if kernel == Some(Kernel::Legacy) && probe == gup && mode == Family::GetUserPagesRemote.first_mode().name {
        // 6.1's get_user_pages_remote has 7 arguments; its trampolines take 6:
        // the next mode, the kprobe.
        Family::GetUserPagesRemote.spec().modes[1].name
    } else {
        mode
    }
}

/// `check`'s exit status on `kernel`: 2 (degraded) where probes cannot exist.
fn expected_check_exit(kernel: Option<Kernel>) -> i32 {
    if kernel == Some(Kernel::Legacy) { 2 } else { 0 }
}

/// A daemon configuration: families forced into modes (the rest `auto`).
struct Scenario {
    name: &'static str,
    forced: &'static [(Family, &'static str)],
}

impl Scenario {
    fn config(&self) -> String {
        let mut config = String::from("[probes]\n");
        for (family, mode) in self.forced {
            config.push_str(&format!("{} = \"{mode}\"\n", family.name()));
        }
        config
    }

    /// The modes it must attach in: the forced ones, or all first modes.
    fn modes(&self) -> Vec<ProbeMode> {
        if self.forced.is_empty() { first_modes() } else { probe_modes(self.forced) }
    }

    /// The mode it attaches `family` in.
    fn mode(&self, family: Family) -> &'static ModeSpec {
        let name = self.forced.iter().find(|(f, _)| *f == family).map_or(family.first_mode().name, |(_, m)| *m);
        family.mode(name).unwrap_or(family.first_mode())
    }

    /// Its host-wide mode reports killed waiters (so the failures series exists).
    fn host_failures(&self) -> bool {
        self.mode(Family::MmapLockHost).reports_failures
    }

    /// Its remote-lock mode sees expand_stack's write-lock acquisitions.
    fn remote_writes(&self) -> bool {
        self.mode(Family::MmapLockRemote).sees_write_waits
    }
}

use Family::*;

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "first", forced: &[] },
    Scenario {
        name: "fallback",
        forced: &[
            (AccessRemoteVm, "kprobe"),
            (LockVmaUnderRcu, "kprobe"),
            (FolioWalkStart, "kprobe"),
            (GetUserPagesRemote, "kprobe"),
            (MmapLockRemote, "kprobe"),
            (MmapLockHost, "mmap_lock_tp"),
        ],
    },
    Scenario {
        name: "callers",
        forced: &[(AccessRemoteVm, "fentry_callers"), (MmapLockRemote, "mmap_lock_tp")],
    },
    Scenario {
        name: "kprobe_callers",
        forced: &[(AccessRemoteVm, "kprobe_callers"), (MmapLockRemote, "fentry_rw")],
    },
];

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub got: String,
    pub ok: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub kernel: String,
    pub release: String,
    pub expect: String,
    /// What `remote-vm-daemon check --format json` printed (for the host's kernel matrix).
    pub check: serde_json::Value,
    pub checks: Vec<Check>,
}

impl Report {
    fn check(&mut self, name: impl Into<String>, expected: impl ToString, got: impl ToString) -> bool {
        let (name, expected, got) = (name.into(), expected.to_string(), got.to_string());
        let ok = expected == got;
        if ok {
            println!("vmtest {name} ok: {got}");
        } else {
            println!("vmtest {name} FAIL: expected {expected}, got {got}");
        }
        self.checks.push(Check {
            name,
            expected,
            got,
            ok,
        });
        ok
    }

    fn error(&mut self, name: &str, e: anyhow::Error) {
        self.check(name, "no error", format!("error: {e:#}"));
    }
}

/// `rvm.KEY=VALUE` from the kernel command line.
fn cmdline_arg(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(str::to_string)
}

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
    // Hugetlb pages must be reserved before use.
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", "8");

    if let Err(e) = check_command(&mut report, kernel, &[], "check") {
        report.error("check", e);
    }
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
    if let Err(e) = least_capabilities(&mut report, kernel) {
        report.error("least_capabilities", e);
    }
    for (i, scenario) in SCENARIOS.iter().enumerate() {
        if let Err(e) = run_scenario(&mut report, scenario, kernel, i == 0) {
            report.error(scenario.name, e);
        }
    }
    if let Err(e) = lifecycle(&mut report, kernel) {
        report.error("lifecycle", e);
    }

    let ok = report.checks.iter().all(|c| c.ok);
    println!("vmtest-report {}", serde_json::to_string(&report)?);
    Ok(ok)
}

/// `remote-vm-daemon check --format json`: exit 0, every probe in its first
/// mode, and the kernel's own verdict on the lockless path.
fn check_command(report: &mut Report, kernel: Option<Kernel>, extra: &[&str], name: &str) -> Result<()> {
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
    if report.expect != "unknown" {
        let patched = json["patched"]["value"].as_str().unwrap_or("missing");
        let want = if kernel == Some(Kernel::Patched) { "yes" } else { "no" };
        report.check(format!("{name}.patched"), want, patched);
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
fn least_capabilities(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    let exe = std::env::current_exe()?;
    let with = |caps: &str| -> Result<(Option<i32>, String, String)> {
        let out = Command::new(&exe).args(["with-caps", caps, "--", DAEMON, "check"]).output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, stdout, stderr) = with("38,39")?;
    report.check("least_capabilities.bpf_perfmon.exit_code", expected_check_exit(kernel), code.unwrap_or(-1));
    let attached = stdout.lines().filter(|l| l.starts_with("probe ") && !l.contains(": none (")).count();
    // Debian's kernels reserve perf events (kprobes) to CAP_SYS_ADMIN
    // (perf_event_paranoid=3): 6.1's get_user_pages_remote, a kprobe there, stays off.
    let legacy = kernel == Some(Kernel::Legacy);
    let gup = Point::GetUserPagesRemoteEntry.name();
    let attachable = first_modes()
        .iter()
        .filter(|(p, m)| expected_mode(kernel, p, m) != NO_MODE && !(legacy && *p == gup))
        .count();
    if legacy {
        report.check(
            "least_capabilities.bpf_perfmon.kprobe_says_why",
            true,
            stdout.lines().any(|l| l.starts_with(&format!("probe {gup}: none (")) && l.contains("perf_event_paranoid=3 reserves kprobes to CAP_SYS_ADMIN")),
        );
    }
    report.check("least_capabilities.bpf_perfmon.probes_attached", attachable, attached);
    if code != Some(expected_check_exit(kernel)) || attached != attachable {
        println!("vmtest: least_capabilities: {stdout}{stderr}");
    }
    let (code, stdout, _) = with("39")?;
    report.check("least_capabilities.bpf_only.exit_code", 2, code.unwrap_or(-1));
    report.check(
        "least_capabilities.bpf_only.names_cap_perfmon",
        true,
        stdout.lines().filter(|l| l.starts_with("probe ")).all(|l| l.contains("(missing capability CAP_PERFMON)") || l.contains("not tried")),
    );
    Ok(())
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(config: &str, extra: &[&str]) -> Result<Daemon> {
        Daemon::start_with(config, extra, &[])
    }

    fn start_with(config: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        std::fs::write("/tmp/remote-vm.toml", config)?;
        let log = std::fs::File::create(DAEMON_LOG)?;
        let child = Command::new(DAEMON)
            .args(["run", "--listen", LISTEN, "--config", "/tmp/remote-vm.toml"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn daemon")?;
        let mut d = Daemon { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = prom::get(LISTEN, "/healthz") {
                return Ok(d);
            }
            if let Some(status) = d.child.try_wait()? {
                bail!("daemon exited with {status} before serving: {}", std::fs::read_to_string(DAEMON_LOG)?);
            }
            if Instant::now() > deadline {
                bail!("daemon did not serve /healthz within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self, report: &mut Report, name: &str) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        report.check(format!("{name}.sigterm_exit_code"), 0, status.code().unwrap_or(-1));
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The entry and exit of every remote access.
const ACCESS_PROBES: [Point; 2] = [Point::AccessRemoteVmEntry, Point::AccessRemoteVmExit];

fn hits(s: &Scrape, probe: &str) -> f64 {
    s.value(cat::PROBE_HITS.name, &[("probe", probe)]).unwrap_or(f64::NAN)
}

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> String {
    match (before.value(name, labels), after.value(name, labels)) {
        (Some(b), Some(a)) => format!("{}", a - b),
        _ => "absent".to_string(),
    }
}

fn run_scenario(report: &mut Report, sc: &Scenario, kernel: Option<Kernel>, first: bool) -> Result<()> {
    let extra: &[&str] = if first { &["--log-level", "debug"] } else { &[] };
    let mut daemon = Daemon::start(&sc.config(), extra)?;
    let name = sc.name;
    let result = (|| -> Result<()> {
        let start = Scrape::fetch(LISTEN)?;
        for (probe, mode) in sc.modes() {
            let mode = expected_mode(kernel, probe, mode);
            report.check(
                format!("{name}.attached.{probe}"),
                u8::from(mode != NO_MODE),
                start.value(cat::PROBE_ATTACHED.name, &[("probe", probe), ("mode", mode)]).unwrap_or(-1.0),
            );
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
        classification(report, name, kernel, sc.remote_writes())?;
        host_contention(report, name)?;
        if first {
            load(report, name, kernel)?;
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
    let golden = crate::golden::series();
    let got = crate::golden::scrape_series(scrape);
    let unknown: Vec<&String> = got.iter().filter(|s| !crate::golden::known(&golden, s)).collect();
    report.check(format!("{name}.golden.unknown_series"), "[]", format!("{unknown:?}"));
    if matches!(kernel, Some(Kernel::Patched | Kernel::Unpatched)) {
        // Everything attaches on these kernels: what is missing is what the
        // scenario's modes cannot see (the remote write waits without them).
        let write = format!("mode=\"{}\"", cat::LOCK_WRITE);
        let remote = format!("context=\"{}\"", cat::CONTEXT_REMOTE);
        let host_failures = format!("{}{{context=\"{}\"}}", cat::MMAP_LOCK_ACQUIRE_FAILURES.name, cat::CONTEXT_HOST);
        let missing: Vec<&String> = golden
            .iter()
            .filter(|g| !g.starts_with(cat::PROBE_ATTACHED.name))
            .filter(|g| sc.remote_writes() || !(g.contains(&write) && g.contains(&remote)))
            .filter(|g| sc.host_failures() || **g != host_failures)
            .filter(|g| !got.iter().any(|s| crate::golden::same_shape(g, s)))
            .collect();
        report.check(format!("{name}.golden.missing_series"), "[]", format!("{missing:?}"));
    }
}

/// The classification workload: every class of access a known number of times.
fn classification(report: &mut Report, name: &str, kernel: Option<Kernel>, remote_writes: bool) -> Result<()> {
    let target = Target::spawn(4, 16)?;
    let mut counts = COUNTS;
    if target.layout.hugetlb.is_none() {
        println!("vmtest: {name}: no hugetlb page reserved; skipping the hugetlb class");
        counts.hugetlb = 0;
    }
    // The shared kernels give both; a kernel that does not fails the check below.
    report.check(format!("{name}.classes.thp_available"), true, target.layout.thp.is_some());
    report.check(format!("{name}.classes.argv_moved_into_a_file"), workload::CMDLINE.len(), target.layout.cmdline_len);
    if target.layout.thp.is_none() {
        counts.thp = 0;
    }
    if target.layout.cmdline_len == 0 {
        counts.cmdline = 0;
    }
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
    for (metric, labels, mut value) in classes::expected(k, &counts) {
        // Without a write-lock probe its series is absent, never zero.
        if metric == cat::MMAP_LOCK_WAIT.count() && labels.contains(&("mode", cat::LOCK_WRITE)) && !remote_writes {
            value = None;
        }
        let label_text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        report.check(
            format!("{name}.classes.{metric}{{{}}}", label_text.join(",")),
            value.map_or("absent".to_string(), |v| v.to_string()),
            delta(&before, &after, metric, &labels),
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
    // Whether a waiter sleeps (and so is traced) depends on scheduling: up to
    // three rounds until some contended wait is seen.
    let mut requests = 0u64;
    let mut after = before.clone();
    for _ in 0..3 {
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

/// At least 100 000 reads of resident pages from several threads: still exact.
fn load(report: &mut Report, name: &str, kernel: Option<Kernel>) -> Result<()> {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 25_000;
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
    report.check(format!("{name}.load.read_errors"), 0, errors);
    for probe in ACCESS_PROBES.map(Point::name) {
        report.check(format!("{name}.load.hits.{probe}"), n, delta(&before, &after, cat::PROBE_HITS.name, &[("probe", probe)]));
        report.check(format!("{name}.load.misses.{probe}"), 0, delta(&before, &after, cat::PROBE_MISSES.name, &[("probe", probe)]));
    }
    report.check(format!("{name}.load.untracked"), 0, delta(&before, &after, cat::UNTRACKED_CALLS.name, &[]));
    if let Some(k) = kernel {
        let path = if k == Kernel::Patched { Path::Fast } else { Path::Slow };
        for p in Path::ALL {
            let want = if p == path { n } else { 0 };
            report.check(format!("{name}.load.reads.{}", p.label()), want, delta(&before, &after, cat::READS.name, &[("path", p.label())]));
        }
    }
    Ok(())
}

/// The daemon's own BPF objects now loaded in the kernel: (STATS maps, programs
/// using them, links of those programs).
fn our_objects() -> (usize, usize, usize) {
    let maps: Vec<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some("STATS"))
        .map(|m| m.id())
        .collect();
    let programs: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.map_ids().ok().flatten().is_some_and(|ids| ids.iter().any(|id| maps.contains(id))))
        .map(|p| p.id())
        .collect();
    let links = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| programs.contains(&l.program_id()))
        .count();
    (maps.len(), programs.len(), links)
}

/// Waits (up to 5 s: the kernel frees objects after the last fd closes) until no
/// object of a daemon is left.
fn objects_after_exit() -> (usize, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = our_objects();
        if o == (0, 0, 0) || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn thread_cap_eff(pid: u32) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        if let Some(v) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
            out.push(v.trim().to_string());
        }
    }
    Ok(out)
}

/// Start (with sd_notify), drop privileges, count exactly, stop on SIGTERM with
/// nothing left; SIGKILL, restart: no duplicates, no double counts.
fn lifecycle(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    use std::os::unix::net::UnixDatagram;
    let name = "lifecycle";
    let sock_path = "/tmp/notify.sock";
    let _ = std::fs::remove_file(sock_path);
    let sock = UnixDatagram::bind(sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut daemon = Daemon::start_with("", &[], &[("NOTIFY_SOCKET", sock_path)])?;
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    while !messages.iter().any(|m: &String| m.contains("READY=1")) {
        let n = sock.recv(&mut buf)?;
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    for m in &messages {
        println!("vmtest: {name}: sd_notify {m:?}");
    }
    let ready = messages.iter().position(|m| m.contains("READY=1")).unwrap_or(0);
    report.check(format!("{name}.notify.status_before_ready"), true, messages[..ready].iter().any(|m| m.starts_with("STATUS=")));
    report.check(format!("{name}.notify.ready_says_what_attached"), true, messages[ready].contains("STATUS=serving"));
    let pid = daemon.child.id();
    let caps = thread_cap_eff(pid)?;
    report.check(format!("{name}.threads"), true, !caps.is_empty());
    report.check(format!("{name}.cap_eff_every_thread"), "0000000000000000", caps.iter().find(|c| *c != "0000000000000000").unwrap_or(&"0000000000000000".to_string()));
    report.check(format!("{name}.objects_while_running.stats_maps"), 1, our_objects().0);
    // Numbers stay exact without privileges.
    classification(report, name, kernel, false)?;

    // SIGTERM: exit 0 within 2 s, STOPPING=1, nothing left attached.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(s) = daemon.child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    report.check(format!("{name}.sigterm_exit_within_2s"), "Some(0)", format!("{:?}", status.map(|s| s.code().unwrap_or(-1))));
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    report.check(format!("{name}.notify.stopping"), true, stopping);
    report.check(format!("{name}.objects_after_sigterm"), "(0, 0, 0)", format!("{:?}", objects_after_exit()));
    drop(daemon);

    // SIGKILL: the kernel releases everything with the process.
    let mut daemon = Daemon::start("", &[])?;
    daemon.child.kill()?;
    daemon.child.wait()?;
    report.check(format!("{name}.objects_after_sigkill"), "(0, 0, 0)", format!("{:?}", objects_after_exit()));
    drop(daemon);

    // Restart: one instance's objects, counters from zero.
    let mut daemon = Daemon::start("", &[])?;
    let (maps, programs, links) = our_objects();
    report.check(format!("{name}.restart.stats_maps"), 1, maps);
    report.check(format!("{name}.restart.links_one_per_program"), programs, links);
    let target = Target::spawn(4, 1)?;
    for i in 0..10usize {
        target.pread(target.layout.resident + ((i % 4) * workload::PAGE) as u64, workload::PAGE)?;
    }
    drop(target);
    let s = Scrape::fetch(LISTEN)?;
    let reads: f64 = Path::ALL
        .iter()
        .map(|p| s.value(cat::READS.name, &[("path", p.label())]).unwrap_or(f64::NAN))
        .sum();
    report.check(format!("{name}.restart.reads_counted_once"), 10, reads);
    daemon.stop(report, name)?;
    Ok(())
}

/// `rvm.mode=serve`: bring up eth0 (QEMU user networking forwards the host's port
/// to the guest's 19361), run the daemon on all addresses and the classification
/// workload in a loop until the host stops the VM.
fn serve() -> Result<bool> {
    for args in [
        vec!["link", "set", "eth0", "up"],
        vec!["addr", "add", "10.0.2.15/24", "dev", "eth0"],
    ] {
        let status = Command::new("ip").args(&args).status()?;
        if !status.success() {
            bail!("ip {}: {status}", args.join(" "));
        }
    }
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", "8");
    let config = "listen = \"0.0.0.0:19361\"\n";
    std::fs::write("/tmp/remote-vm.toml", config)?;
    let mut daemon = Command::new(DAEMON)
        .args(["run", "--config", "/tmp/remote-vm.toml"])
        .stdout(Stdio::null())
        .spawn()
        .context("spawn daemon")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(prom::get(LISTEN, "/healthz"), Ok((200, _))) {
        if Instant::now() > deadline {
            bail!("daemon did not serve");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("vmtest: serving");
    // rvm.serve_delay: seconds before the workload starts (so a scraper sees the
    // counters at zero first); rvm.serve_seconds: how long it runs (0: for ever).
    let arg = |k: &str| cmdline_arg(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(arg("rvm.serve_delay")));
    let run_for = arg("rvm.serve_seconds");
    let started = Instant::now();
    let mut rounds = 0u64;
    loop {
        if run_for > 0 && started.elapsed() >= Duration::from_secs(run_for) {
            println!("vmtest: workload done after {rounds} rounds");
            loop {
                if let Some(status) = daemon.try_wait()? {
                    bail!("daemon exited: {status}");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let target = Target::spawn(4, 16)?;
        let mut counts = COUNTS;
        if target.layout.hugetlb.is_none() {
            counts.hugetlb = 0;
        }
        if target.layout.thp.is_none() {
            counts.thp = 0;
        }
        if target.layout.cmdline_len == 0 {
            counts.cmdline = 0;
        }
        classes::run(&target, &counts)?;
        drop(target);
        rounds += 1;
        if rounds.is_multiple_of(50) {
            println!("vmtest: served {rounds} workload rounds");
        }
        if let Some(status) = daemon.try_wait()? {
            bail!("daemon exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rvm.mode=ab rvm.ab=key=value,…`: the contention workload with the daemon
/// attached; prints `ab-result {json}` with the workload's ground truth and the
/// daemon's metrics before and after.
fn ab() -> Result<bool> {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: crate::stress::StressArgs,
    }
    let spec = cmdline_arg("rvm.ab").unwrap_or_default();
    let mut argv = vec!["ab".to_string()];
    for kv in spec.split(',').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some((k, "true")) => argv.push(format!("--{}", k.replace('_', "-"))),
            Some((k, v)) => argv.extend([format!("--{}", k.replace('_', "-")), v.to_string()]),
            None => argv.push(format!("--{}", kv.replace('_', "-"))),
        }
    }
    let args = Wrap::try_parse_from(&argv).map_err(|e| anyhow::anyhow!("rvm.ab={spec}: {e}"))?.args;
    println!("vmtest: ab workload {args:?}");
    let mut daemon = Daemon::start("", &[])?;
    let before = Scrape::fetch(LISTEN)?;
    let result = crate::stress::run(&args, true)?;
    let after = Scrape::fetch(LISTEN)?;
    let keep = |s: &Scrape| -> BTreeMap<String, f64> {
        s.samples.iter().filter(|(k, _)| k.starts_with(cat::PREFIX)).map(|(k, v)| (k.clone(), *v)).collect()
    };
    let out = serde_json::json!({
        "kernel": cmdline_arg("rvm.kernel").unwrap_or_default(),
        "release": std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        "workload": result,
        "before": keep(&before),
        "after": keep(&after),
    });
    println!("ab-result {}", serde_json::to_string(&out)?);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let _ = daemon.child.wait();
    Ok(true)
}

/// `rvm.mode=bench rvm.bench=reps=N,scale=X,scrape_seconds=S`: the overhead
/// benchmark inside the VM; prints `bench-result {json}`.
fn bench() -> Result<bool> {
    let spec = cmdline_arg("rvm.bench").unwrap_or_default();
    let mut args = crate::bench::BenchArgs {
        daemon: DAEMON.to_string(),
        reps: 5,
        scale: 1.0,
        scrape_seconds: 20,
    };
    for kv in spec.split(',').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("reps", v)) => args.reps = v.parse()?,
            Some(("scale", v)) => args.scale = v.parse()?,
            Some(("scrape_seconds", v)) => args.scrape_seconds = v.parse()?,
            _ => bail!("rvm.bench: unknown {kv}"),
        }
    }
    let r = crate::bench::run(&args)?;
    println!("bench-result {}", serde_json::to_string(&r)?);
    Ok(true)
}
