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
use remote_vm_common::series::Expectation;

/// A kernel to boot: its name (also passed to the guest as `rvm.kernel=`), image,
/// what the guest must find (`rvm.expect=`), and where it came from.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub image: PathBuf,
    /// `patched-v1`, `patched-v2` (the lockless path, as that version of the
    /// series), `unpatched`, `legacy` (no lockless-path functions) or `unknown`.
    pub expect: String,
    /// The exact origin (package and version), for the matrix.
    pub origin: String,
    /// Kernel parameters of every boot of it (e.g. `preempt=full`).
    pub params: String,
    /// Groups of guest suites `vm-test` runs in a boot of their own each
    /// (`rvm.only=`), the main boot skipping them (`rvm.skip=`): a known kernel
    /// defect that one suite's probes would set off for the next (see shared_pair).
    pub isolate: Vec<&'static [&'static str]>,
    /// The suites it boots with in `cargo xtask test`'s default set (one boot,
    /// `rvm.only=`); `None`: every suite. `--all-kernels` or naming the kernel
    /// runs every suite.
    pub only: Option<&'static str>,
}

impl Kernel {
    /// `NAME[:EXPECT]=PATH` or `PATH` (the name is then the file name without
    /// `bzImage-`). EXPECT is what the guest must find: `patched-v1` or
    /// `patched-v2` (the series version is the image's, said, never inferred),
    /// `unpatched`, `legacy` (no lockless-path functions at all) or `unknown`;
    /// by default `unpatched` when the name starts so, else `unknown`.
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
            Some(e) if Expectation::parse(&e).is_some() => e,
            Some(e) if e == "patched" => {
                return Err(format!("{name}: expectation \"patched\": say which version of the series the image carries, patched-v1 or patched-v2"));
            }
            Some(e) => {
                let words: Vec<&str> = Expectation::ALL.iter().map(|x| x.word()).collect();
                return Err(format!("expectation {e:?}: one of {}", words.join(", ")));
            }
            None if name.starts_with("unpatched") => Expectation::Unpatched.word().to_string(),
            // A name of the matrix (`patched-7.3`), resolved later, or an image
            // whose series version must be said (`Kernel::check_expect`).
            None if name.starts_with("patched") => String::new(),
            None => Expectation::Unknown.word().to_string(),
        };
        Ok(Kernel {
            origin: path.display().to_string(),
            name,
            image: path,
            expect,
            params: String::new(),
            isolate: Vec::new(),
            only: None,
        })
    }
}

impl Kernel {
    pub fn expect(&self) -> &str {
        &self.expect
    }

    /// A kernel given as a path whose name says patched but not which version
    /// of the series: refused with what to write instead.
    pub fn check_expect(&self) -> Result<(), String> {
        if self.expect.is_empty() {
            let name = &self.name;
            return Err(format!("--kernel {name}: a patched image needs its series version: {name}:patched-v1=PATH or {name}:patched-v2=PATH"));
        }
        Ok(())
    }

    /// The lockless path is expected (either version of the series).
    /// The expectation, `Unknown` when not (yet) said.
    pub fn expectation(&self) -> Expectation {
        Expectation::parse(&self.expect).unwrap_or(Expectation::Unknown)
    }

    pub fn is_patched(&self) -> bool {
        self.expectation().is_patched()
    }

