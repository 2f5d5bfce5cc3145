//! The daemon's log: env_logger on stderr, with the eBPF side's aya-log records
//! forwarded into it.
use std::os::fd::AsRawFd;

/// How log lines are written (`--log.format`, `[log] format`), as the
/// Prometheus exporters write theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `ts=… level=warn source=… msg="…"`.
    #[default]
    Logfmt,
    /// One JSON object per line: `ts`, `level`, `source`, `msg`.
    Json,
}

impl Format {
    pub fn parse(v: &str) -> Option<Format> {
        match v {
            "logfmt" => Some(Format::Logfmt),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Starts the logger on stderr with `level` (the global maximum, so SIGHUP can
/// change it: `set_level`) and `format`.
pub fn init(level: log::LevelFilter, format: Format) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Trace);
    // Under systemd the journal stamps each line itself, and takes each
    // line's priority from a syslog prefix (`<4>` for a warning), so
    // `journalctl -p warning` shows warnings and errors only.
    let journal = stderr_is_journal();
    builder.format(move |buf, record| {
        use std::io::Write;
        let ts = (!journal).then(|| buf.timestamp_millis().to_string());
        let prefix = if journal { format!("<{}>", syslog_priority(record.level())) } else { String::new() };
        writeln!(buf, "{prefix}{}", line(format, ts.as_deref(), record.level(), record.target(), &record.args().to_string()))
    });
    let _ = builder.try_init();
    log::set_max_level(level);
}

/// One log line without its end: logfmt or JSON, with `ts` unless the
/// journal stamps it.
pub fn line(format: Format, ts: Option<&str>, level: log::Level, source: &str, msg: &str) -> String {
    let level = level.as_str().to_ascii_lowercase();
    match format {
        Format::Logfmt => {
            let mut quoted = String::with_capacity(msg.len() + 2);
            quoted.push('"');
            for c in msg.chars() {
                match c {
                    '\\' => quoted.push_str("\\\\"),
                    '"' => quoted.push_str("\\\""),
                    '\n' => quoted.push_str("\\n"),
                    '\r' => quoted.push_str("\\r"),
                    '\t' => quoted.push_str("\\t"),
                    c if c.is_control() => quoted.push_str(&c.escape_unicode().to_string()),
                    c => quoted.push(c),
                }
            }
            quoted.push('"');
            let ts = ts.map(|t| format!("ts={t} ")).unwrap_or_default();
            format!("{ts}level={level} source={source} msg={quoted}")
        }
        Format::Json => {
            let mut o = serde_json::Map::new();
            if let Some(t) = ts {
                o.insert("ts".into(), t.into());
            }
            o.insert("level".into(), level.into());
            o.insert("source".into(), source.into());
            // JSON escapes C0 controls itself; C1 ones (a terminal takes
            // U+009B as CSI) and DEL are escaped here.
            let msg: String = msg
                .chars()
                .map(|c| if c.is_control() && !c.is_ascii_control() || c == '\u{7f}' { c.escape_unicode().to_string() } else { c.to_string() })
                .collect();
            o.insert("msg".into(), msg.into());
            serde_json::Value::Object(o).to_string()
        }
    }
}

/// The syslog priority of a log level (sd-daemon(3): 3 error, 4 warning, 6
/// info, 7 debug).
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` to
/// the stream it connected, which a child that redirected stderr no longer has.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    // SAFETY: fstat fills the struct we pass for descriptor 2.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Changes the level of the running daemon's log.
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Reads aya-log records from the eBPF ring buffer on a thread of their own for
/// the life of the process.
pub fn forward_ebpf_logs<T: log::Log + Send + 'static>(mut logger: aya_log::EbpfLogger<T>) {
    let spawned = std::thread::Builder::new()
        .name("ebpf-log".into())
        .spawn(move || {
            let fd = logger.as_raw_fd();
            loop {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
                if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    log::warn!("eBPF log reader stopped: {}", std::io::Error::last_os_error());
                    return;
                }
                logger.flush();
            }
        });
    if let Err(e) = spawned {
        log::warn!("eBPF log messages will not be shown: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_logfmt_or_json() {
        let msg = "degraded: 7 of 9 probes attached; the rest are reported as mode=\"none\"\nnext";
        assert_eq!(
            line(Format::Logfmt, Some("2026-11-26T08:00:00.000Z"), log::Level::Warn, "remote_vm_daemon::cmd::run", msg),
            "ts=2026-11-26T08:00:00.000Z level=warn source=remote_vm_daemon::cmd::run msg=\"degraded: 7 of 9 probes attached; the rest are reported as mode=\\\"none\\\"\\nnext\""
        );
        assert_eq!(line(Format::Logfmt, None, log::Level::Info, "a", "b"), "level=info source=a msg=\"b\"");
        let json: serde_json::Value = serde_json::from_str(&line(Format::Json, Some("t"), log::Level::Error, "a", msg)).unwrap();
        assert_eq!(json, serde_json::json!({"ts": "t", "level": "error", "source": "a", "msg": msg}));
        let json: serde_json::Value = serde_json::from_str(&line(Format::Json, None, log::Level::Debug, "a", "b")).unwrap();
        assert_eq!(json, serde_json::json!({"level": "debug", "source": "a", "msg": "b"}));
    }

    #[test]
    fn control_characters_in_a_message_are_escaped_in_both_formats() {
        // What a process can name itself (prctl PR_SET_NAME) and then appear
        // in a stall line with: a carriage return, a terminal escape, C1's CSI.
        let msg = "stall: evil\r\u{1b}[2Jlevel=error\u{9b}1m\u{7f} waited";
        let logfmt = line(Format::Logfmt, None, log::Level::Warn, "a", msg);
        assert_eq!(logfmt, "level=warn source=a msg=\"stall: evil\\r\\u{1b}[2Jlevel=error\\u{9b}1m\\u{7f} waited\"");
        let json = line(Format::Json, None, log::Level::Warn, "a", msg);
        for l in [&logfmt, &json] {
            assert!(!l.chars().any(char::is_control), "{l:?}");
        }
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["msg"], "stall: evil\r\u{1b}[2Jlevel=error\\u{9b}1m\\u{7f} waited");
    }

    #[test]
    fn journal_priorities_follow_sd_daemon() {
        use log::Level::*;
        assert_eq!([Error, Warn, Info, Debug, Trace].map(syslog_priority), [3, 4, 6, 7, 7]);
    }
}
