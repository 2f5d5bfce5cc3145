//! Guest instructions, not time: run under QEMU `-icount shift=0,sleep=off
//! -smp 1`, where one nanosecond of guest time is one guest instruction, so the
//! figures repeat from boot to boot whatever the host is doing (`cargo xtask
//! bench --icount` boots twice and compares).
//!
//! For every configuration of `bench::configurations()` (derived from the
//! registry: the default, the default without a page-fault-path program, each
//! opt-in mode) and with no daemon at all: instructions per operation of each
//! workload, each run in a fresh process (the least of three runs:
//! instructions are exact, the least is the run no timer interrupt or daemon
//! wake-up landed in). Then, with the kernel's
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
/// The floor: a `return 0` program on every hook the default attaches (the
/// same trampolines and kprobes), loaded with raw `bpf()`, no daemon. What a
/// program costs there before it does anything.
pub const FLOOR: &str = "floor: empty programs where the default attaches";

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
    /// The same with this many more idle threads on the machine: (threads,
    /// instructions per render). Each render runs the waits iterator over
    /// every task once: its cost per task is the slope.
    #[serde(default)]
    pub scrape_instructions_with_threads: Vec<(u64, f64)>,
}

/// `n` threads of this process blocked on a condition variable until dropped.
struct IdleThreads {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl IdleThreads {
    fn spawn(n: usize) -> Result<IdleThreads> {
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            let stop = stop.clone();
            handles.push(std::thread::Builder::new().stack_size(64 << 10).spawn(move || {
                let (lock, cv) = &*stop;
                let mut done = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while !*done {
                    done = cv.wait(done).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            })?);
        }
        Ok(IdleThreads { stop, handles })
    }
}

impl Drop for IdleThreads {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        cv.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The least CPU (guest instructions) of `n` `/metrics` renders by `pid`.
fn least_scrape(pid: u32, n: usize) -> Result<(f64, usize)> {
    let (mut least, mut bytes) = (f64::INFINITY, 0);
    for _ in 0..n {
        // Wider than the default render spacing (0.1 s): each is a render.
        std::thread::sleep(Duration::from_millis(120));
        let before = bench::cpu_seconds(pid)?;
        let (_, body) = prom::get(bench::LISTEN, "/metrics")?;
        least = least.min((bench::cpu_seconds(pid)? - before) * 1e9);
        bytes = body.len();
    }
    Ok((least, bytes))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IcountResult {
    pub release: String,
    /// Configuration labels in the order measured (`OFF` first).
    pub configurations: Vec<String>,
    pub measured: Vec<Measured>,
    pub programs: Vec<ProgramCost>,
    /// Measured in this boot only when its configurations include the default.
    pub daemon: Option<DaemonCost>,
    /// How many configurations there are, the floor included (a boot of one
    /// configuration says how many boots the others take).
    #[serde(default)]
    pub configuration_count: usize,
    /// The labels of the default configuration and of the floor.
    #[serde(default)]
    pub default: String,
    #[serde(default)]
    pub floor: String,
    /// Per workload: `__access_remote_vm` calls per operation (the default's
    /// entry program's runs; a cmdline read is two), where the default ran.
    #[serde(default)]
    pub calls_per_op: Vec<(String, f64)>,
    /// The configurations measured that are the default with one family off:
    /// (label, family), the family's price.
    #[serde(default)]
    pub without: Vec<(String, String)>,
}

/// Calls of `__access_remote_vm` per operation of each workload: the runs of
/// the default's entry program (whichever mode attached), from the per-program pass.
fn calls_per_op(result: &IcountResult) -> Vec<(String, f64)> {
    use remote_vm_common::{Point, registry::Family};
    if !result.configurations.iter().any(|c| c == bench::DEFAULT) {
        return Vec::new();
    }
    // The kernel keeps the first 15 bytes of a program's name.
    let entries: Vec<&str> = Family::AccessRemoteVm
        .modes()
        .flat_map(|m| m.programs.iter())
        .filter(|p| p.point == Point::AccessRemoteVmEntry)
        .map(|p| &p.program[..p.program.len().min(15)])
        .collect();
    Workload::ALL
        .iter()
        .map(|w| {
            let calls = result
                .programs
                .iter()
                .filter(|p| p.configuration == bench::DEFAULT && p.workload == w.label() && entries.contains(&p.program.as_str()))
                .map(|p| p.runs_per_op)
                .sum();
            (w.label().to_string(), calls)
        })
        .collect()
}

/// Every loaded program's (id, name, runs, run time).
fn program_stats() -> Vec<(u32, String, u64, Duration)> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string(), p.run_count(), p.run_time()))
        .collect()
}

