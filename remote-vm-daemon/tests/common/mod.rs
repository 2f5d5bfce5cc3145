//! A daemon `run` for the host tests: its config, an optional wrapper command,
//! its log in a file, and what /proc says about it.
#![allow(dead_code)]
use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use remote_vm_testkit::prom;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_remote-vm-daemon");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether `/healthz` answers 200 at `addr`.
pub fn healthz_ok(addr: &str) -> bool {
    matches!(prom::get(addr, "/healthz"), Ok((200, _)))
}

pub struct Running {
    pub child: Child,
    pub addr: String,
    pub log: std::path::PathBuf,
    pub config: std::path::PathBuf,
}

impl Running {
    /// `run` with `config` as its config file, under `wrapper` (e.g.
    /// `prlimit --nofile=64 --`), its log in a file.
    pub fn start(name: &str, config: &str, wrapper: &[&str]) -> Running {
        Running::start_with(name, config, wrapper, &[])
    }

    /// `start` with more `run` flags after the usual ones.
    pub fn start_with(name: &str, config: &str, wrapper: &[&str], flags: &[&str]) -> Running {
        let mut r = Running::spawn(name, config, wrapper, flags);
        r.wait_ready(healthz_ok);
        r
    }

    /// The daemon started, not waited for.
    pub fn spawn(name: &str, config: &str, wrapper: &[&str], flags: &[&str]) -> Running {
        let dir = std::env::temp_dir().join(format!("rvm-host-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("daemon.log");
        let addr = format!("127.0.0.1:{}", free_port());
        let (program, args) = match wrapper.split_first() {
            Some((p, rest)) => (*p, rest.iter().copied().chain([DAEMON]).collect::<Vec<_>>()),
            None => (DAEMON, Vec::new()),
        };
        let child = Command::new(program)
            .args(args)
            .args(["run", "--listen", &addr, "--config"])
            .arg(&config_path)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn daemon");
        Running { child, addr, log, config: config_path }
    }

    /// Waits until `ready(addr)` (30 s at most; panics with the log if the
    /// daemon exits first).
    pub fn wait_ready(&mut self, ready: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&self.addr) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited early: {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "daemon did not serve within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory of its config (and whatever a test puts beside it).
    pub fn dir(&self) -> std::path::PathBuf {
        self.config.parent().unwrap().to_path_buf()
    }

    /// Waits up to `within` for `want` in the log.
    pub fn wait_log(&self, within: Duration, want: &str) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log_text().contains(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The daemon's process (a wrapper execs it: same pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / tick
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_lines(&self) -> usize {
        self.log_text().lines().count()
    }

    pub fn metrics_ok(&self) -> bool {
        matches!(prom::get(&self.addr, "/metrics"), Ok((200, body)) if body.contains(remote_vm_common::catalog::BUILD_INFO.name))
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap().code().unwrap_or(-1)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished `wrk` run's request count, after asserting it ran cleanly: exit 0,
/// no non-2xx answer, no socket error.
#[allow(dead_code)] // not every test file runs wrk
pub fn wrk_requests(out: &std::process::Output) -> u64 {
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!report.contains("Non-2xx or 3xx responses"), "{report}");
    assert!(!report.contains("Socket errors"), "{report}");
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count from wrk: {report}"));
    assert!(requests > 0, "{report}");
    requests
}

/// Whether the server closed `s` (EOF or reset) within `within`; any answer
/// before the close (a 408, say) is read past.
pub fn closed_by_server(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}
