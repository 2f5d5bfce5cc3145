//! Real readers: Debian's `ps aux`, `ps axe`, `top -b -n1 -c`, `pgrep -f`,
//! `pidstat -l` and `prometheus-process-exporter` (scraped with curl), each
//! under `strace`, started together while a target thread holds its
//! mmap_lock for more than 2 s, in turn: for write in an `mprotect()` that
//! merges many VMAs, in `munlock()` of a populated mlocked region and in
//! `mlock2(MLOCK_ONFAULT)` of a populated one; reader-owned by
//! `MADV_POPULATE_READ` and by `munmap()` of a populated region (zapped under
//! the downgraded lock), each with an `mprotect()` queued behind. The region
//! holds last tens of ms alone under TCG: the holder is made to share its CPU
//! with a spinning thread at a high nice value ([`Stretch`]), preempted with
//! the lock held, as on a busy machine.
//!
//! What each program read is what strace saw: every `read()` of the target's
//! `cmdline` or `environ` (also under `task/TID/`) that returned bytes made
//! remote accesses, and its first one waited if the lock was taken. Whether a
//! read stalled comes from how long it took by strace's clock and when it
//! began against the hold (the holder's clock), never from "one per program":
//! on a kernel without the lockless path, a read of twice the threshold or
//! more that began inside the hold stalled once, a read under the threshold
//! did not, and anything between decides nothing (the hold is run again). On
//! a patched kernel the argv and environment pages are resident: no read
//! waits, no stall. Each stall must name the reading thread (strace's tid),
//! its program's comm and the interface it read, and the holder as the
//! workload made it.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use remote_vm_common::{Interface, catalog as cat, classify::HolderKind};
use serde_json::Value;

use super::{
    harness::{Daemon, LISTEN, Report, counted_or_lost, delta_sum, expected_holder, pin_to_cpu0, skips_possible, wait_end_skips, within_lost},
    stalls::{REGION_MB, foll_anon_known, stall_log_of, stalls_page},
    waits::check_reader_owned,
};
use crate::{
    classes::Kernel,
    prom::Scrape,
    stall::{HOLDER_COMM, Kind, StallTarget},
};

/// The programs, started together (name in the checks, comm, command line);
/// the exporter is scraped by curl instead (see [`EXPORTER`]).
const PROGRAMS: [(&str, &str, &[&str]); 5] = [
    ("ps_aux", "ps", &["/usr/bin/ps", "aux"]),
    ("ps_axe", "ps", &["/usr/bin/ps", "axe"]),
    ("top", "top", &["/usr/bin/top", "-b", "-n1", "-c"]),
    ("pgrep", "pgrep", &["/usr/bin/pgrep", "-f", "stall-target"]),
    ("pidstat", "pidstat", &["/usr/bin/pidstat", "-l"]),
];

/// `prometheus-process-exporter` (comm truncated to 15 bytes by the kernel),
/// watching the test's processes by name, as its Debian unit runs it with
/// `ARGS="-procnames rvm-testkit"`.
const EXPORTER: (&str, &str) = ("process_exporter", "prometheus-proc");
const EXPORTER_LISTEN: &str = "127.0.0.1:9256";

/// The stall threshold the suite's daemon runs with (under the unit: the
/// service's own, as `/stalls` says it).
const THRESHOLD_NS: u64 = 100_000_000;
/// Each hold: long enough that every program reaches the target inside it.
const HOLD_MS: u64 = 3000;
/// Rounds of one hold at most: a round with a read that decides nothing (or
/// a program that did not read the target during the hold) runs again with a
/// target of its own.
const ATTEMPTS: u32 = 3;
/// strace's and the holder's clocks are read by different threads: this
/// much either way is "at the same time".
const CLOCKS_APART_S: f64 = 0.05;

const TRACES: &str = "/tmp/rvm-readers";