/// The smallest of three runs.
fn least(work: impl Fn() -> Result<f64>) -> Result<f64> {
    let mut least = f64::INFINITY;
    for _ in 0..3 {
        least = least.min(work()?);
    }
    Ok(least)
}

/// A process whose `/proc/PID/cmdline` is exactly `len` bytes (argv of
/// busybox `sh -c 'read x'` padded by `$0`), waiting for its stdin to close.
struct CmdlineTarget {
    child: Child,
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
        Ok(CmdlineTarget { child })
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

/// The workloads. Each measurement runs in a process of its own
/// (`rvm-testkit icount-op`, a fresh exec): the cost of a fault or an mmap
/// depends on the measuring process's address space (in the long-lived bench
/// process a page fault cost 7990 instructions in some boots and 8056.5 in
/// others, as its mappings changed under it), and a fresh exec has the same
/// one every time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    RemoteRead,
    CmdlineRead,
    PageFault,
    MmapLoop,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::RemoteRead, Workload::CmdlineRead, Workload::PageFault, Workload::MmapLoop];

    /// As the report shows it.
    pub fn label(self) -> &'static str {
        match self {
            Workload::RemoteRead => "remote read: 4 KiB pread of /proc/PID/mem",
            Workload::CmdlineRead => "remote read: 64-byte /proc/PID/cmdline",
            Workload::PageFault => "page fault (4 KiB pages, 4 MiB at a time)",
            Workload::MmapLoop => "mmap + fault + munmap of one page",
        }
    }

    /// The loop's length at `scale` (`rounds` of the page-fault workload).
    fn length(self, scale: f64) -> usize {
        let base = match self {
            Workload::RemoteRead => 2000.0,
            // A cmdline read is a third of a 4 KiB one: three times the reads
            // keep a timer tick more or less within 0.2 % of a run.
            Workload::CmdlineRead => 6000.0,
            Workload::PageFault => 4.0,
            // The mmap loop frees a page each time, and the deferred work that
            // follows (RCU, the page allocator's batches) lands in whichever
            // run is going; 5000 iterations keep that within 0.1 % of a run.
            Workload::MmapLoop => 5000.0,
        };
        ((base * scale) as usize).max(1)
    }

    /// Operations in a loop of `length`.
    fn ops(self, length: usize) -> f64 {
        match self {
            Workload::PageFault => (length * (4 << 20) / PAGE) as f64,
            _ => length as f64,
        }
    }
}

/// One measurement, in the process `rvm-testkit icount-op` starts.
#[derive(Debug, clap::Args)]
pub struct OpArgs {
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// The loop's length.
    #[arg(long)]
    pub length: usize,
    /// The remote reads' target process.
    #[arg(long, default_value_t = 0)]
    pub pid: u32,
    /// Its resident pages (`/proc/PID/mem` reads go round them).
    #[arg(long, default_value_t = 0)]
    pub addr: u64,
    #[arg(long, default_value_t = 1)]
    pub pages: usize,
    /// Also what every loaded BPF program ran during the loop (the kernel's
    /// run-time statistics, switched on by the caller): the process's own
    /// start and exit are not in it.
    #[arg(long)]
    pub programs: bool,
}

/// What `rvm-testkit icount-op` prints: one JSON line.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OpResult {
    pub per_op: f64,
    /// (kernel name, runs, run time in ns) of each program that ran in the loop.
    pub programs: Vec<(String, u64, u64)>,
}

