//! The kernel's preemption model, which decides whether trampoline programs
//! (fentry/fexit) can be skipped: such a program runs with migration, not
//! preemption, disabled, so a thread preempted inside one holds the program's
//! per-CPU recursion guard until it runs again, and the kernel skips every run
//! of that program on that CPU meanwhile (counted as missed). On fully
//! preemptible kernels that is a large share of runs under load. Kprobe
//! handlers run with preemption disabled and are not skipped so, but a
//! kretprobe keeps only `maxactive` (10 on small machines) calls in flight:
//! readers piling up behind a held mmap_lock overflow it. The daemon keeps the
//! trampolines and says what the model means (`status::preempt_line`).
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    None,
    Voluntary,
    Full,
    Lazy,
    Rt,
    Unknown,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::None => "none",
            Model::Voluntary => "voluntary",
            Model::Full => "full",
            Model::Lazy => "lazy",
            Model::Rt => "rt",
            Model::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<Model> {
        Some(match s {
            "none" => Model::None,
            "voluntary" => Model::Voluntary,
            "full" => Model::Full,
            "lazy" => Model::Lazy,
            "rt" => Model::Rt,
            _ => return None,
        })
    }

    /// Trampoline programs can be skipped while a run of theirs is preempted
    /// (lazy: seen on Debian's 7.3.4, about 4 in 5 runs under 8 readers; not on
    /// its 7.0 nor on the tinyconfig 7.3.4 pair).
    pub fn skips_trampolines(self) -> bool {
        matches!(self, Model::Full | Model::Lazy | Model::Rt)
    }
}

/// The model and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preempt {
    pub model: Model,
    pub source: String,
}

impl fmt::Display for Preempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.model.as_str(), self.source)
    }
}

pub const DEBUGFS: &str = "/sys/kernel/debug/sched/preempt";

/// What the model is read from; each may be missing.
#[derive(Default)]
pub struct Sources<'a> {
    /// `/sys/kernel/debug/sched/preempt` (dynamic kernels, debugfs mounted):
    /// the models, the current one in parentheses; follows runtime changes.
    pub debugfs: Option<&'a str>,
    /// `/proc/cmdline`.
    pub cmdline: &'a str,
    /// The kernel config text and its path.
    pub config: Option<(&'a str, &'a str)>,
    /// `/proc/sys/kernel/version` (`#1 SMP PREEMPT_DYNAMIC …`).
    pub version: &'a str,
}

fn option_set(config: &str, name: &str) -> bool {
    super::facts::config_option(config, name) == super::facts::Tristate::Yes
}

/// The model from the first source that tells: debugfs; the config's `RT`;
/// `preempt=` on the command line of a dynamic kernel; the config's choice; the
/// version string's `PREEMPT_RT`. A dynamic kernel switched at run time through
/// debugfs is seen only through debugfs.
pub fn detect(s: &Sources) -> Preempt {
    if let Some(model) = s
        .debugfs
        .and_then(|d| d.split_whitespace().find_map(|w| w.strip_prefix('(')?.strip_suffix(')')))
        .and_then(Model::parse)
    {
        return Preempt { model, source: DEBUGFS.into() };
    }
    let dynamic = match s.config {
        Some((c, _)) => option_set(c, "CONFIG_PREEMPT_DYNAMIC"),
        None => s.version.split_whitespace().any(|w| w == "PREEMPT_DYNAMIC"),
    };
    if let Some((c, _)) = s.config
        && option_set(c, "CONFIG_PREEMPT_RT")
    {
        return Preempt { model: Model::Rt, source: s.config.map_or(String::new(), |(_, p)| p.to_string()) };
    }
    if dynamic
        && let Some(model) = s.cmdline.split_whitespace().find_map(|w| w.strip_prefix("preempt=")).and_then(Model::parse)
    {
        return Preempt { model, source: "preempt= on the kernel command line".into() };
    }
    if let Some((c, path)) = s.config {
        for (option, model) in [
            ("CONFIG_PREEMPT_LAZY", Model::Lazy),
            ("CONFIG_PREEMPT", Model::Full),
            ("CONFIG_PREEMPT_VOLUNTARY", Model::Voluntary),
            ("CONFIG_PREEMPT_NONE", Model::None),
        ] {
            if option_set(c, option) {
                return Preempt { model, source: path.to_string() };
            }
        }
    }
    if s.version.split_whitespace().any(|w| w == "PREEMPT_RT") {
        return Preempt { model: Model::Rt, source: "/proc/sys/kernel/version".into() };
    }
    Preempt { model: Model::Unknown, source: "no debugfs, kernel config or preempt= to tell".into() }
}

