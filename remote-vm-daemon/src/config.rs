//! The daemon's configuration: embedded defaults, a TOML file over them, flags
//! over the file. Every bad key or value is one error naming the key, the value
//! and what is allowed.
use std::{net::SocketAddr, path::Path};

use serde::Deserialize;

/// The documented defaults, shipped as `/etc/remote-vm/remote-vm.toml`.
pub const DEFAULTS: &str = include_str!("../config/remote-vm.toml");

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub log_level: log::LevelFilter,
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
    #[error("config {source_name}: key `{key}`: invalid value {value:?}: expected {allowed}")]
    Value {
        source_name: String,
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

/// The file as written: every key optional, nothing unknown allowed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    log_level: Option<String>,
}

pub const LISTEN_ALLOWED: &str = "ADDRESS:PORT, e.g. 127.0.0.1:19361 or [::1]:19361";
pub const LOG_LEVEL_ALLOWED: &str = "one of error, warn, info, debug, trace";

impl Config {
    /// The embedded defaults alone.
    pub fn defaults() -> Config {
        Config::from_layers(&[("embedded defaults", DEFAULTS)])
            .expect("embedded defaults are valid (unit-tested)")
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
                Config::from_layers(&[("embedded defaults", DEFAULTS), (&name, &text)])
            }
        }
    }

    fn from_layers(layers: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 19361)),
            log_level: log::LevelFilter::Info,
        };
        for (name, text) in layers {
            let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(name, text, &e))?;
            if let Some(v) = raw.listen {
                config.listen = parse_listen(&v).ok_or_else(|| ConfigError::Value {
                    source_name: name.to_string(),
                    key: "listen",
                    value: v.clone(),
                    allowed: LISTEN_ALLOWED,
                })?;
            }
            if let Some(v) = raw.log_level {
                config.log_level = parse_log_level(&v).ok_or_else(|| ConfigError::Value {
                    source_name: name.to_string(),
                    key: "log_level",
                    value: v.clone(),
                    allowed: LOG_LEVEL_ALLOWED,
                })?;
            }
        }
        Ok(config)
    }
}

pub fn parse_listen(v: &str) -> Option<SocketAddr> {
    v.parse().ok()
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
    fn embedded_defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.listen, "127.0.0.1:19361".parse().unwrap());
        assert_eq!(c.log_level, log::LevelFilter::Info);
    }

    #[test]
    fn file_overrides_defaults() {
        let c = parse("listen = \"[::1]:9999\"\nlog_level = \"debug\"\n").unwrap();
        assert_eq!(c.listen, "[::1]:9999".parse().unwrap());
        assert_eq!(c.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config t.toml line 2: unknown field `listen_port`, expected `listen` or `log_level`"
        );
    }

    #[test]
    fn bad_values_name_key_value_and_allowed() {
        assert_eq!(
            parse("listen = \"localhost\"").unwrap_err().to_string(),
            "config t.toml: key `listen`: invalid value \"localhost\": expected ADDRESS:PORT, e.g. 127.0.0.1:19361 or [::1]:19361"
        );
        assert_eq!(
            parse("log_level = \"loud\"").unwrap_err().to_string(),
            "config t.toml: key `log_level`: invalid value \"loud\": expected one of error, warn, info, debug, trace"
        );
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let e = parse("listen = \n").unwrap_err().to_string();
        assert!(e.starts_with("config t.toml line 1: "), "{e}");
        assert!(!e.contains('\n'));
    }
}