/// Runs one measurement: guest nanoseconds (= instructions) per operation.
pub fn op_main(a: &OpArgs) -> Result<OpResult> {
    // Opened before the programs are sampled, so what is sampled is the loop
    // (and, for the page-fault and mmap loops, their few set-up mappings).
    let file = match a.workload {
        Workload::RemoteRead => Some(File::open(format!("/proc/{}/mem", a.pid)).context("open /proc/PID/mem")?),
        Workload::CmdlineRead => Some(File::open(format!("/proc/{}/cmdline", a.pid)).context("open /proc/PID/cmdline")?),
        _ => None,
    };
    let mut buf = vec![0u8; PAGE];
    buf.fill(1); // faulted in before the loop
    let before = if a.programs { program_stats() } else { Vec::new() };
    let per_op = match (a.workload, &file) {
        (Workload::RemoteRead, Some(mem)) => bench::remote_reads_at(mem, a.addr, a.pages, a.length)?,
        (Workload::CmdlineRead, Some(file)) => {
            let mut empty = 0usize;
            let t = Instant::now();
            for _ in 0..a.length {
                if !matches!(file.read_at(&mut buf, 0), Ok(n) if n > 0) {
                    empty += 1;
                }
            }
            let ns = t.elapsed().as_nanos() as f64 / a.length as f64;
            anyhow::ensure!(empty == 0, "{empty} of {} reads of /proc/{}/cmdline returned nothing", a.length, a.pid);
            ns
        }
        (Workload::PageFault, _) => bench::page_faults(a.length)?,
        (Workload::MmapLoop, _) => bench::mmap_loop(a.length)?,
        _ => anyhow::bail!("no file for {:?}", a.workload),
    };
    anyhow::ensure!(per_op.is_finite() && per_op > 0.0, "{:?}: no figure ({per_op})", a.workload);
    let mut programs = Vec::new();
    if a.programs {
        for (id, name, runs, time) in program_stats() {
            let Some((_, _, runs0, time0)) = before.iter().find(|(i, ..)| *i == id) else {
                continue;
            };
            let runs = runs.saturating_sub(*runs0);
            if runs > 0 {
                programs.push((name, runs, time.saturating_sub(*time0).as_nanos() as u64));
            }
        }
    }
    Ok(OpResult { per_op, programs })
}

