//! `cargo xtask newcomer-test --suite bookworm|trixie|sid`: README's commands
//! as a new user runs them, on a fresh machine, proven in a clean root.
//!
//! A minimal root is debootstrapped from the machine's own Debian archive
//! (cached per suite under `util::MACHINE_CACHE`). The bookworm root is made into
//! this project's machine kind: `qemu-utils` from bookworm-backports, no
//! `qemu-system-x86`, sources without backports. The host's rustup and its
//! stable toolchain are copied in (what such a machine comes with; nothing is
//! fetched from rustup's server), the repository is cloned into it (HEAD, as
//! committed), and, as root inside it:
//! 1. `cargo xtask setup --test`;
//! 2. `cargo xtask run` in a network namespace of its own (`unshare -n`, with
//!    `/proc` and `/sys`) until `/metrics` answers;
//! 3. with `--full`, the unit tests (`cargo test --release`).
//!
//! A package cache is shared by every root and run, and cargo's downloaded
//! crates are copied in, so runs after the first download little. What is checked: each step exits 0; in the
//! bookworm root set-up installs `qemu-system-x86` at the version of the
//! installed `qemu-utils` and leaves `qemu-utils` as it was; `/metrics` answers
//! with remote-vm's series.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::util::{say, sh};

/// The suites a newcomer may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    Bookworm,
    Trixie,
    Sid,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
            Suite::Sid => "sid",
        }
    }

    /// The root's own apt sources, as the machine kind writes them (deb822):
    /// the release, its updates and security suites.
    fn sources(self, debian: &str, security: Option<&str>, keyring: &str) -> String {
        match self {
            Suite::Sid => format!("Types: deb\nURIs: {debian}\nSuites: sid\nComponents: main\nSigned-By: {keyring}\n"),
            s => {
                let n = s.name();
                let mut text = format!("Types: deb\nURIs: {debian}\nSuites: {n} {n}-updates\nComponents: main\nSigned-By: {keyring}\n");
                if let Some(sec) = security {
                    text.push_str(&format!("\nTypes: deb\nURIs: {sec}\nSuites: {n}-security\nComponents: main\nSigned-By: {keyring}\n"));
                }
                text
            }
        }
    }
}

/// What a fresh machine of this kind has besides a minimal Debian: git and
/// certificates to clone, a C toolchain for rustup's Rust to link, curl, ip.
const BASE_PACKAGES: &str = "ca-certificates,git,gcc,libc6-dev,curl,iproute2,procps,xz-utils";
/// The `/metrics` wait for `cargo xtask run` (its first build included).
const SERVE_TIMEOUT: Duration = Duration::from_secs(45 * 60);

pub struct Args {
    pub suite: Suite,
    pub full: bool,
}

/// One step's outcome, for the closing table.
pub struct Step {
    pub what: String,
    pub seconds: f64,
    pub note: String,
}

