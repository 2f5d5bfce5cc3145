//! apt for set-up and kernel downloads: the machine's own sources, or a
//! private sources list (under `target/apt/`, never the machine's) of suites
//! the machine may lack — newer ones (trixie, trixie-backports, sid), a
//! backports suite, the security suite kernels come from. The archive and
//! security archive addresses are the machine's own (`Sources::of_machine`):
//! none is written in the project. apt's output goes to a log file; the caller
//! prints one line per step. An install is simulated first and refused when apt
//! would remove a package the machine has.
use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The suites of the private sources list test kernels, `linux-source` and
/// the newer query engines come from: bookworm's cloud kernels are in
/// bookworm-security (which keeps only the latest ABI) or a point release,
/// newer ones in trixie-backports, the engines in sid.
pub const ARCHIVE_SUITES: &[&str] = &["bookworm", "bookworm-security", "trixie", "trixie-backports", "sid"];
/// Debian's release names apt suites are made of (`CODENAME[-POCKET]`).
const DEBIAN_CODENAMES: &[&str] = &[
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid", "oldoldstable", "oldstable", "stable", "testing",
    "unstable", "experimental",
];
/// The keyring of Debian's archive, where no source names one.
const KEYRINGS: &[&str] = &["/usr/share/keyrings/debian-archive-keyring.pgp", "/usr/share/keyrings/debian-archive-keyring.gpg"];

/// Where the machine's apt gets Debian from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// The Debian archive (`http://deb.debian.org/debian`, a local mirror…).
    pub debian: String,
    /// The security archive, if the machine uses one.
    pub security: Option<String>,
    /// The machine's Debian suites (`bookworm`, `bookworm-updates`,
    /// `bookworm-security`), in the order its sources name them.
    pub suites: Vec<String>,
    /// The keyring its Debian entry names, if any.
    pub signed_by: Option<String>,
}

/// One `deb` entry of a sources file: address, suites, `signed-by`.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

impl Sources {
    /// The machine's: `/etc/apt/sources.list`, `sources.list.d/*.list`
    /// (one-line format) and `*.sources` (deb822).
    pub fn of_machine() -> Result<Sources> {
        let mut entries = Vec::new();
        if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
            entries.extend(one_line_entries(&text));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            match f.extension().and_then(|e| e.to_str()) {
                Some("list") => entries.extend(one_line_entries(&text)),
                Some("sources") => entries.extend(deb822_entries(&text)),
                _ => {}
            }
        }
        pick(entries).context("the machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) name no Debian archive")
    }

    /// The line of a private list for `suite`: from the security archive for
    /// `*-security`, else from the Debian archive.
    fn line(&self, suite: &str) -> Result<String> {
        let uri = if suite.ends_with("-security") {
            self.security.as_deref().with_context(|| format!("{suite}: the machine's apt sources name no security archive"))?
        } else {
            &self.debian
        };
        let keyring = self
            .signed_by
            .clone()
            .or_else(|| keyring_in(Path::new("/")).map(str::to_string))
            .context("no Debian archive keyring (install debian-archive-keyring)")?;
        Ok(format!("deb [signed-by={keyring}] {uri} {suite} main\n"))
    }
}

/// The Debian archive keyring installed under `root` (its absolute path there).
pub fn keyring_in(root: &Path) -> Option<&'static str> {
    KEYRINGS.iter().copied().find(|k| root.join(k.trim_start_matches('/')).is_file())
}

/// The package cache of the roots the tests debootstrap, shared by every root
/// and run (the machine's own apt archive cache is emptied after every install
/// by an image's `docker-clean`).
pub fn package_cache() -> Result<PathBuf> {
    let dir = Path::new(crate::util::MACHINE_CACHE).join("archives");
    std::fs::create_dir_all(dir.join("partial"))?;
    Ok(dir)
}

