//! Reading notifications without copying them twice. tokio-postgres parses
//! every `NotificationResponse` into strings of its own and lends them out
//! only as `&str`, so a listener that wants owned strings must copy them.
//! [`TapStream`] sits under the connection instead: it lifts notification
//! messages out of the byte stream as they are read, building the
//! listener's strings straight from the bytes, and passes every other
//! message through untouched.
//!
//! Used for plain (non-TLS) single-host dedicated connections, where the
//! listener opens the socket itself ([`PlainConnector`]); other connections
//! take notifications from tokio-postgres as usual.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::connect::{BoxFuture, Connected, Connector, RawConnection};
use crate::error::{OrmError, OrmResult};

/// A notification lifted out of the byte stream.
#[derive(Debug)]
pub(crate) struct TappedNotification {
    pub(crate) process_id: i32,
    pub(crate) channel: String,
    pub(crate) payload: String,
    pub(crate) received_at: SystemTime,
}

/// Where a [`TapStream`] leaves the notifications it lifts out, until the
/// driver takes them (after each poll of the connection).
#[derive(Debug, Default)]
pub(crate) struct NotificationTap {
    lifted: Mutex<Vec<TappedNotification>>,
}

impl NotificationTap {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TappedNotification>> {
        self.lifted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands up to `limit` lifted notifications to `each`, in arrival
    /// order, and returns how many there were.
    pub(crate) fn drain(&self, limit: usize, each: impl FnMut(TappedNotification)) -> usize {
        let mut lifted = self.lock();
        let count = lifted.len().min(limit);
        lifted.drain(..count).for_each(each);
        count
    }
}

/// The backend message type of `NotificationResponse`.
const NOTIFICATION_RESPONSE: u8 = b'A';
/// Bytes read from the socket at a time. Small enough that a blocked
/// `BlockProducer` listener holds at most a few hundred notifications beyond
/// its queue (what one read lifts), as large as tokio-postgres' own reads.
const READ_SIZE: usize = 8 * 1024;

/// A stream that removes `NotificationResponse` messages from what the
/// server sends, handing them to a [`NotificationTap`].
pub(crate) struct TapStream<S> {
    inner: S,
    tap: Arc<NotificationTap>,
    /// Bytes read from `inner`; `buffer[start..]` are not handled yet.
    buffer: Vec<u8>,
    start: usize,
    /// Bytes of the current (non-notification) message still to forward.
    forwarding: usize,
    lifted: Vec<TappedNotification>,
}

impl<S> TapStream<S> {
    pub(crate) fn new(inner: S, tap: Arc<NotificationTap>) -> Self {
        TapStream {
            inner,
            tap,
            buffer: Vec::with_capacity(READ_SIZE),
            start: 0,
            forwarding: 0,
            lifted: Vec::new(),
        }
    }

    /// Handles whole messages at the front of the buffer: lifts
    /// notifications, and stops at the first other message (setting
    /// `forwarding`) or at an incomplete one.
    fn lift(&mut self, received_at: SystemTime) -> io::Result<()> {
        while self.forwarding == 0 {
            let pending = &self.buffer[self.start..];
            if pending.len() < 5 {
                return Ok(());
            }
            let kind = pending[0];
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if len < 4 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "invalid message length",
                ));
            }
            if kind != NOTIFICATION_RESPONSE {
                self.forwarding = 1 + len;
                return Ok(());
            }
            if pending.len() < 1 + len {
                return Ok(());
            }
            let notification = parse_notification(&pending[5..1 + len], received_at)?;
            self.lifted.push(notification);
            self.start += 1 + len;
        }
        Ok(())
    }

    /// Copies as much of the message being forwarded as is buffered and
    /// fits. Returns how many bytes were copied.
    fn forward(&mut self, out: &mut ReadBuf<'_>) -> usize {
        let available = self.buffer.len() - self.start;
        let count = self.forwarding.min(available).min(out.remaining());
        out.put_slice(&self.buffer[self.start..self.start + count]);
        self.start += count;
        self.forwarding -= count;
        count
    }

    fn hand_over(&mut self) {
        if !self.lifted.is_empty() {
            self.tap.lock().append(&mut self.lifted);
        }
    }
}

