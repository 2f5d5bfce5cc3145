//! GET over http and https with ureq.
use std::{
    fmt,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::Engine;
use ureq::{
    Agent,
    tls::{RootCerts, TlsConfig},
};

use crate::{Error, Result};

/// Credentials sent with every request.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Basic …`.
    Basic { user: String, password: String },
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Basic { user, .. } => write!(f, "Basic({user}:…)"),
            Auth::Bearer(_) => write!(f, "Bearer(…)"),
        }
    }
}

/// A client certificate and its key, PEM (`--cert-file`, `--key-file`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientCert(…)")
    }
}

/// How a [`Client`] talks.
#[derive(Clone, Debug)]
pub struct Options {
    /// For the TCP connection (and the TLS handshake).
    pub connect_timeout: Duration,
    /// For the whole request: resolving, connecting, sending, the answer's body.
    pub timeout: Duration,
    /// The largest answer body taken, in bytes; a larger one is an error.
    pub max_body: u64,
    /// Credentials for every request. `http://USER:PASSWORD@HOST/` in the base
    /// URL gives basic auth too; this wins over that.
    pub auth: Option<Auth>,
    /// PEM CA certificates to check https servers against instead of the
    /// system's roots (`--ca-file`).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate for https servers that ask for one.
    pub client_cert: Option<ClientCert>,
}

impl Default for Options {
    /// 10 s to connect, 60 s for the whole request, 64 MiB of body, no auth.
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_body: 64 << 20,
            auth: None,
            ca_pem: None,
            client_cert: None,
        }
    }
}

/// A base URL (`http[s]://HOST[:PORT][/PREFIX]`, a bare `HOST:PORT` for
/// plain http, or `unix:/PATH` for HTTP over a Unix socket) and how to talk
/// to it. Redirects are not followed (a 3xx is an answer like any other) and
/// no proxy is used.
pub struct Client {
    base: String,
    authorization: Option<String>,
    options: Options,
    transport: Transport,
}

enum Transport {
    Tcp(Agent),
    /// HTTP/1.1 over this Unix socket, one connection per request.
    Unix(PathBuf),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `base` with the default [`Options`].
    pub fn new(base: &str) -> Result<Client> {
        Client::with_options(base, Options::default())
    }

    pub fn with_options(base: &str, options: Options) -> Result<Client> {
        if let Some(socket) = unix_socket(base)? {
            return Ok(Client {
                base: format!("unix:{}", socket.display()),
                authorization: options.auth.clone().map(header_value),
                options,
                transport: Transport::Unix(socket),
            });
        }
        let parsed = parse_base(base)?;
        let auth = options.auth.clone().or(parsed.auth);
        let authorization = auth.map(header_value);
        // The system's roots are read when the first https request is made,
        // not here: plain http works where there are none.
        let roots = match &options.ca_pem {
            None => RootCerts::PlatformVerifier,
            Some(pem) => {
                let certs = ureq::tls::parse_pem(pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::Url { url: base.to_string(), reason: format!("the CA file: {e}") })?;
                if certs.is_empty() {
                    return Err(Error::Url { url: base.to_string(), reason: "the CA file has no PEM certificate".into() });
                }
                RootCerts::new_with_certs(&certs)
            }
        };
        let client_cert = match &options.client_cert {
            None => None,
            Some(c) => Some(client_cert(c).map_err(|reason| Error::Url { url: without_credentials(base), reason })?),
        };
        let tls = TlsConfig::builder().root_certs(roots).client_cert(client_cert).build();
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_global(Some(options.timeout))
            .user_agent(concat!("remote-vm/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(Client {
            base: parsed.base,
            authorization,
            options,
            transport: Transport::Tcp(agent),
        })
    }

    /// `scheme://host[:port][/prefix]`, without credentials or a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The URL of `path_and_query` (`/api/v1/…?…`) under the base
    /// (`unix:/PATH:/metrics` over a Unix socket).
    pub fn url(&self, path_and_query: &str) -> String {
        if matches!(self.transport, Transport::Unix(_)) {
            let slash = if path_and_query.starts_with('/') { "" } else { "/" };
            return format!("{}:{slash}{path_and_query}", self.base);
        }
        if path_and_query.starts_with('/') {
            format!("{}{path_and_query}", self.base)
        } else {
            format!("{}/{path_and_query}", self.base)
        }
    }

