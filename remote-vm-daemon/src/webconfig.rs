//! `--web.config.file`: TLS and basic auth for the endpoint, in Prometheus
//! exporter-toolkit's format (the file node_exporter takes), so a fleet's
//! existing web config and Prometheus `scrape_config` work unchanged.
//!
//! What it supports, and what it refuses (one line naming the key) rather than
//! ignore: see `docs/operating.md`, "TLS and basic auth". Relative paths are relative
//! to the file's directory, as in exporter-toolkit (so with systemd's
//! `LoadCredential=` the file and everything it names can sit in the
//! credentials directory).
use crate::{printable, server::conns::Peer};
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;

/// The largest web config, certificate or key file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Verified (user, password) results kept, so a scrape every few seconds costs
/// one bcrypt, not one per scrape.
const AUTH_CACHE_ENTRIES: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("web config {file}: {message}")]
pub struct WebConfigError {
    pub file: String,
    pub message: String,
}

/// What the web config says, ready to serve with.
pub struct Security {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// How strict the TLS config is, to tell a reload that tightens it.
    pub strictness: Strictness,
    /// `None`: no authentication.
    pub auth: Option<Arc<BasicAuth>>,
    /// `http_server_config.headers`, added to every answer.
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// One line for the log: what is on.
    pub summary: String,
}

/// What a client must show to get in over TLS: a reload that raises any of
/// it closes the connections opened under the old rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Strictness {
    pub tls: bool,
    /// 0: no client certificate, 1: verified if given, 2: required.
    pub client_certificates: u8,
    /// A digest of the client CA certificates (zero without).
    pub client_ca: [u8; 32],
    /// The lowest TLS version taken (12 or 13; 0 without TLS).
    pub min_version: u8,
}

impl Strictness {
    /// Whether `self` asks more of a client than `old` did: TLS where there
    /// was none, client certificates stricter or from another CA, a higher
    /// lowest version.
    pub fn tighter_than(&self, old: &Strictness) -> bool {
        (self.tls && !old.tls)
            || self.client_certificates > old.client_certificates
            || (self.client_certificates > 0 && self.client_ca != old.client_ca)
            || self.min_version > old.min_version
    }
}

impl Security {
    /// No web config: plain HTTP, no authentication.
    pub fn plain() -> Security {
        Security {
            tls: None,
            strictness: Strictness::default(),
            auth: None,
            headers: Vec::new(),
            summary: "plain HTTP, no authentication".into(),
        }
    }

    /// `path`, or plain HTTP for `None`.
    pub fn load(path: Option<&Path>) -> Result<Security, WebConfigError> {
        match path {
            None => Ok(Security::plain()),
            Some(path) => {
                let err = |message: String| WebConfigError {
                    file: printable(&path.display().to_string()),
                    message,
                };
                let text = read_bounded(path).map_err(|e| err(format!("cannot read: {e}")))?;
                let text = String::from_utf8(text).map_err(|_| err("not UTF-8".into()))?;
                let dir = path.parent().unwrap_or(Path::new("."));
                Security::from_text(&text, dir).map_err(err)
            }
        }
    }

    /// The file's contents, its relative paths taken from `dir` (the error:
    /// one printable line, without the file's name).
    pub fn from_text(text: &str, dir: &Path) -> Result<Security, String> {
        Security::parse(text, dir).map_err(|e| printable(&e))
    }

