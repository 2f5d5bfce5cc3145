//! The daemon's configuration: embedded defaults, a TOML file over them, flags
//! over the file. Every bad key or value is one error naming the key, the value
//! and what is allowed.
use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use serde::Deserialize;

use remote_vm_common::Family;

use crate::bpf::Choice;

/// The documented defaults, shipped as `/etc/remote-vm/remote-vm.toml`.
pub const DEFAULTS: &str = include_str!("../config/remote-vm.toml");

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where to serve (`web.listen_address`, alias `listen`): one or more.
    pub listen: Vec<SocketAddr>,
    /// The metrics path (`web.telemetry_path`).
    pub telemetry_path: String,
    /// TLS and basic auth (`web.config_file`, `--web.config.file`): exporter-toolkit's web config.
    pub web_config_file: Option<std::path::PathBuf>,
    /// `log.level`, alias `log_level`.
    pub log_level: log::LevelFilter,
    /// `log.format`.
    pub log_format: crate::logging::Format,
    /// Per probe family.
    pub probes: BTreeMap<Family, Choice>,
    /// Exported histogram range, as log2 bucket indexes of nanoseconds.
    pub hist_min_log2: u32,
    pub hist_max_log2: u32,
    /// A remote access waiting this long for the target's mmap_lock is a stall.
    pub stall_threshold_ns: u64,
    /// Stalls kept for `/stalls`.
    pub stalls_keep: usize,
    /// Who `/stalls` is served to (it shows which process reads which).
    pub stalls_serve: StallsServe,
    /// `/stalls` shows lock holders' kernel stacks (where the kernel can tell).
    pub kernel_stacks: bool,
    /// The Unix socket (`web.socket`, `--web.socket`): every path, `/stalls`
    /// included, to whoever may open it. `None`: none.
    pub socket: Option<std::path::PathBuf>,
    /// Connections served at once; at the cap, the oldest idle one is closed
    /// for a new one.
    pub max_connections: usize,
    /// A client must send a whole request head within this (also the idle
    /// keep-alive timeout).
    pub header_timeout: std::time::Duration,
    /// `/metrics` renders start at most this often; requests share them.
    pub min_render_interval: std::time::Duration,
    /// Switch the kernel's BPF run-time statistics on while the daemon runs
    /// (`remote_vm_probe_run*`; needs CAP_SYS_ADMIN; costs every BPF program on
    /// the host two clock reads per run).
    pub self_stats: bool,
}

/// Who `/stalls` is served to (`[stalls] serve`): it names which process read
/// which other process's memory, with cgroup paths (unit names, container
/// ids), which a user who cannot list other users' processes must not learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallsServe {
    /// Nowhere (404).
    Off,
    /// On the Unix socket only (`web.socket`): its group decides.
    Socket,
    /// Also over TCP to a request that authenticated: basic auth passed, or a
    /// verified client certificate.
    Authenticated,
    /// Also over TCP to anyone who reaches the port.
    Everyone,
}

impl StallsServe {
    pub const ALLOWED: &str = "off, socket, authenticated or everyone";

    pub fn parse(v: &str) -> Option<StallsServe> {
        match v {
            "off" => Some(StallsServe::Off),
            "socket" => Some(StallsServe::Socket),
            "authenticated" => Some(StallsServe::Authenticated),
            "everyone" => Some(StallsServe::Everyone),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StallsServe::Off => "off",
            StallsServe::Socket => "socket",
            StallsServe::Authenticated => "authenticated",
            StallsServe::Everyone => "everyone",
        }
    }

