//! Every bad input gets one clear line and a non-zero exit, or a reported
//! degraded state. Host tests: they need root (and run under `cargo xtask test`).
use std::{
    net::TcpListener,
    process::{Command, Output},
};

use remote_vm_common::registry::Hook;
use remote_vm_testkit::allows::Allows;

const DAEMON: &str = env!("CARGO_BIN_EXE_remote-vm-daemon");

/// What this kernel allows, found by the test's own programs (see
/// `remote_vm_testkit::allows`).
fn allows() -> &'static Allows {
    Allows::of_this_kernel()
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("run");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn daemon(args: &[&str]) -> Run {
    run(Command::new(DAEMON).args(args))
}

/// Exit 1 and exactly one line on stderr.
fn one_line_failure(r: &Run) -> &str {
    assert_eq!(r.code, Some(1), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{}", r.stderr);
    lines[0]
}

fn temp_file(name: &str, contents: &[u8]) -> String {
    let path = std::env::temp_dir().join(format!("rvm-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[test]
fn malformed_config() {
    let f = temp_file("malformed.toml", b"listen = \n");
    let r = daemon(&["check", "--config", &f]);
    assert_eq!(
        one_line_failure(&r),
        format!("remote-vm-daemon: config {f} line 1: invalid string expected `\"`, `'`")
    );
}

#[test]
fn unknown_key_and_bad_value() {
    let f = temp_file("unknown.toml", b"port = 9\n");
    assert_eq!(
        one_line_failure(&daemon(&["check", "--config", &f])),
        format!(
            "remote-vm-daemon: config {f} line 1: unknown field `port`, expected one of `listen`, `log_level`, `log`, `probes`, `histograms`, `stalls`, `web`, `self_stats`"
        )
    );
    let f = temp_file("mode.toml", b"[probes]\nlock_vma_under_rcu = \"fentry\"\n");
    assert_eq!(
        one_line_failure(&daemon(&["check", "--config", &f])),
        format!(
            "remote-vm-daemon: config {f}: key `probes.lock_vma_under_rcu`: invalid value \"fentry\": expected auto, off, or one of fexit, kprobe"
        )
    );
    let f = temp_file("render.toml", b"[web]\nmin_render_interval_seconds = 11\n");
    assert_eq!(
        one_line_failure(&daemon(&["check", "--config", &f])),
        format!(
            "remote-vm-daemon: config {f}: key `web.min_render_interval_seconds`: invalid value 11: expected a number of seconds between 0 and 10"
        )
    );
}

#[test]
fn missing_config_file() {
    assert_eq!(
        one_line_failure(&daemon(&["check", "--config", "/nonexistent/remote-vm.toml"])),
        "remote-vm-daemon: config /nonexistent/remote-vm.toml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn invalid_listen_address() {
    assert_eq!(
        one_line_failure(&daemon(&["run", "--listen", "nope"])),
        "remote-vm-daemon: invalid value 'nope' for '--web.listen-address <ADDRESS:PORT>': expected ADDRESS:PORT or :PORT (every address), e.g. 127.0.0.1:19361, [::1]:19361 or :19361; in the config a string or a list of them, each once"
    );
    assert_eq!(
        one_line_failure(&daemon(&["run", "--web.telemetry-path", "/healthz"])),
        "remote-vm-daemon: invalid value '/healthz' for '--web.telemetry-path <PATH>': expected a path such as /metrics: /, then up to 255 visible ASCII characters but ? and #, and not /healthz or /stalls"
    );
    assert_eq!(
        one_line_failure(&daemon(&["run", "--listen", "127.0.0.1:1", "--web.listen-address", "127.0.0.1:1"])),
        "remote-vm-daemon: --web.listen-address 127.0.0.1:1 given twice"
    );
    assert_eq!(
        one_line_failure(&daemon(&["run", "--frobnicate"])),
        "remote-vm-daemon: unexpected argument '--frobnicate' found"
    );
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_eq!(
        one_line_failure(&daemon(&["run", "--listen", &addr])),
        format!(
            "remote-vm-daemon: cannot listen on {addr}: Address already in use (os error 98) (another remote-vm-daemon? choose another with --web.listen-address)"
        )
    );
}

fn as_nobody(args: &[&str]) -> Run {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(DAEMON);
    cmd.args(args);
    // SAFETY: only async-signal-safe syscalls between fork and exec. Leaving
    // uid 0 for 65534 clears the permitted, effective and ambient capabilities.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run(&mut cmd)
}

#[test]
#[ignore = "needs root (to become nobody); run by cargo xtask test"]
fn missing_privileges_name_the_capabilities() {
    let r = as_nobody(&["check"]);
    let line = one_line_failure(&r);
    assert!(line.starts_with("remote-vm-daemon: cannot load the eBPF object: "), "{line}");
    assert!(line.contains("Operation not permitted"), "{line}");
    assert!(
        line.ends_with("(missing capability CAP_BPF, CAP_PERFMON; run as root or grant CAP_BPF and CAP_PERFMON)"),
        "{line}"
    );
    // The config is still checked without privileges.
    assert!(r.stdout.starts_with("config: ok (embedded defaults)\n"), "{}", r.stdout);
    let f = temp_file("nobody.toml", b"log_level = 1\n");
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert_eq!(
        one_line_failure(&as_nobody(&["check", "--config", &f])),
        format!("remote-vm-daemon: config {f} line 1: invalid type: integer `1`, expected a string")
    );
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn btf_path_that_is_garbage_or_missing() {
    let f = temp_file("garbage.btf", b"this is not BTF, just some bytes");
    assert_eq!(
        one_line_failure(&daemon(&["check", "--btf", &f])),
        format!("remote-vm-daemon: cannot read BTF from {f}: not BTF (bad magic 0x6874)")
    );
    assert_eq!(
        one_line_failure(&daemon(&["check", "--btf", "/nonexistent.btf"])),
        "remote-vm-daemon: cannot read BTF from /nonexistent.btf: No such file or directory (os error 2)"
    );
}

/// Where the kernel has its own BTF, a `--btf` from another build is refused
/// (its type ids and offsets would be wrong here); a copy of the kernel's own
/// is taken. The other file is the kernel's with one byte of a name changed.
#[test]
#[ignore = "needs root and BPF on a host with /sys/kernel/btf/vmlinux; run by cargo xtask test"]
fn btf_from_another_kernel_is_refused() {
    let own = std::fs::read("/sys/kernel/btf/vmlinux").expect("the kernel's BTF");
    let copy = temp_file("own.btf", &own);
    let r = daemon(&["check", "--btf", &copy]);
    assert!(matches!(r.code, Some(0 | 2)), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let mut other = own.clone();
    let at = other.windows(9).position(|w| w == b"mm_struct").expect("mm_struct in the string section");
    other[at] = b'M';
    let f = temp_file("other.btf", &other);
    assert_eq!(
        one_line_failure(&daemon(&["check", "--btf", &f])),
        format!("remote-vm-daemon: --btf {f} differs from the running kernel's /sys/kernel/btf/vmlinux: --btf is for kernels without BTF")
    );
}

/// `check` in a mount namespace where `hide` are empty tmpfs mounts.
fn check_with_hidden(hide: &[&str]) -> Run {
    let mut script = String::from("set -e\n");
    for dir in hide {
        script.push_str(&format!("mount -t tmpfs none {dir}\n"));
    }
    script.push_str(&format!("exec {DAEMON} check\n"));
    run(Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]))
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn no_kernel_btf_is_a_reported_degraded_state() {
    let r = check_with_hidden(&["/sys/kernel/btf"]);
    assert_eq!(r.code, Some(2), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[1].starts_with("kernel: release="), "{}", r.stdout);
    assert!(lines[1].contains(" btf=missing "), "{}", r.stdout);
    assert!(lines.contains(&"btf: mm_struct.mmap_lock unknown (no BTF)"), "{}", r.stdout);
    assert!(
        lines.contains(&"probe mmap_lock_host_start: none (contention_tp: no BTF)"),
        "{}",
        r.stdout
    );
    // Only kprobes can attach: none where the kernel refuses them (the test's
    // own kprobe says), else the access probes as kprobes.
    let entry = lines.iter().find(|l| l.starts_with("probe access_remote_vm_entry: ")).expect("access line");
    if allows().kprobe.is_err() {
        let (_, total) = remote_vm_testkit::allows::probe_counts(&allows().expected());
        let summary = format!("summary: degraded: 0 of {total} probes attached");
        assert!(lines.contains(&summary.as_str()), "{}", r.stdout);
        assert!(entry.starts_with("probe access_remote_vm_entry: none ("), "{entry}");
    } else {
        assert!(entry.starts_with("probe access_remote_vm_entry: kprobe (may miss events; "), "{entry}");
    }
    assert!(r.stderr.contains("no kernel BTF at /sys/kernel/btf/vmlinux; only kprobes can attach (see --btf)"));
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn tracefs_and_bpffs_are_not_needed() {
    let normal = daemon(&["check"]);
    let hidden = check_with_hidden(&["/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf"]);
    assert_eq!(hidden.code, normal.code);
    // Only the preemption model may be lost, where debugfs was where it came from.
    let model_from_debugfs = normal.stdout.lines().any(|l| l.starts_with("preemption: ") && l.contains("(/sys/kernel/debug/"));
    let without_model = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| if model_from_debugfs && l.starts_with("preemption: ") { "preemption: …".to_string() } else { l.to_string() })
            .collect()
    };
    assert_eq!(without_model(&hidden.stdout), without_model(&normal.stdout));
    if model_from_debugfs {
        assert!(hidden.stdout.lines().any(|l| l.starts_with("preemption: unknown (")), "{}", hidden.stdout);
    }
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn forced_modes_are_tried_alone() {
    let f = temp_file(
        "forced.toml",
        b"[probes]\naccess_remote_vm = \"kprobe\"\nmmap_lock_host = \"mmap_lock_tp\"\n",
    );
    let r = daemon(&["check", "--config", &f]);
    let host_tp = allows().has_tracepoint("mmap_lock_start_locking") && allows().has_tracepoint("mmap_lock_acquire_returned");
    let everything = allows().kprobe.is_ok() && allows().fentry.is_ok() && host_tp;
    assert_eq!(r.code, Some(if everything { 0 } else { 2 }), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    // A forced mode is the only one tried: kprobe, as the test's own kprobe
    // found the kernel (its reason where it refuses them).
    let entry = lines.iter().find(|l| l.starts_with("probe access_remote_vm_entry: ")).expect("access line");
    match allows().hook(&Hook::KProbe("__access_remote_vm")) {
        Ok(()) => assert!(entry.starts_with("probe access_remote_vm_entry: kprobe (may miss events; "), "{entry}"),
        Err(Some(why)) => assert_eq!(*entry, format!("probe access_remote_vm_entry: none (kprobe: {why})")),
        Err(None) => assert!(entry.starts_with("probe access_remote_vm_entry: none (kprobe: "), "{entry}"),
    }
    // The opt-in host mode attaches where the kernel has the mmap_lock
    // tracepoints (the programs for its argument layout).
    let host = if host_tp {
        "probe mmap_lock_host_start: mmap_lock_tp (exact)".to_string()
    } else {
        "probe mmap_lock_host_start: none (".to_string()
    };
    assert!(lines.iter().any(|l| l.starts_with(&host)), "{host:?} not in:\n{}", r.stdout);
    let f = temp_file("off.toml", b"[probes]\nmmap_lock_host = \"off\"\n");
    let r = daemon(&["check", "--config", &f]);
    assert!(r.stdout.lines().any(|l| l == "probe mmap_lock_host_end: none (disabled by config)"), "{}", r.stdout);
    // What attaches by default, but the host family.
    let host_points: Vec<&str> = remote_vm_common::registry::Family::MmapLockHost.spec().points.iter().map(|p| p.name()).collect();
    let expected = allows().expected();
    let n = expected.iter().filter(|e| e.mode.is_some() && !host_points.contains(&e.probe)).count();
    let (_, total) = remote_vm_testkit::allows::probe_counts(&expected);
    let summary = format!("summary: degraded: {n} of {total} probes attached");
    assert!(r.stdout.lines().any(|l| l == summary), "{summary:?} not in:\n{}", r.stdout);
}

#[test]
fn compare_never_prints_the_password_of_a_refused_url() {
    // 1360921 printed `--prometheus ftp://alice:hunter2@…` as given.
    let r = daemon(&["compare", "--prometheus", "ftp://alice:hunter2@prom.example:9090"]);
    assert_eq!(
        one_line_failure(&r),
        "remote-vm-daemon: --prometheus ftp://…@prom.example:9090: only http:// and https:// URLs are taken (expected http[s]://[USER:PASSWORD@]HOST[:PORT][/PATH])"
    );
}
