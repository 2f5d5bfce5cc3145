//! Where the endpoint listens. Under socket activation (`remote-vm.socket`)
//! systemd holds the sockets across restarts, so no user can take the port or
//! the socket's path while the daemon is down: the sockets it passes
//! (`LISTEN_FDS`) are the listeners, and `web.listen_address` and
//! `web.socket` are not bound (a line says so when they name other
//! addresses). Otherwise the daemon binds them itself: each TCP address (a
//! taken port is fatal, before anything is attached) and the Unix socket
//! (made 0660; a stale one left by a killed daemon is replaced, one a live
//! server answers on is fatal, any other failure leaves the daemon without
//! it and says so).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixListener,
    },
    path::{Path, PathBuf},
};

use crate::config::Config;

/// A bound listener, before the runtime takes it.
pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// How the log and `READY=1` show it (`scheme`: http or https).
    pub fn shown(&self, scheme: &str, telemetry_path: &str) -> String {
        match self {
            Bound::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("{scheme}://{a}{telemetry_path}"),
                Err(_) => format!("{scheme}://?{telemetry_path}"),
            },
            Bound::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// The listeners, and what to say and undo about them.
pub struct Listeners {
    pub bound: Vec<Bound>,
    /// From systemd (socket activation).
    pub passed: bool,
    /// Lines for the log once it is set up (warnings).
    pub notes: Vec<String>,
    /// The Unix socket this process made (removed at exit).
    pub made: Option<PathBuf>,
    /// The Unix socket served on, made or passed.
    pub socket: Option<PathBuf>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        if let Some(p) = self.made.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The sockets systemd passed to this process, if any (`LISTEN_PID` is
/// ours and `LISTEN_FDS` says how many, from descriptor 3). The variables are
/// unset so no child takes them for its own.
pub fn passed_by_systemd() -> Result<Option<Vec<Bound>>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called before any other thread exists (start of `run`).
        unsafe { std::env::remove_var(v) };
    }
    let (Some(pid), Some(fds)) = (pid, fds) else { return Ok(None) };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: RawFd = fds.parse().map_err(|_| format!("LISTEN_FDS={fds}: not a number"))?;
    if !(1..=64).contains(&n) {
        return Err(format!("LISTEN_FDS={n}: expected 1 to 64 sockets"));
    }
    (3..3 + n).map(passed).collect::<Result<Vec<_>, _>>().map(Some)
}

/// Descriptor `fd` as a listener: a listening stream socket, TCP or Unix.
fn passed(fd: RawFd) -> Result<Bound, String> {
    let int = |level, name| -> Result<libc::c_int, String> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt fills an int of the length passed.
        let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
        if r != 0 { Err(format!("socket {fd} from systemd: {}", std::io::Error::last_os_error())) } else { Ok(v) }
    };
    if int(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM || int(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(format!("socket {fd} from systemd is not a listening stream socket (ListenStream= in remote-vm.socket)"));
    }
    // SAFETY: F_SETFD on a descriptor of ours.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: systemd handed this descriptor to this process; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match int(libc::SOL_SOCKET, libc::SO_DOMAIN)? {
        libc::AF_INET | libc::AF_INET6 => Ok(Bound::Tcp(std::net::TcpListener::from(owned))),
        libc::AF_UNIX => {
            let l = UnixListener::from(owned);
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .ok_or_else(|| format!("socket {fd} from systemd: a Unix socket without a path"))?;
            Ok(Bound::Unix(l, path))
        }
        d => Err(format!("socket {fd} from systemd: address family {d}, not IP or Unix")),
    }
}

