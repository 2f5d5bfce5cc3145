//! Installs what building and testing need on Debian, idempotently, adapting
//! to the release (`/etc/os-release`): bookworm and trixie take Debian's
//! `-web` toolchain, sid/forky the plain `rustc cargo libstd-rust-dev-bpf`;
//! either way a stable Rust with a prebuilt `core` for BPF, the `llvm-N-dev`
//! of that rustc's LLVM, bpf-linker built against it, the rustup name for
//! Debian's toolchain, and for tests QEMU (matched to an installed
//! `qemu-utils`), busybox and Prometheus. What is there is checked (rustc's
//! version, its LLVM, the BPF `core`), not package names; nothing is removed.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{apt::Apt, util::{say, sh}};

/// The rustup name given to Debian's `/usr` toolchain; the daemon's build.rs uses it.
pub const EBPF_TOOLCHAIN: &str = "debian-rustc-web";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM majors bpf-linker 0.13.0 builds against (its `llvm-N` features).
const BPF_LINKER_LLVM: &[u32] = &[21, 22, 23];
/// Debian's rustc must be at least this new (aya-ebpf 0.2.1).
const MIN_DEBIAN_RUSTC: (u32, u32) = (1, 96);
/// Where Debian's BPF `core` rlib lives.
const BPF_RUSTLIB: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

/// Extra packages for the tests: a static busybox for the initramfs,
/// Prometheus (and promtool), wrk for the scrape load test, a font for the A/B
/// plots, debootstrap for the package test, xz and lz4 to unpack kernel images
/// (btf-testdata). QEMU is `ensure_qemu`'s; lintian runs inside the package
/// test's trees, each release's own.
const TEST_PACKAGES: &[&str] = &["busybox-static", "prometheus", "wrk", "fonts-dejavu-core", "debootstrap", "tmux", "xz-utils", "lz4", "openssl", "apache2-utils", "curl"];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Run,
    Test,
}

/// The Debian releases set-up knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Bookworm,
    Trixie,
    /// testing or unstable (`VERSION_CODENAME=forky`, or sid).
    Unstable,
}

impl Release {
    /// Parses `/etc/os-release`; anything else is one line saying what is supported.
    pub fn from_os_release(text: &str) -> std::result::Result<Release, String> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        let pretty = field("PRETTY_NAME").unwrap_or_else(|| "an unnamed system".into());
        let unsupported = || format!("{pretty} is not supported: set-up supports Debian 12 (bookworm), 13 (trixie) and testing/sid");
        if field("ID").as_deref() != Some("debian") {
            return Err(unsupported());
        }
        match field("VERSION_CODENAME").as_deref() {
            Some("bookworm") => Ok(Release::Bookworm),
            Some("trixie") => Ok(Release::Trixie),
            Some("forky" | "sid") => Ok(Release::Unstable),
            // testing/sid before a codename is set: no VERSION_ID, "…/sid".
            _ if field("VERSION_ID").is_none() && pretty.ends_with("/sid") => Ok(Release::Unstable),
            _ => Err(unsupported()),
        }
    }

    pub fn of_machine() -> Result<Release> {
        let text = std::fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
        Release::from_os_release(&text).map_err(anyhow::Error::msg)
    }

    /// Debian's toolchain packages here: a stable Rust with BPF's `core`.
    pub fn toolchain_packages(self) -> &'static [&'static str] {
        match self {
            Release::Bookworm | Release::Trixie => &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"],
            Release::Unstable => &["rustc", "cargo", "libstd-rust-dev-bpf"],
        }
    }
}

/// What Debian's `/usr` toolchain is: rustc's version and its LLVM's major.
#[derive(Debug, PartialEq, Eq)]
struct Rustc {
    version: (u32, u32),
    llvm: u32,
}

impl Rustc {
    /// From `rustc -vV`.
    fn parse(text: &str) -> Option<Rustc> {
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        let nums = |v: &str| -> Vec<u32> { v.split(['.', '-']).map_while(|p| p.parse().ok()).collect() };
        let v = nums(field("release:")?);
        let llvm = *nums(field("LLVM version:")?).first()?;
        Some(Rustc { version: (*v.first()?, *v.get(1)?), llvm })
    }

    fn of_usr() -> Option<Rustc> {
        let out = Command::new("/usr/bin/rustc").arg("-vV").output().ok()?;
        Rustc::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// New enough, with BPF's `core` beside it.
    fn usable(&self) -> bool {
        self.version >= MIN_DEBIAN_RUSTC && bpf_core_present()
    }
}

fn bpf_core_present() -> bool {
    std::fs::read_dir(BPF_RUSTLIB)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("libcore-") && n.ends_with(".rlib")))
}

