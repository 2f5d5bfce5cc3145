//! The VM harness: writes an initramfs (busybox, the daemon, the testkit), boots
//! each kernel under QEMU (TCG), and reads the results from the serial console.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cpio::Cpio, util::say};

/// A kernel to boot: its name (also passed to the guest as `rvm.kernel=`), image,
/// what the guest must find (`rvm.expect=`), and where it came from.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub image: PathBuf,
    /// `patched`, `unpatched`, `legacy` (no lockless-path functions) or `unknown`.
    pub expect: String,
    /// The exact origin (package and version), for the matrix.
    pub origin: String,
    /// Kernel parameters of every boot of it (e.g. `preempt=full`).
    pub params: String,
}

impl Kernel {
    /// `NAME[:EXPECT]=PATH` or `PATH` (the name is then the file name without
    /// `bzImage-`). EXPECT is what the guest must find: `patched`, `unpatched`,
    /// `legacy` (no lockless-path functions at all) or `unknown`; by default
    /// `patched`/`unpatched` when the name starts so, else `unknown`.
    pub fn parse(spec: &str) -> Result<Kernel, String> {
        let (name, path) = match spec.split_once('=') {
            Some((n, p)) => (n.to_string(), PathBuf::from(p)),
            None => {
                let p = PathBuf::from(spec);
                let file = p.file_name().and_then(|f| f.to_str()).unwrap_or(spec);
                (file.trim_start_matches("bzImage-").to_string(), p)
            }
        };
        let (name, expect) = match name.split_once(':') {
            Some((n, e)) => (n.to_string(), Some(e.to_string())),
            None => (name, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("kernel name {name:?}: use letters, digits, '-', '_', '.'"));
        }
        let expect = match expect {
            Some(e) if ["patched", "unpatched", "legacy", "unknown"].contains(&e.as_str()) => e,
            Some(e) => return Err(format!("expectation {e:?}: one of patched, unpatched, legacy, unknown")),
            None if name.starts_with("unpatched") => "unpatched".to_string(),
            None if name.starts_with("patched") => "patched".to_string(),
            None => "unknown".to_string(),
        };
        Ok(Kernel {
            origin: path.display().to_string(),
            name,
            image: path,
            expect,
            params: String::new(),
        })
    }
}

impl Kernel {
    pub fn expect(&self) -> &str {
        &self.expect
    }
}

/// The shared A/B pair beside the repository.
pub fn shared_kernels(root: &Path) -> Vec<Kernel> {
    shared_pair(root, "", "6.12.117")
}

/// The 7.3.4 A/B pair beside the repository (the v1 series exactly as posted;
/// `PREEMPT_LAZY`: its BPF programs can be preempted).
pub fn shared_kernels_7_3(root: &Path) -> Vec<Kernel> {
    shared_pair(root, "7.3", "7.3.4")
}

/// `bzImage-{patched,unpatched}` in `../shared/kernels/SUBDIR`, named with
/// `-SUBDIR` appended (nothing for the top folder).
fn shared_pair(root: &Path, subdir: &str, release: &str) -> Vec<Kernel> {
    let rel = if subdir.is_empty() { "../shared/kernels".to_string() } else { format!("../shared/kernels/{subdir}") };
    ["patched", "unpatched"]
        .iter()
        .map(|n| Kernel {
            name: if subdir.is_empty() { n.to_string() } else { format!("{n}-{subdir}") },
            image: root.join(&rel).join(format!("bzImage-{n}")),
            expect: n.to_string(),
            origin: format!("{rel}/bzImage-{n} ({release}{})", if *n == "patched" { " + v1 series" } else { "" }),
            params: String::new(),
        })
        .collect()
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up
echo "init: starting tests"
if /usr/bin/rvm-testkit guest; then echo "init: success"; else echo "init: failure"; fi
reboot -f
"#;

/// The initramfs every VM run uses: busybox, the daemon and rvm-testkit.
pub fn write_test_initramfs(root: &Path, out: &Path) -> Result<()> {
    write_initramfs(
        out,
        &[root.join("target/release/remote-vm-daemon"), root.join("target/release/rvm-testkit")],
    )
}

/// Writes the initramfs with `binaries` (and the shared libraries they need) at
/// `/usr/bin/<name>`.
pub fn write_initramfs(out: &Path, binaries: &[PathBuf]) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    let ldd = Command::new("ldd").arg(busybox).output();
    if !busybox.is_file() || ldd.is_ok_and(|o| o.status.success()) {
        bail!("/bin/busybox is missing or not static: install busybox-static");
    }
    let mut dirs = BTreeSet::new();
    let mut files: Vec<(String, u32, PathBuf)> = vec![("/bin/busybox".into(), 0o755, busybox.into())];
    for bin in binaries {
        let name = bin.file_name().context("binary name")?.to_string_lossy();
        files.push((format!("/usr/bin/{name}"), 0o755, bin.clone()));
        for lib in shared_libraries(bin)? {
            let dest = lib.to_string_lossy().to_string();
            if !files.iter().any(|(d, _, _)| *d == dest) {
                files.push((dest, 0o755, lib));
            }
        }
    }
    for d in ["/bin", "/usr", "/usr/bin", "/proc", "/sys", "/dev", "/tmp", "/run", "/etc"] {
        dirs.insert(d.to_string());
    }
    for (dest, _, _) in &files {
        let mut p = Path::new(dest).parent();
        while let Some(dir) = p {
            if dir != Path::new("/") {
                dirs.insert(dir.to_string_lossy().to_string());
            }
            p = dir.parent();
        }
    }
    let file = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut cpio = Cpio::new(std::io::BufWriter::new(file));
    for d in &dirs {
        cpio.dir(d)?;
    }
    cpio.file("/init", 0o755, INIT.as_bytes())?;
    for (dest, mode, src) in &files {
        let data = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
        cpio.file(dest, *mode, &data)?;
    }
    cpio.finish()?;
    Ok(())
}

