//! The soak's readers: processes of threads that read the targets' memory
//! (`/proc/PID/mem`, one `__access_remote_vm()` call per read) until killed,
//! each thread making a few hundred reads and exiting, its replacement started
//! at once. Killed mid-read by the guest suite (`guest::soak`).
//!
//! Ground truth survives the kill: each process counts in a shared file
//! (`MAP_SHARED`), before a read `started` and after it `completed` (or
//! `errors`), so the calls the kernel saw lie between the sums of the two.
use std::{
    fs::File,
    os::unix::fs::FileExt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use anyhow::{Context, Result, bail};

use crate::workload::{self, PAGE};

/// Counters per reader slot in the shared file.
pub const WORDS_PER_SLOT: usize = 3;
pub const STARTED: usize = 0;
pub const COMPLETED: usize = 1;
pub const ERRORS: usize = 2;

#[derive(clap::Args, Clone, Debug)]
pub struct ReaderArgs {
    /// Targets as PID:RESIDENT_ADDR:PAGES, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Threads kept alive.
    #[arg(long)]
    pub threads: usize,
    /// The shared counts file and this process's slot in it.
    #[arg(long)]
    pub counts: String,
    #[arg(long)]
    pub slot: usize,
}

/// One target: its memory and where its resident, patterned pages are.
struct Mem {
    file: File,
    resident: u64,
    pages: usize,
}

/// A shared, file-backed array of counters.
pub struct Counts {
    base: *mut AtomicU64,
    words: usize,
}

// SAFETY: the mapping lives as long as the value; the words are atomics.
unsafe impl Send for Counts {}
unsafe impl Sync for Counts {}

impl Counts {
    /// Maps `path` (created or truncated to `slots` slots when `create`).
    pub fn map(path: &str, slots: usize, create: bool) -> Result<Counts> {
        let words = slots * WORDS_PER_SLOT;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)
            .with_context(|| format!("open {path}"))?;
        if create {
            file.set_len((words * 8) as u64)?;
        }
        let len = file.metadata()?.len() as usize;
        if len < words * 8 {
            bail!("{path}: {len} bytes, want {}", words * 8);
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a shared mapping of a file at least `words * 8` bytes long.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), words * 8, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            bail!("mmap {path}: {}", std::io::Error::last_os_error());
        }
        Ok(Counts { base: p.cast(), words })
    }

    pub fn word(&self, slot: usize, which: usize) -> &AtomicU64 {
        let i = slot * WORDS_PER_SLOT + which;
        assert!(i < self.words, "slot {slot} out of range");
        // SAFETY: in bounds of the mapping, aligned (page-aligned base).
        unsafe { &*self.base.add(i) }
    }

    /// One counter summed over every slot.
    pub fn sum(&self, which: usize) -> u64 {
        (0..self.words / WORDS_PER_SLOT).map(|s| self.word(s, which).load(Ordering::SeqCst)).sum()
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`.
        unsafe { libc::munmap(self.base.cast(), self.words * 8) };
    }
}

/// A small deterministic generator (xorshift), seeded per thread.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The reader process: runs until killed.
pub fn reader_main(args: &ReaderArgs) -> Result<()> {
    let mut mems = Vec::new();
    for t in &args.targets {
        let mut parts = t.split(':');
        let (Some(pid), Some(addr), Some(pages)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("target {t:?}: want PID:RESIDENT_ADDR:PAGES");
        };
        mems.push(Mem {
            file: File::open(format!("/proc/{pid}/mem")).with_context(|| format!("open /proc/{pid}/mem"))?,
            resident: addr.parse()?,
            pages: pages.parse()?,
        });
    }
    if mems.is_empty() {
        bail!("no targets");
    }
    let mems = Arc::new(mems);
    let counts = Arc::new(Counts::map(&args.counts, args.slot + 1, false)?);
    let (done, finished) = mpsc::channel::<()>();
    let mut seed = u64::from(std::process::id()) << 20 | 1;
    let spawn = |seed: u64| -> Result<()> {
        let (mems, counts, done, slot) = (mems.clone(), counts.clone(), done.clone(), args.slot);
        std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let mut rng = Rng(seed);
            let reads = 50 + rng.next_u64() % 450;
            let mut buf = [0u8; 64];
            for _ in 0..reads {
                let m = &mems[(rng.next_u64() % mems.len() as u64) as usize];
                let page = (rng.next_u64() % m.pages as u64) as usize;
                counts.word(slot, STARTED).fetch_add(1, Ordering::SeqCst);
                let ok = matches!(m.file.read_at(&mut buf, m.resident + (page * PAGE) as u64), Ok(64))
                    && buf.iter().all(|b| *b == workload::pattern(page));
                counts.word(slot, if ok { COMPLETED } else { ERRORS }).fetch_add(1, Ordering::SeqCst);
            }
            let _ = done.send(());
        })?;
        Ok(())
    };
    for _ in 0..args.threads {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        spawn(seed)?;
    }
    // One new thread per one that exits, until killed.
    for () in finished.iter() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        spawn(seed)?;
    }
    Ok(())
}