pub fn setup(purpose: Purpose) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask must run as root: it installs Debian packages and loads BPF programs (try: sudo -E env PATH=$PATH cargo xtask …)"
        );
    }
    if which("apt-get").is_none() {
        bail!("apt-get not found: set-up supports Debian 12 (bookworm), 13 (trixie) and testing/sid only");
    }
    let release = Release::of_machine()?;
    let root = crate::workspace_root();
    let apt = Apt::system(&root)?;
    let mut updated = false;
    let mut update = |apt: &Apt| -> Result<()> {
        if !updated {
            say!("setup: updating the package lists (apt-get update)");
            apt.get(&["update"], None)?;
            updated = true;
        }
        Ok(())
    };

    // The toolchain first, in a call of its own: what it would remove (Debian's
    // rustup, an older rustc) stops it before anything else is installed.
    let rustc = match Rustc::of_usr().filter(Rustc::usable) {
        Some(r) => {
            say!("setup: Debian's rustc {}.{} (LLVM {}) with BPF's core present", r.version.0, r.version.1, r.llvm);
            r
        }
        None => {
            let packages = release.toolchain_packages();
            update(&apt)?;
            say!("setup: installing {} ({release:?})", packages.join(" "));
            apt.install(packages).map_err(|e| {
                anyhow::anyhow!("{e}\n(Debian's rustup, rustc or cargo packages conflict with {}: remove them or use another machine)", packages.join(" "))
            })?;
            let r = Rustc::of_usr().context("/usr/bin/rustc -vV after installing the toolchain")?;
            if !r.usable() {
                bail!(
                    "Debian's rustc is {}.{} and BPF's core {} in {BPF_RUSTLIB} after installing {}: the eBPF build needs {}.{} and the core",
                    r.version.0,
                    r.version.1,
                    if bpf_core_present() { "is" } else { "is not" },
                    packages.join(" "),
                    MIN_DEBIAN_RUSTC.0,
                    MIN_DEBIAN_RUSTC.1
                );
            }
            r
        }
    };
    if !BPF_LINKER_LLVM.contains(&rustc.llvm) {
        bail!("Debian's rustc uses LLVM {}; bpf-linker {BPF_LINKER_VERSION} builds against LLVM {:?} only", rustc.llvm, BPF_LINKER_LLVM);
    }
    let llvm_dev = format!("llvm-{}-dev", rustc.llvm);
    let llvm_prefix = format!("/usr/lib/llvm-{}", rustc.llvm);

    let mut wanted: Vec<&str> = Vec::new();
    if !Path::new(&llvm_prefix).join("include/llvm-c/Core.h").is_file() {
        wanted.push(&llvm_dev);
    }
    if purpose == Purpose::Test {
        wanted.extend(TEST_PACKAGES);
        // The Grafana schema check runs tsc; use the machine's Node.js if it has one.
        if which("npm").is_none() {
            wanted.extend(["nodejs", "npm"]);
        }
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        say!("setup: Debian packages present");
    } else {
        update(&apt)?;
        say!("setup: installing {}", missing.join(" "));
        apt.install(&missing)?;
    }
    if purpose == Purpose::Test {
        ensure_qemu(&root, &apt, &mut update)?;
    }

    let have_linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if have_linker {
        say!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        say!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {} (cargo install, about 2 minutes)", rustc.llvm);
        sh(Command::new(cargo())
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{}", rustc.llvm),
            ])
            .env("LLVM_PREFIX", &llvm_prefix))
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

/// QEMU for the VM tests. A `qemu-system-x86_64` that runs is kept. Else
/// `qemu-system-x86` is installed at the version of an installed `qemu-utils`
/// (a different one would remove it), from that version's suite — through a
/// private sources list when the machine's apt lacks the version — or, with no
/// `qemu-utils`, the machine's own.
fn ensure_qemu(root: &Path, apt: &Apt, update: &mut impl FnMut(&Apt) -> Result<()>) -> Result<()> {
    if let Ok(out) = Command::new("qemu-system-x86_64").arg("--version").output()
        && out.status.success()
    {
        let version = String::from_utf8_lossy(&out.stdout);
        say!("setup: {} present", version.lines().next().unwrap_or("QEMU").trim());
        return Ok(());
    }
    let Some(utils) = installed_version("qemu-utils") else {
        update(apt)?;
        say!("setup: installing qemu-system-x86");
        return apt.install(&["qemu-system-x86"]);
    };
    let suite = suite_of_version(&utils).with_context(|| {
        format!("qemu-utils {utils} is installed and no qemu-system-x86_64 runs; its suite cannot be told from the version: install qemu-system-x86={utils} yourself")
    })?;
    update(apt)?;
    let offered = |apt: &Apt| apt.versions("qemu-system-x86").contains(&utils);
    if offered(apt) {
        say!("setup: installing qemu-system-x86 {utils} from {suite}, the version of the installed qemu-utils");
        return apt.install_from(&suite, "qemu-system-x86", &utils);
    }
    // The machine's Debian suites and the one that has the version.
    let sources = crate::apt::Sources::of_machine()?;
    let mut suites: Vec<&str> = sources.suites.iter().map(String::as_str).collect();
    if !suites.contains(&suite.as_str()) {
        suites.push(&suite);
    }
    let private = Apt::private(root, &suites)?;
    if !offered(&private) {
        bail!("qemu-utils {utils} is installed and {suite} has no qemu-system-x86 {utils}: install a matching qemu-system-x86 yourself");
    }
    say!(
        "setup: installing qemu-system-x86 {utils} from {suite}, the version of the installed qemu-utils, through a private sources list (target/apt/): the machine's apt will not update it"
    );
    private.install_from(&suite, "qemu-system-x86", &utils)
}

