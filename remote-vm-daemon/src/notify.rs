//! The systemd notification protocol (sd_notify), spoken only when
//! `NOTIFY_SOCKET` is set: `STATUS=` lines while starting, `READY=1` once the
//! probes are attached, `STOPPING=1` on shutdown.
use std::os::unix::net::UnixDatagram;

pub struct Notifier {
    target: Option<(UnixDatagram, String)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let socket = UnixDatagram::unbound().ok()?;
            Some((socket, path))
        });
        Notifier { target }
    }

    /// Sends one message (newline-separated `KEY=VALUE` assignments); failures
    /// are logged, never fatal.
    pub fn send(&self, message: &str) {
        let Some((socket, path)) = &self.target else {
            return;
        };
        let result = if let Some(abstract_name) = path.strip_prefix('@') {
            send_abstract(socket, abstract_name.as_bytes(), message.as_bytes())
        } else {
            socket.send_to(message.as_bytes(), path).map(drop)
        };
        if let Err(e) = result {
            log::warn!("sd_notify to {path}: {e}");
        }
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }
}

fn send_abstract(socket: &UnixDatagram, name: &[u8], message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(message, &addr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_the_datagram_protocol() {
        let dir = std::env::temp_dir().join(format!("rvm-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), dir.display().to_string())),
        };
        n.status("attaching probes");
        n.send("READY=1\nSTATUS=serving");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=attaching probes");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
        let _ = std::fs::remove_file(&dir);
        // Without NOTIFY_SOCKET nothing is sent and nothing fails.
        Notifier { target: None }.send("READY=1");
    }
}
