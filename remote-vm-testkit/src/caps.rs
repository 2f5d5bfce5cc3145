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
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let word = |i: usize| (mask >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(i),
        permitted: word(i),
        inheritable: word(i),
    });
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(NOBODY) != 0
            || libc::setuid(NOBODY) != 0
        {
            bail!("becoming nobody: {}", std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            bail!("capset: {}", std::io::Error::last_os_error());
        }
        for cap in &caps {
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, *cap as libc::c_ulong, 0, 0) != 0 {
                bail!("ambient cap {cap}: {}", std::io::Error::last_os_error());
            }
        }
    }
    let err = std::process::Command::new(&command[0]).args(&command[1..]).exec();
    bail!("exec {}: {err}", command[0])
}