    fn parse(text: &str, dir: &Path) -> Result<Security, String> {
        let raw: RawFile = if text.trim().is_empty() {
            RawFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| one_line(&e.to_string()))?
        };
        if raw.rate_limit.is_some() {
            return Err(unsupported(
                "rate_limit",
                "/metrics renders are shared by concurrent scrapes and spaced by [web] min_render_interval_seconds instead",
            ));
        }
        let mut on = Vec::new();
        let mut strictness = Strictness::default();
        let tls = match raw.tls_server_config {
            Some(t) if t.enabled() => {
                let (config, said, strict) = t.build(dir)?;
                on.push(said);
                strictness = strict;
                Some(Arc::new(config))
            }
            _ => None,
        };
        if tls.is_none() {
            on.push("plain HTTP".into());
        }
        let http = raw.http_server_config.unwrap_or_default();
        let headers = http.headers()?;
        let auth = match raw.basic_auth_users {
            Some(users) if !users.is_empty() => {
                on.push(format!("basic auth ({} users)", users.len()));
                Some(Arc::new(BasicAuth::new(users)?))
            }
            _ => {
                on.push("no authentication".into());
                None
            }
        };
        Ok(Security {
            tls,
            strictness,
            auth,
            headers,
            summary: on.join(", "),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// After a reload: the verified passwords of users whose (name, hash)
    /// did not change stay verified (no bcrypt for them on the next scrape).
    pub fn keep_verified(&self, old: &Security) {
        if let (Some(new), Some(old)) = (&self.auth, &old.auth) {
            new.keep_verified(old);
        }
    }
}

/// The serving security, replaced on SIGHUP: new connections take the new
/// TLS config, every request the new users and headers.
pub struct Switch(RwLock<Arc<Security>>);

impl Switch {
    pub fn new(s: Security) -> Switch {
        Switch(RwLock::new(Arc::new(s)))
    }

    pub fn current(&self) -> Arc<Security> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn replace(&self, s: Security) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(s);
    }
}

/// Reads at most `MAX_FILE_BYTES` (a larger file is an error, not a truncation).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(buf)
}

fn one_line(s: &str) -> String {
    let first = s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid YAML");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

fn unsupported(key: &str, why: &str) -> String {
    format!("{key}: not supported by remote-vm ({why}); remove it")
}

/// The file as written (exporter-toolkit's keys; unknown keys are errors, as
/// its strict parse makes them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility: the endpoint speaks HTTP/1.1 only (no ALPN
    /// h2), as exporter-toolkit with `http2: false`.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// exporter-toolkit's client auth types, and what each needs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

pub const CLIENT_AUTH_ALLOWED: &str = "NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert";

impl ClientAuth {
    fn parse(v: &str) -> Result<ClientAuth, String> {
        match v {
            "" | "NoClientCert" => Ok(ClientAuth::NoClientCert),
            "VerifyClientCertIfGiven" => Ok(ClientAuth::VerifyClientCertIfGiven),
            "RequireAndVerifyClientCert" => Ok(ClientAuth::RequireAndVerifyClientCert),
            "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => Err(unsupported(
                &format!("tls_server_config.client_auth_type {v}"),
                "a client certificate nobody verifies proves nothing; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
            )),
            _ => Err(format!("tls_server_config.client_auth_type: invalid value {v:?}: expected {CLIENT_AUTH_ALLOWED}")),
        }
    }
}

impl RawTls {
    /// exporter-toolkit's rule: any of these set turns TLS on.
    fn enabled(&self) -> bool {
        self.cert.is_some()
            || self.cert_file.is_some()
            || self.key.is_some()
            || self.key_file.is_some()
            || self.client_ca.is_some()
            || self.client_ca_file.is_some()
            || self.client_auth_type.as_deref().is_some_and(|t| !t.is_empty())
    }

