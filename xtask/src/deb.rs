//! The package: `cargo deb`, the unit checked with systemd's own tools, and the
//! .deb installed, upgraded and purged in a fresh `debootstrap` tree.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{setup, util::{say, sh}};

const UNIT: &str = "packaging/remote-vm.service";
/// The exposure `systemd-analyze security` must not exceed.
const MAX_EXPOSURE: f64 = 2.0;

fn output(cmd: &mut Command) -> Result<(bool, String)> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The cargo-deb the package is built with.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Builds `target/debian/remote-vm_VERSION_amd64.deb` (cargo-deb installed if missing).
pub fn build(root: &Path, version: Option<&str>, out_dir: &Path) -> Result<PathBuf> {
    let (ok, have) = output(Command::new(setup::cargo()).args(["deb", "--version"]))?;
    if !ok || have.split_whitespace().nth(1) != Some(CARGO_DEB_VERSION) {
        say!("deb: installing cargo-deb {CARGO_DEB_VERSION} (cargo install, about a minute)");
        sh(Command::new(setup::cargo()).args(["install", &format!("cargo-deb@{CARGO_DEB_VERSION}"), "--locked"]))?;
    }
    std::fs::create_dir_all(out_dir)?;
    man_pages(root)?;
    let mut cmd = Command::new(setup::cargo());
    cmd.current_dir(root)
        .env("REMOTE_VM_EBPF_TOOLCHAIN", setup::EBPF_TOOLCHAIN)
        .args(["deb", "-p", "remote-vm-daemon", "--no-build", "-o"])
        .arg(out_dir);
    if let Some(v) = version {
        cmd.args(["--deb-version", v]);
    }
    let (ok, text) = output(&mut cmd)?;
    if !ok {
        bail!("cargo deb failed: {text}");
    }
    // Its last line that names a .deb (a warning may follow it).
    let path = PathBuf::from(text.lines().rev().map(str::trim).find(|l| l.ends_with(".deb")).unwrap_or(""));
    if !path.is_file() {
        bail!("cargo deb did not say where the package is: {text}");
    }
    say!("deb: built {}", path.display());
    Ok(path)
}

/// `target/man/*.1.gz`: the daemon's and each subcommand's man page, rendered
/// from the clap definitions (`examples/man.rs`), compressed as Debian wants.
fn man_pages(root: &Path) -> Result<()> {
    let dir = root.join("target/man");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    say!("deb: man pages from the command line's definitions");
    sh(crate::cargo(root).args(["run", "-q", "--release", "-p", "remote-vm-daemon", "--example", "man", "--"]).arg(&dir))?;
    for page in std::fs::read_dir(&dir)? {
        sh(Command::new("gzip").args(["-9", "-n", "-f"]).arg(page?.path()))?;
    }
    Ok(())
}

/// `systemd-analyze security --offline=true`: the exposure figure.
pub fn exposure(root: &Path) -> Result<(f64, String)> {
    let (_, text) = output(Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(root.join(UNIT)))?;
    let figure = text
        .lines()
        .find_map(|l| l.split("exposure level for remote-vm.service:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no exposure level in:\n{text}"))?;
    Ok((figure, text))
}

/// A fresh copy of the debootstrap tree of `suite` (made once, cached in
/// `MACHINE_CACHE/deb-test/base-SUITE`), from the machine's own Debian archive.
fn fresh_tree(root: &Path, suite: &str) -> Result<(PathBuf, PathBuf)> {
    let base = Path::new(crate::util::MACHINE_CACHE).join(format!("deb-test/base-{suite}"));
    // systemd in the tree: its `systemd-analyze verify` judges ours;
    // iproute2: the systemd test scrapes from another network namespace;
    // curl: over TLS with a client certificate; procps and strace: a real
    // reader (`ps`) and what it read; lintian: the release's own (installed by
    // apt afterwards: debootstrap's --include cannot configure it). The stamp
    // holds the list: a tree made with another is made again.
    const INCLUDE: &str = "systemd,iproute2,curl,procps,strace";
    let stamp = base.join("etc/remote-vm-deb-test-base");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(INCLUDE) {
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)?;
        say!("deb: debootstrap --variant=minbase --include={INCLUDE} {suite}, then lintian (once, cached in {})", base.display());
        crate::apt::debootstrap(&base, suite, INCLUDE)?;
        let (ok, text) = chroot(&base, &["sh", "-c", "apt-get -q update && apt-get -q -y install --no-install-recommends lintian && apt-get clean"])?;
        if !ok {
            bail!("installing lintian in the {suite} tree failed: {}", text.lines().rev().find(|l| l.starts_with("E: ")).unwrap_or(text.trim()));
        }
        std::fs::write(&stamp, INCLUDE)?;
    }
    let tree = root.join(format!("target/deb-test/rootfs-{suite}"));
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(root.join("target/deb-test"))?;
    sh(Command::new("cp").arg("-a").arg(&base).arg(&tree)).context("copy the debootstrap tree")?;
    Ok((base, tree))
}

