//! `cargo xtask btf-testdata`: the BTF files the daemon's unit tests read
//! (remote-vm-daemon/testdata/btf/), each a real kernel's BTF cut down to the
//! types the daemon reads (`examples/btf_minimize.rs`, which refuses a cut that
//! gives another layout than the whole). From the shared 6.12 and 7.3 images
//! (the same types patched or not) and Debian's 6.1 (`FOLL_*` are `#define`s,
//! no lockless-path functions). `--check` (in `cargo xtask test`) makes them
//! again and fails if a committed file differs.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{cargo, kernels, say, sh, vm};

pub const DIR: &str = "remote-vm-daemon/testdata/btf";
/// The most a test file may take.
pub const MAX_BYTES: usize = 256 << 10;

/// (file name, image) of each source; a shared image that is not there is
/// left out with one line.
fn sources(root: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut out = Vec::new();
    for (file, name, pair) in [
        ("shared-6.12.btf", "patched", vm::shared_kernels(root)),
        ("shared-7.3.btf", "patched-7.3", vm::shared_kernels_7_3(root)),
    ] {
        match pair.into_iter().find(|k| k.name == name) {
            Some(k) => out.push((file, k.image)),
            None => say!("btf-testdata: {file}: kernel {name} not there (../shared), the committed file not checked"),
        }
    }
    let debian = kernels::debian_kernel_named(root, "debian-6.1")?.context("xtask/kernels.toml has no debian-6.1")?;
    out.push(("debian-6.1.btf", debian.image));
    Ok(out)
}

pub fn run(root: &Path, check: bool) -> Result<()> {
    sh(cargo(root).args(["build", "--release", "-p", "remote-vm-daemon", "--example", "btf_minimize"]))?;
    let minimize = root.join("target/release/examples/btf_minimize");
    let work = root.join("target/btf-testdata");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(root.join(DIR))?;
    let mut stale = Vec::new();
    for (file, image) in sources(root)? {
        let whole = work.join(format!("{file}.whole"));
        std::fs::write(&whole, vmlinux_btf(&image).with_context(|| format!("{}", image.display()))?)?;
        let small = work.join(file);
        sh(Command::new(&minimize).arg(&whole).arg(&small))?;
        let bytes = std::fs::read(&small)?;
        ensure!(bytes.len() <= MAX_BYTES, "{file}: {} bytes, more than {MAX_BYTES}", bytes.len());
        let committed = root.join(DIR).join(file);
        if check {
            if std::fs::read(&committed).ok().as_deref() != Some(bytes.as_slice()) {
                stale.push(file);
            }
        } else {
            std::fs::write(&committed, &bytes)?;
        }
        say!(
            "btf-testdata: {file}: {} bytes from {} ({} bytes of BTF){}",
            bytes.len(),
            image.display(),
            std::fs::metadata(&whole)?.len(),
            if check { "" } else { ", written" }
        );
    }
    if !stale.is_empty() {
        bail!("{} differ from what the kernels give: run cargo xtask btf-testdata and commit them", stale.join(", "));
    }
    Ok(())
}

/// The `.BTF` section of a kernel: an ELF vmlinux, or a bzImage whose payload
/// (xz, lz4, gzip or zstd, as the kernel's build appends them: a 4-byte size
/// after all but gzip) unpacks to one.
pub fn vmlinux_btf(image: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(image)?;
    let elf = if data.starts_with(b"\x7fELF") { data } else { unpack_bzimage(&data)? };
    elf_section(&elf, ".BTF")
}

fn unpack_bzimage(data: &[u8]) -> Result<Vec<u8>> {
    ensure!(data.len() > 0x250 && &data[0x202..0x206] == b"HdrS", "neither an ELF vmlinux nor a bzImage");
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + u32_at(0x248);
    let payload = data.get(start..start + u32_at(0x24c)).context("the bzImage's payload runs past its end")?;
    let (tool, trailer): (&[&str], usize) = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => (&["xz", "-dc"], 4),
        [0x02, 0x21, 0x4c, 0x18, ..] => (&["lz4", "-dc"], 4),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => (&["zstd", "-dc"], 4),
        [0x1f, 0x8b, ..] => (&["gzip", "-dc"], 0),
        _ => bail!("the bzImage's payload is compressed in a way this does not know (starts {:02x?})", &payload[..8.min(payload.len())]),
    };
    let body = &payload[..payload.len().saturating_sub(trailer)];
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} (Debian: xz-utils, lz4, zstd, gzip)", tool[0]))?;
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    let written = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))?;
    // The decompressor's own complaint first (a write then fails with EPIPE).
    ensure!(out.status.success(), "{} -dc: {}", tool[0], String::from_utf8_lossy(&out.stderr).trim());
    written?;
    Ok(out.stdout)
}

/// The bytes of section `name` of a 64-bit little-endian ELF file.
fn elf_section(elf: &[u8], name: &str) -> Result<Vec<u8>> {
    ensure!(elf.len() > 64 && elf.starts_with(b"\x7fELF") && elf[4] == 2 && elf[5] == 1, "not a 64-bit little-endian ELF");
    let u16_at = |at: usize| -> Result<usize> {
        Ok(u16::from_le_bytes(elf.get(at..at + 2).context("truncated ELF")?.try_into().unwrap()) as usize)
    };
    let u64_at = |at: usize| -> Result<usize> {
        Ok(u64::from_le_bytes(elf.get(at..at + 8).context("truncated ELF")?.try_into().unwrap()) as usize)
    };
    let u32_at = |at: usize| -> Result<usize> {
        Ok(u32::from_le_bytes(elf.get(at..at + 4).context("truncated ELF")?.try_into().unwrap()) as usize)
    };
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18)?;
    for i in 0..shnum {
        let h = header(i);
        let at = names + u32_at(h)?;
        let this = elf.get(at..).and_then(|s| s.split(|b| *b == 0).next()).context("truncated ELF")?;
        if this == name.as_bytes() {
            let (off, size) = (u64_at(h + 0x18)?, u64_at(h + 0x20)?);
            return Ok(elf.get(off..off + size).context("truncated ELF")?.to_vec());
        }
    }
    bail!("no {name} section (a kernel built without CONFIG_DEBUG_INFO_BTF)")
}