/// A minimal root of `suite` at `base` (`--variant=minbase` with `include`)
/// from the machine's Debian archive through the package cache, with the
/// machine's resolv.conf and its settings for reaching the archive; the
/// settings files copied.
pub fn debootstrap(base: &Path, suite: &str, include: &str) -> Result<Vec<String>> {
    let mirror = Sources::of_machine()?.debian;
    crate::util::sh(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={include}"), &format!("--cache-dir={}", package_cache()?.display()), suite])
            .arg(base)
            .arg(&mirror),
    )
    .context("debootstrap")?;
    std::fs::copy("/etc/resolv.conf", base.join("etc/resolv.conf")).context("copy /etc/resolv.conf")?;
    archive_access_conf(base)
}

/// The machine's apt settings for reaching its archive (`Acquire::Check-Valid-Until`,
/// `Acquire::Check-Date`: a snapshot mirror whose sid Release file has
/// expired), copied into `tree` as the machine kind's image has them; the files.
fn archive_access_conf(tree: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for e in std::fs::read_dir("/etc/apt/apt.conf.d").into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if text.contains("Acquire::Check-Valid-Until") || text.contains("Acquire::Check-Date") {
            std::fs::copy(e.path(), tree.join("etc/apt/apt.conf.d").join(e.file_name()))?;
            copied.push(e.file_name().to_string_lossy().to_string());
        }
    }
    Ok(copied)
}

/// `CODENAME[-POCKET]` of Debian's, e.g. `bookworm-security`.
pub fn is_debian_suite(suite: &str) -> bool {
    let base = suite.split('-').next().unwrap_or("");
    DEBIAN_CODENAMES.contains(&base)
        && suite[base.len()..].strip_prefix('-').is_none_or(|p| ["updates", "security", "backports", "proposed-updates", "backports-sloppy"].contains(&p))
}

/// The `deb` lines of a one-line sources file.
fn one_line_entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) else { continue };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((o, rest)) => (o, rest),
                None => continue,
            },
            None => ("", rest),
        };
        let signed_by = options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_string);
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        out.push(Entry { uri: uri.trim_end_matches('/').to_string(), suites: vec![suite.to_string()], signed_by });
    }
    out
}

/// The stanzas of a deb822 sources file with `Types: deb`, enabled.
fn deb822_entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A continuation line (a multi-line Signed-By key block).
                if let Some(last) = fields.last_mut() {
                    last.1.push('\n');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        if !get("types").unwrap_or("").split_whitespace().any(|t| t == "deb") || get("enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let suites: Vec<String> = get("suites").unwrap_or("").split_whitespace().map(str::to_string).collect();
        // A keyring file, not an inline key.
        let signed_by = get("signed-by").filter(|k| k.starts_with('/') && !k.contains('\n')).map(str::to_string);
        for uri in get("uris").unwrap_or("").split_whitespace() {
            out.push(Entry { uri: uri.trim_end_matches('/').to_string(), suites: suites.clone(), signed_by: signed_by.clone() });
        }
    }
    out
}

/// The Debian archive: the first entry with a Debian suite that is not a
/// security one (third-party entries have suites of their own); the security
/// archive: the first with a `*-security` suite.
fn pick(entries: Vec<Entry>) -> Option<Sources> {
    let debian = entries.iter().find(|e| e.suites.iter().any(|s| is_debian_suite(s) && !s.ends_with("-security")))?;
    let security = entries.iter().find(|e| e.suites.iter().any(|s| is_debian_suite(s) && s.ends_with("-security")));
    let mut suites = Vec::new();
    for e in &entries {
        if e.uri == debian.uri || Some(&e.uri) == security.map(|s| &s.uri) {
            for s in e.suites.iter().filter(|s| is_debian_suite(s)) {
                if !suites.contains(s) {
                    suites.push(s.clone());
                }
            }
        }
    }
    Some(Sources {
        debian: debian.uri.clone(),
        security: security.map(|e| e.uri.clone()),
        suites,
        signed_by: debian.signed_by.clone(),
    })
}

pub struct Apt {
    /// `-o` options that point apt at the private list (none: the machine's).
    options: Vec<String>,
    log: PathBuf,
}

