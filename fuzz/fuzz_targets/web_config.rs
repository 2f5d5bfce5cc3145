//! A web config file's text (`--web.config.file`: exporter-toolkit's YAML), as
//! the daemon reads it at start-up and on SIGHUP. Files it names are looked
//! for in a directory that does not exist; inline `cert`/`key`/`client_ca`
//! PEM is parsed as given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use remote_vm_daemon::webconfig::Security;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Security::from_text(text, std::path::Path::new("/nonexistent/remote-vm-fuzz")) {
        Ok(s) => assert!(!s.summary.is_empty()),
        // One line.
        Err(e) => assert!(!e.contains('\n'), "{e}"),
    }
});