/// `process_id`, channel and payload of a `NotificationResponse` body.
fn parse_notification(body: &[u8], received_at: SystemTime) -> io::Result<TappedNotification> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if body.len() < 4 {
        return Err(invalid("notification message too short"));
    }
    let process_id = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    let channel_end = rest
        .iter()
        .position(|byte| *byte == 0)
        .ok_or_else(|| invalid("notification channel not terminated"))?;
    let payload = &rest[channel_end + 1..];
    let payload_end = payload
        .iter()
        .position(|byte| *byte == 0)
        .ok_or_else(|| invalid("notification payload not terminated"))?;
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| invalid("notification is not UTF-8"))
    };
    Ok(TappedNotification {
        process_id,
        channel: text(&rest[..channel_end])?,
        payload: text(&payload[..payload_end])?,
        received_at,
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for TapStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut reads = 0;
        loop {
            if this.forwarding > 0 && this.forward(out) > 0 {
                this.hand_over();
                return Poll::Ready(Ok(()));
            }
            if this.forwarding == 0 {
                this.lift(SystemTime::now())?;
                if this.forwarding > 0 {
                    continue;
                }
            }
            // Everything buffered is handled (or incomplete): read more. After
            // one read that gave the connection nothing, let the driver take
            // what was lifted before reading on.
            if reads == 1 {
                this.hand_over();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.start > 0 {
                this.buffer.drain(..this.start);
                this.start = 0;
            }
            let filled = this.buffer.len();
            this.buffer.resize(filled + READ_SIZE, 0);
            let mut read_buf = ReadBuf::new(&mut this.buffer[filled..]);
            let result = Pin::new(&mut this.inner).poll_read(cx, &mut read_buf);
            let read = read_buf.filled().len();
            this.buffer.truncate(filled + read);
            match result {
                Poll::Pending => {
                    this.hand_over();
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => {
                    this.hand_over();
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(())) if read == 0 => {
                    // End of stream: pass on any incomplete message as it is
                    // (the connection reports the error), then the end.
                    this.hand_over();
                    let rest = (this.buffer.len() - this.start).min(out.remaining());
                    out.put_slice(&this.buffer[this.start..this.start + rest]);
                    this.start += rest;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => reads += 1,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TapStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A plain socket the listener opened itself.
pub(crate) enum PlainSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for PlainSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_read(cx, out),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_read(cx, out),
        }
    }
}

impl AsyncWrite for PlainSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_write(cx, data),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// A tapped connection: the connection, and the tap its stream fills.
struct TappedConnection {
    connection: tokio_postgres::Connection<TapStream<PlainSocket>, NoTlsStream>,
    tap: Arc<NotificationTap>,
}

impl RawConnection for TappedConnection {
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        self.connection.poll_message(cx)
    }

    fn tap(&self) -> Option<&NotificationTap> {
        Some(&self.tap)
    }
}

/// The connector for plain connections: opens the socket itself so that a
/// [`TapStream`] can sit under the connection. A URL with several hosts goes
/// to tokio-postgres' own connect (which tries them in turn), untapped.
pub(crate) struct PlainConnector;

impl Connector for PlainConnector {
    fn connect<'a>(&'a self, config: &'a Config) -> BoxFuture<'a, OrmResult<Connected>> {
        Box::pin(async move {
            if config.get_hosts().len() != 1 || config.get_ports().len() > 1 {
                let (client, connection) =
                    config.connect(NoTls).await.map_err(OrmError::connection)?;
                return Ok((client, Box::new(connection) as Box<dyn RawConnection>));
            }
            let socket = open_socket(config).await?;
            let tap = Arc::new(NotificationTap::default());
            let (client, connection) = config
                .connect_raw(TapStream::new(socket, tap.clone()), NoTls)
                .await
                .map_err(OrmError::connection)?;
            let connection = TappedConnection { connection, tap };
            Ok((client, Box::new(connection) as Box<dyn RawConnection>))
        })
    }
}

/// Opens the one host of `config` with its timeout and keepalive settings.
async fn open_socket(config: &Config) -> OrmResult<PlainSocket> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target = match &config.get_hosts()[0] {
        Host::Tcp(name) => format!("{name}:{port}"),
        Host::Unix(directory) => format!("{}/.s.PGSQL.{port}", directory.display()),
    };
    let connect = async {
        let opened: io::Result<PlainSocket> = match &config.get_hosts()[0] {
            Host::Tcp(name) => {
                let stream = match config.get_hostaddrs().first() {
                    Some(address) => TcpStream::connect((*address, port)).await?,
                    None => TcpStream::connect((name.as_str(), port)).await?,
                };
                stream.set_nodelay(true)?;
                if config.get_keepalives() {
                    let mut keepalive =
                        socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
                    if let Some(interval) = config.get_keepalives_interval() {
                        keepalive = keepalive.with_interval(interval);
                    }
                    if let Some(retries) = config.get_keepalives_retries() {
                        keepalive = keepalive.with_retries(retries);
                    }
                    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
                }
                Ok(PlainSocket::Tcp(stream))
            }
            Host::Unix(directory) => {
                let path = directory.join(format!(".s.PGSQL.{port}"));
                Ok(PlainSocket::Unix(UnixStream::connect(path).await?))
            }
        };
        opened
    };
    let opened = match config.get_connect_timeout() {
        Some(timeout) => {
            tokio::time::timeout(*timeout, connect)
                .await
                .map_err(|_| OrmError::Timeout {
                    operation: "connect",
                    after: *timeout,
                })?
        }
        None => connect.await,
    };
    opened.map_err(|source| OrmError::Socket { target, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn notification(pid: i32, channel: &str, payload: &str) -> Vec<u8> {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(channel.as_bytes());
        body.push(0);
        body.extend_from_slice(payload.as_bytes());
        body.push(0);
        message(b'A', &body)
    }

    /// Feeds `bytes` through a tap in chunks of `chunk` bytes and returns
    /// what passed through and what was lifted.
    async fn run(bytes: Vec<u8>, chunk: usize) -> (Vec<u8>, Vec<(i32, String, String)>) {
        let mut builder = tokio_test_stream(bytes, chunk);
        let tap = Arc::new(NotificationTap::default());
        let mut stream = TapStream::new(&mut builder, tap.clone());
        let mut passed = Vec::new();
        stream.read_to_end(&mut passed).await.unwrap();
        let mut lifted = Vec::new();
        tap.drain(usize::MAX, |n| {
            lifted.push((n.process_id, n.channel, n.payload))
        });
        (passed, lifted)
    }

    /// A reader that returns `bytes` at most `chunk` at a time.
    fn tokio_test_stream(bytes: Vec<u8>, chunk: usize) -> ChunkedReader {
        ChunkedReader {
            bytes,
            position: 0,
            chunk,
        }
    }

    struct ChunkedReader {
        bytes: Vec<u8>,
        position: usize,
        chunk: usize,
    }

    impl AsyncRead for ChunkedReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let end = (self.position + self.chunk)
                .min(self.bytes.len())
                .min(self.position + out.remaining());
            let position = self.position;
            out.put_slice(&self.bytes[position..end]);
            self.position = end;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn notifications_are_lifted_and_everything_else_passes_through_intact() {
        let mut bytes = message(b'Z', b"I");
        bytes.extend(notification(7, "orders", "42"));
        bytes.extend(message(b'C', b"LISTEN\0"));
        bytes.extend(notification(8, "Ünïcode", &"x".repeat(7999)));
        bytes.extend(notification(9, "c", ""));
        bytes.extend(message(b'Z', b"I"));
        let mut expected = message(b'Z', b"I");
        expected.extend(message(b'C', b"LISTEN\0"));
        expected.extend(message(b'Z', b"I"));
        for chunk in [1, 2, 3, 5, 7, 64, 100_000] {
            let (passed, lifted) = run(bytes.clone(), chunk).await;
            assert_eq!(passed, expected, "chunk {chunk}");
            assert_eq!(
                lifted,
                [
                    (7, "orders".to_string(), "42".to_string()),
                    (8, "Ünïcode".to_string(), "x".repeat(7999)),
                    (9, "c".to_string(), String::new()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn a_malformed_notification_is_an_error() {
        let tap = Arc::new(NotificationTap::default());
        let mut reader = tokio_test_stream(message(b'A', b"\0\0\0\x01no-terminator"), 1024);
        let mut stream = TapStream::new(&mut reader, tap);
        let mut passed = Vec::new();
        assert!(stream.read_to_end(&mut passed).await.is_err());
    }
}
