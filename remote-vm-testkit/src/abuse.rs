//! `rvm-testkit abuse`: what an unprivileged local user can throw at the
//! daemon's HTTP layer, all at once, while scrapers poll it as Prometheus and
//! an operator would (`cargo xtask abuse-soak` starts the daemon with TLS and
//! basic auth and reads the JSON this prints):
//!
//! - slowloris: `SLOW` connections that send a TLS record header a byte every
//!   half second and never finish it, reopened when closed;
//! - a connect flood: `CONNECTS_PER_S` connections a second, each closed at once;
//! - pipelined scrapes: 16 `/metrics` requests written at once on one kept-alive
//!   connection (right password), answers read after, again and again;
//! - a bad-password flood: `BAD_PASSWORD_THREADS` threads asking `/metrics`
//!   with a wrong password over TLS, back to back.
//!
//! The scrapers, once a second each from `WARMUP` before the attacks (as
//! Prometheus scraped before an attack began), and each answer within
//! `SCRAPE_TIMEOUT` or it failed: a kept-alive TLS connection from this host (reopened when the
//! daemon closes it between scrapes, as Prometheus does), one from another
//! address (`--other`, an address of this host that is not a loopback one),
//! and `/stalls` on the Unix socket. The daemon's descriptors, RSS and CPU are
//! sampled once a second from /proc.
use std::{
    io::Write,
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pki::{self, Ask, KeptAlive, Outcome};

#[derive(clap::Args, Debug, Clone)]
pub struct AbuseArgs {
    /// The daemon's TLS address (127.0.0.1:PORT).
    #[arg(long)]
    pub addr: String,
    /// Another address of this host (not loopback) for the second scraper.
    #[arg(long)]
    pub other: Option<Ipv4Addr>,
    /// The daemon's Unix socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The CA of the daemon's certificate.
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub user: String,
    /// A file holding the right password.
    #[arg(long)]
    pub password_file: PathBuf,
    /// The daemon's pid (sampled from /proc).
    #[arg(long)]
    pub pid: u32,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

const SLOW: usize = 100;
const CONNECTS_PER_S: u64 = 1000;
const PIPELINED: usize = 16;
const BAD_PASSWORD_THREADS: usize = 8;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The scrapers start this long before the attacks.
const WARMUP: Duration = Duration::from_secs(3);

/// How one scraper fared.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Scrapes {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, as the client saw them.
    pub failures: Vec<String>,
    pub slowest_ms: u64,
}

impl Scrapes {
    pub(crate) fn record(&mut self, took: Duration, result: Result<u16>) {
        self.slowest_ms = self.slowest_ms.max(took.as_millis() as u64);
        match result {
            Ok(200) if took <= SCRAPE_TIMEOUT => self.ok += 1,
            other => {
                self.failed += 1;
                if self.failures.len() < 5 {
                    self.failures.push(match other {
                        Ok(s) => format!("HTTP {s} after {} ms", took.as_millis()),
                        Err(e) => format!("{e:#} after {} ms", took.as_millis()),
                    });
                }
            }
        }
    }
}

/// What the attackers did.
#[derive(Debug, Default, Serialize)]
pub struct Attacks {
    pub slowloris_reopened: u64,
    pub connects: u64,
    pub pipelined_answers: u64,
    pub bad_password_401: u64,
    pub bad_password_429: u64,
    pub bad_password_other: u64,
}

/// The daemon as /proc shows it.
#[derive(Debug, Default, Serialize)]
pub struct Daemon {
    pub alive: bool,
    #[serde(flatten)]
    pub usage: Usage,
}

/// What a process used over a soak, sampled from /proc.
#[derive(Debug, Default, Serialize)]
pub struct Usage {
    pub fds_at_start: u64,
    pub fds_peak: u64,
    pub rss_peak_kib: u64,
    pub cpu_seconds: f64,
}

impl Usage {
    /// One sample of the peaks.
    pub(crate) fn sample(&mut self, pid: u32) {
        self.fds_peak = self.fds_peak.max(fds(pid));
        self.rss_peak_kib = self.rss_peak_kib.max(rss_kib(pid));
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seconds: u64,
    pub local: Scrapes,
    pub remote: Option<Scrapes>,
    pub socket: Scrapes,
    pub attacks: Attacks,
    pub daemon: Daemon,
}

pub(crate) fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)) / tick
}