/// The listeners for `config`: systemd's, or bound here.
pub fn listeners(config: &Config, status: impl Fn(&str)) -> Result<Listeners, String> {
    if let Some(bound) = passed_by_systemd()? {
        let mut notes = Vec::new();
        let tcp: Vec<SocketAddr> = bound.iter().filter_map(|b| if let Bound::Tcp(l) = b { l.local_addr().ok() } else { None }).collect();
        let socket = bound.iter().find_map(|b| if let Bound::Unix(_, p) = b { Some(p.clone()) } else { None });
        let unbound: Vec<String> = config.listen.iter().filter(|a| !tcp.iter().any(|t| same(t, a))).map(|a| a.to_string()).collect();
        if !unbound.is_empty() {
            notes.push(format!(
                "socket activation: serving on the sockets systemd passed ({}); web.listen_address {} not bound (ListenStream= in remote-vm.socket decides)",
                shown_all(&bound),
                unbound.join(", ")
            ));
        }
        if config.socket.is_some() && config.socket != socket {
            notes.push(format!(
                "socket activation: web.socket {} not made: {} (ListenStream= in remote-vm.socket decides)",
                config.socket.as_ref().map_or(String::new(), |p| p.display().to_string()),
                socket.as_ref().map_or("systemd passed no Unix socket".to_string(), |p| format!("systemd passed {}", p.display()))
            ));
        }
        return Ok(Listeners { bound, passed: true, notes, made: None, socket });
    }
    let mut out = Listeners { bound: Vec::new(), passed: false, notes: Vec::new(), made: None, socket: None };
    for addr in &config.listen {
        status(&format!("binding {addr}"));
        match bind(*addr) {
            Ok(l) => out.bound.push(Bound::Tcp(l)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!("cannot listen on {addr}: {e} (another remote-vm-daemon? choose another with --web.listen-address)"));
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        }
    }
    if let Some(path) = &config.socket {
        status(&format!("binding {}", path.display()));
        match bind_unix(path) {
            Ok(l) => {
                out.bound.push(Bound::Unix(l, path.clone()));
                out.made = Some(path.clone());
                out.socket = Some(path.clone());
            }
            Err(UnixBindError::Live) => {
                return Err(format!(
                    "cannot listen on {}: a server answers there (another remote-vm-daemon? choose another with --web.socket)",
                    path.display()
                ));
            }
            Err(UnixBindError::Other(why)) => out.notes.push(format!(
                "no Unix socket: {}: {why}; /stalls only over TCP to whom [stalls] serve lets in",
                path.display()
            )),
        }
    }
    Ok(out)
}

fn shown_all(bound: &[Bound]) -> String {
    bound.iter().map(|b| b.shown("tcp", "").trim_start_matches("tcp://").to_string()).collect::<Vec<_>>().join(", ")
}

/// Whether a passed address is the one configured (`[::]:P` takes `0.0.0.0:P` too).
fn same(passed: &SocketAddr, configured: &SocketAddr) -> bool {
    passed == configured
        || (passed.port() == configured.port()
            && passed.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            && configured.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

enum UnixBindError {
    /// A server answers on the path.
    Live,
    Other(String),
}

/// Binds the Unix socket at `path` (its directory made if missing), mode
/// 0660. A socket file no server answers on (a killed daemon's) is replaced;
/// anything else at the path is left alone.
fn bind_unix(path: &Path) -> Result<UnixListener, UnixBindError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let other = |e: std::io::Error| UnixBindError::Other(e.to_string());
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).map_err(other)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(other)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(UnixBindError::Live);
            }
            std::fs::remove_file(path).map_err(other)?;
        }
        Ok(_) => return Err(UnixBindError::Other("something other than a socket is there".into())),
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(other)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(other)?;
    Ok(l)
}

/// Binds `addr`. `[::]:PORT` (from `:PORT`) takes IPv4 too, whatever
/// `net.ipv6.bindv6only` says (as Go's `:PORT` does), and falls back to
/// `0.0.0.0:PORT` on a kernel without IPv6.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    if addr.ip() != IpAddr::from(Ipv6Addr::UNSPECIFIED) {
        return std::net::TcpListener::bind(addr);
    }
    match bind_dual_stack(addr.port()) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)) => {
            std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, addr.port()))
        }
        r => r,
    }
}

/// `[::]:port` with `IPV6_V6ONLY` off (and `SO_REUSEADDR`, as std's bind).
fn bind_dual_stack(port: u16) -> std::io::Result<std::net::TcpListener> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain socket calls on a descriptor this function owns, with
    // option values and a sockaddr_in6 of the sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(err());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let set = |level, name, value: libc::c_int| {
            let v = &value as *const libc::c_int as *const libc::c_void;
            libc::setsockopt(sock.as_raw_fd(), level, name, v, std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        if set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0) != 0 || set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1) != 0 {
            return Err(err());
        }
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        if libc::bind(sock.as_raw_fd(), &sa as *const libc::sockaddr_in6 as *const libc::sockaddr, len) != 0
            || libc::listen(sock.as_raw_fd(), 128) != 0
        {
            return Err(err());
        }
        Ok(std::net::TcpListener::from(sock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_refused_and_other_files_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rvm-listen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run/remote-vm.sock");
        // The directory is made; the socket is 0660.
        let live = bind_unix(&path).ok().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        assert!(matches!(bind_unix(&path), Err(UnixBindError::Live)));
        // A killed daemon's socket: no server answers, replaced.
        drop(live);
        assert!(bind_unix(&path).is_ok());
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(bind_unix(&file), Err(UnixBindError::Other(_))));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_passed_dual_stack_socket_is_the_configured_every_address() {
        let any6: SocketAddr = "[::]:19361".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:19361".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:19361".parse().unwrap();
        assert!(same(&any6, &any4) && same(&local, &local));
        assert!(!same(&local, &any4) && !same(&any6, &local));
    }
}
