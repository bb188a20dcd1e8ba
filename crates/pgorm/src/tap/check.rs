//! Checking the tap against a model: builders of backend messages, a
//! one-pass reference of what the tap must pass through and lift, and a
//! driver that feeds bytes through a [`TapStream`] in given pieces.
//!
//! Shared by the unit and property tests and by the fuzz target
//! (`crates/pgorm/fuzz`), which includes this file by path; so it names
//! the tap only as `crate::tap`.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tap::{NotificationTap, TapStream, MAX_LIFTED};

/// A notification as the tests compare them: process id, channel, payload.
pub(crate) type Lifted = (i32, String, String);

/// A backend message of type `kind` with `body`.
pub(crate) fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// A `NotificationResponse`.
pub(crate) fn notification(process_id: i32, channel: &str, payload: &str) -> Vec<u8> {
    let mut body = process_id.to_be_bytes().to_vec();
    body.extend_from_slice(channel.as_bytes());
    body.push(0);
    body.extend_from_slice(payload.as_bytes());
    body.push(0);
    message(b'A', &body)
}

/// The `SSLRequest` a client sends before its startup message.
pub(crate) fn ssl_request() -> Vec<u8> {
    let mut bytes = 8u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&80_877_103u32.to_be_bytes());
    bytes
}

/// A startup message (protocol 3.0) for `user`.
pub(crate) fn startup_message(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0");
    body.extend_from_slice(user.as_bytes());
    body.extend_from_slice(b"\0\0");
    let mut bytes = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// What the tap must do with `server` bytes after the client wrote
/// `client`: the bytes it passes through and the notifications it lifts.
/// Written as one plain pass over whole input, independently of the tap's
/// incremental state machine.
pub(crate) fn reference(client: &[u8], server: &[u8]) -> (Vec<u8>, Vec<Lifted>) {
    let is_request = |packet: &[u8]| {
        packet[..4] == 8u32.to_be_bytes()
            && (packet[4..] == 80_877_103u32.to_be_bytes()
                || packet[4..] == 80_877_104u32.to_be_bytes())
    };
    let replies = client
        .chunks_exact(8)
        .take_while(|packet| is_request(packet))
        .count();
    let mut passed = Vec::new();
    let mut lifted = Vec::new();
    let mut position = 0;
    for _ in 0..replies {
        let Some(&reply) = server.get(position) else {
            return (passed, lifted);
        };
        passed.push(reply);
        position += 1;
        if reply == b'S' || reply == b'G' {
            passed.extend_from_slice(&server[position..]);
            return (passed, lifted);
        }
    }
    let mut ready = false;
    loop {
        let rest = &server[position..];
        if rest.len() < 5 {
            passed.extend_from_slice(rest);
            return (passed, lifted);
        }
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let total = 1 + length;
        if !(4..=i32::MAX as usize).contains(&length) || rest.len() < total {
            passed.extend_from_slice(rest);
            return (passed, lifted);
        }
        let whole = &rest[..total];
        let parsed = (whole[0] == b'A' && ready && total <= MAX_LIFTED)
            .then(|| reference_notification(&whole[5..]))
            .flatten();
        match parsed {
            Some(notification) => lifted.push(notification),
            None => passed.extend_from_slice(whole),
        }
        ready |= whole[0] == b'Z';
        position += total;
    }
}

/// A notification body, if it is exactly: process id, then two
/// NUL-terminated UTF-8 strings, and nothing more.
fn reference_notification(body: &[u8]) -> Option<Lifted> {
    if body.len() < 4 {
        return None;
    }
    let parts: Vec<&[u8]> = body[4..].split(|byte| *byte == 0).collect();
    if parts.len() != 3 || !parts[2].is_empty() {
        return None;
    }
    Some((
        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        String::from_utf8(parts[0].to_vec()).ok()?,
        String::from_utf8(parts[1].to_vec()).ok()?,
    ))
}

/// How the bytes are cut up on their way through the tap. A size of zero
/// stands for a stream with nothing to give yet (`Pending`) among the
/// reads, and for a zero-capacity buffer among the caller's reads.
#[derive(Debug, Clone)]
pub(crate) struct Pieces {
    /// Bytes the stream beneath accepts per write (0 is taken as 1).
    pub(crate) writes: Vec<usize>,
    /// Bytes the stream beneath returns per read.
    pub(crate) reads: Vec<usize>,
    /// Capacity of the caller's buffer per read.
    pub(crate) buffers: Vec<usize>,
}

/// The stream beneath the tap: accepts writes and returns `server` bytes in
/// the given pieces.
struct Scripted<'a> {
    server: &'a [u8],
    /// How many bytes of `server` were read, shared with the driver.
    position: Rc<Cell<usize>>,
    reads: &'a [usize],
    read_index: usize,
    writes: &'a [usize],
    write_index: usize,
}