pub(super) fn readers(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    let Some(kernel) = kernel else { return Ok(()) };
    if !Path::new("/usr/bin/strace").exists() {
        // A run that asked for the suite got the programs: missing is a failure.
        report.check("readers.programs_present", true, false);
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(TRACES);
    std::fs::create_dir_all(TRACES)?;
    let mut daemon = Daemon::start(&format!("[stalls]\nthreshold_seconds = {}\n", THRESHOLD_NS as f64 / 1e9), &[])?;
    pin_to_cpu0(daemon.child.id(), true)?;
    let result = (|| -> Result<()> {
        let exporter = Traced::spawn(
            EXPORTER.0,
            &["/usr/bin/prometheus-process-exporter", "-procnames", "rvm-testkit", "-web.listen-address", EXPORTER_LISTEN],
        )?;
        let listening = wait_listening(EXPORTER_LISTEN, Duration::from_secs(60));
        report.check("readers.exporter_listening", true, listening);
        if !listening {
            return Ok(());
        }
        let readers = Readers { programs: &PROGRAMS, exporter: Some(&exporter) };
        // `rvm.readers=mprotect,populate`: those holds only.
        let only = super::harness::cmdline_arg("rvm.readers");
        let holds: Vec<Hold> = Hold::ALL.into_iter().filter(|h| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == h.label()))).collect();
        if let Some(o) = &only {
            // Every name a hold's: a misspelt one must not test nothing.
            let unknown: Vec<&str> = o.split(',').filter(|n| !Hold::ALL.iter().any(|h| *n == h.label())).collect();
            report.check("readers.holds_named", "", unknown.join(","));
        }
        for hold in holds {
            for attempt in 1..=ATTEMPTS {
                if round(report, kernel, hold, &readers, THRESHOLD_NS, attempt < ATTEMPTS)? {
                    break;
                }
            }
        }
        Ok(())
    })();
    daemon.stop(report, "readers")?;
    result
}

/// Under the package's unit (`cargo xtask deb-test`, systemd as PID 1 on
/// Debian's kernel): `ps aux` of the tree's own procps under its strace
/// during a merging `mprotect()` hold, checked as in the VM suite against
/// the running service — its port, its socket, its default threshold — so
/// the holder's stack is named from the symbols the unit's `ExecStartPre`
/// copied. `expect`: the booted kernel's truth (patched, unpatched, legacy).
pub fn unit_readers(expect: &str, daemon_pid: u32) -> Result<bool> {
    let kernel = Kernel::from_expect(expect).with_context(|| format!("--expect {expect}: patched-v1, patched-v2, unpatched or legacy"))?;
    let check = Command::new(super::DAEMON).args(["check", "--format", "json"]).output().context("run the daemon's check")?;
    let mut report = Report {
        kernel: "unit".into(),
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string(),
        expect: expect.into(),
        check: serde_json::from_slice(&check.stdout).unwrap_or(Value::Null),
        checks: Vec::new(),
    };
    // The stack's truth comes from the kernel's config the test put there.
    report.check("unit.stack_truth_known", true, super::harness::stack_truth() != super::harness::StackTruth::Unknown);
    pin_to_cpu0(daemon_pid, true)?;
    let _ = std::fs::remove_dir_all(TRACES);
    std::fs::create_dir_all(TRACES)?;
    let readers = Readers { programs: &PROGRAMS[..1], exporter: None };
    let threshold_s = stalls_page()?["threshold_seconds"].as_f64().context("/stalls has no threshold_seconds")?;
    let threshold_ns = (threshold_s * 1e9).round() as u64;
    for attempt in 1..=ATTEMPTS {
        if round(&mut report, kernel, Hold::Mprotect, &readers, threshold_ns, attempt < ATTEMPTS)? {
            break;
        }
    }
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    println!("unit-readers: {} checks, {failed} failed", report.checks.len());
    Ok(failed == 0)
}

