//! A target whose mmap_lock a thread of known tid holds for write, for as long
//! as `munlock()` of a large mlocked, populated (non-THP) region takes, and
//! the holder's own clock for how long that was.
//!
//! The target (`rvm-testkit stall-target --region-mb N`) maps, fills and mlocks
//! the region, prints `ready TID`, then for each `hold` line on stdin mlocks the
//! region again if it is not (that too walks every page under the write lock,
//! so it happens before `go`), prints `go` right before `munlock()` (the timed
//! write hold) and `held NS` after it.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::workload::PAGE;

/// The holder thread's name (its `comm`).
pub const HOLDER_COMM: &str = "holder";

/// The target's side: the holding happens on a thread of its own, so its tid
/// differs from the process's pid and its comm is `HOLDER_COMM`.
pub fn target_main(region_mb: usize) -> Result<()> {
    std::thread::Builder::new()
        .name(HOLDER_COMM.into())
        .spawn(move || hold_loop(region_mb))?
        .join()
        .map_err(|_| anyhow::anyhow!("the holder thread panicked"))?
}

fn hold_loop(region_mb: usize) -> Result<()> {
    let len = region_mb << 20;
    // SAFETY: a fresh anonymous mapping, ours alone.
    let region = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if region == libc::MAP_FAILED {
        bail!("mmap {region_mb} MiB: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the mapping above; 4 KiB pages so there is a page table entry per page.
    unsafe {
        libc::madvise(region, len, libc::MADV_NOHUGEPAGE);
        for off in (0..len).step_by(PAGE) {
            *(region as *mut u8).add(off) = 1;
        }
        if libc::mlock(region, len) != 0 {
            bail!("mlock {region_mb} MiB: {}", std::io::Error::last_os_error());
        }
    }
    let tid = unsafe { libc::gettid() };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {tid}")?;
    out.flush()?;
    let mut locked = true;
    for line in std::io::stdin().lock().lines() {
        if line? != "hold" {
            continue;
        }
        // SAFETY: the mapping above.
        if !locked && unsafe { libc::mlock(region, len) } != 0 {
            bail!("mlock again: {}", std::io::Error::last_os_error());
        }
        writeln!(out, "go")?;
        out.flush()?;
        let start = Instant::now();
        // SAFETY: the mapping above.
        let r = unsafe { libc::munlock(region, len) };
        let held = start.elapsed();
        if r != 0 {
            bail!("munlock: {}", std::io::Error::last_os_error());
        }
        locked = false;
        writeln!(out, "held {}", held.as_nanos())?;
        out.flush()?;
    }
    Ok(())
}

/// The test's side: a running target.
pub struct StallTarget {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The holder thread (not the target's main thread).
    pub tid: i32,
}

impl StallTarget {
    pub fn spawn(region_mb: usize) -> Result<StallTarget> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["stall-target", "--region-mb", &region_mb.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn stall-target")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut t = StallTarget { child, stdin, stdout, tid: 0 };
        let line = t.line()?;
        t.tid = line.strip_prefix("ready ").and_then(|v| v.parse().ok()).with_context(|| format!("target said {line:?}"))?;
        Ok(t)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("stall-target exited");
        }
        Ok(line.trim().to_string())
    }

    /// Starts one write hold; returns once the holder is about to enter it.
    pub fn start_hold(&mut self) -> Result<()> {
        writeln!(self.stdin, "hold")?;
        self.stdin.flush()?;
        match self.line()?.as_str() {
            "go" => Ok(()),
            other => bail!("stall-target said {other:?}"),
        }
    }

    /// Waits for the hold to end: how long it was, by the holder's clock (ns).
    pub fn end_hold(&mut self) -> Result<u64> {
        let line = self.line()?;
        line.strip_prefix("held ").and_then(|v| v.parse().ok()).with_context(|| format!("target said {line:?}"))
    }

    /// One hold with nothing else going on.
    pub fn hold(&mut self) -> Result<u64> {
        self.start_hold()?;
        self.end_hold()
    }

    /// One `read()` of the target's `/proc/PID/cmdline` (two remote accesses:
    /// a 1-byte probe, then the whole argv); returns the time it took (ns).
    pub fn read_cmdline(&self) -> Result<u64> {
        use std::io::Read;
        let mut file = std::fs::File::open(format!("/proc/{}/cmdline", self.pid()))?;
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        let n = file.read(&mut buf)?;
        let took = start.elapsed().as_nanos() as u64;
        if n == 0 {
            bail!("empty cmdline");
        }
        Ok(took)
    }
}

impl Drop for StallTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
