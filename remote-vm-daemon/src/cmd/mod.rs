//! One module per subcommand; `main.rs` parses the command line and dispatches.
pub mod check;
pub mod client;
pub mod compare;
pub mod run;

use std::path::PathBuf;

use crate::{
    bpf::{self, Attached, LoadError, Session},
    config::{self, Config},
    kernel::{Kernel, KernelError},
};

/// Exit status: everything attached.
pub const EXIT_OK: u8 = 0;
/// Exit status: could not run (bad input, no privileges, …).
pub const EXIT_FAILED: u8 = 1;
/// Exit status of `check`: runs, but some probes did not attach (all reported).
pub const EXIT_DEGRADED: u8 = 2;

/// The flags `run` and `check` share.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// TOML config file over the embedded defaults (see `remote-vm-daemon defaults`).
    #[arg(long, env = "REMOTE_VM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel BTF to use instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (overrides the config's log.level).
    #[arg(long = "log.level", visible_alias = "log-level", env = "REMOTE_VM_LOG", value_name = "LEVEL", value_parser = parse_level)]
    pub log_level: Option<log::LevelFilter>,
    /// TLS and basic auth: a web config file in Prometheus exporter-toolkit's
    /// format (overrides the config's web.config_file; "" for none). Re-read on SIGHUP.
    #[arg(long = "web.config.file", env = "REMOTE_VM_WEB_CONFIG_FILE", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Log line format: logfmt or json (overrides the config's log.format).
    #[arg(long = "log.format", value_name = "FORMAT", value_enum)]
    pub log_format: Option<crate::logging::Format>,
}

fn parse_level(v: &str) -> Result<log::LevelFilter, String> {
    config::parse_log_level(v).ok_or_else(|| format!("expected {}", config::LOG_LEVEL_ALLOWED))
}

impl Common {
    /// The config file over the defaults, flags over the file.
    pub fn settle(&self) -> Result<Config, config::ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(level) = self.log_level {
            config.log_level = level;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        if let Some(file) = &self.web_config_file {
            config.web_config_file = (!file.as_os_str().is_empty()).then(|| file.clone());
        }
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Load and attach per `config`.
pub fn load(kernel: &Kernel, config: &Config) -> Result<(Session, Attached), StartError> {
    Ok(bpf::load(
        kernel,
        &bpf::LoadOptions {
            log_level: config.log_level,
            stall_threshold_ns: config.stall_threshold_ns,
            kernel_stacks: config.kernel_stacks,
            choices: &config.probes,
        },
    )?)
}

pub fn fail(msg: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("remote-vm-daemon: {msg}");
    std::process::ExitCode::from(EXIT_FAILED)
}
