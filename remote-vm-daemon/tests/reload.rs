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
