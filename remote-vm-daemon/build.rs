//! Builds the eBPF object (`remote-vm-ebpf`) with Debian's rustc-web toolchain and
//! leaves it in OUT_DIR for `include_bytes_aligned!`.
use std::env;

fn main() -> anyhow::Result<()> {
    // The rustup name given to Debian's /usr toolchain by `cargo xtask setup`
    // (`rustup toolchain link debian-rustc-web /usr`). Without rustup on PATH,
    // aya-build uses the `cargo` on PATH instead.
    println!("cargo:rerun-if-env-changed=REMOTE_VM_EBPF_TOOLCHAIN");
    build_info();
    let toolchain =
        env::var("REMOTE_VM_EBPF_TOOLCHAIN").unwrap_or_else(|_| "debian-rustc-web".to_string());
    // aya-ebpf and remote-vm-common (its atomic add, `stats::bump`) need
    // `asm_experimental_arch` on BPF: unstable features for those crates only
    // (Debian's stable rustc-web builds the eBPF object, see docs/tests.md). Not the
    // eBPF package's own name, nor `1` (which `cargo fuzz` sets): aya-build
    // would then ask for `-Z build-std`, and there is no rust-src here.
    // SAFETY: a build script is single-threaded until aya-build spawns cargo.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf,remote_vm_common") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../remote-vm-ebpf");
    let common = concat!(env!("CARGO_MANIFEST_DIR"), "/../remote-vm-common");
    println!("cargo:rerun-if-changed={common}");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "remote-vm-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

/// `remote_vm_build_info`'s `revision` (the checkout's commit, `unknown`
/// outside one) and `rustc` (the compiler's version).
fn build_info() {
    let run = |cmd: &str, args: &[&str]| -> Option<String> {
        let out = std::process::Command::new(cmd).args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let here = env!("CARGO_MANIFEST_DIR");
    let revision = run("git", &["-C", here, "rev-parse", "--short=12", "HEAD"])
        .map(|r| if run("git", &["-C", here, "status", "--porcelain", "--untracked-files=no"]).is_some() { format!("{r}-dirty") } else { r })
        .unwrap_or_else(|| "unknown".into());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = run(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=REMOTE_VM_REVISION={revision}");
    println!("cargo:rustc-env=REMOTE_VM_RUSTC={version}");
    // A new commit or checkout changes the revision.
    if let Some(git) = run("git", &["-C", here, "rev-parse", "--git-dir"]) {
        let git = std::path::Path::new(here).join(git);
        println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", git.join("index").display());
    }
}