fn piece(sizes: &[usize], index: &mut usize) -> usize {
    let size = if sizes.is_empty() {
        usize::MAX
    } else {
        sizes[*index % sizes.len()]
    };
    *index += 1;
    size
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let position = this.position.get();
        if position < this.server.len() {
            let size = piece(this.reads, &mut this.read_index);
            if size == 0 {
                return Poll::Pending;
            }
            let end = this
                .server
                .len()
                .min(position.saturating_add(size))
                .min(position + out.remaining());
            out.put_slice(&this.server[position..end]);
            this.position.set(end);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let size = piece(this.writes, &mut this.write_index).max(1);
        Poll::Ready(Ok(size.min(data.len())))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes `client` through a tap, then reads `server` through it to the
/// end, cut up as `pieces` says. Returns what passed through and what was
/// lifted. Panics if the tap fails, or stops making progress.
pub(crate) fn run_tap(client: &[u8], server: &[u8], pieces: &Pieces) -> (Vec<u8>, Vec<Lifted>) {
    let tap = Arc::new(NotificationTap::default());
    // A stream that never gives anything would never end.
    let reads: &[usize] = if pieces.reads.iter().all(|size| *size == 0) {
        &[]
    } else {
        &pieces.reads
    };
    // Nor would a caller that only ever offers zero-capacity buffers.
    let buffers: &[usize] = if pieces.buffers.iter().all(|size| *size == 0) {
        &[]
    } else {
        &pieces.buffers
    };
    let consumed = Rc::new(Cell::new(0));
    let scripted = Scripted {
        server,
        position: consumed.clone(),
        reads,
        read_index: 0,
        writes: &pieces.writes,
        write_index: 0,
    };
    let mut stream = TapStream::new(scripted, tap.clone());
    let mut cx = Context::from_waker(Waker::noop());

    let mut written = 0;
    while written < client.len() {
        match Pin::new(&mut stream).poll_write(&mut cx, &client[written..]) {
            Poll::Ready(Ok(count)) if count > 0 => written += count,
            other => panic!("the write went wrong: {other:?}"),
        }
    }

    let mut passed = Vec::new();
    let mut lifted = Vec::new();
    let mut buffer = vec![0; 1 << 16];
    // Every call moves a byte in or out, or is one of a bounded number of
    // calls in a row that move nothing (pending reads, zero capacity).
    let mut idle = 0;
    let mut before = (0, 0);
    let mut buffer_index = 0;
    loop {
        let capacity = piece(buffers, &mut buffer_index).min(buffer.len());
        let mut out = ReadBuf::new(&mut buffer[..capacity]);
        let polled = Pin::new(&mut stream).poll_read(&mut cx, &mut out);
        let count = out.filled().len();
        passed.extend_from_slice(out.filled());
        tap.drain(usize::MAX, |notification| {
            lifted.push((
                notification.process_id,
                notification.channel().to_string(),
                notification.payload().to_string(),
            ))
        });
        if let Poll::Ready(Err(error)) = polled {
            panic!("the tap failed: {error}");
        }
        if polled.is_ready() && count == 0 && capacity > 0 {
            break;
        }
        let now = (passed.len(), consumed.get());
        if now == before {
            idle += 1;
            let bound = (reads.len() + 1) * (buffers.len() + 1) + 4;
            assert!(idle <= bound, "the tap stopped making progress");
        } else {
            idle = 0;
            before = now;
        }
    }
    (passed, lifted)
}
