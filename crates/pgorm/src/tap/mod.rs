//! Reading notifications without copying them twice. tokio-postgres parses
//! every `NotificationResponse` into strings of its own and lends them out
//! only as `&str`, so a listener that wants owned strings must copy them.
//! [`TapStream`] sits in the byte stream of the connection instead: it lifts
//! notification messages out as they are read, building the listener's
//! strings straight from the bytes, and passes every other byte through
//! untouched.
//!
//! The tap is a pure byte filter; [`crate::connect`] decides where it goes
//! (under a plain socket's connection, or above a TLS stream).
//!
//! # What it lifts, and when
//! - During startup it passes everything through as it comes. It watches
//!   what the client writes: an `SSLRequest` or `GSSENCRequest` (the first
//!   eight bytes of a session: int32 8, then 80877103 or 80877104) is
//!   answered by one unframed byte, which it passes on; after an `S` or `G`
//!   the stream is encrypted and the tap passes everything through for
//!   good. Otherwise the server's bytes are framed messages from there on.
//! - It lifts `NotificationResponse` messages only once the first
//!   `ReadyForQuery` has passed; one that comes earlier is forwarded, so
//!   tokio-postgres treats it as it would without the tap.
//! - A notification it cannot take apart exactly as tokio-postgres would
//!   (not UTF-8, unterminated, trailing bytes, or larger than any server
//!   sends) is forwarded, and the connection reports it or yields it as
//!   usual. A message with an impossible length makes the tap pass the rest
//!   of the stream through untouched, for the connection to report. The tap
//!   itself never fails but for errors of the stream beneath.
//! - Each read forwards as many whole messages as fit in the caller's
//!   buffer, lifting the notifications between them; what it buffers is
//!   bounded (one read plus at most one notification).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsStream};

mod raw;
pub(crate) use raw::{RawNotification, ReadText};

/// Where a [`TapStream`] leaves the notifications it lifts out, until the
/// driver takes them (after each poll of the connection, and before the
/// next one when a wake-up's budget left some).
#[derive(Debug, Default)]
pub(crate) struct NotificationTap {
    lifted: Mutex<VecDeque<RawNotification>>,
}

impl NotificationTap {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RawNotification>> {
        self.lifted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands at most `limit` lifted notifications to `each`, oldest first,
    /// and returns how many it handed over; the rest wait for the next call.
    pub(crate) fn drain(&self, limit: usize, each: impl FnMut(RawNotification)) -> usize {
        let mut lifted = self.lock();
        let count = lifted.len().min(limit);
        lifted.drain(..count).for_each(each);
        count
    }

    /// Adds a lifted notification, as a read would.
    #[cfg(test)]
    pub(crate) fn lift(&self, notification: RawNotification) {
        self.lock().push_back(notification);
    }

