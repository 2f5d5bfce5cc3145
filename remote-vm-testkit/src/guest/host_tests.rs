//! `host_tests` (only when named, `cargo xtask vm-test` boots Debian's 6.12
//! and 7.3 for it): the host integration tests, whose binaries xtask puts in
//! the folder `rvm.host_tests=` names, run inside the VM as if it were the host. They derive what the
//! daemon must attach from what the kernel allows; here they also learn what
//! `patched` must be (`REMOTE_VM_EXPECT_PATCHED`).
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::classes::Kernel;

use super::harness::{DAEMON, Report, cmdline_arg};

pub(super) fn host_tests(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    let dir = cmdline_arg("rvm.host_tests").context("no rvm.host_tests= (the folder of the host test binaries)")?;
    let mut bins: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("{dir} (the host test binaries)"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    bins.sort();
    if bins.is_empty() {
        bail!("no host test binaries in {dir}");
    }
    // They run the daemon at the path they were built with (`rvm.host_tests_daemon=`).
    let path = PathBuf::from(cmdline_arg("rvm.host_tests_daemon").context("no rvm.host_tests_daemon= (the daemon's path in the host tests)")?);
    if !path.exists() {
        std::fs::create_dir_all(path.parent().context("the daemon's path has no folder")?)?;
        std::os::unix::fs::symlink(DAEMON, &path).with_context(|| format!("link {} to {DAEMON}", path.display()))?;
    }
    for bin in bins {
        let name = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cmd = Command::new(&bin);
        cmd.args(["--include-ignored", "--test-threads=1"]);
        if let Some(k) = kernel {
            cmd.env("REMOTE_VM_EXPECT_PATCHED", if k.is_patched() { "yes" } else { "no" });
            cmd.env("REMOTE_VM_EXPECT_SERIES", k.series().label());
        }
        let out = cmd.output().with_context(|| format!("run {}", bin.display()))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for line in text.lines() {
            println!("vmtest: host_tests.{name}| {line}");
        }
        // libtest's summary: `test result: ok. N passed; M failed; …`.
        let count = |what: &str| -> u32 {
            text.lines()
                .filter_map(|l| l.strip_prefix("test result: "))
                .flat_map(|l| l.split("; "))
                .map(|p| p.trim_start_matches("ok. ").trim_start_matches("FAILED. "))
                .filter_map(|p| p.split_once(' '))
                .filter(|(_, w)| *w == what)
                .filter_map(|(n, _)| n.parse::<u32>().ok())
                .sum()
        };
        report.check(format!("host_tests.{name}.exit"), 0, out.status.code().unwrap_or(-1));
        report.check(format!("host_tests.{name}.failed"), 0, count("failed"));
        report.check(format!("host_tests.{name}.some_passed"), true, count("passed") > 0);
    }
    Ok(())
}
