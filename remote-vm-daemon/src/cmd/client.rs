//! How `compare` and `top` reach an HTTP server: the CA, the credentials and
//! the client certificate, each from a file (never argv, where every local
//! user sees them), read bounded (a FIFO or a device is refused, not read
//! forever) into the one client's `Options`.
use std::path::{Path, PathBuf};

use remote_vm_prom::{Auth, ClientCert, Options};

/// The flags both subcommands take.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientFlags {
    /// PEM CA certificates for an https server, instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Basic auth user (the password from --basic-auth-password-file).
    #[arg(long, value_name = "USER")]
    pub basic_auth_user: Option<String>,
    /// A file holding the basic auth password (not on the command line, where
    /// any local user sees it).
    #[arg(long, value_name = "FILE")]
    pub basic_auth_password_file: Option<PathBuf>,
    /// A file holding a bearer token.
    #[arg(long, value_name = "FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM client certificate for an https server that asks for one (with --key-file).
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of --cert-file.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

/// A flag's file that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{flag} {path}: {reason}")]
pub struct FileError {
    pub flag: &'static str,
    pub path: String,
    pub reason: String,
}

/// The largest certificate or key file read.
const MAX_PEM: u64 = 1 << 20;
/// The largest password or token file read.
const MAX_SECRET: u64 = 64 * 1024;

/// A regular file's bytes, at most `max` (a larger one is an error).
fn read_file(flag: &'static str, path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    let err = |reason: String| FileError { flag, path: crate::printable(&path.display().to_string()), reason };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let meta = file.metadata().map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf).map_err(|e| err(format!("cannot read: {e}")))?;
    if buf.len() as u64 > max {
        return Err(err(format!("larger than {} KiB", max / 1024)));
    }
    Ok(buf)
}

/// A secret from a file: its one line, without the line end.
fn secret(flag: &'static str, path: &Path) -> Result<String, FileError> {
    let err = |reason: &str| FileError { flag, path: crate::printable(&path.display().to_string()), reason: reason.into() };
    let text = String::from_utf8(read_file(flag, path, MAX_SECRET)?).map_err(|_| err("not UTF-8"))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() || text.contains(['\n', '\r']) {
        return Err(err("expected one line"));
    }
    Ok(text.to_string())
}

impl ClientFlags {
    /// `base` with the credentials, the CA and the client certificate read
    /// from their files.
    pub fn options(&self, mut base: Options) -> Result<Options, FileError> {
        base.auth = match (&self.basic_auth_user, &self.basic_auth_password_file, &self.bearer_token_file) {
            (_, _, Some(token)) if self.basic_auth_user.is_some() || self.basic_auth_password_file.is_some() => {
                return Err(FileError {
                    flag: "--bearer-token-file",
                    path: token.display().to_string(),
                    reason: "give either basic auth or a bearer token".into(),
                });
            }
            (_, _, Some(token)) => Some(Auth::Bearer(secret("--bearer-token-file", token)?)),
            (Some(user), Some(pw), None) => Some(Auth::Basic { user: user.clone(), password: secret("--basic-auth-password-file", pw)? }),
            (Some(_), None, None) | (None, Some(_), None) => {
                return Err(FileError {
                    flag: "--basic-auth-password-file",
                    path: self.basic_auth_password_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    reason: "basic auth needs both --basic-auth-user and --basic-auth-password-file".into(),
                });
            }
            (None, None, None) => base.auth,
        };
        if let Some(p) = &self.ca_file {
            base.ca_pem = Some(read_file("--ca-file", p, MAX_PEM)?);
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            base.client_cert = Some(ClientCert { cert_pem: read_file("--cert-file", cert, MAX_PEM)?, key_pem: read_file("--key-file", key, MAX_PEM)? });
        }
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_bounded_and_only_when_regular() {
        let dir = std::env::temp_dir().join(format!("rvm-client-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flags = |f: ClientFlags| f.options(Options::default());
        let err = |f: ClientFlags| flags(f).unwrap_err().to_string();
        // A FIFO would block a plain read forever; a device never ends.
        for special in ["/dev/zero", "/dev/null"] {
            assert_eq!(
                err(ClientFlags { ca_file: Some(special.into()), ..Default::default() }),
                format!("--ca-file {special}: not a regular file")
            );
        }
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_PEM + 1) as usize]).unwrap();
        assert_eq!(err(ClientFlags { ca_file: Some(big.clone()), ..Default::default() }), format!("--ca-file {}: larger than 1024 KiB", big.display()));
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, "C").unwrap();
        std::fs::write(&key, "K").unwrap();
        let got = flags(ClientFlags { cert_file: Some(cert), key_file: Some(key), ..Default::default() }).unwrap();
        assert_eq!(got.client_cert, Some(ClientCert { cert_pem: b"C".to_vec(), key_pem: b"K".to_vec() }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