/// The absolute paths `ldd` lists for `bin`.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// What one boot produced.
pub struct Boot {
    pub console: PathBuf,
    pub success: bool,
    /// The guest's JSON report, if it got that far.
    pub report: Option<serde_json::Value>,
    pub seconds: f64,
}

/// How the guest's clock runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// TCG with two vCPUs; guest time follows the host's.
    Wall,
    /// `-icount shift=0,sleep=off` with one vCPU: one guest nanosecond is one
    /// guest instruction, whatever the host is doing.
    Instructions,
}

/// The QEMU command for `kernel`: TCG (KVM fails here), serial console on stdout,
/// `extra` appended to the kernel command line, and with `forward` the guest's
/// port 19361 reachable on the host's 127.0.0.1:`forward` (user networking with
/// `restrict=on`: the guest cannot send anything out).
fn qemu(kernel: &Kernel, initramfs: &Path, extra: &str, forward: Option<u16>, clock: Clock) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024"]);
    match clock {
        Clock::Wall => cmd.args(["-smp", "2"]),
        Clock::Instructions => cmd.args(["-smp", "1", "-icount", "shift=0,sleep=off"]),
    };
    cmd
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet {} rvm.kernel={} rvm.expect={} {extra}",
            kernel.params,
            kernel.name,
            kernel.expect()
        ))
        .stdin(Stdio::null());
    if let Some(port) = forward {
        cmd.args([
            "-nic",
            &format!("user,restrict=on,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:19361"),
        ]);
    }
    cmd
}

/// A VM running the daemon and the workload in a loop (`rvm.mode=serve`),
/// scrapeable on 127.0.0.1:`port`. Dropping it stops the VM.
pub struct ServingVm {
    pub kernel: Kernel,
    pub port: u16,
    pub console: PathBuf,
    child: std::process::Child,
}

impl ServingVm {
    pub fn start(kernel: &Kernel, initramfs: &Path, out_dir: &Path, port: u16, extra: &str) -> Result<ServingVm> {
        if !kernel.image.is_file() {
            bail!("kernel image {} not found", kernel.image.display());
        }
        std::fs::create_dir_all(out_dir)?;
        let console_path = out_dir.join("console.log");
        let console = std::fs::File::create(&console_path)?;
        say!(
            "booting kernel {} ({}) under QEMU TCG, daemon forwarded to 127.0.0.1:{port}",
            kernel.name,
            kernel.image.display()
        );
        let child = qemu(kernel, initramfs, &format!("rvm.mode=serve {extra}"), Some(port), Clock::Wall)
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("start qemu-system-x86_64 (install qemu-system-x86)")?;
        Ok(ServingVm {
            kernel: kernel.clone(),
            port,
            console: console_path,
            child,
        })
    }

    /// Waits until the guest says it is serving.
    pub fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for("vmtest: serving", timeout)
    }

    /// Waits until the guest's console shows `marker`.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if text.contains(marker) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("VM {} exited ({status}); console: {}", self.kernel.name, self.console.display());
            }
            if Instant::now() > deadline {
                bail!("VM {} did not say {marker:?} within {} s; console: {}", self.kernel.name, timeout.as_secs(), self.console.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ServingVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots `kernel` with `initramfs`, `extra` on the kernel command line, and
/// waits for the guest to finish (or `timeout`); the report is the JSON after
/// the console line prefix `report_prefix`.
pub fn boot_with(
    kernel: &Kernel,
    initramfs: &Path,
    out_dir: &Path,
    extra: &str,
    timeout: Duration,
    report_prefix: &str,
) -> Result<Boot> {
    boot_clocked(kernel, initramfs, out_dir, extra, timeout, report_prefix, Clock::Wall)
}

/// `boot_with` with the guest clock chosen.
pub fn boot_clocked(
    kernel: &Kernel,
    initramfs: &Path,
    out_dir: &Path,
    extra: &str,
    timeout: Duration,
    report_prefix: &str,
    clock: Clock,
) -> Result<Boot> {
    if !kernel.image.is_file() {
        bail!("kernel image {} not found", kernel.image.display());
    }
    std::fs::create_dir_all(out_dir)?;
    let console_path = out_dir.join("console.log");
    let mut console = std::fs::File::create(&console_path)?;
    say!("vm-test: booting kernel {} ({}) under QEMU TCG", kernel.name, kernel.image.display());
    let started = Instant::now();
    let mut child = qemu(kernel, initramfs, extra, None, clock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64 (install qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = started + timeout;
    let mut success = false;
    let mut failure = false;
    let mut report = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            writeln!(console, "xtask: timed out after {} s", timeout.as_secs())?;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                writeln!(console, "{line}")?;
                if let Some(json) = line.strip_prefix(report_prefix) {
                    report = serde_json::from_str(json).ok();
                } else if (line.starts_with("vmtest ") && line.contains(" FAIL")) || line.starts_with("stress: ") {
                    // Failures and progress reach the terminal as they happen.
                    say!("  [{}] {line}", kernel.name);
                } else if line == "init: success" {
                    success = true;
                } else if line == "init: failure" {
                    failure = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    let stderr = child
        .stderr
        .take()
        .map(|mut e| {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
        .unwrap_or_default();
    if !stderr.trim().is_empty() {
        writeln!(console, "qemu stderr: {stderr}")?;
    }
    Ok(Boot {
        console: console_path,
        success: success && !failure,
        report,
        seconds: started.elapsed().as_secs_f64(),
    })
}