fn chroot(tree: &Path, args: &[&str]) -> Result<(bool, String)> {
    output(Command::new("chroot").arg(tree).args(args).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The package test; `boot_all`: under systemd on every release, else on the
/// first only (the others' trees checked without booting).
pub fn test(root: &Path, cgroup_soak_seconds: u64, boot_all: bool) -> Result<()> {
    let (figure, report) = exposure(root)?;
    let exposed: Vec<&str> = report.lines().filter(|l| l.trim_start().starts_with('✗')).collect();
    say!("deb: systemd-analyze security --offline=true {UNIT}: exposure {figure} (at most {MAX_EXPOSURE}); remaining:");
    for l in &exposed {
        say!("  {}", l.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    if figure > MAX_EXPOSURE {
        bail!("exposure {figure} is above {MAX_EXPOSURE}");
    }
    // cargo-deb clears earlier packages of the same name: keep copies.
    let keep = root.join("target/deb-test/packages");
    std::fs::create_dir_all(&keep)?;
    let mut debs = Vec::new();
    for version in [None, Some("0.1.0-2")] {
        let built = build(root, version, &root.join("target/debian"))?;
        let kept = keep.join(built.file_name().context("deb name")?);
        std::fs::copy(&built, &kept)?;
        debs.push(kept);
    }
    let (v1, v2) = (debs[0].clone(), debs[1].clone());

    let mut bases = Vec::new();
    for release in &crate::systemd::RELEASES {
        bases.push(package_checks(root, release, &v1, &v2)?);
    }
    for (release, base) in crate::systemd::RELEASES.iter().zip(&bases).take(if boot_all { usize::MAX } else { 1 }) {
        // The abuse soak's systemd side once, on the first release.
        let soak = if release.suite == crate::systemd::RELEASES[0].suite { cgroup_soak_seconds } else { 0 };
        crate::systemd::test(root, release, base, &v1, soak)?;
    }
    Ok(())
}

/// Install, upgrade and purge of the two builds in a fresh tree of
/// `release`; the tree's cached base.
fn package_checks(root: &Path, release: &crate::systemd::Release, v1: &PathBuf, v2: &PathBuf) -> Result<PathBuf> {
    let (base, tree) = fresh_tree(root, release.suite)?;
    for deb in [v1, v2] {
        let dest = tree.join("tmp").join(deb.file_name().context("deb name")?);
        std::fs::copy(deb, &dest).with_context(|| format!("copy {} to {}", deb.display(), dest.display()))?;
    }
    let name = |p: &PathBuf| format!("/tmp/{}", p.file_name().and_then(|n| n.to_str()).unwrap_or(""));
    let mut failures = Vec::new();
    let mut expect = |what: &str, ok: bool, detail: &str| {
        if ok {
            say!("deb: ok: {}: {what}", release.name);
        } else {
            say!("deb: FAIL: {}: {what}: {detail}", release.name);
            failures.push(what.to_string());
        }
    };

    // The release's own lintian: no error and no warning.
    let (_, text) = chroot(&tree, &["lintian", "--tag-display-limit", "0", &name(v1)])?;
    let tags: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).collect();
    let (_, lintian) = chroot(&tree, &["dpkg-query", "-W", "-f=${Version}", "lintian"])?;
    expect(&format!("lintian {} reports no error or warning", lintian.trim()), tags.is_empty(), &tags.join("\n"));

    let (ok, text) = chroot(&tree, &["dpkg", "-i", &name(v1)])?;
    expect("dpkg -i into a fresh debootstrap tree", ok, &text);
    let files = [
        "usr/bin/remote-vm-daemon",
        "usr/lib/systemd/system/remote-vm.service",
        "usr/lib/systemd/system/remote-vm.socket",
        "usr/lib/sysusers.d/remote-vm.conf",
        "etc/remote-vm/remote-vm.toml",
        "usr/share/remote-vm/dashboards/remote-vm-host.json",
        "usr/share/remote-vm/dashboards/remote-vm-fleet.json",
        "usr/share/remote-vm/remote-vm.rules.yml",
        "usr/share/remote-vm/grafana-provisioning/datasource.yml",
        "usr/share/doc/remote-vm/README.md",
        "usr/share/doc/remote-vm/docs/operating.md",
        "usr/share/doc/remote-vm/docs/security.md",
        "usr/share/doc/remote-vm/docs/stalls.md",
        "usr/share/doc/remote-vm/docs/stalls-design.md",
        "usr/share/doc/remote-vm/docs/probes-and-kernels.md",
        "usr/share/doc/remote-vm/docs/compare.md",
        "usr/share/doc/remote-vm/docs/benchmarks.md",
        "usr/share/doc/remote-vm/docs/tests.md",
        "usr/share/doc/remote-vm/docs/ARCHITECTURE.md",
        "usr/share/doc/remote-vm/copyright",
        "usr/share/doc/remote-vm/changelog.Debian.gz",
        "usr/share/doc/remote-vm/examples/prometheus.yml",
        "usr/share/doc/remote-vm/examples/fleet.conf",
        "usr/share/doc/remote-vm/examples/tls.conf",
        "usr/share/doc/remote-vm/examples/self-stats.conf",
        "usr/share/doc/remote-vm/examples/web-config.yml",
        "usr/share/man/man1/remote-vm-daemon.1.gz",
        "usr/share/man/man1/remote-vm-daemon-run.1.gz",
        "usr/share/man/man1/remote-vm-daemon-check.1.gz",
        "usr/share/man/man1/remote-vm-daemon-compare.1.gz",
    ];
    let missing: Vec<&str> = files.iter().copied().filter(|f| !tree.join(f).exists()).collect();
    expect("installs the binary, unit, conffile, dashboards, rules, docs", missing.is_empty(), &format!("missing {missing:?}"));
    let (ok, text) = chroot(&tree, &["dpkg-query", "-W", "-f=${Conffiles}", "remote-vm"])?;
    expect("/etc/remote-vm/remote-vm.toml is a conffile", ok && text.contains("/etc/remote-vm/remote-vm.toml"), &text);
    let (ok, text) = chroot(&tree, &["/usr/bin/remote-vm-daemon", "defaults"])?;
    expect("the installed binary runs", ok && text.contains("listen_address = "), &text);
    let wants = tree.join("etc/systemd/system/multi-user.target.wants/remote-vm.service");
    let socket_wants = tree.join("etc/systemd/system/sockets.target.wants/remote-vm.socket");
    expect("nothing enabled by surprise", !wants.exists() && !socket_wants.exists(), "a .wants directory has remote-vm");
    let (ok, text) = chroot(&tree, &["getent", "group", "remote-vm-ops"])?;
    expect("the socket's group remote-vm-ops exists", ok && text.starts_with("remote-vm-ops:"), &text);
    // The release's own systemd judges its units (a newer one knows keys an
    // older one does not), with /proc so it sees the kernel's IPv6.
    let proc_dir = tree.join("proc");
    sh(Command::new("mount").args(["-t", "proc", "proc"]).arg(&proc_dir))?;
    let verify = chroot(
        &tree,
        &["systemd-analyze", "verify", "--man=no", "--generators=no", "/usr/lib/systemd/system/remote-vm.service", "/usr/lib/systemd/system/remote-vm.socket"],
    );
    let _ = Command::new("umount").arg(&proc_dir).status();
    let (ok, text) = verify?;
    expect("systemd-analyze verify of the installed units (the release's own)", ok && text.trim().is_empty(), &text);

    // Upgrade with a locally changed conffile: the change stays.
    let conf = tree.join("etc/remote-vm/remote-vm.toml");
    let mut changed = std::fs::read_to_string(&conf)?;
    changed.push_str("\n# changed by the operator\n");
    std::fs::write(&conf, &changed)?;
    let (ok, text) = chroot(&tree, &["dpkg", "-i", "--force-confdef", "--force-confold", &name(v2)])?;
    expect("dpkg -i of the upgrade", ok, &text);
    let (_, version) = chroot(&tree, &["dpkg-query", "-W", "-f=${Version}", "remote-vm"])?;
    expect("the upgrade is installed", version.trim() == "0.1.0-2", &version);
    expect(
        "the upgrade keeps the changed conffile",
        std::fs::read_to_string(&conf).unwrap_or_default() == changed,
        "conffile content differs",
    );

    // Purge: nothing of the package stays.
    let (ok, text) = chroot(&tree, &["dpkg", "-P", "remote-vm"])?;
    expect("dpkg -P", ok, &text);
    let left: Vec<&str> = files
        .iter()
        .copied()
        .chain(["etc/remote-vm", "usr/share/remote-vm", "usr/share/doc/remote-vm"])
        .filter(|f| tree.join(f).exists())
        .collect();
    expect("dpkg -P removes everything", left.is_empty(), &format!("left {left:?}"));
    let (_, status) = chroot(&tree, &["dpkg-query", "-W", "-f=${Status}", "remote-vm"])?;
    expect("dpkg knows nothing of it", !status.contains("installed"), &status);

    if !failures.is_empty() {
        bail!("package checks on {} failed: {}", release.name, failures.join("; "));
    }
    let _ = std::fs::remove_dir_all(&tree);
    Ok(base)
}
