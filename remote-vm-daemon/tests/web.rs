//! `--web.config.file` on the running daemon: TLS with client certificates
//! and basic auth on every path, plain HTTP refused, certificate rotation on
//! SIGHUP with the listener kept, the head deadline and the connection cap
//! applied to handshakes, and bad files refused with one line. Certificates
//! and hashes are made by the tests (`remote_vm_testkit::pki`). The served
//! ones need root and BPF (`cargo xtask test`); the refusals do not.
use std::{
    io::Write,
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

mod common;

use common::{DAEMON, OtherAddress, Running, closed_by_server, connect_from};
use remote_vm_testkit::{
    pki::{self, Ask, KeptAlive, Outcome, Pki},
    prom,
};

const PASSWORD: &str = "correct horse";

/// The test PKI and a web config beside it: TLS, client certificates
/// required from the client CA, user `alice`.
fn setup(name: &str, extra: &str) -> (Pki, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("rvm-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = Pki::write(&dir).unwrap();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let yml = p.path("web.yml");
    std::fs::write(
        &yml,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n{extra}basic_auth_users:\n  alice: '{hash}'\n"
        ),
    )
    .unwrap();
    (p, yml)
}

fn ask<'a>(paths: &'a [std::path::PathBuf; 3], user: Option<(&'a str, &'a str)>) -> Ask<'a> {
    Ask {
        ca: Some(&paths[0]),
        client: Some((&paths[1], &paths[2])),
        user,
    }
}

fn files(p: &Pki) -> [std::path::PathBuf; 3] {
    [p.path("server-ca.crt"), p.path("client.crt"), p.path("client.key")]
}

fn start(name: &str, config: &str, yml: &Path, p: &Pki) -> Running {
    let mut d = Running::spawn(name, config, &[], &["--web.config.file", yml.to_str().unwrap()]);
    let f = files(p);
    let a = ask(&f, Some(("alice", PASSWORD)));
    d.wait_ready(|addr| matches!(pki::get(addr, "/healthz", &a), Ok((Outcome::Answer(200, _), _))));
    d
}

