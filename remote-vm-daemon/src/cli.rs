//! The command line: the daemon and its subcommands, declared once with clap
//! (`main.rs` runs them; `examples/man.rs` renders the man pages from them).
use std::net::SocketAddr;

use clap::{Parser, Subcommand};

use crate::{
    cmd::{Common, check, client::ClientFlags, compare},
    config,
};

/// `top`'s default: the daemon's Unix socket where the packaged socket unit
/// (and the embedded default config) puts it.
pub const DEFAULT_SOCKET_URL: &str = concat!("unix:", "/run/remote-vm/remote-vm.sock");

#[derive(Parser, Debug)]
#[command(name = "remote-vm-daemon", version, about = "Classifies remote-memory reads (__access_remote_vm) as fast path, fallback or slow path and exports Prometheus metrics.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the probes and serve /metrics until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        common: Common,
        /// Where to serve: ADDRESS:PORT or :PORT (every address); repeatable
        /// (overrides the config's web.listen_address; default 127.0.0.1:19361).
        #[arg(long = "web.listen-address", visible_alias = "listen", value_name = "ADDRESS:PORT", value_parser = parse_listen)]
        listen: Vec<SocketAddr>,
        /// The metrics path (overrides the config's web.telemetry_path; default /metrics).
        #[arg(long = "web.telemetry-path", value_name = "PATH", value_parser = parse_telemetry_path)]
        telemetry_path: Option<String>,
        /// The Unix socket serving every path, /stalls included, to whoever may
        /// open it (overrides the config's web.socket; default
        /// /run/remote-vm/remote-vm.sock; "" for none). Under socket activation
        /// the socket unit's sockets are served instead.
        #[arg(long = "web.socket", value_name = "PATH", value_parser = parse_socket)]
        socket: Option<SocketPath>,
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
    /// The fleet's A/B table from an existing Prometheus (or a compatible engine:
    /// VictoriaMetrics, …): remote reads by path and fallback reason, grouped by
    /// the kernel (patched, series, release) each host ran at each sample, with hosts per
    /// group. Counts are exact counter increases (resets included).
    Compare {
        /// Base URL of the engine, e.g. http://localhost:9090 or https://[::1]:9090/prefix
        #[arg(long, value_name = "URL")]
        prometheus: String,
        /// How far back from --end: 30m, 1h, 7d, …
        #[arg(long, default_value = "1h")]
        range: String,
        /// The range's end: Unix seconds, or now (a minute ago: the last
        /// scrapes may still be written).
        #[arg(long, default_value = "now", value_name = "TIME")]
        end: String,
        /// raw: every raw sample (one query per counter; small fleets and ranges);
        /// chunked: the engine summarises time chunks, raw samples only for chunks
        /// with a reset or a kernel change (large fleets); auto: by the expected
        /// sample count. Both give the same counts.
        #[arg(long, value_enum, default_value = "auto")]
        mode: compare::Mode,
        /// chunked mode's chunk, e.g. 1h (default: sized from the expected sample count).
        #[arg(long, value_name = "DURATION")]
        chunk: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
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
        /// The daemon: its Unix socket (unix:/PATH; /stalls is served there to
        /// the socket's group), or a base URL or HOST:PORT (over TCP /stalls
        /// needs authentication: see the flags below).
        #[arg(long, default_value = DEFAULT_SOCKET_URL)]
        url: String,
        #[command(flatten)]
        client: ClientFlags,
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

fn parse_telemetry_path(v: &str) -> Result<String, String> {
    config::parse_telemetry_path(v).ok_or_else(|| format!("expected {}", config::TELEMETRY_PATH_ALLOWED))
}

/// `--web.socket`: a path, or none ("").
#[derive(Debug, Clone)]
pub struct SocketPath(pub Option<std::path::PathBuf>);

fn parse_socket(v: &str) -> Result<SocketPath, String> {
    match v {
        "" => Ok(SocketPath(None)),
        p if std::path::Path::new(p).is_absolute() && p.len() < 108 => Ok(SocketPath(Some(p.into()))),
        _ => Err(format!("expected {}", config::SOCKET_ALLOWED)),
    }
}

fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    config::parse_listen(v).ok_or_else(|| format!("expected {}", config::LISTEN_ALLOWED))
}