    /// Whether a request may have `/stalls`: over the Unix socket (`unix`),
    /// or over TCP having authenticated (`authenticated`).
    pub fn allows(self, unix: bool, authenticated: bool) -> bool {
        match self {
            StallsServe::Off => false,
            StallsServe::Socket => unix,
            StallsServe::Authenticated => unix || authenticated,
            StallsServe::Everyone => true,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config {source_name}: cannot read: {reason}")]
    Read { source_name: String, reason: String },
    #[error("config {source_name}{line}: {message}")]
    Syntax {
        source_name: String,
        line: String,
        message: String,
    },
    #[error("config {source_name}: key `{key}`: invalid value {value}: expected {allowed}")]
    Value {
        source_name: String,
        key: String,
        value: String,
        allowed: String,
    },
}

/// The file as written: every key optional, nothing unknown allowed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Alias of `web.listen_address`.
    listen: Option<toml::Value>,
    /// Alias of `log.level`.
    log_level: Option<String>,
    log: Option<RawLog>,
    probes: Option<BTreeMap<String, toml::Value>>,
    histograms: Option<RawHistograms>,
    stalls: Option<RawStalls>,
    web: Option<RawWeb>,
    self_stats: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen_address: Option<toml::Value>,
    telemetry_path: Option<toml::Value>,
    config_file: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    header_timeout_seconds: Option<toml::Value>,
    min_render_interval_seconds: Option<toml::Value>,
    socket: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStalls {
    threshold_seconds: Option<toml::Value>,
    keep: Option<toml::Value>,
    serve: Option<toml::Value>,
    kernel_stacks: Option<toml::Value>,
    /// The old boolean: false is `serve = "off"`, true `"authenticated"`.
    http: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistograms {
    min_seconds: Option<toml::Value>,
    max_seconds: Option<toml::Value>,
}

/// Where the daemon's Unix socket is by default (the packaged socket unit's
/// `ListenStream=` and `top`'s default).
pub const DEFAULT_SOCKET: &str = "/run/remote-vm/remote-vm.sock";
pub const SOCKET_ALLOWED: &str = "an absolute path for a Unix socket, under 108 bytes, or \"\" for none";

pub use remote_vm_common::STALLS_KEEP_MAX;

pub const LISTEN_ALLOWED: &str =
    "ADDRESS:PORT or :PORT (every address), e.g. 127.0.0.1:19361, [::1]:19361 or :19361; in the config a string or a list of them, each once";
pub const TELEMETRY_PATH_ALLOWED: &str = "a path such as /metrics: /, then up to 255 visible ASCII characters but ? and #, and not /healthz or /stalls";
pub const WEB_CONFIG_FILE_ALLOWED: &str = "an absolute path to a web config file (exporter-toolkit's format: TLS and basic auth), or \"\" for none";
pub const LOG_LEVEL_ALLOWED: &str = "one of error, warn, info, debug, trace";
pub const LOG_FORMAT_ALLOWED: &str = "logfmt or json";

impl Config {
    /// The embedded defaults alone.
    pub fn defaults() -> Config {
        Config::from_layers(&[("embedded defaults", DEFAULTS)]).expect("embedded defaults are valid (unit-tested)")
    }

    /// Defaults, then the file at `path` if any.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::defaults()),
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    source_name: name.clone(),
                    reason: e.to_string(),
                })?;
                Config::from_text(&name, &text)
            }
        }
    }

    /// Defaults, then `text` (a config file's contents, named `name` in errors).
    pub fn from_text(name: &str, text: &str) -> Result<Config, ConfigError> {
        Config::from_layers(&[("embedded defaults", DEFAULTS), (name, text)])
    }

    /// The settings that differ in `new` and take effect only on a restart
    /// (everything but the log level; `[web]` is fixed when the listener
    /// starts), by their config keys.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut differ = |key, changed: bool| {
            if changed {
                out.push(key);
            }
        };
        differ("web.listen_address", self.listen != new.listen);
        differ("log.format", self.log_format != new.log_format);
        differ("probes", self.probes != new.probes);
        differ("histograms", (self.hist_min_log2, self.hist_max_log2) != (new.hist_min_log2, new.hist_max_log2));
        differ("self_stats", self.self_stats != new.self_stats);
        differ(
            "stalls",
            (self.stall_threshold_ns, self.stalls_keep, self.stalls_serve, self.kernel_stacks)
                != (new.stall_threshold_ns, new.stalls_keep, new.stalls_serve, new.kernel_stacks),
        );
        differ("web.socket", self.socket != new.socket);
        differ(
            "web",
            (&self.telemetry_path, self.max_connections, self.header_timeout, self.min_render_interval)
                != (&new.telemetry_path, new.max_connections, new.header_timeout, new.min_render_interval),
        );
        out
    }

    fn from_layers(layers: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut config = Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 19361))],
            telemetry_path: "/metrics".into(),
            web_config_file: None,
            log_level: log::LevelFilter::Info,
            log_format: Default::default(),
            probes: BTreeMap::new(),
            hist_min_log2: 10,
            hist_max_log2: 34,
            stall_threshold_ns: 100_000_000,
            stalls_keep: 256,
            stalls_serve: StallsServe::Authenticated,
            kernel_stacks: true,
            socket: Some(DEFAULT_SOCKET.into()),
            max_connections: remote_vm_common::MAX_CONNECTIONS_DEFAULT,
            header_timeout: std::time::Duration::from_secs(10),
            min_render_interval: std::time::Duration::from_millis(100),
            self_stats: false,
        };
        for (name, text) in layers {
            let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(name, text, &e))?;
            // The key and value as written, on one line (line breaks escaped).
            let bad = |key: &str, value: String, allowed: String| ConfigError::Value {
                source_name: name.to_string(),
                key: crate::printable(key),
                value: crate::printable(&value),
                allowed,
            };
            let web = raw.web.unwrap_or_default();
            // The exporter names and the old ones: one of each pair per file.
            let one_of = |old: Option<(&'static str, toml::Value)>, new: Option<(&'static str, toml::Value)>| match (old, new) {
                (Some((o, _)), Some((n, _))) => {
                    Err(bad(n, format!("(and {o})"), format!("one of {n} or its old name {o}: they are the same setting")))
                }
                (a, b) => Ok(a.or(b)),
            };
            if let Some((key, v)) = one_of(raw.listen.map(|v| ("listen", v)), web.listen_address.map(|v| ("web.listen_address", v)))? {
                config.listen = parse_listen_list(&v).ok_or_else(|| bad(key, v.to_string(), LISTEN_ALLOWED.into()))?;
            }
            let level = |v: String| toml::Value::String(v);
            let log = raw.log.unwrap_or_default();
            if let Some(v) = log.format {
                config.log_format = v
                    .as_str()
                    .and_then(crate::logging::Format::parse)
                    .ok_or_else(|| bad("log.format", v.to_string(), LOG_FORMAT_ALLOWED.into()))?;
            }
            let new_level = log.level.map(|v| ("log.level", level(v)));
            if let Some((key, v)) = one_of(raw.log_level.map(|v| ("log_level", level(v))), new_level)? {
                let text = v.as_str().unwrap_or_default();
                config.log_level =
                    parse_log_level(text).ok_or_else(|| bad(key, format!("{text:?}"), LOG_LEVEL_ALLOWED.into()))?;
            }
            if let Some(v) = web.telemetry_path {
                config.telemetry_path = v
                    .as_str()
                    .and_then(parse_telemetry_path)
                    .ok_or_else(|| bad("web.telemetry_path", v.to_string(), TELEMETRY_PATH_ALLOWED.into()))?;
            }
            if let Some(v) = web.config_file {
                config.web_config_file = match v.as_str() {
                    Some("") => None,
                    Some(p) if std::path::Path::new(p).is_absolute() && !p.contains('\0') => Some(p.into()),
                    _ => return Err(bad("web.config_file", v.to_string(), WEB_CONFIG_FILE_ALLOWED.into())),
                };
            }
            for (name, value) in raw.probes.unwrap_or_default() {
                let key = format!("probes.{name}");
                let Some(family) = Family::from_name(&name) else {
                    let known: Vec<_> = Family::ALL.iter().map(|f| f.name()).collect();
                    return Err(bad(&key, "(unknown probe family)".into(), format!("one of {}", known.join(", "))));
                };
                let allowed = || {
                    let modes: Vec<_> = family.modes().map(|m| m.name).collect();
                    format!("auto, off, or one of {}", modes.join(", "))
                };
                let Some(text) = value.as_str() else {
                    return Err(bad(&key, value.to_string(), allowed()));
                };
                let choice = match text {
                    "auto" => Choice::Auto,
                    "off" => Choice::Disabled,
                    m => match family.mode(m) {
                        Some(mode) => Choice::Force(mode),
                        None => return Err(bad(&key, format!("{text:?}"), allowed())),
                    },
                };
                config.probes.insert(family, choice);
            }
            // A number of seconds (float or integer) within `range`.
            let seconds = |key: &str, v: toml::Value, range: std::ops::RangeInclusive<f64>, allowed: &str| {
                match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
                    Some(s) if range.contains(&s) => Ok(s),
                    _ => Err(bad(key, v.to_string(), allowed.to_string())),
                }
            };
            let stalls = raw.stalls.unwrap_or_default();
            if let Some(v) = stalls.kernel_stacks {
                config.kernel_stacks = v.as_bool().ok_or_else(|| bad("stalls.kernel_stacks", v.to_string(), "true or false".into()))?;
            }
            if let Some(v) = stalls.keep {
                config.stalls_keep = match v.as_integer() {
                    Some(n) if (1..=STALLS_KEEP_MAX as i64).contains(&n) => n as usize,
                    _ => return Err(bad("stalls.keep", v.to_string(), format!("a whole number from 1 to {STALLS_KEEP_MAX}"))),
                };
            }
            if let Some(v) = raw.self_stats {
                config.self_stats = v.as_bool().ok_or_else(|| bad("self_stats", v.to_string(), "true or false".into()))?;
            }
            let old_http = stalls.http.map(|v| ("stalls.http", v));
            if let Some((key, v)) = one_of(old_http, stalls.serve.map(|v| ("stalls.serve", v)))? {
                config.stalls_serve = if key == "stalls.http" {
                    match v.as_bool() {
                        Some(false) => StallsServe::Off,
                        // The old default: served, now to whom `serve`'s default serves.
                        Some(true) => StallsServe::Authenticated,
                        None => return Err(bad(key, v.to_string(), "true or false (its new name stalls.serve takes off, socket, authenticated or everyone)".into())),
                    }
                } else {
                    v.as_str().and_then(StallsServe::parse).ok_or_else(|| bad(key, v.to_string(), StallsServe::ALLOWED.into()))?
                };
            }
            if let Some(v) = web.socket {
                config.socket = match v.as_str() {
                    Some("") => None,
                    Some(p) if std::path::Path::new(p).is_absolute() && !p.contains('\0') && p.len() < 108 => Some(p.into()),
                    _ => return Err(bad("web.socket", v.to_string(), SOCKET_ALLOWED.into())),
                };
            }
            if let Some(v) = stalls.threshold_seconds {
                let s = seconds("stalls.threshold_seconds", v, 1e-3..=3600.0, "a number of seconds between 0.001 and 3600")?;
                config.stall_threshold_ns = (s * 1e9).round() as u64;
            }
            if let Some(v) = web.max_connections {
                config.max_connections = match v.as_integer() {
                    Some(n) if (1..=65_536).contains(&n) => n as usize,
                    _ => return Err(bad("web.max_connections", v.to_string(), "a whole number from 1 to 65536".into())),
                };
            }
            if let Some(v) = web.header_timeout_seconds {
                let s = seconds("web.header_timeout_seconds", v, 0.1..=3600.0, "a number of seconds between 0.1 and 3600")?;
                config.header_timeout = std::time::Duration::from_secs_f64(s);
            }
            if let Some(v) = web.min_render_interval_seconds {
                let s = seconds("web.min_render_interval_seconds", v, 0.0..=10.0, "a number of seconds between 0 and 10")?;
                config.min_render_interval = std::time::Duration::from_secs_f64(s);
            }
            if let Some(h) = raw.histograms {
                const HIST_ALLOWED: &str = "a number of seconds between 1e-9 and 1e6";
                if let Some(v) = h.min_seconds {
                    config.hist_min_log2 = log2_floor_ns(seconds("histograms.min_seconds", v, 1e-9..=1e6, HIST_ALLOWED)?);
                }
                if let Some(v) = h.max_seconds {
                    config.hist_max_log2 = log2_ceil_ns(seconds("histograms.max_seconds", v, 1e-9..=1e6, HIST_ALLOWED)?);
                }
                if config.hist_min_log2 >= config.hist_max_log2 {
                    return Err(bad(
                        "histograms",
                        format!("min 2^{} ns >= max 2^{} ns", config.hist_min_log2, config.hist_max_log2),
                        "min_seconds below max_seconds".into(),
                    ));
                }
            }
        }
        Ok(config)
    }
}

