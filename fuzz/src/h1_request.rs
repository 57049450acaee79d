//! The direct HTTP/1.1 server's request codec (`trellis_proxy::serve::h1head`) over any bytes
//! a client could send. Run by the `http1_head` target on the same inputs (one target for
//! every HTTP/1 head, to keep the fuzz stage's build and run time).
//!
//! Checked: nothing panics; a head handed off to hyper leaves the buffer exactly as it was (hyper
//! reads it from the start); a served head takes exactly its own bytes, every shorter prefix of
//! them is only "read more" (so a head served when whole is never refused in pieces); and a
//! served head means what it says: an HTTP/1.1 request in origin-form with no body, no
//! `Expect` and no upgrade, whose head written out again parses to the same request.

use bytes::BytesMut;
use http::{Method, Version};
use trellis_proxy::serve::h1head::{HeadLimits, Parsed, parse_request};

const LIMITS: HeadLimits = HeadLimits {
    max_headers: 100,
    max_head_bytes: 8 * 1024,
};

pub fn check_h1_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let head = match parse_request(&mut buf, LIMITS) {
        Parsed::HandOff | Parsed::Partial => {
            assert_eq!(&buf[..], data, "the buffer is untouched");
            return;
        }
        Parsed::Request(head) => head,
    };
    let used = data.len() - buf.len();
    assert_eq!(
        &buf[..],
        &data[used..],
        "only the head's own bytes are taken"
    );
    for cut in [0, used / 2, used.saturating_sub(1)] {
        let mut prefix = BytesMut::from(&data[..cut.min(used - 1)]);
        assert!(
            matches!(parse_request(&mut prefix, LIMITS), Parsed::Partial),
            "a prefix of {cut} bytes of a served head"
        );
    }
    let req = &head.request;
    assert_eq!(req.version(), Version::HTTP_11);
    assert!(req.method() != Method::CONNECT && req.method() != Method::HEAD);
    assert!(req.uri().path().starts_with('/') && req.uri().scheme().is_none());
    for name in ["content-length", "transfer-encoding", "expect", "upgrade"] {
        assert!(!req.headers().contains_key(name), "served with {name}");
    }
    // Written out again, it is the same request.
    let mut out = Vec::new();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut again = BytesMut::from(&out[..]);
    let Parsed::Request(reparsed) = parse_request(&mut again, LIMITS) else {
        panic!("a served head written out again is not served: {out:?}");
    };
    assert!(again.is_empty());
    assert_eq!(reparsed.request.method(), req.method());
    assert_eq!(reparsed.request.uri(), req.uri());
    assert_eq!(reparsed.request.headers(), req.headers());
    assert_eq!(reparsed.keep_alive, head.keep_alive);
    assert_eq!(reparsed.trailers, head.trailers);
}
