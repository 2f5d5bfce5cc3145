//! Facts about the running kernel: release, BTF, and the config options the
//! lockless remote-read path depends on.
use std::{
    fmt,
    io::Read,
    path::{Path, PathBuf},
};

/// A kernel config option as far as we can tell: `yes`, `no`, or `unknown` when no
/// config could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tristate {
    Yes,
    No,
    Unknown,
}

impl Tristate {
    pub fn as_str(self) -> &'static str {
        match self {
            Tristate::Yes => "yes",
            Tristate::No => "no",
            Tristate::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Tristate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the BTF the daemon uses came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BtfSource {
    /// `/sys/kernel/btf/vmlinux`.
    Kernel,
    /// A file given with `--btf`.
    File(PathBuf),
    /// None available.
    Missing,
}

impl fmt::Display for BtfSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BtfSource::Kernel => f.write_str("/sys/kernel/btf/vmlinux"),
            BtfSource::File(p) => write!(f, "{}", p.display()),
            BtfSource::Missing => f.write_str("missing"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub release: String,
    pub btf: BtfSource,
    /// What `per_vma_lock` and `rcu_table_free` were decided from: the
    /// kernel's own functions (`functions in BTF`, `functions in
    /// /proc/kallsyms`), else the config file, if any.
    pub config_source: Option<PathBuf>,
    pub per_vma_lock: Tristate,
    pub rcu_table_free: Tristate,
    /// The kernel config read (`/proc/config.gz`, `/boot/config-…`) and what
    /// it says of the two options: a hint where the functions decide.
    pub config_hint: Option<(PathBuf, Tristate, Tristate)>,
    /// Where the config and the kernel's functions disagree (the kernel
    /// decides; `check` warns): a config symbol renamed or removed (the mm
    /// tree's "make per-VMA locks available universally" deletes
    /// CONFIG_PER_VMA_LOCK), or a config file of another build.
    pub contradictions: Vec<String>,
    /// The preemption model: whether trampoline programs can be skipped.
    pub preempt: super::preempt::Preempt,
}

/// Facts of a kernel that has everything, for tests.
#[cfg(test)]
pub fn for_tests() -> KernelFacts {
    KernelFacts {
        release: "6.12.117".to_string(),
        btf: BtfSource::Kernel,
        config_source: Some(PathBuf::from("/proc/config.gz")),
        per_vma_lock: Tristate::Yes,
        rcu_table_free: Tristate::Yes,
        config_hint: None,
        contradictions: Vec::new(),
        preempt: super::preempt::Preempt { model: super::preempt::Model::None, source: "/proc/config.gz".into() },
    }
}

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";

impl KernelFacts {
    /// The options come from which functions the running kernel has, where
    /// it can tell (BTF, or a readable /proc/kallsyms): per-VMA locks are
    /// there when `lock_vma_under_rcu` is, MMU_GATHER_RCU_TABLE_FREE when
    /// `tlb_remove_table_sync_one` is. A config read beside them is a hint; a
    /// contradiction is kept for `check`. Without functions, the config decides.
    pub fn fill_from_layout(&mut self, layout: &super::Layout) {
        if !layout.functions_known {
            return;
        }
        let yes_no = |b: bool| if b { Tristate::Yes } else { Tristate::No };
        self.per_vma_lock = yes_no(layout.has_lock_vma_under_rcu);
        self.rcu_table_free = yes_no(layout.has_rcu_table_free);
        let source = if layout.from_btf { "functions in BTF" } else { "functions in /proc/kallsyms" };
        self.config_source = Some(PathBuf::from(source));
        self.contradictions.clear();
        if let Some((path, per_vma_lock, rcu_table_free)) = &self.config_hint {
            for (option, said, fact, function) in [
                ("CONFIG_PER_VMA_LOCK", *per_vma_lock, self.per_vma_lock, "lock_vma_under_rcu"),
                ("CONFIG_MMU_GATHER_RCU_TABLE_FREE", *rcu_table_free, self.rcu_table_free, "tlb_remove_table_sync_one"),
            ] {
                if said != fact {
                    let (config, kernel) = match fact {
                        Tristate::Yes => ("is not set", "has"),
                        _ => ("is set", "does not have"),
                    };
                    self.contradictions.push(format!(
                        "{option} {config} in {}, but the kernel {kernel} {function}() ({source}): {}={fact} from the kernel",
                        path.display(),
                        if option == "CONFIG_PER_VMA_LOCK" { "per_vma_lock" } else { "rcu_table_free" },
                    ));
                }
            }
        }
        // The functions as the kernel has them, against the classifier's assumptions.
        self.contradictions.extend(layout.assumptions.iter().cloned());
    }

    /// Reads the facts of the running kernel. `btf_override` is the `--btf` path.
    pub fn read(btf_override: Option<&Path>) -> KernelFacts {
        let release = read_release();
        let btf = match btf_override {
            Some(p) => BtfSource::File(p.to_path_buf()),
            None if Path::new(SYS_BTF).exists() => BtfSource::Kernel,
            None => BtfSource::Missing,
        };
        let candidates = [
            PathBuf::from("/proc/config.gz"),
            PathBuf::from(format!("/boot/config-{release}")),
        ];
        let config = candidates
            .iter()
            .find_map(|p| read_config(p).map(|text| (p.clone(), text)));
        let preempt = super::preempt::read(config.as_ref().map(|(p, text)| (text.as_str(), p.to_str().unwrap_or("the kernel config"))));
        let config_hint = config.map(|(path, text)| {
            (path, config_option(&text, "CONFIG_PER_VMA_LOCK"), config_option(&text, "CONFIG_MMU_GATHER_RCU_TABLE_FREE"))
        });
        // Until the kernel's functions are known (`fill_from_layout`): the config's word.
        let (config_source, per_vma_lock, rcu_table_free) = match &config_hint {
            Some((path, p, r)) => (Some(path.clone()), *p, *r),
            None => (None, Tristate::Unknown, Tristate::Unknown),
        };
        KernelFacts {
            release,
            btf,
            config_source,
            per_vma_lock,
            rcu_table_free,
            config_hint,
            contradictions: Vec::new(),
            preempt,
        }
    }
}

/// `uname -r`: from the syscall, so a service with `ProcSubset=pid` knows it too.
fn read_release() -> String {
    // SAFETY: uname fills the struct we pass.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_string();
    }
    // SAFETY: the kernel NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn read_config(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    } else {
        String::from_utf8(bytes).ok()
    }
}

