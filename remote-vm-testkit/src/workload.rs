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
pub const HUGE: usize = 2 << 20;

/// The byte pattern of page `i` of the resident region.
pub fn pattern(page: usize) -> u8 {
    0xA0 ^ (page as u8)
}

/// Addresses inside a running target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    /// Anonymous, written (so resident), PTE-mapped pages.
    pub resident: u64,
    pub resident_pages: usize,
    /// Two resident pages in two VMAs: the first read-write, the second read-only.
    pub straddle: u64,
    /// Anonymous pages never written (reads see the shared zero page).
    pub zero: u64,
    pub zero_pages: usize,
    /// A written 2 MiB hugetlb page, if the kernel had one reserved.
    pub hugetlb: Option<u64>,
    /// Half a page before the end of another written hugetlb page that a
    /// written page of its own VMA follows at once (if one was reserved).
    #[serde(default)]
    pub hugetlb_straddle: Option<u64>,
    /// An unmapped page; the page before it is resident.
    pub hole: u64,
    /// A 2 MiB-aligned, PMD-mapped transparent huge page, if the kernel gave one.
    pub thp: Option<u64>,
    /// Bytes of argv as `/proc/PID/cmdline` shows it: moved (PR_SET_MM) into a
    /// resident shared file mapping, so not anonymous. 0 if that failed.
    pub cmdline_len: u64,
}

/// What the target's moved argv holds.
pub const CMDLINE: &[u8] = b"file-backed\0argv\0";

/// An anonymous mapping with PTE-level pages (MADV_NOHUGEPAGE).
pub fn map(len: usize, prot: i32, flags: i32) -> Result<*mut u8> {
    // SAFETY: anonymous mapping, checked for MAP_FAILED.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags | libc::MAP_ANONYMOUS, -1, 0) };
    if p == libc::MAP_FAILED {
        bail!("mmap {len}: {}", std::io::Error::last_os_error());
    }
    // PTE-level pages (THP is `always` in the test kernels).
    // SAFETY: advising our own mapping.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    Ok(p.cast())
}

fn fill(p: *mut u8, len: usize, byte: u8) {
    for off in 0..len {
        // SAFETY: inside a writable mapping; volatile so the faults happen.
        unsafe { std::ptr::write_volatile(p.add(off), byte) };
    }
}

/// Runs in the target process: maps and fills the regions, prints the layout as
/// one JSON line, then waits for stdin to close.
pub fn target_main(pages: usize, zero_pages: usize) -> Result<()> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let resident = map(pages * PAGE, rw, libc::MAP_PRIVATE)?;
    for page in 0..pages {
        // SAFETY: page inside the mapping.
        fill(unsafe { resident.add(page * PAGE) }, PAGE, pattern(page));
    }
    let straddle = map(2 * PAGE, rw, libc::MAP_PRIVATE)?;
    fill(straddle, 2 * PAGE, 0x5b);
    // SAFETY: our own mapping; splits it into two VMAs.
    if unsafe { libc::mprotect(straddle.add(PAGE).cast(), PAGE, libc::PROT_READ) } != 0 {
        bail!("mprotect: {}", std::io::Error::last_os_error());
    }
    let zero = map(zero_pages * PAGE, rw, libc::MAP_PRIVATE)?;
    // SAFETY: as above; a huge page is only there if reserved (nr_hugepages).
    let huge = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            HUGE,
            rw,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
            -1,
            0,
        )
    };
    let hugetlb = if huge == libc::MAP_FAILED {
        None
    } else {
        fill(huge.cast(), PAGE, 0x6c);
        Some(huge as u64)
    };
    let hugetlb_straddle = map_hugetlb_straddle();
    let thp = map_thp()?;
    let cmdline_len = move_argv_into_a_file().unwrap_or_else(|e| {
        eprintln!("target: cannot move argv into a file mapping: {e:#}");
        0
    });
    // The hole last: a later mapping could land in it.
    let around = map(3 * PAGE, rw, libc::MAP_PRIVATE)?;
    fill(around, 3 * PAGE, 0x7d);
    // SAFETY: unmapping the middle page of our own mapping.
    if unsafe { libc::munmap(around.add(PAGE).cast(), PAGE) } != 0 {
        bail!("munmap: {}", std::io::Error::last_os_error());
    }
    let layout = Layout {
        resident: resident as u64,
        resident_pages: pages,
        straddle: straddle as u64,
        zero: zero as u64,
        zero_pages,
        hugetlb,
        hugetlb_straddle,
        hole: around as u64 + PAGE as u64,
        thp,
        cmdline_len,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&layout)?)?;
    out.flush()?;
    drop(out);
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}

