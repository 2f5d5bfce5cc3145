//! A config file's text over the embedded defaults, as `--config` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use remote_vm_daemon::config::Config;

fuzz_target!(|data: &[u8]| {
    // `load` reads the file as UTF-8 text; anything else it refuses unparsed.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_text("fuzz.toml", text) {
        Ok(config) => {
            // Reloading (SIGHUP) compares it with the running config.
            let _ = Config::defaults().restart_only_changes(&config);
        }
        // One line that names the file.
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("fuzz.toml") && !e.contains('\n'), "{e}");
        }
    }
});