    /// An inline value or the contents of a file (relative to `dir`).
    fn pem(inline: &Option<String>, file: &Option<String>, name: &str, dir: &Path) -> Result<Option<(Vec<u8>, String)>, String> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(format!("tls_server_config: both {name} and {name}_file: give one")),
            (Some(text), None) => Ok(Some((text.clone().into_bytes(), format!("tls_server_config.{name}")))),
            (None, Some(f)) => {
                let path = join(dir, f);
                let bytes = read_bounded(&path)
                    .map_err(|e| format!("tls_server_config.{name}_file {}: cannot read: {e}", path.display()))?;
                Ok(Some((bytes, format!("tls_server_config.{name}_file {}", path.display()))))
            }
            (None, None) => Ok(None),
        }
    }

    fn build(&self, dir: &Path) -> Result<(ServerConfig, String, Strictness), String> {
        if self.client_allowed_sans.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(
                "tls_server_config.client_allowed_sans",
                "issue client certificates from a CA only for the scrapers, and name it in client_ca_file",
            ));
        }
        let (cert, cert_from) = Self::pem(&self.cert, &self.cert_file, "cert", dir)?
            .ok_or("tls_server_config: missing one of cert or cert_file")?;
        let (key, key_from) =
            Self::pem(&self.key, &self.key_file, "key", dir)?.ok_or("tls_server_config: missing one of key or key_file")?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{cert_from}: not a PEM certificate: {e}"))?;
        if chain.is_empty() {
            return Err(format!("{cert_from}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
        }
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("{key_from}: no PEM private key in it: {e}"))?;

        let mut provider = rustls::crypto::ring::default_provider();
        // An empty list is the default, as in Go.
        if let Some(names) = self.cipher_suites.as_ref().filter(|n| !n.is_empty()) {
            provider.cipher_suites = cipher_suites(&provider, names)?;
        }
        if let Some(names) = &self.curve_preferences {
            provider.kx_groups = curves(&provider, names)?;
        }
        let provider = Arc::new(provider);
        let versions = versions(self.min_version.as_deref(), self.max_version.as_deref())?;
        let auth = ClientAuth::parse(self.client_auth_type.as_deref().unwrap_or(""))?;
        let ca = Self::pem(&self.client_ca, &self.client_ca_file, "client_ca", dir)?;
        let strictness = Strictness {
            tls: true,
            client_certificates: match auth {
                ClientAuth::NoClientCert => 0,
                ClientAuth::VerifyClientCertIfGiven => 1,
                ClientAuth::RequireAndVerifyClientCert => 2,
            },
            client_ca: ca.as_ref().map_or([0; 32], |(pem, _)| digest(&[pem])),
            min_version: if versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_2) { 12 } else { 13 },
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("tls_server_config: {e}"))?;
        let (builder, said) = match (auth, ca) {
            (ClientAuth::NoClientCert, None) => (builder.with_no_client_auth(), "TLS".to_string()),
            (ClientAuth::NoClientCert, Some(_)) => {
                return Err("tls_server_config: client_ca set without a client_auth_type that verifies (VerifyClientCertIfGiven or RequireAndVerifyClientCert)".into());
            }
            (_, None) => return Err(format!("tls_server_config.client_auth_type {auth:?} needs client_ca_file (or client_ca)")),
            (auth, Some((ca, ca_from))) => {
                let mut roots = RootCertStore::empty();
                let mut n = 0;
                for c in CertificateDer::pem_slice_iter(&ca) {
                    let c = c.map_err(|e| format!("{ca_from}: not a PEM certificate: {e}"))?;
                    roots.add(c).map_err(|e| format!("{ca_from}: not a usable CA certificate: {e}"))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(format!("{ca_from}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let verifier = if auth == ClientAuth::VerifyClientCertIfGiven { verifier.allow_unauthenticated() } else { verifier };
                let verifier = verifier.build().map_err(|e| format!("{ca_from}: {e}"))?;
                (builder.with_client_cert_verifier(verifier), format!("TLS, client certificates {auth:?} ({n} CA)"))
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!("{key_from} is not the key of {cert_from}"),
            e => format!("{cert_from} with {key_from}: {e}"),
        })?;
        config.ignore_client_order = self.prefer_server_cipher_suites.unwrap_or(true);
        // HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok((config, said, strictness))
    }
}

/// `TLS12`/`TLS13` bounds, as exporter-toolkit names them (default both).
fn versions(min: Option<&str>, max: Option<&str>) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |key: &str, v: Option<&str>, default: u8| match v {
        None => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(v @ ("TLS10" | "TLS11")) => Err(unsupported(&format!("tls_server_config.{key} {v}"), "TLS 1.2 is the oldest version served")),
        Some(v) => Err(format!("tls_server_config.{key}: invalid value {v:?}: expected TLS12 or TLS13")),
    };
    let (lo, hi) = (rank("min_version", min, 12)?, rank("max_version", max, 13)?);
    if lo > hi {
        return Err("tls_server_config: min_version above max_version".into());
    }
    let mut out = Vec::new();
    if (lo..=hi).contains(&13) {
        out.push(&rustls::version::TLS13);
    }
    if (lo..=hi).contains(&12) {
        out.push(&rustls::version::TLS12);
    }
    Ok(out)
}

