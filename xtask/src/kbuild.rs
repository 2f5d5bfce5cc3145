//! `cargo xtask kernels --build --source VERSION --patch FILE…`: an A/B pair of
//! one's own, for kernel engineers iterating on the series (v2, v3, …). From
//! Debian's `linux-source-X.Y` of that version: the unpatched image from the
//! tree as shipped (built once per version and config, then reused), the
//! patched one from a copy of the same tree with the series applied in order,
//! both with the test config (`xtask/kernel-test.config`, the fragment the
//! shared images were built with, over `tinyconfig`), so only the series
//! differs. A FILE is a plain `-p1` diff, `git format-patch` output or an mbox
//! as the list posts it: `git mailsplit` splits it, `git mailinfo` decodes each
//! mail's transfer encoding and charset, a mail with no diff (the cover letter)
//! is left out. The pair is named `vN` after the series' `[PATCH vN …]`
//! subjects unless `--name` says otherwise. Cached under
//! `target/kernels/built/NAME/`; `vm-test` and `ab` take them as `--kernel
//! NAME-patched --kernel NAME-unpatched`.
use remote_vm_common::series::Expectation;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{apt::Apt, say, sh, vm};

/// Where built pairs are kept.
const BUILT: &str = "target/kernels/built";
/// The config fragment (a copy of ../shared/kernels/vm.config).
const CONFIG: &str = "xtask/kernel-test.config";
/// What building a kernel needs beyond the compiler.
const BUILD_PACKAGES: &[&str] =
    &["make", "gcc", "libc6-dev", "dwarves", "bc", "flex", "bison", "libelf-dev", "libssl-dev", "cpio", "xz-utils", "patch", "git"];

pub struct Args {
    pub source: String,
    /// The series' files, in order.
    pub patches: Vec<PathBuf>,
    pub name: Option<String>,
}

/// One patch of the series: its subject where it was mailed, its diff.
#[derive(Debug)]
pub struct Patch {
    pub subject: Option<String>,
    pub diff: Vec<u8>,
    /// Where it came from (file, and mail number in it).
    pub from: String,
}

/// The series in `files`, in order, decoded (see the module's comment);
/// `work` holds the split mails.
pub fn series(files: &[PathBuf], work: &Path) -> Result<Vec<Patch>> {
    let mut out = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read(file).with_context(|| format!("--patch {}", file.display()))?;
        let headers = text.split(|b| *b == b'\n').take_while(|l| !l.is_empty() && *l != b"\r").collect::<Vec<_>>();
        let mailed = text.starts_with(b"From ") || headers.iter().any(|l| l.starts_with(b"Subject:"));
        if !mailed {
            out.push(Patch { subject: None, diff: text, from: file.display().to_string() });
            continue;
        }
        let dir = work.join(format!("mail-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mails: Vec<PathBuf> = if text.starts_with(b"From ") {
            let split = Command::new("git").arg("mailsplit").arg(format!("-o{}", dir.display())).arg(file).output()?;
            ensure!(split.status.success(), "git mailsplit {}: {}", file.display(), String::from_utf8_lossy(&split.stderr).trim());
            let mut m: Vec<PathBuf> = std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).collect();
            m.sort();
            m
        } else {
            vec![file.clone()]
        };
        for (n, mail) in mails.iter().enumerate() {
            let (msg, diff) = (dir.join(format!("{n}.msg")), dir.join(format!("{n}.diff")));
            // -k: the subject as posted, `[PATCH v2 1/3]` kept.
            let info = Command::new("git")
                .args(["mailinfo", "-k"])
                .arg(&msg)
                .arg(&diff)
                .stdin(std::fs::File::open(mail)?)
                .output()?;
            ensure!(info.status.success(), "git mailinfo {}: {}", mail.display(), String::from_utf8_lossy(&info.stderr).trim());
            let info = String::from_utf8_lossy(&info.stdout);
            let subject = info.lines().find_map(|l| l.strip_prefix("Subject: ")).map(str::to_string);
            let diff = std::fs::read(&diff)?;
            if diff.is_empty() {
                continue;
            }
            out.push(Patch { subject, diff, from: format!("{} mail {}", file.display(), n + 1) });
        }
    }
    ensure!(!out.is_empty(), "no diff in {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(out)
}

