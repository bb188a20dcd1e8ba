use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use super::check::{
    message, notification, reference, run_tap, ssl_request, startup_message, Lifted, Pieces,
};
use super::*;

/// Pieces that hand everything over at once.
fn at_once() -> Pieces {
    Pieces {
        writes: Vec::new(),
        reads: Vec::new(),
        buffers: Vec::new(),
    }
}

/// Reads of `size` bytes into buffers as large as wanted.
fn reads_of(size: usize) -> Pieces {
    Pieces {
        reads: vec![size],
        ..at_once()
    }
}

fn lifted(process_id: i32, channel: &str, payload: &str) -> Lifted {
    (process_id, channel.to_string(), payload.to_string())
}

/// The messages a server sends from authentication to the first
/// `ReadyForQuery`.
fn startup_reply() -> Vec<u8> {
    let mut bytes = message(b'R', &0i32.to_be_bytes());
    bytes.extend(message(b'S', b"client_encoding\0UTF8\0"));
    bytes.extend(message(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]));
    bytes.extend(message(b'Z', b"I"));
    bytes
}

#[test]
fn notifications_are_lifted_and_everything_else_passes_through_intact() {
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
        let (passed, lifted_ones) = run_tap(&[], &bytes, &reads_of(chunk));
        assert_eq!(passed, expected, "chunk {chunk}");
        assert_eq!(
            lifted_ones,
            [
                lifted(7, "orders", "42"),
                lifted(8, "Ünïcode", &"x".repeat(7999)),
                lifted(9, "c", ""),
            ],
            "chunk {chunk}"
        );
    }
}

#[test]
fn a_notification_before_the_first_ready_for_query_is_passed_through() {
    let early = notification(1, "early", "before startup ended");
    let mut bytes = message(b'R', &0i32.to_be_bytes());
    bytes.extend(&early);
    bytes.extend(message(b'Z', b"I"));
    bytes.extend(notification(2, "late", "after"));
    let mut expected = message(b'R', &0i32.to_be_bytes());
    expected.extend(&early);
    expected.extend(message(b'Z', b"I"));
    for chunk in [1, 4, 100_000] {
        let (passed, lifted_ones) = run_tap(&[], &bytes, &reads_of(chunk));
        assert_eq!(passed, expected, "chunk {chunk}");
        assert_eq!(lifted_ones, [lifted(2, "late", "after")], "chunk {chunk}");
    }
}

#[test]
fn the_one_byte_answer_to_an_ssl_request_passes_through_unframed() {
    let mut client = ssl_request();
    client.extend(startup_message("app"));
    let mut server = vec![b'N'];
    server.extend(startup_reply());
    server.extend(notification(3, "after_n", "lifted"));
    server.extend(message(b'C', b"SELECT 1\0"));
    let mut expected = vec![b'N'];
    expected.extend(startup_reply());
    expected.extend(message(b'C', b"SELECT 1\0"));
    for chunk in [1, 2, 6, 100_000] {
        let pieces = Pieces {
            writes: vec![3, 1, 5],
            ..reads_of(chunk)
        };
        let (passed, lifted_ones) = run_tap(&client, &server, &pieces);
        assert_eq!(passed, expected, "chunk {chunk}");
        assert_eq!(
            lifted_ones,
            [lifted(3, "after_n", "lifted")],
            "chunk {chunk}"
        );
    }
}

#[test]
fn after_the_server_accepts_encryption_everything_passes_through() {
    // What follows 'S' is a TLS handshake the tap cannot read; here it even
    // looks like messages, which must not be touched.
    let mut server = vec![b'S'];
    server.extend(startup_reply());
    server.extend(notification(4, "inside", "tls"));
    for chunk in [1, 100_000] {
        let (passed, lifted_ones) = run_tap(&ssl_request(), &server, &reads_of(chunk));
        assert_eq!(passed, server, "chunk {chunk}");
        assert!(lifted_ones.is_empty());
    }
    // No request written: the byte is the first of a message (and only a
    // hanging read would wait for the four more bytes its header needs).
    let (passed, _) = run_tap(&startup_message("app"), b"N", &at_once());
    assert_eq!(passed, b"N");
}