impl Apt {
    /// The machine's own sources.
    pub fn system(root: &Path) -> Result<Apt> {
        let dir = root.join("target");
        std::fs::create_dir_all(&dir)?;
        Ok(Apt {
            options: Vec::new(),
            log: dir.join("apt.log"),
        })
    }

    /// A private sources list of `suites` in `target/apt/SUITES/` (lists and
    /// cache there too), from the machine's own archives, updated when older
    /// than a day.
    pub fn private(root: &Path, suites: &[&str]) -> Result<Apt> {
        let sources = Sources::of_machine()?;
        let dir = root.join("target/apt").join(suites.join("+"));
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let list = dir.join("sources.list");
        let text: String = suites.iter().map(|s| sources.line(s)).collect::<Result<_>>()?;
        let changed = std::fs::read_to_string(&list).ok().as_deref() != Some(text.as_str());
        std::fs::write(&list, &text)?;
        let apt = Apt {
            options: vec![
                format!("Dir::Etc::sourcelist={}", list.display()),
                "Dir::Etc::sourceparts=/nonexistent".into(),
                format!("Dir::State::Lists={}", dir.join("lists").display()),
                format!("Dir::Cache={}", dir.join("cache").display()),
            ],
            log: dir.join("apt.log"),
        };
        let stamp = dir.join("lists/updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() < 86400);
        if changed || !fresh {
            crate::util::say!("apt: updating the private package lists ({}; log {})", suites.join(", "), apt.log.display());
            apt.get(&["update"], None)?;
            std::fs::write(&stamp, "")?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.args(["-o", o]);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// `apt-get ARGS` (in `cwd`), its output appended to the log.
    pub fn get(&self, args: &[&str], cwd: Option<&Path>) -> Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "-y"]).args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let status = cmd.status().context("run apt-get")?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let last = text.lines().rev().find(|l| l.starts_with("E: ")).unwrap_or("no error line");
            bail!("apt-get {} failed ({status}): {last} (log: {})", args.join(" "), self.log.display());
        }
        Ok(())
    }

    /// `apt-cache ARGS`' output.
    pub fn cache(&self, args: &[&str]) -> Result<String> {
        let out = self.command("apt-cache").args(args).output().context("run apt-cache")?;
        if !out.status.success() {
            bail!("apt-cache {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The versions of `package` the lists offer (`apt-cache madison`), none
    /// when apt knows no such package.
    pub fn versions(&self, package: &str) -> Vec<String> {
        self.cache(&["madison", package])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
            .collect()
    }

    /// Installs `packages` (no recommends) unless apt would remove a package
    /// the machine has: then nothing is installed and the error names them.
    pub fn install(&self, packages: &[&str]) -> Result<()> {
        self.install_with(&[], packages)
    }

    /// `package` at `version` from `suite` (`-t`, in a call of its own so the
    /// target release applies to it and what it needs alone), as `install`.
    pub fn install_from(&self, suite: &str, package: &str, version: &str) -> Result<()> {
        self.install_with(&["-t", suite], &[&format!("{package}={version}")])
    }

    fn install_with(&self, options: &[&str], packages: &[&str]) -> Result<()> {
        let out = self
            .command("apt-get")
            .args(["install", "-s", "-y", "-q", "--no-install-recommends"])
            .args(options)
            .args(packages)
            .output()
            .context("run apt-get install -s")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "apt-get install {} would fail: {}",
                packages.join(" "),
                String::from_utf8_lossy(&out.stderr).lines().find(|l| l.starts_with("E: ")).unwrap_or("see apt-get")
            );
        }
        let removed = removals(&text);
        if !removed.is_empty() {
            bail!(
                "installing {} would remove {} from this machine: nothing installed; install a compatible version yourself (apt-get install -s shows the plan)",
                packages.join(" "),
                removed.join(", ")
            );
        }
        let mut args = vec!["install", "--no-install-recommends"];
        args.extend(options);
        args.extend(packages);
        self.get(&args, None)
    }

    /// Downloads `package` (of `version` if given) into `dir`; returns the .deb.
    pub fn download(&self, package: &str, version: Option<&str>, dir: &Path) -> Result<PathBuf> {
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_string(),
        };
        self.download_spec(package, &spec, dir)
    }

    /// Downloads `package` as `suite` has it into `dir`; returns the .deb.
    pub fn download_from(&self, package: &str, suite: &str, dir: &Path) -> Result<PathBuf> {
        self.download_spec(package, &format!("{package}/{suite}"), dir)
    }

    fn download_spec(&self, package: &str, spec: &str, dir: &Path) -> Result<PathBuf> {
        self.get(&["download", spec], Some(dir))?;
        std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package} .deb in {}", dir.display()))
    }
}