/// The suite a Debian version comes from: `~bpoNN` → that release's
/// backports, `+debNNuM` → that release (its point or security updates),
/// `+debNN` without an update suffix too; `None` when the version says nothing.
pub fn suite_of_version(version: &str) -> Option<String> {
    let release = |n: &str| match n {
        "11" => Some("bullseye"),
        "12" => Some("bookworm"),
        "13" => Some("trixie"),
        "14" => Some("forky"),
        _ => None,
    };
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>();
    if let Some(i) = version.rfind("~bpo") {
        return release(&digits(&version[i + 4..])).map(|r| format!("{r}-backports"));
    }
    if let Some(i) = version.rfind("+deb") {
        return release(&digits(&version[i + 4..])).map(str::to_string);
    }
    None
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
    installed_version(package).is_some()
}

/// The installed version of `package`, if it is installed.
fn installed_version(package: &str) -> Option<String> {
    installed_version_in(Path::new("/"), package)
}

/// The installed version of `package` in the root `tree` (`/`: this machine).
pub(crate) fn installed_version_in(tree: &Path, package: &str) -> Option<String> {
    let query = ["dpkg-query", "-W", "-f=${Status}|${Version}", package];
    let out = if tree == Path::new("/") {
        Command::new(query[0]).args(&query[1..]).output()
    } else {
        Command::new("chroot").arg(tree).args(query).output()
    }
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once('|')?;
    (status == "install ok installed").then(|| version.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_from_os_release() {
        let bookworm = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        let trixie = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_ID=\"13\"\nVERSION_CODENAME=trixie\nID=debian\n";
        let sid = "PRETTY_NAME=\"Debian GNU/Linux forky/sid\"\nNAME=\"Debian GNU/Linux\"\nVERSION_CODENAME=forky\nID=debian\n";
        let early_sid = "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nID=debian\n";
        let ubuntu = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nVERSION_ID=\"24.04\"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n";
        let bullseye = "PRETTY_NAME=\"Debian GNU/Linux 11 (bullseye)\"\nVERSION_ID=\"11\"\nVERSION_CODENAME=bullseye\nID=debian\n";
        assert_eq!(Release::from_os_release(bookworm), Ok(Release::Bookworm));
        assert_eq!(Release::from_os_release(trixie), Ok(Release::Trixie));
        assert_eq!(Release::from_os_release(sid), Ok(Release::Unstable));
        assert_eq!(Release::from_os_release(early_sid), Ok(Release::Unstable));
        assert_eq!(
            Release::from_os_release(ubuntu),
            Err("Ubuntu 24.04.1 LTS is not supported: set-up supports Debian 12 (bookworm), 13 (trixie) and testing/sid".into())
        );
        assert!(Release::from_os_release(bullseye).is_err());
        assert_eq!(Release::Unstable.toolchain_packages(), ["rustc", "cargo", "libstd-rust-dev-bpf"]);
    }

    #[test]
    fn rustc_and_its_llvm() {
        let web = "rustc 1.96.0 (Debian)\nbinary: rustc\ncommit-hash: unknown\nhost: x86_64-unknown-linux-gnu\nrelease: 1.96.0\nLLVM version: 22.1.3\n";
        assert_eq!(Rustc::parse(web), Some(Rustc { version: (1, 96), llvm: 22 }));
        let sid = "rustc 1.97.1\nrelease: 1.97.1\nLLVM version: 22.1.8\n";
        assert_eq!(Rustc::parse(sid), Some(Rustc { version: (1, 97), llvm: 22 }));
        assert_eq!(Rustc::parse("rustc 1.63.0\nrelease: 1.63.0\n"), None);
    }

    #[test]
    fn the_suite_of_a_version() {
        // This machine kind's qemu-utils.
        assert_eq!(suite_of_version("1:10.0.2+ds-2+deb13u1~bpo12+1").as_deref(), Some("bookworm-backports"));
        assert_eq!(suite_of_version("6.16.12-1~bpo13+1").as_deref(), Some("trixie-backports"));
        assert_eq!(suite_of_version("1:7.2+dfsg-7+deb12u7").as_deref(), Some("bookworm"));
        assert_eq!(suite_of_version("1:10.0.2+ds-2+deb13u1").as_deref(), Some("trixie"));
        assert_eq!(suite_of_version("1:7.2+dfsg-7"), None);
    }
}