#[test]
fn one_read_forwards_every_whole_message_that_fits() {
    let mut bytes = message(b'Z', b"I");
    bytes.extend(message(
        b'T',
        b"\0\x01id\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    ));
    for row in 0..3u8 {
        bytes.extend(message(b'D', &[0, 1, 0, 0, 0, 1, b'0' + row]));
        bytes.extend(notification(5, "between", "rows"));
    }
    bytes.extend(message(b'C', b"SELECT 3\0"));
    bytes.extend(message(b'Z', b"I"));
    let expected = reference(&[], &bytes).0;
    let tap = Arc::new(NotificationTap::default());
    let mut stream = TapStream::new(&bytes[..], tap.clone());
    let mut buffer = vec![0; 64 * 1024];
    let mut out = ReadBuf::new(&mut buffer);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut stream)
        .poll_read(&mut cx, &mut out)
        .is_ready());
    assert_eq!(out.filled(), expected, "every message in one read");
    assert_eq!(tap.drain(usize::MAX, drop), 3);
}

#[test]
fn a_malformed_notification_is_forwarded_and_those_lifted_before_it_are_kept() {
    let mut bytes = message(b'Z', b"I");
    bytes.extend(notification(6, "good", "kept"));
    let malformed = message(b'A', b"\0\0\0\x01no-terminator");
    bytes.extend(&malformed);
    let not_utf8 = message(b'A', b"\0\0\0\x01ch\0\xff\0");
    bytes.extend(&not_utf8);
    let trailing = message(b'A', b"\0\0\0\x01ch\0pay\0extra");
    bytes.extend(&trailing);
    let mut expected = message(b'Z', b"I");
    expected.extend(malformed);
    expected.extend(not_utf8);
    expected.extend(trailing);
    for chunk in [1, 100_000] {
        let (passed, lifted_ones) = run_tap(&[], &bytes, &reads_of(chunk));
        assert_eq!(passed, expected, "chunk {chunk}");
        assert_eq!(lifted_ones, [lifted(6, "good", "kept")], "chunk {chunk}");
    }
}

#[test]
fn an_impossible_length_passes_the_rest_through() {
    let mut bytes = message(b'Z', b"I");
    bytes.extend(notification(7, "before", "lifted"));
    let rest = [b'A', 0, 0, 0, 2, b'x', b'y'];
    bytes.extend(rest);
    let (passed, lifted_ones) = run_tap(&[], &bytes, &at_once());
    let mut expected = message(b'Z', b"I");
    expected.extend(rest);
    assert_eq!(passed, expected);
    assert_eq!(lifted_ones, [lifted(7, "before", "lifted")]);
}

/// A stream with endless data that counts how often it is read.
struct Endless {
    reads: usize,
}

impl AsyncRead for Endless {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reads += 1;
        let room = out.remaining();
        out.put_slice(&vec![b'A'; room]);
        Poll::Ready(Ok(()))
    }
}

#[test]
fn a_zero_capacity_read_returns_at_once_without_reading() {
    let tap = Arc::new(NotificationTap::default());
    let mut stream = TapStream::new(Endless { reads: 0 }, tap);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100 {
        let mut out = ReadBuf::new(&mut []);
        let polled = Pin::new(&mut stream).poll_read(&mut cx, &mut out);
        assert!(matches!(polled, Poll::Ready(Ok(()))), "{polled:?}");
    }
    assert_eq!(stream.inner.reads, 0);
    assert!(stream.buffer.is_empty());
}

