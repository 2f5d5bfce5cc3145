//! Kernels a fleet really runs, from Debian's package registry: the signed
//! `linux-image-*` packages listed in `xtask/kernels.toml`, from the suites
//! that have them (a private sources list of the machine's own archives,
//! `apt::ARCHIVE_SUITES`), downloaded with `apt-get download`, `vmlinuz`
//! extracted and cached under `target/kernels/`. The version tested is
//! recorded in that file; a test run never rewrites it (`--update` does).
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    apt::{self, Apt},
    util::{say, sh},
    vm::Kernel,
};

/// Which kernels of `xtask/kernels.toml` to boot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Set {
    /// `set = "default"`: what `cargo xtask test` boots.
    Default,
    /// Every kernel listed (`--all-kernels`).
    All,
}

/// One entry of `xtask/kernels.toml`.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub series: String,
    pub flavour: String,
    pub package: String,
    pub version: String,
    pub expect: String,
    pub default: bool,
}

const RECORD: &str = "xtask/kernels.toml";

pub fn entries(root: &Path) -> Result<Vec<Entry>> {
    let path = root.join(RECORD);
    let value: toml::Value = toml::from_str(&std::fs::read_to_string(&path)?).with_context(|| path.display().to_string())?;
    let list = value.get("kernel").and_then(|k| k.as_array()).with_context(|| format!("{RECORD}: no [[kernel]]"))?;
    list.iter()
        .map(|k| {
            let field = |key: &str| {
                k.get(key)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .with_context(|| format!("{RECORD}: a [[kernel]] without {key}"))
            };
            let set = field("set")?;
            if !matches!(set.as_str(), "default" | "all") {
                bail!("{RECORD}: set = {set:?}: expected \"default\" or \"all\"");
            }
            let suite = field("suite")?;
            // Its security and point-release updates come with it.
            if !apt::ARCHIVE_SUITES.contains(&suite.as_str()) {
                bail!("{RECORD}: suite = {suite:?}: kernels come from {} (apt::ARCHIVE_SUITES)", apt::ARCHIVE_SUITES.join(", "));
            }
            Ok(Entry {
                name: field("name")?,
                series: field("series")?,
                flavour: field("flavour")?,
                package: field("package")?,
                version: field("version")?,
                expect: field("expect")?,
                default: set == "default",
            })
        })
        .collect()
}

/// The package and version of `entry` the archive still has: the recorded
/// one, else the newest of its series and flavour (said in one line; the
/// record is left as it is).
fn resolve(apt: &Apt, entry: &Entry) -> Result<(String, String)> {
    if apt.versions(&entry.package).contains(&entry.version) {
        return Ok((entry.package.clone(), entry.version.clone()));
    }
    let pattern = format!("^linux-image-{}[.][0-9].*-{}$", entry.series.replace('.', "[.]"), entry.flavour);
    let mut newest: Option<(String, String)> = None;
    for line in apt.cache(&["search", "--names-only", &pattern])?.lines() {
        let Some(package) = line.split_whitespace().next() else { continue };
        for version in apt.versions(package) {
            let newer = newest.as_ref().is_none_or(|(_, v)| {
                Command::new("dpkg")
                    .args(["--compare-versions", &version, "gt", v])
                    .status()
                    .is_ok_and(|s| s.success())
            });
            if newer {
                newest = Some((package.to_string(), version));
            }
        }
    }
    let (package, version) = newest.with_context(|| {
        format!("{}: {} {} has left the archive and no {} {} package is there", entry.name, entry.package, entry.version, entry.series, entry.flavour)
    })?;
    say!(
        "kernels: {}: {} {} has left the archive; using the newest of {}: {package} {version} (`cargo xtask kernels --update` records it in {RECORD})",
        entry.name,
        entry.package,
        entry.version,
        entry.series
    );
    Ok((package, version))
}

/// `cargo xtask kernels --update`: every entry whose version has left the
/// archive rewritten to the newest of its series, for a maintainer to commit.
pub fn update(root: &Path) -> Result<()> {
    let apt = Apt::private(root, apt::ARCHIVE_SUITES)?;
    let mut changed = 0;
    for entry in entries(root)? {
        let (package, version) = resolve(&apt, &entry)?;
        if (&package, &version) != (&entry.package, &entry.version) {
            record(root, &entry.name, &package, &version)?;
            changed += 1;
        }
    }
    say!("kernels: {changed} entries of {RECORD} updated{}", if changed > 0 { " (commit it)" } else { "" });
    Ok(())
}