/// TLS 1.2 suites by their IANA names (Go's, which are the same; as in Go
/// they do not restrict TLS 1.3, whose names are taken and ignored), in the
/// order given.
fn cipher_suites(provider: &CryptoProvider, names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    let tls12: Vec<_> = provider.cipher_suites.iter().filter(|s| s.tls13().is_none()).collect();
    let name = |s: &rustls::SupportedCipherSuite| s.suite().as_str().unwrap_or("?").to_string();
    let mut out: Vec<_> = provider.cipher_suites.iter().filter(|s| s.tls13().is_some()).copied().collect();
    for n in names {
        // TLS 1.3 suites are not configurable (Go ignores them too).
        if GO_TLS13_SUITES.contains(&n.as_str()) {
            continue;
        }
        // Go also calls the ChaCha20 suites without their hash.
        let full = if n.ends_with("CHACHA20_POLY1305") { format!("{n}_SHA256") } else { n.clone() };
        match tls12.iter().find(|s| name(s) == full) {
            Some(s) => out.push(**s),
            None => {
                let known: Vec<String> = tls12.iter().map(|s| name(s)).collect();
                return Err(format!(
                    "tls_server_config.cipher_suites: {n:?} is not one of the TLS 1.2 suites served: {}",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// Go's names of the TLS 1.3 suites (`tls.CipherSuites()` lists them).
const GO_TLS13_SUITES: &[&str] = &["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

/// Key exchange groups by Go's names, in the order given.
fn curves(provider: &CryptoProvider, names: &[String]) -> Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>, String> {
    use rustls::NamedGroup;
    let mut out = Vec::new();
    for n in names {
        let group = match n.as_str() {
            "X25519" => NamedGroup::X25519,
            "CurveP256" => NamedGroup::secp256r1,
            "CurveP384" => NamedGroup::secp384r1,
            _ => {
                return Err(format!(
                    "tls_server_config.curve_preferences: {n:?} is not one of the groups served: X25519, CurveP256, CurveP384"
                ));
            }
        };
        if let Some(g) = provider.kx_groups.iter().find(|g| g.name() == group) {
            out.push(*g);
        }
    }
    if out.is_empty() {
        return Err("tls_server_config.curve_preferences: empty".into());
    }
    Ok(out)
}

/// exporter-toolkit's settable headers and their allowed values (none listed:
/// any value).
const SETTABLE_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

impl RawHttp {
    fn headers(&self) -> Result<Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>, String> {
        let mut out = Vec::new();
        for (name, value) in self.headers.iter().flatten() {
            let Some((_, allowed)) = SETTABLE_HEADERS.iter().find(|(n, _)| n == name) else {
                let names: Vec<_> = SETTABLE_HEADERS.iter().map(|(n, _)| *n).collect();
                return Err(format!("http_server_config.headers: {name:?} cannot be set (only {})", names.join(", ")));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(format!("http_server_config.headers.{name}: invalid value {value:?}: expected one of {}", allowed.join(", ")));
            }
            let n = hyper::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("http_server_config.headers: {name:?}: {e}"))?;
            let v = hyper::header::HeaderValue::from_str(value)
                .map_err(|_| format!("http_server_config.headers.{name}: {value:?} is not a header value"))?;
            out.push((n, v));
        }
        Ok(out)
    }
}

/// `dir`/`f` unless `f` is absolute.
fn join(dir: &Path, f: &str) -> PathBuf {
    let p = Path::new(f);
    if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
}

/// `basic_auth_users`: bcrypt hashes, checked one at a time off the serving
/// thread; successes cached by a digest of (user, hash, password).
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Checked for a user not in `users`: as costly as the costliest real
    /// hash, so that timing does not tell which users exist.
    unknown_user_hash: String,
    /// Only successes: failures an attacker can make at will would evict
    /// them. The (user, hash) each was verified for, to keep it over a reload.
    cache: Mutex<HashMap<[u8; 32], (String, String)>>,
    /// bcrypt is slow on purpose: one check at a time, whatever the number of
    /// clients (which `[web] max_connections` bounds). The permit goes with
    /// the check itself, so a client that leaves does not free it early.
    one_at_a_time: Arc<tokio::sync::Semaphore>,
    /// Checks running or waiting, in all and per peer: past
    /// `MAX_QUEUED_CHECKS`, or `MAX_QUEUED_PER_PEER` of one peer, a request
    /// is answered at once (429) instead of queueing behind a flood, and a
    /// flood from one address leaves the others' places free.
    queued: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    all: usize,
    by_peer: HashMap<Peer, usize>,
}

/// The highest bcrypt cost taken (2^16 rounds: about 4 s a check).
const MAX_COST: u32 = 16;
/// bcrypt checks running or waiting at once...
pub const MAX_QUEUED_CHECKS: usize = 4;
/// ... and of one peer (an address, an IPv6 /64, this host).
pub const MAX_QUEUED_PER_PEER: usize = 1;

/// What basic auth says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    In,
    /// No, a wrong or unknown user or password, or none (401).
    Out,
    /// Too many checks queued already: try again (429).
    Busy,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<BasicAuth, String> {
        let mut costliest = 0;
        for (user, hash) in &users {
            let bad = || format!("basic_auth_users.{user}: not a bcrypt hash ($2y$10$ and 53 characters); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`");
            let cost = hash.parse::<bcrypt::HashParts>().map_err(|_| bad())?.get_cost();
            if !(4..=MAX_COST).contains(&cost) {
                return Err(format!("basic_auth_users.{user}: bcrypt cost {cost}: expected 4 to {MAX_COST}"));
            }
            // A salt or digest that does not decode fails here, not at every
            // request: checked at the lowest cost (the file's own cost, up to
            // 2^16 rounds per user, would make loading it unbounded work).
            let cheap = hash.get(7..).map(|salt_and_digest| format!("$2y$04${salt_and_digest}")).ok_or_else(bad)?;
            bcrypt::verify("", &cheap).map_err(|_| bad())?;
            costliest = costliest.max(cost);
        }
        // The costliest user's own hash: verifying an unknown user's password
        // against it costs what a known user's check does, and never admits
        // (`allows` requires a known user), with no hash made at load.
        let unknown_user_hash = users
            .values()
            .find(|h| h.parse::<bcrypt::HashParts>().is_ok_and(|p| p.get_cost() == costliest))
            .cloned()
            .unwrap_or_default();
        Ok(BasicAuth {
            users,
            unknown_user_hash,
            cache: Mutex::new(HashMap::new()),
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
            queued: Arc::new(Mutex::new(Queue::default())),
        })
    }

    /// `old`'s verified passwords of users whose hash is the same here.
    fn keep_verified(&self, old: &BasicAuth) {
        let kept: Vec<([u8; 32], (String, String))> = old
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, (user, hash))| self.users.get(user) == Some(hash))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).extend(kept);
    }

    /// Whether an `Authorization` header from `peer` lets the request in.
    pub async fn allows(&self, header: Option<&hyper::header::HeaderValue>, peer: Peer) -> Verdict {
        let Some((user, password)) = header.and_then(|h| parse_basic(h.as_bytes())) else {
            return Verdict::Out;
        };
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.unknown_user_hash).clone();
        let key = digest(&[user.as_bytes(), hash.as_bytes(), &password]);
        if known.is_some() && self.cache.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&key) {
            return Verdict::In;
        }
        // A place in the queue, or an answer at once.
        let Some(place) = Queued::take(&self.queued, peer) else {
            return Verdict::Busy;
        };
        let Ok(permit) = self.one_at_a_time.clone().acquire_owned().await else {
            return Verdict::Out;
        };
        log::debug!("basic auth: bcrypt check for user {user}");
        let checked = hash.clone();
        let ok = tokio::task::spawn_blocking(move || {
            // Both go with the check itself, not with a client that left.
            let (_permit, _place) = (permit, place);
            bcrypt::verify(password, &checked).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && known.is_some() {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= AUTH_CACHE_ENTRIES {
                // Successes only: the scrapers' few passwords (a full cache
                // means many rotations; start again).
                cache.clear();
            }
            cache.insert(key, (user, hash));
        }
        if ok && known.is_some() { Verdict::In } else { Verdict::Out }
    }
}

/// A place in the bcrypt queue, given back when dropped.
struct Queued(Arc<Mutex<Queue>>, Peer);

impl Queued {
    /// A place for `peer`, if there is one.
    fn take(queue: &Arc<Mutex<Queue>>, peer: Peer) -> Option<Queued> {
        let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = q.by_peer.get(&peer).copied().unwrap_or(0);
        if q.all >= MAX_QUEUED_CHECKS || mine >= MAX_QUEUED_PER_PEER {
            return None;
        }
        q.all += 1;
        q.by_peer.insert(peer, mine + 1);
        Some(Queued(queue.clone(), peer))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.all = q.all.saturating_sub(1);
        if let Some(n) = q.by_peer.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                q.by_peer.remove(&self.1);
            }
        }
    }
}

/// SHA-256 over the parts, each length-prefixed.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Basic base64(user:password)`: the user (UTF-8, no colon) and password bytes.
fn parse_basic(h: &[u8]) -> Option<(String, Vec<u8>)> {
    use base64::Engine;
    let h = std::str::from_utf8(h).ok()?;
    let (scheme, creds) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(creds.trim()).ok()?;
    let colon = raw.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests;
