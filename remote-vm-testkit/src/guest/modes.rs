//! The modes that run no tests (`rvm.mode=serve|ab|bench`).
use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use remote_vm_common::catalog as cat;

use crate::{
    classes::{self, COUNTS},
    prom::{self, Scrape},
    workload::Target,
};

use super::harness::{DAEMON, Daemon, LISTEN, cmdline_arg};

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
    let r = crate::icount::run(DAEMON, scale)?;
    println!("icount-result {}", serde_json::to_string(&r)?);
    Ok(true)
}