#[derive(Clone, Copy, Debug)]
enum Hold {
    /// A write hold: one `mprotect()` merging many VMAs (calibrated by the target).
    Mprotect,
    /// Reader-owned: `MADV_POPULATE_READ` (calibrated), an `mprotect()` queued behind.
    Populate,
    /// A write hold: `munlock()` of a populated, mlocked region (stretched).
    Munlock,
    /// A write hold: `mlock2(MLOCK_ONFAULT)` of a populated region (stretched).
    Mlock,
    /// Reader-owned: `munmap()` of a populated region, which zaps it under the
    /// read lock (downgraded), an `mprotect()` queued behind (stretched).
    Munmap,
}

impl Hold {
    const ALL: [Hold; 5] = [Hold::Mprotect, Hold::Populate, Hold::Munlock, Hold::Mlock, Hold::Munmap];

    /// Its name in `rvm.readers=` and, after `readers.`, in the checks.
    fn label(self) -> &'static str {
        match self {
            Hold::Mprotect => "mprotect",
            Hold::Populate => "populate",
            Hold::Munlock => "munlock",
            Hold::Mlock => "mlock",
            Hold::Munmap => "munmap",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Hold::Mprotect => Kind::Merge { hold_ms: HOLD_MS },
            Hold::Populate => Kind::Readers { hold_ms: HOLD_MS },
            Hold::Munlock => Kind::Munlock { region_mb: REGION_MB },
            Hold::Mlock => Kind::Mlock { region_mb: REGION_MB },
            Hold::Munmap => Kind::Unmap { region_mb: REGION_MB },
        }
    }

    /// A write hold's system call (`None`: reader-owned, a writer queued).
    fn syscall(self) -> Option<&'static str> {
        match self {
            Hold::Mprotect => Some("mprotect"),
            Hold::Munlock => Some("munlock"),
            Hold::Mlock => Some("mlock2"),
            Hold::Populate | Hold::Munmap => None,
        }
    }

    /// Sized by a region, not calibrated: tens of ms under TCG, stretched to
    /// seconds by [`Stretch`].
    fn stretched(self) -> bool {
        matches!(self, Hold::Munlock | Hold::Mlock | Hold::Munmap)
    }
}

/// What a stretched hold is made to last (about; ≥ 2 s is checked).
const STRETCHED_NS: u64 = 5_000_000_000;
/// When a stretched reader-owned hold's writer starts: the slowed holder
/// needs tens of ms of CPU, a few of its turns, to enter `munmap()` and
/// downgrade (with the kind's 20 ms the writer took the lock first).
const STRETCHED_WRITER_DELAY: Duration = Duration::from_millis(500);

/// CFS/EEVDF weights of nice 0 to 19 (the kernel's `sched_prio_to_weight`).
const NICE_WEIGHTS: [u64; 20] = [1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15];

/// The nice value that makes a hold of `hold_ns` alone last `want_ns` or
/// more beside one spinning nice-0 thread on its CPU (the holder gets
/// `w / (1024 + w)` of it), at most 19.
fn nice_for(hold_ns: u64, want_ns: u64) -> i32 {
    (0..NICE_WEIGHTS.len()).find(|&n| hold_ns * (1024 + NICE_WEIGHTS[n]) / NICE_WEIGHTS[n] >= want_ns).unwrap_or(19) as i32
}

/// A hold made longer the way a busy machine makes it: the holder thread at a
/// high nice value shares CPU 0 with a thread that spins there, so it is
/// preempted (at its `cond_resched()` points, or anywhere on preemptible
/// kernels) and waits its turn with the lock held. Ends when dropped.
struct Stretch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    spinner: Option<std::thread::JoinHandle<()>>,
}

impl Stretch {
    fn start(holder_tid: i32, nice: i32) -> Result<Stretch> {
        // SAFETY: no pointers; a thread id of a live process.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, holder_tid as libc::id_t, nice) } != 0 {
            bail!("setpriority({holder_tid}, {nice}): {}", std::io::Error::last_os_error());
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spinner = std::thread::spawn(move || {
            // SAFETY: no preconditions.
            let _ = tx.send(pin_to_cpu0(unsafe { libc::gettid() } as u32, false));
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let s = Stretch { stop, spinner: Some(spinner) };
        rx.recv().context("the spinner ended")??;
        Ok(s)
    }
}

impl Drop for Stretch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.spinner.take() {
            let _ = h.join();
        }
    }
}

