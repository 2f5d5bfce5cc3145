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

/// A port for a daemon to listen on, free when chosen. It is taken below the
/// kernel's ephemeral range (`net.ipv4.ip_local_port_range`), so no client
/// connection of a test running beside it can be given it in the meantime (a
/// port 0 bind hands out ports from that range: CI's reload test lost
/// 127.0.0.1:35093 that way), and each call of this process gets another one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|l| l.parse::<u16>().ok()))
        .unwrap_or(32768);
    const SPAN: u16 = 8192;
    if low > SPAN + 1024 {
        let start = (std::process::id() % u32::from(SPAN)) as u16;
        for _ in 0..SPAN {
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
            let port = low - SPAN + (start + i) % SPAN;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
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
    /// Its Unix socket (`--web.socket`).
    pub socket: std::path::PathBuf,
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
        // A Unix socket of its own (tests run side by side), unless the flags name one.
        let socket = dir.join("rvm.sock");
        let own_socket: Vec<&std::ffi::OsStr> =
            if flags.contains(&"--web.socket") { Vec::new() } else { vec!["--web.socket".as_ref(), socket.as_os_str()] };
        let child = Command::new(program)
            .args(args)
            .args(["run", "--listen", &addr, "--config"])
            .arg(&config_path)
            .args(own_socket)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn daemon");
        Running { child, addr, log, config: config_path, socket }
    }

    /// Its Unix socket as a base URL (`unix:/PATH`).
    pub fn socket_url(&self) -> String {
        format!("unix:{}", self.socket.display())
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

/// An address of this host that is not a loopback one (every loopback
/// address is one peer to the daemon): `ip addr add ADDR/32 dev lo` for the
/// life of the value. Each test takes its own (TEST-NET-2, 198.51.100.0/24).
pub struct OtherAddress(pub std::net::Ipv4Addr);

impl OtherAddress {
    pub fn add(last: u8) -> OtherAddress {
        let ip = std::net::Ipv4Addr::new(198, 51, 100, last);
        let _ = Command::new("ip").args(["addr", "del", &format!("{ip}/32"), "dev", "lo"]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]).status().is_ok_and(|s| s.success());
        assert!(ok, "ip addr add {ip}/32 dev lo failed (the test needs root and iproute2)");
        OtherAddress(ip)
    }
}

impl Drop for OtherAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"]).status();
    }
}

/// A TCP connection to `addr` from the local address `from`.
pub fn connect_from(from: std::net::Ipv4Addr, addr: &str) -> std::net::TcpStream {
    remote_vm_testkit::abuse::connect_from(from, addr).unwrap_or_else(|e| panic!("{e:#}"))
}

impl Running {
    /// The daemon's open descriptors now.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }
}

/// With the shim (`build_shim`) preloaded: `BPF_MAP_LOOKUP_ELEM` fails with
/// EIO while the file this names exists...
pub const FAULT_LOOKUP_WHILE: &str = "RVM_FAULT_LOOKUP_WHILE";
/// ... and takes 3 s longer while the file this names exists (a render stuck
/// in a map read).
pub const STALL_LOOKUP_WHILE: &str = "RVM_STALL_LOOKUP_WHILE";

const SHIM: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BPF_MAP_LOOKUP_ELEM 1

typedef long (*syscall_fn)(long, ...);

static syscall_fn real_syscall(void) {
    static syscall_fn real;
    syscall_fn f = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
        __atomic_store_n(&real, f, __ATOMIC_RELEASE);
    }
    return f;
}

long syscall(long nr, ...) {
    va_list ap;
    long a[6];
    va_start(ap, nr);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (nr == SYS_bpf && a[0] == BPF_MAP_LOOKUP_ELEM) {
        const char *trigger = getenv("FAULT_LOOKUP_WHILE");
        if (trigger && access(trigger, F_OK) == 0) {
            errno = EIO;
            return -1;
        }
        const char *stall = getenv("STALL_LOOKUP_WHILE");
        if (stall && access(stall, F_OK) == 0)
            sleep(3);
    }
    return real_syscall()(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"#;

/// An LD_PRELOAD shim over glibc's `syscall()` (aya's way into `bpf(2)`) that
/// misbehaves on map lookups while a trigger file exists (see
/// `FAULT_LOOKUP_WHILE`, `STALL_LOOKUP_WHILE`), built into `dir`; `None` when
/// there is no `cc`.
pub fn build_shim(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    match Command::new("cc").arg("--version").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        other => assert!(other.unwrap().status.success(), "cc --version failed"),
    }
    let source = dir.join("fault.c");
    let shim = dir.join("fault.so");
    std::fs::write(&source, SHIM.replace("FAULT_LOOKUP_WHILE", FAULT_LOOKUP_WHILE).replace("STALL_LOOKUP_WHILE", STALL_LOOKUP_WHILE)).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    Some(shim)
}