fn status(addr: &str, path: &str, a: &Ask) -> Outcome {
    pki::get(addr, path, a).unwrap().0
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn tls_client_certificates_and_basic_auth_guard_every_path() {
    let (p, yml) = setup("guard", "");
    let d = start("guard", "", &yml, &p);
    let f = files(&p);
    for path in ["/metrics", "/healthz", "/stalls", "/"] {
        match status(&d.addr, path, &ask(&f, Some(("alice", PASSWORD)))) {
            Outcome::Answer(200, body) => {
                if path == "/metrics" {
                    assert!(body.contains(remote_vm_common::catalog::BUILD_INFO.name), "{body}");
                }
            }
            other => panic!("{path}: {other:?}"),
        }
        for user in [Some(("alice", "wrong")), Some(("mallory", PASSWORD)), None] {
            match status(&d.addr, path, &ask(&f, user)) {
                Outcome::Answer(401, _) => {}
                other => panic!("{path} as {user:?}: {other:?}"),
            }
        }
    }
    // Without a client certificate, and with one from another CA: no handshake.
    let no_cert = Ask { client: None, ..ask(&f, Some(("alice", PASSWORD))) };
    assert!(matches!(status(&d.addr, "/metrics", &no_cert), Outcome::Refused(_)));
    let (sc, sk) = (p.path("stranger.crt"), p.path("stranger.key"));
    let stranger = Ask { client: Some((&sc, &sk)), ..ask(&f, Some(("alice", PASSWORD))) };
    assert!(matches!(status(&d.addr, "/metrics", &stranger), Outcome::Refused(_)));
    // Plain HTTP to the TLS port: 400 saying why.
    let (code, body) = prom::get(&d.addr, "/metrics").unwrap();
    assert_eq!((code, body.as_str()), (400, "Client sent an HTTP request to an HTTPS server.\n"));
    // The served certificate is the configured one.
    let (_, cert) = pki::get(&d.addr, "/healthz", &ask(&f, Some(("alice", PASSWORD)))).unwrap();
    assert_eq!(cert.unwrap(), pki::cert_der(&p.path("server.crt")).unwrap());
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "serving https://{}/metrics, unix:{} (TLS, client certificates RequireAndVerifyClientCert (1 CA), basic auth (1 users))",
            d.addr,
            d.socket.display()
        )),
        "{log}"
    );
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn sighup_rotates_the_certificate_and_keeps_the_listener() {
    let (p, yml) = setup("rotate", "");
    let d = start("rotate", "", &yml, &p);
    let f = files(&p);
    let a = ask(&f, Some(("alice", PASSWORD)));
    let served = || pki::get(&d.addr, "/healthz", &a).map(|(o, c)| (o, c.unwrap_or_default()));
    assert_eq!(served().unwrap().1, pki::cert_der(&p.path("server.crt")).unwrap());
    // A client connected before the rotation and idle through it.
    let idle = TcpStream::connect(&d.addr).unwrap();
    // Rotation as certbot does it: new files at the same paths, then SIGHUP.
    std::fs::copy(p.path("rotated.crt"), p.path("server.crt")).unwrap();
    std::fs::copy(p.path("rotated.key"), p.path("server.key")).unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(Duration::from_secs(5), "SIGHUP: web config re-read: TLS"), "{}", d.log_text());
    // The rotated certificate is served (a client trusting only its CA
    // connects), by the same process on the same listener.
    let rotated_ca = p.path("rotated-ca.crt");
    let trusting_rotated = Ask { ca: Some(&rotated_ca), ..a.clone() };
    let (o, cert) = pki::get(&d.addr, "/healthz", &trusting_rotated).unwrap();
    assert!(matches!(o, Outcome::Answer(200, _)), "{o:?}");
    assert_eq!(cert.unwrap(), pki::cert_der(&p.path("rotated.crt")).unwrap());
    assert!(matches!(served().unwrap().0, Outcome::Refused(_)), "the old CA no longer verifies");
    drop(idle);
    // A broken file on the next SIGHUP: logged, the rotated one stays.
    std::fs::write(p.path("server.key"), "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(Duration::from_secs(5), "SIGHUP: web config not reloaded, the running one stays: web config"), "{}", d.log_text());
    let (o, cert) = pki::get(&d.addr, "/healthz", &trusting_rotated).unwrap();
    assert!(matches!(o, Outcome::Answer(200, _)), "{o:?}");
    assert_eq!(cert.unwrap(), pki::cert_der(&p.path("rotated.crt")).unwrap());
    // Users change on SIGHUP too, for connections already open as well.
    std::fs::copy(p.path("rotated.key"), p.path("server.key")).unwrap();
    let yml_text = std::fs::read_to_string(&yml).unwrap();
    let bob = format!("  bob: '{}'\n", bcrypt::hash("bobs", 4).unwrap());
    std::fs::write(&yml, format!("{yml_text}{bob}")).unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(Duration::from_secs(5), "basic auth (2 users) from the next connection"), "{}", d.log_text());
    let as_bob = Ask { user: Some(("bob", "bobs")), ..trusting_rotated.clone() };
    assert!(matches!(status(&d.addr, "/metrics", &as_bob), Outcome::Answer(200, _)));
    // A reload that drops TLS and users is not quiet about it.
    std::fs::write(&yml, "").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(Duration::from_secs(5), "SIGHUP: the web config has no TLS now: plain HTTP from the next connection"), "{}", d.log_text());
    assert!(d.log_text().contains("SIGHUP: the web config has no basic_auth_users now"), "{}", d.log_text());
    assert!(matches!(prom::get(&d.addr, "/healthz"), Ok((200, _))));
    assert_eq!(d.stop(), 0, "the same process served throughout");
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn the_head_deadline_and_the_connection_cap_apply_to_handshakes() {
    let (p, yml) = setup("limits", "");
    let d = start("limits", "[web]\nmax_connections = 2\nheader_timeout_seconds = 1\n", &yml, &p);
    let f = files(&p);
    // A client that connects and never starts its handshake is closed at the deadline.
    let mut silent = TcpStream::connect(&d.addr).unwrap();
    let t = Instant::now();
    assert!(closed_by_server(&mut silent, Duration::from_secs(5)));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // Two silent clients fill the cap; a real scrape still gets in (the
    // oldest without a request makes room), twice.
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&d.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..2 {
        assert!(matches!(status(&d.addr, "/metrics", &ask(&f, Some(("alice", PASSWORD)))), Outcome::Answer(200, _)));
    }
    assert!(closed_by_server(&mut held[0], Duration::from_millis(500)), "the oldest silent client was not closed");
    assert!(d.wait_log(Duration::from_secs(2), "without a request in progress"), "{}", d.log_text());
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "needs root, BPF and iproute2; run by cargo xtask test"]
fn handshakes_run_on_their_own_thread_and_a_local_flood_does_not_evict_a_remote_tls_scraper() {
    let (p, yml) = setup("fair", "");
    let d = start("fair", "[web]\nmax_connections = 8\nheader_timeout_seconds = 30\n", &yml, &p);
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(threads.iter().any(|c| c == "tls-handshakes"), "{threads:?}");
    let f = files(&p);
    // The scraper, from another address, keeps its connection between scrapes.
    let other = OtherAddress::add(21);
    let mut scraper = KeptAlive::new(connect_from(other.0, &d.addr), &ask(&f, Some(("alice", PASSWORD)))).unwrap();
    assert_eq!(scraper.get("/metrics").unwrap(), 200);
    // 300 local connections that start a handshake and stall in it.
    let mut flood: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(&d.addr).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x00]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(scraper.get("/metrics").unwrap(), 200, "the scraper's connection was evicted");
    let open = flood.iter_mut().map(|s| closed_by_server(s, Duration::from_millis(1))).filter(|closed| !closed).count();
    assert_eq!(open, remote_vm_daemon::server::conns::Table::per_peer_for(8));
    assert_eq!(d.stop(), 0);
}