/// A program under `strace -f`, its trace in `TRACES/NAME.trace`.
struct Traced {
    child: Child,
    trace: String,
}

impl Traced {
    fn spawn(name: &str, argv: &[&str]) -> Result<Traced> {
        let trace = format!("{TRACES}/{name}.trace");
        let child = Command::new("/usr/bin/strace")
            // Every thread; wall-clock entry times; durations; paths of fds;
            // no string contents; reads only.
            .args(["-f", "-ttt", "-T", "-y", "-s", "0", "-qq", "-e", "signal=none", "-e", "trace=read,pread64", "-o", &trace])
            .args(argv)
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(format!("{trace}.out"))?)
            .stderr(std::fs::File::create(format!("{trace}.err"))?)
            .spawn()
            .with_context(|| format!("spawn strace {}", argv.join(" ")))?;
        Ok(Traced { child, trace })
    }

    /// Waits for the program to end (killed after `timeout`).
    fn finish(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not end within {timeout:?}", self.trace);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// One `read()` of the target's `cmdline` or `environ` that returned bytes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TargetRead {
    pub tid: u64,
    /// When it was entered, wall clock (s).
    pub at: f64,
    /// How long it took (s).
    pub took: f64,
    pub file: &'static str,
}

/// One `read()` or `pread64()` in an strace log.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Read {
    pub tid: u64,
    /// When it was entered, wall clock (s).
    pub at: f64,
    /// How long it took (s).
    pub took: f64,
    /// The path of its fd (`-y`), or empty.
    pub path: String,
    /// What it returned (`-1`: an error).
    pub bytes: i64,
}

/// The reads in an strace log written with `-f -ttt -T -y` (a read another
/// thread interrupted is split into `<unfinished ...>` and `<... read
/// resumed>` lines; the entry time is the first's).
pub(crate) fn reads(trace: &str) -> Vec<Read> {
    // The fd's path in `read(3</proc/1/cmdline>, …`.
    let path_of = |call: &str| -> String {
        let path = call.split_once('(').and_then(|(_, args)| args.split_once('<')).and_then(|(_, p)| p.split_once('>'));
        path.map_or(String::new(), |(p, _)| p.to_string())
    };
    // `= 215 <0.000016>` at the end: bytes and seconds.
    let result_of = |line: &str| -> Option<(i64, f64)> {
        let (_, result) = line.rsplit_once(" = ")?;
        let mut words = result.split_whitespace();
        let bytes = words.next()?.parse().ok()?;
        let took = words.last()?.strip_prefix('<')?.strip_suffix('>')?.parse().ok()?;
        Some((bytes, took))
    };
    let mut pending: BTreeMap<u64, (f64, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        // `TID` (padded with spaces) `SECONDS CALL…`.
        let Some((tid, rest)) = line.trim_start().split_once(' ') else { continue };
        let Some((at, call)) = rest.trim_start().split_once(' ') else { continue };
        let (Ok(tid), Ok(at)) = (tid.parse::<u64>(), at.parse::<f64>()) else { continue };
        let (start, path) = if call.starts_with("<... ") {
            match pending.remove(&tid) {
                Some(p) => p,
                None => continue,
            }
        } else if call.starts_with("read(") || call.starts_with("pread64(") {
            if call.ends_with("<unfinished ...>") {
                pending.insert(tid, (at, path_of(call)));
                continue;
            }
            (at, path_of(call))
        } else {
            continue;
        };
        if let Some((bytes, took)) = result_of(call) {
            out.push(Read { tid, at: start, took, path, bytes });
        }
    }
    out
}