pub fn run(root: &Path, args: &Args) -> Result<Vec<Step>> {
    let suite = args.suite;
    let dir = root.join("target/newcomer");
    std::fs::create_dir_all(&dir)?;
    let sources = crate::apt::Sources::of_machine()?;
    let mut steps = Vec::new();

    let t = Instant::now();
    let base = base_root(&dir, suite, &sources)?;
    steps.push(Step { what: format!("the {} root (debootstrap, cached)", suite.name()), seconds: t.elapsed().as_secs_f64(), note: String::new() });

    let t = Instant::now();
    let tree = dir.join(format!("{}-root", suite.name()));
    remove_tree(&tree)?;
    sh(Command::new("cp").arg("-a").arg(&base).arg(&tree)).context("copy the base root")?;
    copy_rustup(&tree)?;
    sh(Command::new("git").args(["clone", "--quiet"]).arg(root).arg(tree.join("root/remote-vm")))?;
    let head = crate::util::sh_output(Command::new("git").arg("-C").arg(root).args(["rev-parse", "--short", "HEAD"]))?;
    std::fs::copy("/etc/resolv.conf", tree.join("etc/resolv.conf")).context("copy /etc/resolv.conf")?;
    let cas = local_cas(&tree)?;
    steps.push(Step {
        what: "the host's rustup and stable toolchain copied in, the repository cloned".into(),
        seconds: t.elapsed().as_secs_f64(),
        note: format!("HEAD {}{}", head.trim(), if cas > 0 { format!("; the host's {cas} local CA certificates") } else { String::new() }),
    });

    let mounts = Mounts::new(&tree)?;
    let qemu_before = crate::setup::installed_version_in(&tree, "qemu-utils");
    let log = dir.join(format!("{}-setup.log", suite.name()));
    let t = Instant::now();
    let ok = in_root(&tree, "cd /root/remote-vm && cargo xtask setup --test", &log)?;
    let setup_s = t.elapsed().as_secs_f64();
    let setup_text = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(ok, "{}: `cargo xtask setup --test` failed: {} (log {})", suite.name(), last_line(&setup_text), log.display());
    let qemu_line = setup_text.lines().find(|l| l.contains("qemu-system-x86") || l.contains("QEMU emulator")).unwrap_or("").to_string();
    if let Some(utils) = &qemu_before {
        // The machine kind's quirk: qemu-system matched to qemu-utils, nothing removed.
        let after = crate::setup::installed_version_in(&tree, "qemu-utils");
        ensure!(after.as_ref() == Some(utils), "{}: qemu-utils was {utils}, after set-up {after:?}", suite.name());
        let system = crate::setup::installed_version_in(&tree, "qemu-system-x86");
        ensure!(system.as_ref() == Some(utils), "{}: qemu-system-x86 {system:?} installed beside qemu-utils {utils}", suite.name());
    }
    let runs = in_root_output(&tree, "qemu-system-x86_64 --version | head -1")?;
    ensure!(runs.starts_with("QEMU emulator version"), "{}: qemu-system-x86_64 does not run after set-up: {runs}", suite.name());
    steps.push(Step { what: "`cargo xtask setup --test`".into(), seconds: setup_s, note: qemu_line.trim_start_matches("xtask: ").to_string() });

    let log = dir.join(format!("{}-run.log", suite.name()));
    let t = Instant::now();
    let answered = serve(&tree, &log)?;
    let serve_s = t.elapsed().as_secs_f64();
    let run_text = std::fs::read_to_string(&log).unwrap_or_default();
    let series = answered.with_context(|| format!("{}: `cargo xtask run`: /metrics never answered: {} (log {})", suite.name(), last_line(&run_text), log.display()))?;
    ensure!(series > 0, "{}: /metrics answered with no remote_vm_ series (log {})", suite.name(), log.display());
    steps.push(Step {
        what: "`cargo xtask run` in its own network namespace until /metrics answers".into(),
        seconds: serve_s,
        note: format!("{series} remote_vm_ samples"),
    });

    if args.full {
        let log = dir.join(format!("{}-unit.log", suite.name()));
        let t = Instant::now();
        let ok = in_root(&tree, "cd /root/remote-vm && cargo test --release", &log)?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        ensure!(ok, "{}: the unit tests failed: {} (log {})", suite.name(), last_line(&text), log.display());
        let passed: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("test result: ok. "))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        steps.push(Step { what: "the unit tests (`cargo test --release`)".into(), seconds: t.elapsed().as_secs_f64(), note: format!("{passed} passed") });
    }
    drop(mounts);
    let total: f64 = steps.iter().map(|s| s.seconds).sum();
    let mut table = format!(
        "Newcomer test, {} root, {} (total {:.1} min):\n\n| step | minutes | |\n|---|---|---|\n",
        suite.name(),
        crate::util::sh_output(Command::new("date").args(["-u", "+%Y-%m-%d"]))?.trim(),
        total / 60.0
    );
    for s in &steps {
        table.push_str(&format!("| {} | {:.1} | {} |\n", s.what, s.seconds / 60.0, s.note));
    }
    std::fs::write(dir.join(format!("{}.md", suite.name())), &table)?;
    say!("newcomer: {} root passed ({})", suite.name(), dir.join(format!("{}.md", suite.name())).display());
    println!("{table}");
    remove_tree(&tree)?;
    Ok(steps)
}