    /// How many lifted notifications wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A notification lifted by the current read: its process id, and where its
/// channel and payload are in the read's text.
struct Lifted {
    process_id: i32,
    channel: (u32, u32),
    payload: (u32, u32),
}

/// The backend message type of `NotificationResponse`.
const NOTIFICATION_RESPONSE: u8 = b'A';
/// The backend message type of `ReadyForQuery`: the first one ends startup.
const READY_FOR_QUERY: u8 = b'Z';
/// The request codes of `SSLRequest` and `GSSENCRequest`, which the server
/// answers with a single unframed byte.
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Bytes read from the stream beneath at a time. Large enough that a busy
/// connection costs few system calls and wake-ups (a read lifts about 500
/// short notifications), small enough that a blocked `BlockProducer`
/// listener holds at most that many beyond its queue.
const READ_SIZE: usize = 32 * 1024;
/// The largest notification message the tap lifts. A server sends at most
/// a block's worth (8000-byte payloads with the default 8 kB block, about
/// 32 kB with the largest); anything larger is forwarded rather than
/// buffered.
pub(crate) const MAX_LIFTED: usize = 64 * 1024;
/// The most the tap ever buffers: an incomplete notification and one read.
const MAX_BUFFERED: usize = MAX_LIFTED + READ_SIZE;

/// A stream that removes `NotificationResponse` messages from what the
/// server sends, handing them to a [`NotificationTap`].
pub(crate) struct TapStream<S> {
    inner: S,
    tap: Arc<NotificationTap>,
    /// Bytes read from `inner`: `buffer[start..end]` are not handled yet.
    /// The rest is memory kept (initialized) for the next read.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the current (forwarded) message still to forward.
    forwarding: usize,
    /// Single-byte replies to `SSLRequest`/`GSSENCRequest` still to come.
    replies_due: u32,
    /// The first `ReadyForQuery` has passed: notifications are lifted.
    ready: bool,
    /// Everything from here on passes through untouched (encrypted, broken
    /// framing, or the end of the stream).
    transparent: bool,
    /// `inner` reported the end of the stream.
    ended: bool,
    /// What the client wrote so far of its next startup packet, while it
    /// may still be a request answered by a single byte.
    client_header: [u8; 8],
    client_header_len: u8,
    /// The client has sent its startup message: no more requests to watch.
    client_started: bool,
    /// The notifications lifted since the last hand-over, and their
    /// channels and payloads, one after the other (UTF-8 each).
    lifted: Vec<Lifted>,
    text: Vec<u8>,
}

impl<S> TapStream<S> {
    pub(crate) fn new(inner: S, tap: Arc<NotificationTap>) -> Self {
        TapStream {
            inner,
            tap,
            buffer: Vec::new(),
            start: 0,
            end: 0,
            forwarding: 0,
            replies_due: 0,
            ready: false,
            transparent: false,
            ended: false,
            client_header: [0; 8],
            client_header_len: 0,
            client_started: false,
            lifted: Vec::new(),
            text: Vec::new(),
        }
    }

    /// Notes what the client wrote while it may still be sending requests
    /// that the server answers with a single byte.
    fn observe_written(&mut self, mut written: &[u8]) {
        while !self.client_started && !written.is_empty() {
            let have = usize::from(self.client_header_len);
            let take = (8 - have).min(written.len());
            self.client_header[have..have + take].copy_from_slice(&written[..take]);
            self.client_header_len += take as u8;
            written = &written[take..];
            if self.client_header_len == 8 {
                let word = |at: usize| {
                    u32::from_be_bytes([
                        self.client_header[at],
                        self.client_header[at + 1],
                        self.client_header[at + 2],
                        self.client_header[at + 3],
                    ])
                };
                if word(0) == 8 && matches!(word(4), SSL_REQUEST_CODE | GSSENC_REQUEST_CODE) {
                    self.replies_due = self.replies_due.saturating_add(1);
                    self.client_header_len = 0;
                } else {
                    self.client_started = true;
                }
            }
        }
    }

    /// Forwards as much of the buffered bytes as fit in `out`, lifting the
    /// notifications among them. Stops when `out` is full or when the next
    /// step needs bytes not read yet.
    fn process(&mut self, out: &mut ReadBuf<'_>) {
        loop {
            let pending = &self.buffer[self.start..self.end];
            if pending.is_empty() || out.remaining() == 0 {
                return;
            }
            if self.forwarding > 0 || self.transparent {
                let wanted = if self.transparent {
                    pending.len()
                } else {
                    self.forwarding
                };
                let count = wanted.min(pending.len()).min(out.remaining());
                out.put_slice(&pending[..count]);
                self.start += count;
                if !self.transparent {
                    self.forwarding -= count;
                }
                continue;
            }
            if self.replies_due > 0 {
                // The one-byte answer to an SSLRequest or GSSENCRequest.
                let reply = pending[0];
                out.put_slice(&pending[..1]);
                self.start += 1;
                self.replies_due -= 1;
                if matches!(reply, b'S' | b'G') {
                    self.transparent = true;
                }
                continue;
            }
            if pending.len() < 5 {
                return;
            }
            let kind = pending[0];
            let length = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]);
            if !(4..=i32::MAX as u32).contains(&length) {
                // No message has this length: the framing is lost. Pass the
                // rest on for the connection to report.
                self.transparent = true;
                continue;
            }
            let total = 1 + length as usize;
            if kind == NOTIFICATION_RESPONSE && self.ready && total <= MAX_LIFTED {
                if pending.len() < total {
                    return;
                }
                if let Some((process_id, strings, channel_len)) =
                    parse_notification(&pending[5..total])
                {
                    // "channel\0payload" in one copy. Under MAX_LIFTED each,
                    // and the text is handed over after every read: the
                    // offsets fit in u32.
                    let at = self.text.len() as u32;
                    self.text.extend_from_slice(strings);
                    let split = at + channel_len as u32;
                    self.lifted.push(Lifted {
                        process_id,
                        channel: (at, split),
                        payload: (split + 1, self.text.len() as u32),
                    });
                    self.start += total;
                    continue;
                }
            }
            if kind == READY_FOR_QUERY {
                self.ready = true;
            }
            self.forwarding = total;
        }
    }

