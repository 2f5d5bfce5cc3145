//! The daemon's modules as a library: `main.rs` is the command line over them,
//! and the fuzz targets (`fuzz/`) drive the parsers of outside input (BTF,
//! config, Prometheus answers) through the same code.
mod bpf;
mod caps;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod kernel;
pub mod logging;
mod metrics;
mod notify;
mod server;
mod stalls;
mod status;
pub mod webconfig;
pub mod top;
