//! Kernels a fleet really runs, from Debian's package registry: the signed
//! `linux-image-*-cloud-amd64` images of Debian 12's 6.1 and of its 6.12,
//! downloaded with `apt-get download`, `vmlinuz` extracted and cached under
//! `target/kernels/`, the exact package version recorded.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{vm::Kernel, util::{say, sh}};

/// (name, meta package, what the guest must find).
const DEBIAN: &[(&str, &str, &str)] = &[
    ("debian-6.1", "linux-image-cloud-amd64", "legacy"),
    ("debian-6.12", "linux-image-6.12-cloud-amd64", "unpatched"),
];

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image package a meta package depends on, e.g. `linux-image-6.1.0-56-cloud-amd64`.
fn image_package(meta: &str) -> Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", meta]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-") && !d.ends_with("-dbg"))
        .map(str::to_string)
        .with_context(|| format!("{meta} depends on no linux-image package (apt-get update?)"))
}

pub fn debian_kernels(root: &Path) -> Result<Vec<Kernel>> {
    let dir = root.join("target/kernels");
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for (name, meta, expect) in DEBIAN {
        let package = match image_package(meta) {
            Ok(p) => p,
            Err(_) => {
                say!("kernels: updating the package lists to find {meta}");
                sh(Command::new("apt-get").args(["update", "-q"]))?;
                image_package(meta)?
            }
        };
        let version = output(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))?
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(str::to_string)
            .with_context(|| format!("no version for {package}"))?;
        let image = dir.join(format!("{package}_{version}.vmlinuz"));
        if !image.is_file() {
            say!("kernels: downloading {package} {version} (apt-get download)");
            sh(Command::new("apt-get").args(["download", "-q", &package]).current_dir(&dir))?;
            let deb = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.extension().is_some_and(|e| e == "deb")
                        && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_")))
                })
                .with_context(|| format!("apt-get download left no {package} .deb"))?;
            let extracted = dir.join(format!("{package}.extract"));
            let _ = std::fs::remove_dir_all(&extracted);
            sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
            // Keep virtio_blk of each image (decompressed): the systemd test
            // boots a disk image with it.
            if let Some(ko) = find_file(&extracted.join("lib/modules"), "virtio_blk.ko.xz") {
                sh(Command::new("xz").args(["-d", "-k", "-f"]).arg(&ko))?;
                std::fs::copy(ko.with_extension(""), dir.join(format!("{package}_{version}.virtio_blk.ko")))?;
            }
            let boot = extracted.join("boot");
            let vmlinuz = std::fs::read_dir(&boot)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
                .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
            std::fs::copy(&vmlinuz, &image)?;
            let _ = std::fs::remove_dir_all(&extracted);
            let _ = std::fs::remove_file(&deb);
        }
        out.push(Kernel {
            name: name.to_string(),
            image,
            expect: expect.to_string(),
            origin: format!("Debian {package} {version}"),
            params: String::new(),
        });
    }
    Ok(out)
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

/// Debian's 6.12 cloud kernel and its `virtio_blk` module (it has no 9p; the
/// namespaces, seccomp and cgroup-BPF that systemd's sandboxing needs are there).
pub fn debian_612_with_virtio_blk(root: &Path) -> Result<(Kernel, std::path::PathBuf)> {
    let k = debian_kernels(root)?
        .into_iter()
        .find(|k| k.name == "debian-6.12")
        .context("no debian-6.12 kernel")?;
    let module = k.image.with_extension("virtio_blk.ko");
    if !module.is_file() {
        // Cached before modules were kept: fetch again.
        let _ = std::fs::remove_file(&k.image);
        let k2 = debian_kernels(root)?.into_iter().find(|k| k.name == "debian-6.12").context("no debian-6.12 kernel")?;
        if !module.is_file() {
            bail!("no virtio_blk module for {}", k2.origin);
        }
        return Ok((k2, module));
    }
    Ok((k, module))
}