#[test]
fn drain_takes_at_most_the_limit_oldest_first() {
    let mut bytes = message(b'Z', b"I");
    for process_id in 0..10 {
        bytes.extend(notification(process_id, "c", "p"));
    }
    let tap = Arc::new(NotificationTap::default());
    let mut stream = TapStream::new(&bytes[..], tap.clone());
    let mut buffer = vec![0; 1024];
    let mut out = ReadBuf::new(&mut buffer);
    let mut cx = Context::from_waker(Waker::noop());
    let _ = Pin::new(&mut stream).poll_read(&mut cx, &mut out);
    let mut seen = Vec::new();
    assert_eq!(tap.drain(4, |n| seen.push(n.process_id)), 4);
    assert_eq!(tap.drain(0, |n| seen.push(n.process_id)), 0);
    assert_eq!(tap.drain(5, |n| seen.push(n.process_id)), 5);
    assert_eq!(tap.drain(usize::MAX, |n| seen.push(n.process_id)), 1);
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

/// One backend message after startup, as the property test draws them.
#[derive(Debug, Clone)]
enum Backend {
    Other(u8, Vec<u8>),
    Notification(i32, String, String),
}

/// Text without NUL (which the server never sends inside a string),
/// including multi-byte UTF-8, empty, and up to the largest payload.
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(any::<char>(), 0..max_chars.min(40))
            .prop_map(|chars| chars.into_iter().map(|c| if c == '\0' { '·' } else { c }).collect()),
        1 => (0..=max_chars, any::<char>()).prop_map(move |(count, c)| {
            let c = if c == '\0' { 'é' } else { c };
            let mut text: String = std::iter::repeat_n(c, count).collect();
            while text.len() > max_chars {
                text.pop();
            }
            text
        }),
    ]
}

fn backend() -> impl Strategy<Value = Backend> {
    let cstring = || text(30).prop_map(|t| format!("{t}\0").into_bytes());
    prop_oneof![
        // RowDescription, DataRow, CommandComplete, ReadyForQuery,
        // NoticeResponse, ParameterStatus, with plausible bodies.
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Backend::Other(b'T', b)),
        1 => proptest::collection::vec(any::<u8>(), 0..600).prop_map(|b| Backend::Other(b'D', b)),
        1 => cstring().prop_map(|b| Backend::Other(b'C', b)),
        1 => prop_oneof![Just(b'I'), Just(b'T'), Just(b'E')].prop_map(|s| Backend::Other(b'Z', vec![s])),
        1 => cstring().prop_map(|mut b| {
            b.insert(0, b'M');
            b.push(0);
            Backend::Other(b'N', b)
        }),
        1 => (cstring(), cstring()).prop_map(|(mut name, value)| {
            name.extend(value);
            Backend::Other(b'S', name)
        }),
        3 => (any::<i32>(), text(63), text(7999))
            .prop_map(|(pid, channel, payload)| Backend::Notification(pid, channel, payload)),
    ]
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![3 => 0..8usize, 3 => 1..200usize, 1 => 1000..20_000usize],
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_reader_sees_exactly_the_other_messages_and_the_tap_exactly_the_notifications(
        ssl in any::<bool>(),
        early in proptest::option::of((any::<i32>(), text(20), text(40))),
        messages in proptest::collection::vec(backend(), 0..40),
        writes in sizes(),
        reads in sizes(),
        buffers in sizes(),
    ) {
        let mut client = Vec::new();
        let mut server = Vec::new();
        if ssl {
            client.extend(ssl_request());
            server.push(b'N');
        }
        client.extend(startup_message("app"));
        server.extend(message(b'R', &0i32.to_be_bytes()));
        server.extend(message(b'S', b"server_version\x0017\0"));
        if let Some((pid, channel, payload)) = &early {
            // Before the first ReadyForQuery: for tokio-postgres to judge.
            server.extend(notification(*pid, channel, payload));
        }
        server.extend(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
        server.extend(message(b'Z', b"I"));
        let mut expected_passed = server.clone();
        let mut expected_lifted = Vec::new();
        for drawn in &messages {
            match drawn {
                Backend::Other(kind, body) => {
                    let bytes = message(*kind, body);
                    server.extend(&bytes);
                    expected_passed.extend(bytes);
                }
                Backend::Notification(pid, channel, payload) => {
                    server.extend(notification(*pid, channel, payload));
                    expected_lifted.push((*pid, channel.clone(), payload.clone()));
                }
            }
        }
        prop_assert_eq!(
            reference(&client, &server),
            (expected_passed.clone(), expected_lifted.clone())
        );
        let pieces = Pieces { writes, reads, buffers };
        let (passed, lifted_ones) = run_tap(&client, &server, &pieces);
        prop_assert!(passed == expected_passed, "passed-through bytes differ");
        prop_assert_eq!(lifted_ones, expected_lifted);
    }

    #[test]
    fn arbitrary_bytes_go_through_the_tap_as_the_reference_says(
        client in proptest::collection::vec(any::<u8>(), 0..24),
        server in proptest::collection::vec(
            prop_oneof![4 => any::<u8>(), 1 => Just(b'A'), 1 => Just(b'Z'), 1 => Just(0u8)],
            0..300,
        ),
        writes in sizes(),
        reads in sizes(),
        buffers in sizes(),
    ) {
        let pieces = Pieces { writes, reads, buffers };
        prop_assert_eq!(run_tap(&client, &server, &pieces), reference(&client, &server));
    }
}