    /// What `remote_vm_kernel_info`'s `series` must say.
    pub fn series(&self) -> &'static str {
        self.expectation().series().label()
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

/// Both shared A/B pairs: 6.12 with our backport, then 7.3.4 with the series as posted.
pub fn shared_pairs(root: &Path) -> Vec<Kernel> {
    let mut kernels = shared_kernels(root);
    kernels.extend(shared_kernels_7_3(root));
    kernels
}

/// The suites `patched-v2` boots with in the default set: `check` (the
/// series fingerprint) always runs, `first` classifies the workload with the
/// default probes (the VMA-level reasons merged), `callers` with the VMA step
/// probed (`crosses_vma_end` apart). Every suite: `--all-kernels` or `--kernel
/// patched-v2`.
pub const V2_DEFAULT_SUITES: &str = "first,callers";

/// `../shared/kernels/7.3/bzImage-v2`: 7.3.4 with the series' v2 (its 2/3
/// reconstructed, see the README there), `patched-v2` against `unpatched-7.3`.
/// `default`: as booted in the default set (`V2_DEFAULT_SUITES`).
pub fn shared_v2(root: &Path, default: bool) -> Vec<Kernel> {
    let rel = "../shared/kernels/7.3";
    let k = Kernel {
        name: "patched-v2".into(),
        image: root.join(rel).join("bzImage-v2"),
        expect: Expectation::PatchedV2.word().into(),
        origin: format!("{rel}/bzImage-v2 (7.3.4 + v2 series, reconstructed 2/3)"),
        params: String::new(),
        isolate: FTRACE_DEFECT_ISOLATE.to_vec(),
        only: default.then_some(V2_DEFAULT_SUITES),
    };
    present(vec![k])
}

/// `bzImage-{patched,unpatched}` in `../shared/kernels/SUBDIR`, named with
/// `-SUBDIR` appended (nothing for the top folder). An image that is not there
/// (a clone without `../shared`) is left out, with one line the first time.
fn shared_pair(root: &Path, subdir: &str, release: &str) -> Vec<Kernel> {
    let rel = if subdir.is_empty() { "../shared/kernels".to_string() } else { format!("../shared/kernels/{subdir}") };
    let kernels = ["patched", "unpatched"]
        .iter()
        .map(|n| Kernel {
            name: if subdir.is_empty() { n.to_string() } else { format!("{n}-{subdir}") },
            image: root.join(&rel).join(format!("bzImage-{n}")),
            // Both shared patched images carry v1 (../shared/kernels/README.md).
            expect: if *n == "patched" { Expectation::PatchedV1 } else { Expectation::Unpatched }.word().into(),
            origin: format!("{rel}/bzImage-{n} ({release}{})", if *n == "patched" { " + v1 series" } else { "" }),
            params: String::new(),
            only: None,
            // The 7.3.4 images (tinyconfig-based: no CALL_PADDING, no ORC)
            // oops (a jump to NULL or into the stack from the ftrace call site)
            // when a function gets a kprobe, then a BPF trampoline, then a
            // kprobe again in one boot (docs/probes-and-kernels.md, "Supported
            // kernels"): the
            // kprobe scenario and the caller scenarios get boots of their own.
            isolate: if subdir == "7.3" { FTRACE_DEFECT_ISOLATE.to_vec() } else { Vec::new() },
        })
        .collect();
    present(kernels)
}

/// The images that are there; each missing one said once.
fn present(kernels: Vec<Kernel>) -> Vec<Kernel> {
    kernels
        .into_iter()
        .filter(|k| {
            let there = k.image.is_file();
            if !there && MISSING.lock().is_ok_and(|mut m| m.insert(k.image.clone())) {
                say!(
                    "kernels: no {} ({}): skipped{}",
                    k.image.display(),
                    k.origin,
                    if k.is_patched() {
                        " — the lockless path is NOT tested; pass a patched image of your own with --kernel NAME:patched-v1=PATH (or patched-v2)"
                    } else {
                        ""
                    }
                );
            }
            there
        })
        .collect()
}

/// The suites a kernel with the ftrace defect of the 7.3.4 test images runs
/// in boots of their own (see `shared_pair`).
pub const FTRACE_DEFECT_ISOLATE: [&[&str]; 3] = [&["fallback"], &["phantom"], &["callers", "kprobe_callers"]];

/// Shared images found missing (each said once).
static MISSING: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

/// Whether a shared image was missing: the run did not test what it tests.
pub fn shared_missing() -> Vec<PathBuf> {
    MISSING.lock().map(|m| m.iter().cloned().collect()).unwrap_or_default()
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
    write_test_initramfs_with(root, out, &[])
}

/// The test initramfs and `extra` executables, each (path in the guest, file).
pub fn write_test_initramfs_with(root: &Path, out: &Path, extra: &[(String, PathBuf)]) -> Result<()> {
    write_test_initramfs_from(root, out, extra, &[])
}

/// [`write_test_initramfs_with`], the executables' libraries looked for in
/// the unpacked package `trees` first (each put at its path in the tree).
pub fn write_test_initramfs_from(root: &Path, out: &Path, extra: &[(String, PathBuf)], trees: &[PathBuf]) -> Result<()> {
    let mut files: Vec<(String, PathBuf)> = ["remote-vm-daemon", "rvm-testkit"]
        .iter()
        .map(|b| (format!("/usr/bin/{b}"), root.join("target/release").join(b)))
        .collect();
    files.extend(extra.iter().cloned());
    write_initramfs_at(out, &files, trees)
}

/// Writes the initramfs with each executable (path in the guest, file) and
/// the shared libraries they need (from `trees`, else the machine's).
fn write_initramfs_at(out: &Path, binaries: &[(String, PathBuf)], trees: &[PathBuf]) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    let ldd = Command::new("ldd").arg(busybox).output();
    if !busybox.is_file() || ldd.is_ok_and(|o| o.status.success()) {
        bail!("/bin/busybox is missing or not static: install busybox-static");
    }
    let mut dirs = BTreeSet::new();
    let mut files: Vec<(String, u32, PathBuf)> = vec![("/bin/busybox".into(), 0o755, busybox.into())];
    for (dest, bin) in binaries {
        files.push((dest.clone(), 0o755, bin.clone()));
        for lib in shared_libraries(bin, trees)? {
            let in_tree = trees.iter().find_map(|t| lib.strip_prefix(t).ok().map(|p| Path::new("/").join(p)));
            let dest = in_tree.as_deref().unwrap_or(&lib).to_string_lossy().to_string();
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

/// The absolute paths `ldd` lists for `bin`, looking in `trees`' library
/// directories first.
fn shared_libraries(bin: &Path, trees: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let dirs: Vec<String> = trees
        .iter()
        .flat_map(|t| ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"].map(|d| t.join(d)))
        .filter(|d| d.is_dir())
        .map(|d| d.to_string_lossy().to_string())
        .collect();
    let mut ldd = Command::new("ldd");
    if !dirs.is_empty() {
        ldd.env("LD_LIBRARY_PATH", dirs.join(":"));
    }
    let out = ldd.arg(bin).output().context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(missing) = text.lines().find(|l| l.contains("=> not found")) {
        bail!("{}: a library is missing on this machine: {}", bin.display(), missing.trim());
    }
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
    /// The guest's init said `INIT_STARTED`: the tests began.
    pub reached_init: bool,
    pub timed_out: bool,
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

/// `--accel`: how QEMU runs guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when a short KVM boot works, else TCG (the reason printed).
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator chosen (`--accel`), set once by main before any boot.
static ACCEL: std::sync::OnceLock<Accel> = std::sync::OnceLock::new();
/// What `auto` found, decided at the first boot.
static RESOLVED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

pub fn set_accel(accel: Accel) {
    let _ = ACCEL.set(accel);
}

/// Whether guests run under KVM: `--accel kvm`, or `auto` and a 64 MiB KVM
/// boot of `kernel` (no initramfs: it panics at once, QEMU exits) printed its
/// banner within 30 s. `-icount` boots are always TCG.
fn use_kvm(kernel: &Kernel) -> bool {
    let accel = *ACCEL.get().unwrap_or(&Accel::Auto);
    if accel == Accel::Tcg {
        return false;
    }
    let verdict = RESOLVED.get_or_init(|| {
        let probe = kvm_probe(kernel);
        match (&probe, accel) {
            (Ok(()), _) => say!("vm: KVM works here: guests run under KVM (--accel tcg for TCG)"),
            (Err(why), Accel::Auto) => say!("vm: KVM does not work here ({why}): guests run under TCG"),
            (Err(why), _) => say!("vm: --accel kvm, but KVM does not work here ({why}): boots will fail"),
        }
        probe
    });
    verdict.is_ok() || accel == Accel::Kvm
}

fn kvm_probe(kernel: &Kernel) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-cpu", "host", "-m", "64", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel"])
        .arg(&kernel.image)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Linux version") {
                let _ = tx.send(());
                return;
            }
        }
    });
    // A kernel prints its banner within a second under KVM.
    let banner = rx.recv_timeout(Duration::from_secs(15));
    let _ = child.kill();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if banner.is_ok() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err
        .lines()
        .find(|l| !l.trim().is_empty() && !l.contains("terminating on signal"))
        .map_or("a KVM boot printed no kernel banner within 15 s".to_string(), |l| l.trim().to_string()))
}

