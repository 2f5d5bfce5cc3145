//! The overhead benchmark: the same workloads with the daemon off and on, as
//! ratios from one run (off and on interleaved, medians), plus the daemon's own
//! CPU, RSS and `/metrics` latency at a 1 s scrape. A benchmark, not a test: it
//! reports figures and asserts nothing about them.
use std::{
    os::unix::fs::FileExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use remote_vm_common::registry::Family;

use crate::{
    prom,
    workload::{PAGE, Target, map},
};

pub(crate) const LISTEN: &str = "127.0.0.1:19362";

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The daemon binary.
    #[arg(long, default_value = "/usr/bin/remote-vm-daemon")]
    pub daemon: String,
    /// Off/on pairs per workload and mode.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Work per measurement, relative to the default.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Seconds of the 1 s-scrape CPU/RSS measurement.
    #[arg(long, default_value_t = 20)]
    pub scrape_seconds: u64,
}

/// One workload in one daemon mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub workload: String,
    pub mode: String,
    pub off_ns: f64,
    pub on_ns: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchResult {
    pub release: String,
    pub ratios: Vec<Ratio>,
    /// Daemon CPU while scraped every second under a steady remote-read load.
    pub daemon_cpu_percent: f64,
    pub daemon_rss_kb: u64,
    pub metrics_p50_ms: f64,
    pub metrics_p99_ms: f64,
    pub metrics_bytes: usize,
    /// What the default mode attached (probe → mode).
    pub attached: Vec<(String, String)>,
}

/// The daemon configurations compared with "off", derived from the registry:
/// the daemon with nothing attached (a baseline: under emulation the daemon's
/// mere presence moves the figures), the default, and each opt-in mode (those
/// on the page-fault path say so).
pub const BASELINE: &str = "daemon running, nothing attached";
/// The daemon's embedded defaults.
pub const DEFAULT: &str = "default";
/// The label of the default with one refining family off, after which its
/// name comes: what that family's features cost (measured only when named by
/// `--configuration`).
pub const WITHOUT: &str = "default without ";

pub fn configurations() -> Vec<(String, String)> {
    let off = |families: &mut dyn Iterator<Item = Family>| {
        let lines: String = families.map(|f| format!("{} = \"off\"\n", f.name())).collect();
        format!("[probes]\n{lines}")
    };
    let mut all = vec![
        (BASELINE.to_string(), off(&mut Family::ALL.into_iter().filter(|f| f.spec().requires.is_none()))),
        (DEFAULT.to_string(), String::new()),
    ];
    for f in Family::ALL {
        let where_ = if f.spec().on_fault_path { " (on the page-fault path)" } else { "" };
        for m in f.spec().opt_in {
            all.push((
                format!("opt-in: {} {}{where_}", f.name(), m.name),
                format!("[probes]\n{} = \"{}\"\n", f.name(), m.name),
            ));
        }
    }
    // Each family the default attaches that only refines another: its price.
    for f in Family::ALL.into_iter().filter(|f| f.spec().requires.is_some() && !f.spec().modes.is_empty()) {
        all.push((format!("{WITHOUT}{}", f.name()), off(&mut std::iter::once(f))));
    }
    all
}

/// Whether a configuration is measured only when named (`--configuration`).
pub fn only_when_named(label: &str) -> bool {
    label.starts_with(WITHOUT)
}

pub(crate) struct Daemon(pub(crate) Child);