/// Which of `pid`'s files a path is, if `cmdline` or `environ` (also under `task/TID/`).
fn target_file(path: &str, pid: u32) -> Option<&'static str> {
    let rest = path.strip_prefix(&format!("/proc/{pid}/"))?;
    let rest = match rest.strip_prefix("task/") {
        Some(t) => t.split_once('/')?.1,
        None => rest,
    };
    match rest {
        "cmdline" => Some("cmdline"),
        "environ" => Some("environ"),
        _ => None,
    }
}

/// Of `reads`, those of `pid`'s `cmdline` and `environ` that returned bytes
/// (one at the end of the file makes no remote access).
pub(crate) fn target_reads(reads: &[Read], pid: u32) -> Vec<TargetRead> {
    reads
        .iter()
        .filter(|r| r.bytes > 0)
        .filter_map(|r| Some(TargetRead { tid: r.tid, at: r.at, took: r.took, file: target_file(&r.path, pid)? }))
        .collect()
}

/// What a read says about a stall.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Verdict {
    Stalled,
    NoStall,
    Undecided,
}

/// A read's verdict: `hold` is the hold's wall-clock interval (s); `blocks`,
/// whether the kernel takes the mmap_lock for these reads.
pub(crate) fn verdict(read: &TargetRead, hold: (f64, f64), threshold_s: f64, blocks: bool) -> Verdict {
    let inside = read.at >= hold.0 - CLOCKS_APART_S && read.at <= hold.1 + CLOCKS_APART_S;
    if !blocks || read.took < threshold_s {
        Verdict::NoStall
    } else if read.took >= 2.0 * threshold_s && inside {
        Verdict::Stalled
    } else {
        Verdict::Undecided
    }
}

/// `CLOCK_REALTIME − CLOCK_MONOTONIC` now (s): the holder reports
/// monotonic times, strace wall-clock ones.
fn realtime_minus_monotonic() -> f64 {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    wall - crate::stall::monotonic_ns() as f64 / 1e9
}

/// The programs a round starts (name in the checks, comm, command line),
/// and the exporter it scrapes, if any.
struct Readers<'a> {
    programs: &'a [(&'a str, &'a str, &'a [&'a str])],
    exporter: Option<&'a Traced>,
}