    /// `GET path_and_query`: the status (whatever it is) and the body.
    pub fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        self.get_accepting(path_and_query, None)
    }

    pub(crate) fn get_accepting(&self, path_and_query: &str, accept: Option<&str>) -> Result<(u16, String)> {
        let url = self.url(path_and_query);
        let agent = match &self.transport {
            Transport::Tcp(agent) => agent,
            Transport::Unix(socket) => return self.unix_get(socket, &url, path_and_query, accept),
        };
        let mut request = agent.get(&url);
        if let Some(a) = &self.authorization {
            request = request.header("Authorization", a);
        }
        if let Some(a) = accept {
            request = request.header("Accept", a);
        }
        let mut response = request.call().map_err(|e| self.error(&url, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(self.options.max_body)
            .read_to_vec()
            .map_err(|e| self.error(&url, e))?;
        // Valid UTF-8 (as JSON must be) is taken as it is, without a copy.
        let body = String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok((status, body))
    }

    /// `GET path_and_query` with its answer handed to `read` as it streams
    /// (at most `max_body` bytes: past it the reader fails and the result is
    /// [`Error::TooLarge`]), with the status.
    pub(crate) fn get_streaming<T>(
        &self,
        path_and_query: &str,
        accept: Option<&str>,
        read: impl FnOnce(&str, u16, &mut dyn std::io::Read) -> Result<T>,
    ) -> Result<T> {
        let url = self.url(path_and_query);
        let (status, mut reader): (u16, Box<dyn std::io::Read>) = match &self.transport {
            Transport::Unix(socket) => {
                let (status, body) = self.unix_get(socket, &url, path_and_query, accept)?;
                (status, Box::new(std::io::Cursor::new(body.into_bytes())))
            }
            Transport::Tcp(agent) => {
                let mut request = agent.get(&url);
                if let Some(a) = &self.authorization {
                    request = request.header("Authorization", a);
                }
                if let Some(a) = accept {
                    request = request.header("Accept", a);
                }
                let response = request.call().map_err(|e| self.error(&url, e))?;
                let status = response.status().as_u16();
                (status, Box::new(response.into_body().into_with_config().limit(u64::MAX).reader()))
            }
        };
        let mut capped = Capped { inner: &mut reader, left: self.options.max_body, over: false };
        match read(&url, status, &mut capped) {
            Err(_) if capped.over => Err(Error::TooLarge { url, limit: self.options.max_body }),
            Err(Error::Json { reason, .. }) if reason.contains("timed out") || reason.contains("Timeout") => {
                Err(Error::Timeout { url, phase: "the answer".into(), limit: self.options.timeout })
            }
            r => r,
        }
    }

    fn error(&self, url: &str, e: ureq::Error) -> Error {
        let url = url.to_string();
        match e {
            ureq::Error::Timeout(t) => {
                let (phase, limit) = match t {
                    ureq::Timeout::Connect => ("connect".to_string(), self.options.connect_timeout),
                    t => (format!("{t}"), self.options.timeout),
                };
                Error::Timeout { url, phase, limit }
            }
            ureq::Error::BodyExceedsLimit(limit) => Error::TooLarge { url, limit },
            ureq::Error::HostNotFound => Error::Connect {
                url,
                reason: "host not found".into(),
            },
            ureq::Error::ConnectionFailed => Error::Connect {
                url,
                reason: "connection failed".into(),
            },
            ureq::Error::Io(io) if is_connect_error(&io) => Error::Connect {
                url,
                reason: io.to_string(),
            },
            // rustls' errors reach here as I/O errors of kind InvalidData.
            ureq::Error::Io(io) if url.starts_with("https:") && io.kind() == std::io::ErrorKind::InvalidData => Error::Tls {
                url,
                reason: io.to_string(),
            },
            ureq::Error::Io(io) => Error::Transfer {
                url,
                reason: io.to_string(),
            },
            ureq::Error::Tls(reason) => Error::Tls {
                url,
                reason: reason.into(),
            },
            ureq::Error::Rustls(e) => Error::Tls {
                url,
                reason: e.to_string(),
            },
            ureq::Error::Pem(e) => Error::Tls {
                url,
                reason: e.to_string(),
            },
            e => Error::Transfer {
                url,
                reason: e.to_string(),
            },
        }
    }
}

impl Client {
    /// `GET` over a Unix socket: one HTTP/1.1 request (`Connection: close`),
    /// the answer read within the request's deadline and the size cap.
    fn unix_get(&self, socket: &Path, url: &str, path_and_query: &str, accept: Option<&str>) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let deadline = Instant::now() + self.options.timeout;
        let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        let timeout = || Error::Timeout { url: url.to_string(), phase: "the answer".into(), limit: self.options.timeout };
        let transfer = |e: std::io::Error| {
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                timeout()
            } else {
                Error::Transfer { url: url.to_string(), reason: e.to_string() }
            }
        };
        let mut stream = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| Error::Connect { url: url.to_string(), reason: e.to_string() })?;
        let path = if path_and_query.starts_with('/') { path_and_query.to_string() } else { format!("/{path_and_query}") };
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: remote-vm/{}\r\nConnection: close\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(a) = &self.authorization {
            request.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(a) = accept {
            request.push_str(&format!("Accept: {a}\r\n"));
        }
        request.push_str("\r\n");
        stream.set_write_timeout(Some(left().ok_or_else(timeout)?)).map_err(transfer)?;
        stream.write_all(request.as_bytes()).map_err(transfer)?;
        // The head (at most 64 KiB), then the body (at most `max_body`).
        const MAX_HEAD: usize = 64 * 1024;
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let limit = self.options.max_body.saturating_add(MAX_HEAD as u64);
        loop {
            stream.set_read_timeout(Some(left().ok_or_else(timeout)?)).map_err(transfer)?;
            let n = match stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(transfer(e)),
            };
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
            if head_end.is_none() && got.len() > MAX_HEAD {
                return Err(Error::Transfer { url: url.to_string(), reason: format!("no end of the answer's head in {MAX_HEAD} bytes") });
            }
            if let Some(end) = head_end
                && (got.len() - end - 4) as u64 > self.options.max_body
            {
                return Err(Error::TooLarge { url: url.to_string(), limit: self.options.max_body });
            }
            if got.len() as u64 > limit {
                return Err(Error::TooLarge { url: url.to_string(), limit: self.options.max_body });
            }
        }
        let not_http = |why: &str| Error::Transfer { url: url.to_string(), reason: format!("not an HTTP answer: {why}") };
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| not_http("no end of its head"))?;
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .filter(|l| l.starts_with("HTTP/1."))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| not_http("no status line"))?;
        let mut body = got[end + 4..].to_vec();
        for l in lines {
            let Some((name, value)) = l.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(not_http("a chunked answer (the daemon sends Content-Length)"));
            }
            if name.eq_ignore_ascii_case("content-length") {
                let len: usize = value.trim().parse().map_err(|_| not_http("a bad Content-Length"))?;
                if body.len() < len {
                    return Err(Error::Transfer { url: url.to_string(), reason: format!("the answer ended after {} of {len} bytes", body.len()) });
                }
                body.truncate(len);
            }
        }
        let body = String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok((status, body))
    }
}

