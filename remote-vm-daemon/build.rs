//! Builds the eBPF object (`remote-vm-ebpf`) with Debian's rustc-web toolchain and
//! leaves it in OUT_DIR for `include_bytes_aligned!`.
use std::env;

fn main() -> anyhow::Result<()> {
    // The rustup name given to Debian's /usr toolchain by `cargo xtask setup`
    // (`rustup toolchain link debian-rustc-web /usr`). Without rustup on PATH,
    // aya-build uses the `cargo` on PATH instead.
    println!("cargo:rerun-if-env-changed=REMOTE_VM_EBPF_TOOLCHAIN");
    let toolchain =
        env::var("REMOTE_VM_EBPF_TOOLCHAIN").unwrap_or_else(|_| "debian-rustc-web".to_string());
    // aya-ebpf and remote-vm-common (its atomic add, `stats::bump`) need
    // `asm_experimental_arch` on BPF: unstable features for those crates only
    // (Debian's stable rustc-web builds the eBPF object, see README). Not the
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
