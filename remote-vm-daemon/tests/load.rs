//! `/metrics` under a bounded wrk run on loopback: no errors, no growth. The
//! scrape latency percentiles are reported (not asserted: timings are for
//! benchmarks). Host test: needs root and wrk (`cargo xtask test` installs it).
mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use remote_vm_testkit::prom;

const DAEMON: &str = env!("CARGO_BIN_EXE_remote-vm-daemon");

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root, BPF and wrk; run by cargo xtask test"]
fn metrics_under_load() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    // wrk's 64 connections come from one address, which may hold at most a
    // quarter of max_connections without a request in progress (as they are
    // between requests): room for all of them.
    let config = std::env::temp_dir().join(format!("rvm-load-{}.toml", std::process::id()));
    std::fs::write(&config, "[web]\nmax_connections = 256\n").unwrap();
    let daemon = Daemon(
        Command::new(DAEMON)
            .args(["run", "--listen", &addr, "--log-level", "warn", "--web.socket", "", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(prom::get(&addr, "/healthz"), Ok((200, _))) {
        assert!(Instant::now() < deadline, "daemon did not serve");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("http://{addr}/metrics");
    let wrk = |seconds: &str| {
        Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", &url])
            .output()
            .expect("wrk (Debian package wrk) must be installed")
    };
    // Warm up with the same 64 connections (their buffers are the working set),
    // then take the starting RSS: growth past it would be a leak.
    assert!(wrk("2").status.success());
    let pid = daemon.0.id();
    let rss_start = rss_kb(pid);
    let seconds = std::env::var("REMOTE_VM_WRK_SECONDS").unwrap_or_else(|_| "30".into());
    let out = wrk(&seconds);
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    let requests = common::wrk_requests(&out);
    let p99 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    let rss_end = rss_kb(pid);
    println!(
        "scrape load: {requests} requests in {seconds} s on 64 connections, p99 {p99}; RSS {rss_start} kB -> {rss_end} kB"
    );
    assert!(
        rss_end * 10 <= rss_start * 11,
        "RSS grew more than 10%: {rss_start} kB -> {rss_end} kB"
    );
    // Still serving correctly afterwards.
    assert_eq!(prom::get(&addr, "/healthz").unwrap().0, 200);
}
