//! Helpers every xtask step uses: progress lines and running commands.
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Progress lines: every step says what it does.
macro_rules! say {
    ($($arg:tt)*) => {{
        println!("xtask: {}", format!($($arg)*));
    }};
}
pub(crate) use say;

/// Runs a command; fails on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command; its stdout (stderr passes through); fails on a non-zero exit.
pub fn sh_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Caches of the machine's that outlive a clone (CI runs on a clean one):
/// debootstrapped base trees and a package cache, each made again when
/// missing or incomplete. `rm -r` it to start afresh.
pub const MACHINE_CACHE: &str = "/var/cache/remote-vm";
