//! The listener's limits against clients any local user could be: idle and
//! slowloris connections, more connections than the cap, running out of file
//! descriptors, and a flood of scrapes. Host tests: they run the daemon (root
//! and BPF), under `cargo xtask test` (`cargo test -- --include-ignored`).
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{Running, closed_by_server};
use remote_vm_testkit::prom;

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn idle_and_slowloris_connections_are_closed_and_cost_little() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let d = Running::start("slowloris", "[web]\nmax_connections = 1000\nheader_timeout_seconds = 2\n", &[]);
    let rss_before = d.rss_kib();
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(&d.addr).unwrap()).collect();
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(&d.addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // One header byte each half second: never a whole head. /metrics answers throughout.
    let start = Instant::now();
    while start.elapsed() < TIMEOUT + Duration::from_secs(1) {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        assert!(d.metrics_ok(), "/metrics did not answer with 600 connections open");
        std::thread::sleep(Duration::from_millis(500));
    }
    // All 600 were closed by the server by now (the head timeout, plus slack).
    let mut all: Vec<TcpStream> = idle.into_iter().chain(slow).collect();
    let open = all.iter_mut().map(|s| closed_by_server(s, Duration::from_secs(2))).filter(|c| !c).count();
    assert_eq!(open, 0, "connections the server left open past its head timeout");
    let grew = d.rss_kib().saturating_sub(rss_before);
    assert!(grew < 10 * 1024, "RSS grew by {grew} KiB with 600 idle and slow connections");
    assert!(d.metrics_ok());
}