/// The minimal root of `suite`, made once: debootstrap from the machine's
/// archive with the shared package cache, the root's own sources written as
/// the machine kind has them, and (bookworm) `qemu-utils` from backports.
fn base_root(dir: &Path, suite: Suite, sources: &crate::apt::Sources) -> Result<PathBuf> {
    let base = Path::new(crate::util::MACHINE_CACHE).join(format!("newcomer/{}-base", suite.name()));
    std::fs::create_dir_all(base.parent().context("base")?)?;
    let stamp = base.join("etc/remote-vm-newcomer-base");
    if stamp.is_file() {
        say!("newcomer: {} root cached ({})", suite.name(), base.display());
        return Ok(base);
    }
    remove_tree(&base)?;
    say!("newcomer: debootstrap --variant=minbase {} {} (once; cached in {})", suite.name(), sources.debian, base.display());
    let copied = crate::apt::debootstrap(&base, suite.name(), BASE_PACKAGES)?;
    if !copied.is_empty() {
        say!("newcomer: the machine's apt archive settings copied into the root ({})", copied.join(", "));
    }
    let _ = std::fs::remove_file(base.join("etc/apt/sources.list"));
    // The keyring the root's own debian-archive-keyring installed.
    let keyring = crate::apt::keyring_in(&base).context("the root has no Debian archive keyring")?;
    std::fs::write(base.join("etc/apt/sources.list.d/debian.sources"), suite.sources(&sources.debian, sources.security.as_deref(), keyring))?;
    {
        let _mounts = Mounts::new(&base)?;
        let log = dir.join(format!("{}-base.log", suite.name()));
        let mut script = String::from("set -e; apt-get -q update");
        if suite == Suite::Bookworm {
            // This machine kind: qemu-utils from bookworm-backports, no
            // qemu-system, and sources that do not list backports.
            script.push_str(&format!(
                "; echo 'deb [signed-by={keyring}] {} bookworm-backports main' > /etc/apt/sources.list.d/bpo.list\
                 ; apt-get -q update; apt-get -q -y install --no-install-recommends -t bookworm-backports qemu-utils\
                 ; rm /etc/apt/sources.list.d/bpo.list; apt-get -q update",
                sources.debian
            ));
        }
        ensure!(in_root(&base, &script, &log)?, "preparing the {} root failed (log {})", suite.name(), log.display());
    }
    std::fs::write(&stamp, "")?;
    Ok(base)
}

/// The host's own CA certificates (`/usr/local/share/ca-certificates`, e.g. a
/// network's TLS-inspecting egress proxy), trusted in the root as on the host:
/// a machine of this kind has them. How many.
fn local_cas(tree: &Path) -> Result<usize> {
    let dir = Path::new("/usr/local/share/ca-certificates");
    let dest = tree.join("usr/local/share/ca-certificates");
    std::fs::create_dir_all(&dest)?;
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "crt") {
            std::fs::copy(&p, dest.join(e.file_name()))?;
            n += 1;
        }
    }
    if n > 0 {
        sh(Command::new("chroot").arg(tree).args(["update-ca-certificates", "--fresh"]).stdout(std::process::Stdio::null()))
            .context("update-ca-certificates in the root")?;
        say!("newcomer: the host's {n} local CA certificates trusted in the root (as on a machine of this kind)");
    }
    Ok(n)
}