impl Daemon {
    pub(crate) fn start(bin: &str, config: &str) -> Result<Daemon> {
        let path = std::env::temp_dir().join("rvm-bench.toml");
        std::fs::write(&path, config)?;
        let child = Command::new(bin)
            .args(["run", "--listen", LISTEN, "--log-level", "warn", "--web.socket", "", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the daemon")?;
        let d = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(prom::get(LISTEN, "/healthz"), Ok((200, _))) {
            if Instant::now() > deadline {
                bail!("daemon did not serve");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// CPU seconds of all of `pid`'s threads: its process CPU clock
/// (`clock_getcpuclockid`, the scheduler's nanoseconds, whatever the kernel's
/// accounting config), else schedstat, else clock ticks.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: out-pointers to locals.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } == 0
        && unsafe { libc::clock_gettime(clock, &mut ts) } == 0
    {
        return Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9);
    }
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        match std::fs::read_to_string(task?.path().join("schedstat")) {
            Ok(s) => ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
            Err(_) => {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
                let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
                let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                // SAFETY: sysconf has no preconditions.
                return Ok((field(11) + field(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64);
            }
        }
    }
    Ok(ns as f64 / 1e9)
}

/// The daemon `pid`'s CPU, in % of one core, over `seconds` of scraping it once a
/// second (`LISTEN`) while `target` gets 500 remote reads a second.
pub(crate) fn cpu_at_one_scrape_a_second(pid: u32, target: &Target, seconds: u64) -> Result<f64> {
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; PAGE];
    let mut i = 0usize;
    while t0.elapsed() < Duration::from_secs(seconds) {
        let second = Instant::now();
        prom::get(LISTEN, "/metrics")?;
        for _ in 0..500 {
            let addr = target.layout.resident + ((i % target.layout.resident_pages) * PAGE) as u64;
            let _ = target.mem().read_at(&mut buf, addr);
            i += 1;
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(second.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    Ok(100.0 * (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64())
}

/// `pid`'s resident set in KiB.
pub(crate) fn rss_kb(pid: u32) -> Result<u64> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// ns per 4 KiB `pread` of a resident page of another process.
pub(crate) fn remote_reads(target: &Target, n: usize) -> Result<f64> {
    remote_reads_at(target.mem(), target.layout.resident, target.layout.resident_pages, n)
}

/// The same through `mem` (`/proc/PID/mem`), round the `pages` at `resident`.
/// An error if any read did not return the whole page (a target gone or a
/// wrong address would otherwise give a fast, plausible figure).
pub(crate) fn remote_reads_at(mem: &std::fs::File, resident: u64, pages: usize, n: usize) -> Result<f64> {
    let mut buf = vec![0u8; PAGE];
    let mut short = 0usize;
    let t = Instant::now();
    for i in 0..n {
        let addr = resident + ((i % pages.max(1)) * PAGE) as u64;
        if !matches!(mem.read_at(&mut buf, addr), Ok(PAGE)) {
            short += 1;
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    anyhow::ensure!(short == 0, "{short} of {n} reads of /proc/PID/mem at {resident:#x} did not return a page");
    Ok(ns)
}

/// ns per page fault: map 4 MiB of PTE pages, touch each, unmap.
pub(crate) fn page_faults(rounds: usize) -> Result<f64> {
    const LEN: usize = 4 << 20;
    let t = Instant::now();
    for _ in 0..rounds {
        let p = map(LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE)?;
        // SAFETY: inside our own mapping, released after.
        unsafe {
            for off in (0..LEN).step_by(PAGE) {
                std::ptr::write_volatile(p.add(off), 1);
            }
            libc::munmap(p.cast(), LEN);
        }
    }
    Ok(t.elapsed().as_nanos() as f64 / (rounds * (LEN / PAGE)) as f64)
}

/// ns per mmap + fault + munmap of one page (each takes the mmap_lock).
///
/// Always the same page in the same neighbourhood. Where an anonymous page
/// lands decides what an iteration costs: a page alone in its 2 MiB range
/// takes a page table to allocate, zero and free each time (about 1000 guest
/// instructions more per iteration), one with a neighbour in the range reuses
/// it. With `mmap(NULL, ..)` that depends on the process's layout (ASLR, what
/// sits just above the page), so two boots measured 22008 and 23093
/// instructions. Here: a 2 MiB-aligned range is made free, a read-only
/// anchor page (faulted, so its page table exists; another protection, so the
/// loop's page never merges with it) sits in its middle, and the loop maps the
/// page just below it with `MAP_FIXED_NOREPLACE`: the common case, a page whose
/// page table stays. An error if the range is taken from under it.
pub(crate) fn mmap_loop(n: usize) -> Result<f64> {
    const RANGE: usize = 2 << 20;
    let reserve = map(3 * RANGE, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_NORESERVE)?;
    let aligned = (reserve as usize).next_multiple_of(RANGE);
    let anchor = aligned + RANGE / 2;
    let page = anchor - PAGE;
    let fixed = |addr: usize, prot: i32| {
        // SAFETY: a fixed address inside the range released just before, and
        // MAP_FIXED_NOREPLACE never replaces a mapping that got there since.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                PAGE,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        p as usize == addr
    };
    // SAFETY: our own reservation, unused.
    unsafe { libc::munmap(reserve.cast(), 3 * RANGE) };
    if !fixed(anchor, libc::PROT_READ) {
        bail!("mmap loop: the anchor page at {anchor:#x} was taken");
    }
    // SAFETY: the anchor just mapped.
    unsafe { std::ptr::read_volatile(anchor as *const u8) };
    let mut ok = true;
    let t = Instant::now();
    for _ in 0..n {
        if !fixed(page, libc::PROT_READ | libc::PROT_WRITE) {
            ok = false;
            break;
        }
        // SAFETY: the page just mapped, released at once.
        unsafe {
            std::ptr::write_volatile(page as *mut u8, 1);
            libc::munmap(page as *mut libc::c_void, PAGE);
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    // SAFETY: the anchor, ours.
    unsafe { libc::munmap(anchor as *mut libc::c_void, PAGE) };
    anyhow::ensure!(ok, "mmap loop: the page at {page:#x} was taken");
    Ok(ns)
}

pub fn run(args: &BenchArgs) -> Result<BenchResult> {
    let scale = |n: f64| ((n * args.scale) as usize).max(1);
    let target = Target::spawn(64, 1)?;
    type Work<'a> = Box<dyn Fn() -> Result<f64> + 'a>;
    let workloads: Vec<(&str, Work)> = vec![
        ("remote read (4 KiB pread of /proc/PID/mem)", Box::new(|| remote_reads(&target, scale(20_000.0)))),
        ("page fault (4 MiB of PTE pages)", Box::new(|| page_faults(scale(40.0)))),
        ("mmap + fault + munmap", Box::new(|| mmap_loop(scale(50_000.0)))),
    ];
    let mut result = BenchResult {
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        ..Default::default()
    };
    for (name, work) in &workloads {
        work()?; // warm up
        for (mode, config) in &configurations() {
            let (mut off, mut on) = (Vec::new(), Vec::new());
            // Each measurement runs the work twice and keeps the second: under
            // emulation (TCG) the first run after a daemon start also pays for
            // translating the newly loaded programs.
            for _ in 0..args.reps {
                work()?;
                off.push(work()?);
                let d = Daemon::start(&args.daemon, config)?;
                work()?;
                on.push(work()?);
                drop(d);
            }
            let (off, on) = (median(off), median(on));
            println!("bench: {name} [{mode}]: off {off:.0} ns, on {on:.0} ns, {:.3}x", on / off);
            result.ratios.push(Ratio {
                workload: name.to_string(),
                mode: mode.to_string(),
                off_ns: off,
                on_ns: on,
                ratio: on / off,
            });
        }
    }

    // The daemon at a 1 s scrape under a steady remote-read load.
    let d = Daemon::start(&args.daemon, "")?;
    let pid = d.0.id();
    let health = prom::get(LISTEN, "/healthz")?.1;
    result.attached = health
        .lines()
        .filter_map(|l| l.strip_prefix("probe "))
        .filter_map(|l| l.split_once(": "))
        .map(|(p, rest)| (p.to_string(), rest.split_whitespace().next().unwrap_or("").to_string()))
        .collect();
    result.daemon_cpu_percent = cpu_at_one_scrape_a_second(pid, &target, args.scrape_seconds)?;
    result.daemon_rss_kb = rss_kb(pid)?;
    // What a scraper sees: requests spaced wider than the daemon's default
    // render spacing (`[web] min_render_interval_seconds`, 0.1 s), so each
    // measures a render, not the wait for the next one.
    let mut lat = Vec::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(120));
        let t = Instant::now();
        let (_, body) = prom::get(LISTEN, "/metrics")?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        result.metrics_bytes = body.len();
    }
    lat.sort_by(f64::total_cmp);
    result.metrics_p50_ms = lat[lat.len() / 2];
    result.metrics_p99_ms = lat[(lat.len() * 99) / 100];
    println!(
        "bench: daemon at a 1 s scrape: {:.3} % of a core, RSS {} kB; /metrics p50 {:.2} ms p99 {:.2} ms ({} bytes)",
        result.daemon_cpu_percent, result.daemon_rss_kb, result.metrics_p50_ms, result.metrics_p99_ms, result.metrics_bytes
    );
    drop(d);
    Ok(result)
}