/// One `GET /metrics` on a connection kept open afterwards: its status.
fn get_keeping_alive(addr: &str) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The head, then Content-Length bytes of body.
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap();
        if body.len() >= len {
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            return (s, status);
        }
    }
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn at_the_cap_the_oldest_idle_connection_makes_room_for_a_scrape() {
    let d = Running::start("cap", "[web]\nmax_connections = 10\nheader_timeout_seconds = 60\n", &[]);
    let mut idle: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(&d.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Three scrapes that keep their connections: each gets in by closing the
    // oldest connection that never sent a request (not an earlier scrape's).
    let scrapes: Vec<(TcpStream, u16)> = (0..3).map(|_| get_keeping_alive(&d.addr)).collect();
    assert_eq!(scrapes.iter().map(|(_, status)| *status).collect::<Vec<_>>(), [200, 200, 200]);
    let closed: Vec<bool> = idle.iter_mut().map(|s| closed_by_server(s, Duration::from_millis(500))).collect();
    assert_eq!(closed, [[true; 3].as_slice(), [false; 7].as_slice()].concat(), "not the oldest three closed");
    let mut scrapes: Vec<TcpStream> = scrapes.into_iter().map(|(s, _)| s).collect();
    assert!(scrapes.iter_mut().all(|s| !closed_by_server(s, Duration::from_millis(200))), "a scrape's connection was closed");
    assert!(d.log_text().contains("connections open (web.max_connections)"));
}

#[test]
#[ignore = "needs root, BPF and prlimit; run by cargo xtask test"]
fn out_of_descriptors_the_daemon_backs_off_and_recovers() {
    let d = Running::start("emfile", "[web]\nmax_connections = 1000\nheader_timeout_seconds = 60\n", &["prlimit", "--nofile=64", "--"]);
    let lines_before = d.log_lines();
    // More connections than descriptors: the kernel queues the rest and
    // accept() fails with EMFILE until some close.
    let conns: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(&d.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = d.cpu_seconds();
    std::thread::sleep(Duration::from_secs(5));
    let cpu = d.cpu_seconds() - cpu0;
    assert!(cpu < 0.25, "{cpu:.2} s of CPU in 5 s out of descriptors (spinning?)");
    let lines = d.log_lines() - lines_before;
    assert!((1..=3).contains(&lines), "{lines} log lines in 5.5 s out of descriptors: {}", d.log_text());
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.metrics_ok() {
        assert!(Instant::now() < deadline, "the daemon did not recover after the connections closed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root, BPF and wrk; run by cargo xtask test"]
fn a_scrape_flood_costs_little_and_other_scrapes_still_answer() {
    // Room for wrk's 64 connections and ours: none is closed for another.
    let d = Running::start("flood", "[web]\nmax_connections = 1000\n", &[]);
    let url = format!("http://{}/metrics", d.addr);
    let (cpu0, start) = (d.cpu_seconds(), Instant::now());
    let wrk = Command::new("wrk")
        .args(["-t2", "-c64", "-d10s", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("wrk is needed for this test (install the Debian package wrk, or run cargo xtask setup): {e}"));
    std::thread::sleep(Duration::from_secs(1));
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(8) {
        let asked = Instant::now();
        let (status, body) = remote_vm_testkit::prom::get(&d.addr, "/metrics").unwrap();
        let took = asked.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(remote_vm_common::catalog::BUILD_INFO.name));
        assert!(took < Duration::from_secs(2), "/metrics took {took:?} during the flood");
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = wrk.wait_with_output().unwrap();
    let (cpu, wall) = (d.cpu_seconds() - cpu0, start.elapsed().as_secs_f64());
    let report = String::from_utf8_lossy(&out.stdout);
    let requests = common::wrk_requests(&out);
    let share = cpu / wall;
    println!("scrape flood: {requests} requests in {wall:.1} s, daemon CPU {:.1} % of a core, slowest other scrape {slowest:?}", share * 100.0);
    assert!(share < 0.25, "the daemon used {:.0} % of a core under wrk -c64: {report}", share * 100.0);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn every_listen_address_serves_the_configured_metrics_path() {
    // The usual --listen, a second address by its exporter name, and `:PORT`
    // (every address: IPv4 too).
    let second = format!("127.0.0.2:{}", common::free_port());
    let port = common::free_port();
    let d = Running::start_with(
        "listen",
        "[web]\ntelemetry_path = \"/custom/metrics\"\n",
        &[],
        &["--web.listen-address", &second, "--web.listen-address", &format!(":{port}")],
    );
    let every = format!("127.0.0.1:{port}");
    for addr in [d.addr.as_str(), &second, &every] {
        assert_eq!(prom::get(addr, "/custom/metrics").unwrap().0, 200, "{addr}");
        assert_eq!(prom::get(addr, "/metrics").unwrap().0, 404, "{addr}");
        let (status, landing) = prom::get(addr, "/").unwrap();
        assert_eq!(status, 200);
        assert!(landing.contains("href=\"/custom/metrics\""), "{landing}");
        assert!(landing.contains(&format!("<h1>remote-vm {}</h1>", env!("CARGO_PKG_VERSION"))), "{landing}");
    }
    let log = d.log_text();
    assert!(log.contains(&format!("serving http://{}/custom/metrics, http://{second}/custom/metrics, http://", d.addr)), "{log}");
}

/// The status line of the answer to `request`, sent whole on a new connection
/// (None when the server closed without answering).
fn status_of(addr: &str, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn requests_that_are_not_a_scrape_get_one_status_and_the_daemon_serves_on() {
    let d = Running::start("bad-requests", "", &[]);
    let cases: [(&str, Vec<u8>, Option<u16>); 5] = [
        ("POST /metrics", b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(), Some(405)),
        ("an unknown path", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(404)),
        ("a request line that is not HTTP", b"\x16\x03\x01 hello\r\n\r\n".to_vec(), Some(400)),
        (
            "a head over 16 KiB",
            [b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(), &[b'a'; 20 * 1024], b"\r\n\r\n"].concat(),
            Some(431),
        ),
        ("a head that ends the connection half-way", b"GET /metrics HTTP/1.1\r\nHo".to_vec(), None),
    ];
    for (what, request, want) in cases {
        let mut s = TcpStream::connect(&d.addr).unwrap();
        let got = if want.is_none() {
            s.write_all(&request).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(closed_by_server(&mut s, Duration::from_secs(5)), "{what}: left open");
            None
        } else {
            drop(s);
            status_of(&d.addr, &request)
        };
        assert_eq!(got, want, "{what}");
        assert!(d.metrics_ok(), "/metrics after {what}");
    }
    assert_eq!(d.stop(), 0);
}