/// `parse_notification` as its contract reads, one rule at a time.
fn parse_by_the_rules(body: &[u8]) -> Option<(i32, &[u8], usize)> {
    let process_id = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let strings = body[4..].strip_suffix(&[0])?;
    let channel_end = strings.iter().position(|byte| *byte == 0)?;
    if strings[channel_end + 1..].contains(&0) || std::str::from_utf8(strings).is_err() {
        return None;
    }
    Some((process_id, strings, channel_end))
}

/// Bodies near the edges of the one-pass check: NULs anywhere (none, one,
/// several), ASCII and not, lengths around multiples of eight.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => 0x20u8..0x7f,
        2 => Just(0u8),
        1 => 0x80u8..=0xff,
        1 => 0x01u8..0x20,
    ];
    proptest::collection::vec(byte, 0..40).prop_map(|strings| {
        let mut body = vec![0, 0, 1, 2];
        body.extend(strings);
        body
    })
}

proptest! {
    #[test]
    fn the_one_pass_parse_agrees_with_the_rules(body in body(), text in "[a-z\u{e9}\u{4e2d}]{0,20}", at in 0usize..21) {
        prop_assert_eq!(parse_notification(&body), parse_by_the_rules(&body));
        // Valid UTF-8 with multi-byte characters, one NUL inside.
        let mut strings = text.into_bytes();
        let at = at.min(strings.len());
        strings.insert(at, 0);
        let mut body = vec![0, 0, 0, 7];
        body.extend(&strings);
        body.push(0);
        prop_assert_eq!(parse_notification(&body), parse_by_the_rules(&body));
    }
}

#[test]
fn the_one_pass_parse_finds_the_separator_in_every_position() {
    for length in 1..40 {
        for at in 0..length {
            let mut body = vec![0, 0, 0, 1];
            body.extend((0..length).map(|i| if i == at { 0 } else { b'a' + (i % 26) as u8 }));
            body.push(0);
            assert_eq!(
                parse_notification(&body),
                Some((1, &body[4..4 + length], at))
            );
        }
    }
}

/// Review: every body whose strings (up to 24 bytes) are ASCII text with
/// one or two edge bytes (NUL, DEL, a lone continuation byte, the first
/// byte of a two-byte character, 0xff) at any two positions, and every
/// string of up to 6 bytes over those bytes: the one-pass parse (and its
/// fallback) agrees with the rules, byte position for byte position.
#[test]
fn the_one_pass_parse_agrees_with_the_rules_on_every_edge_body() {
    let edges = [0u8, 0x7f, 0x80, 0xc3, 0xa9, 0xff];
    let check = |strings: &[u8]| {
        let mut body = vec![0x7f, 0, 0, 3];
        body.extend_from_slice(strings);
        body.push(0);
        assert_eq!(
            parse_notification(&body),
            parse_by_the_rules(&body),
            "{strings:?}"
        );
        // Without its terminator: never a notification.
        assert_eq!(
            parse_notification(&body[..body.len() - 1]),
            parse_by_the_rules(&body[..body.len() - 1])
        );
    };
    for length in 0..=24usize {
        let base: Vec<u8> = (0..length).map(|i| b'a' + (i % 26) as u8).collect();
        check(&base);
        for i in 0..length {
            for j in i..length {
                for a in edges {
                    for b in edges {
                        let mut strings = base.clone();
                        strings[i] = a;
                        strings[j] = b;
                        check(&strings);
                    }
                }
            }
        }
    }
    let alphabet = [0u8, b'a', 0x7f, 0x80, 0xc3, 0xa9, 0xff];
    for length in 0..=6u32 {
        for mut k in 0..alphabet.len().pow(length) {
            let strings: Vec<u8> = (0..length)
                .map(|_| {
                    let byte = alphabet[k % alphabet.len()];
                    k /= alphabet.len();
                    byte
                })
                .collect();
            check(&strings);
        }
    }
}
