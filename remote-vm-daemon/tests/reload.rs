//! SIGHUP: the daemon stays, re-reads its config, applies the log level and
//! names what needs a restart; a config that no longer parses changes nothing.
//! Host test: runs the daemon (root and BPF), under `cargo xtask test`.
use std::time::Duration;

mod common;

use common::Running;

const WITHIN: Duration = Duration::from_secs(5);

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn sighup_rereads_the_config_and_keeps_serving() {
    let mut d = Running::start("reload", "log_level = \"info\"\n", &[]);
    std::fs::write(&d.config, "log_level = \"debug\"\n[web]\nmax_connections = 3\n").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(WITHIN, "SIGHUP: config re-read; log level DEBUG"), "{}", d.log_text());
    assert!(
        d.wait_log(WITHIN, "SIGHUP: web changed but take effect only on a restart"),
        "{}",
        d.log_text()
    );
    assert!(d.child.try_wait().unwrap().is_none(), "SIGHUP ended the daemon");
    assert!(d.metrics_ok());
    // A broken config: one error line, the running one stays.
    std::fs::write(&d.config, "log_level = 7\n").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(WITHIN, "SIGHUP: config not reloaded, the running one stays"), "{}", d.log_text());
    assert!(d.child.try_wait().unwrap().is_none());
    assert!(d.metrics_ok());
}

/// Whether `pid`'s main thread has SIGHUP blocked (`SigBlk` in its status).
fn hangup_blocked(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGHUP - 1)) != 0)
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn sighup_in_a_loop_from_start_through_ready_never_ends_the_daemon() {
    // Before the fix, 20 of 20 daemons died of a SIGHUP sent within
    // milliseconds of exec. The only window left is the loader's, before the
    // program's first initialiser blocks SIGHUP (about half a millisecond):
    // the signals start once the kernel shows it blocked.
    for i in 0..10 {
        let mut d = Running::spawn(&format!("hup-{i}"), "", &[], &[]);
        let pid = d.pid();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !hangup_blocked(pid) {
            assert!(d.child.try_wait().unwrap().is_none(), "daemon {i} exited before blocking SIGHUP: {}", d.log_text());
            assert!(std::time::Instant::now() < deadline, "daemon {i} never blocked SIGHUP");
        }
        let mut sent = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            d.signal(libc::SIGHUP);
            sent += 1;
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("daemon {i} ended by SIGHUP number {sent}: {status}: {}", d.log_text());
            }
            if common::healthz_ok(&d.addr) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "daemon {i} never became ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Serving, and the signals sent before the handler existed were not
        // lost: at least one reload ran.
        assert!(d.wait_log(WITHIN, "SIGHUP: config re-read"), "daemon {i}: no reload after {sent} SIGHUPs: {}", d.log_text());
        assert!(d.metrics_ok());
        assert_eq!(d.stop(), 0, "daemon {i}");
    }
}
