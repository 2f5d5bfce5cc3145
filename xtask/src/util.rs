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
