//! Running a program as an unprivileged user with exactly some capabilities, to
//! prove which ones the daemon needs.
use std::os::unix::process::CommandExt;

use anyhow::{Context, Result, bail};

const NOBODY: u32 = 65534;

/// Becomes nobody keeping only `caps` (comma-separated numbers), raises them into
/// the ambient set so they survive exec, and execs `command`.
pub fn exec_with(caps: &str, command: &[String]) -> Result<()> {
    let caps: Vec<u32> = caps
        .split(',')
        .map(|c| c.trim().parse::<u32>().context("capability number"))
        .collect::<Result<_>>()?;
    let mask: u64 = caps.iter().fold(0, |m, c| m | (1u64 << c));
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(NOBODY) != 0
            || libc::setuid(NOBODY) != 0
        {
            bail!("becoming nobody: {}", std::io::Error::last_os_error());
        }
        remote_vm_common::caps::set(mask).context("capset")?;
        for cap in &caps {
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, *cap as libc::c_ulong, 0, 0) != 0 {
                bail!("ambient cap {cap}: {}", std::io::Error::last_os_error());
            }
        }
    }
    let err = std::process::Command::new(&command[0]).args(&command[1..]).exec();
    bail!("exec {}: {err}", command[0])
}
