//! `cargo xtask`: set-up, build, run and test remote-vm.
//!
//! - `cargo xtask run [-- DAEMON ARGS]`: set up, build, start the daemon.
//! - `cargo xtask test`: set up, then every test: unit, host integration, VM.
//! - `cargo xtask vm-test [--kernel [NAME=]PATH]...`: the VM tests alone.
mod ab;
mod abuse;
mod cgsoak;
mod apt;
mod bench;
mod btf_testdata;
mod cpio;
mod dashboards;
mod deb;
mod fleettest;
mod fuzz;
mod kbuild;
mod kernels;
mod matrix;
mod newcomer;
mod promtest;
mod readers;
mod setup;
mod systemd;
mod toptest;
mod util;
mod vm;
mod webtest;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};

use crate::util::{say, sh, sh_output};


#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// How QEMU runs the guests: `auto` tries a short KVM boot and falls back to
    /// TCG with the reason printed. `bench --icount` always uses TCG.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    accel: vm::Accel,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building needs (Debian packages, bpf-linker, the rustup link).
    Setup {
        /// Also what the tests need (QEMU, busybox-static, prometheus).
        #[arg(long)]
        test: bool,
    },
    /// Set up and build the daemon (release).
    Build,
    /// Set up, build, and run the daemon in the foreground with its embedded defaults.
    Run {
        /// Arguments after `--` go to `remote-vm-daemon run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit, host integration and VM tests.
    Test,
    /// Patched vs unpatched under mmap_lock contention: report and plots in target/ab/RUN/.
    Ab {
        /// `[NAME[:EXPECT]=]PATH` of a kernel image, or a name of the matrix
        /// (`patched-7.3`); repeatable. Default: both shared pairs (6.12.117 with
        /// our backport, 7.3.4 with the v1 series as posted).
        #[arg(long = "kernel", value_parser = vm::Kernel::parse)]
        kernels: Vec<vm::Kernel>,
        /// Instead of --kernel: a shared pair by name, `6.12` (our v1 backport),
        /// `7.3` (v1 as posted) or `v2` (`patched-v2` against `unpatched-7.3`).
        #[arg(long, conflicts_with = "kernels", value_parser = PAIRS)]
        pair: Option<String>,
        /// The workload, `key=value,…` (keys of `rvm-testkit stress --help`, `_` for `-`).
        #[arg(long, default_value = ab::DEFAULT_WORKLOAD)]
        workload: String,
    },
    /// The overhead benchmark (daemon off vs on): by default in wall-clock time,
    /// natively and in the patched VM (secondary figures); with --icount in guest
    /// instructions, the figures docs/benchmarks.md is built on.
    Bench {
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 20)]
        scrape_seconds: u64,
        /// Instead: guest instructions (QEMU -icount) per operation of each
        /// workload, with no daemon, the default and every opt-in mode, and per
        /// run of each program, on a pair (default: the shared 6.12 pair).
        #[arg(long)]
        icount: bool,
        /// With --icount: `[NAME[:EXPECT]=]PATH` of a kernel image, or a name of
        /// the matrix; repeatable.
        #[arg(long = "kernel", value_parser = vm::Kernel::parse, requires = "icount")]
        kernels: Vec<vm::Kernel>,
        /// With --icount, instead of --kernel: a shared pair by name, `6.12`,
        /// `7.3` or `v2` (as `ab --pair`).
        #[arg(long, conflicts_with = "kernels", requires = "icount", value_parser = PAIRS)]
        pair: Option<String>,
        /// With --icount: only configuration N (repeatable), by its index in
        /// the guest's list (no daemon is always measured; 0 is the daemon with
        /// nothing attached, 1 the default, then each opt-in mode, then the
        /// default without each family it attaches that refines another — its
        /// price, measured only when named —, the floor last; the list is in
        /// docs/benchmarks.md), each in a boot of its own.
        #[arg(long = "configuration", requires = "icount")]
        only: Vec<usize>,
        /// With --icount: boots per kernel (their figures must agree within 0.5 %).
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// With --icount: also a `/metrics` render with 1 000 and 10 000 more
        /// idle threads (the task iterators' cost per thread).
        #[arg(long)]
        threads: bool,
    },
    /// Build the .deb (target/debian/remote-vm_VERSION_amd64.deb).
    Deb,
    /// The package tests: systemd-analyze verify/security, install, upgrade, purge
    /// in a fresh debootstrap tree, then the unit under systemd in QEMU with the
    /// abuse soak's systemd side.
    DebTest {
        /// Seconds of the abuse soak's systemd side (the full one: 600).
        #[arg(long, default_value_t = systemd::CGROUP_SOAK_SECONDS)]
        cgroup_soak_seconds: u64,
    },
    /// Write dashboards/*.json from xtask/src/dashboards.rs.
    Dashboards,
    /// The dashboard and rules tests: promtool, Grafana's schema, and every query
    /// against Prometheus scraping both shared kernels and the host.
    DashboardTest,
    /// The endpoint over TLS with client certificates and basic auth (openssl,
    /// htpasswd): curl and Debian's Prometheus against the host daemon.
    WebTest,
    /// `compare` at fleet scale on Debian's Prometheus 2.42, a Prometheus 3.x and
    /// VictoriaMetrics: a synthetic fleet backfilled into each, known totals in
    /// both modes, the raw mode refused under a lowered sample limit, every
    /// dashboard and rule expression evaluated.
    FleetTest {
        /// Hosts in the synthetic fleet (`cargo xtask test` runs 1000).
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        /// Days of 5-minute samples.
        #[arg(long, default_value_t = 7)]
        days: u64,
    },
    /// `remote-vm-daemon top` in tmux against a daemon in the unpatched VM during a known stall.
    TopTest,
    /// The HTTP layer against a local user's worst (slowloris, a connect flood,
    /// pipelined scrapes, wrong passwords; TLS and basic auth on) while scrapers
    /// poll once a second: none may fail (`cargo xtask test` runs it 60 s).
    AbuseSoak {
        /// Seconds of abuse (the full soak: 600).
        #[arg(long, default_value_t = ABUSE_SECONDS)]
        seconds: u64,
    },
    /// The fuzz targets of fuzz/ (BTF, config, Prometheus answers): replay the
    /// committed corpus, then fuzz each within its budgets (fuzz/Cargo.toml).
    Fuzz {
        /// Seconds per target after the replay (0: replay only).
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u64,
        /// Only this target; repeatable.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Add the new inputs that reach new code to fuzz/corpus/.
        #[arg(long)]
        merge: bool,
    },
    /// The kernels `vm-test` and `ab` know by name; with `--build`, build an
    /// A/B pair of one's own from Debian's linux-source of a version and a
    /// patch (the series' next version), named after the patch file.
    /// README's commands as a new user runs them, in a clean root: debootstrap SUITE from the machine's archive, the host's rustup copied in, the repository cloned, then `cargo xtask setup --test` and `cargo xtask run` until /metrics answers (6 to 7 min on 2 cores once its root and caches are made)
    NewcomerTest {
        /// The Debian suite of the root.
        #[arg(long, value_enum, default_value = "bookworm")]
        suite: newcomer::Suite,
        /// Also the unit tests (`cargo test --release`) in the root.
        #[arg(long)]
        full: bool,
    },
    Kernels {
        /// Build `NAME-unpatched` and `NAME-patched` (about 2 × 10–15 min on 2 cores).
        #[arg(long, requires_all = ["source", "patch"])]
        build: bool,
        /// The kernel version of Debian's `linux-source-X.Y` (e.g. 7.3.4).
        #[arg(long)]
        source: Option<String>,
        /// The series: a plain `-p1` diff, `git format-patch` files or an mbox
        /// as the list posts it (mail encodings decoded); repeatable, applied
        /// in order.
        #[arg(long)]
        patch: Vec<PathBuf>,
        /// The pair's name (default: `vN` from the series' `[PATCH vN …]`
        /// subjects, else the first patch file's name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Rewrite `xtask/kernels.toml`: each Debian kernel whose recorded version has left the archive becomes the newest of its series (commit the change; test runs only say it)
        #[arg(long, conflicts_with = "build")]
        update: bool,
    },
    /// Write the unit tests' BTF files (remote-vm-daemon/testdata/btf/) from
    /// the shared 6.12 and 7.3 images and Debian's 6.1: each kernel's BTF cut
    /// down to the types the daemon reads.
    BtfTestdata {
        /// Make them in target/ and fail if a committed one differs (as
        /// `cargo xtask test` does).
        #[arg(long)]
        check: bool,
    },
    /// Boot kernels under QEMU and run the in-VM tests.
    VmTest {
        /// `[NAME[:EXPECT]=]PATH` of a kernel image (EXPECT: patched-v1, patched-v2 —
        /// the series version the image carries —, unpatched, legacy, unknown), or a
        /// name of the matrix (`patched-7.3`, `patched-v2`, `debian-7.0`); repeatable.
        /// Default: ../shared/kernels/bzImage-{patched,unpatched}, ../shared/kernels/7.3/
        /// bzImage-{patched,unpatched,v2} (v2: suites first and callers, every suite
        /// with --all-kernels) and the default Debian kernels of xtask/kernels.toml
        /// (downloaded, cached under target/kernels).
        #[arg(long = "kernel", value_parser = vm::Kernel::parse)]
        kernels: Vec<vm::Kernel>,
        /// Run only this suite after `check` (e.g. `stalls`), for working on one;
        /// `cargo xtask test` always runs them all.
        #[arg(long)]
        only: Option<String>,
        /// Instead: the counting load (`load` suite) on the kernels whose BPF
        /// programs can be preempted (the 7.3 pair, Debian's 6.12 with
        /// `preempt=full`), as `cargo xtask test` runs it.
        #[arg(long, conflicts_with_all = ["kernels", "only"])]
        preemptible: bool,
        /// Also the Debian kernels `xtask/kernels.toml` lists with `set = "all"`
        /// (6.16, 6.18, 7.0, 7.3 and 7.3 PREEMPT_RT; not run by `cargo xtask test`).
        #[arg(long, conflicts_with_all = ["kernels", "preemptible"])]
        all_kernels: bool,
        /// Instead: the host integration tests inside Debian's 6.12 and 7.3 as
        /// if they were the host (fentry and kprobes work there), as `cargo
        /// xtask test` runs them.
        #[arg(long, conflicts_with_all = ["kernels", "only", "preemptible", "all_kernels"])]
        host_suite: bool,
        /// With --preemptible: the soak's length (the full soak: 600).
        #[arg(long, requires = "preemptible", default_value_t = SOAK_SECONDS)]
        soak_seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vm::set_accel(cli.accel);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    let root = workspace_root();
    match cmd {
        Cmd::Setup { test } => setup::setup(if test { setup::Purpose::Test } else { setup::Purpose::Run }),
        Cmd::Build => {
            setup::setup(setup::Purpose::Run)?;
            build(&root)
        }
        Cmd::Run { args } => {
            setup::setup(setup::Purpose::Run)?;
            build(&root)?;
            let daemon = root.join("target/release/remote-vm-daemon");
            say!("starting {} run {}", daemon.display(), args.join(" "));
            let err = Command::new(&daemon).arg("run").args(&args).exec();
            bail!("exec {}: {err}", daemon.display())
        }
        Cmd::Test => {
            setup::setup(setup::Purpose::Test)?;
            test(&root)
        }
        Cmd::Ab { kernels, pair, workload } => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            let kernels = pair_kernels(&root, pair.as_deref(), kernels, vm::shared_pairs)?;
            if kernels.is_empty() {
                bail!("no kernels: ../shared/kernels is not there; pass an A/B pair with --kernel NAME:patched-v1=PATH --kernel NAME:unpatched=PATH");
            }
            ab::run(&root, kernels, &workload).map(drop)
        }
        Cmd::Bench { reps, scale, scrape_seconds, icount, kernels, pair, only, runs, threads } => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            if icount {
                let named = match (&pair, kernels.is_empty()) {
                    (Some(p), _) => format!(" --pair {p}"),
                    (None, true) => String::new(),
                    (None, false) => kernels.iter().map(|k| format!(" --kernel {}", k.name)).collect(),
                } + &only.iter().map(|i| format!(" --configuration {i}")).collect::<String>();
                let kernels = pair_kernels(&root, pair.as_deref(), kernels, vm::shared_kernels)?;
                let options = bench::IcountOptions { scale, runs, threads, only, side_by_side: true };
                return bench::icount(&root, kernels, &named, &options).map(drop);
            }
            bench::run(&root, &bench::Args { reps, scale, scrape_seconds }).map(drop)
        }
        Cmd::Deb => {
            setup::setup(setup::Purpose::Run)?;
            build(&root)?;
            deb::build(&root, None, &root.join("target/debian")).map(drop)
        }
        Cmd::DebTest { cgroup_soak_seconds } => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            deb::test(&root, cgroup_soak_seconds, true)
        }
        Cmd::Dashboards => {
            for (path, contents) in dashboards::files()? {
                std::fs::write(root.join(path), contents)?;
                say!("wrote {path}");
            }
            Ok(())
        }
        Cmd::TopTest => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            toptest::run(&root)
        }
        Cmd::AbuseSoak { seconds } => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            abuse::run(&root, &abuse::Args { seconds })
        }
        Cmd::FleetTest { hosts, days } => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            fleettest::run(&root, &fleettest::Args { hosts, days })
        }
        Cmd::WebTest => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            webtest::test(&root)
        }
        Cmd::DashboardTest => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            promtest::dashboard_test(&root)
        }
        Cmd::Fuzz { seconds, targets, merge } => {
            setup::setup(setup::Purpose::Test)?;
            fuzz::run(&root, &fuzz::Args { seconds, only: targets, merge })
        }
        Cmd::NewcomerTest { suite, full } => {
            setup::setup(setup::Purpose::Test)?;
            newcomer::run(&root, &newcomer::Args { suite, full }).map(drop)
        }
        Cmd::Kernels { build, source, patch, name, update } => {
            if update {
                kernels::update(&root)
            } else if build {
                setup::setup(setup::Purpose::Test)?;
                let Some(source) = source else { bail!("--build needs --source and --patch") };
                ensure!(!patch.is_empty(), "--build needs --source and --patch");
                kbuild::build(&root, &kbuild::Args { source, patches: patch, name }).map(drop)
            } else {
                list_kernels(&root)
            }
        }
        Cmd::BtfTestdata { check } => {
            setup::setup(setup::Purpose::Test)?;
            btf_testdata::run(&root, check)
        }
        Cmd::VmTest { kernels, only, preemptible, all_kernels, host_suite, soak_seconds } => {
            setup::setup(setup::Purpose::Test)?;
            build(&root)?;
            if host_suite {
                return host_suite_group(&root).and_then(|g| run_vm_groups(&root, &[g]));
            }
            if preemptible {
                return preemptible_group(&root, soak_seconds).and_then(|g| run_vm_groups(&root, &[g]));
            }
            let set = if all_kernels { kernels::Set::All } else { kernels::Set::Default };
            vm_test(&root, kernels, only.as_deref(), set)
        }
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(setup::cargo());
    cmd.current_dir(root).env("REMOTE_VM_EBPF_TOOLCHAIN", setup::EBPF_TOOLCHAIN);
    cmd
}