    /// Moves what was lifted to the tap: one shared text for all of it.
    fn hand_over(&mut self, received_at: SystemTime) {
        if self.lifted.is_empty() {
            return;
        }
        // Each stretch was checked to be UTF-8, so the whole is (one check of
        // the whole read is cheaper than building it from the stretches);
        // the lossy form is never needed. The bytes become the shared text
        // as they are, not copied; the next read's text starts with room for
        // a little more than this one's.
        let room = self.text.len() + self.text.len() / 4;
        let bytes = std::mem::replace(&mut self.text, Vec::with_capacity(room));
        let mut text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        };
        // The notifications keep the whole allocation alive: not much more
        // than their text (a read after a larger one has room to spare).
        if text.capacity() > text.len() + text.len() / 4 + 64 {
            text.shrink_to_fit();
        }
        let read = ReadText::shared(received_at, text);
        let lifted = self.lifted.drain(..).map(|lifted| {
            RawNotification::new(
                lifted.process_id,
                read.clone(),
                lifted.channel,
                lifted.payload,
            )
        });
        self.tap.lock().extend(lifted);
    }
}

/// Wakes the current task to run again after the other ready ones. On a
/// current-thread runtime this is tokio's `yield_now`, whose first poll
/// defers the wake-up: a plain `wake_by_ref` puts the task straight back in
/// the run queue, where the runtime runs it again up to 61 times before it
/// polls its `block_on` future, so a listener read from there would fall
/// ever further behind its driver (and its queue grow) however fast it
/// reads. Elsewhere (a multi-thread runtime, or no runtime) it is
/// `wake_by_ref`: a deferred wake-up waits for its own worker to park, and
/// a task that keeps that worker busy would strand the driver while another
/// worker, which cannot steal a deferred task, sits idle.
pub(crate) fn wake_after_other_tasks(cx: &mut Context<'_>) {
    let current_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        matches!(
            runtime.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        )
    });
    if current_thread {
        let mut yielded = std::pin::pin!(tokio::task::yield_now());
        // The first poll defers the wake-up and is always pending.
        let _ = std::future::Future::poll(yielded.as_mut(), cx);
    } else {
        cx.waker().wake_by_ref();
    }
}

