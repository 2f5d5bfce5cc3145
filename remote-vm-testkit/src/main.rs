//! rvm-testkit: workloads with known answers and the in-VM test runner.
use remote_vm_testkit::{abuse, bench, cgsoak, guest, icount, soak, stall, stress, workload};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rvm-testkit")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the VM test suite (inside the guest, from /init). Exit 0 when every check passed.
    Guest,
    /// A target process: map and fill pages, print the layout as JSON, wait for stdin EOF.
    /// Run a command as user nobody with exactly the given capabilities
    /// (ambient), e.g. `with-caps 38,39 -- remote-vm-daemon check`.
    WithCaps {
        /// Capability numbers, comma-separated (38 CAP_PERFMON, 39 CAP_BPF).
        caps: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The contention workload: a churning target read by monitoring-like readers;
    /// prints its ground truth (calls made, latencies) as JSON.
    Stress {
        #[command(flatten)]
        args: stress::StressArgs,
    },
    /// The overhead benchmark on this machine: prints figures and a JSON line.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// A reader of the soak (started by the guest suite `soak`): reads until killed.
    SoakReader {
        #[command(flatten)]
        args: soak::ReaderArgs,
    },
    /// The target of `stress` (started by it).
    StressTarget {
        #[command(flatten)]
        args: stress::StressArgs,
    },
    /// A target whose mmap_lock a thread of its own holds on request (see stall.rs).
    StallTarget {
        /// munlock, mlock: write hold of tens of ms (--region-mb); merge: write hold
        /// of at least --hold-ms; readers: read hold of at least --hold-ms, and a
        /// writer; unmap: munmap() of --region-mb (reader-owned), and a writer.
        #[arg(long, default_value = "munlock", value_parser = ["munlock", "mlock", "merge", "readers", "unmap"])]
        kind: String,
        /// The munlock, mlock and unmap kinds' region (MiB).
        #[arg(long, default_value_t = 256)]
        region_mb: usize,
        /// The merge and readers kinds' wanted hold (ms); calibrated, a lower bound.
        #[arg(long, default_value_t = 2500)]
        hold_ms: u64,
    },
    /// mmap_lock contention inside this process (see workload::contend).
    Contend {
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        #[arg(long, default_value_t = 64)]
        region_mb: usize,
    },
    /// One measurement of `bench --icount` in a fresh process: prints guest
    /// nanoseconds (= instructions) per operation.
    IcountOp {
        #[command(flatten)]
        args: icount::OpArgs,
    },
    /// A local user's worst against the daemon's HTTP layer while scrapers
    /// poll it (see abuse.rs); prints `abuse-result {json}`.
    Abuse {
        #[command(flatten)]
        args: abuse::AbuseArgs,
    },
    /// The systemd side of the abuse soak (root, in the systemd VM; see
    /// cgsoak.rs); prints `cgroup-soak-result {json}`.
    CgroupSoak {
        #[command(flatten)]
        args: cgsoak::SoakArgs,
    },
    /// A reader of `cgroup-soak` (started by it).
    CgroupReader {
        #[command(flatten)]
        args: cgsoak::ReaderArgs,
    },
    /// Tries to bind addresses every 100 ms (started by `cgroup-soak`).
    Squat {
        #[command(flatten)]
        args: cgsoak::SquatArgs,
    },
    /// Under the package's unit (`cargo xtask deb-test`): `ps aux` of the
    /// tree's procps under its strace during a merging `mprotect()` hold,
    /// checked against the running service's `/stalls` (exit 1: a check failed).
    UnitReaders {
        /// What the booted kernel is: patched, unpatched or legacy.
        #[arg(long)]
        expect: String,
        /// The service's main process (pinned with the holder to CPU 0).
        #[arg(long)]
        daemon_pid: u32,
    },
    Target {
        #[arg(long, default_value_t = 4)]
        pages: usize,
        #[arg(long, default_value_t = 16)]
        zero_pages: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Guest => guest::main(),
        Cmd::Stress { args } => stress::run(&args, true).and_then(|r| {
            println!("{}", serde_json::to_string(&r)?);
            Ok(true)
        }),
        Cmd::Bench { args } => bench::run(&args).and_then(|r| {
            println!("bench-result {}", serde_json::to_string(&r)?);
            Ok(true)
        }),
        Cmd::SoakReader { args } => soak::reader_main(&args).map(|()| true),
        Cmd::StressTarget { args } => stress::target_main(&args).map(|()| true),
        Cmd::StallTarget { kind, region_mb, hold_ms } => {
            stall::Kind::from_args(&kind, region_mb, hold_ms).and_then(stall::target_main).map(|()| true)
        }
        Cmd::WithCaps { caps, command } => remote_vm_testkit::caps::exec_with(&caps, &command).map(|()| false),
        Cmd::Contend { iterations, region_mb } => workload::contend(iterations, region_mb).map(|n| {
            println!("{n}");
            true
        }),
        Cmd::IcountOp { args } => icount::op_main(&args).and_then(|r| {
            println!("{}", serde_json::to_string(&r)?);
            Ok(true)
        }),
        Cmd::Abuse { args } => abuse::run(&args).and_then(|r| {
            println!("abuse-result {}", serde_json::to_string(&r)?);
            Ok(true)
        }),
        Cmd::CgroupSoak { args } => cgsoak::run(&args).and_then(|r| {
            println!("cgroup-soak-result {}", serde_json::to_string(&r)?);
            Ok(true)
        }),
        Cmd::CgroupReader { args } => cgsoak::reader_main(&args).map(|()| true),
        Cmd::Squat { args } => cgsoak::squat_main(&args).map(|()| true),
        Cmd::UnitReaders { expect, daemon_pid } => guest::unit_readers(&expect, daemon_pid),
        Cmd::Target { pages, zero_pages } => workload::target_main(pages, zero_pages).map(|()| true),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rvm-testkit: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
