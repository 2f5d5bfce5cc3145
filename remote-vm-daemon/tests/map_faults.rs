//! Never a wrong counter: while reading the maps fails, `/metrics` answers 503
//! naming the map and the error (no zeros, which would look like a counter
//! reset), `/healthz` stays 200 and says why; once reads work again every
//! counter is back, none lower. The fault is injected at the syscall boundary:
//! an LD_PRELOAD shim over glibc's `syscall()` (aya's way into `bpf(2)`) fails
//! `BPF_MAP_LOOKUP_ELEM` with EIO while a trigger file exists. Host test: root,
//! BPF and a C compiler (`cc`), under `cargo xtask test`.
use std::collections::BTreeMap;

use remote_vm_common::catalog::PROBE_HITS;
use remote_vm_testkit::prom::{self, Scrape};

mod common;

use common::{FAULT_LOOKUP_WHILE as TRIGGER_ENV, Running, build_shim};

/// Every monotonic sample: counters, histogram buckets and counts.
fn counters(scrape: &Scrape) -> BTreeMap<String, f64> {
    scrape
        .samples
        .iter()
        .filter(|(k, _)| {
            let name = k.split('{').next().unwrap();
            ["_total", "_bucket", "_count"].iter().any(|s| name.ends_with(s))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn scrape_line(health: &str) -> Option<&str> {
    health.lines().find(|l| l.starts_with("scrape: "))
}

#[test]
#[ignore = "needs root, BPF and cc; run by cargo xtask test"]
fn a_failed_map_read_answers_503_never_zeros() {
    let dir = std::env::temp_dir().join(format!("rvm-map-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(shim) = build_shim(&dir) else {
        eprintln!("SKIPPED a_failed_map_read_answers_503_never_zeros: no C compiler (cc) to build the fault-injection shim");
        return;
    };
    let trigger = dir.join("fail-lookups");
    let _ = std::fs::remove_file(&trigger);
    let preload = format!("LD_PRELOAD={}", shim.display());
    let when = format!("{TRIGGER_ENV}={}", trigger.display());
    // Start-up reads a map (the probe read): the trigger comes once it serves.
    let d = Running::start("map-faults", "", &["env", &preload, &when]);

    let (status, body) = prom::get(&d.addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    let before = counters(&Scrape::parse(&body).unwrap());
    assert!(before.keys().any(|k| k.starts_with(PROBE_HITS.name)), "no probe hits on this host: {body}");
    let (_, health) = prom::get(&d.addr, "/healthz").unwrap();
    assert_eq!(scrape_line(&health), None, "{health}");

    std::fs::write(&trigger, b"").unwrap();
    let failed = "map STATS: read failed: bpf_map_lookup_elem: Input/output error (os error 5)";
    for _ in 0..3 {
        let (status, body) = prom::get(&d.addr, "/metrics").unwrap();
        let head: String = body.chars().take(200).collect();
        assert_eq!(status, 503, "counters served while the map reads fail: {head}…");
        assert_eq!(body, format!("{failed}\n"));
    }
    let (status, health) = prom::get(&d.addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(health.starts_with("ok\n"), "{health}");
    assert_eq!(
        scrape_line(&health),
        Some(format!("scrape: failed, /metrics answers 503: {failed}").as_str()),
        "{health}"
    );
    // `dropped` on /stalls is a counter too.
    assert_eq!(prom::get(&d.socket_url(), "/stalls").unwrap(), (503, format!("{failed}\n")));
    // One warning for the three failed scrapes (rate-limited).
    let log = d.log_text();
    assert_eq!(log.matches(&format!("/metrics answers 503: {failed}")).count(), 1, "{log}");

    std::fs::remove_file(&trigger).unwrap();
    let (status, body) = prom::get(&d.addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    let after = counters(&Scrape::parse(&body).unwrap());
    for (series, was) in &before {
        let now = after.get(series).unwrap_or_else(|| panic!("{series} is gone after the fault"));
        assert!(now >= was, "{series}: {was} before the fault, {now} after");
    }
    let (status, health) = prom::get(&d.addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert_eq!(scrape_line(&health), None, "{health}");
    assert!(d.log_text().contains("/metrics answers 200 again"), "{}", d.log_text());
    assert_eq!(prom::get(&d.socket_url(), "/stalls").unwrap().0, 200);
    assert_eq!(d.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
