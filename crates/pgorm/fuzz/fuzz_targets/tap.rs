//! Arbitrary bytes through the notification tap: it never panics, never
//! stalls, never buffers more than its bound (a debug assertion in the tap;
//! `scripts/fuzz-tap` builds with debug assertions), and what it passes
//! through and lifts is exactly what the one-pass reference says, however
//! the bytes are cut up on the way.
//!
//! The tap's source and its checking helpers are included by path: the tap
//! is a pure byte filter that names nothing else of pgorm.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/tap/mod.rs"]
mod tap;

#[allow(dead_code)]
#[path = "../../src/tap/check.rs"]
mod check;

use libfuzzer_sys::fuzz_target;

/// Takes a list of up to five piece sizes from the front of `data`.
fn sizes(data: &mut &[u8]) -> Vec<usize> {
    let Some((&count, rest)) = data.split_first() else {
        return Vec::new();
    };
    let count = usize::from(count % 6).min(rest.len());
    let (taken, rest) = rest.split_at(count);
    *data = rest;
    taken
        .iter()
        // Small pieces mostly; the high bit scales up to whole reads.
        .map(|&byte| {
            if byte & 0x80 == 0 {
                usize::from(byte)
            } else {
                usize::from(byte & 0x7f) * 256
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    data = rest;
    // What the client wrote first: requests answered by one byte (or not),
    // then a startup message, or raw bytes from the input.
    let mut client = Vec::new();
    if choice & 1 != 0 {
        client.extend(check::ssl_request());
    }
    if choice & 2 != 0 {
        let mut gssenc = 8u32.to_be_bytes().to_vec();
        gssenc.extend(80_877_104u32.to_be_bytes());
        client.extend(gssenc);
    }
    if choice & 4 != 0 {
        client.extend(check::ssl_request());
    }
    if choice & 8 != 0 {
        let count = usize::from(choice >> 4).min(data.len());
        client.extend_from_slice(&data[..count]);
        data = &data[count..];
    } else {
        client.extend(check::startup_message("fuzz"));
    }
    let pieces = check::Pieces {
        writes: sizes(&mut data),
        reads: sizes(&mut data),
        buffers: sizes(&mut data),
    };
    let server = data;
    let through_tap = check::run_tap(&client, server, &pieces);
    let expected = check::reference(&client, server);
    assert!(through_tap == expected, "the tap differs from the reference");
});