/// `run` and `check` with `yml`: exit 1, and the one stderr line.
fn refused(args: &[&str], yml: &Path) -> String {
    let out = Command::new(DAEMON)
        .args(args)
        .args(["--web.config.file", yml.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end().to_string()
}

#[test]
fn a_bad_web_config_is_one_line_and_exit_1_before_anything_runs() {
    let (p, yml) = setup("bad", "");
    let name = yml.display();
    let cases: Vec<(String, String)> = vec![
        ("tls_server_config:\n  cert_file: none.crt\n  key_file: server.key\n".into(), format!("tls_server_config.cert_file {}: cannot read: ", p.path("none.crt").display())),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: rotated.key\n".into(), format!("tls_server_config.key_file {} is not the key of", p.path("rotated.key").display())),
        ("basic_auth_users:\n  alice: hunter2\n".into(), "basic_auth_users.alice: not a bcrypt hash".into()),
        ("tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(), format!("tls_server_config.cert_file {}: no PEM certificate", p.path("server.key").display())),
    ];
    for (text, want) in cases {
        std::fs::write(&yml, &text).unwrap();
        for cmd in [&["run", "--listen", "127.0.0.1:1"][..], &["check"]] {
            let line = refused(cmd, &yml);
            assert!(line.starts_with(&format!("remote-vm-daemon: web config {name}: {want}")), "{cmd:?} {text}: {line}");
        }
    }
    let missing = p.path("absent.yml");
    let line = refused(&["check"], &missing);
    assert!(line.starts_with(&format!("remote-vm-daemon: web config {}: cannot read: ", missing.display())), "{line}");
}

/// `GET path` over plain HTTP with basic auth: the status.
fn plain_get(addr: &str, path: &str, user: &str, password: &str) -> u16 {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut s, &mut got).unwrap();
    got.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn a_reload_keeps_verified_passwords_of_users_whose_hash_did_not_change() {
    // 1360921 started every reload with an empty cache: one bcrypt per user
    // after each `systemctl reload`.
    let (p, _) = setup("keep", "");
    let yml = p.path("auth.yml");
    let (alice, bob) = (bcrypt::hash(PASSWORD, 4).unwrap(), bcrypt::hash("bob's", 4).unwrap());
    std::fs::write(&yml, format!("basic_auth_users:\n  alice: '{alice}'\n")).unwrap();
    let mut d = Running::spawn("keep", "log_level = \"debug\"\n", &[], &["--web.config.file", yml.to_str().unwrap()]);
    d.wait_ready(|addr| plain_get(addr, "/healthz", "alice", PASSWORD) == 200);
    let checks = |d: &Running| d.log_text().matches("basic auth: bcrypt check for user alice").count();
    assert_eq!(checks(&d), 1);
    assert_eq!(plain_get(&d.addr, "/metrics", "alice", PASSWORD), 200);
    assert_eq!(checks(&d), 1, "the second request was checked again");
    let reload = |d: &Running, n: usize| {
        d.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.log_text().matches("SIGHUP: web config re-read").count() < n {
            assert!(Instant::now() < deadline, "no reload {n}: {}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The same file, then another user added: alice stays verified.
    reload(&d, 1);
    assert_eq!(plain_get(&d.addr, "/metrics", "alice", PASSWORD), 200);
    std::fs::write(&yml, format!("basic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")).unwrap();
    reload(&d, 2);
    assert_eq!(plain_get(&d.addr, "/metrics", "alice", PASSWORD), 200);
    assert_eq!(checks(&d), 1, "{}", d.log_text());
    // A new password: the old one is checked (and refused), then the new one.
    let alice2 = bcrypt::hash("new password", 4).unwrap();
    std::fs::write(&yml, format!("basic_auth_users:\n  alice: '{alice2}'\n")).unwrap();
    reload(&d, 3);
    assert_eq!(plain_get(&d.addr, "/metrics", "alice", PASSWORD), 401);
    assert_eq!(plain_get(&d.addr, "/metrics", "alice", "new password"), 200);
    assert_eq!(checks(&d), 3);
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn a_reload_that_tightens_tls_closes_the_connections_opened_before() {
    let (p, yml) = setup("tighten", "");
    let f = files(&p);
    std::fs::write(&yml, "").unwrap();
    let mut d = Running::spawn("tighten", "", &[], &["--web.config.file", yml.to_str().unwrap()]);
    d.wait_ready(common::healthz_ok);
    // A plain keep-alive connection, then TLS on.
    let mut plain = TcpStream::connect(&d.addr).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&yml, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(Duration::from_secs(5), "asks more of clients now: closed the 1 connections"), "{}", d.log_text());
    assert!(closed_by_server(&mut plain, Duration::from_secs(2)));
    // A TLS connection without a client certificate, then certificates required.
    let no_cert = Ask { ca: Some(&f[0]), client: None, user: None };
    let mut tls = KeptAlive::new(TcpStream::connect(&d.addr).unwrap(), &no_cert).unwrap();
    assert_eq!(tls.get("/healthz").unwrap(), 200);
    // A rotation asks nothing more: the connection stays.
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(Duration::from_secs(5), "SIGHUP: web config re-read: TLS, no authentication"), "{}", d.log_text());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tls.get("/healthz").unwrap(), 200);
    std::fs::write(
        &yml,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log(Duration::from_secs(5), "RequireAndVerifyClientCert (1 CA), no authentication from the next connection"), "{}", d.log_text());
    std::thread::sleep(Duration::from_millis(300));
    assert!(tls.get("/healthz").is_err(), "a connection without a client certificate stayed open");
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn a_flood_of_wrong_passwords_is_answered_429_past_a_few_and_a_verified_scraper_gets_in() {
    // bcrypt at cost 10: tens of milliseconds a check, one at a time.
    let (p, yml) = setup("flood", "");
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    std::fs::write(
        &yml,
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{hash}'\n"),
    )
    .unwrap();
    let f = files(&p);
    let alice = Ask { ca: Some(&f[0]), client: None, user: Some(("alice", PASSWORD)) };
    let mut d = Running::spawn("pwflood", "[web]\nmax_connections = 200\n", &[], &["--web.config.file", yml.to_str().unwrap()]);
    d.wait_ready(|addr| matches!(pki::get(addr, "/healthz", &alice), Ok((Outcome::Answer(200, _), _))));
    let mut scraper = KeptAlive::new(TcpStream::connect(&d.addr).unwrap(), &alice).unwrap();
    assert_eq!(scraper.get("/metrics").unwrap(), 200);
    let addr = d.addr.clone();
    let flood: Vec<_> = (0..48)
        .map(|i| {
            let (addr, ca) = (addr.clone(), f[0].clone());
            std::thread::spawn(move || {
                let guess = format!("guess {i}");
                let ask = Ask { ca: Some(&ca), client: None, user: Some(("alice", &guess)) };
                match pki::get(&addr, "/metrics", &ask) {
                    Ok((Outcome::Answer(status, _), _)) => status,
                    _ => 0,
                }
            })
        })
        .collect();
    // During the flood the verified scraper is answered from the cache.
    let t = Instant::now();
    assert_eq!(scraper.get("/metrics").unwrap(), 200);
    println!("a verified scrape during 48 wrong passwords: {:?}", t.elapsed());
    let statuses: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    assert_eq!(count(401) + count(429), 48, "{statuses:?}");
    assert!(count(429) > 0, "no 429 with 48 wrong passwords at once: {statuses:?}");
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn a_verified_client_certificate_authenticates_for_stalls_and_top_shows_them_over_tls() {
    // Client certificates if given, no basic auth: the certificate alone decides.
    let (p, yml) = setup("certonly", "");
    std::fs::write(
        &yml,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: client-ca.crt\n",
    )
    .unwrap();
    let f = files(&p);
    let with_cert = ask(&f, None);
    let without = Ask { ca: Some(&f[0]), client: None, user: None };
    let mut d = Running::spawn("certonly", "", &[], &["--web.config.file", yml.to_str().unwrap()]);
    d.wait_ready(|addr| matches!(pki::get(addr, "/healthz", &without), Ok((Outcome::Answer(200, _), _))));
    assert!(matches!(status(&d.addr, "/stalls", &with_cert), Outcome::Answer(200, _)));
    assert!(matches!(status(&d.addr, "/stalls", &without), Outcome::Answer(403, _)));
    assert!(matches!(status(&d.addr, "/metrics", &without), Outcome::Answer(200, _)));
    // top: --ca-file, --cert-file, --key-file over https.
    let port = d.addr.rsplit_once(':').unwrap().1;
    let out = Command::new(DAEMON)
        .args(["top", "--once", "--interval", "0.2", "--url", &format!("https://localhost:{port}"), "--ca-file"])
        .arg(&f[0])
        .arg("--cert-file")
        .arg(&f[1])
        .arg("--key-file")
        .arg(&f[2])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}{}", String::from_utf8_lossy(&out.stderr));
    assert!(screen.contains("recent stalls (≥ 100.0 ms)"), "{screen}");
    // Without the certificate: the metrics, and the stalls not served to it.
    let out = Command::new(DAEMON)
        .args(["top", "--once", "--interval", "0.2", "--url", &format!("https://localhost:{port}"), "--ca-file"])
        .arg(&f[0])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("recent stalls: not served to this client"), "{screen}");
    assert_eq!(d.stop(), 0);
}
