//! The harness: the report and its checks, the kernel command line, the daemon
//! under test and reading its metrics.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use remote_vm_common::{Point, catalog as cat};

use crate::prom::{self, Scrape};

pub const DAEMON: &str = "/usr/bin/remote-vm-daemon";
pub(super) const LISTEN: &str = "127.0.0.1:19361";
pub(super) const DAEMON_LOG: &str = "/tmp/daemon.log";

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
    pub(super) fn check(&mut self, name: impl Into<String>, expected: impl ToString, got: impl ToString) -> bool {
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

    pub(super) fn error(&mut self, name: &str, e: anyhow::Error) {
        self.check(name, "no error", format!("error: {e:#}"));
    }
}

/// `rvm.KEY=VALUE` from the kernel command line.
pub(super) fn cmdline_arg(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(str::to_string)
}

pub(super) struct Daemon {
    pub(super) child: Child,
}

impl Daemon {
    pub(super) fn start(config: &str, extra: &[&str]) -> Result<Daemon> {
        Daemon::start_with(config, extra, &[])
    }

    pub(super) fn start_with(config: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
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

    pub(super) fn stop(&mut self, report: &mut Report, name: &str) -> Result<()> {
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
pub(super) const ACCESS_PROBES: [Point; 2] = [Point::AccessRemoteVmEntry, Point::AccessRemoteVmExit];

pub(super) fn hits(s: &Scrape, probe: &str) -> f64 {
    s.value(cat::PROBE_HITS.name, &[("probe", probe)]).unwrap_or(f64::NAN)
}

pub(super) fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> String {
    match (before.value(name, labels), after.value(name, labels)) {
        (Some(b), Some(a)) => format!("{}", a - b),
        _ => "absent".to_string(),
    }
}
