//! Test certificates made on the spot (the tests control every fact about
//! them), and a small blocking HTTPS client that says what the server did:
//! for the endpoint's TLS and basic auth tests.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

/// A CA and what it issued, as PEM files in one directory.
pub struct Pki {
    pub dir: PathBuf,
}

/// One CA's files: `NAME-ca.crt`, and per leaf `LEAF.crt`/`LEAF.key`.
fn ca(dir: &Path, name: &str, leaves: &[(&str, bool)]) -> Result<()> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, format!("remote-vm test {name} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(dir.join(format!("{name}-ca.crt")), issuer.pem())?;
    for (leaf, server) in leaves {
        let sans = if *server { vec!["localhost".to_string(), "127.0.0.1".to_string()] } else { vec![format!("{leaf}.example")] };
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, leaf.to_string());
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{leaf}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{leaf}.key")), key.serialize_pem())?;
    }
    Ok(())
}

impl Pki {
    /// In `dir`: a server CA (`server-ca.crt`) with `server` and, for
    /// rotation, a second (`rotated-ca.crt`) with `rotated`; a client CA
    /// (`client-ca.crt`) with `client`, and an unrelated CA with `stranger`.
    pub fn write(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        ca(dir, "server", &[("server", true)])?;
        ca(dir, "rotated", &[("rotated", true)])?;
        ca(dir, "client", &[("client", false)])?;
        ca(dir, "other", &[("stranger", false)])?;
        Ok(Pki { dir: dir.to_path_buf() })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// What a request got.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// An HTTP answer: status, and the body.
    Answer(u16, String),
    /// The TLS handshake failed (the client's view of why).
    Refused(String),
}

/// How to ask.
#[derive(Default, Clone)]
pub struct Ask<'a> {
    /// The CA that must have issued the server's certificate.
    pub ca: Option<&'a Path>,
    /// A client certificate and key to offer.
    pub client: Option<(&'a Path, &'a Path)>,
    /// Basic auth.
    pub user: Option<(&'a str, &'a str)>,
}

fn load_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(p)
        .with_context(|| format!("{}", p.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}", p.display()))
}

/// `GET path` over HTTPS on `addr` (HOST:PORT, the name checked: `localhost`):
/// the answer, or the handshake's refusal. Also the server certificate's
/// DER, to tell certificates apart.
pub fn get(addr: &str, path: &str, ask: &Ask) -> Result<(Outcome, Option<Vec<u8>>)> {
    let sock = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(client(ask)?, sock);
    let auth = authorization(ask);
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    // The handshake runs within the first write and read; with TLS 1.3 a
    // refused client certificate shows as an alert on the read.
    let mut raw = Vec::new();
    let io = tls.write_all(request.as_bytes()).and_then(|()| tls.read_to_end(&mut raw));
    let server_cert = tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    if let Err(e) = io
        && raw.is_empty()
    {
        return Ok((Outcome::Refused(e.to_string()), server_cert));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        if text.is_empty() {
            return Ok((Outcome::Refused("closed without an answer".into()), server_cert));
        }
        bail!("no HTTP answer: {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((Outcome::Answer(status, body.to_string()), server_cert))
}

/// A TLS client session as `ask` says (the server's name checked: `localhost`).
fn client(ask: &Ask) -> Result<rustls::ClientConnection> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ask.ca.context("Ask::ca")?)? {
        roots.add(c)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match ask.client {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, PrivateKeyDer::from_pem_file(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost")?.to_owned())?)
}

/// The `Authorization` header line for `ask`'s user, if any.
fn authorization(ask: &Ask) -> String {
    match ask.user {
        Some((u, p)) => {
            use base64::Engine;
            format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
        }
        None => String::new(),
    }
}

/// One TLS connection kept alive for several requests, as a scraper keeps it.
pub struct KeptAlive {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    auth: String,
    /// Read, not yet taken as an answer.
    pending: Vec<u8>,
}

impl KeptAlive {
    /// TLS over `sock` (already connected), as `ask` says.
    pub fn new(sock: TcpStream, ask: &Ask) -> Result<KeptAlive> {
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(KeptAlive { tls: rustls::StreamOwned::new(client(ask)?, sock), auth: authorization(ask), pending: Vec::new() })
    }

    /// `GET path` on this connection: the status (the body read and dropped).
    pub fn get(&mut self, path: &str) -> Result<u16> {
        self.send(path, 1)?;
        self.answer()
    }

    /// `n` requests of `path` written at once (pipelined), then their `n`
    /// answers read: how many were 200.
    pub fn pipeline(&mut self, path: &str, n: usize) -> Result<usize> {
        self.send(path, n)?;
        let mut ok = 0;
        for _ in 0..n {
            ok += usize::from(self.answer()? == 200);
        }
        Ok(ok)
    }

    fn send(&mut self, path: &str, n: usize) -> Result<()> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{}\r\n", self.auth);
        self.tls.write_all(request.repeat(n).as_bytes())?;
        Ok(())
    }

    /// One answer: its head, then Content-Length bytes of body (what comes
    /// after is the next answer's, kept).
    fn answer(&mut self) -> Result<u16> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .context("no content-length")?
                    .parse()?;
                if self.pending.len() >= end + 4 + len {
                    self.pending.drain(..end + 4 + len);
                    return head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("no status in {head:?}"));
                }
            }
            let n = self.tls.read(&mut buf)?;
            if n == 0 {
                bail!("closed before a whole answer: {}", String::from_utf8_lossy(&self.pending));
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

/// The DER of the first certificate in a PEM file.
pub fn cert_der(p: &Path) -> Result<Vec<u8>> {
    Ok(load_certs(p)?.first().context("no certificate")?.to_vec())
}