/// The series as one file: each patch's subject line, then its diff (what
/// `built_kernel` reads the version from).
fn series_text(patches: &[Patch]) -> Vec<u8> {
    let mut text = Vec::new();
    for p in patches {
        if let Some(s) = &p.subject {
            text.extend(format!("Subject: {s}\n").into_bytes());
        }
        text.extend(&p.diff);
    }
    text
}

/// The pair's name: `--name`, else `vN` from the subjects, else the first
/// file's name without extension.
fn pair_name(args: &Args, patches: &[Patch]) -> Result<String> {
    if let Some(n) = &args.name {
        return Ok(n.clone());
    }
    if let Some(v) = series_version(&String::from_utf8_lossy(&series_text(patches))) {
        return Ok(format!("v{v}"));
    }
    let first = args.patches.first().context("no --patch")?;
    Ok(first.file_stem().context("--patch has no file name")?.to_string_lossy().into_owned())
}

pub fn build(root: &Path, args: &Args) -> Result<Vec<vm::Kernel>> {
    let files = args
        .patches
        .iter()
        .map(|p| std::fs::canonicalize(p).with_context(|| format!("--patch {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    say!("kernels: build tools ({})", BUILD_PACKAGES.join(", "));
    Apt::system(root)?.install(BUILD_PACKAGES)?;
    let patches = series(&files, &root.join("target/kernel-build/mail"))?;
    let name = pair_name(args, &patches)?;
    ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "pair name {name:?}: letters, digits, '.', '_' and '-' only (--name)"
    );
    let series: String = {
        let mut parts = args.source.split('.');
        match (parts.next(), parts.next()) {
            (Some(a), Some(b)) if a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok() && parts.next().is_some_and(|c| c.parse::<u32>().is_ok()) => format!("{a}.{b}"),
            _ => bail!("--source {}: a kernel version such as 7.3.4", args.source),
        }
    };
    let work = root.join("target/kernel-build").join(&args.source);
    std::fs::create_dir_all(&work)?;
    let tree = work.join(format!("linux-source-{series}"));
    let version = source_tree(root, &work, &series, &args.source, &tree)?;
    // The patched tree: hard links of the pristine one (patch replaces the
    // files it changes instead of writing through the links).
    let patched_tree = work.join("patched");
    let _ = std::fs::remove_dir_all(&patched_tree);
    sh(Command::new("cp").arg("-al").arg(&tree).arg(&patched_tree))?;
    for (i, p) in patches.iter().enumerate() {
        let file = work.join(format!("patch-{i}.diff"));
        std::fs::write(&file, &p.diff)?;
        let what = p.subject.as_deref().unwrap_or(&p.from);
        let dry = Command::new("patch").args(["-p1", "-s", "--dry-run", "-i"]).arg(&file).current_dir(&patched_tree).output()?;
        if !dry.status.success() {
            bail!(
                "{what} ({}) does not apply to linux-source-{series} {version} after the {i} before it: {}",
                p.from,
                String::from_utf8_lossy(&dry.stdout).lines().chain(String::from_utf8_lossy(&dry.stderr).lines()).next().unwrap_or("patch failed")
            );
        }
        say!("kernels: applying {what}");
        sh(Command::new("patch").args(["-p1", "-s", "-i"]).arg(&file).current_dir(&patched_tree))?;
    }
    let out = root.join(BUILT).join(&name);
    std::fs::create_dir_all(&out)?;
    // The unpatched image depends on the source and the config only: built
    // once for both, then reused.
    let config_text = std::fs::read_to_string(root.join(CONFIG))?;
    let key = format!("linux-source-{series} {version}\n{config_text}");
    let reused = work.join("unpatched-image");
    if std::fs::read_to_string(reused.join("KEY")).ok().as_deref() == Some(key.as_str()) {
        say!("kernels: the unpatched image of linux-source-{series} {version} with this config is built already: reused");
    } else {
        let image = make_image(root, &tree, &work.join("build-unpatched"), "unpatched")?;
        let _ = std::fs::remove_dir_all(&reused);
        std::fs::create_dir_all(&reused)?;
        std::fs::copy(&image, reused.join("bzImage"))?;
        std::fs::copy(work.join("build-unpatched/.config"), reused.join("config"))?;
        std::fs::write(reused.join("KEY"), &key)?;
    }
    std::fs::copy(reused.join("bzImage"), out.join("bzImage-unpatched"))?;
    std::fs::copy(reused.join("config"), out.join("config-unpatched"))?;
    let image = make_image(root, &patched_tree, &work.join("build-patched"), "patched")?;
    std::fs::copy(&image, out.join("bzImage-patched"))?;
    std::fs::copy(work.join("build-patched/.config"), out.join("config-patched"))?;
    std::fs::write(out.join("series.patch"), series_text(&patches))?;
    let list = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" + ");
    std::fs::write(out.join("ORIGIN"), format!("Debian linux-source-{series} {version}, config {CONFIG} over tinyconfig; patched: + {list}\n"))?;
    say!("kernels: {name}-patched and {name}-unpatched in {} (vm-test and ab: --kernel {name}-patched --kernel {name}-unpatched)", out.display());
    Ok(["patched", "unpatched"].iter().filter_map(|w| built_kernel(root, &format!("{name}-{w}"))).collect())
}

/// Debian's `linux-source-SERIES` whose version starts with VERSION,
/// unpacked at `tree` (once); its package version.
fn source_tree(root: &Path, work: &Path, series: &str, wanted: &str, tree: &Path) -> Result<String> {
    let stamp = work.join("source-version");
    if tree.is_dir()
        && let Ok(v) = std::fs::read_to_string(&stamp)
    {
        return Ok(v.trim().to_string());
    }
    let package = format!("linux-source-{series}");
    let apt = Apt::private(root, crate::apt::ARCHIVE_SUITES)?;
    let version = apt
        .versions(&package)
        .into_iter()
        .find(|v| v.starts_with(&format!("{wanted}-")) || *v == wanted)
        .with_context(|| format!("no {package} of version {wanted} in {}", crate::apt::ARCHIVE_SUITES.join(", ")))?;
    say!("kernels: downloading {package} {version} (apt-get download)");
    let deb = apt.download(&package, Some(&version), work)?;
    let unpacked = work.join("deb");
    let _ = std::fs::remove_dir_all(&unpacked);
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let tarball = unpacked.join(format!("usr/src/{package}.tar.xz"));
    ensure!(tarball.is_file(), "no usr/src/{package}.tar.xz in {}", deb.display());
    let _ = std::fs::remove_dir_all(tree);
    say!("kernels: unpacking {}", tarball.display());
    sh(Command::new("tar").arg("-xJf").arg(&tarball).current_dir(work))?;
    ensure!(tree.is_dir(), "{} has no {}", tarball.display(), tree.display());
    let _ = std::fs::remove_dir_all(&unpacked);
    let _ = std::fs::remove_file(&deb);
    std::fs::write(&stamp, &version)?;
    Ok(version)
}

/// `tinyconfig`, the test config merged over it, `olddefconfig`, `bzImage`
/// in `out`; the make output goes to `out/make.log`.
fn make_image(root: &Path, tree: &Path, out: &Path, which: &str) -> Result<PathBuf> {
    // Never reuse objects of an earlier build: the hard-linked tree keeps the
    // tarball's mtimes, so a file an earlier patch changed and this one does
    // not would not be rebuilt.
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let log = out.join("make.log");
    let make = |args: &[&str]| -> Result<()> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let status = Command::new("make")
            .arg("-C")
            .arg(tree)
            .arg(format!("O={}", out.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()?;
        ensure!(status.success(), "make {} failed for the {which} image (log: {})", args.join(" "), log.display());
        Ok(())
    };
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    say!("kernels: building the {which} image (make -j{jobs}; log {})", log.display());
    let started = std::time::Instant::now();
    make(&["tinyconfig"])?;
    let fragment = root.join(CONFIG);
    sh(Command::new(tree.join("scripts/kconfig/merge_config.sh"))
        .arg("-m")
        .arg("-O")
        .arg(out)
        .arg(out.join(".config"))
        .arg(&fragment)
        .stdout(Stdio::null()))?;
    make(&["olddefconfig"])?;
    // Every `=y` of the fragment must survive olddefconfig (a dependency the
    // version lacks would silently drop one): BTF, kprobes, …
    let config = std::fs::read_to_string(out.join(".config"))?;
    let wanted = std::fs::read_to_string(&fragment)?;
    let lost: Vec<&str> = wanted
        .lines()
        .filter(|l| l.ends_with("=y"))
        .filter(|l| !config.lines().any(|c| c == *l))
        .map(|l| l.trim_end_matches("=y"))
        .collect();
    if !lost.is_empty() {
        say!("kernels: the {which} config lacks {} (not in this version or a dependency missing)", lost.join(", "));
    }
    ensure!(config.lines().any(|l| l == "CONFIG_DEBUG_INFO_BTF=y"), "the {which} config has no CONFIG_DEBUG_INFO_BTF (log: {})", log.display());
    make(&[&format!("-j{jobs}"), "bzImage"])?;
    say!("kernels: the {which} image built in {:.0} min", started.elapsed().as_secs_f64() / 60.0);
    Ok(out.join("arch/x86/boot/bzImage"))
}

/// A built kernel by name: `NAME-patched` or `NAME-unpatched` of a pair in
/// `target/kernels/built/NAME/`.
pub fn built_kernel(root: &Path, name: &str) -> Option<vm::Kernel> {
    let (pair, which) = name.rsplit_once('-')?;
    if which != "patched" && which != "unpatched" {
        return None;
    }
    let dir = root.join(BUILT).join(pair);
    let image = dir.join(format!("bzImage-{which}"));
    if !image.is_file() {
        return None;
    }
    let origin = std::fs::read_to_string(dir.join("ORIGIN")).unwrap_or_default();
    let origin = origin.trim();
    let origin = if which == "patched" { origin.to_string() } else { origin.split("; patched:").next().unwrap_or(origin).to_string() };
    // tinyconfig-based builds have no CALL_PADDING: the ftrace defect the
    // shared 7.3 pair has (see `vm::FTRACE_DEFECT_ISOLATE`).
    let config = std::fs::read_to_string(dir.join(format!("config-{which}"))).unwrap_or_default();
    let isolate = if config.lines().any(|l| l == "CONFIG_CALL_PADDING=y") { Vec::new() } else { vm::FTRACE_DEFECT_ISOLATE.to_vec() };
    let expect = if which == "patched" {
        let patch = std::fs::read_to_string(dir.join("series.patch")).unwrap_or_default();
        match series_version(&patch) {
            Some(1) => Expectation::PatchedV1,
            Some(2) => Expectation::PatchedV2,
            // A version the workloads' ground truth does not model yet.
            _ => Expectation::Unknown,
        }
    } else {
        Expectation::Unpatched
    }
    .word()
    .to_string();
    Some(vm::Kernel {
        name: name.to_string(),
        image,
        expect,
        origin,
        params: String::new(),
        isolate,
        only: None,
    })
}

/// The series version a patch says it is, as mailed: `[PATCH vN …]` in its
/// subjects is vN, `[PATCH …]` with no version is v1 (git format-patch's
/// convention); several versions, or no subject, say nothing.
pub fn series_version(patch: &str) -> Option<u32> {
    let mut found = None;
    for subject in patch.lines().filter_map(|l| l.strip_prefix("Subject:")) {
        let Some(tag) = subject.split('[').nth(1).and_then(|t| t.split(']').next()) else { continue };
        let words: Vec<&str> = tag.split_whitespace().collect();
        if !words.contains(&"PATCH") {
            continue;
        }
        let v = words.iter().find_map(|w| w.strip_prefix('v').and_then(|n| n.parse::<u32>().ok())).unwrap_or(1);
        if found.is_some_and(|f| f != v) {
            return None;
        }
        found = Some(v);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_kernels_are_found_by_name() {
        let root = std::env::temp_dir().join(format!("rvm-kbuild-{}", std::process::id()));
        let dir = root.join(BUILT).join("v2-rc1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bzImage-patched"), b"").unwrap();
        std::fs::write(dir.join("config-patched"), "CONFIG_CALL_PADDING=y\n").unwrap();
        std::fs::write(dir.join("bzImage-unpatched"), b"").unwrap();
        std::fs::write(dir.join("ORIGIN"), "Debian linux-source-7.3 7.3.4-1, config X over tinyconfig; patched: + /p/v2.patch\n").unwrap();
        let p = built_kernel(&root, "v2-rc1-patched").unwrap();
        // No mailed subject in the patch: the version is not known.
        assert_eq!((p.expect.as_str(), p.isolate.len()), ("unknown", 0));
        std::fs::write(dir.join("series.patch"), "Subject: [PATCH v2 3/3] mm: __access_remote_vm with per-VMA lock\n").unwrap();
        assert_eq!(built_kernel(&root, "v2-rc1-patched").unwrap().expect, "patched-v2");
        assert!(p.origin.ends_with("patched: + /p/v2.patch"), "{}", p.origin);
        let u = built_kernel(&root, "v2-rc1-unpatched").unwrap();
        assert_eq!((u.expect.as_str(), u.isolate.len()), ("unpatched", vm::FTRACE_DEFECT_ISOLATE.len()));
        assert_eq!(u.origin, "Debian linux-source-7.3 7.3.4-1, config X over tinyconfig");
        assert!(built_kernel(&root, "v2-rc1-other").is_none());
        assert!(built_kernel(&root, "v3-patched").is_none());
        assert!(built_kernel(&root, "patched").is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// An mbox as the list sends it (a cover letter, then a quoted-printable
    /// patch), then a plain diff: decoded, in order, applied with patch -p1.
    #[test]
    fn a_mailed_series_is_split_decoded_and_applied_in_order() {
        let dir = std::env::temp_dir().join(format!("rvm-series-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/mm")).unwrap();
        std::fs::write(dir.join("tree/mm/memory.c"), "int a;\nint b;\n").unwrap();
        // Context lines begin with a space: one string per line.
        let mbox = [
            "From nobody Mon Sep 17 00:00:00 2001",
            "From: Dev <dev@example.org>",
            "Subject: [PATCH v2 0/1] mm: __access_remote_vm with per-VMA lock",
            "",
            "The cover letter.",
            "",
            "From nobody Mon Sep 17 00:00:00 2001",
            "From: Dev <dev@example.org>",
            "Subject: [PATCH v2 1/1] mm: set b",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=UTF-8",
            "Content-Transfer-Encoding: quoted-printable",
            "",
            "Sets b.",
            "---",
            "diff --git a/mm/memory.c b/mm/memory.c",
            "--- a/mm/memory.c",
            "+++ b/mm/memory.c",
            "@@ -1,2 +1,2 @@",
            " int a;",
            "-int b;",
            "+int b =3D 1;",
            "--=20",
            "2.47.0",
            "",
        ]
        .map(|l| format!("{l}\n"))
        .concat();
        std::fs::write(dir.join("series.mbox"), mbox).unwrap();
        let plain = "--- a/mm/memory.c\n+++ b/mm/memory.c\n@@ -1,2 +1,2 @@\n-int a;\n+int a = 2;\n int b = 1;\n";
        std::fs::write(dir.join("fixup.diff"), plain).unwrap();
        let files = [dir.join("series.mbox"), dir.join("fixup.diff")];
        let patches = series(&files, &dir.join("work")).unwrap();
        assert_eq!(patches.len(), 2, "{patches:?}");
        assert_eq!(patches[0].subject.as_deref(), Some("[PATCH v2 1/1] mm: set b"));
        assert!(String::from_utf8_lossy(&patches[0].diff).contains("+int b = 1;"), "{}", String::from_utf8_lossy(&patches[0].diff));
        assert_eq!((patches[1].subject.as_deref(), patches[1].diff.as_slice()), (None, plain.as_bytes()));
        let args = Args { source: "7.3.4".into(), patches: files.to_vec(), name: None };
        assert_eq!(pair_name(&args, &patches).unwrap(), "v2");
        for (i, p) in patches.iter().enumerate() {
            let f = dir.join(format!("{i}.diff"));
            std::fs::write(&f, &p.diff).unwrap();
            let ok = Command::new("patch").args(["-p1", "-s", "-i"]).arg(&f).current_dir(dir.join("tree")).status().unwrap();
            assert!(ok.success());
        }
        assert_eq!(std::fs::read_to_string(dir.join("tree/mm/memory.c")).unwrap(), "int a = 2;\nint b = 1;\n");
        // What the built pair records says its version.
        assert_eq!(series_version(&String::from_utf8_lossy(&series_text(&patches))), Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_patch_says_its_series_version_in_its_subjects() {
        assert_eq!(series_version("Subject: [PATCH 1/3] mm: a\nSubject: [PATCH 2/3] mm: b\n"), Some(1));
        assert_eq!(series_version("Subject: [RFC PATCH v2 0/3] mm\n"), Some(2));
        assert_eq!(series_version("Subject: [PATCH v3] mm\n"), Some(3));
        assert_eq!(series_version("Subject: [PATCH v2 1/3] a\nSubject: [PATCH v3 2/3] b\n"), None);
        assert_eq!(series_version("Subject: Re: the thread [not a patch]\n"), None);
        assert_eq!(series_version("diff --git a/mm/memory.c b/mm/memory.c\n"), None);
    }
}
