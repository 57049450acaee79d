//! The direct HTTP/1.1 client's codec (`trellis_proxy::client::h1codec`) over any bytes an
//! upstream could send, delivered in any split into reads: a response head and then a chunked
//! body. Run by the `http1_head` target on the same inputs (one target for both HTTP/1 heads,
//! to keep the fuzz stage's build and run time).
//!
//! Checked: nothing panics; the outcome (the parsed head, or an error) is the same whether the
//! bytes arrive in one read or in pieces; a parsed head's framing agrees with its headers; and a
//! chunked body decodes to the same bytes and trailers, or fails, whatever the split.

use bytes::BytesMut;
use trellis_proxy::client::h1codec::{Chunk, ChunkedDecoder, Framing, parse_head};

/// Header or trailer fields, comparable across splits.
type Fields = Vec<(String, Vec<u8>)>;

/// What a parse came to, comparable across splits.
#[derive(Debug, PartialEq)]
enum Parsed {
    Head {
        status: u16,
        headers: Fields,
        framing: Framing,
        keep_alive: bool,
        rest: Vec<u8>,
    },
    Incomplete,
    Refused,
}

pub fn check_h1_response(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let head_request = seed & 1 == 1;
    let step = 1 + usize::from(seed >> 1) % 64;
    let whole = parse(&[stream], head_request);
    let pieces: Vec<&[u8]> = stream.chunks(step).collect();
    let split = parse(&pieces, head_request);
    assert_eq!(whole, split, "one read vs reads of {step} bytes");
    if let Parsed::Head {
        headers, framing, ..
    } = &whole
    {
        let lengths = headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .count();
        let chunked = headers.iter().any(|(n, _)| n == "transfer-encoding");
        match framing {
            Framing::Length(_) => assert!(lengths > 0 && !chunked, "a length without its header"),
            Framing::Chunked => assert!(chunked && lengths == 0, "chunked with a Content-Length"),
            Framing::Empty | Framing::Eof => {}
        }
    }
    // The same bytes as a chunked body, whole and split.
    assert_eq!(
        decode(&[stream]),
        decode(&pieces),
        "chunked: one read vs reads of {step} bytes"
    );
}

/// Feeds `pieces` to `parse_head` as reads would, parsing after each.
fn parse(pieces: &[&[u8]], head_request: bool) -> Parsed {
    let input = pieces.concat();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        fed += piece.len();
        match parse_head(&mut buf, head_request) {
            Ok(Some(head)) => {
                let headers = head
                    .response
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                // Everything after the head: what the body starts with.
                let consumed = fed - buf.len();
                return Parsed::Head {
                    status: head.response.status().as_u16(),
                    headers,
                    framing: head.framing,
                    keep_alive: head.keep_alive,
                    rest: input[consumed..].to_vec(),
                };
            }
            Ok(None) => {}
            Err(_) => return Parsed::Refused,
        }
    }
    Parsed::Incomplete
}

/// A chunked body's bytes and trailers, or `None` when it fails or ends incomplete.
fn decode(pieces: &[&[u8]]) -> Option<(Vec<u8>, Fields)> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut next = pieces.iter();
    // Bounded: each step consumes input, ends, or asks for the next piece.
    loop {
        match decoder.decode(&mut buf).ok()? {
            Chunk::Data(d) => {
                assert!(!d.is_empty(), "an empty data chunk");
                body.extend_from_slice(&d);
            }
            Chunk::Trailers(t) => {
                let trailers = t
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                return Some((body, trailers));
            }
            Chunk::End => return Some((body, Vec::new())),
            Chunk::NeedMore => buf.extend_from_slice(next.next()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_h1_response;
    use crate::input::Rng;

    const SEEDS: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n",
        b"5;ext=1\r\nhello\r\n0\r\nx-sum: 9\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1, 1\r\n\r\n",
    ];

    #[test]
    fn seeded_random_inputs() {
        let mut rng = Rng(0x1c0d_ec2d_2026_1128);
        for _ in 0..3_000 {
            let seed = SEEDS[rng.below(SEEDS.len())];
            let mut input = vec![rng.next_u64() as u8];
            input.extend(rng.mutate(seed));
            check_h1_response(&input);
        }
        for seed in SEEDS {
            for first in [0u8, 1, 2, 127, 255] {
                let mut input = vec![first];
                input.extend_from_slice(seed);
                check_h1_response(&input);
            }
        }
    }
}
