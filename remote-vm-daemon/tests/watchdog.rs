//! The systemd watchdog without systemd: the daemon run with `NOTIFY_SOCKET`
//! (a datagram socket of the test's) and `WATCHDOG_USEC`. It pings while its
//! serving thread makes progress, with no scrape at all (Prometheus being
//! down must never restart it), and stops pinging while a render is stuck in
//! a map read (the LD_PRELOAD shim of `common` holds each lookup 3 s), then
//! pings again. Host test: root, BPF and `cc`, under `cargo xtask test`.
use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

mod common;

use common::{Running, STALL_LOOKUP_WHILE, build_shim};

/// The messages that arrive within `within`.
fn messages(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    out
}

fn pings(messages: &[String]) -> usize {
    messages.iter().filter(|m| m.as_str() == "WATCHDOG=1").count()
}

#[test]
#[ignore = "needs root, BPF and cc; run by cargo xtask test"]
fn pings_without_scrapes_and_stops_while_a_render_is_stuck() {
    let dir = std::env::temp_dir().join(format!("rvm-watchdog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(shim) = build_shim(&dir) else {
        eprintln!("SKIPPED: no C compiler (cc) to build the shim");
        return;
    };
    let socket = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket);
    let sock = UnixDatagram::bind(&socket).unwrap();
    let stall = dir.join("stall-lookups");
    let _ = std::fs::remove_file(&stall);
    // WatchdogSec=0.8s: a ping every 0.4 s.
    let env = [
        format!("LD_PRELOAD={}", shim.display()),
        format!("{STALL_LOOKUP_WHILE}={}", stall.display()),
        format!("NOTIFY_SOCKET={}", socket.display()),
        "WATCHDOG_USEC=800000".to_string(),
    ];
    let wrapper: Vec<&str> = ["env"].into_iter().chain(env.iter().map(String::as_str)).collect();
    let d = Running::spawn("watchdog", "", &wrapper, &[]);
    // Ready without a scrape: READY=1 on the socket.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = messages(&sock, Duration::from_millis(200));
        if got.iter().any(|m| m.starts_with("READY=1")) {
            break;
        }
        assert!(Instant::now() < deadline, "no READY=1: {}", d.log_text());
    }
    // 4 s with no scrape: about ten pings.
    let idle = pings(&messages(&sock, Duration::from_secs(4)));
    assert!((7..=11).contains(&idle), "{idle} pings in 4 s without scrapes (one per 0.4 s)");
    // A scrape whose render is stuck 3 s in each map read: no ping meanwhile.
    std::fs::write(&stall, b"").unwrap();
    let scrape = {
        let addr = d.addr.clone();
        std::thread::spawn(move || remote_vm_testkit::prom::get(&addr, "/metrics").map(|(s, _)| s))
    };
    std::thread::sleep(Duration::from_millis(1500));
    // What was sent before the render had run an interval is read and dropped.
    messages(&sock, Duration::from_millis(1));
    let stuck = pings(&messages(&sock, Duration::from_secs(2)));
    assert_eq!(stuck, 0, "pinged while a render was stuck");
    std::fs::remove_file(&stall).unwrap();
    assert!(d.wait_log(Duration::from_secs(20), "watchdog: not pinging systemd"), "{}", d.log_text());
    // Once the render is done, pings again.
    assert_eq!(scrape.join().unwrap().unwrap(), 200);
    let again = pings(&messages(&sock, Duration::from_secs(2)));
    assert!(again >= 3, "{again} pings in 2 s after the render ended");
    assert_eq!(d.stop(), 0);
}
