//! Host integration tests: the daemon on this machine (Linux 6.18, where
//! tracepoints load but fentry/fexit fail with EPERM and kprobes are compiled
//! out). They need root and run under `cargo xtask test`
//! (`cargo test -- --include-ignored`).
use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use remote_vm_common::catalog::*;
use remote_vm_testkit::{
    golden,
    prom::{self, Scrape},
};

mod common;

use common::{DAEMON, Running};

/// What this host allows, probe by probe: (probe, mode or "none", why not).
const HOST_MODES: &[(&str, &str, &str)] = &[
    ("access_remote_vm_entry", "none", ACCESS_REASON),
    ("access_remote_vm_exit", "none", ACCESS_REASON),
    ("lock_vma_under_rcu_exit", "none", REFINES),
    ("folio_walk_start_exit", "none", REFINES),
    ("get_user_pages_remote_entry", "none", REFINES),
    ("mmap_lock_remote_start", "none", REFINES),
    ("mmap_lock_remote_end", "none", REFINES),
    ("mmap_lock_host_start", "contention_tp", ""),
    ("mmap_lock_host_end", "contention_tp", ""),
];

/// Why `__access_remote_vm` cannot be probed here: every mode, in order.
const ACCESS_REASON: &str = "fentry: fentry __access_remote_vm: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1); \
kprobe: kprobe __access_remote_vm: `/sys/bus/event_source/devices/kprobe/type`: No such file or directory (os error 2); \
fentry_callers: fentry access_remote_vm: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1); \
kprobe_callers: kprobe access_remote_vm: `/sys/bus/event_source/devices/kprobe/type`: No such file or directory (os error 2)";

/// The families that only refine the access probes are not tried without them.
const REFINES: &str = "not tried: it only refines access_remote_vm, which is not attached";

/// What this host can see: the host-wide waits (`mmap_lock_host` attaches).
const COVERED: &[Coverage] = &[Coverage::Always, Coverage::HostLock];

/// The sample names of the catalog's families whose coverage is (not) met here.
fn families(met: bool) -> Vec<String> {
    ALL.iter()
        .filter(|m| m.coverage.iter().any(|c| COVERED.contains(c)) == met)
        .filter(|m| !m.coverage.contains(&Coverage::Always))
        .map(|m| if m.kind == Kind::Histogram { m.count() } else { m.name.to_string() })
        .collect()
}

fn exported() -> Vec<String> {
    families(true)
}

fn absent() -> Vec<String> {
    families(false)
}

fn daemon(args: &[&str]) -> Output {
    Command::new(DAEMON).args(args).output().expect("run daemon")
}