/// One hold with every program, against a daemon whose stall threshold is
/// `threshold_ns`; `Ok(false)`: it decided nothing (and `may_retry`).
fn round(report: &mut Report, kernel: Kernel, hold: Hold, readers: &Readers, threshold_ns: u64, may_retry: bool) -> Result<bool> {
    let name = format!("readers.{}", hold.label());
    let mut target = StallTarget::spawn_kind(hold.kind())?;
    let pid = target.pid();
    // The holder with the daemon on one CPU: off CPU whenever the daemon
    // looks at its stack.
    pin_to_cpu0(target.tid as u32, false)?;
    let stretch = if hold.stretched() {
        // Two holds alone: the shorter decides how much to stretch.
        let alone = target.hold()?.min(target.hold()?);
        let nice = nice_for(alone, STRETCHED_NS);
        println!("vmtest: {name}: {:.1} ms alone; the holder at nice {nice} beside a spinning thread", alone as f64 / 1e6);
        Some(Stretch::start(target.tid, nice)?)
    } else {
        None
    };
    let before = Scrape::fetch(LISTEN)?;
    target.start_hold()?;
    if hold.syscall().is_none() {
        // Readers queue behind a writer only once it is queued.
        match stretch {
            // The slowed holder enters its system call late.
            Some(_) => target.start_writer_after(STRETCHED_WRITER_DELAY)?,
            None => target.start_writer()?,
        }
        if let Err(e) = target.wait_writer_queued(Duration::from_secs(5)) {
            // The holder was late into its system call: nothing to test.
            target.end_queued()?;
            println!("vmtest: {name}: {e:#}");
            if may_retry {
                return Ok(false);
            }
            report.check(format!("{name}.writer_queued"), true, false);
            return Ok(true);
        }
    }
    let mut programs = Vec::new();
    for (label, _, argv) in readers.programs {
        programs.push((label, Traced::spawn(&format!("{label}.{pid}"), argv)?));
    }
    let curl = match readers.exporter {
        Some(_) => Some(
            Command::new("/usr/bin/curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "60"])
                .arg(format!("http://{EXPORTER_LISTEN}/metrics"))
                .spawn()
                .context("spawn curl")?,
        ),
        None => None,
    };
    let (hold_ns, hold_end_ns) = match hold.syscall() {
        Some(_) => {
            let t = target.end_hold_timed()?;
            (t.ns, t.end_ns)
        }
        None => {
            let q = target.end_queued()?;
            (q.holder.ns, q.holder.end_ns)
        }
    };
    drop(stretch);
    let offset = realtime_minus_monotonic();
    let window = ((hold_end_ns - hold_ns) as f64 / 1e9 + offset, hold_end_ns as f64 / 1e9 + offset);
    for (label, p) in &mut programs {
        p.finish(Duration::from_secs(60)).with_context(|| label.to_string())?;
    }
    let after = Scrape::fetch(LISTEN)?;
    report.check(format!("{name}.hold_at_least_2s"), true, hold_ns >= 2_000_000_000);
    if let Some(mut curl) = curl {
        report.check(format!("{name}.exporter_scraped"), true, curl.wait()?.success());
    }

    // Ground truth per program, from its trace.
    let blocks = !kernel.is_patched();
    let threshold_s = threshold_ns as f64 / 1e9;
    let mut traces: Vec<(&str, &str, Vec<TargetRead>)> = Vec::new();
    let mut undecided = Vec::new();
    let mut missed = Vec::new();
    let files = readers.programs.iter().map(|(label, comm, _)| (*label, *comm, format!("{TRACES}/{label}.{pid}.trace")));
    let exporter = readers.exporter.map(|e| (EXPORTER.0, EXPORTER.1, e.trace.clone()));
    for (label, comm, file) in files.chain(exporter) {
        let text = std::fs::read_to_string(&file).with_context(|| format!("{label}'s trace"))?;
        let all = reads(&text);
        let mine = target_reads(&all, pid);
        let line: Vec<String> = mine.iter().map(|r| format!("{} {} +{:.3} s took {:.3} s", r.tid, r.file, r.at - window.0, r.took)).collect();
        println!("vmtest: {name}: {label} read the target: {}", if line.is_empty() { "nothing".to_string() } else { line.join(", ") });
        undecided.extend(mine.iter().filter(|r| verdict(r, window, threshold_s, blocks) == Verdict::Undecided).map(|_| label));
        // It ran during the hold: it read the target then, or a read it
        // began then lasted past the hold's end (held up on the lock in
        // another file, e.g. the exporter's smaps_rollup).
        let inside = |at: f64| at >= window.0 && at <= window.1;
        let held_up = all.iter().filter(|r| inside(r.at) && r.at + r.took >= window.1 - CLOCKS_APART_S).max_by(|a, b| a.took.total_cmp(&b.took));
        if !mine.iter().any(|r| inside(r.at)) {
            match held_up {
                Some(r) => println!("vmtest: {name}: {label}: held up {:.3} s in a read of {} instead", r.took, r.path),
                None => {
                    missed.push(label);
                    let said = |ext: &str| std::fs::read_to_string(format!("{file}.{ext}")).unwrap_or_default();
                    println!("vmtest: {name}: {label}: not running during the hold; its last read: {:?}; stdout {:?}; stderr {:?}", text.lines().last(), said("out").lines().next(), said("err"));
                }
            }
        }
        traces.push((label, comm, mine));
    }
    println!("vmtest: {name}: hold {:.2} s", hold_ns as f64 / 1e9);
    if may_retry && (!undecided.is_empty() || !missed.is_empty()) {
        println!("vmtest: {name}: decides nothing (undecided reads: {undecided:?}; not running during the hold: {missed:?}): once more");
        return Ok(false);
    }
    // Every program ran during the hold (else it tested nothing).
    for (label, _, _) in &traces {
        report.check(format!("{name}.{label}.ran_during_the_hold"), true, !missed.contains(label));
    }
    report.check(format!("{name}.undecided_reads"), 0, undecided.len());

    // The daemon's stalls of this target, by reading thread.
    let expected: Vec<(&str, &str, &TargetRead)> = traces
        .iter()
        .flat_map(|(label, comm, reads)| reads.iter().filter(|r| verdict(r, window, threshold_s, blocks) == Verdict::Stalled).map(move |r| (*label, *comm, r)))
        .collect();
    // Where the kernel skipped wait-end or exit runs (it can where a program
    // can be preempted: PREEMPT_RT, preempt=full), each skip may have lost a
    // stall, and the counts are checked to lie within that many; else exact.
    let lost = wait_end_skips(&before, &after);
    if lost > 0.0 {
        println!("vmtest: {name}: the kernel skipped {lost} runs of the wait-end and exit programs");
        report.check(format!("{name}.skips_possible"), true, skips_possible());
    }
    let mine = stall_log_of(expected.len(), |s| s["target"]["pid"].as_u64() == Some(pid as u64))?;
    // All under the holder's operation.
    let op = match hold.syscall() {
        Some(syscall) => expected_holder(HolderKind::Writer, true, 0, 0, HOLDER_COMM, false).in_syscall(syscall, None).op,
        None => expected_holder(HolderKind::Readers, false, 0, 0, HOLDER_COMM, true).op,
    };
    for (labels, what) in [(vec![("lock_mode", cat::LOCK_READ)], "lock_mode=read".to_string()), (vec![("lock_mode", cat::LOCK_READ), ("op", op)], format!("lock_mode=read,op={op}"))] {
        let counted = delta_sum(&before, &after, cat::STALLS.name, &labels);
        if lost > 0.0 || counted != expected.len().to_string() {
            println!("vmtest: {name}: stalls_total{{{what}}} counted {counted} of {}", expected.len());
        }
        report.check(format!("{name}.stalls_total{{{what}}}"), counted_or_lost(expected.len(), lost), within_lost(&counted, expected.len(), lost));
    }
    // Every stall series that moved (which op a stall was told under).
    for (k, v) in &after.samples {
        if k.starts_with(cat::STALLS.name) && before.samples.get(k).is_none_or(|b| b != v) {
            println!("vmtest: {name}: {k} {} -> {v}", before.samples.get(k).copied().unwrap_or(0.0));
        }
    }
    let known = foll_anon_known(report);
    let mut unlogged = 0;
    for (label, comm, reads) in &traces {
        let want: Vec<&&TargetRead> = expected.iter().filter(|(l, _, _)| l == label).map(|(_, _, r)| r).collect();
        // Its threads: those strace saw read the target (two `ps` share a comm).
        let tids: Vec<u64> = reads.iter().map(|r| r.tid).collect();
        let got = mine.iter().filter(|s| s["reader"]["tid"].as_u64().is_some_and(|t| tids.contains(&t))).count();
        if lost > 0.0 && got != want.len() {
            println!("vmtest: {name}: {label}: {got} of {} stalls logged", want.len());
        }
        report.check(format!("{name}.{label}.stalls"), counted_or_lost(want.len(), lost), within_lost(&got.to_string(), want.len(), lost));
        unlogged += want.len().saturating_sub(got);
        for (i, r) in want.iter().enumerate() {
            let prefix = format!("{name}.{label}.stall{i}");
            let Some(s) = mine.iter().find(|s| s["reader"]["tid"].as_u64() == Some(r.tid)) else {
                if lost == 0.0 {
                    report.check(format!("{prefix}.reader.tid"), r.tid, "none");
                }
                continue;
            };
            report.check(format!("{prefix}.reader.comm"), comm, s["reader"]["comm"].as_str().unwrap_or(""));
            let interface = match (known, r.file) {
                (false, _) => Interface::Other,
                (true, "environ") => Interface::Environ,
                (true, _) => Interface::Cmdline,
            };
            report.check(format!("{prefix}.interface"), interface.label(), s["interface"].as_str().unwrap_or(""));
            match hold.syscall() {
                Some(syscall) => {
                    let h = &s["holder"];
                    let want = expected_holder(HolderKind::Writer, true, target.tid as u64, pid as u64, HOLDER_COMM, false)
                        .in_syscall(syscall, target.range);
                    want.check_identity(report, &format!("{prefix}.holder"), h);
                    want.check_doing(report, &format!("{prefix}.holder"), h);
                    want.check_stack(report, &format!("{prefix}.holder"), h);
                }
                None => check_reader_owned(report, &prefix, Some(s), &target),
            }
        }
    }
    if lost > 0.0 {
        report.check(format!("{name}.stalls_unlogged_at_most_skipped"), true, unlogged as f64 <= lost);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_of_the_target_in_a_trace() {
        // Written by strace 6.1 (`-f -ttt -T -y -s 0`), pid 300 the target.
        let trace = "\
41 1796581079.038267 read(4</proc/1/cmdline>, \"\"..., 3072) = 215 <0.000016>
41 1796581079.040000 read(4</proc/300/cmdline>, \"\"..., 3072) = 58 <2.310000>
41 1796581081.350000 read(4</proc/300/cmdline>, \"\", 3072) = 0 <0.000011>
41 1796581081.360000 read(5</proc/300/environ>, \"\"..., 4096) = 120 <0.000020>
52   1796581079.100000 read(7</proc/300/task/301/cmdline>,  <unfinished ...>
53 1796581079.100100 read(8</proc/300/status>, \"\"..., 4096) = 900 <0.000030>
52 1796581081.400000 <... read resumed>\"\"..., 512) = 58 <2.300000>
52 1796581081.500000 read(7</proc/3000/cmdline>, \"\"..., 512) = 9 <0.000010>
52 1796581081.600000 pread64(9</proc/300/cmdline>, \"\"..., 512, 0) = 58 <0.000010>
52 1796581081.700000 read(9</proc/300/cmdline>, 0x7f00, 512) = -1 EINTR (Interrupted system call) <0.150000>
";
        let reads = target_reads(&super::reads(trace), 300);
        let summary: Vec<(u64, &str, f64)> = reads.iter().map(|r| (r.tid, r.file, r.took)).collect();
        assert_eq!(summary, [(41, "cmdline", 2.31), (41, "environ", 0.00002), (52, "cmdline", 2.3), (52, "cmdline", 0.00001)]);
        // The resumed read keeps its entry time.
        assert_eq!(reads[2].at, 1796581079.1);
    }

    #[test]
    fn stretching() {
        // 80 ms alone to 4 s: a factor of 50 or more, nice 18 (18/1042).
        assert_eq!(nice_for(80_000_000, 4_000_000_000), 18);
        // 200 ms to 5 s: 25 times or more, nice 15 (36/1060: 29.4 times; nice 14: 23.8).
        assert_eq!(nice_for(200_000_000, 5_000_000_000), 15);
        // Already long enough: not stretched.
        assert_eq!(nice_for(5_000_000_000, 4_000_000_000), 0);
        // Too short to reach it at all: as far as it goes.
        assert_eq!(nice_for(1_000_000, 4_000_000_000), 19);
    }

    #[test]
    fn verdicts() {
        let read = |at: f64, took: f64| TargetRead { tid: 1, at, took, file: "cmdline" };
        let hold = (100.0, 103.0);
        assert_eq!(verdict(&read(100.5, 2.5), hold, 0.1, true), Verdict::Stalled);
        assert_eq!(verdict(&read(100.5, 2.5), hold, 0.1, false), Verdict::NoStall);
        assert_eq!(verdict(&read(102.95, 0.05), hold, 0.1, true), Verdict::NoStall);
        assert_eq!(verdict(&read(102.85, 0.15), hold, 0.1, true), Verdict::Undecided);
        // Long, but not during the hold: something else held it up.
        assert_eq!(verdict(&read(104.0, 0.5), hold, 0.1, true), Verdict::Undecided);
    }
}
