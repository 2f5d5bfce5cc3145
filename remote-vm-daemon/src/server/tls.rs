//! TLS handshakes off the serving thread. A handshake costs a signature (an
//! RSA one is milliseconds of CPU, far more under emulation): done on the
//! serving thread, a flood of them would hold up `/metrics`. Each runs on a
//! thread of its own runtime, at most `slots` at a time, each within its own
//! deadline; the socket then comes back to the serving runtime with the TLS
//! session, and only the record layer (cheap symmetric crypto) runs there.
//!
//! A socket belongs to one runtime's reactor: `Rehomed` lets the stream under
//! a `TlsStream` be taken out (deregistered) on the handshake thread and put
//! back (registered) on the serving one.
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Semaphore, oneshot},
};
use tokio_rustls::server::TlsStream;

/// A TCP stream that can move between runtimes (see the module's documentation).
pub struct Rehomed(Option<TcpStream>);

impl Rehomed {
    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.0.as_mut().map(Pin::new).ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Rehomed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Rehomed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// What a TLS record starts with (a handshake); an HTTP request starts with a
/// method's letters.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How a handshake ended, when not with a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// The client left, or said nothing within the deadline: not worth a warning.
    Quiet,
    /// Why (a warning, throttled).
    Because(String),
}

/// The handshake thread: its runtime and the handshake slots.
pub struct Handshakes {
    runtime: tokio::runtime::Handle,
    slots: Arc<Semaphore>,
    deadline: Duration,
}

impl Handshakes {
    /// Starts the thread (it runs for the life of the process). `slots`:
    /// handshakes at once; `deadline`: each one's, from when it has a slot.
    pub fn start(slots: usize, deadline: Duration) -> io::Result<Handshakes> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("tls-handshakes".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(Handshakes { runtime: handle, slots: Arc::new(Semaphore::new(slots.max(1))), deadline })
    }

    /// The handshake of `stream` (taken by the serving runtime) on the
    /// handshake thread; the session comes back registered with the calling
    /// runtime. Dropping the future (the connection evicted, or its own
    /// deadline) ends the handshake and closes the socket at once. `T` (the
    /// socket's share of the budget) travels with the socket and is dropped
    /// after it, wherever that happens, so the budget counts every socket.
    pub async fn accept<T: Send + 'static>(&self, stream: TcpStream, config: Arc<ServerConfig>, share: T) -> Result<(TlsStream<Rehomed>, T), Failed> {
        let std = stream.into_std().map_err(|e| Failed::Because(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let (slots, deadline) = (self.slots.clone(), self.deadline);
        let task = self.runtime.spawn(async move {
            // Dropped after the socket inside (a field drops after those
            // before it), however this task ends.
            let held = Held { socket: Some(std), share: Some(share) };
            let Ok(_slot) = slots.acquire_owned().await else { return };
            let mut held = held;
            let result = async {
                let std = held.socket.take().ok_or(Failed::Quiet)?;
                let stream = TcpStream::from_std(std).map_err(|e| Failed::Because(e.to_string()))?;
                let mut tls = match tokio::time::timeout(deadline, handshake(stream, config)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(Failed::Quiet),
                };
                // Deregistered here, registered again by the caller.
                let std = tls.get_mut().0.0.take().map(TcpStream::into_std);
                match std {
                    Some(Ok(std)) => Ok((tls, std)),
                    Some(Err(e)) => Err(Failed::Because(e.to_string())),
                    None => Err(Failed::Quiet),
                }
            }
            .await;
            let result = result.map(|(tls, std)| (tls, std, held.share.take()));
            // On failure the socket is gone by now; the share goes with `held`.
            if let Ok((tls, std, Some(share))) = result {
                if let Err(Ok((tls, std, share))) = tx.send(Ok((tls, std, share))) {
                    // The connection was evicted meanwhile: socket, then share.
                    drop((tls, std));
                    drop(share);
                }
            } else if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        // Gone with this future: the handshake and its socket too.
        let _abort = AbortOnDrop(task.abort_handle());
        let (mut tls, std, share) = rx.await.map_err(|_| Failed::Quiet)??;
        match TcpStream::from_std(std) {
            Ok(s) => tls.get_mut().0.0 = Some(s),
            Err(e) => {
                drop(tls);
                return Err(Failed::Because(e.to_string()));
            }
        }
        Ok((tls, share))
    }
}

/// A socket and its share of the budget: the share is dropped after the
/// socket (fields drop in order).
struct Held<T> {
    socket: Option<std::net::TcpStream>,
    share: Option<T>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The TLS handshake. Plain HTTP to a TLS port is answered 400 saying so, as
/// Go's servers do.
async fn handshake(stream: TcpStream, config: Arc<ServerConfig>) -> Result<TlsStream<Rehomed>, Failed> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return Err(Failed::Quiet),
        Ok(_) => {}
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let mut stream = stream;
        let body = "Client sent an HTTP request to an HTTPS server.\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client sent (a little, briefly): closing with it
        // unread would reset the connection before the client reads the 400.
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut left: usize = 16 * 1024;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
        return Err(Failed::Because("plain HTTP to the TLS port (answered 400)".into()));
    }
    tokio_rustls::TlsAcceptor::from(config)
        .accept(Rehomed(Some(stream)))
        .await
        .map_err(|e| Failed::Because(e.to_string()))
}