/// A reader of at most `left` more bytes: past it, an error (and `over`).
struct Capped<'r> {
    inner: &'r mut dyn std::io::Read,
    left: u64,
    over: bool,
}

impl std::io::Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over = true;
            return Err(std::io::Error::other("the answer is larger than the size limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The `Authorization` header's value for `auth`.
fn header_value(auth: Auth) -> String {
    match auth {
        Auth::Basic { user, password } => format!("Basic {}", base64::prelude::BASE64_STANDARD.encode(format!("{user}:{password}"))),
        Auth::Bearer(token) => format!("Bearer {token}"),
    }
}

/// A client certificate for ureq from its PEM files.
fn client_cert(c: &ClientCert) -> std::result::Result<ureq::tls::ClientCert, String> {
    let mut chain = Vec::new();
    for item in ureq::tls::parse_pem(&c.cert_pem) {
        if let ureq::tls::PemItem::Certificate(cert) = item.map_err(|e| format!("the client certificate: {e}"))? {
            chain.push(cert);
        }
    }
    if chain.is_empty() {
        return Err("the client certificate file has no PEM certificate".into());
    }
    let key = ureq::tls::parse_pem(&c.key_pem)
        .find_map(|item| match item {
            Ok(ureq::tls::PemItem::PrivateKey(k)) => Some(k),
            _ => None,
        })
        .ok_or("the client key file has no PEM private key")?;
    Ok(ureq::tls::ClientCert::new_with_certs(&chain, key))
}

/// The socket of a `unix:/PATH` (or `unix:///PATH`) base; `None` for any other.
fn unix_socket(base: &str) -> Result<Option<PathBuf>> {
    let Some(rest) = base.strip_prefix("unix:") else { return Ok(None) };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Error::Url { url: base.to_string(), reason: "a Unix socket is unix:/ABSOLUTE/PATH".into() });
    }
    Ok(Some(PathBuf::from(path)))
}

fn is_connect_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable | NetworkDown | NotFound
    ) || e.to_string().starts_with("failed to lookup address") // std's getaddrinfo failure
}

/// One-shot `GET path` on `target` (`HOST:PORT` or a base URL) with the default
/// [`Options`]: the status and the body.
pub fn get(target: &str, path: &str) -> Result<(u16, String)> {
    Client::new(target)?.get(path)
}