fn whole_ns(s: f64) -> u64 {
    ((s * 1e9).round() as u64).max(1)
}

/// The largest power-of-two nanoseconds not above `s`.
fn log2_floor_ns(s: f64) -> u32 {
    (63 - whole_ns(s).leading_zeros()).min(62)
}

/// The smallest power-of-two nanoseconds not below `s`.
fn log2_ceil_ns(s: f64) -> u32 {
    (remote_vm_common::stats::bucket(whole_ns(s)) as u32).min(62)
}

/// `ADDRESS:PORT`, or `:PORT` for every address (`[::]:PORT`, which also
/// takes IPv4 where the kernel has IPv6; the daemon falls back to
/// `0.0.0.0:PORT` where it has not).
pub fn parse_listen(v: &str) -> Option<SocketAddr> {
    match v.strip_prefix(':') {
        Some(port) => port.parse::<u16>().ok().map(|p| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, p))),
        None => v.parse().ok(),
    }
}

/// A string or a non-empty list of strings, each an address once.
fn parse_listen_list(v: &toml::Value) -> Option<Vec<SocketAddr>> {
    let list: Vec<SocketAddr> = match v {
        toml::Value::String(s) => vec![parse_listen(s)?],
        toml::Value::Array(items) if !items.is_empty() && items.len() <= 64 => {
            items.iter().map(|i| i.as_str().and_then(parse_listen)).collect::<Option<_>>()?
        }
        _ => return None,
    };
    let unique: std::collections::BTreeSet<_> = list.iter().collect();
    (unique.len() == list.len()).then_some(list)
}

