//! The endpoint over TLS with basic auth, as a fleet uses it: certificates made
//! with the `openssl` command line (an RSA key in PKCS#1, an EC key in SEC1:
//! the formats people have), a password hashed with `htpasswd`, the host
//! daemon serving with that web config, checked with `curl` and scraped by
//! Debian's Prometheus (`scheme: https`, `tls_config`, `basic_auth`). The
//! same files go into the systemd VM (`LoadCredential=`, `systemd.rs`).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    promtest::{Guard, http_get, query, start_prometheus},
    util::{say, sh, sh_output},
};

const DAEMON_PORT: u16 = 19414;
const PROMETHEUS_PORT: u16 = 19491;
/// The scraper's account in the test web config.
pub const USER: &str = "prometheus";
pub const PASSWORD: &str = "scrape me, not them";

/// A CA (`ca.crt`), a server certificate for `localhost`/127.0.0.1
/// (`tls.crt`, `tls.key`), a client CA (`client-ca.crt`) and a client
/// certificate (`client.crt`, `client.key`), and `web-config.yml` naming the
/// server's files (relative paths, as the shipped `tls.conf` expects them)
/// with client certificates required and `USER`'s bcrypt hash.
pub fn write_pki(dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let openssl = |args: &[&str]| sh(Command::new("openssl").args(args).current_dir(dir).stderr(Stdio::null()));
    for ca in ["ca", "client-ca"] {
        openssl(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.crt"), "-days", "2", "-subj", &format!("/CN=remote-vm test {ca}")])?;
    }
    // The server's key as PKCS#1 ("BEGIN RSA PRIVATE KEY"), the client's as SEC1.
    // The server's files are named as in the shipped examples (tls.conf).
    openssl(&["genrsa", "-traditional", "-out", "tls.key", "2048"])?;
    openssl(&["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "client.key"])?;
    std::fs::write(dir.join("tls.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (leaf, ca, cn) in [("tls", "ca", "localhost"), ("client", "client-ca", "prometheus")] {
        openssl(&["req", "-new", "-key", &format!("{leaf}.key"), "-out", &format!("{leaf}.csr"), "-subj", &format!("/CN={cn}")])?;
        openssl(&[
            "x509", "-req", "-in", &format!("{leaf}.csr"), "-CA", &format!("{ca}.crt"), "-CAkey", &format!("{ca}.key"), "-CAcreateserial",
            "-out", &format!("{leaf}.crt"), "-days", "2", "-extfile", &format!("{leaf}.ext"),
        ])?;
    }
    let htpasswd = sh_output(Command::new("htpasswd").args(["-nbBC", "10", "", PASSWORD]))?;
    let hash = htpasswd.trim().trim_start_matches(':').to_string();
    if !hash.starts_with("$2") {
        bail!("htpasswd gave no bcrypt hash: {htpasswd:?}");
    }
    let yml = dir.join("web-config.yml");
    std::fs::write(
        &yml,
        format!(
            "# remote-vm test web config (exporter-toolkit's format)\ntls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\nbasic_auth_users:\n  {USER}: '{hash}'\n"
        ),
    )?;
    Ok(yml)
}

/// `curl` against the daemon: the HTTP status, or `000` when there was none.
fn curl(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .args(args)
        .current_dir(dir)
        .output()
        .context("run curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn test(root: &Path) -> Result<()> {
    let dir = root.join("target/web-test");
    let yml = write_pki(&dir)?;
    say!("web: the host daemon with --web.config.file {} (TLS, client certificates required, basic auth)", yml.display());
    let _daemon = Guard(
        Command::new(root.join("target/release/remote-vm-daemon"))
            .args(["run", "--web.listen-address", &format!("127.0.0.1:{DAEMON_PORT}"), "--log.level", "info", "--web.socket", "", "--web.config.file"])
            .arg(&yml)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log"))?)
            .spawn()
            .context("start the daemon")?,
    );
    let url = |path: &str| format!("https://localhost:{DAEMON_PORT}{path}");
    let full = ["--cacert", "ca.crt", "--cert", "client.crt", "--key", "client.key"];
    let user = format!("{USER}:{PASSWORD}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&dir, &[&full[..], &["-u", &user, &url("/healthz")]].concat())? != "200" {
        if Instant::now() > deadline {
            bail!("the daemon did not serve over TLS within 60 s; see {}", dir.join("daemon.log").display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut failures = Vec::new();
    let mut expect = |what: &str, got: String, want: &str| {
        say!("web: curl {what}: {got}");
        if got != want {
            failures.push(format!("curl {what}: got {got}, want {want}"));
        }
    };
    for path in ["/metrics", "/healthz", "/stalls", "/"] {
        expect(&format!("{path} with certificate and password"), curl(&dir, &[&full[..], &["-u", &user, &url(path)]].concat())?, "200");
        expect(&format!("{path} with a wrong password"), curl(&dir, &[&full[..], &["-u", &format!("{USER}:guess"), &url(path)]].concat())?, "401");
        expect(&format!("{path} without a password"), curl(&dir, &[&full[..], &[url(path).as_str()]].concat())?, "401");
    }
    expect("without a client certificate", curl(&dir, &["--cacert", "ca.crt", "-u", &user, &url("/metrics")])?, "000");
    expect("plain http", curl(&dir, &["-u", &user, &format!("http://127.0.0.1:{DAEMON_PORT}/metrics")])?, "400");
    expect("trusting no CA of ours", curl(&dir, &["--cert", "client.crt", "--key", "client.key", "-u", &user, &url("/metrics")])?, "000");

    // Prometheus: the right scrape config scrapes; each wrong one fails, saying why.
    let tls = |cert: bool| {
        let client = if cert { format!("\n      cert_file: {0}/client.crt\n      key_file: {0}/client.key", dir.display()) } else { String::new() };
        format!("    scheme: https\n    tls_config:\n      ca_file: {}/ca.crt\n      server_name: localhost{client}\n", dir.display())
    };
    let auth = |p: &str| format!("    basic_auth:\n      username: {USER}\n      password: '{p}'\n");
    let job = |name: &str, body: String| format!("  - job_name: {name}\n{body}    static_configs:\n      - targets: ['127.0.0.1:{DAEMON_PORT}']\n");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}{}{}",
        job("tls", tls(true) + &auth(PASSWORD)),
        job("wrong-password", tls(true) + &auth("guess")),
        job("no-client-cert", tls(false) + &auth(PASSWORD)),
        job("plain-http", auth(PASSWORD)),
    );
    std::fs::write(dir.join("prometheus.yml"), &config)?;
    sh(Command::new("promtool").args(["check", "config", "--syntax-only"]).arg(dir.join("prometheus.yml")).stdout(Stdio::null()))?;
    say!("web: Prometheus on 127.0.0.1:{PROMETHEUS_PORT}: jobs tls, wrong-password, no-client-cert, plain-http");
    let _prometheus = start_prometheus(&dir, PROMETHEUS_PORT)?;
    // Every target scraped at least twice (health known, the second scrape
    // the same), then the verdicts.
    let deadline = Instant::now() + Duration::from_secs(90);
    let targets = loop {
        let t: Option<Vec<Value>> = http_get(PROMETHEUS_PORT, "/api/v1/targets?state=active")
            .ok()
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned());
        if let Some(t) = t
            && t.len() == 4
            && t.iter().all(|t| t["health"] != "unknown")
        {
            std::thread::sleep(Duration::from_secs(3));
            if let Some(t) = http_get(PROMETHEUS_PORT, "/api/v1/targets?state=active")
                .ok()
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            {
                break t;
            }
        }
        if Instant::now() > deadline {
            bail!("Prometheus did not scrape all 4 jobs within 90 s; see {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut verdict = |job: &str, health: &str, error_has: &str| {
        let Some(t) = targets.iter().find(|t| t["labels"]["job"] == job) else {
            failures.push(format!("Prometheus has no target for job {job}"));
            return;
        };
        let err = t["lastError"].as_str().unwrap_or("");
        say!("web: Prometheus job {job}: health {}, lastError {err:?}", t["health"]);
        if t["health"] != health || !err.contains(error_has) {
            failures.push(format!("job {job}: health {} lastError {err:?}; want {health} with {error_has:?}", t["health"]));
        }
    };
    verdict("tls", "up", "");
    verdict("wrong-password", "down", "401 Unauthorized");
    verdict("no-client-cert", "down", "certificate required");
    verdict("plain-http", "down", "400 Bad Request");
    let series = query(PROMETHEUS_PORT, &format!("{}{{job=\"tls\"}}", remote_vm_common::catalog::BUILD_INFO.name))?;
    say!("web: Prometheus has {} {} series from the TLS job", series.len(), remote_vm_common::catalog::BUILD_INFO.name);
    if series.len() != 1 {
        failures.push(format!("{} series of {} from job tls, want 1", series.len(), remote_vm_common::catalog::BUILD_INFO.name));
    }
    if !failures.is_empty() {
        for f in &failures {
            say!("web: FAIL {f}");
        }
        bail!("{} TLS/basic auth checks failed (files and logs in {})", failures.len(), dir.display());
    }
    say!("web: TLS with client certificates and basic auth: curl and Prometheus get in only with both");
    Ok(())
}
