//! apt for set-up and kernel downloads: the machine's own sources, or a
//! private sources list of newer Debian suites (trixie, trixie-backports, sid)
//! under `target/apt/` that never touches the machine's. apt's output goes to a
//! log file; the caller prints one line per step. An install is simulated
//! first and refused when apt would remove a package the machine has.
use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The suites of the private sources list, for kernels newer than bookworm's.
pub const NEWER_SUITES: &[&str] = &["trixie", "trixie-backports", "sid"];
const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub struct Apt {
    /// `-o` options that point apt at the private list (none: the machine's).
    options: Vec<String>,
    log: PathBuf,
}

impl Apt {
    /// The machine's own sources.
    pub fn system(root: &Path) -> Result<Apt> {
        let dir = root.join("target");
        std::fs::create_dir_all(&dir)?;
        Ok(Apt {
            options: Vec::new(),
            log: dir.join("apt.log"),
        })
    }

    /// A private sources list of `suites` in `target/apt/` (lists and cache
    /// there too), updated when older than a day.
    pub fn private(root: &Path, suites: &[&str]) -> Result<Apt> {
        let dir = root.join("target/apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let list = dir.join("sources.list");
        let text: String = suites
            .iter()
            .map(|s| format!("deb [signed-by={KEYRING}] {MIRROR} {s} main\n"))
            .collect();
        let changed = std::fs::read_to_string(&list).ok().as_deref() != Some(text.as_str());
        std::fs::write(&list, &text)?;
        let apt = Apt {
            options: vec![
                format!("Dir::Etc::sourcelist={}", list.display()),
                "Dir::Etc::sourceparts=/nonexistent".into(),
                format!("Dir::State::Lists={}", dir.join("lists").display()),
                format!("Dir::Cache={}", dir.join("cache").display()),
            ],
            log: dir.join("apt.log"),
        };
        let stamp = dir.join("lists/updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() < 86400);
        if changed || !fresh {
            crate::util::say!("apt: updating the private package lists ({}; log {})", suites.join(", "), apt.log.display());
            apt.get(&["update"], None)?;
            std::fs::write(&stamp, "")?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.args(["-o", o]);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// `apt-get ARGS` (in `cwd`), its output appended to the log.
    pub fn get(&self, args: &[&str], cwd: Option<&Path>) -> Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "-y"]).args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let status = cmd.status().context("run apt-get")?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let last = text.lines().rev().find(|l| l.starts_with("E: ")).unwrap_or("no error line");
            bail!("apt-get {} failed ({status}): {last} (log: {})", args.join(" "), self.log.display());
        }
        Ok(())
    }

    /// `apt-cache ARGS`' output.
    pub fn cache(&self, args: &[&str]) -> Result<String> {
        let out = self.command("apt-cache").args(args).output().context("run apt-cache")?;
        if !out.status.success() {
            bail!("apt-cache {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs `packages` (no recommends) unless apt would remove a package
    /// the machine has: then nothing is installed and the error names them.
    pub fn install(&self, packages: &[&str]) -> Result<()> {
        let out = self
            .command("apt-get")
            .args(["install", "-s", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .output()
            .context("run apt-get install -s")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "apt-get install {} would fail: {}",
                packages.join(" "),
                String::from_utf8_lossy(&out.stderr).lines().find(|l| l.starts_with("E: ")).unwrap_or("see apt-get")
            );
        }
        let removed = removals(&text);
        if !removed.is_empty() {
            bail!(
                "installing {} would remove {} from this machine: nothing installed; install a compatible version yourself (apt-get install -s shows the plan)",
                packages.join(" "),
                removed.join(", ")
            );
        }
        let mut args = vec!["install", "--no-install-recommends"];
        args.extend(packages);
        self.get(&args, None)
    }

    /// Downloads `package` (of `version` if given) into `dir`; returns the .deb.
    pub fn download(&self, package: &str, version: Option<&str>, dir: &Path) -> Result<PathBuf> {
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_string(),
        };
        self.get(&["download", &spec], Some(dir))?;
        std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package} .deb in {}", dir.display()))
    }
}

/// The packages an `apt-get install -s` plan removes (`Remv NAME [VERSION]`).
fn removals(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_that_removes_packages_is_seen() {
        // What bookworm's qemu-system-x86 did to a newer qemu-utils.
        let plan = "Reading package lists...\nThe following packages will be REMOVED:\n  qemu-utils\n\
                    Remv qemu-utils [1:9.2.0+ds-1]\nInst qemu-system-x86 (1:7.2+dfsg-7 Debian:12/stable [amd64])\n\
                    Conf qemu-system-x86 (1:7.2+dfsg-7 Debian:12/stable [amd64])\n";
        assert_eq!(removals(plan), vec!["qemu-utils".to_string()]);
        assert!(removals("Inst wrk (4.1.0-3 Debian:12/stable [amd64])\nConf wrk\n").is_empty());
    }
}
