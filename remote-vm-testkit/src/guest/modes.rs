//! The modes that run no tests (`rvm.mode=serve|ab|bench`).
use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use remote_vm_common::catalog as cat;

use crate::{
    classes,
    prom::{self, Scrape},
    workload::Target,
};

use super::harness::{DAEMON, Daemon, LISTEN, SOCKET, cmdline_arg};

/// `rvm.mode=serve`: bring up eth0 (QEMU user networking forwards the host's port
/// to the guest's 19361), run the daemon on all addresses and the classification
/// workload in a loop until the host stops the VM.
pub(super) fn serve() -> Result<bool> {
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
    // With the opt-ins the dashboards show (every panel must have data in the
    // dashboard test): probe costs and the VMA-step probe.
    let config = format!(
        "listen = \"0.0.0.0:19361\"\nself_stats = true\n[probes]\n{} = \"{}\"\n",
        remote_vm_common::Family::LockVmaUnderRcu.name(),
        remote_vm_common::Family::LockVmaUnderRcu.spec().opt_in[0].name
    );
    std::fs::write("/tmp/remote-vm.toml", config)?;
    let mut cmd = Command::new(DAEMON);
    cmd.args(["run", "--config", "/tmp/remote-vm.toml"]);
    // rvm.serve_auth=USER:PASSWORD: basic auth over TCP (top's test reads
    // /stalls from the host with it).
    if let Some((user, password)) = cmdline_arg("rvm.serve_auth").as_deref().and_then(|a| a.split_once(':')) {
        let hash = bcrypt::hash(password, 4)?;
        std::fs::write("/tmp/web-config.yml", format!("basic_auth_users:\n  {user}: '{hash}'\n"))?;
        cmd.args(["--web.config.file", "/tmp/web-config.yml"]);
    }
    let mut daemon = cmd.stdout(Stdio::null()).spawn().context("spawn daemon")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready on its Unix socket (no password asked there).
    while !matches!(prom::get(SOCKET, "/healthz"), Ok((200, _))) {
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
    if cmdline_arg("rvm.serve_workload").as_deref() == Some("stall") {
        return stall_loop(&mut daemon);
    }
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
        classes::run(&target, &classes::Counts::for_layout(&target.layout))?;
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

/// `rvm.serve_workload=stall`: stalls the host can watch (`top`'s tmux test),
/// one after the other: a thread of a target holds its mmap_lock for write
/// for ≥ `rvm.stall_hold_ms` (default 8000) while a reader thread `rd-cmdline`
/// waits on its cmdline. Before each read the console says who is who:
/// `vmtest: stall-truth reader=PID/TID:COMM target=PID:COMM holder=TID:COMM
/// doing=SYSCALL:LENGTH:ADDRESS`, then
/// `vmtest: stall-waiting`; after it `vmtest: stall-done`.
fn stall_loop(daemon: &mut std::process::Child) -> Result<bool> {
    let hold_ms = cmdline_arg("rvm.stall_hold_ms").and_then(|v| v.parse().ok()).unwrap_or(8000);
    let mut target = crate::stall::StallTarget::spawn_merge(hold_ms)?;
    let pid = target.pid();
    loop {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::Builder::new().name("rd-cmdline".into()).spawn(move || -> Result<u64> {
            // SAFETY: no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            go_rx.recv()?;
            crate::stall::read_cmdline(pid)
        })?;
        let tid = tid_rx.recv()?;
        target.start_hold()?;
        std::thread::sleep(Duration::from_millis(100));
        let comm = |p: String| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
        println!(
            "vmtest: stall-truth reader={}/{tid}:{} target={pid}:{} holder={}:{} doing=mprotect:{}:{:#x}",
            std::process::id(),
            comm(format!("/proc/self/task/{tid}/comm")),
            comm(format!("/proc/{pid}/comm")),
            target.tid,
            comm(format!("/proc/{pid}/task/{}/comm", target.tid)),
            target.range.map_or(0, |(_, len)| len),
            target.range.map_or(0, |(addr, _)| addr),
        );
        go_tx.send(())?;
        println!("vmtest: stall-waiting");
        // `top` with no flags, here: it reads the Unix socket. Its frame goes
        // to the console, each line as `vmtest: top-socket| LINE`.
        let top = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            match Command::new(DAEMON).args(["top", "--once", "--interval", "0.5"]).output() {
                Ok(out) => {
                    for line in String::from_utf8_lossy(&out.stdout).lines() {
                        println!("vmtest: top-socket| {line}");
                    }
                    println!("vmtest: top-socket-exit {}", out.status.code().unwrap_or(-1));
                }
                Err(e) => println!("vmtest: top-socket-exit cannot run: {e}"),
            }
        });
        let took = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        let _ = top.join();
        let held = target.end_hold()?;
        println!("vmtest: stall-done held {:.2} s, read took {:.2} s", held as f64 / 1e9, took as f64 / 1e9);
        if let Some(status) = daemon.try_wait()? {
            bail!("daemon exited: {status}");
        }
    }
}

