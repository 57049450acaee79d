//! Protocol detection (`trellis_proxy::detect`) over any bytes, delivered in any split into
//! reads: `classify` never panics, a decided verdict never changes as more bytes arrive (up to
//! `MAX_PREFIX`, where detection stops reading), and the whole read loop `detect` gives the same
//! protocol and outcome, and replays exactly the bytes it consumed, whatever the split.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use trellis_proxy::detect::{Classification, Detected, MAX_PREFIX, classify, detect};

use crate::input::Input;

/// Hands out the stream in the given chunks, one chunk (or what fits of it) per read, then EOF.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes.get(self.next).copied().unwrap_or(usize::MAX);
        self.next += 1;
        let n = size.max(1).min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

fn run(data: &[u8], sizes: Vec<usize>) -> Detected {
    let mut io = Chunked {
        data,
        sizes,
        next: 0,
    };
    // Every read is ready at once, so no timer ever fires; the timeout only has to be long.
    let detected = crate::runtime().block_on(detect(&mut io, Duration::from_secs(3600)));
    match detected {
        Ok(d) => d,
        Err(e) => panic!("detect failed on an in-memory stream: {e}"),
    }
}

/// The first byte seeds the split; the rest is what the client sends.
pub fn check_detect(data: &[u8]) {
    let mut input = Input::new(data);
    let seed = input.byte();
    let stream = input.rest();
    let _ = classify(stream);

    // The split: chunk sizes from a small generator over the seed (1..=64 bytes each, 0 = one
    // byte at a time).
    let mut state = u32::from(seed) | 0x100;
    let sizes: Vec<usize> = (0..stream.len().min(MAX_PREFIX))
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if seed == 0 {
                1
            } else {
                1 + (state >> 16) as usize % 64
            }
        })
        .collect();

    // Once decided, the verdict holds for every longer prefix up to MAX_PREFIX: checked at each
    // chunk boundary of this split.
    let seen = &stream[..stream.len().min(MAX_PREFIX)];
    let mut first: Option<(usize, Classification)> = None;
    let mut at = 0;
    for size in &sizes {
        at = (at + size).min(seen.len());
        let c = classify(&seen[..at]);
        match first {
            None if c != Classification::NeedMore => first = Some((at, c)),
            Some((len, decided)) => assert_eq!(
                c, decided,
                "verdict changed from {decided:?} at {len} bytes to {c:?} at {at}"
            ),
            None => {}
        }
        if at == seen.len() {
            break;
        }
    }

    let whole = run(stream, vec![usize::MAX]);
    let split = run(stream, sizes);
    assert_eq!(
        (whole.protocol, whole.outcome),
        (split.protocol, split.outcome),
        "one read vs split reads"
    );
    for d in [&whole, &split] {
        assert!(d.prefix.len() <= MAX_PREFIX, "read past MAX_PREFIX");
        assert!(
            stream.starts_with(&d.prefix),
            "the replayed prefix is not what was read"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::check_detect;
    use crate::input::Rng;

    /// Starts of real protocols, so that random cuts and joins land near the decisions.
    const PIECES: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"POST /x HTTP/1.0\n",
        b"M-SEARCH * HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PRI * HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",
        b"\x16\x03",
        b"\x16",
        b"GET",
        b" ",
        b"\r\n",
        b"HTTP/1.",
        b"SPDY/3",
        b"\0",
        b"get",
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ];

    #[test]
    fn seeded_random_inputs() {
        let mut rng = Rng(0xde7e_c7ed_2026_0012);
        for _ in 0..5_000 {
            let mut input = vec![rng.next_u64() as u8];
            for _ in 0..rng.below(6) {
                if rng.below(3) == 0 {
                    let len = rng.below(8);
                    input.extend(rng.bytes(len));
                } else {
                    input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                }
            }
            check_detect(&input);
        }
    }

    #[test]
    fn long_lines_around_max_prefix() {
        for len in [4094, 4095, 4096, 4097, 5000] {
            for seed in [0u8, 7] {
                let mut input = vec![seed];
                input.extend_from_slice(b"GET /");
                input.resize(len, b'a');
                input.extend_from_slice(b" SPDY/3\r\n");
                check_detect(&input);
            }
        }
    }
}