/// A written, 2 MiB-aligned anonymous region with MADV_HUGEPAGE; `Some` if
/// `/proc/self/smaps` shows it backed by a huge page.
/// The byte both sides of the hugetlb straddle hold.
pub const HUGETLB_STRADDLE_BYTE: u8 = 0x9f;

/// A hugetlb page and, right after its end, a page of an ordinary anonymous
/// VMA, both written: the address half a page before the boundary. `None` when
/// no huge page is left or the addresses cannot be had.
fn map_hugetlb_straddle() -> Option<u64> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let none = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // Address space for an aligned huge page and a page after it.
    // SAFETY: a fresh reservation, checked.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), 3 * HUGE, libc::PROT_NONE, none, -1, 0) };
    if p == libc::MAP_FAILED {
        return None;
    }
    let (start, end) = (p as usize, p as usize + 3 * HUGE);
    let aligned = (start + HUGE - 1) & !(HUGE - 1);
    let next = aligned + HUGE;
    // SAFETY: both inside our own reservation (MAP_FIXED replaces only it).
    let placed = unsafe {
        let huge = libc::mmap(aligned as *mut libc::c_void, HUGE, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_FIXED, -1, 0);
        let page = libc::mmap(next as *mut libc::c_void, PAGE, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED, -1, 0);
        huge != libc::MAP_FAILED && page != libc::MAP_FAILED
    };
    // SAFETY: the reservation's parts not used (or all of it when placing failed).
    unsafe {
        if !placed {
            libc::munmap(p, 3 * HUGE);
            return None;
        }
        libc::munmap(p, aligned - start);
        libc::munmap((next + PAGE) as *mut libc::c_void, end - next - PAGE);
    }
    fill((next - PAGE) as *mut u8, PAGE, HUGETLB_STRADDLE_BYTE);
    fill(next as *mut u8, PAGE, HUGETLB_STRADDLE_BYTE);
    Some((next - PAGE / 2) as u64)
}

fn map_thp() -> Result<Option<u64>> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: anonymous mapping, checked.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), 2 * HUGE, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if p == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    let aligned = (p as usize + HUGE - 1) & !(HUGE - 1);
    // SAFETY: advising and writing our own mapping.
    unsafe { libc::madvise(aligned as *mut libc::c_void, HUGE, libc::MADV_HUGEPAGE) };
    fill(aligned as *mut u8, HUGE, 0x8e);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut in_region = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                    in_region = lo <= aligned && aligned < hi;
                    continue;
                }
            }
        }
        if in_region {
            if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                let kb: usize = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                return Ok((kb >= HUGE / 1024).then_some(aligned as u64));
            }
        }
    }
    Ok(None)
}

/// Moves this process's argv (as /proc/PID/cmdline reads it) into a resident
/// shared mapping of a tmpfs file (PR_SET_MM_ARG_START/END, needs
/// CAP_SYS_RESOURCE). Returns its length.
fn move_argv_into_a_file() -> Result<u64> {
    let path = format!("/tmp/rvm-cmdline-{}", std::process::id());
    std::fs::write(&path, CMDLINE)?;
    let file = File::open(&path)?;
    // SAFETY: mapping a file we just wrote, checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    let _ = std::fs::remove_file(&path);
    if p == libc::MAP_FAILED {
        bail!("mmap {path}: {}", std::io::Error::last_os_error());
    }
    // Touch it so the page is mapped (resident, present in the page table).
    // SAFETY: inside the mapping.
    let _ = unsafe { std::ptr::read_volatile(p as *const u8) };
    let start = p as u64;
    for (opt, addr) in [(libc::PR_SET_MM_ARG_START, start), (libc::PR_SET_MM_ARG_END, start + CMDLINE.len() as u64)] {
        // SAFETY: prctl with plain integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_MM, opt as libc::c_ulong, addr as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) } != 0 {
            bail!("prctl(PR_SET_MM): {}", std::io::Error::last_os_error());
        }
    }
    Ok(CMDLINE.len() as u64)
}