/// `rvm.mode=ab rvm.ab=key=value,…`: the contention workload with the daemon
/// attached; prints `ab-result {json}` with the workload's ground truth and the
/// daemon's metrics before and after.
pub(super) fn ab() -> Result<bool> {
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
    // Every stall of the run kept for the report (who held the lock): the
    // most the daemon keeps (the default workload stalls some tens of times).
    let mut daemon = Daemon::start(&format!("[stalls]\nkeep = {}\n", remote_vm_common::STALLS_KEEP_MAX), &[])?;
    let before = Scrape::fetch(LISTEN)?;
    // Waits in progress, sampled while the workload runs: the longest seen and
    // the most readers waiting at once.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let (mut oldest, mut waiters, mut samples) = (0.0f64, 0.0f64, 0u64);
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = Scrape::fetch(LISTEN) {
                    samples += 1;
                    oldest = oldest.max(s.value(cat::MMAP_LOCK_OLDEST_WAIT.name, &[]).unwrap_or(0.0));
                    waiters = waiters.max(s.value(cat::MMAP_LOCK_WAITERS.name, &[]).unwrap_or(0.0));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            serde_json::json!({"oldest_wait_seconds": oldest, "waiters": waiters, "samples": samples})
        })
    };
    let result = crate::stress::run(&args, true)?;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let in_progress = sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let after = Scrape::fetch(LISTEN)?;
    // A stall reaches `/stalls` at most `STALL_POLL_MS` after its wait ended.
    std::thread::sleep(Duration::from_millis(2 * remote_vm_common::STALL_POLL_MS));
    let stalls: serde_json::Value = serde_json::from_str(&prom::get(SOCKET, "/stalls")?.1)?;
    let keep = |s: &Scrape| -> BTreeMap<String, f64> {
        s.samples.iter().filter(|(k, _)| k.starts_with(cat::PREFIX)).map(|(k, v)| (k.clone(), *v)).collect()
    };
    let out = serde_json::json!({
        "kernel": cmdline_arg("rvm.kernel").unwrap_or_default(),
        "release": std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        "workload": result,
        "before": keep(&before),
        "after": keep(&after),
        "in_progress_max": in_progress,
        "stalls": stalls["recent"],
        "stall_threshold_seconds": stalls["threshold_seconds"],
    });
    println!("ab-result {}", serde_json::to_string(&out)?);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let _ = daemon.child.wait();
    Ok(true)
}

/// `rvm.mode=bench rvm.bench=reps=N,scale=X,scrape_seconds=S`: the overhead
/// benchmark inside the VM; prints `bench-result {json}`.
pub(super) fn bench() -> Result<bool> {
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

/// `rvm.mode=icount` (`cargo xtask bench --icount`, QEMU `-icount shift=0`):
/// guest instructions per operation and per program run.
pub(super) fn icount() -> Result<bool> {
    let scale = cmdline_arg("rvm.scale").map_or(Ok(1.0), |v| v.parse())?;
    let threads = cmdline_arg("rvm.threads").as_deref() == Some("1");
    let only = cmdline_arg("rvm.icount_configuration")
        .map(|v| v.parse::<usize>().map_err(|e| anyhow::anyhow!("rvm.icount_configuration={v}: {e}")))
        .transpose()?;
    let r = crate::icount::run(DAEMON, scale, threads, only)?;
    println!("icount-result {}", serde_json::to_string(&r)?);
    Ok(true)
}