struct Parsed {
    base: String,
    auth: Option<Auth>,
}

/// `http[s]://[USER[:PASSWORD]@]HOST[:PORT][/PREFIX][/]` or `HOST:PORT[/PREFIX]`.
fn parse_base(url: &str) -> Result<Parsed> {
    let bad = |reason: &str| Error::Url {
        url: without_credentials(url),
        reason: reason.to_string(),
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => ("http", rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => ("https", rest),
        Some(_) => return Err(bad("only http and https are supported")),
        None => ("http", url),
    };
    if rest.contains(['?', '#']) {
        return Err(bad("a base URL has no query or fragment"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(|| bad("unterminated [IPv6 address]"))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(bad(&format!("[{addr}] is not an IPv6 address")));
        }
        match after {
            "" => (&hostport[..addr.len() + 2], None),
            p => (&hostport[..addr.len() + 2], Some(p.strip_prefix(':').ok_or_else(|| bad("expected :PORT after the [IPv6 address]"))?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((_, p)) if p.contains(':') => return Err(bad("an IPv6 address goes in brackets: http://[::1]:9090")),
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '%' || c == '\\') {
        return Err(bad(&format!("bad host {host:?}")));
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(bad(&format!("bad port {p:?}")));
    }
    if port.is_none() && !url.contains("://") {
        return Err(bad("no port"));
    }
    let auth = match userinfo {
        None => None,
        Some(u) => {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            Some(Auth::Basic {
                user: percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?,
                password: percent_decode(password).ok_or_else(|| bad("bad %-escape in the password"))?,
            })
        }
    };
    let prefix = path.trim_end_matches('/');
    let base = format!(
        "{scheme}://{host}{}{}{prefix}",
        port.map(|p| format!(":{p}")).unwrap_or_default(),
        if prefix.is_empty() { "" } else { "/" }
    );
    // What ureq will be given must be a URI it takes.
    if let Err(e) = base.parse::<ureq::http::Uri>() {
        return Err(bad(&e.to_string()));
    }
    Ok(Parsed { base, auth })
}

/// `url` with any `USER:PASSWORD@` replaced by `…@`, for errors: a URL from
/// the command line is shown this way, never as given.
pub fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}…{}", if scheme.is_empty() { "" } else { "://" }, &rest[at..]),
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(url: &str) -> String {
        parse_base(url).map(|p| p.base).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn parses_base_urls() {
        assert_eq!(base("http://prom.example:9090/prefix/"), "http://prom.example:9090/prefix");
        assert_eq!(base("http://prom.example:9090/"), "http://prom.example:9090");
        assert_eq!(base("http://prom.example"), "http://prom.example");
        assert_eq!(base("HTTPS://prom.example/a/b//"), "https://prom.example/a/b");
        assert_eq!(base("127.0.0.1:19361"), "http://127.0.0.1:19361");
        assert_eq!(base("http://[::1]:9090"), "http://[::1]:9090");
        assert_eq!(base("https://[fe80::1]/p"), "https://[fe80::1]/p");
        assert_eq!(base("[::1]:9"), "http://[::1]:9");
        for bad in [
            "ftp://x:1",
            "http://:9",
            "http://",
            "http://x:port",
            "http://x:99999",
            "http://x:",
            "http://::1:9090",
            "http://[::1:9090",
            "http://[zz]:1",
            "http://[::1]9",
            "http://x/?q=1",
            "prom.example",
            "http://a b:1",
        ] {
            assert!(parse_base(bad).is_err(), "{bad} parsed as {}", base(bad));
        }
    }

    #[test]
    fn credentials_in_the_url_become_basic_auth_and_leave_the_url() {
        let p = parse_base("https://al%40x:p%3Ass@prom.example:9090/").unwrap();
        assert_eq!(p.base, "https://prom.example:9090");
        assert_eq!(
            p.auth,
            Some(Auth::Basic {
                user: "al@x".into(),
                password: "p:ss".into()
            })
        );
        let e = parse_base("http://u:s%zz@x:1").err().unwrap().to_string();
        assert!(e.starts_with("http://…@x:1: bad %-escape in the password"), "{e}");
        assert!(!e.contains("s%zz"), "{e}");
        assert_eq!(without_credentials("u:p@h:1/x@y"), "…@h:1/x@y");
    }

    #[test]
    fn urls_join_paths() {
        let c = Client::new("http://h:1/pre/").unwrap();
        assert_eq!(c.url("/api/v1/query?query=up"), "http://h:1/pre/api/v1/query?query=up");
        assert_eq!(c.url("metrics"), "http://h:1/pre/metrics");
        assert!(!format!("{c:?}").contains("authorization"));
    }
}
