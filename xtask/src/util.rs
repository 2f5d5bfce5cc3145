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