/// Writes `package` and `version` into the entry `name` of the record.
fn record(root: &Path, name: &str, package: &str, version: &str) -> Result<()> {
    let path = root.join(RECORD);
    let text = std::fs::read_to_string(&path)?;
    std::fs::write(&path, rewrite(&text, name, package, version))?;
    Ok(())
}

/// `text` (the record) with the entry `name`'s package and version replaced.
fn rewrite(text: &str, name: &str, package: &str, version: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("[[kernel]]") {
            inside = false;
        }
        if line.trim() == format!("name = {name:?}") {
            inside = true;
        }
        if inside && line.starts_with("package = ") {
            out.push_str(&format!("package = {package:?}\n"));
        } else if inside && line.starts_with("version = ") {
            out.push_str(&format!("version = {version:?}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

pub fn debian_kernels(root: &Path) -> Result<Vec<Kernel>> {
    debian_kernels_of(root, Set::Default)
}

pub fn debian_kernels_of(root: &Path, set: Set) -> Result<Vec<Kernel>> {
    fetch(root, |e| set == Set::All || e.default)
}

/// The kernel of the record named `name`, fetched alone; `None` if none is.
pub fn debian_kernel_named(root: &Path, name: &str) -> Result<Option<Kernel>> {
    Ok(fetch(root, |e| e.name == name)?.pop())
}

/// The record's kernels that `keep` takes, downloaded and extracted unless cached.
fn fetch(root: &Path, keep: impl Fn(&Entry) -> bool) -> Result<Vec<Kernel>> {
    let dir = root.join("target/kernels");
    std::fs::create_dir_all(&dir)?;
    let mut archive: Option<Apt> = None;
    let mut out = Vec::new();
    for entry in entries(root)? {
        if !keep(&entry) {
            continue;
        }
        let cached = |package: &str, version: &str| dir.join(format!("{package}_{version}.vmlinuz"));
        // The image with the config its package ships (the guest's
        // /boot/rvm: what it expects of holders' stacks comes from it); a
        // cache from before configs were kept is refreshed.
        let complete = |package: &str, version: &str| {
            let image = cached(package, version);
            image.is_file() && (image.with_extension("config").is_file() || image.with_extension("noconfig").is_file())
        };
        let (package, version) = if complete(&entry.package, &entry.version) {
            (entry.package.clone(), entry.version.clone())
        } else {
            if archive.is_none() {
                archive = Some(Apt::private(root, apt::ARCHIVE_SUITES)?);
            }
            let apt = archive.as_ref().context("apt")?;
            let (package, version) = resolve(apt, &entry)?;
            let image = cached(&package, &version);
            if !complete(&package, &version) {
                // From 7.0 on the image package is a shell: `vmlinuz` is in the
                // `linux-binary-*` package it depends on.
                let show = apt.cache(&["show", &format!("{package}={version}")])?;
                let binary = show
                    .lines()
                    .find_map(|l| l.strip_prefix("Depends: "))
                    .and_then(|d| d.split(',').map(str::trim).find(|d| d.starts_with("linux-binary-")))
                    .and_then(|d| d.split_whitespace().next())
                    .map(str::to_string);
                let holder = binary.as_deref().unwrap_or(&package);
                say!("kernels: downloading {holder} {version} (apt-get download)");
                let deb = apt.download(holder, Some(&version), &dir)?;
                extract(&dir, &deb, holder, &version, &image)?;
            }
            (package, version)
        };
        out.push(Kernel {
            name: entry.name.clone(),
            image: cached(&package, &version),
            expect: entry.expect.clone(),
            origin: format!("Debian {package} {version}"),
            params: String::new(),
            isolate: Vec::new(),
            only: None,
        });
    }
    Ok(out)
}

/// The modules kept of each image, for the systemd test: its disk and the
/// veth pair it scrapes through from another network namespace.
pub const SYSTEMD_TEST_MODULES: [&str; 2] = ["virtio_blk", "veth"];

/// `vmlinuz` (and `SYSTEMD_TEST_MODULES`) out of a kernel .deb.
fn extract(dir: &Path, deb: &Path, package: &str, version: &str, image: &Path) -> Result<()> {
    let extracted = dir.join(format!("{package}.extract"));
    let _ = std::fs::remove_dir_all(&extracted);
    sh(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&extracted))?;
    // Keep the systemd test's modules of each image (decompressed).
    let modules = ["lib/modules", "usr/lib/modules"].map(|d| extracted.join(d));
    for name in SYSTEMD_TEST_MODULES {
        if let Some(ko) = modules.iter().find_map(|d| find_file(d, &format!("{name}.ko.xz"))) {
            sh(Command::new("xz").args(["-d", "-k", "-f"]).arg(&ko))?;
            std::fs::copy(ko.with_extension(""), dir.join(format!("{package}_{version}.{name}.ko")))?;
        }
    }
    // /boot/vmlinuz-VERSION, or (merged /usr, 7.3 on) /usr/lib/modules/VERSION/vmlinuz.
    let vmlinuz = std::fs::read_dir(extracted.join("boot"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .or_else(|| find_file(&extracted.join("usr/lib/modules"), "vmlinuz"))
        .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
    std::fs::copy(&vmlinuz, image)?;
    // Its config, beside it (`vm::kernel_files`). (Debian's System.map is a
    // one-line placeholder; the real one is in the -dbg package.)
    let config = std::fs::read_dir(extracted.join("boot"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("config-")))
        .or_else(|| find_file(&extracted.join("usr/lib/modules"), "config"));
    match config {
        Some(f) => {
            std::fs::copy(&f, image.with_extension("config"))?;
        }
        None => {
            say!("kernels: {} has no config: its guest gets none", deb.display());
            // Said once: the cache is complete without it.
            std::fs::write(image.with_extension("noconfig"), b"")?;
        }
    }
    let _ = std::fs::remove_dir_all(&extracted);
    let _ = std::fs::remove_file(deb);
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if p.file_name().and_then(|n| n.to_str()) == Some(name) {
            return Some(p);
        }
    }
    None
}

/// Debian's 6.12 cloud kernel and its `SYSTEMD_TEST_MODULES` (it has no 9p; the
/// namespaces, seccomp and cgroup-BPF that systemd's sandboxing needs are there).
pub fn debian_612_with_modules(root: &Path) -> Result<(Kernel, Vec<std::path::PathBuf>)> {
    let find = || -> Result<(Kernel, Vec<std::path::PathBuf>)> {
        let k = debian_kernels(root)?.into_iter().find(|k| k.name == "debian-6.12").context("no debian-6.12 kernel")?;
        let modules = SYSTEMD_TEST_MODULES.map(|m| k.image.with_extension(format!("{m}.ko"))).to_vec();
        Ok((k, modules))
    };
    let (k, modules) = find()?;
    if modules.iter().all(|m| m.is_file()) {
        return Ok((k, modules));
    }
    // Cached before these modules were kept: fetch again.
    let _ = std::fs::remove_file(&k.image);
    let (k, modules) = find()?;
    if let Some(m) = modules.iter().find(|m| !m.is_file()) {
        bail!("no {} for {}", m.display(), k.origin);
    }
    Ok((k, modules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_version_is_written_into_its_own_entry_only() {
        let text = "# head\n[[kernel]]\nname = \"debian-7.0\"\npackage = \"linux-image-7.0.13+deb13-cloud-amd64\"\nversion = \"7.0.13-1~bpo13+1\"\n\n\
                    [[kernel]]\nname = \"debian-7.3\"\npackage = \"linux-image-7.3.4+deb13-cloud-amd64\"\nversion = \"7.3.4-1~bpo13+1\"\n";
        let out = rewrite(text, "debian-7.0", "linux-image-7.0.14+deb13-cloud-amd64", "7.0.14-1~bpo13+1");
        assert_eq!(
            out,
            text.replace("7.0.13+deb13", "7.0.14+deb13").replace("7.0.13-1~bpo13+1", "7.0.14-1~bpo13+1")
        );
        assert!(out.contains("package = \"linux-image-7.3.4+deb13-cloud-amd64\""));
    }

    #[test]
    fn the_committed_record_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let entries = entries(root).unwrap();
        let defaults: Vec<&str> = entries.iter().filter(|e| e.default).map(|e| e.name.as_str()).collect();
        assert_eq!(defaults, ["debian-6.1", "debian-6.12"]);
        assert!(entries.iter().all(|e| !e.version.is_empty() && e.package.starts_with("linux-image-")));
    }
}
