//! Guest instructions, not time: run under QEMU `-icount shift=0,sleep=off
//! -smp 1`, where one nanosecond of guest time is one guest instruction, so the
//! figures repeat from boot to boot whatever the host is doing (`cargo xtask
//! bench --icount` boots twice and compares).
//!
//! For every configuration of `bench::configurations()` (derived from the
//! registry: the default, the default without a page-fault-path program, each
//! opt-in mode) and with no daemon at all: instructions per operation of each
//! workload (the least of three runs: instructions are exact, the least is the
//! run no timer interrupt or daemon wake-up landed in). Then, with the kernel's
//! BPF run-time statistics switched on for one more pass (they add two clock
//! reads to every run, so never during the measurement), how often each program
//! ran per operation and what a run cost. Then the daemon itself in its default
//! configuration: CPU and RSS at a 1 s scrape, and the CPU one scrape costs with
//! every family populated. A benchmark, not a test: it asserts nothing.
use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::FileExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    bench::{self, Daemon},
    classes::{self, Counts},
    prom,
    workload::{PAGE, Target},
};

/// The configuration label of the runs with no daemon, first and again last
/// (what moved between the two is the machine's state, not the daemon).
pub const OFF: &str = "off";
pub const OFF_AGAIN: &str = "off, again after every configuration";

/// One workload in one configuration: guest instructions per operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub configuration: String,
    pub workload: String,
    pub per_op: f64,
}

/// One of the daemon's programs during one workload, in one configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    pub configuration: String,
    pub workload: String,
    /// The kernel's name for it (the first 15 bytes of the program name).
    pub program: String,
    pub runs_per_op: f64,
    pub instructions_per_run: f64,
}

/// The daemon in its default configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonCost {
    /// Its CPU over `seconds` of guest time at one scrape a second and 500
    /// remote reads a second, in % of one CPU.
    pub cpu_percent: f64,
    pub seconds: u64,
    pub rss_kb: u64,
    /// Its CPU per `/metrics` render with every family populated, in guest
    /// nanoseconds (= instructions), the least of 20 scrapes.
    pub scrape_instructions: f64,
    pub metrics_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IcountResult {
    pub release: String,
    /// Configuration labels in the order measured (`OFF` first).
    pub configurations: Vec<String>,
    pub measured: Vec<Measured>,
    pub programs: Vec<ProgramCost>,
    pub daemon: DaemonCost,
}

/// Every loaded program's (id, name, runs, run time).
fn program_stats() -> Vec<(u32, String, u64, Duration)> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string(), p.run_count(), p.run_time()))
        .collect()
}

/// The smallest of three runs.
fn least(work: &dyn Fn() -> f64) -> f64 {
    (0..3).map(|_| work()).fold(f64::INFINITY, f64::min)
}

/// A process whose `/proc/PID/cmdline` is exactly `len` bytes (argv of
/// busybox `sh -c 'read x'` padded by `$0`), waiting for its stdin to close.
struct CmdlineTarget {
    child: Child,
    file: File,
}

impl CmdlineTarget {
    fn spawn(len: usize) -> Result<CmdlineTarget> {
        const BUSYBOX: &str = "/bin/busybox";
        // Each argument and its NUL: "/bin/busybox" "sh" "-c" "read x" then $0.
        let fixed = [BUSYBOX, "sh", "-c", "read x"].iter().map(|a| a.len() + 1).sum::<usize>();
        let pad = "x".repeat(len.saturating_sub(fixed + 1).max(1));
        let child = Command::new(BUSYBOX)
            .args(["sh", "-c", "read x", &pad])
            .stdin(Stdio::piped())
            .spawn()
            .context("spawn busybox sh")?;
        let path = format!("/proc/{}/cmdline", child.id());
        // The shell is running once its argv is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read(&path).is_ok_and(|c| c.len() == fixed + pad.len() + 1) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{path} never held the padded argv");
            std::thread::sleep(Duration::from_millis(10));
        }
        let file = File::open(&path)?;
        Ok(CmdlineTarget { child, file })
    }

    /// Instructions per `pread` of the whole cmdline (two `access_remote_vm()`
    /// calls: the kernel's 1-byte probe at `arg_end - 1`, then the copy).
    fn reads(&self, n: usize) -> f64 {
        let mut buf = vec![0u8; PAGE];
        let t = Instant::now();
        for _ in 0..n {
            let _ = self.file.read_at(&mut buf, 0);
        }
        t.elapsed().as_nanos() as f64 / n as f64
    }
}

