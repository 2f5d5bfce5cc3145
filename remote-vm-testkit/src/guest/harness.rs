//! The harness: the report and its checks, the kernel command line, the daemon
//! under test and reading its metrics.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use remote_vm_common::{Point, catalog as cat, classify::HolderKind, holder::HolderOp};

use crate::prom::{self, Scrape};

pub const DAEMON: &str = "/usr/bin/remote-vm-daemon";
pub(super) const LISTEN: &str = "127.0.0.1:19361";
/// The daemon's Unix socket (its default `web.socket`), where `/stalls` is
/// served without authentication: the guests' tests read it there.
pub(super) const SOCKET: &str = concat!("unix:", "/run/remote-vm/remote-vm.sock");
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
    /// Started under a wrapper that forks it (`unshare -f`): signals go to the
    /// wrapper's child, the daemon.
    wrapped: bool,
}

impl Daemon {
    pub(super) fn start(config: &str, extra: &[&str]) -> Result<Daemon> {
        Daemon::start_with(config, extra, &[])
    }

    pub(super) fn start_with(config: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        Daemon::start_in(&[], config, extra, env)
    }

    /// The daemon run by `wrapper` (e.g. `unshare -p -f --mount-proc`), which
    /// must fork it and wait for it.
    pub(super) fn start_in(wrapper: &[&str], config: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        std::fs::write("/tmp/remote-vm.toml", config)?;
        let log = std::fs::File::create(DAEMON_LOG)?;
        let mut cmd = match wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(DAEMON);
                c
            }
            None => Command::new(DAEMON),
        };
        let child = cmd
            .args(["run", "--listen", LISTEN, "--config", "/tmp/remote-vm.toml"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn daemon")?;
        let mut d = Daemon { child, wrapped: !wrapper.is_empty() };
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

    /// The daemon's process id (in our namespace).
    pub(super) fn pid(&self) -> Result<i32> {
        let pid = self.child.id();
        if !self.wrapped {
            return Ok(pid as i32);
        }
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
        children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("the wrapper (pid {pid}) has no child"))
    }

    pub(super) fn stop(&mut self, report: &mut Report, name: &str) -> Result<()> {
        let pid = self.pid()?;
        // SAFETY: signalling our own child (or the wrapper's, the daemon).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait()?;
        report.check(format!("{name}.sigterm_exit_code"), 0, status.code().unwrap_or(-1));
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.wrapped
            && let Ok(pid) = self.pid()
        {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The entry and exit of every remote access.
pub(super) const ACCESS_PROBES: [Point; 2] = [Point::AccessRemoteVmEntry, Point::AccessRemoteVmExit];

pub(super) fn hits(s: &Scrape, probe: &str) -> f64 {
    s.value(cat::PROBE_HITS.name, &[("probe", probe)]).unwrap_or(f64::NAN)
}

/// How much later a program's clock (`bpf_ktime_get_ns`, the kernel's fast
/// monotonic accessor) may read than user space's (`clock_gettime` in the
/// vDSO) at the same moment: they round the same clock differently. A wait
/// that spans a whole read came out longer than the read, by less than a µs
/// (unpatched 6.12 guest, 2026-12-06).
pub(super) const CLOCKS_APART_NS: u64 = 10_000;

/// The increase of one series as a number (NaN where it is absent).
pub(super) fn delta_value(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    delta(before, after, name, labels).parse().unwrap_or(f64::NAN)
}

/// The increase of every series of `name` together.
pub(super) fn delta_all(before: &Scrape, after: &Scrape, name: &str) -> f64 {
    let sum = |s: &Scrape| s.series(name).map(|(_, v)| v).sum::<f64>();
    sum(after) - sum(before)
}

/// The increase of the series of `name` with at least `labels`, together
/// (`sum(name{labels})`), e.g. stalls of one lock mode over every `op`.
pub(super) fn delta_sum(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> String {
    increase(before.sum(name, labels), after.sum(name, labels))
}

pub(super) fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> String {
    increase(before.value(name, labels), after.value(name, labels))
}

/// Runs of the wait-end and exit programs the kernel skipped between two
/// scrapes (it counts them): each may have lost a stall, never made one up.
pub(super) fn wait_end_skips(before: &Scrape, after: &Scrape) -> f64 {
    [Point::MmapLockRemoteEnd, Point::AccessRemoteVmExit]
        .iter()
        .map(|p| delta_value(before, after, cat::PROBE_MISSES.name, &[("probe", p.name())]))
        .sum()
}

/// What a stall count is checked against: `expected` exactly where the kernel
/// skipped nothing, else the range `expected - lost ..= expected`.
pub(super) fn counted_or_lost(expected: usize, lost: f64) -> String {
    if lost == 0.0 { expected.to_string() } else { format!("{}..={expected}", expected.saturating_sub(lost as usize)) }
}

/// A count (`counted`, as a check shows it) as [`counted_or_lost`] writes its
/// expectation when it lies within it, else itself.
pub(super) fn within_lost(counted: &str, expected: usize, lost: f64) -> String {
    match counted.parse::<f64>() {
        Ok(c) if lost > 0.0 && c <= expected as f64 && c + lost >= expected as f64 => counted_or_lost(expected, lost),
        _ => counted.to_string(),
    }
}

/// `after - before` as a check shows it, `absent` where either is.
fn increase(before: Option<f64>, after: Option<f64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("{}", a - b),
        _ => "absent".to_string(),
    }
}

/// The kernel's current preemption model as debugfs shows it (init mounts it):
/// the one in parentheses in `sched/preempt`, on dynamic kernels only.
pub(super) fn preempt_model() -> Option<String> {
    let d = std::fs::read_to_string("/sys/kernel/debug/sched/preempt").ok()?;
    d.split_whitespace().find_map(|w| Some(w.strip_prefix('(')?.strip_suffix(')')?.to_string()))
}

/// Whether the kernel may skip program runs: preemptible (dynamic model `full`
/// or `lazy`, or `PREEMPT_RT`), a thread preempted inside a trampoline program
/// holds that program's per-CPU recursion guard until it runs again, and the
/// kernel skips (and counts as missed) every run of it on that CPU meanwhile.
pub(super) fn skips_possible() -> bool {
    matches!(preempt_model().as_deref(), Some("full" | "lazy")) || preempt_rt()
}

/// A PREEMPT_RT build (the kernel's build string says so).
pub(super) fn preempt_rt() -> bool {
    crate::allows::preempt_rt()
}

/// What a stall or a wait in progress names as the lock's holder.
pub(super) struct Holder {
    pub kind: &'static str,
    pub exact: bool,
    pub tid: u64,
    pub pid: u64,
    pub comm: &'static str,
    pub writer_waiting: bool,
    /// What the stall is counted under (`HolderOp`'s label).
    pub op: &'static str,
    /// A writer's system call and the range it passed, as the workload made
    /// them (`None`: no writer to observe).
    pub doing: Option<(&'static str, Option<(u64, u64)>)>,
}

impl Holder {
    /// A writer holder's system call (`HolderOp::of_syscall` names its op)
    /// and range, except where nobody can be named (PREEMPT_RT).
    pub(super) fn in_syscall(mut self, syscall: &'static str, range: Option<(u64, u64)>) -> Holder {
        if self.kind == HolderKind::Writer.label() {
            self.op = HolderOp::of_syscall(syscall).label();
            self.doing = Some((syscall, range));
        }
        self
    }

    /// Checks who `h` (a `holder` of `/stalls`, a wait's or a stall's)
    /// names against the holder the workload made: its kind, whether
    /// exactly, its thread and comm, and its process where one is expected
    /// (`pid` 0: none).
    pub(super) fn check_identity(&self, report: &mut Report, prefix: &str, h: &serde_json::Value) {
        report.check(format!("{prefix}.kind"), self.kind, h["kind"].as_str().unwrap_or(""));
        report.check(format!("{prefix}.exact"), self.exact, h["exact"] == true);
        report.check(format!("{prefix}.tid"), self.tid, h["tid"].as_u64().unwrap_or(0));
        if self.pid != 0 {
            report.check(format!("{prefix}.pid"), self.pid, h["pid"].as_u64().unwrap_or(0));
        }
        report.check(format!("{prefix}.comm"), self.comm, h["comm"].as_str().unwrap_or(""));
    }

    /// Checks `h` (a `holder` of `/stalls`) against what the workload did:
    /// the op, and a writer's system call and range.
    pub(super) fn check_doing(&self, report: &mut Report, prefix: &str, h: &serde_json::Value) {
        report.check(format!("{prefix}.op"), self.op, h["op"].as_str().unwrap_or(""));
        let d = &h["doing"];
        let (what, syscall, range) = match self.doing {
            Some((name, range)) => ("syscall", name.to_string(), range_text(range)),
            None => ("null", "null".to_string(), "null".to_string()),
        };
        report.check(format!("{prefix}.doing.what"), what, d["what"].as_str().unwrap_or("null"));
        report.check(format!("{prefix}.doing.syscall"), syscall, d["syscall"].as_str().unwrap_or("null"));
        report.check(format!("{prefix}.doing.range"), range, range_of(d));
    }
}

/// What the daemon can show of a writer holder's kernel stack on this
/// kernel, from its build config (`/boot/rvm/config`, put there by the VM
/// harness): the daemon runs as root here, so `/proc/kallsyms` names frames.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum StackTruth {
    /// ORC: frames, when the holder was off CPU.
    Frames,
    /// Another unwinder (its label in the daemon's words).
    Unreliable(&'static str),
    /// No config here (a kernel given by path): not checked.
    Unknown,
}

pub(super) fn stack_truth() -> StackTruth {
    let Ok(config) = std::fs::read_to_string("/boot/rvm/config") else {
        return StackTruth::Unknown;
    };
    let set = |key: &str| config.lines().any(|l| l.strip_prefix(key) == Some("=y"));
    if set("CONFIG_UNWINDER_ORC") {
        StackTruth::Frames
    } else if set("CONFIG_UNWINDER_FRAME_POINTER") {
        StackTruth::Unreliable("frame pointer")
    } else if set("CONFIG_UNWINDER_GUESS") {
        StackTruth::Unreliable("guess")
    } else {
        StackTruth::Unknown
    }
}

/// Pins every thread of process `pid` (or the one thread `pid`, with
/// `threads` false) to CPU 0: a holder pinned with the daemon is off CPU
/// whenever the daemon looks at it.
pub(super) fn pin_to_cpu0(pid: u32, threads: bool) -> Result<()> {
    let tids: Vec<i32> = if threads {
        std::fs::read_dir(format!("/proc/{pid}/task"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    } else {
        vec![pid as i32]
    };
    for tid in tids {
        // SAFETY: a zeroed cpu_set_t with CPU 0 set, its size given.
        let r = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if r != 0 {
            bail!("sched_setaffinity({tid}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Holder {
    /// Checks a writer holder's `stack` against `stack_truth()`: on ORC,
    /// frames down to the system call the workload made, every frame a name
    /// (`?` for a module's), never an address; otherwise the reason, and no
    /// frames.
    pub(super) fn check_stack(&self, report: &mut Report, prefix: &str, h: &serde_json::Value) {
        let Some((syscall, _)) = self.doing else { return };
        let st = &h["stack"];
        let frames: Vec<&str> = st["frames"].as_array().map(|a| a.iter().filter_map(|f| f.as_str()).collect()).unwrap_or_default();
        let unavailable = st["unavailable"].as_str().unwrap_or("null");
        let function = |f: &str| f.split_once("+0x").map(|(n, _)| n.to_string());
        match stack_truth() {
            StackTruth::Frames => {
                println!("vmtest: {prefix}.stack: {}", frames.join(" "));
                report.check(format!("{prefix}.stack.unavailable"), "null", unavailable);
                report.check(format!("{prefix}.stack.has_{syscall}"), true, frames.iter().filter_map(|f| function(f)).any(|n| n.contains(syscall)));
                let named = |f: &&str| {
                    *f == "?"
                        || f.split_once("+0x").is_some_and(|(n, off)| {
                            !n.is_empty() && !n.starts_with("0x") && off.chars().all(|c| c.is_ascii_hexdigit())
                        })
                };
                report.check(format!("{prefix}.stack.every_frame_named"), true, frames.iter().all(named));
            }
            StackTruth::Unreliable(u) => {
                report.check(format!("{prefix}.stack.unavailable"), format!("unwinder unreliable ({u})"), unavailable);
                report.check(format!("{prefix}.stack.frames"), 0, frames.len());
            }
            // A kernel the harness knows (shared or Debian) comes with its
            // config: without it here, the stack was not checked at all.
            StackTruth::Unknown if cmdline_arg("rvm.config").as_deref() == Some("yes") => {
                report.check(format!("{prefix}.stack.unwinder_known_from_the_config"), true, false);
            }
            StackTruth::Unknown => println!("vmtest: {prefix}.stack: not checked (a kernel given by path: no config in the guest)"),
        }
    }
}

/// A `doing`'s range in `/stalls` as `0xADDRESS LENGTH` (`null`: none), the
/// form [`range_text`] gives the workload's.
pub(super) fn range_of(doing: &serde_json::Value) -> String {
    match &doing["range"] {
        serde_json::Value::Null => "null".to_string(),
        r => format!("{} {}", r["address"].as_str().unwrap_or("?"), r["length"]),
    }
}

/// A range the workload passed (address, length) as [`range_of`] reads one.
pub(super) fn range_text(range: Option<(u64, u64)>) -> String {
    range.map_or("null".to_string(), |(a, l)| format!("{a:#x} {l}"))
}

/// The holder the workload made (`kind`, thread `tid` of `pid` named `comm`)
/// as the daemon must name it: exactly, except on PREEMPT_RT, whose
/// rw_semaphore is an rtmutex-based rwbase without the count and owner words
/// the daemon decodes (its `check` says "stall event identities: unknown …"):
/// there `unknown`, nobody named, never a wrong one.
pub(super) fn expected_holder(kind: HolderKind, exact: bool, tid: u64, pid: u64, comm: &'static str, writer_waiting: bool) -> Holder {
    if preempt_rt() {
        let op = HolderOp::Unknown.label();
        return Holder { kind: HolderKind::Unknown.label(), exact: false, tid: 0, pid: 0, comm: "", writer_waiting: false, op, doing: None };
    }
    // A writer's op is its system call's (`in_syscall`); readers are readers.
    let op = if kind == HolderKind::Readers { HolderOp::Readers } else { HolderOp::Unknown }.label();
    Holder { kind: kind.label(), exact, tid, pid, comm, writer_waiting, op, doing: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_counts_within_the_skips() {
        // Nothing skipped: exact.
        assert_eq!(counted_or_lost(3, 0.0), "3");
        assert_eq!(within_lost("3", 3, 0.0), "3");
        assert_eq!(within_lost("2", 3, 0.0), "2");
        // Two skipped: 1, 2 or 3 of 3 pass; 0 and 4 do not.
        assert_eq!(counted_or_lost(3, 2.0), "1..=3");
        for c in ["1", "2", "3"] {
            assert_eq!(within_lost(c, 3, 2.0), counted_or_lost(3, 2.0));
        }
        assert_eq!(within_lost("0", 3, 2.0), "0");
        assert_eq!(within_lost("4", 3, 2.0), "4");
        assert_eq!(within_lost("absent", 3, 2.0), "absent");
        // More skipped than expected: down to 0.
        assert_eq!(counted_or_lost(1, 5.0), "0..=1");
    }
}