/// A TCP connection from `from` (or any local address).
fn connect(from: Option<Ipv4Addr>, addr: &str) -> Result<TcpStream> {
    match from {
        Some(from) => connect_from(from, addr),
        None => Ok(TcpStream::connect(addr)?),
    }
}

/// A TCP connection to `addr` (an IPv4 `ADDRESS:PORT`) from the local address
/// `from`: another peer, as far as the daemon's fairness goes.
pub fn connect_from(from: Ipv4Addr, addr: &str) -> Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let to: std::net::SocketAddrV4 = addr.parse()?;
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket this function owns, bound and connected with
    // sockaddr_in values of the length passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(std::net::SocketAddrV4::new(from, 0));
        anyhow::ensure!(libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) == 0, "bind {from}: {}", std::io::Error::last_os_error());
        let remote = sockaddr(to);
        anyhow::ensure!(libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) == 0, "connect {addr}: {}", std::io::Error::last_os_error());
        Ok(stream)
    }
}

/// A scraper: once a second `GET /metrics` on a kept-alive TLS connection
/// (from `from`), reopened when it fails, as Prometheus does.
fn scraper(args: &AbuseArgs, password: &str, from: Option<Ipv4Addr>, stop: &AtomicBool) -> Scrapes {
    let ask = Ask { ca: Some(&args.ca), client: None, user: Some((&args.user, password)) };
    let mut s = Scrapes::default();
    let mut conn: Option<KeptAlive> = None;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let attempt = |conn: &mut Option<KeptAlive>| -> Result<u16> {
            if conn.is_none() {
                let sock = connect(from, &args.addr)?;
                sock.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
                *conn = Some(KeptAlive::new(sock, &ask)?);
            }
            let c = conn.as_mut().context("connected")?;
            c.get("/metrics")
        };
        let mut result = attempt(&mut conn);
        // An idle keep-alive connection the server closed: once more on a new one.
        if result.is_err() {
            conn = None;
            result = attempt(&mut conn);
            if result.is_err() {
                conn = None;
            }
        }
        s.record(t.elapsed(), result);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    s
}

