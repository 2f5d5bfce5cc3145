//! The daemon's log: env_logger on stderr, with the eBPF side's aya-log records
//! forwarded into it.
use std::os::fd::AsRawFd;

/// Starts the logger. `level` comes from `--log-level`, else `REMOTE_VM_LOG`, else
/// the config; `RUST_LOG`-style module filters in `REMOTE_VM_LOG` are honoured.
pub fn init(level: log::LevelFilter) {
    let mut builder = env_logger::Builder::new();
    // Everything passes the logger's own filter; the level is the global
    // maximum, so SIGHUP can change it (`set_level`).
    builder.filter_level(log::LevelFilter::Trace);
    // Under systemd the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format_timestamp(None);
    } else {
        builder.format_timestamp_millis();
    }
    let _ = builder.try_init();
    log::set_max_level(level);
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
