//! `cargo xtask abuse-soak`: the daemon's HTTP layer against what an
//! unprivileged local user can do, natively against the host binary: TLS and
//! basic auth on, slowloris, a connect flood, pipelined scrapes and a
//! bad-password flood all at once (`rvm-testkit abuse`), while a scraper on
//! this host, one from another address and an operator on the Unix socket
//! poll once a second. It fails on any failed scrape, a daemon that died or
//! was replaced, or descriptors past the daemon's bound; the table goes to
//! `target/abuse-soak/report.md` (`cargo xtask test` runs 60 s, `--seconds
//! 600` the full soak).
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{
    promtest::Guard,
    util::say,
    webtest::{self, PASSWORD, USER},
};

/// The soak's `[web] max_connections` (the default).
const MAX_CONNECTIONS: u64 = remote_vm_common::MAX_CONNECTIONS_DEFAULT as u64;
/// The address of this host the second scraper comes from (added to `lo`
/// for the run: every loopback address is one peer to the daemon).
const OTHER: &str = "198.51.100.91";

pub struct Args {
    pub seconds: u64,
}

/// `ip addr add OTHER/32 dev lo` for the life of the value.
struct OtherAddress;

impl OtherAddress {
    fn add() -> Result<OtherAddress> {
        let _ = Command::new("ip").args(["addr", "del", &format!("{OTHER}/32"), "dev", "lo"]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["addr", "add", &format!("{OTHER}/32"), "dev", "lo"]).status().context("run ip (iproute2)")?;
        ensure!(ok.success(), "ip addr add {OTHER}/32 dev lo failed");
        Ok(OtherAddress)
    }
}