/// The packages an `apt-get install -s` plan removes (`Remv NAME [VERSION]`).
fn removals(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debian_archive_is_found_among_third_party_ones() {
        // This machine kind's image: deb822 with a snapshot comment, a
        // third-party one-line list whose suite contains a Debian codename.
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\n\
                      Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\
                      Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                      Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n";
        let third = "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n";
        let mut entries = one_line_entries(third);
        entries.extend(deb822_entries(deb822));
        let s = pick(entries).unwrap();
        assert_eq!(s.debian, "http://deb.debian.org/debian");
        assert_eq!(s.security.as_deref(), Some("http://deb.debian.org/debian-security"));
        assert_eq!(s.suites, ["bookworm", "bookworm-updates", "bookworm-security"]);
        assert_eq!(s.signed_by.as_deref(), Some("/usr/share/keyrings/debian-archive-keyring.gpg"));
        assert_eq!(s.line("bookworm-backports").unwrap(), "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main\n");
        assert_eq!(s.line("bookworm-security").unwrap(), "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main\n");
    }

    #[test]
    fn one_line_sources_with_options_and_a_local_mirror() {
        let text = "# comment\ndeb-src http://ftp.example.org/debian trixie main\n\
                    deb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] http://ftp.example.org/debian/ trixie main contrib\n\
                    deb http://security.example.org/debian-security trixie-security main # old\n\
                    deb http://apt.example.com/ stable-extras main\n";
        let s = pick(one_line_entries(text)).unwrap();
        assert_eq!(s.debian, "http://ftp.example.org/debian");
        assert_eq!(s.security.as_deref(), Some("http://security.example.org/debian-security"));
        assert_eq!(s.suites, ["trixie", "trixie-security"]);
        assert_eq!(s.signed_by.as_deref(), Some("/etc/apt/keyrings/x.gpg"));
        // sid: no security archive; a disabled stanza is not read.
        let sid = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: sid\nComponents: main\n\n\
                   Enabled: no\nTypes: deb\nURIs: http://other/debian-security\nSuites: trixie-security\n";
        let s = pick(deb822_entries(sid)).unwrap();
        assert_eq!((s.debian.as_str(), s.security.as_deref()), ("http://deb.debian.org/debian", None));
        assert!(s.line("bookworm-security").is_err());
        assert!(pick(one_line_entries("deb http://apt.example.com/ stable-extras main\n")).is_none());
        assert!(!is_debian_suite("cloud-sdk-bookworm") && !is_debian_suite("nodistro") && is_debian_suite("trixie-backports"));
    }

    #[test]
    fn a_plan_that_removes_packages_is_seen() {
        // What bookworm's qemu-system-x86 did to a newer qemu-utils.
        let plan = "Reading package lists...\nThe following packages will be REMOVED:\n  qemu-utils\n\
                    Remv qemu-utils [1:9.2.0+ds-1]\nInst qemu-system-x86 (1:7.2+dfsg-7 Debian:12/stable [amd64])\n\
                    Conf qemu-system-x86 (1:7.2+dfsg-7 Debian:12/stable [amd64])\n";
        assert_eq!(removals(plan), vec!["qemu-utils".to_string()]);
        assert!(removals("Inst wrk (4.1.0-3 Debian:12/stable [amd64])\nConf wrk\n").is_empty());
    }
}
