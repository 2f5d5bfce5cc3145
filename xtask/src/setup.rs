//! Installs what building and testing need on a Debian/Ubuntu machine, idempotently:
//! Debian's rustc-web (with a prebuilt `core` for BPF), LLVM 22, bpf-linker, the
//! rustup name for Debian's toolchain, and for tests QEMU, busybox and Prometheus.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{util::{say, sh}};

/// The rustup name given to Debian's `/usr` toolchain; the daemon's build.rs uses it.
pub const EBPF_TOOLCHAIN: &str = "debian-rustc-web";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's rustc-web must be at least this new (aya-ebpf 0.2.1).
const MIN_DEBIAN_RUSTC: (u32, u32) = (1, 96);

/// Packages to build and run the daemon.
const BUILD_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];
/// Extra packages for the tests: QEMU for the VM tests, a static busybox for the
/// initramfs, Prometheus (and promtool), wrk for the scrape load test, a font for
/// the A/B plots, debootstrap for the package test, xz and lz4 to unpack kernel
/// images (btf-testdata), lintian for the package.
const TEST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "prometheus", "wrk", "fonts-dejavu-core", "debootstrap", "tmux", "xz-utils", "lz4", "lintian", "openssl", "apache2-utils", "curl"];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Run,
    Test,
}

pub fn setup(purpose: Purpose) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask must run as root: it installs Debian packages and loads BPF programs (try: sudo -E env PATH=$PATH cargo xtask …)"
        );
    }
    let mut wanted: Vec<&str> = BUILD_PACKAGES.to_vec();
    if purpose == Purpose::Test {
        wanted.extend(TEST_PACKAGES);
        // The Grafana schema check runs tsc; use the machine's Node.js if it has one.
        if which("npm").is_none() {
            wanted.extend(["nodejs", "npm"]);
        }
    }
    let mut missing: Vec<&str> = wanted.into_iter().filter(|p| !installed(p)).collect();
    if !missing.contains(&"rustc-web") && !debian_rustc_new_enough() {
        missing.push("rustc-web");
    }
    if missing.is_empty() {
        say!("setup: Debian packages present");
    } else {
        if which("apt-get").is_none() {
            bail!(
                "apt-get not found: this set-up supports Debian/Ubuntu only; install {} yourself",
                missing.join(" ")
            );
        }
        let apt = crate::apt::Apt::system(&crate::workspace_root())?;
        say!("setup: updating the package lists (apt-get update)");
        apt.get(&["update"], None)?;
        say!("setup: installing {}", missing.join(" "));
        apt.install(&missing)?;
        if !debian_rustc_new_enough() {
            bail!(
                "Debian's rustc (/usr/bin/rustc) is older than {}.{} after installing rustc-web; the eBPF build needs it",
                MIN_DEBIAN_RUSTC.0,
                MIN_DEBIAN_RUSTC.1
            );
        }
    }
    if !std::path::Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir() {
        bail!("libstd-rust-web-dev-bpf did not provide /usr/lib/rustlib/bpfel-unknown-none/lib");
    }

    let have_linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if have_linker {
        say!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        say!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (cargo install, about 2 minutes)");
        sh(Command::new(cargo())
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
        .context("cargo install bpf-linker")?;
    }

    if purpose == Purpose::Test {
        install_cargo_fuzz()?;
    }

    if which("rustup").is_some() {
        let list = Command::new("rustup").args(["toolchain", "list"]).output()?;
        if String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(EBPF_TOOLCHAIN))
        {
            say!("setup: rustup toolchain {EBPF_TOOLCHAIN} (Debian's /usr) linked");
        } else {
            say!("setup: linking Debian's toolchain into rustup as {EBPF_TOOLCHAIN}");
            sh(Command::new("rustup").args(["toolchain", "link", EBPF_TOOLCHAIN, "/usr"]))?;
        }
    }
    Ok(())
}

/// cargo-fuzz for the fuzz targets (libFuzzer; runs on stable with RUSTC_BOOTSTRAP=1).
fn install_cargo_fuzz() -> Result<()> {
    let version = crate::fuzz::CARGO_FUZZ_VERSION;
    let have = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
    if have {
        say!("setup: cargo-fuzz {version} present");
        return Ok(());
    }
    say!("setup: installing cargo-fuzz {version} (cargo install, about a minute)");
    sh(Command::new(cargo()).args(["install", &format!("cargo-fuzz@{version}"), "--locked"])).context("cargo install cargo-fuzz")
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "install ok installed")
}

fn debian_rustc_new_enough() -> bool {
    let Ok(out) = Command::new("/usr/bin/rustc").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= MIN_DEBIAN_RUSTC
}

pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The cargo running this xtask.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}
