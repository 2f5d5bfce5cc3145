//! remote-vm-daemon: loads the probes, classifies remote-memory accesses and
//! serves Prometheus metrics.
mod btf;
mod caps;
mod compare;
mod config;
mod exporter;
mod kernel;
mod layout;
mod loader;
mod logging;
mod metrics;
mod misses;
mod notify;
mod probes;
mod server;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};

use crate::{config::Config, exporter::State, kernel::KernelFacts};

/// Exit status: everything attached.
const EXIT_OK: u8 = 0;
/// Exit status: could not run (bad input, no privileges, …).
const EXIT_FAILED: u8 = 1;
/// Exit status of `check`: runs, but some probes did not attach (all reported).
const EXIT_DEGRADED: u8 = 2;

#[derive(Parser, Debug)]
#[command(name = "remote-vm-daemon", version, about = "Classifies remote-memory reads (__access_remote_vm) as fast path, fallback or slow path and exports Prometheus metrics.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// TOML config file over the embedded defaults (see `remote-vm-daemon defaults`).
    #[arg(long, env = "REMOTE_VM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kernel BTF to use instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "PATH")]
    btf: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (overrides the config).
    #[arg(long, env = "REMOTE_VM_LOG", value_name = "LEVEL", value_parser = parse_level)]
    log_level: Option<log::LevelFilter>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach the probes and serve /metrics until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        common: Common,
        /// Address to serve on (overrides the config; default 127.0.0.1:19361).
        #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
        listen: Option<SocketAddr>,
    },
    /// Validate the config (no privileges needed), then load and attach every probe,
    /// print one line per probe and the kernel facts, and detach. Exit 0: all
    /// attached; 2: degraded (some not attached, all reported); 1: could not run.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Print the embedded default config.
    Defaults,
    /// The fleet's A/B table from an existing Prometheus: remote reads by path and
    /// fallback reason, grouped by kernel (patched, release), with hosts per group.
    /// Counts are exact counter increases from the raw samples (resets included).
    Compare {
        /// Base URL of the Prometheus, e.g. http://localhost:9090
        #[arg(long, value_name = "URL")]
        prometheus: String,
        /// How far back from now: 30m, 1h, 7d, …
        #[arg(long, default_value = "1h")]
        range: String,
        /// Label matchers for every series, e.g. 'job="remote-vm"'.
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long, value_enum, default_value = "table")]
        format: compare::Format,
    },
}

fn parse_level(v: &str) -> Result<log::LevelFilter, String> {
    config::parse_log_level(v).ok_or_else(|| format!("expected {}", config::LOG_LEVEL_ALLOWED))
}

fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    config::parse_listen(v).ok_or_else(|| format!("expected {}", config::LISTEN_ALLOWED))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        EXIT_FAILED
                    } else {
                        EXIT_OK
                    })
                }
                // One line: clap's first, without its usage footer.
                _ => fail(e.to_string().lines().next().unwrap_or("bad arguments").trim_start_matches("error: ")),
            };
        }
    };
    match cli.command {
        Command::Defaults => {
            print!("{}", config::DEFAULTS);
            ExitCode::from(EXIT_OK)
        }
        Command::Check { common } => check(common),
        Command::Compare {
            prometheus,
            range,
            selector,
            format,
        } => {
            let result = compare::Prometheus::parse(&prometheus).and_then(|p| {
                let range_s = compare::parse_range(&range)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                compare::compare(&p, range_s, &selector, now)
            });
            match result {
                Ok(groups) => {
                    print!("{}", compare::render(&groups, format, &range));
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => fail(e),
            }
        }
        Command::Run { common, listen } => run(common, listen),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("remote-vm-daemon: {msg}");
    ExitCode::from(EXIT_FAILED)
}

fn settle(common: &Common) -> Result<Config, config::ConfigError> {
    let mut config = Config::load(common.config.as_deref())?;
    if let Some(level) = common.log_level {
        config.log_level = level;
    }
    Ok(config)
}

/// Loads and attaches per `config`; the kernel facts completed from its BTF.
fn load(common: &Common, config: &Config) -> (KernelFacts, Result<loader::Loaded, loader::LoadError>) {
    let mut facts = KernelFacts::read(common.btf.as_deref());
    let loaded = loader::load(&loader::LoadOptions {
        btf_path: common.btf.as_deref(),
        log_level: config.log_level,
        choices: &config.probes,
    });
    if let Ok(l) = &loaded {
        facts.fill_from_layout(&l.layout);
    }
    (facts, loaded)
}

fn check(common: Common) -> ExitCode {
    let config = match settle(&common) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    println!(
        "config: ok ({})",
        common
            .config
            .as_ref()
            .map_or("embedded defaults".to_string(), |p| p.display().to_string())
    );
    logging::init(config.log_level.min(log::LevelFilter::Warn));
    let (facts, loaded) = load(&common, &config);
    println!("{}", exporter::kernel_line(&facts));
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    for line in loaded.layout.lines() {
        println!("{line}");
    }
    for line in exporter::verdict_lines(&loaded) {
        println!("{line}");
    }
    println!("{}", exporter::patched_line(&loaded));
    for line in exporter::sight_lines(&loaded) {
        println!("{line}");
    }
    let (attached, total) = loaded.probe_counts();
    if attached == total {
        println!("summary: all {total} probes attached");
        ExitCode::from(EXIT_OK)
    } else {
        println!("summary: degraded: {attached} of {total} probes attached");
        ExitCode::from(EXIT_DEGRADED)
    }
}

fn run(common: Common, listen: Option<SocketAddr>) -> ExitCode {
    let mut config = match settle(&common) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    logging::init(config.log_level);
    let notify = notify::Notifier::from_env();
    // Bind first: a taken port fails before anything is attached.
    notify.status(&format!("binding {}", config.listen));
    let listener = match std::net::TcpListener::bind(config.listen) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return fail(format!(
                "cannot listen on {}: {e} (another remote-vm-daemon? choose another with --listen)",
                config.listen
            ));
        }
        Err(e) => return fail(format!("cannot listen on {}: {e}", config.listen)),
    };
    notify.status("attaching probes");
    let (facts, loaded) = load(&common, &config);
    log::info!("{}", exporter::kernel_line(&facts));
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    for line in exporter::verdict_lines(&loaded) {
        log::info!("{line}");
    }
    log::info!("{}", exporter::patched_line(&loaded));
    let (attached, points) = loaded.probe_counts();
    if attached < points {
        log::warn!("degraded: {attached} of {points} probes attached; the rest are reported as mode=\"none\"");
    }
    // Everything is attached and every fd we need is open: give up all privilege
    // before any other thread exists, so none keeps it.
    match caps::drop_all() {
        Ok(()) => log::info!("dropped all capabilities (CapEff {:#x})", caps::effective().unwrap_or(0)),
        Err(e) => log::error!("could not drop capabilities: {e}"),
    }
    loaded.forward_logs();
    // Parsing the kernel's BTF twice (aya's and ours) peaks at tens of MB; give
    // the freed memory back to the system.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let state = Arc::new(State {
        facts,
        loaded,
        hist_min_log2: config.hist_min_log2,
        hist_max_log2: config.hist_max_log2,
    });
    let served = runtime.block_on(async {
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))?;
        log::info!("serving http://{}/metrics", config.listen);
        notify.send(&format!(
            "READY=1\nSTATUS=serving http://{}/metrics; {attached} of {points} probes attached",
            config.listen
        ));
        server::serve(listener, state.clone(), shutdown_signal()).await;
        Ok::<(), std::io::Error>(())
    });
    notify.send("STOPPING=1\nSTATUS=detaching probes");
    log::info!("shutting down");
    drop(runtime);
    drop(state);
    match served {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => fail(format!("cannot serve on {}: {e}", config.listen)),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        log::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
