//! Processes with known answers: a target whose memory layout we control, and
//! readers that make an exact number of `__access_remote_vm()` calls.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::FileExt,
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub const PAGE: usize = 4096;
/// The byte pattern of page `i` of a target region.
pub fn pattern(page: usize) -> u8 {
    0xA0 ^ (page as u8)
}

/// Addresses inside a running target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    /// Anonymous, written (so resident), PTE-mapped pages.
    pub resident: u64,
    pub resident_pages: usize,
}

/// Runs in the target process: maps and fills the regions, prints the layout as
/// one JSON line, then waits for stdin to close.
pub fn target_main(pages: usize) -> Result<()> {
    let len = pages * PAGE;
    // SAFETY: anonymous private mapping, checked for MAP_FAILED.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    // PTE-level pages (THP is `always` in the test kernels).
    // SAFETY: advising our own mapping.
    unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
    for page in 0..pages {
        // SAFETY: inside the mapping; volatile so the writes (faults) happen.
        unsafe {
            let p = (base as *mut u8).add(page * PAGE);
            for off in 0..PAGE {
                std::ptr::write_volatile(p.add(off), pattern(page));
            }
        }
    }
    let layout = Layout {
        resident: base as u64,
        resident_pages: pages,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&layout)?)?;
    out.flush()?;
    drop(out);
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}

/// A running target process.
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    pub layout: Layout,
    mem: File,
}

impl Target {
    pub fn spawn(pages: usize) -> Result<Target> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["target", "--pages", &pages.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn target")?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("target stdout")?).read_line(&mut line)?;
        let layout: Layout = serde_json::from_str(&line).with_context(|| format!("target said {line:?}"))?;
        let mem = File::open(format!("/proc/{}/mem", child.id())).context("open /proc/PID/mem")?;
        Ok(Target {
            child,
            stdin,
            layout,
            mem,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One `pread` of `/proc/PID/mem`: exactly one `__access_remote_vm()` call for
    /// `len` <= 4096 (mem_rw copies through one page-sized buffer).
    pub fn pread(&self, addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = self.mem.read_at(&mut buf, addr)?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