/// A running target process.
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    pub layout: Layout,
    mem: File,
}

impl Target {
    pub fn spawn(pages: usize, zero_pages: usize) -> Result<Target> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["target", "--pages", &pages.to_string(), "--zero-pages", &zero_pages.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn target")?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("target stdout")?).read_line(&mut line)?;
        let layout: Layout = serde_json::from_str(&line).with_context(|| format!("target said {line:?}"))?;
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", child.id()))
            .context("open /proc/PID/mem")?;
        Ok(Target {
            child,
            stdin,
            layout,
            mem,
        })
    }

    /// One `pread` of `/proc/PID/mem`: one `__access_remote_vm()` call for `len`
    /// <= 4096 (mem_rw copies through one page-sized buffer), unless the call
    /// returns short and mem_rw asks again for the rest.
    pub fn pread(&self, addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = self.mem.read_at(&mut buf, addr)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// One `pwrite` of `/proc/PID/mem` (FOLL_FORCE | FOLL_WRITE): one call.
    pub fn pwrite(&self, addr: u64, data: &[u8]) -> std::io::Result<usize> {
        self.mem.write_at(data, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn mem(&self) -> &File {
        &self.mem
    }

    /// One `read()` of `/proc/PID/cmdline` with a page-sized buffer: for argv
    /// ending in NUL, two `access_remote_vm()` calls with FOLL_ANON (a 1-byte
    /// probe at arg_end-1, then the page loop's one call).
    pub fn read_cmdline(&self) -> std::io::Result<Vec<u8>> {
        let mut f = File::open(format!("/proc/{}/cmdline", self.child.id()))?;
        let mut buf = vec![0u8; PAGE];
        let n = f.read(&mut buf)?;
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

/// Host-wide mmap_lock contention inside one process: one thread flips the
/// protection of a large populated region (holding the write lock while it
/// rewrites every PTE), three more map and unmap a page (asking for the write
/// lock). More threads than CPUs, so waiters sleep rather than spin (only a
/// sleeping waiter is `lock:contention_begin`). Returns the write-lock requests
/// made: two per iteration per thread.
pub fn contend(iterations: usize, region_mb: usize) -> Result<u64> {
    const MAPPERS: usize = 3;
    let len = region_mb << 20;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let big = map(len, rw, libc::MAP_PRIVATE)?;
    for off in (0..len).step_by(PAGE) {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(big.add(off), 1) };
    }
    let big = big as usize;
    std::thread::scope(|s| {
        let flipper = s.spawn(move || {
            for _ in 0..iterations {
                // SAFETY: our own mapping.
                unsafe {
                    libc::mprotect(big as *mut libc::c_void, len, libc::PROT_READ);
                    libc::mprotect(big as *mut libc::c_void, len, rw);
                }
            }
        });
        let mappers: Vec<_> = (0..MAPPERS)
            .map(|_| {
                s.spawn(move || -> Result<()> {
                    for _ in 0..iterations {
                        let p = map(PAGE, rw, libc::MAP_PRIVATE)?;
                        // SAFETY: unmapping what we just mapped.
                        unsafe { libc::munmap(p.cast(), PAGE) };
                    }
                    Ok(())
                })
            })
            .collect();
        let _ = flipper.join();
        mappers
            .into_iter()
            .try_for_each(|m| m.join().unwrap_or_else(|_| bail!("mapper panicked")))
    })?;
    // SAFETY: our own mapping.
    unsafe { libc::munmap(big as *mut libc::c_void, len) };
    Ok(2 * (1 + MAPPERS as u64) * iterations as u64)
}