impl Drop for OtherAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["addr", "del", &format!("{OTHER}/32"), "dev", "lo"]).status();
    }
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let dir = root.join("target/abuse-soak");
    // The test PKI; this web config without client certificates, so that
    // anyone can start a handshake: TLS and basic auth only.
    let full = webtest::write_pki(&dir)?;
    let yml = dir.join("abuse.yml");
    let text: String = std::fs::read_to_string(&full)?.lines().filter(|l| !l.contains("client_")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&yml, text)?;
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("[web]\nmax_connections = {MAX_CONNECTIONS}\nheader_timeout_seconds = 5\n"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let socket = dir.join("rvm.sock");
    let _other = OtherAddress::add()?;
    let daemon = Command::new(root.join("target/release/remote-vm-daemon"))
        .args(["run", "--web.listen-address", &addr, "--log.level", "warn", "--config"])
        .arg(&config)
        .arg("--web.socket")
        .arg(&socket)
        .arg("--web.config.file")
        .arg(&yml)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log"))?)
        .spawn()
        .context("start the daemon")?;
    let pid = daemon.id();
    let mut daemon = Guard(daemon);
    let socket_url = format!("unix:{}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(remote_vm_prom::get(&socket_url, "/healthz"), Ok((200, _))) {
        ensure!(Instant::now() < deadline, "the daemon did not serve within 30 s: {}", std::fs::read_to_string(dir.join("daemon.log"))?);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Settled: the first render's descriptors come and go.
    std::thread::sleep(Duration::from_millis(500));
    let base = fds(pid);
    let dropped = || -> Option<f64> {
        let (_, body) = remote_vm_prom::get(&socket_url, "/metrics").ok()?;
        remote_vm_prom::Scrape::parse(&body).ok()?.value(remote_vm_common::catalog::STALL_EVENTS_DROPPED.name, &[])
    };
    let dropped_before = dropped();
    let bound = base + MAX_CONNECTIONS + (remote_vm_common::WEB_FD_MARGIN + remote_vm_common::RENDER_FDS) as u64;
    say!("abuse-soak: {} s against {addr} (TLS and basic auth, max_connections {MAX_CONNECTIONS}): slowloris, a connect flood, pipelined scrapes, wrong passwords; scrapers from this host, from {OTHER} and on the Unix socket", args.seconds);
    let out = Command::new(root.join("target/release/rvm-testkit"))
        .args(["abuse", "--addr", &addr, "--other", OTHER, "--user", USER, "--pid", &pid.to_string(), "--seconds", &args.seconds.to_string()])
        .arg("--socket")
        .arg(&socket)
        .arg("--ca")
        .arg(dir.join("ca.crt"))
        .arg("--password-file")
        .arg(&password_file)
        .output()
        .context("run rvm-testkit abuse")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("abuse-result "))
        .and_then(|j| serde_json::from_str(j).ok())
        .with_context(|| format!("no abuse-result from rvm-testkit: {stdout}{}", String::from_utf8_lossy(&out.stderr)))?;
    let still_ours = daemon.0.try_wait()?.is_none();
    let dropped = match (dropped_before, dropped()) {
        (Some(a), Some(b)) => format!("{}", b - a),
        _ => "not exported here (the host's remote-access probes do not attach: no stall events)".to_string(),
    };
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let d = &report["daemon"];
    let a = &report["attacks"];
    let row = |who: &str, s: &Value| format!("| {who} | {} | {} | {} ms |\n", n(&s["ok"]), n(&s["failed"]), n(&s["slowest_ms"]));
    let mut table = format!(
        "Abuse soak, {} s, `cargo xtask abuse-soak` on Linux {} (native host binary; TLS and basic auth, max_connections {MAX_CONNECTIONS}, header_timeout_seconds 5):\n\n\
         | scraper (once a second, from 3 s before the attacks) | answered | failed | slowest |\n|---|---|---|---|\n",
        args.seconds,
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    table += &row("this host, kept-alive TLS + password", &report["local"]);
    table += &row(&format!("another address ({OTHER}), kept-alive TLS + password"), &report["remote"]);
    table += &row("operator: `/stalls` on the Unix socket", &report["socket"]);
    table += &format!(
        "\n| attack | |\n|---|---|\n| slowloris ({} connections, a byte every 0.5 s) | reopened {} times |\n| connect flood (1,000/s) | {} connections |\n| pipelined `/metrics` (16 at once) | {} answers |\n| wrong passwords (8 threads) | {} answered 401, {} answered 429 at once, {} other |\n",
        100,
        n(&a["slowloris_reopened"]),
        n(&a["connects"]),
        n(&a["pipelined_answers"]),
        n(&a["bad_password_401"]),
        n(&a["bad_password_429"]),
        n(&a["bad_password_other"])
    );
    let cpu = d["cpu_seconds"].as_f64().unwrap_or(0.0);
    table += &format!(
        "\n| daemon | |\n|---|---|\n| restarts | {} |\n| descriptors | {} at start, peak {} (bound {bound}: start + max_connections + {} + {}) |\n| peak RSS | {:.1} MiB |\n| CPU | {:.1} s ({:.0} % of a core) |\n| stall events dropped | {dropped} |\n",
        if still_ours && d["alive"] == true { 0 } else { 1 },
        n(&d["fds_at_start"]),
        n(&d["fds_peak"]),
        remote_vm_common::WEB_FD_MARGIN,
        remote_vm_common::RENDER_FDS,
        n(&d["rss_peak_kib"]) as f64 / 1024.0,
        cpu,
        cpu / args.seconds as f64 * 100.0
    );
    std::fs::write(dir.join("report.md"), &table)?;
    say!("abuse-soak: report ({}):\n{table}", dir.join("report.md").display());
    let mut problems = Vec::new();
    for who in ["local", "remote", "socket"] {
        if n(&report[who]["failed"]) > 0 || n(&report[who]["ok"]) == 0 {
            problems.push(format!("{who} scrapes failed: {}", report[who]["failures"]));
        }
    }
    if !still_ours || d["alive"] != true {
        problems.push("the daemon died".to_string());
    }
    if n(&d["fds_peak"]) > bound {
        problems.push(format!("{} descriptors, past the bound {bound}", n(&d["fds_peak"])));
    }
    if n(&a["connects"]) == 0 || n(&a["bad_password_401"]) == 0 {
        problems.push("an attack did not run".to_string());
    }
    if !problems.is_empty() {
        bail!("abuse-soak: {}", problems.join("; "));
    }
    Ok(())
}
