//! The web config file against certificates and hashes made here.
use super::*;

use remote_vm_testkit::pki::Pki;

/// Every check here comes from this host, but where a test says otherwise.
const LOCAL: Peer = Peer::Loopback;

/// A fresh directory with the test PKI in it.
fn pki(name: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("rvm-webconfig-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Pki::write(&dir).unwrap()
}

/// `text` as `web.yml` in the PKI's directory, loaded.
fn load(p: &Pki, text: &str) -> Result<Security, WebConfigError> {
    let path = p.path("web.yml");
    std::fs::write(&path, text).unwrap();
    Security::load(Some(&path))
}

/// The error's message, asserting it is one line naming the file.
fn error(p: &Pki, text: &str) -> String {
    let e = load(p, text).err().unwrap_or_else(|| panic!("accepted: {text}"));
    let line = e.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.starts_with(&format!("web config {}: ", p.path("web.yml").display())), "{line}");
    e.message
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[test]
fn no_file_and_an_empty_file_are_plain_http() {
    let s = Security::load(None).unwrap();
    assert!(s.tls.is_none() && s.auth.is_none());
    let p = pki("empty");
    let s = load(&p, "").unwrap();
    assert!(s.tls.is_none() && s.auth.is_none());
    assert_eq!(s.summary, "plain HTTP, no authentication");
}

#[test]
fn relative_paths_are_taken_from_the_file_s_directory() {
    let p = pki("relative");
    let s = load(&p, TLS).unwrap();
    assert!(s.tls.is_some());
    assert_eq!(s.summary, "TLS, no authentication");
    // Absolute paths too, and inline PEM.
    let abs = format!("tls_server_config:\n  cert_file: {}\n  key_file: {}\n", p.path("server.crt").display(), p.path("server.key").display());
    assert!(load(&p, &abs).unwrap().tls.is_some());
    let cert = std::fs::read_to_string(p.path("server.crt")).unwrap();
    let inline = format!("tls_server_config:\n  cert: |\n{}  key_file: server.key\n", cert.lines().map(|l| format!("    {l}\n")).collect::<String>());
    assert!(load(&p, &inline).unwrap().tls.is_some());
}

#[test]
fn client_certificates_are_verified_against_the_client_ca() {
    let p = pki("clientca");
    for (auth, said) in [("RequireAndVerifyClientCert", "RequireAndVerifyClientCert"), ("VerifyClientCertIfGiven", "VerifyClientCertIfGiven")] {
        let s = load(&p, &format!("{TLS}  client_auth_type: {auth}\n  client_ca_file: client-ca.crt\n")).unwrap();
        assert_eq!(s.summary, format!("TLS, client certificates {said} (1 CA), no authentication"));
    }
    assert_eq!(
        error(&p, &format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n")),
        "tls_server_config.client_auth_type RequireAndVerifyClientCert needs client_ca_file (or client_ca)"
    );
    assert!(error(&p, &format!("{TLS}  client_ca_file: client-ca.crt\n")).starts_with("tls_server_config: client_ca set without a client_auth_type"));
    assert_eq!(
        error(&p, &format!("{TLS}  client_auth_type: Sometimes\n")),
        format!("tls_server_config.client_auth_type: invalid value \"Sometimes\": expected {CLIENT_AUTH_ALLOWED}")
    );
    assert!(error(&p, &format!("{TLS}  client_auth_type: RequireAnyClientCert\n")).contains("not supported by remote-vm"));
    // A client CA file with no certificate in it.
    std::fs::write(p.path("empty-ca.crt"), "nothing\n").unwrap();
    assert_eq!(
        error(&p, &format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: empty-ca.crt\n")),
        format!("tls_server_config.client_ca_file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", p.path("empty-ca.crt").display())
    );
}

#[test]
fn a_bad_certificate_or_key_is_one_line_naming_it() {
    let p = pki("badcert");
    assert_eq!(error(&p, "tls_server_config:\n  cert_file: server.crt\n"), "tls_server_config: missing one of key or key_file");
    assert_eq!(error(&p, "tls_server_config:\n  key_file: server.key\n"), "tls_server_config: missing one of cert or cert_file");
    let missing = error(&p, "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n");
    assert!(missing.starts_with(&format!("tls_server_config.cert_file {}: cannot read: ", p.path("nope.crt").display())), "{missing}");
    std::fs::write(p.path("junk.pem"), "not a certificate\n").unwrap();
    assert_eq!(
        error(&p, "tls_server_config:\n  cert_file: junk.pem\n  key_file: server.key\n"),
        format!("tls_server_config.cert_file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", p.path("junk.pem").display())
    );
    let nokey = error(&p, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n");
    assert!(nokey.starts_with(&format!("tls_server_config.key_file {}: no PEM private key in it", p.path("server.crt").display())), "{nokey}");
    // The key of another certificate.
    assert_eq!(
        error(&p, "tls_server_config:\n  cert_file: server.crt\n  key_file: rotated.key\n"),
        format!(
            "tls_server_config.key_file {} is not the key of tls_server_config.cert_file {}",
            p.path("rotated.key").display(),
            p.path("server.crt").display()
        )
    );
    assert_eq!(
        error(&p, "tls_server_config:\n  cert: x\n  cert_file: server.crt\n  key_file: server.key\n"),
        "tls_server_config: both cert and cert_file: give one"
    );
}

#[test]
fn versions_suites_and_curves_follow_exporter_toolkit_names() {
    let p = pki("versions");
    let versions = |s: &Security| {
        let c = s.tls.as_ref().unwrap();
        (c.crypto_provider().cipher_suites.iter().filter(|s| s.tls13().is_none()).count(), c.crypto_provider().kx_groups.len())
    };
    let s = load(&p, &format!("{TLS}  min_version: TLS13\n")).unwrap();
    assert!(s.tls.is_some());
    let s = load(&p, &format!("{TLS}  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]\n  curve_preferences: [CurveP256]\n")).unwrap();
    assert_eq!(versions(&s), (2, 1));
    assert!(error(&p, &format!("{TLS}  min_version: TLS10\n")).contains("not supported by remote-vm"));
    assert_eq!(error(&p, &format!("{TLS}  min_version: SSL3\n")), "tls_server_config.min_version: invalid value \"SSL3\": expected TLS12 or TLS13");
    assert_eq!(error(&p, &format!("{TLS}  min_version: TLS13\n  max_version: TLS12\n")), "tls_server_config: min_version above max_version");
    assert!(error(&p, &format!("{TLS}  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n")).starts_with("tls_server_config.cipher_suites: \"TLS_RSA_WITH_RC4_128_SHA\" is not one of"));
    // As in Go: an empty list is the default, TLS 1.3 names are taken and ignored.
    let all = versions(&load(&p, TLS).unwrap());
    assert_eq!(versions(&load(&p, &format!("{TLS}  cipher_suites: []\n")).unwrap()), all);
    let s = load(&p, &format!("{TLS}  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n")).unwrap();
    assert_eq!(versions(&s).0, 1);
    assert!(error(&p, &format!("{TLS}  curve_preferences: [CurveP521]\n")).starts_with("tls_server_config.curve_preferences: \"CurveP521\""));
    assert!(error(&p, &format!("{TLS}  client_allowed_sans: [a.example]\n")).contains("not supported by remote-vm"));
}

#[test]
fn unknown_keys_bad_yaml_and_unsupported_sections_are_refused() {
    let p = pki("keys");
    let unknown = error(&p, "tls_server_config:\n  certfile: server.crt\n");
    assert!(unknown.contains("certfile"), "{unknown}");
    let top = error(&p, "basic_auth:\n  a: b\n");
    assert!(top.contains("basic_auth"), "{top}");
    error(&p, "tls_server_config: [\n");
    assert!(error(&p, "rate_limit:\n  burst: 10\n  interval: 1s\n").starts_with("rate_limit: not supported by remote-vm"));
    assert_eq!(
        error(&p, "http_server_config:\n  headers:\n    X-Frame-Options: allow\n"),
        "http_server_config.headers.X-Frame-Options: invalid value \"allow\": expected one of deny, sameorigin"
    );
    assert!(error(&p, "http_server_config:\n  headers:\n    Server: x\n").starts_with("http_server_config.headers: \"Server\" cannot be set"));
    let s = load(&p, "http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n").unwrap();
    assert_eq!(s.headers.len(), 2);
    // Bounded: a file above 1 MiB is not read.
    let big = format!("# {}\n", "x".repeat(1 << 20));
    assert!(error(&p, &big).starts_with("cannot read: larger than"));
    // A billion laughs is refused by the parser's budget, quickly.
    let mut laughs = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..10 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        laughs.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let t = std::time::Instant::now();
    let _ = load(&p, &format!("basic_auth_users:\n  x: y\n{laughs}"));
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

fn basic(user: &str, pass: &str) -> hyper::header::HeaderValue {
    use base64::Engine;
    hyper::header::HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))).unwrap()
}

#[tokio::test]
async fn basic_auth_takes_the_right_password_only() {
    let p = pki("auth");
    let hash = bcrypt::hash("s3cret:with colon", 4).unwrap();
    let s = load(&p, &format!("basic_auth_users:\n  alice: '{hash}'\n  bob: '{}'\n", bcrypt::hash("other", 4).unwrap())).unwrap();
    assert_eq!(s.summary, "plain HTTP, basic auth (2 users)");
    let auth = s.auth.unwrap();
    assert_eq!(auth.allows(Some(&basic("alice", "s3cret:with colon")), LOCAL).await, Verdict::In);
    // Again, from the cache.
    assert_eq!(auth.allows(Some(&basic("alice", "s3cret:with colon")), LOCAL).await, Verdict::In);
    assert_eq!(auth.allows(Some(&basic("alice", "s3cret")), LOCAL).await, Verdict::Out);
    assert_eq!(auth.allows(Some(&basic("bob", "s3cret:with colon")), LOCAL).await, Verdict::Out);
    assert_eq!(auth.allows(Some(&basic("carol", "s3cret:with colon")), LOCAL).await, Verdict::Out);
    assert_eq!(auth.allows(None, LOCAL).await, Verdict::Out);
    for junk in ["Bearer abc", "Basic !!!", "Basic", "Basic YWxpY2U="] {
        assert_eq!(auth.allows(Some(&hyper::header::HeaderValue::from_static(junk)), LOCAL).await, Verdict::Out, "{junk}");
    }
    // The cache stays bounded.
    for i in 0..(AUTH_CACHE_ENTRIES + 10) {
        let _ = auth.allows(Some(&basic("bob", &format!("guess {i}"))), LOCAL).await;
    }
    assert!(auth.cache.lock().unwrap().len() <= AUTH_CACHE_ENTRIES);
}

#[test]
fn a_bad_hash_is_one_line_naming_the_user() {
    let p = pki("hash");
    let e = error(&p, "basic_auth_users:\n  alice: plaintext\n");
    assert!(e.starts_with("basic_auth_users.alice: not a bcrypt hash"), "{e}");
    // Well-formed but a cost bcrypt refuses, or one that would take hours.
    let good = bcrypt::hash("x", 4).unwrap();
    for (cost, want) in [("03", "basic_auth_users.alice: bcrypt cost 3: expected 4 to 16"), ("31", "basic_auth_users.alice: bcrypt cost 31: expected 4 to 16")] {
        let hash = format!("$2b${cost}${}", &good[7..]);
        assert_eq!(error(&p, &format!("basic_auth_users:\n  alice: '{hash}'\n")), want);
    }
    // A salt that is not bcrypt's base64.
    let hash = format!("{}!!{}", &good[..7], &good[9..]);
    let e = error(&p, &format!("basic_auth_users:\n  alice: '{hash}'\n"));
    assert!(e.starts_with("basic_auth_users.alice: not a bcrypt hash"), "{e}");
}

#[tokio::test]
async fn only_successes_are_cached_and_unknown_users_cost_what_known_ones_do() {
    let p = pki("cache");
    let s = load(&p, &format!("basic_auth_users:\n  alice: '{}'\n", bcrypt::hash("pw", 5).unwrap())).unwrap();
    let auth = s.auth.unwrap();
    for i in 0..5 {
        assert_eq!(auth.allows(Some(&basic("alice", &format!("guess {i}"))), LOCAL).await, Verdict::Out);
    }
    assert!(auth.cache.lock().unwrap().is_empty(), "a failure was cached");
    assert_eq!(auth.allows(Some(&basic("alice", "pw")), LOCAL).await, Verdict::In);
    assert_eq!(auth.cache.lock().unwrap().len(), 1);
    // The stand-in for unknown users is the costliest user's own hash, and its
    // password does not let an unknown user in.
    let (alice, bob) = (bcrypt::hash("pw", 5).unwrap(), bcrypt::hash("pw2", 6).unwrap());
    let s = load(&p, &format!("basic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")).unwrap();
    let auth = s.auth.unwrap();
    assert_eq!(auth.unknown_user_hash, bob);
    assert_eq!(auth.allows(Some(&basic("mallory", "pw2")), LOCAL).await, Verdict::Out);
    assert_eq!(auth.allows(Some(&basic("bob", "pw2")), LOCAL).await, Verdict::In);
}

#[test]
fn the_shipped_example_loads_with_files_at_its_names() {
    let p = pki("example");
    std::fs::copy(p.path("server.crt"), p.path("tls.crt")).unwrap();
    std::fs::copy(p.path("server.key"), p.path("tls.key")).unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/examples/web-config.yml");
    let text = std::fs::read_to_string(example).unwrap();
    let s = load(&p, &text).unwrap();
    assert_eq!(s.summary, "TLS, client certificates RequireAndVerifyClientCert (1 CA), basic auth (1 users)");
}

#[test]
fn loading_many_costly_hashes_is_bounded_work() {
    // Found by the web_config fuzz target: every user's hash was checked at its
    // own cost at load, 2^16 rounds (about 4 s) each at cost 16, so a file of
    // 64 such users took minutes. Now the decode check runs at cost 4 and no
    // hash is made at load (the stand-in for unknown users is the costliest
    // user's own).
    let p = pki("costly");
    let cheap = bcrypt::hash("x", 4).unwrap();
    let users: String = (0..64).map(|i| format!("  user{i}: '$2y$16${}'\n", &cheap[7..])).collect();
    let t = std::time::Instant::now();
    let s = load(&p, &format!("basic_auth_users:\n{users}")).unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    let parts: bcrypt::HashParts = s.auth.unwrap().unknown_user_hash.parse().unwrap();
    assert_eq!(parts.get_cost(), 16);
}

#[tokio::test]
async fn a_reload_keeps_the_verified_passwords_of_unchanged_users_only() {
    let p = pki("keep");
    let (alice, bob) = (bcrypt::hash("pw-a", 4).unwrap(), bcrypt::hash("pw-b", 4).unwrap());
    let old = load(&p, &format!("basic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")).unwrap();
    let auth = old.auth.as_ref().unwrap();
    assert_eq!(auth.allows(Some(&basic("alice", "pw-a")), LOCAL).await, Verdict::In);
    assert_eq!(auth.allows(Some(&basic("bob", "pw-b")), LOCAL).await, Verdict::In);
    // The same file again, then one where bob's hash changed (a new password).
    let same = load(&p, &format!("basic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")).unwrap();
    same.keep_verified(&old);
    assert_eq!(same.auth.as_ref().unwrap().cache.lock().unwrap().len(), 2);
    let bob2 = bcrypt::hash("pw-b2", 4).unwrap();
    let changed = load(&p, &format!("basic_auth_users:\n  alice: '{alice}'\n  bob: '{bob2}'\n")).unwrap();
    changed.keep_verified(&old);
    let kept: Vec<String> = changed.auth.as_ref().unwrap().cache.lock().unwrap().values().map(|(u, _)| u.clone()).collect();
    assert_eq!(kept, vec!["alice".to_string()]);
    // bob's old password no longer gets in, his new one does.
    let auth = changed.auth.as_ref().unwrap();
    assert_eq!(auth.allows(Some(&basic("bob", "pw-b")), LOCAL).await, Verdict::Out);
    assert_eq!(auth.allows(Some(&basic("bob", "pw-b2")), LOCAL).await, Verdict::In);
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_queues_at_most_a_few_checks_and_never_delays_a_verified_one() {
    let p = pki("queue");
    // Cost 10: each check takes tens of milliseconds, so the flood overlaps.
    let s = load(&p, &format!("basic_auth_users:\n  alice: '{}'\n", bcrypt::hash("pw", 10).unwrap())).unwrap();
    let auth = s.auth.clone().unwrap();
    assert_eq!(auth.allows(Some(&basic("alice", "pw")), LOCAL).await, Verdict::In);
    let flood: Vec<_> = (0..32)
        .map(|i| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.allows(Some(&basic("alice", &format!("guess {i}"))), LOCAL).await })
        })
        .collect();
    // While the flood waits, the verified password gets in from the cache.
    assert_eq!(auth.allows(Some(&basic("alice", "pw")), LOCAL).await, Verdict::In);
    let mut verdicts = Vec::new();
    for f in flood {
        verdicts.push(f.await.unwrap());
    }
    let (out, busy) = (verdicts.iter().filter(|v| **v == Verdict::Out).count(), verdicts.iter().filter(|v| **v == Verdict::Busy).count());
    assert_eq!(out + busy, 32, "{verdicts:?}");
    assert!(busy > 0 && out >= 1, "{verdicts:?}");
    let q = auth.queued.lock().unwrap();
    assert_eq!((q.all, q.by_peer.len()), (0, 0));
}

