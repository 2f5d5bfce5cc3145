//! The test runner inside a VM (started by /init): drives the daemon and the
//! workloads and checks exact numbers. Each check prints one line
//! (`vmtest <name> ok|FAIL …`); a JSON report closes the run for the host harness.
use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{
    prom::{self, Scrape},
    workload::{self, Target},
};

pub const DAEMON: &str = "/usr/bin/remote-vm-daemon";
const LISTEN: &str = "127.0.0.1:19361";
const DAEMON_LOG: &str = "/tmp/daemon.log";

/// Every probe and the mode it must attach in on the test kernels (their first).
const FIRST_MODES: &[(&str, &str)] = &[
    ("access_remote_vm_entry", "fentry"),
    ("access_remote_vm_exit", "fentry"),
    ("lock_vma_under_rcu_exit", "fexit"),
    ("folio_walk_start_exit", "fexit"),
    ("get_user_pages_remote_entry", "fentry"),
    ("mmap_lock_remote_start", "fentry"),
    ("mmap_lock_remote_end", "fentry"),
    ("mmap_lock_host_start", "contention_tp"),
    ("mmap_lock_host_end", "contention_tp"),
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

/// `rvm.kernel=NAME` from the kernel command line.
fn cmdline_arg(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(str::to_string)
}

pub fn main() -> Result<bool> {
    let mut report = Report {
        kernel: cmdline_arg("rvm.kernel").unwrap_or_else(|| "unnamed".into()),
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string(),
        checks: Vec::new(),
    };
    println!("vmtest: kernel {} ({})", report.kernel, report.release);

    if let Err(e) = check_command(&mut report) {
        report.error("check.run", e);
    }
    match Daemon::start(&["--log-level", "debug"]) {
        Ok(mut daemon) => {
            if let Err(e) = daemon_checks(&mut report) {
                report.error("daemon", e);
            }
            if let Err(e) = daemon.stop(&mut report) {
                report.error("daemon.stop", e);
            }
        }
        Err(e) => report.error("daemon.start", e),
    }

    let ok = report.checks.iter().all(|c| c.ok);
    println!("vmtest-report {}", serde_json::to_string(&report)?);
    Ok(ok)
}

/// `remote-vm-daemon check`: exit 0 and every probe in its first mode.
fn check_command(report: &mut Report) -> Result<()> {
    let out = Command::new(DAEMON).arg("check").output().context("run check")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        println!("vmtest: check| {line}");
    }
    report.check("check.exit_code", 0, out.status.code().unwrap_or(-1));
    let modes: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("probe "))
        .filter_map(|l| l.split_once(": "))
        .map(|(probe, rest)| (probe, rest.split_whitespace().next().unwrap_or("")))
        .collect();
    for (probe, mode) in FIRST_MODES {
        report.check(format!("check.mode.{probe}"), mode, modes.get(probe).copied().unwrap_or("missing"));
    }
    report.check("check.probe_count", FIRST_MODES.len(), modes.len());
    Ok(())
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(extra: &[&str]) -> Result<Daemon> {
        let log = std::fs::File::create(DAEMON_LOG)?;
        let child = Command::new(DAEMON)
            .args(["run", "--listen", LISTEN])
            .args(extra)
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

    fn stop(&mut self, report: &mut Report) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        report.check("daemon.sigterm_exit_code", 0, status.code().unwrap_or(-1));
        Ok(())
    }
}

fn hits(s: &Scrape, probe: &str) -> f64 {
    s.value("remote_vm_probe_hits_total", &[("probe", probe)]).unwrap_or(f64::NAN)
}

fn daemon_checks(report: &mut Report) -> Result<()> {
    let first = Scrape::fetch(LISTEN)?;
    for (probe, mode) in FIRST_MODES {
        report.check(
            format!("metrics.attached.{probe}"),
            1,
            first.value("remote_vm_probe_attached", &[("probe", probe), ("mode", mode)]).unwrap_or(-1.0),
        );
    }
    // Scraping must not itself read remote memory.
    let again = Scrape::fetch(LISTEN)?;
    for probe in ["access_remote_vm_entry", "access_remote_vm_exit"] {
        report.check(format!("scrape.no_remote_reads.{probe}"), 0, hits(&again, probe) - hits(&first, probe));
    }

    // N single-page preads of /proc/PID/mem = N calls.
    const N: usize = 64;
    let target = Target::spawn(4)?;
    let before = Scrape::fetch(LISTEN)?;
    let mut good = 0;
    for i in 0..N {
        let page = i % target.layout.resident_pages;
        let data = target.pread(target.layout.resident + (page * workload::PAGE) as u64, workload::PAGE)?;
        if data.len() == workload::PAGE && data.iter().all(|b| *b == workload::pattern(page)) {
            good += 1;
        }
    }
    let after = Scrape::fetch(LISTEN)?;
    for (k, v) in &after.samples {
        if k.starts_with("remote_vm_") && !k.contains("_bucket") {
            println!("vmtest: metrics| {k} {v}");
        }
    }
    report.check("workload.preads_correct", N, good);
    for probe in ["access_remote_vm_entry", "access_remote_vm_exit"] {
        report.check(format!("hits.{probe}"), N, hits(&after, probe) - hits(&before, probe));
    }
    drop(target);

    // aya-log: the eBPF side's debug messages reach the daemon's log.
    let log = std::fs::read_to_string(DAEMON_LOG)?;
    let ebpf_lines = log.lines().filter(|l| l.contains("__access_remote_vm entry: tid")).count();
    report.check("log.ebpf_messages_at_least_n", true, ebpf_lines >= N);
    Ok(())
}