impl Drop for CmdlineTarget {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workload names, as the report shows them.
pub const REMOTE_READ: &str = "remote read: 4 KiB pread of /proc/PID/mem";
pub const CMDLINE_READ: &str = "remote read: 64-byte /proc/PID/cmdline";
pub const PAGE_FAULT: &str = "page fault (4 KiB pages, 4 MiB at a time)";
pub const MMAP_LOOP: &str = "mmap + fault + munmap of one page";

/// The mmap loop's iterations: it frees a page table and a page each time, and
/// the deferred work that follows (RCU, the page allocator's batches) lands in
/// whichever run is going; 5000 iterations keep that within 0.1 % of a run.
const MMAP_LOOP_OPS: f64 = 5000.0;

pub fn run(daemon: &str, scale: f64) -> Result<IcountResult> {
    let n = |base: f64| ((base * scale) as usize).max(1);
    let target = Target::spawn(64, 1)?;
    let cmdline = CmdlineTarget::spawn(64)?;
    type Work<'a> = Box<dyn Fn() -> f64 + 'a>;
    let workloads: Vec<(&str, Work)> = vec![
        (REMOTE_READ, Box::new(|| bench::remote_reads(&target, n(2000.0)))),
        (CMDLINE_READ, Box::new(|| cmdline.reads(n(2000.0)))),
        (PAGE_FAULT, Box::new(|| bench::page_faults(n(4.0)).unwrap_or(f64::NAN))),
        (MMAP_LOOP, Box::new(|| bench::mmap_loop(n(MMAP_LOOP_OPS)))),
    ];
    let ops = |name: &str| -> f64 {
        match name {
            PAGE_FAULT => (n(4.0) * (4 << 20) / PAGE) as f64,
            MMAP_LOOP => n(MMAP_LOOP_OPS) as f64,
            _ => n(2000.0) as f64,
        }
    };
    let mut result = IcountResult {
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        ..Default::default()
    };
    let measure = |configuration: &str, result: &mut IcountResult| {
        for (name, work) in &workloads {
            work(); // warm: the first run after a start also translates new code
            let per_op = least(work);
            println!("icount: [{configuration}] {name}: {per_op:.1} instructions");
            result.measured.push(Measured {
                configuration: configuration.to_string(),
                workload: name.to_string(),
                per_op,
            });
        }
    };
    // The first daemon start leaves the kernel's state changed for good (every
    // later figure, with the daemon or without, is a few dozen instructions
    // higher): start and stop it once before "off" is measured, and measure
    // "off" again at the end to show the state held.
    drop(Daemon::start(daemon, "")?);
    measure(OFF, &mut result);
    result.configurations.push(OFF.to_string());
    for (label, config) in bench::configurations() {
        let d = Daemon::start(daemon, &config)?;
        measure(&label, &mut result);
        // Per program: the kernel's run-time statistics during one more run each.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
        for (name, work) in &workloads {
            let before = program_stats();
            work();
            for (id, program, runs, time) in program_stats() {
                let Some((_, _, runs0, time0)) = before.iter().find(|(i, ..)| *i == id) else {
                    continue;
                };
                let runs = runs.saturating_sub(*runs0);
                if runs == 0 {
                    continue;
                }
                let per_run = time.saturating_sub(*time0).as_nanos() as f64 / runs as f64;
                let runs_per_op = runs as f64 / ops(name);
                println!(
                    "icount: [{label}] {name}: {program}: {runs_per_op:.3} runs per op, {per_run:.1} instructions per run"
                );
                result.programs.push(ProgramCost {
                    configuration: label.clone(),
                    workload: name.to_string(),
                    program,
                    runs_per_op,
                    instructions_per_run: per_run,
                });
            }
        }
        drop(stats);
        drop(d);
        result.configurations.push(label);
    }
    measure(OFF_AGAIN, &mut result);
    result.configurations.push(OFF_AGAIN.to_string());
    result.daemon = daemon_cost(daemon, &target, scale)?;
    Ok(result)
}

/// The daemon in its default configuration: every family populated by one run
/// of the classification workload, then CPU and RSS at a 1 s scrape under 500
/// remote reads a second, then 20 scrapes' CPU each.
fn daemon_cost(daemon: &str, target: &Target, scale: f64) -> Result<DaemonCost> {
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", "8");
    let d = Daemon::start(daemon, "")?;
    let pid = d.0.id();
    let populated = Target::spawn(4, 16)?;
    classes::run(&populated, &Counts::for_layout(&populated.layout))?;
    let seconds = ((10.0 * scale) as u64).max(2);
    let cpu_percent = bench::cpu_at_one_scrape_a_second(pid, target, seconds)?;
    let rss_kb = bench::rss_kb(pid)?;
    let (mut scrape, mut metrics_bytes) = (f64::INFINITY, 0);
    for _ in 0..20 {
        // Wider than the default render spacing (0.1 s): each is a render.
        std::thread::sleep(Duration::from_millis(120));
        let before = bench::cpu_seconds(pid)?;
        let (_, body) = prom::get(bench::LISTEN, "/metrics")?;
        scrape = scrape.min((bench::cpu_seconds(pid)? - before) * 1e9);
        metrics_bytes = body.len();
    }
    println!(
        "icount: daemon at a 1 s scrape: {cpu_percent:.3} % of a core over {seconds} s, RSS {rss_kb} kB; {scrape:.0} instructions per scrape ({metrics_bytes} bytes)"
    );
    drop(populated);
    drop(d);
    Ok(DaemonCost { cpu_percent, seconds, rss_kb, scrape_instructions: scrape, metrics_bytes })
}