/// QEMU's `-accel` and `-cpu` for a wall-clock boot of `kernel`.
pub fn accel_args(kernel: &Kernel) -> [&'static str; 4] {
    if use_kvm(kernel) { ["-accel", "kvm", "-cpu", "host"] } else { ["-accel", "tcg", "-cpu", "max"] }
}

/// The accelerator's name for messages.
pub fn accel_name(kernel: &Kernel, clock: Clock) -> &'static str {
    if clock == Clock::Wall && use_kvm(kernel) { "KVM" } else { "TCG" }
}

/// The QEMU command for `kernel`: KVM or TCG (`--accel`), serial console on stdout,
/// `extra` appended to the kernel command line, and with `forward` the guest's
/// port 19361 reachable on the host's 127.0.0.1:`forward` (user networking with
/// `restrict=on`: the guest cannot send anything out).
fn qemu(kernel: &Kernel, initramfs: &Path, extra: &str, forward: Option<u16>, clock: Clock) -> Command {
    let (initrd, with_files) = initramfs_for(kernel, initramfs);
    let mut cmd = Command::new("qemu-system-x86_64");
    match clock {
        Clock::Wall => cmd.args(accel_args(kernel)),
        Clock::Instructions => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.args(["-m", "1024"]);
    match clock {
        Clock::Wall => cmd.args(["-smp", "2"]),
        Clock::Instructions => cmd.args(["-smp", "1", "-icount", "shift=0,sleep=off"]),
    };
    cmd
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet {} rvm.kernel={} rvm.expect={} {}{extra}",
            kernel.params,
            kernel.name,
            kernel.expect(),
            if with_files { "rvm.config=yes " } else { "" }
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

/// Files of `kernel` its guest gets under `/boot/rvm`: its build config,
/// where known — a Debian image's from its package (kept beside the image by
/// `kernels`), a shared image's beside it (`config-NAME`). The guest derives
/// what it expects of holders' stacks from it (the unwinder).
pub fn kernel_files(kernel: &Kernel) -> Vec<(&'static str, PathBuf)> {
    let image = &kernel.image;
    let name = image.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let config = if name.ends_with(".vmlinuz") {
        Some(image.with_extension("config"))
    } else {
        name.strip_prefix("bzImage-").map(|suffix| image.with_file_name(format!("config-{suffix}")))
    };
    config.filter(|p| p.is_file()).map(|p| ("/boot/rvm/config", p)).into_iter().collect()
}

/// `initramfs` with `kernel_files` appended as a second cpio archive (the
/// kernel unpacks concatenated archives), written beside it; `initramfs`
/// itself when there are none or it cannot be written (said). The flag: the
/// kernel has files, so its guest must find them (`rvm.config=yes`).
fn initramfs_for(kernel: &Kernel, initramfs: &Path) -> (PathBuf, bool) {
    let files = kernel_files(kernel);
    if files.is_empty() {
        return (initramfs.to_path_buf(), false);
    }
    let out = initramfs.with_file_name(format!(
        "{}.{}.cpio",
        initramfs.file_stem().and_then(|s| s.to_str()).unwrap_or("initramfs"),
        kernel.name
    ));
    let write = || -> Result<()> {
        let mut bytes = std::fs::read(initramfs)?;
        let mut cpio = Cpio::new(Vec::new());
        cpio.dir("/boot")?;
        cpio.dir("/boot/rvm")?;
        for (dest, src) in &files {
            cpio.file(dest, 0o644, &std::fs::read(src)?)?;
        }
        bytes.extend(cpio.finish()?);
        // Whole or not at all: boots of one kernel may run side by side.
        let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &out)?;
        Ok(())
    };
    match write() {
        Ok(()) => (out, true),
        Err(e) => {
            say!("vm: {}: the kernel's files not added to its initramfs: {e:#}", kernel.name);
            // The guest is told they should be there: its checks fail.
            (initramfs.to_path_buf(), true)
        }
    }
}

/// What every test initramfs's init prints first (`init: starting tests`,
/// `init: starting`): a VM that ends without it ran no test, and is booted
/// once more. The BIOS's screen clearing can precede it on its line.
pub const INIT_STARTED: &str = "init: starting";

/// A VM running the daemon and the workload in a loop (`rvm.mode=serve`),
/// scrapeable on 127.0.0.1:`port`. Dropping it stops the VM.
pub struct ServingVm {
    pub kernel: Kernel,
    pub port: u16,
    pub console: PathBuf,
    child: std::process::Child,
    initramfs: PathBuf,
    extra: String,
    /// Booted once more after a boot that ended before its init started.
    retried: bool,
}

impl ServingVm {
    pub fn start(kernel: &Kernel, initramfs: &Path, out_dir: &Path, port: u16, extra: &str) -> Result<ServingVm> {
        if !kernel.image.is_file() {
            bail!("kernel image {} not found", kernel.image.display());
        }
        std::fs::create_dir_all(out_dir)?;
        let console = out_dir.join("console.log");
        let extra = format!("rvm.mode=serve {extra}");
        let child = Self::spawn(kernel, initramfs, &console, port, &extra)?;
        Ok(ServingVm {
            kernel: kernel.clone(),
            port,
            console,
            child,
            initramfs: initramfs.to_path_buf(),
            extra,
            retried: false,
        })
    }

    fn spawn(kernel: &Kernel, initramfs: &Path, console_path: &Path, port: u16, extra: &str) -> Result<std::process::Child> {
        let console = std::fs::File::create(console_path)?;
        say!(
            "booting kernel {} ({}) under QEMU {}, daemon forwarded to 127.0.0.1:{port}",
            kernel.name,
            kernel.image.display(),
            accel_name(kernel, Clock::Wall)
        );
        qemu(kernel, initramfs, extra, Some(port), Clock::Wall)
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("start qemu-system-x86_64 (install qemu-system-x86)")
    }

    /// Waits until the guest says it is serving.
    pub fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for("vmtest: serving", timeout)
    }

    /// Waits until the guest's console shows `marker`. A VM that ends
    /// before its init prints a line is booted once more (as `boot_with`).
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if text.contains(marker) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let started = text.contains(INIT_STARTED);
                if started || self.retried {
                    bail!(
                        "VM {} exited ({status}); console {} ends:\n{}",
                        self.kernel.name,
                        self.console.display(),
                        tail(&self.console, 15)
                    );
                }
                keep_before_init(&format!("VM {}", self.kernel.name), &self.console, &status.to_string())?;
                self.retried = true;
                self.child = Self::spawn(&self.kernel, &self.initramfs, &self.console, self.port, &self.extra)?;
                continue;
            }
            if Instant::now() > deadline {
                bail!(
                    "VM {} did not say {marker:?} within {} s; console {} ends:\n{}",
                    self.kernel.name,
                    timeout.as_secs(),
                    self.console.display(),
                    tail(&self.console, 15)
                );
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
    let mut attempt = 1;
    loop {
        let boot = boot_once(kernel, initramfs, out_dir, extra, timeout, report_prefix, clock)?;
        if attempt == 2 || boot.reached_init || boot.timed_out {
            return Ok(boot);
        }
        keep_before_init(&format!("vm-test: {}", kernel.name), &boot.console, &format!("after {:.0} s", boot.seconds))?;
        attempt += 1;
    }
}