/// The metrics path: `/` and more, within bounds, not another endpoint's.
pub fn parse_telemetry_path(v: &str) -> Option<String> {
    let ok = v.starts_with('/')
        && (2..=256).contains(&v.len())
        && v.chars().all(|c| c.is_ascii_graphic() && c != '?' && c != '#')
        && !["/healthz", "/stalls"].contains(&v);
    ok.then(|| v.to_string())
}

pub fn parse_log_level(v: &str) -> Option<log::LevelFilter> {
    match v {
        "error" => Some(log::LevelFilter::Error),
        "warn" => Some(log::LevelFilter::Warn),
        "info" => Some(log::LevelFilter::Info),
        "debug" => Some(log::LevelFilter::Debug),
        "trace" => Some(log::LevelFilter::Trace),
        _ => None,
    }
}

fn syntax_error(name: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| format!(" line {}", 1 + text[..span.start.min(text.len())].matches('\n').count()))
        .unwrap_or_default();
    ConfigError::Syntax {
        source_name: name.to_string(),
        line,
        message: e.message().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_layers(&[("embedded defaults", DEFAULTS), ("t.toml", text)])
    }

    #[test]
    fn embedded_defaults_are_valid_and_name_every_family() {
        let c = Config::defaults();
        assert_eq!(c.listen, ["127.0.0.1:19361".parse().unwrap()]);
        assert_eq!(c.telemetry_path, "/metrics");
        assert_eq!(c.web_config_file, None);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.log_format, crate::logging::Format::Logfmt);
        assert_eq!((c.hist_min_log2, c.hist_max_log2), (9, 34));
        assert_eq!(c.stall_threshold_ns, 100_000_000);
        assert_eq!((c.stalls_keep, c.stalls_serve, c.kernel_stacks), (256, StallsServe::Authenticated, true));
        assert_eq!(c.socket.as_deref(), Some(std::path::Path::new(DEFAULT_SOCKET)));
        assert_eq!(
            (c.max_connections, c.header_timeout, c.min_render_interval),
            (64, std::time::Duration::from_secs(10), std::time::Duration::from_millis(100))
        );
        assert_eq!(c.probes.keys().copied().collect::<Vec<_>>(), Family::ALL.to_vec());
        assert!(c.probes.values().all(|c| *c == Choice::Auto));
    }

    #[test]
    fn the_web_config_file_is_an_absolute_path_or_none() {
        let c = parse("[web]\nconfig_file = \"/etc/remote-vm/web-config.yml\"\n").unwrap();
        assert_eq!(c.web_config_file, Some("/etc/remote-vm/web-config.yml".into()));
        assert_eq!(parse("[web]\nconfig_file = \"\"\n").unwrap().web_config_file, None);
        for bad in ["\"web.yml\"", "1", "[\"/a\"]"] {
            assert_eq!(
                parse(&format!("[web]\nconfig_file = {bad}\n")),
                Err(ConfigError::Value {
                    source_name: "t.toml".into(),
                    key: "web.config_file".into(),
                    value: bad.into(),
                    allowed: WEB_CONFIG_FILE_ALLOWED.into(),
                })
            );
        }
        // Applied on SIGHUP: not a restart-only change.
        assert!(Config::defaults().restart_only_changes(&c).is_empty());
    }

    #[test]
    fn embedded_defaults_list_each_familys_modes_as_the_registry_does() {
        for family in Family::ALL {
            let line = DEFAULTS
                .lines()
                .find(|l| l.starts_with(&format!("{} = ", family.name())))
                .unwrap_or_else(|| panic!("no line for {}", family.name()));
            let comment = line.split_once('#').map(|(_, c)| c.trim()).unwrap_or_default();
            let names = |modes: &[remote_vm_common::registry::ModeSpec]| {
                modes.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
            };
            let spec = family.spec();
            let want = match (spec.modes.is_empty(), spec.opt_in.is_empty()) {
                (_, true) => names(spec.modes),
                (true, false) => format!("opt-in: {}", names(spec.opt_in)),
                (false, false) => format!("{}; opt-in: {}", names(spec.modes), names(spec.opt_in)),
            };
            assert_eq!(comment, want, "{}", family.name());
        }
    }

    #[test]
    fn file_overrides_defaults() {
        let c = parse(
            "listen = \"[::1]:9999\"\nlog_level = \"debug\"\n[probes]\naccess_remote_vm = \"kprobe\"\nmmap_lock_host = \"off\"\n",
        )
        .unwrap();
        assert_eq!(c.listen, ["[::1]:9999".parse().unwrap()]);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        let mode = |f: Family, m: &str| Choice::Force(f.mode(m).unwrap());
        assert_eq!(c.probes[&Family::AccessRemoteVm], mode(Family::AccessRemoteVm, "kprobe"));
        assert_eq!(c.probes[&Family::MmapLockHost], Choice::Disabled);
        assert_eq!(c.probes[&Family::LockVmaUnderRcu], Choice::Auto);
        // Opt-in modes can be forced.
        let c = parse("[probes]\nmmap_lock_host = \"mmap_lock_tp\"\n").unwrap();
        assert_eq!(c.probes[&Family::MmapLockHost], mode(Family::MmapLockHost, "mmap_lock_tp"));
    }

    #[test]
    fn exporter_names_and_their_old_aliases() {
        // The exporter-toolkit names: [web] listen_address (one or a list,
        // `:PORT` for every address), telemetry_path; [log] level.
        let c = parse("[web]\nlisten_address = [\":9100\", \"127.0.0.1:9101\", \"[::1]:9102\"]\ntelemetry_path = \"/m\"\n[log]\nlevel = \"warn\"\n").unwrap();
        let want: Vec<SocketAddr> = ["[::]:9100", "127.0.0.1:9101", "[::1]:9102"].map(|a| a.parse().unwrap()).to_vec();
        assert_eq!((c.listen, c.telemetry_path.as_str(), c.log_level), (want, "/m", log::LevelFilter::Warn));
        assert_eq!(parse("[log]\nformat = \"json\"\n").unwrap().log_format, crate::logging::Format::Json);
        assert_eq!(
            parse("[log]\nformat = \"text\"\n").unwrap_err().to_string(),
            "config t.toml: key `log.format`: invalid value \"text\": expected logfmt or json"
        );
        // The old names are the same settings.
        let c = parse("listen = [\":1\"]\nlog_level = \"error\"\n").unwrap();
        assert_eq!((c.listen, c.log_level), (vec!["[::]:1".parse().unwrap()], log::LevelFilter::Error));
        // Both names of one setting in one file: which to take is not guessed.
        assert_eq!(
            parse("listen = \":1\"\n[web]\nlisten_address = \":2\"\n").unwrap_err().to_string(),
            "config t.toml: key `web.listen_address`: invalid value (and listen): expected one of web.listen_address or its old name listen: they are the same setting"
        );
        assert_eq!(
            parse("log_level = \"info\"\n[log]\nlevel = \"info\"\n").unwrap_err().to_string(),
            "config t.toml: key `log.level`: invalid value (and log_level): expected one of log.level or its old name log_level: they are the same setting"
        );
        for bad in ["[]", "[\":1\", \":1\"]", "[1]", "\"host:1\"", "\":\"", "\":65536\""] {
            assert_eq!(
                parse(&format!("[web]\nlisten_address = {bad}\n")).unwrap_err().to_string(),
                format!("config t.toml: key `web.listen_address`: invalid value {bad}: expected {LISTEN_ALLOWED}"),
            );
        }
        for bad in ["\"metrics\"", "\"/\"", "\"/healthz\"", "\"/stalls\"", "\"/a b\"", "\"/a?b\"", "\"/métriques\"", "3"] {
            assert_eq!(
                parse(&format!("[web]\ntelemetry_path = {bad}\n")).unwrap_err().to_string(),
                format!("config t.toml: key `web.telemetry_path`: invalid value {bad}: expected {TELEMETRY_PATH_ALLOWED}"),
            );
        }
        assert_eq!(parse_listen(":19361"), Some("[::]:19361".parse().unwrap()));
        assert_eq!(parse_listen("0.0.0.0:1"), Some("0.0.0.0:1".parse().unwrap()));
        assert_eq!(parse_listen("localhost:1"), None);
    }

    #[test]
    fn what_sighup_cannot_change_is_named() {
        let old = parse("").unwrap();
        let new = parse("log_level = \"debug\"\nlisten = \"127.0.0.1:1\"\n[stalls]\nkeep = 3\n[web]\nmax_connections = 2\n").unwrap();
        assert_eq!(old.restart_only_changes(&new), ["web.listen_address", "stalls", "web"]);
        assert!(old.restart_only_changes(&parse("log_level = \"debug\"").unwrap()).is_empty());
        assert_eq!(old.restart_only_changes(&parse("[log]\nformat = \"json\"\n").unwrap()), ["log.format"]);
        let new = parse("[web]\nmin_render_interval_seconds = 1\n").unwrap();
        assert_eq!(old.restart_only_changes(&new), ["web"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config t.toml line 2: unknown field `listen_port`, expected one of `listen`, `log_level`, `log`, `probes`, `histograms`, `stalls`, `web`, `self_stats`"
        );
        assert_eq!(
            parse("[probes]\nfentry = \"auto\"\n").unwrap_err().to_string(),
            "config t.toml: key `probes.fentry`: invalid value (unknown probe family): expected one of access_remote_vm, lock_vma_under_rcu, folio_walk_start, get_user_pages_remote, mmap_lock_remote, mmap_lock_host"
        );
    }

    #[test]
    fn bad_values_name_key_value_and_allowed() {
        assert_eq!(
            parse("listen = \"localhost\"").unwrap_err().to_string(),
            format!("config t.toml: key `listen`: invalid value \"localhost\": expected {LISTEN_ALLOWED}")
        );
        assert_eq!(
            parse("log_level = \"loud\"").unwrap_err().to_string(),
            "config t.toml: key `log_level`: invalid value \"loud\": expected one of error, warn, info, debug, trace"
        );
        assert_eq!(
            parse("[probes]\naccess_remote_vm = \"fexit\"\n").unwrap_err().to_string(),
            "config t.toml: key `probes.access_remote_vm`: invalid value \"fexit\": expected auto, off, or one of fentry, kprobe, fentry_callers, kprobe_callers"
        );
        assert_eq!(
            parse("[probes]\nmmap_lock_host = 3\n").unwrap_err().to_string(),
            "config t.toml: key `probes.mmap_lock_host`: invalid value 3: expected auto, off, or one of contention_tp, mmap_lock_tp"
        );
        assert_eq!(
            parse("[histograms]\nmin_seconds = -1\n").unwrap_err().to_string(),
            "config t.toml: key `histograms.min_seconds`: invalid value -1: expected a number of seconds between 1e-9 and 1e6"
        );
        assert_eq!(
            parse("[histograms]\nmin_seconds = 2.0\nmax_seconds = 1.0\n").unwrap_err().to_string(),
            "config t.toml: key `histograms`: invalid value min 2^30 ns >= max 2^30 ns: expected min_seconds below max_seconds"
        );
    }

    #[test]
    fn stall_threshold_is_seconds_within_bounds() {
        assert_eq!(parse("[stalls]\nthreshold_seconds = 2\n").unwrap().stall_threshold_ns, 2_000_000_000);
        assert_eq!(parse("[stalls]\nthreshold_seconds = 0.25\n").unwrap().stall_threshold_ns, 250_000_000);
        assert_eq!(
            parse("[stalls]\nthreshold_seconds = 0\n").unwrap_err().to_string(),
            "config t.toml: key `stalls.threshold_seconds`: invalid value 0: expected a number of seconds between 0.001 and 3600"
        );
        assert!(parse("[stalls]\nkept = 3\n").unwrap_err().to_string().contains("unknown field `kept`"));
        let c = parse("[stalls]\nkeep = 3\nhttp = false\n").unwrap();
        assert_eq!((c.stalls_keep, c.stalls_serve), (3, StallsServe::Off));
        // The old `http = true` (the old default) serves as `serve`'s default does.
        assert_eq!(parse("[stalls]\nhttp = true\n").unwrap().stalls_serve, StallsServe::Authenticated);
        for (v, want) in [("off", StallsServe::Off), ("socket", StallsServe::Socket), ("everyone", StallsServe::Everyone)] {
            assert_eq!(parse(&format!("[stalls]\nserve = \"{v}\"\n")).unwrap().stalls_serve, want);
        }
        assert_eq!(
            parse("[stalls]\nserve = \"all\"\n").unwrap_err().to_string(),
            "config t.toml: key `stalls.serve`: invalid value \"all\": expected off, socket, authenticated or everyone"
        );
        assert!(parse("[stalls]\nserve = \"off\"\nhttp = false\n").unwrap_err().to_string().contains("the same setting"));
        assert_eq!(parse("[web]\nsocket = \"\"\n").unwrap().socket, None);
        assert_eq!(parse("[web]\nsocket = \"/tmp/r.sock\"\n").unwrap().socket.as_deref(), Some(std::path::Path::new("/tmp/r.sock")));
        for bad in ["\"r.sock\"", "1", &format!("\"/{}\"", "a".repeat(120))] {
            assert_eq!(
                parse(&format!("[web]\nsocket = {bad}\n")).unwrap_err().to_string(),
                format!("config t.toml: key `web.socket`: invalid value {bad}: expected {SOCKET_ALLOWED}")
            );
        }
        let c = parse("[web]\nmax_connections = 5\nheader_timeout_seconds = 2.5\n").unwrap();
        assert_eq!((c.max_connections, c.header_timeout), (5, std::time::Duration::from_millis(2500)));
        assert_eq!(
            parse("[web]\nmax_connections = 0\n").unwrap_err().to_string(),
            "config t.toml: key `web.max_connections`: invalid value 0: expected a whole number from 1 to 65536"
        );
        let render = |text: &str| parse(&format!("[web]\nmin_render_interval_seconds = {text}\n"));
        assert_eq!(render("0").unwrap().min_render_interval, std::time::Duration::ZERO);
        assert_eq!(render("0.25").unwrap().min_render_interval, std::time::Duration::from_millis(250));
        assert_eq!(render("10").unwrap().min_render_interval, std::time::Duration::from_secs(10));
        for bad in ["-0.1", "10.5", "\"fast\""] {
            assert_eq!(
                render(bad).unwrap_err().to_string(),
                format!("config t.toml: key `web.min_render_interval_seconds`: invalid value {bad}: expected a number of seconds between 0 and 10")
            );
        }
        for bad in ["0", "1025", "65536"] {
            assert_eq!(
                parse(&format!("[stalls]\nkeep = {bad}\n")).unwrap_err().to_string(),
                format!("config t.toml: key `stalls.keep`: invalid value {bad}: expected a whole number from 1 to 1024")
            );
        }
        assert_eq!(parse("[stalls]\nkeep = 1024\n").unwrap().stalls_keep, 1024);
        assert!(!parse("[stalls]\nkernel_stacks = false\n").unwrap().kernel_stacks);
        assert!(parse("[stalls]\nkernel_stacks = \"no\"\n").unwrap_err().to_string().contains("expected true or false"));
        assert_eq!(
            parse("[stalls]\nhttp = \"yes\"\n").unwrap_err().to_string(),
            "config t.toml: key `stalls.http`: invalid value \"yes\": expected true or false (its new name stalls.serve takes off, socket, authenticated or everyone)"
        );
    }

    #[test]
    fn histogram_bounds_round_outwards() {
        assert_eq!(log2_floor_ns(1e-6), 9); // 512 ns <= 1000 ns
        assert_eq!(log2_ceil_ns(10.0), 34); // 2^34 ns = 17.2 s >= 10 s
        assert_eq!(log2_floor_ns(1.024e-6), 10);
        assert_eq!(log2_ceil_ns(1.024e-6), 10);
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let e = parse("listen = \n").unwrap_err().to_string();
        assert!(e.starts_with("config t.toml line 1: "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn values_and_keys_with_line_breaks_stay_on_one_line() {
        // Found by the config fuzz target: a multi-line string echoed as written.
        let e = parse("listen = \"\"\"\n# \n\"\"\"\n").unwrap_err().to_string();
        assert_eq!(
            e,
            format!("config t.toml: key `listen`: invalid value \"\"\"\\n# \\n\"\"\": expected {LISTEN_ALLOWED}")
        );
        let e = parse("[probes]\n\"a\\nb\" = \"off\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config t.toml: key `probes.a\\nb`: invalid value"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