fn build(root: &Path) -> Result<()> {
    say!("building remote-vm-daemon and rvm-testkit (release; the eBPF object with {})", setup::EBPF_TOOLCHAIN);
    sh(cargo(root).args(["build", "--release", "-p", "remote-vm-daemon", "-p", "remote-vm-testkit"]))
}

fn test(root: &Path) -> Result<()> {
    build(root)?;
    say!("running unit and host integration tests (cargo test --release, ignored host tests included)");
    sh(cargo(root).args(["test", "--release", "--", "--include-ignored"]))?;
    // The newcomer test (network, dpkg, a build in the root) beside the
    // BTF check and the fuzzers (one core each), before anything timed.
    say!("newcomer: README's set-up and run in a clean bookworm root of this machine kind, beside the fuzzers (--full adds the unit tests there)");
    let newcomer = {
        let root = root.to_path_buf();
        std::thread::spawn(move || newcomer::run(&root, &newcomer::Args { suite: newcomer::Suite::Bookworm, full: false }))
    };
    say!("btf-testdata --check: the unit tests' BTF files are what the kernels give");
    let checks = btf_testdata::run(root, true).and_then(|()| {
        say!("fuzz: the committed corpus, then {FUZZ_SECONDS} s per target");
        fuzz::run(root, &fuzz::Args { seconds: FUZZ_SECONDS, only: Vec::new(), merge: false })
    });
    let newcomer = newcomer.join().map_err(|_| anyhow::anyhow!("the newcomer test panicked"))?;
    checks?;
    newcomer?;
    // The VM tests, the preemptible runs and the host suite in one queue, two
    // boots at a time: no core idles while the last boots of one run finish.
    let groups = vec![
        vm_test_group(root, Vec::new(), None, kernels::Set::Default)?,
        preemptible_group(root, SOAK_SECONDS)?,
        host_suite_group(root)?,
    ];
    run_vm_groups(root, &groups)?;
    say!("top: the live view in tmux against a stalled reader in the unpatched VM");
    toptest::run(root)?;
    promtest::dashboard_test(root)?;
    say!("web: TLS and basic auth (--web.config.file) against curl and Prometheus");
    webtest::test(root)?;
    say!("abuse soak, reduced ({ABUSE_SECONDS} s; cargo xtask abuse-soak --seconds 600 is the full one)");
    abuse::run(root, &abuse::Args { seconds: ABUSE_SECONDS })?;
    say!("fleet: compare on Prometheus 2 and 3 and VictoriaMetrics, 1000 synthetic hosts over 7 days");
    fleettest::run(root, &fleettest::Args { hosts: 1000, days: 7 })?;
    say!(
        "package: unit and .deb on Debian 12 and 13; under systemd on Debian 12 with the abuse soak's systemd side ({} s; cargo xtask deb-test boots Debian 13 too)",
        systemd::CGROUP_SOAK_SECONDS
    );
    let pair = vm::shared_kernels(root);
    // The overhead benchmark beside the package test, whose one VM leaves a
    // core free: guest instructions do not depend on what else the host
    // runs, and the benchmark boots one kernel at a time, so no more than
    // two guests share the two cores, as in the VM tests. At full scale,
    // one boot per kernel (about a minute and a half each): `cargo xtask
    // bench --icount` boots each twice and fails when they differ by more
    // than AGREE_PERCENT.
    let (package, benchmark) = std::thread::scope(|scope| {
        let benchmark = (pair.len() == 2).then(|| {
            scope.spawn(|| {
                say!("overhead benchmark in guest instructions beside the package test, one boot per kernel (cargo xtask bench --icount: two, which must agree within {} %)", bench::AGREE_PERCENT);
                let options = bench::IcountOptions { scale: 1.0, runs: 1, threads: false, only: Vec::new(), side_by_side: false };
                bench::icount(root, vm::shared_kernels(root), "", &options)
            })
        });
        let package = deb::test(root, systemd::CGROUP_SOAK_SECONDS, false);
        (package, benchmark.map(|b| b.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the overhead benchmark panicked")))))
    });
    package?;
    if let Some(benchmark) = benchmark {
        benchmark?;
        // Wall-clock: alone on the machine.
        say!("A/B run, reduced ({})", ab::TEST_WORKLOAD);
        ab::run(root, pair, ab::TEST_WORKLOAD)?;
    } else {
        say!("A/B run and overhead benchmark: skipped (they need the shared 6.12 pair)");
    }
    let missing = vm::shared_missing();
    if missing.is_empty() {
        say!("all tests passed");
    } else {
        say!(
            "all tests passed, WITHOUT {}: the lockless path (a patched kernel) was NOT tested; \
             pass your own pair to vm-test and ab with --kernel NAME:patched-v1=PATH --kernel NAME:unpatched=PATH",
            missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// The abuse soak's length in `cargo xtask test` (`cargo xtask abuse-soak --seconds 600`: the full one).
const ABUSE_SECONDS: u64 = 60;

/// Each fuzz target's run in `cargo xtask test` (`cargo xtask fuzz --seconds 600`: the long one).
const FUZZ_SECONDS: u64 = 20;

/// The soak's length in `cargo xtask test` (`vm-test --preemptible --soak-seconds 600`: the full one).
const SOAK_SECONDS: u64 = 40;

/// The counting load and the soak where BPF programs can be preempted.
fn preemptible_group(root: &Path, soak_seconds: u64) -> Result<VmGroup> {
    say!("vm-test: where BPF programs can be preempted: 100 k reads from 8 threads, and a {soak_seconds} s soak of 1000 readers, counted exactly");
    let params = format!("rvm.only=load,soak rvm.soak_seconds={soak_seconds}");
    vm_group(root, preemptible_kernels(root)?, &params, Duration::from_secs(600 + soak_seconds), "vm-test-preemptible", &[], Readers::No)
}

/// Kernels whose BPF programs can be preempted, where a plain `+=` on a per-CPU
/// counter could lose an increment: the 7.3 pair (`PREEMPT_LAZY`) and Debian's
/// 6.12 (`PREEMPT_DYNAMIC`) booted with `preempt=full`.
fn preemptible_kernels(root: &Path) -> Result<Vec<vm::Kernel>> {
    let mut kernels = vm::shared_kernels_7_3(root);
    let mut debian = kernels::debian_kernels(root)?
        .into_iter()
        .find(|k| k.name == "debian-6.12")
        .context("no debian-6.12 kernel")?;
    debian.name = "debian-6.12-preempt-full".into();
    debian.params = "preempt=full".into();
    kernels.push(debian);
    Ok(kernels)
}

/// The Debian kernels the host integration tests also run in, as if they were
/// the host: fentry and kprobes work there (not on this project's host).
const HOST_SUITE_KERNELS: [&str; 2] = ["debian-6.12", "debian-7.3"];

/// The host integration tests (`tests/host.rs`, `tests/bad_input.rs`) inside
/// Debian's 6.12 and 7.3: each boot runs `check`, then the suite `host_tests`.
fn host_suite_group(root: &Path) -> Result<VmGroup> {
    say!("vm-test: the host integration tests inside {} as if they were the host", HOST_SUITE_KERNELS.join(" and "));
    let out = sh_output(cargo(root).args([
        "test", "--release", "--no-run", "--message-format=json", "-p", "remote-vm-daemon", "--test", "host", "--test", "bad_input",
    ]))?;
    let mut files = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (Some(exe), Some(name), true) = (msg["executable"].as_str(), msg["target"]["name"].as_str(), is_test) {
            files.push((format!("{HOST_TESTS_DIR}/{name}"), PathBuf::from(exe)));
        }
    }
    ensure!(files.len() == 2, "cargo test --no-run gave {} test executables, not 2", files.len());
    // The tests run the daemon at the path they were built with (the guest
    // links it there: the path may be under /tmp, a tmpfs in the guest), and promtool.
    let daemon = root.join("target/release/remote-vm-daemon");
    files.push(("/usr/bin/promtool".into(), PathBuf::from("/usr/bin/promtool")));
    let mut kernels = Vec::new();
    for name in HOST_SUITE_KERNELS {
        kernels.push(kernels::debian_kernel_named(root, name)?.with_context(|| format!("no {name} in xtask/kernels.toml"))?);
    }
    let params = format!("rvm.only=host_tests rvm.host_tests={HOST_TESTS_DIR} rvm.host_tests_daemon={}", daemon.display());
    vm_group(root, kernels, &params, Duration::from_secs(600), "vm-test-host-suite", &files, Readers::No)
}

/// Where the guest finds the host test binaries (`rvm.host_tests=` tells
/// rvm-testkit's suite `host_tests`).
const HOST_TESTS_DIR: &str = "/usr/lib/rvm/host-tests";

/// The kernels given, else both shared A/B pairs (6.12 with our backport, 7.3.4
/// with the series as posted), 7.3.4 with v2 (`patched-v2`, some suites in the
/// default set) and the Debian kernels of `set`.
fn vm_test(root: &Path, kernels: Vec<vm::Kernel>, only: Option<&str>, set: kernels::Set) -> Result<()> {
    // The whole matrix, every suite: "Supported kernels" in docs/probes-and-kernels.md is its table.
    let whole = kernels.is_empty() && only.is_none() && set == kernels::Set::All;
    run_vm_groups(root, &[vm_test_group(root, kernels, only, set)?])?;
    if whole {
        let table = std::fs::read_to_string(root.join("target/vm-test/matrix.md"))?;
        matrix::write_kernels_page(root, &table)?;
        say!("vm-test: {} \"Supported kernels\" rewritten from this run (commit it)", matrix::KERNELS_PAGE);
    }
    Ok(())
}

/// `vm_test`'s boots.
fn vm_test_group(root: &Path, mut kernels: Vec<vm::Kernel>, only: Option<&str>, set: kernels::Set) -> Result<VmGroup> {
    if kernels.is_empty() {
        kernels = vm::shared_pairs(root);
        kernels.extend(vm::shared_v2(root, set == kernels::Set::Default));
        kernels.extend(kernels::debian_kernels_of(root, set)?);
    } else {
        resolve_names(root, &mut kernels)?;
    }
    let params = only.map_or(String::new(), |suite| format!("rvm.only={suite}"));
    let readers = if set == kernels::Set::All { Readers::Every } else { Readers::Named };
    vm_group(root, kernels, &params, Duration::from_secs(600), "vm-test", &[], readers)
}

/// The kernels known by name: the shared pairs, the Debian record, built pairs.
fn list_kernels(root: &Path) -> Result<()> {
    for k in vm::shared_pairs(root).into_iter().chain(vm::shared_v2(root, false)) {
        say!("kernels: {} ({}; expect {})", k.name, k.origin, k.expect);
    }
    for e in kernels::entries(root)? {
        say!("kernels: {} (Debian {} {}, {}; expect {})", e.name, e.package, e.version, if e.default { "default" } else { "--all-kernels" }, e.expect);
    }
    let built = root.join("target/kernels/built");
    for dir in std::fs::read_dir(&built).into_iter().flatten().flatten() {
        for which in ["patched", "unpatched"] {
            if let Some(k) = kbuild::built_kernel(root, &format!("{}-{which}", dir.file_name().to_string_lossy())) {
                say!("kernels: {} ({}; built)", k.name, k.origin);
            }
        }
    }
    Ok(())
}

/// The shared pairs `ab --pair` and `bench --icount --pair` take by name.
const PAIRS: [&str; 3] = ["6.12", "7.3", "v2"];

/// The kernels of `--pair NAME` (`6.12`: our v1 backport; `7.3`: v1 as
/// posted; `v2`: `patched-v2` against `unpatched-7.3`), else `--kernel`'s,
/// else `default`'s; names resolved.
fn pair_kernels(root: &Path, pair: Option<&str>, mut kernels: Vec<vm::Kernel>, default: fn(&Path) -> Vec<vm::Kernel>) -> Result<Vec<vm::Kernel>> {
    match pair {
        Some("6.12") => kernels = vm::shared_kernels(root),
        Some("7.3") => kernels = vm::shared_kernels_7_3(root),
        Some("v2") => {
            kernels = vm::shared_v2(root, false);
            kernels.extend(vm::shared_kernels_7_3(root).into_iter().filter(|k| !k.is_patched()));
        }
        Some(other) => bail!("--pair {other}: not one of {}", PAIRS.join(", ")),
        None if kernels.is_empty() => kernels = default(root),
        None => {}
    }
    resolve_names(root, &mut kernels)?;
    Ok(kernels)
}

/// A bare name (`--kernel patched-7.3`, `--kernel debian-7.0`, a built
/// `--kernel NAME-patched`) is a kernel of the matrix.
fn resolve_names(root: &Path, kernels: &mut [vm::Kernel]) -> Result<()> {
    for k in kernels.iter_mut() {
        if k.image.as_os_str() == k.name.as_str() && !k.image.exists() {
            let found = match vm::shared_pairs(root).into_iter().chain(vm::shared_v2(root, false)).find(|m| m.name == k.name) {
                Some(m) => Some(m),
                None => match kbuild::built_kernel(root, &k.name) {
                    Some(b) => Some(b),
                    None => kernels::debian_kernel_named(root, &k.name)?,
                },
            };
            *k = found.with_context(|| format!("--kernel {}: no such file, and no kernel of the matrix has that name", k.name))?;
        }
        k.check_expect().map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Which boots run the `readers` suite (real programs from Debian's
/// packages, see xtask's `readers`) besides the default suites.
#[derive(Clone, Copy, PartialEq)]
enum Readers {
    /// None, and the programs stay out of the initramfs.
    No,
    /// Those of `readers::DEFAULT_KERNELS` (and any run that names it in `--only`).
    Named,
    /// Every kernel's (`--all-kernels`).
    Every,
}

/// VM boots `vm-test` runs side by side.
const VM_TEST_PARALLEL: usize = 2;

/// One kernel's boots of `vm_test_in`: its matrix row, and whether it failed.
fn test_kernel(kernel: &vm::Kernel, params: &str, timeout: Duration, out: &Path, initramfs: &Path, readers: Readers) -> Result<(matrix::Row, bool)> {
    let mut failed = false;
    // Some suites only (the default set's `Kernel::only`), unless the run names its suites.
    let own_params = match kernel.only {
        Some(only) if !params.contains("rvm.only=") => format!("{params} rvm.only={only}").trim().to_string(),
        _ => params.to_string(),
    };
    let params = own_params.as_str();
    // Suites in boots of their own, unless the run names its suites.
    let isolated: &[&[&str]] = if params.contains("rvm.only=") { &[] } else { &kernel.isolate };
    let mut main_params = if isolated.is_empty() {
        params.to_string()
    } else {
        format!("{params} rvm.skip={}", isolated.concat().join(",")).trim().to_string()
    };
    let with_readers = match readers {
        Readers::No => None,
        Readers::Named => readers::DEFAULT_KERNELS.iter().find(|(k, _)| *k == kernel.name).map(|(_, holds)| *holds),
        Readers::Every => Some(None),
    };
    if let Some(holds) = with_readers
        && !params.contains("rvm.only=")
    {
        let holds = holds.map_or(String::new(), |h| format!(" rvm.readers={h}"));
        main_params = format!("{main_params} rvm.with=readers{holds}").trim().to_string();
    }
    let mut boot = vm::boot_with(kernel, initramfs, &out.join(&kernel.name), &main_params, timeout, "vmtest-report ")?;
    let mut checks = boot
        .report
        .as_ref()
        .and_then(|r| r["checks"].as_array().cloned())
        .unwrap_or_default();
    for group in isolated {
        let only = group.join(",");
        say!("vm-test: {}: {only} in a boot of its own (a defect of this kernel, see docs/probes-and-kernels.md, \"Supported kernels\")", kernel.name);
        let dir = out.join(format!("{}-{}", kernel.name, group.join("-")));
        let own = vm::boot_with(kernel, initramfs, &dir, &format!("{params} rvm.only={only}"), timeout, "vmtest-report ")?;
        // `check` runs in every boot: its checks once.
        let theirs = own.report.as_ref().and_then(|r| r["checks"].as_array().cloned()).unwrap_or_default();
        checks.extend(theirs.into_iter().filter(|c| !c["name"].as_str().is_some_and(|n| n.starts_with("check."))));
        if !own.success {
            say!(
                "vm-test: {}: {only} FAILED; console kept at {}; failed checks:\n{}",
                kernel.name,
                own.console.display(),
                vm::failures(&own.console, 20)
            );
            boot.success = false;
        }
    }
    if boot.success {
        say!(
            "vm-test: {}: {} checks passed in {:.0} s (console: {})",
            kernel.name,
            checks.len(),
            boot.seconds,
            boot.console.display()
        );
    } else {
        say!(
            "vm-test: {}: FAILED after {:.0} s; console kept at {}; failed checks:\n{}\nit ends:\n{}",
            kernel.name,
            boot.seconds,
            boot.console.display(),
            vm::failures(&boot.console, 20),
            vm::tail(&boot.console, 15)
        );
        failed = true;
    }
    let row = matrix::Row {
        kernel: kernel.name.clone(),
        origin: kernel.origin.clone(),
        expect: kernel.expect.clone(),
        check: boot.report.as_ref().map_or(serde_json::Value::Null, |r| r["check"].clone()),
        checks,
        passed: Some(boot.success),
    };
    Ok((row, failed))
}

/// A run of VM boots: each kernel booted with the run's test initramfs and
/// parameters; consoles and the matrix go to `out`.
struct VmGroup {
    kernels: Vec<vm::Kernel>,
    params: String,
    timeout: Duration,
    out: PathBuf,
    initramfs: PathBuf,
    readers: Readers,
}

/// A run whose consoles and matrix go to `target/DIR`, its initramfs written.
/// `extra`: more executables for the guest (path there, file).
fn vm_group(
    root: &Path,
    kernels: Vec<vm::Kernel>,
    params: &str,
    timeout: Duration,
    dir: &str,
    extra: &[(String, PathBuf)],
    readers: Readers,
) -> Result<VmGroup> {
    let out = root.join("target").join(dir);
    std::fs::create_dir_all(&out)?;
    let initramfs = out.join("initramfs.cpio");
    say!("vm-test: writing {}", initramfs.display());
    let mut extra = extra.to_vec();
    let mut trees = Vec::new();
    if readers != Readers::No {
        let programs = readers::programs(root)?;
        extra.extend(programs.files);
        trees = programs.trees;
    }
    vm::write_test_initramfs_from(root, &initramfs, &extra, &trees)?;
    Ok(VmGroup { kernels, params: params.to_string(), timeout, out, initramfs, readers })
}

/// Boots every kernel of every run from one queue, in the runs' order, two at a
/// time: a TCG guest keeps one host core busy, and the boots share nothing (no
/// forwarded port; each its own console folder). Then each run's matrix; the
/// runs that failed, named.
fn run_vm_groups(root: &Path, groups: &[VmGroup]) -> Result<()> {
    let jobs: Vec<(usize, usize)> = groups.iter().enumerate().flat_map(|(g, group)| (0..group.kernels.len()).map(move |i| (g, i))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<((usize, usize), Result<(matrix::Row, bool)>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..VM_TEST_PARALLEL.min(jobs.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(g, i)) = jobs.get(j) else { break };
                        let group = &groups[g];
                        let result = test_kernel(&group.kernels[i], &group.params, group.timeout, &group.out, &group.initramfs, group.readers);
                        done.push(((g, i), result));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    let mut per_group: Vec<Vec<(usize, Result<(matrix::Row, bool)>)>> = groups.iter().map(|_| Vec::new()).collect();
    for ((g, i), result) in results {
        per_group[g].push((i, result));
    }
    let mut errors = Vec::new();
    for (group, results) in groups.iter().zip(per_group) {
        if let Err(e) = finish_vm_group(root, group, results) {
            errors.push(e);
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => bail!("{}", errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; ")),
    }
}

/// One run's matrix from its boots' results; an error naming the kernels that failed.
fn finish_vm_group(root: &Path, group: &VmGroup, mut results: Vec<(usize, Result<(matrix::Row, bool)>)>) -> Result<()> {
    let (kernels, out) = (&group.kernels, &group.out);
    results.sort_by_key(|(i, _)| *i);
    let missing: Vec<&str> = kernels.iter().enumerate().filter(|(i, _)| !results.iter().any(|(j, _)| j == i)).map(|(_, k)| k.name.as_str()).collect();
    ensure!(missing.is_empty(), "VM tests ended without a result for: {} (a worker thread panicked)", missing.join(", "));
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for (i, result) in results {
        let (row, kernel_failed) = result?;
        if kernel_failed {
            failed.push(kernels[i].name.clone());
        }
        rows.push(row);
    }
    // The host as a native row: what `check` attaches here.
    let host_check = Command::new(root.join("target/release/remote-vm-daemon"))
        .args(["check", "--format", "json"])
        .output()?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    rows.push(matrix::Row {
        kernel: "host".into(),
        origin: format!("this machine, Linux {} (native)", release.trim()),
        expect: "(what attaches here)".into(),
        check: serde_json::from_slice(&host_check.stdout).unwrap_or(serde_json::Value::Null),
        checks: Vec::new(),
        passed: None,
    });
    let table = matrix::render(&rows);
    std::fs::write(out.join("matrix.md"), &table)?;
    say!("vm-test: kernel matrix (also in {}):\n{table}", out.join("matrix.md").display());
    if !failed.is_empty() {
        bail!("VM tests failed on: {}", failed.join(", "));
    }
    Ok(())
}
