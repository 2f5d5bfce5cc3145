//! remote-vm-daemon: loads the probes, classifies remote-memory accesses and
//! serves Prometheus metrics.

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};

use remote_vm_daemon::{
    cmd::{self, Common, EXIT_FAILED, EXIT_OK, check, compare, fail},
    config, top,
};

#[derive(Parser, Debug)]
#[command(name = "remote-vm-daemon", version, about = "Classifies remote-memory reads (__access_remote_vm) as fast path, fallback or slow path and exports Prometheus metrics.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// `text` for people, `json` for programs (a stable, documented shape).
        #[arg(long, value_enum, default_value = "text")]
        format: check::Format,
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
    /// A live terminal view of a running daemon (no privileges needed): reads/s
    /// by path, fallbacks, the remote wait p99, waits in progress as
    /// reader → target ← holder, recent stalls. q quits.
    Top {
        /// The daemon's base URL (or HOST:PORT).
        #[arg(long, default_value = "http://127.0.0.1:19361")]
        url: String,
        /// Seconds between polls.
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Print one frame (two polls an interval apart) and exit: 0, or 1 when
        /// the daemon did not answer.
        #[arg(long)]
        once: bool,
    },
}

fn parse_interval(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err("expected seconds between 0.1 and 3600".into()),
    }
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
        Command::Check { common, format } => check::check(&common, format),
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
        Command::Run { common, listen } => cmd::run::run(&common, listen),
        Command::Top { url, interval, once } => top::top(&url, std::time::Duration::from_secs_f64(interval), once),
    }
}

