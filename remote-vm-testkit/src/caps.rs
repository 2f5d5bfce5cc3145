//! Running a program as an unprivileged user with exactly some capabilities, to
//! prove which ones the daemon needs.
use std::os::unix::process::CommandExt;

use anyhow::{Context, Result, bail};

const NOBODY: u32 = 65534;

/// Becomes nobody keeping only `caps` (comma-separated numbers), raises them into
/// the ambient set so they survive exec, and execs `command`.
pub fn exec_with(list: &str, command: &[String]) -> Result<()> {
    let numbers: Vec<u8> = list
        .split(',')
        .map(|c| c.trim().parse::<u8>().context("capability number"))
        .collect::<Result<_>>()?;
    let keep: caps::CapsHashSet = caps::all().into_iter().filter(|c| numbers.contains(&c.index())).collect();
    if keep.len() != numbers.len() {
        bail!("unknown capability number in {numbers:?}");
    }
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(NOBODY) != 0
            || libc::setuid(NOBODY) != 0
        {
            bail!("becoming nobody: {}", std::io::Error::last_os_error());
        }
    }
    // Permitted first (it bounds the others), then inheritable and effective, then
    // ambient, which exec keeps.
    for set in [caps::CapSet::Permitted, caps::CapSet::Inheritable, caps::CapSet::Effective] {
        caps::set(None, set, &keep).with_context(|| format!("capset {set:?}"))?;
    }
    for cap in &keep {
        caps::raise(None, caps::CapSet::Ambient, *cap).with_context(|| format!("ambient {cap}"))?;
    }
    let err = std::process::Command::new(&command[0]).args(&command[1..]).exec();
    bail!("exec {}: {err}", command[0])
}