/// One measurement in a fresh process (see `Workload`).
fn fresh(w: Workload, length: usize, programs: bool, target: &Target, cmdline: &CmdlineTarget) -> Result<OpResult> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("icount-op")
        .args(["--workload", clap::ValueEnum::to_possible_value(&w).context("a workload name")?.get_name()])
        .args(["--length", &length.to_string()]);
    if programs {
        cmd.arg("--programs");
    }
    match w {
        Workload::RemoteRead => {
            cmd.args(["--pid", &target.pid().to_string()])
                .args(["--addr", &target.layout.resident.to_string()])
                .args(["--pages", &target.layout.resident_pages.to_string()]);
        }
        Workload::CmdlineRead => {
            cmd.args(["--pid", &cmdline.child.id().to_string()]);
        }
        Workload::PageFault | Workload::MmapLoop => {}
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("run icount-op")?;
    anyhow::ensure!(out.status.success(), "icount-op {w:?}: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let r: OpResult = serde_json::from_str(text.trim()).with_context(|| format!("icount-op {w:?} printed {text:?}"))?;
    Ok(r)
}

/// `threads`: also measure a render with 1 000 and 10 000 more idle threads
/// (`cargo xtask bench --icount --threads`; a minute more per boot).
///
/// `only`: this boot measures one configuration (its index in
/// `bench::configurations()`) and "off", and the daemon's own cost only when
/// that configuration is the default: on kernels where a function switched
/// between a kprobe and a BPF trampoline within a boot oopses (the 7.3.4 test
/// images, docs/probes-and-kernels.md), each configuration gets a boot of its
/// own, and nothing else is attached in it, not even for the warm-up start,
/// but on the default's hooks, which no configuration moves to a kprobe:
/// `check` (which names them) and the floor's empty programs before each "off".
pub fn run(daemon: &str, scale: f64, threads: bool, only: Option<usize>) -> Result<IcountResult> {
    let target = Target::spawn(64, 1)?;
    let cmdline = CmdlineTarget::spawn(64)?;
    let work = |w: Workload| fresh(w, w.length(scale), false, &target, &cmdline).map(|r| r.per_op);
    let mut result = IcountResult {
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        ..Default::default()
    };
    let measure = |configuration: &str, result: &mut IcountResult| -> Result<()> {
        for w in Workload::ALL {
            work(w)?; // warm: the first run after a start also translates new code
            let per_op = least(|| work(w))?;
            println!("icount: [{configuration}] {}: {per_op:.1} instructions", w.label());
            result.measured.push(Measured {
                configuration: configuration.to_string(),
                workload: w.label().to_string(),
                per_op,
            });
        }
        Ok(())
    };
    let all = bench::configurations();
    // The daemon's configurations, then the floor.
    result.configuration_count = all.len() + 1;
    let floor_index = all.len();
    let chosen: Vec<(String, String)> = match only {
        None => all.into_iter().filter(|(label, _)| !bench::only_when_named(label)).collect(),
        Some(i) if i == floor_index => Vec::new(),
        Some(i) => vec![all.get(i).cloned().with_context(|| format!("no configuration {i} (there are {})", floor_index + 1))?],
    };
    let with_floor = only.is_none_or(|i| i == floor_index);
    let hooks = default_hooks(daemon)?;
    let btf = aya_obj::btf::Btf::from_sys_fs().context("the kernel's BTF")?;
    let floor = || -> Result<Vec<std::os::fd::OwnedFd>> {
        let mut attached = Vec::new();
        for h in &hooks {
            attached.extend(crate::allows::attach_empty(&btf, h)?);
        }
        Ok(attached)
    };
    // "Off" is measured in the state every configuration runs in. On the
    // 7.3.4 test images a 4 KiB /proc/PID/mem read and a 64-byte cmdline read
    // each cost up to 1137 instructions more per read, the same for both,
    // after the daemon stops (and in some fresh boots) than while any program
    // is attached; page faults and the mmap loop do not move. Waiting for the
    // last program to be freed, 2 s more, then attaching and detaching the
    // floor's empty programs brings "off" to the attached state's figure
    // (docs/benchmarks.md: what was tried). The report checks it: the
    // default's and the floor's instructions per call must agree between
    // the two reads.
    let settled_off = |label: &str, result: &mut IcountResult| -> Result<()> {
        let t = Instant::now();
        while aya::programs::loaded_programs().flatten().next().is_some() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "BPF programs still loaded 60 s after the daemon stopped");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        drop(floor()?);
        measure(label, result)?;
        result.configurations.push(label.to_string());
        Ok(())
    };
    // Whatever a first daemon start leaves behind in the kernel (BPF memory,
    // caches) is there before "off" is measured too: start and stop it once
    // first, and measure "off" again at the end to show the state held.
    // (The floor's boot warms with the default: the same trampolines.)
    let warm = chosen.first().filter(|_| only.is_some()).map_or("", |c| c.1.as_str());
    drop(Daemon::start(daemon, warm)?);
    settled_off(OFF, &mut result)?;
    for (label, config) in chosen {
        let d = Daemon::start(daemon, &config)?;
        measure(&label, &mut result)?;
        programs_pass(&label, scale, &target, &cmdline, &mut result)?;
        drop(d);
        result.configurations.push(label);
    }
    if with_floor {
        let attached = floor()?;
        println!(
            "icount: [{FLOOR}] {}",
            hooks.iter().map(|h| format!("{} {}", h.kind(), h.target())).collect::<Vec<_>>().join(", ")
        );
        measure(FLOOR, &mut result)?;
        programs_pass(FLOOR, scale, &target, &cmdline, &mut result)?;
        drop(attached);
        result.configurations.push(FLOOR.to_string());
    }
    // In a boot of one configuration too (the report gives its drift).
    settled_off(OFF_AGAIN, &mut result)?;
    if result.configurations.iter().any(|c| c == bench::DEFAULT) {
        result.daemon = Some(daemon_cost(daemon, &target, scale, threads)?);
    }
    result.default = bench::DEFAULT.to_string();
    result.floor = FLOOR.to_string();
    result.without = result
        .configurations
        .iter()
        .filter_map(|c| Some((c.clone(), c.strip_prefix(bench::WITHOUT)?.to_string())))
        .collect();
    result.calls_per_op = calls_per_op(&result);
    Ok(result)
}