#[test]
#[ignore = "needs root and BPF on the 6.18 host; run by cargo xtask test"]
fn check_reports_every_probe_and_exits_degraded() {
    let out = daemon(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut expected = vec![
        "config: ok (embedded defaults)".to_string(),
        format!(
            "kernel: release={} btf=/sys/kernel/btf/vmlinux per_vma_lock=yes rcu_table_free=yes config=/proc/config.gz",
            release.trim()
        ),
    ];
    for (probe, mode, why) in HOST_MODES {
        expected.push(if *mode == "none" {
            format!("probe {probe}: none ({why})")
        } else {
            format!("probe {probe}: {mode} (exact)")
        });
    }
    expected.extend(
        [
            "patched: unknown (probe family access_remote_vm is not attached)",
            "metrics: reads, writes, bytes, durations: absent (needs access_remote_vm, mmap_lock_remote and lock_vma_under_rcu)",
            "metrics: fallback reasons, lockless bytes: absent (needs the read probes and folio_walk_start)",
            "metrics: remote mmap_lock wait and hold: absent (needs access_remote_vm and mmap_lock_remote)",
            "metrics: remote mmap_lock write waits (expand_stack): absent (needs mmap_lock_remote in an opt-in read+write mode (fentry_rw, kprobe_rw) or mmap_lock_tp)",
            "metrics: host mmap_lock wait: exported",
            "metrics: lock_vma_under_rcu calls: absent (needs access_remote_vm and lock_vma_under_rcu)",
            "metrics: GUP calls: absent (needs the read probes and get_user_pages_remote)",
            "metrics: folio walk levels, lockless PTE pages: absent (needs folio_walk_start and folio_walk.level in BTF)",
            "metrics: FOLL_ANON file-backed lockless reads: absent (needs folio_walk_start, vm_area_struct.vm_ops and FOLL_ANON in BTF)",
            "metrics: remote mmap_lock waits in progress: absent (needs access_remote_vm and mmap_lock_remote, the task iterator (BTF, Linux 5.15+) and the host PID namespace)",
            "summary: degraded: 2 of 9 probes attached",
        ]
        .map(String::from),
    );
    // The BTF lines carry this kernel's offsets: every item is found.
    let (btf, rest): (Vec<&str>, Vec<&str>) = stdout.lines().partition(|l| l.starts_with("btf: "));
    // The preemption line follows the kernel line; its model is this host's
    // (the detection is unit-tested in kernel/preempt.rs).
    let (preempt, rest): (Vec<&str>, Vec<&str>) = rest.into_iter().partition(|l| l.starts_with("preemption: "));
    assert_eq!(preempt.len(), 1, "{stdout}");
    assert!(stdout.contains(&format!("{}\n{}\n", expected[1], preempt[0])), "{stdout}");
    assert_eq!(rest, expected);
    assert_eq!(btf.len(), 11, "{btf:?}");
    assert!(btf.iter().all(|l| !l.contains("unknown")), "{btf:?}");
    assert!(btf.contains(&"btf: mmap_lock tracepoint (write, success) args = (1, 2)"), "{btf:?}");
}

#[test]
#[ignore = "needs root and BPF on the 6.18 host; run by cargo xtask test"]
fn metrics_tell_what_attached_and_pass_promtool() {
    let running = Running::start("metrics", "", &[]);
    let (status, body) = prom::get(&running.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let scrape = Scrape::parse(&body).unwrap();
    for (probe, mode, _) in HOST_MODES {
        let attached = if *mode == "none" { 0.0 } else { 1.0 };
        assert_eq!(
            scrape.value(PROBE_ATTACHED.name, &[("probe", probe), ("mode", mode)]),
            Some(attached),
            "{probe}"
        );
        // Hits exist only where a program runs: no zero where nothing can see.
        assert_eq!(
            scrape.value(PROBE_HITS.name, &[("probe", probe)]).is_some(),
            *mode != "none",
            "{probe}"
        );
        assert_eq!(
            scrape.value(PROBE_MISSES.name, &[("probe", probe)]).is_some(),
            *mode != "none",
            "{probe}"
        );
    }
    assert_eq!(scrape.series(PROBE_ATTACHED.name).count(), HOST_MODES.len());
    assert!(!exported().is_empty() && !absent().is_empty());
    for name in exported() {
        assert!(scrape.series(&name).count() > 0, "{name} should be exported");
    }
    for name in absent() {
        assert_eq!(scrape.series(&name).count(), 0, "{name} should be absent");
    }
    // Nothing that is not in the golden file of every exportable series.
    let golden = golden::Golden::load();
    let unknown: Vec<String> = golden::scrape_series(&scrape).into_iter().filter(|s| !golden.knows(s)).collect();
    assert_eq!(unknown, Vec::<String>::new());
    // Host-wide waits only: no remote_vm context where the access probes are missing.
    assert_eq!(scrape.series(&MMAP_LOCK_WAIT.count()).count(), 2);
    for mode in ["read", "write"] {
        assert!(scrape.value(&MMAP_LOCK_WAIT.count(), &[("context", "host"), ("mode", mode)]).is_some());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        scrape.value(
            KERNEL_INFO.name,
            &[
                ("release", release.trim()),
                ("per_vma_lock", "yes"),
                ("rcu_table_free", "yes"),
                ("patched", "unknown")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(BUILD_INFO.name, &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert!(scrape.value("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));

    // promtool finds nothing to complain about.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!((out.status.code(), complaints.as_str()), (Some(0), ""));

    let (status, health) = prom::get(&running.addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(health.starts_with("ok\n"), "{health}");
    assert!(health.contains(&format!("probe access_remote_vm_entry: none ({ACCESS_REASON})\n")), "{health}");
    assert!(health.contains("probe mmap_lock_host_end: contention_tp (exact)\n"), "{health}");
    assert!(health.contains("patched: unknown (probe family access_remote_vm is not attached)\n"), "{health}");
    let (status, landing) = prom::get(&running.addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(landing.contains("href=\"/metrics\""));
    assert_eq!(prom::get(&running.addr, "/nope").unwrap().0, 404);

    assert_eq!(running.stop(), 0, "SIGTERM exits 0");
}

#[test]
#[ignore = "needs root and BPF on the 6.18 host; run by cargo xtask test"]
fn check_json_says_what_check_says() {
    let text = daemon(&["check"]);
    let json = daemon(&["check", "--format", "json"]);
    assert_eq!(json.status.code(), text.status.code());
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON document");
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["summary"]["exit"].as_i64(), text.status.code().map(i64::from));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let probes = doc["probes"].as_array().unwrap();
    assert_eq!(probes.len(), HOST_MODES.len());
    for ((probe, mode, why), p) in HOST_MODES.iter().zip(probes) {
        assert_eq!(p["probe"], *probe);
        assert_eq!(p["mode"], *mode);
        assert_eq!(p["attached"], *mode != "none");
        let reasons: Vec<String> = p["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| match r["mode"].as_str() {
                Some(m) => format!("{m}: {}", r["error"].as_str().unwrap()),
                None => r["error"].as_str().unwrap().to_string(),
            })
            .collect();
        assert_eq!(reasons.join("; "), *why, "{probe}");
    }
    // Each refusal carries the OS error its text names (`(os error N)`).
    let errnos: Vec<i64> = probes[0]["reasons"].as_array().unwrap().iter().filter_map(|r| r["errno"].as_i64()).collect();
    let named: Vec<i64> = ACCESS_REASON
        .split("(os error ")
        .skip(1)
        .map(|rest| rest.split(')').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(named.len(), 4);
    assert_eq!(errnos, named);
    let patched = format!("patched: {} ({})", doc["patched"]["value"].as_str().unwrap(), doc["patched"]["why"].as_str().unwrap());
    assert!(stdout.lines().any(|l| l == patched), "{patched}");
    let btf: Vec<&str> = stdout.lines().filter(|l| l.starts_with("btf: ")).collect();
    let json_btf: Vec<&str> = doc["btf"].as_array().unwrap().iter().map(|b| b["line"].as_str().unwrap()).collect();
    assert_eq!(json_btf, btf);
    for c in doc["metrics"].as_array().unwrap() {
        let word = if c["exported"] == true { "exported".to_string() } else { format!("absent ({})", c["needs"].as_str().unwrap()) };
        let line = format!("metrics: {}: {word}", c["what"].as_str().unwrap());
        assert!(stdout.lines().any(|l| l == line), "{line}");
    }
}