/// For a VM that ended before its init said `INIT_STARTED` (no test ran, so
/// not a result; the caller boots it once more): its console is kept as
/// `console.before-init.log` beside it, and its tail said with `who` and `how`.
pub fn keep_before_init(who: &str, console: &Path, how: &str) -> Result<()> {
    let first = console.with_file_name("console.before-init.log");
    std::fs::rename(console, &first)?;
    say!(
        "{who}: the VM ended ({how}) before its init started; its console (kept at {}) ends:\n{}\nbooting it once more",
        first.display(),
        tail(&first, 15)
    );
    Ok(())
}

/// The last `n` lines of a console file, indented.
/// The failed checks of a test console (`vmtest NAME FAIL: …` lines), at most
/// `n`, then how many more: what a failure message must show first, since
/// a console's tail is usually the shutdown.
pub fn failures(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("vmtest ") && l.contains(" FAIL: ")).collect();
    let mut out: Vec<String> = failed.iter().take(n).map(|l| format!("    {l}")).collect();
    if failed.len() > n {
        out.push(format!("    … and {} more", failed.len() - n));
    }
    if out.is_empty() {
        out.push("    (no failed check: the boot itself failed)".into());
    }
    out.join("\n")
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn boot_once(
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
    say!("vm-test: booting kernel {} ({}) under QEMU {}", kernel.name, kernel.image.display(), accel_name(kernel, clock));
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
    let mut reached_init = false;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            writeln!(console, "xtask: timed out after {} s", timeout.as_secs())?;
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                writeln!(console, "{line}")?;
                // The first line also carries the BIOS's screen clearing.
                reached_init |= line.contains(INIT_STARTED);
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
    let status = child.wait().ok();
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
        writeln!(console, "qemu stderr: {}", stderr.trim_end())?;
    }
    if let Some(status) = status.filter(|s| !s.success()) {
        writeln!(console, "xtask: qemu exited with {status}")?;
    }
    Ok(Boot {
        console: console_path,
        reached_init,
        timed_out,
        success: success && !failure,
        report,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "kernel" QEMU refuses at once: the VM ends before any init.
    fn refused_kernel(dir: &Path) -> (Kernel, PathBuf) {
        let _ = ACCEL.set(Accel::Tcg);
        std::fs::create_dir_all(dir).unwrap();
        let image = dir.join("not-a-kernel");
        std::fs::write(&image, vec![0u8; 65536]).unwrap();
        let initramfs = dir.join("initramfs.cpio");
        std::fs::write(&initramfs, b"").unwrap();
        let kernel = Kernel {
            name: "not-a-kernel".into(),
            image,
            expect: "unknown".into(),
            origin: "test".into(),
            params: String::new(),
            isolate: Vec::new(),
            only: None,
        };
        (kernel, initramfs)
    }

    #[test]
    fn a_patched_kernel_says_its_series_version() {
        let k = Kernel::parse("mine:patched-v2=/tmp/bzImage").unwrap();
        assert_eq!((k.name.as_str(), k.expect(), k.is_patched(), k.series()), ("mine", "patched-v2", true, "v2"));
        assert!(k.check_expect().is_ok());
        let e = Kernel::parse("mine:patched=/tmp/bzImage").unwrap_err();
        assert!(e.contains("patched-v1 or patched-v2"), "{e}");
        // A path named patched: which version must be said before it boots.
        let k = Kernel::parse("/tmp/bzImage-patched").unwrap();
        assert_eq!(k.name, "patched");
        assert!(k.check_expect().unwrap_err().contains("patched:patched-v1=PATH"));
        let k = Kernel::parse("unpatched-7.3").unwrap();
        assert_eq!((k.expect(), k.series()), ("unpatched", "none"));
        assert!(Kernel::parse("mine:v2=/tmp/bzImage").is_err());
    }

    #[test]
    fn every_test_init_says_it_started_first() {
        for init in [INIT, crate::systemd::INIT] {
            let first_echo = init.lines().find(|l| l.starts_with("echo ")).unwrap();
            assert!(first_echo.contains(INIT_STARTED), "{first_echo}");
        }
    }

    #[test]
    #[ignore = "needs qemu-system-x86_64 (cargo xtask test installs it)"]
    fn a_boot_that_ends_before_init_is_booted_once_more_then_fails_with_its_console() {
        let dir = std::env::temp_dir().join(format!("rvm-xtask-boot-{}", std::process::id()));
        let (kernel, initramfs) = refused_kernel(&dir);
        let out = dir.join("boot");
        let boot = boot_clocked(&kernel, &initramfs, &out, "", Duration::from_secs(60), "x ", Clock::Wall).unwrap();
        assert!(!boot.success && !boot.reached_init && !boot.timed_out);
        for console in [out.join("console.before-init.log"), out.join("console.log")] {
            let text = std::fs::read_to_string(&console).unwrap();
            assert!(text.contains("qemu stderr: "), "{}: {text}", console.display());
            assert!(text.contains("xtask: qemu exited with exit status: 1"), "{}: {text}", console.display());
        }

        let out = dir.join("serve");
        let mut vm = ServingVm::start(&kernel, &initramfs, &out, 1, "").unwrap();
        let err = vm.wait_serving(Duration::from_secs(60)).unwrap_err().to_string();
        assert!(vm.retried, "{err}");
        assert!(err.contains("exited") && err.contains("ends:"), "{err}");
        assert!(out.join("console.before-init.log").is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