/// `yes` for `=y`, `no` for `# … is not set` or absence (the config is complete).
pub fn config_option(config: &str, name: &str) -> Tristate {
    for line in config.lines() {
        if let Some(value) = line.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return if value == "y" || value == "m" {
                Tristate::Yes
            } else {
                Tristate::No
            };
        }
    }
    Tristate::No
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_exactly() {
        let cfg = "CONFIG_PER_VMA_LOCK=y\n# CONFIG_MMU_GATHER_RCU_TABLE_FREE is not set\nCONFIG_PER_VMA_LOCK_STATS=y\n";
        assert_eq!(config_option(cfg, "CONFIG_PER_VMA_LOCK"), Tristate::Yes);
        assert_eq!(config_option(cfg, "CONFIG_MMU_GATHER_RCU_TABLE_FREE"), Tristate::No);
        assert_eq!(config_option(cfg, "CONFIG_MISSING"), Tristate::No);
        // A prefix of another option is not that option.
        assert_eq!(config_option("CONFIG_PER_VMA_LOCK_STATS=y\n", "CONFIG_PER_VMA_LOCK"), Tristate::No);
    }

    #[test]
    fn the_kernels_functions_decide_over_its_config() {
        // The shared 6.12 image has lock_vma_under_rcu and
        // tlb_remove_table_sync_one; Debian's 6.1 has no per-VMA locks.
        let layout = |name: &str| super::super::Layout::from_btf(&super::super::btf::tests::testdata(name));
        let with_config = |text: &str| {
            let path = PathBuf::from("/boot/config-test");
            let hint = (path.clone(), config_option(text, "CONFIG_PER_VMA_LOCK"), config_option(text, "CONFIG_MMU_GATHER_RCU_TABLE_FREE"));
            KernelFacts { config_source: Some(path), per_vma_lock: hint.1, rcu_table_free: hint.2, config_hint: Some(hint), ..for_tests() }
        };
        // The mm tree's per-VMA locks for everyone: no CONFIG_PER_VMA_LOCK
        // symbol at all, the function still there.
        let mut facts = with_config("CONFIG_MMU_GATHER_RCU_TABLE_FREE=y\n");
        assert_eq!(facts.per_vma_lock, Tristate::No, "the config alone says no");
        facts.fill_from_layout(&layout("shared-6.12"));
        assert_eq!((facts.per_vma_lock, facts.rcu_table_free), (Tristate::Yes, Tristate::Yes));
        assert_eq!(facts.config_source.as_deref(), Some(Path::new("functions in BTF")));
        assert_eq!(
            facts.contradictions,
            ["CONFIG_PER_VMA_LOCK is not set in /boot/config-test, but the kernel has lock_vma_under_rcu() (functions in BTF): per_vma_lock=yes from the kernel"]
        );
        // A config of another build, claiming per-VMA locks 6.1 lacks.
        let mut facts = with_config("CONFIG_PER_VMA_LOCK=y\nCONFIG_MMU_GATHER_RCU_TABLE_FREE=y\n");
        facts.fill_from_layout(&layout("debian-6.1"));
        assert_eq!(facts.per_vma_lock, Tristate::No);
        assert_eq!(facts.contradictions.len(), 1, "{:?}", facts.contradictions);
        assert!(facts.contradictions[0].starts_with("CONFIG_PER_VMA_LOCK is set in /boot/config-test, but the kernel does not have lock_vma_under_rcu()"));
        // Agreeing: nothing to say.
        let mut facts = with_config("CONFIG_PER_VMA_LOCK=y\nCONFIG_MMU_GATHER_RCU_TABLE_FREE=y\n");
        facts.fill_from_layout(&layout("shared-6.12"));
        assert!(facts.contradictions.is_empty());
        // No functions known (no BTF, /proc/kallsyms hidden): the config's word stands.
        let mut unknown = layout("shared-6.12");
        unknown.functions_known = false;
        let mut facts = with_config("CONFIG_MMU_GATHER_RCU_TABLE_FREE=y\n");
        facts.fill_from_layout(&unknown);
        assert_eq!(facts.per_vma_lock, Tristate::No);
        assert_eq!(facts.config_source.as_deref(), Some(Path::new("/boot/config-test")));
    }

    #[test]
    fn without_a_config_the_options_follow_the_functions_in_btf() {
        // The kernels' BTF (testdata): the shared images are built with
        // PER_VMA_LOCK and MMU_GATHER_RCU_TABLE_FREE (their configs say so);
        // 6.1 has no per-VMA locks.
        for (name, per_vma_lock) in [("shared-6.12", Tristate::Yes), ("shared-7.3", Tristate::Yes), ("debian-6.1", Tristate::No)] {
            let layout = super::super::Layout::from_btf(&super::super::btf::tests::testdata(name));
            let mut facts = KernelFacts { config_source: None, per_vma_lock: Tristate::Unknown, rcu_table_free: Tristate::Unknown, ..for_tests() };
            facts.fill_from_layout(&layout);
            assert_eq!(facts.per_vma_lock, per_vma_lock, "{name}");
            assert_eq!(facts.config_source.as_deref(), Some(Path::new("functions in BTF")), "{name}");
            if name != "debian-6.1" {
                assert_eq!(facts.rcu_table_free, Tristate::Yes, "{name}");
            }
        }
    }
}