/// Where the first NUL byte of `bytes` is, eight bytes at a time.
#[inline]
fn find_nul(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        // The lowest byte flagged is the first zero byte (only bytes after
        // a zero byte can be flagged wrongly).
        let zeros = word.wrapping_sub(ONES) & !word & HIGHS;
        if zeros != 0 {
            return Some(at + zeros.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|byte| *byte == 0)
        .map(|position| at + position)
}

/// Where the one NUL byte of `bytes` is, for ASCII text (what channels and
/// most payloads are), checked in one pass eight bytes at a time:
/// `Ok(Some(at))` when `bytes` holds exactly one NUL, `Ok(None)` when it
/// holds none or several, `Err(NotAscii)` when a byte is not ASCII (the
/// caller then checks the general way).
#[inline]
fn ascii_single_nul(bytes: &[u8]) -> Result<Option<usize>, NotAscii> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const LOWS: u64 = u64::from_le_bytes([0x7f; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let (mut high, mut found, mut several) = (0u64, None, false);
    // One word starting at byte `at`: its high bits, and its zero bytes.
    let mut scan = |word: u64, at: usize| {
        high |= word;
        // Exact, unlike `find_nul`'s test: a byte's high bit ends up set
        // unless the byte is zero.
        let zeros = !((word & LOWS).wrapping_add(LOWS) | word) & HIGHS;
        if zeros != 0 {
            several |= found.is_some() || zeros & (zeros - 1) != 0;
            found = Some(at + zeros.trailing_zeros() as usize / 8);
        }
    };
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        scan(u64::from_le_bytes(word.try_into().unwrap_or_default()), at);
        at += 8;
    }
    let rest = words.remainder().len();
    if rest > 0 {
        if let Some(tail) = bytes.len().checked_sub(8) {
            // The last eight bytes, those scanned already made non-zero.
            let word = u64::from_le_bytes(bytes[tail..].try_into().unwrap_or_default());
            let scanned = 8 * (8 - rest);
            scan(word | (ONES & ((1u64 << scanned) - 1)), tail);
        } else {
            let mut word = [0x01; 8];
            word[..rest].copy_from_slice(bytes);
            scan(u64::from_le_bytes(word), 0);
        }
    }
    if high & HIGHS != 0 {
        return Err(NotAscii);
    }
    Ok(if several { None } else { found })
}

/// [`ascii_single_nul`] found a byte that is not ASCII.
#[derive(Debug, PartialEq, Eq)]
struct NotAscii;

/// `process_id`, then channel and payload as "channel\0payload" with the
/// channel's length, of a `NotificationResponse` body, if it is exactly
/// what tokio-postgres accepts: two NUL-terminated UTF-8 strings after the
/// process id, and nothing after them.
fn parse_notification(body: &[u8]) -> Option<(i32, &[u8], usize)> {
    let process_id = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    // "channel\0payload\0", with no other NUL.
    let (&last, strings) = body[4..].split_last()?;
    if last != 0 {
        return None;
    }
    let channel_end = match ascii_single_nul(strings) {
        Ok(found) => found?,
        Err(NotAscii) => {
            let channel_end = find_nul(strings)?;
            if find_nul(&strings[channel_end + 1..]).is_some() {
                return None;
            }
            // One check for both: NUL is a character of its own.
            if std::str::from_utf8(strings).is_err() {
                return None;
            }
            channel_end
        }
    };
    Some((process_id, strings, channel_end))
}

impl<S: AsyncRead + Unpin> AsyncRead for TapStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            // Nothing can be forwarded: reading now would only buffer.
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        let before = out.filled().len();
        let received_at = SystemTime::now();
        let mut reads = 0;
        loop {
            this.process(out);
            if out.filled().len() > before || this.ended {
                this.hand_over(received_at);
                return Poll::Ready(Ok(()));
            }
            // Everything buffered is handled (or incomplete): read more. After
            // one read that gave the connection nothing, let the driver take
            // what was lifted before reading on.
            if reads == 1 {
                this.hand_over(received_at);
                wake_after_other_tasks(cx);
                return Poll::Pending;
            }
            if this.start > 0 {
                this.buffer.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            let filled = this.end;
            if this.buffer.len() < filled + READ_SIZE {
                // Zeroed once; later reads reuse it as it is.
                this.buffer.resize(filled + READ_SIZE, 0);
            }
            let mut read_buf = ReadBuf::new(&mut this.buffer[filled..filled + READ_SIZE]);
            let result = Pin::new(&mut this.inner).poll_read(cx, &mut read_buf);
            let read = read_buf.filled().len();
            this.end = filled + read;
            debug_assert!(this.end <= MAX_BUFFERED, "the tap buffers too much");
            match result {
                Poll::Pending => {
                    this.hand_over(received_at);
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => {
                    this.hand_over(received_at);
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(())) if read == 0 => {
                    // End of stream: pass on any incomplete message as it is
                    // (the connection reports the error), then the end.
                    this.ended = true;
                    this.transparent = true;
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
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if !this.client_started {
            if let Poll::Ready(Ok(written)) = result {
                this.observe_written(&data[..written.min(data.len())]);
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Above a TLS stream the tap is the connection's TLS stream: channel
/// binding is the stream's beneath.
impl<S: TlsStream + Unpin> TlsStream for TapStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

#[cfg(test)]
mod check;
#[cfg(test)]
mod tests;
