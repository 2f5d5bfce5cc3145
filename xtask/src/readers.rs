//! The real readers of the guests' `readers` suite: `ps`, `top` and `pgrep`
//! (procps), `pidstat` (sysstat), `prometheus-process-exporter` and `strace`,
//! unpacked from Debian bookworm's packages, and the machine's `curl`. They go into the
//! test initramfs with the libraries `ldd` finds for them, so that every
//! kernel (the shared ones have no systemd or Debian tree) runs the same
//! programs.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{
    apt::{self, Apt},
    util::{say, sh},
};

/// Each file: its package, its path in the package and in the guest.
const FILES: [(&str, &str, &str); 7] = [
    ("procps", "bin/ps", "/usr/bin/ps"),
    ("procps", "usr/bin/top", "/usr/bin/top"),
    ("procps", "usr/bin/pgrep", "/usr/bin/pgrep"),
    ("sysstat", "usr/bin/pidstat", "/usr/bin/pidstat"),
    ("prometheus-process-exporter", "usr/bin/prometheus-process-exporter", "/usr/bin/prometheus-process-exporter"),
    ("strace", "usr/bin/strace", "/usr/bin/strace"),
    // `top -b` exits ("terminals database is inaccessible") without its terminal's entry.
    ("ncurses-base", "lib/terminfo/d/dumb", "/lib/terminfo/d/dumb"),
];

/// The release the programs come from (a private package list: whatever
/// this machine's own sources are).
const SUITE: &str = "bookworm";

/// Packages whose libraries the programs need and a fresh machine may lack.
const LIBRARIES: [&str; 1] = ["libproc2-0"];

/// The kernels whose default `vm-test` run includes the suite (every kernel,
/// every hold, with `--all-kernels` or `--only readers`), and which holds
/// (`None`: all five): Debian's 6.12 (ORC: holders' stacks) with all but
/// `mlock` (its path is munlock's, `mlock_fixup()`; the stalls suite names
/// `mlock2` with its own reader), and for the lockless path (no stall at all)
/// the patched shared image with the merging `mprotect()`. About 110 s of
/// guest time together (2026-12-06; every hold on both: about 170 s).
pub const DEFAULT_KERNELS: [(&str, Option<&str>); 2] = [("patched", Some("mprotect")), ("debian-6.12", Some("mprotect,populate,munlock,munmap"))];

/// What goes into the initramfs: each file (path in the guest, file) and
/// the trees its libraries may come from.
pub struct Programs {
    pub files: Vec<(String, PathBuf)>,
    pub trees: Vec<PathBuf>,
}

/// Unpacks the packages (once) under `target/readers/` and lists the programs.
pub fn programs(root: &Path) -> Result<Programs> {
    let dir = root.join("target/readers");
    std::fs::create_dir_all(&dir)?;
    let apt = Apt::private(root, apt::ARCHIVE_SUITES)?;
    let mut packages: Vec<&str> = FILES.iter().map(|(p, _, _)| *p).collect();
    packages.extend(LIBRARIES);
    packages.sort_unstable();
    packages.dedup();
    let mut trees = Vec::new();
    for package in packages {
        let tree = dir.join(package);
        if !tree.join(".unpacked").exists() {
            let debs = dir.join("debs");
            std::fs::create_dir_all(&debs)?;
            let deb = apt.download_from(package, SUITE, &debs).with_context(|| format!("download {package}/{SUITE} (the readers suite's programs)"))?;
            say!("readers: unpacking {}", deb.display());
            let _ = std::fs::remove_dir_all(&tree);
            sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
            std::fs::write(tree.join(".unpacked"), deb.file_name().unwrap_or_default().as_encoded_bytes())?;
        }
        trees.push(tree);
    }
    let mut files: Vec<(String, PathBuf)> = FILES.iter().map(|(package, path, guest)| (guest.to_string(), dir.join(package).join(path))).collect();
    let curl = Path::new("/usr/bin/curl");
    anyhow::ensure!(curl.is_file(), "/usr/bin/curl is missing (cargo xtask setup installs it)");
    files.push(("/usr/bin/curl".into(), curl.into()));
    for (_, file) in &files {
        anyhow::ensure!(file.is_file(), "{} is not in its package", file.display());
    }
    Ok(Programs { files, trees })
}