/// The host's rustup, its settings and its stable toolchain, into the root's
/// `/root` (no installed cargo tools: a newcomer has none).
fn copy_rustup(tree: &Path) -> Result<()> {
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME")?);
    let rustup_home = std::env::var_os("RUSTUP_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".rustup"));
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cargo"));
    let settings = std::fs::read_to_string(rustup_home.join("settings.toml")).context("rustup's settings.toml")?;
    let default = settings
        .lines()
        .find_map(|l| l.strip_prefix("default_toolchain = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("rustup has no default toolchain")?;
    let dest = tree.join("root/.rustup/toolchains");
    std::fs::create_dir_all(&dest)?;
    std::fs::write(tree.join("root/.rustup/settings.toml"), &settings)?;
    sh(Command::new("cp").arg("-a").arg(rustup_home.join("toolchains").join(&default)).arg(&dest)).context("copy the stable toolchain")?;
    let bin = tree.join("root/.cargo/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(cargo_home.join("bin/rustup"), bin.join("rustup"))?;
    // rustup's proxies are rustup itself under the tools' names.
    for proxy in ["cargo", "rustc", "rustdoc", "rustfmt", "cargo-fmt", "cargo-clippy", "clippy-driver", "rust-gdb", "rust-lldb"] {
        std::fs::hard_link(bin.join("rustup"), bin.join(proxy))?;
    }
    std::fs::write(tree.join("root/.cargo/env"), "export PATH=\"$HOME/.cargo/bin:$PATH\"\n")?;
    // cargo's downloaded crates and index, copied (not shared: a cargo on the
    // host may write them at the same time), so the root downloads little.
    let registry = tree.join("root/.cargo/registry");
    std::fs::create_dir_all(&registry)?;
    for part in ["index", "cache"] {
        let from = cargo_home.join("registry").join(part);
        if from.is_dir() {
            sh(Command::new("cp").arg("-a").arg(&from).arg(&registry)).context("copy cargo's registry cache")?;
        }
    }
    Ok(())
}

/// `/proc`, `/sys`, `/dev` and the shared caches mounted in a root while it lives.
struct Mounts {
    points: Vec<PathBuf>,
}

impl Mounts {
    fn new(tree: &Path) -> Result<Mounts> {
        let mut m = Mounts { points: Vec::new() };
        let binds: [(&str, PathBuf, &str); 4] = [
            ("proc", PathBuf::from("proc"), "proc"),
            ("--rbind", PathBuf::from("/sys"), "sys"),
            ("--rbind", PathBuf::from("/dev"), "dev"),
            ("--bind", crate::apt::package_cache()?, "var/cache/apt/archives"),
        ];
        for (how, from, to) in binds {
            let point = tree.join(to);
            std::fs::create_dir_all(&point)?;
            let status = if how == "proc" {
                Command::new("mount").args(["-t", "proc", "proc"]).arg(&point).status()?
            } else {
                Command::new("mount").arg(how).arg(&from).arg(&point).status()?
            };
            if !status.success() {
                bail!("mount {how} {} {}: {status}", from.display(), point.display());
            }
            if how == "--rbind" {
                let _ = Command::new("mount").args(["--make-rslave"]).arg(&point).status();
            }
            m.points.push(point);
        }
        Ok(m)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.points.iter().rev() {
            let _ = Command::new("umount").args(["-R", "-l"]).arg(p).status();
        }
    }
}

/// Removes a root, refusing while anything is still mounted in it.
fn remove_tree(tree: &Path) -> Result<()> {
    if !tree.exists() {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let prefix = tree.to_string_lossy().to_string();
    if let Some(m) = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).find(|m| m.starts_with(&prefix)) {
        bail!("{m} is still mounted: not removing {}", tree.display());
    }
    std::fs::remove_dir_all(tree).with_context(|| format!("remove {}", tree.display()))
}

/// `chroot TREE env -i … bash -c SCRIPT`: a login's environment in the root
/// (root's, with rustup's PATH).
fn chroot_args(tree: &Path, script: &str) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![tree.into()];
    for a in [
        "/usr/bin/env",
        "-i",
        "HOME=/root",
        "LANG=C.UTF-8",
        "TERM=dumb",
        "DEBIAN_FRONTEND=noninteractive",
        "PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "/bin/bash",
        "-c",
        script,
    ] {
        v.push(a.into());
    }
    v
}

fn chroot_cmd(tree: &Path, script: &str) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.args(chroot_args(tree, script));
    cmd
}

/// Runs `script` in the root, its output into `log`; whether it exited 0.
fn in_root(tree: &Path, script: &str, log: &Path) -> Result<bool> {
    let file = std::fs::File::create(log)?;
    let status = chroot_cmd(tree, script).stdin(std::process::Stdio::null()).stdout(file.try_clone()?).stderr(file).status()?;
    Ok(status.success())
}

fn in_root_output(tree: &Path, script: &str) -> Result<String> {
    let out = chroot_cmd(tree, script).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `cargo xtask run` in a network namespace of its own; the `remote_vm_`
/// samples of the first `/metrics` that answers, `None` if none did.
fn serve(tree: &Path, log: &Path) -> Result<Option<u64>> {
    let script = format!(
        "ip link set lo up\n\
         cd /root/remote-vm\n\
         cargo xtask run > /root/run.log 2>&1 &\n\
         pid=$!\n\
         n=\n\
         for i in $(seq 1 {secs}); do\n\
           if curl -sf --max-time 10 http://127.0.0.1:19361/metrics > /root/metrics.txt; then n=$(grep -c '^remote_vm_' /root/metrics.txt); break; fi\n\
           kill -0 $pid 2>/dev/null || break\n\
           sleep 1\n\
         done\n\
         pkill -TERM remote-vm-daem ; wait $pid\n\
         cat /root/run.log\n\
         echo \"metrics-samples=$n\"\n",
        secs = SERVE_TIMEOUT.as_secs()
    );
    let file = std::fs::File::create(log)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "chroot"]).args(chroot_args(tree, &script));
    let status = cmd.stdin(std::process::Stdio::null()).stdout(file.try_clone()?).stderr(file).status()?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let n = text.lines().rev().find_map(|l| l.strip_prefix("metrics-samples=")).and_then(|v| v.trim().parse::<u64>().ok());
    if n.is_none() && !status.success() {
        say!("newcomer: the serving step ended with {status}");
    }
    Ok(n)
}

fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_has_the_machine_kinds_sources() {
        let k = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let s = Suite::Bookworm.sources("http://m/debian", Some("http://m/debian-security"), k);
        assert!(s.contains("Suites: bookworm bookworm-updates\n") && s.contains("URIs: http://m/debian-security\nSuites: bookworm-security\n"), "{s}");
        assert!(!s.contains("backports"));
        let sid = Suite::Sid.sources("http://m/debian", Some("http://m/debian-security"), k);
        assert_eq!(sid.matches("Types: deb").count(), 1, "{sid}");
    }
}
