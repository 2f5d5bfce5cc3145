//! The daemon's modules as a library: `main.rs` is the command line over them,
//! and the fuzz targets (`fuzz/`) drive the parsers of outside input (BTF,
//! config, Prometheus answers) through the same code.
mod bpf;
mod caps;
mod cgroups;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod hangup;
pub mod kernel;
mod listen;
pub mod logging;
mod metrics;
mod notify;
pub mod server;
mod stacks;
mod stalls;
mod status;
pub mod webconfig;
pub mod top;

/// `s` with control characters escaped: text from outside (a config value, a
/// name or path in the web config) cannot break the one line an error is.
pub(crate) fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}