pub fn run(args: &AbuseArgs) -> Result<Report> {
    let password = std::fs::read_to_string(&args.password_file)?.trim_end().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let attacks = Arc::new(Mutex::new(Attacks::default()));
    let connects = Arc::new(AtomicU64::new(0));
    let start_fds = fds(args.pid);
    let cpu0 = cpu_seconds(args.pid);
    std::thread::scope(|scope| -> Result<Report> {
        // What every thread borrows, as plain references the scope outlives.
        let (stop, attacks, connects, password) = (&*stop, &*attacks, &*connects, password.as_str());
        // The scrapers and the operator's view.
        let local = scope.spawn(move || scraper(args, password, None, stop));
        let remote = args.other.map(|from| scope.spawn(move || scraper(args, password, Some(from), stop)));
        let socket = scope.spawn(move || {
            let mut s = Scrapes::default();
            let url = format!("unix:{}", args.socket.display());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = crate::prom::get(&url, "/stalls").map(|(status, _)| status).map_err(anyhow::Error::from);
                s.record(t.elapsed(), r);
                std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
            }
            s
        });
        // The scrapers had been scraping before the attack began, as
        // Prometheus has: their passwords are verified (and cached) by then.
        std::thread::sleep(WARMUP);
        // Slowloris: a TLS record header, a byte every half second.
        scope.spawn(move || {
            let header = [0x16u8, 0x03, 0x01, 0x02, 0x00];
            let mut conns: Vec<(Option<TcpStream>, usize)> = (0..SLOW).map(|_| (None, 0)).collect();
            while !stop.load(Ordering::Relaxed) {
                for (conn, sent) in conns.iter_mut() {
                    let ok = match conn {
                        Some(c) => c.write_all(&header[*sent % header.len()..*sent % header.len() + 1]).is_ok(),
                        None => false,
                    };
                    if ok {
                        *sent += 1;
                    } else {
                        *conn = TcpStream::connect(&args.addr).ok();
                        *sent = 0;
                        attacks.lock().unwrap().slowloris_reopened += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        // The connect flood, paced in 10 ms steps.
        scope.spawn(move || {
            let per_step = CONNECTS_PER_S / 100;
            let t0 = Instant::now();
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..per_step {
                    if TcpStream::connect(&args.addr).is_ok() {
                        connects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                step += 1;
                std::thread::sleep((t0 + Duration::from_millis(10 * step)).saturating_duration_since(Instant::now()));
            }
        });
        // Pipelined scrapes.
        scope.spawn(move || {
            let ask = Ask { ca: Some(&args.ca), client: None, user: Some((&args.user, password)) };
            while !stop.load(Ordering::Relaxed) {
                let Ok(sock) = TcpStream::connect(&args.addr) else { continue };
                let Ok(mut c) = KeptAlive::new(sock, &ask) else { continue };
                while !stop.load(Ordering::Relaxed) {
                    match c.pipeline("/metrics", PIPELINED) {
                        Ok(n) => attacks.lock().unwrap().pipelined_answers += n as u64,
                        Err(_) => break,
                    }
                }
            }
        });
        // Wrong passwords.
        for i in 0..BAD_PASSWORD_THREADS {
            scope.spawn(move || {
                let guess = format!("guess {i}");
                let ask = Ask { ca: Some(&args.ca), client: None, user: Some((&args.user, &guess)) };
                while !stop.load(Ordering::Relaxed) {
                    let status = match pki::get(&args.addr, "/metrics", &ask) {
                        Ok((Outcome::Answer(s, _), _)) => s,
                        _ => 0,
                    };
                    let mut a = attacks.lock().unwrap();
                    match status {
                        401 => a.bad_password_401 += 1,
                        429 => a.bad_password_429 += 1,
                        _ => a.bad_password_other += 1,
                    }
                }
            });
        }
        // The daemon, once a second.
        let mut daemon = Daemon { alive: true, usage: Usage { fds_at_start: start_fds, ..Usage::default() } };
        let end = Instant::now() + Duration::from_secs(args.seconds);
        while Instant::now() < end {
            daemon.alive &= std::path::Path::new(&format!("/proc/{}", args.pid)).exists();
            daemon.usage.sample(args.pid);
            std::thread::sleep(Duration::from_secs(1));
        }
        daemon.usage.cpu_seconds = cpu_seconds(args.pid) - cpu0;
        stop.store(true, Ordering::Relaxed);
        let local = local.join().map_err(|_| anyhow::anyhow!("the local scraper panicked"))?;
        let remote = match remote {
            Some(r) => Some(r.join().map_err(|_| anyhow::anyhow!("the remote scraper panicked"))?),
            None => None,
        };
        let socket = socket.join().map_err(|_| anyhow::anyhow!("the socket scraper panicked"))?;
        let mut attacks = std::mem::take(&mut *attacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        attacks.connects = connects.load(Ordering::Relaxed);
        Ok(Report { seconds: args.seconds, local, remote, socket, attacks, daemon })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_that_fails_or_is_late_counts_as_failed() {
        let mut s = Scrapes::default();
        s.record(Duration::from_millis(5), Ok(200));
        s.record(Duration::from_secs(11), Ok(200));
        s.record(Duration::from_millis(5), Ok(401));
        s.record(Duration::from_millis(5), Err(anyhow::anyhow!("reset")));
        assert_eq!((s.ok, s.failed, s.slowest_ms), (1, 3, 11_000));
        assert_eq!(s.failures.len(), 3);
    }

    #[test]
    fn reads_one_process_from_proc() {
        let me = std::process::id();
        assert!(fds(me) > 0 && rss_kib(me) > 0);
    }
}