#[tokio::test]
async fn a_flood_from_one_address_leaves_another_address_its_place_in_the_queue() {
    let p = pki("fair");
    let s = load(&p, &format!("basic_auth_users:\n  alice: '{}'\n", bcrypt::hash("pw", 10).unwrap())).unwrap();
    let auth = s.auth.clone().unwrap();
    // This host's flood: one place at a time, the rest answered 429 at once.
    let flood: Vec<_> = (0..16)
        .map(|i| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.allows(Some(&basic("alice", &format!("guess {i}"))), LOCAL).await })
        })
        .collect();
    tokio::task::yield_now().await;
    // A scraper from elsewhere whose password was never checked: a place of its own.
    let remote = Peer::V4([192, 0, 2, 10]);
    assert_eq!(auth.allows(Some(&basic("alice", "pw")), remote).await, Verdict::In);
    let mut busy = 0;
    for f in flood {
        busy += usize::from(f.await.unwrap() == Verdict::Busy);
    }
    assert!(busy >= 14, "{busy} of 16 from one address answered 429");
}

#[test]
fn tightened_tls_is_told_apart_from_a_rotation() {
    let p = pki("tight");
    let plain = load(&p, "").unwrap().strictness;
    let tls = load(&p, TLS).unwrap().strictness;
    let required = load(&p, &format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n")).unwrap().strictness;
    let if_given = load(&p, &format!("{TLS}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: client-ca.crt\n")).unwrap().strictness;
    let other_ca = load(&p, &format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: server-ca.crt\n")).unwrap().strictness;
    let tls13 = load(&p, &format!("{TLS}  min_version: TLS13\n")).unwrap().strictness;
    for (new, old, tighter) in [
        (tls, plain, true),
        (plain, tls, false),
        (tls, tls, false),
        (if_given, tls, true),
        (required, if_given, true),
        (if_given, required, false),
        (other_ca, required, true),
        (tls13, tls, true),
        (tls, tls13, false),
    ] {
        assert_eq!(new.tighter_than(&old), tighter, "{new:?} after {old:?}");
    }
}