/// Per program: the kernel's run-time statistics during one more run of each
/// workload (switched on only for this pass).
fn programs_pass(label: &str, scale: f64, target: &Target, cmdline: &CmdlineTarget, result: &mut IcountResult) -> Result<()> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    for w in Workload::ALL {
        let name = w.label();
        let r = fresh(w, w.length(scale), true, target, cmdline)?;
        for (program, runs, ns) in r.programs {
            let per_run = ns as f64 / runs as f64;
            let runs_per_op = runs as f64 / w.ops(w.length(scale));
            println!("icount: [{label}] {name}: {program}: {runs_per_op:.3} runs per op, {per_run:.1} instructions per run");
            result.programs.push(ProgramCost {
                configuration: label.to_string(),
                workload: name.to_string(),
                program,
                runs_per_op,
                instructions_per_run: per_run,
            });
        }
    }
    drop(stats);
    Ok(())
}

/// Every hook the daemon's default configuration attaches on this kernel:
/// the modes `check --format json` says attached, their programs' hooks from
/// the registry.
fn default_hooks(daemon: &str) -> Result<Vec<remote_vm_common::registry::Hook>> {
    use remote_vm_common::registry::Family;
    let out = Command::new(daemon).args(["check", "--format", "json"]).output().context("run check --format json")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("check --format json printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    let mut hooks = Vec::new();
    let mut seen = Vec::new();
    for p in json["probes"].as_array().into_iter().flatten().filter(|p| p["attached"] == true) {
        let (family, mode) = (p["family"].as_str().unwrap_or(""), p["mode"].as_str().unwrap_or(""));
        if seen.contains(&(family, mode)) {
            continue;
        }
        seen.push((family, mode));
        let spec = Family::from_name(family)
            .and_then(|f| f.mode(mode))
            .with_context(|| format!("check names {family} mode {mode}, which the registry does not have"))?;
        // One program per hook (a tracepoint mode has one program per argument
        // layout, and only one of them attaches).
        for p in spec.programs {
            if !hooks.iter().any(|h: &remote_vm_common::registry::Hook| (h.kind(), h.target()) == (p.hook.kind(), p.hook.target())) {
                hooks.push(p.hook);
            }
        }
    }
    anyhow::ensure!(!hooks.is_empty(), "check says nothing attached");
    Ok(hooks)
}

/// The daemon in its default configuration: every family populated by one run
/// of the classification workload, then CPU and RSS at a 1 s scrape under 500
/// remote reads a second, then 20 scrapes' CPU each.
fn daemon_cost(daemon: &str, target: &Target, scale: f64, threads: bool) -> Result<DaemonCost> {
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", "8");
    let d = Daemon::start(daemon, "")?;
    let pid = d.0.id();
    let populated = Target::spawn(4, 16)?;
    classes::run(&populated, &Counts::for_layout(&populated.layout))?;
    let seconds = ((10.0 * scale) as u64).max(2);
    let cpu_percent = bench::cpu_at_one_scrape_a_second(pid, target, seconds)?;
    let rss_kb = bench::rss_kb(pid)?;
    let (scrape, metrics_bytes) = least_scrape(pid, 20)?;
    println!(
        "icount: daemon at a 1 s scrape: {cpu_percent:.3} % of a core over {seconds} s, RSS {rss_kb} kB; {scrape:.0} instructions per scrape ({metrics_bytes} bytes)"
    );
    // The guest's 1 GiB caps threads-max below 10 000.
    let _ = std::fs::write("/proc/sys/kernel/threads-max", "65536");
    let mut with_threads = Vec::new();
    for n in [1_000u64, 10_000].into_iter().filter(|_| threads) {
        let idle = IdleThreads::spawn(n as usize)?;
        let (least, _) = least_scrape(pid, 10)?;
        drop(idle);
        println!("icount: with {n} more idle threads: {least:.0} instructions per scrape");
        with_threads.push((n, least));
    }
    drop(populated);
    drop(d);
    Ok(DaemonCost {
        cpu_percent,
        seconds,
        rss_kb,
        scrape_instructions: scrape,
        metrics_bytes,
        scrape_instructions_with_threads: with_threads,
    })
}
