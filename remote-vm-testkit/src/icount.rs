//! Guest instructions, not time: run under QEMU `-icount shift=0,sleep=off
//! -smp 1`, where one nanosecond of guest time is one guest instruction, so
//! the figures repeat from boot to boot whatever the host is doing. Reports
//! instructions per remote read and per page fault with the daemon off and on
//! (default modes), and per run of each of the daemon's programs (the kernel's
//! BPF run-time statistics, switched on only for that last pass: they add two
//! clock reads to every run). A benchmark, not a test: it asserts nothing.
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    bench::{self, Daemon},
    workload::Target,
};

/// One of the daemon's programs during one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    pub workload: String,
    /// The kernel's name for it (the first 15 bytes of the program name).
    pub program: String,
    pub runs: u64,
    pub instructions_per_run: f64,
}

/// One workload, daemon off and on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadCost {
    pub workload: String,
    pub off: f64,
    pub on: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IcountResult {
    pub release: String,
    pub workloads: Vec<WorkloadCost>,
    pub programs: Vec<ProgramCost>,
}

/// Every loaded program's (id, name, runs, run time).
fn program_stats() -> Vec<(u32, String, u64, Duration)> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string(), p.run_count(), p.run_time()))
        .collect()
}

/// The smallest of three runs (instructions are exact; the smallest is the one
/// least disturbed by a timer interrupt or a daemon thread waking).
fn least(work: &dyn Fn() -> f64) -> f64 {
    (0..3).map(|_| work()).fold(f64::INFINITY, f64::min)
}

pub fn run(daemon: &str, scale: f64) -> Result<IcountResult> {
    let n = |base: f64| ((base * scale) as usize).max(1);
    let target = Target::spawn(64, 1)?;
    type Work<'a> = Box<dyn Fn() -> f64 + 'a>;
    let workloads: Vec<(&str, Work)> = vec![
        ("remote read (4 KiB pread of /proc/PID/mem)", Box::new(|| bench::remote_reads(&target, n(2000.0)))),
        ("page fault (4 MiB of PTE pages)", Box::new(|| bench::page_faults(n(4.0)).unwrap_or(f64::NAN))),
    ];
    let mut result = IcountResult {
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        ..Default::default()
    };
    let mut off = Vec::new();
    for (_, work) in &workloads {
        work();
        off.push(least(work));
    }
    let d = Daemon::start(daemon, "")?;
    for ((name, work), off) in workloads.iter().zip(off) {
        work();
        let on = least(work);
        println!("icount: {name}: off {off:.1}, on {on:.1} instructions ({:+.1})", on - off);
        result.workloads.push(WorkloadCost { workload: name.to_string(), off, on });
    }
    // Per program: the kernel's run-time statistics while each workload runs once more.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    for (name, work) in &workloads {
        let before = program_stats();
        work();
        for (id, program, runs, time) in program_stats() {
            let Some((_, _, runs0, time0)) = before.iter().find(|(i, ..)| *i == id) else { continue };
            let runs = runs.saturating_sub(*runs0);
            if runs == 0 {
                continue;
            }
            let per_run = time.saturating_sub(*time0).as_nanos() as f64 / runs as f64;
            println!("icount: {name}: {program}: {runs} runs, {per_run:.1} instructions per run");
            result.programs.push(ProgramCost {
                workload: name.to_string(),
                program,
                runs,
                instructions_per_run: per_run,
            });
        }
    }
    drop(d);
    Ok(result)
}