/// The running kernel's model; `config` as `KernelFacts::read` found it.
pub fn read(config: Option<(&str, &str)>) -> Preempt {
    let debugfs = std::fs::read_to_string(DEBUGFS).ok();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    detect(&Sources {
        debugfs: debugfs.as_deref(),
        cmdline: &cmdline,
        config,
        version: &version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNAMIC_VOLUNTARY: &str = "CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_VOLUNTARY=y\n# CONFIG_PREEMPT is not set\nCONFIG_PREEMPT_DYNAMIC=y\n";

    fn model(s: Sources) -> Model {
        detect(&s).model
    }

    #[test]
    fn debugfs_wins_and_names_the_current_model() {
        let s = Sources { debugfs: Some("none voluntary (full) lazy\n"), cmdline: "preempt=none", ..Default::default() };
        assert_eq!(detect(&s), Preempt { model: Model::Full, source: DEBUGFS.into() });
        assert_eq!(model(Sources { debugfs: Some("(none) voluntary full\n"), ..Default::default() }), Model::None);
    }

    #[test]
    fn the_command_line_decides_a_dynamic_kernel_only() {
        let config = Some((DYNAMIC_VOLUNTARY, "/boot/config-x"));
        assert_eq!(model(Sources { cmdline: "quiet preempt=full", config, ..Default::default() }), Model::Full);
        assert_eq!(model(Sources { cmdline: "quiet", config, ..Default::default() }), Model::Voluntary);
        let fixed = Some(("CONFIG_PREEMPT_NONE=y\n# CONFIG_PREEMPT_DYNAMIC is not set\n", "/proc/config.gz"));
        assert_eq!(model(Sources { cmdline: "preempt=full", config: fixed, ..Default::default() }), Model::None);
        // Without a config, the version string says whether it is dynamic.
        let version = "#1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1";
        assert_eq!(model(Sources { cmdline: "preempt=full", version, ..Default::default() }), Model::Full);
        assert_eq!(model(Sources { version, ..Default::default() }), Model::Unknown);
    }

    #[test]
    fn the_config_choice_is_read_exactly() {
        // The shared 7.3 pair: lazy (CONFIG_PREEMPT is a prefix, not set).
        let lazy = "CONFIG_PREEMPT_BUILD=y\n# CONFIG_PREEMPT is not set\nCONFIG_PREEMPT_LAZY=y\n# CONFIG_PREEMPT_RT is not set\n";
        assert_eq!(model(Sources { config: Some((lazy, "c")), ..Default::default() }), Model::Lazy);
        let full = "CONFIG_PREEMPT=y\nCONFIG_PREEMPT_COUNT=y\n";
        assert_eq!(model(Sources { config: Some((full, "c")), ..Default::default() }), Model::Full);
        let rt = "CONFIG_PREEMPT_RT=y\nCONFIG_PREEMPT_DYNAMIC=y\n";
        assert_eq!(model(Sources { config: Some((rt, "c")), cmdline: "preempt=none", ..Default::default() }), Model::Rt);
        assert_eq!(model(Sources { version: "#1 SMP PREEMPT_RT Thu", ..Default::default() }), Model::Rt);
    }

    #[test]
    fn full_lazy_and_rt_skip_trampolines() {
        let skip: Vec<_> = [Model::None, Model::Voluntary, Model::Full, Model::Lazy, Model::Rt, Model::Unknown]
            .into_iter()
            .filter(|m| m.skips_trampolines())
            .collect();
        assert_eq!(skip, [Model::Full, Model::Lazy, Model::Rt]);
    }
}
