use super::*;

use http::Response;

const LIMITS: HeadLimits = HeadLimits {
    max_headers: 100,
    max_head_bytes: 65_536,
};

fn parse(bytes: &[u8]) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let parsed = parse_request(&mut buf, LIMITS);
    (parsed, buf)
}

fn served(bytes: &[u8]) -> (RequestHead, BytesMut) {
    match parse(bytes) {
        (Parsed::Request(head), rest) => (head, rest),
        (other, _) => panic!(
            "not served: {other:?} for {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

#[test]
fn a_bodiless_get_is_parsed_and_its_bytes_leave_the_buffer() {
    let (head, rest) = served(
        b"GET /reviews/1?x=2 HTTP/1.1\r\nHost: reviews:9080\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next",
    );
    let req = &head.request;
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/reviews/1?x=2");
    assert_eq!(req.version(), http::Version::HTTP_11);
    assert_eq!(req.headers()["host"], "reviews:9080");
    let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"], "repeated fields kept in order");
    assert!(head.keep_alive);
    assert!(!head.trailers);
    assert_eq!(
        &rest[..],
        b"GET /next",
        "a pipelined head stays for the next parse"
    );
}

#[test]
fn close_and_te_trailers_are_noted() {
    let (head, _) = served(
        b"DELETE /x HTTP/1.1\r\nConnection: keep-alive, Close\r\nTE: gzip, trailers\r\n\r\n",
    );
    assert_eq!(head.request.method(), Method::DELETE);
    assert!(!head.keep_alive);
    assert!(head.trailers);
}

#[test]
fn a_head_split_anywhere_is_partial_until_whole() {
    let whole = b"GET /a HTTP/1.1\r\nhost: a\r\naccept: */*\r\n\r\n";
    for cut in 0..whole.len() {
        let (parsed, rest) = parse(&whole[..cut]);
        assert!(
            matches!(parsed, Parsed::Partial),
            "cut at {cut}: {parsed:?}"
        );
        assert_eq!(rest.len(), cut, "nothing consumed");
    }
    let (head, rest) = served(whole);
    assert_eq!(head.request.uri(), "/a");
    assert!(rest.is_empty());
}

#[test]
fn what_this_path_does_not_serve_is_handed_off_with_the_buffer_untouched() {
    let heads: &[&[u8]] = &[
        b"POST /p HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
        b"POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /p HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /p HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nconnection: upgrade\r\n\r\n",
        b"HEAD / HTTP/1.1\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET / HTTP/1.1\r\nx: \x01\r\n\r\n",
        b"G@T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.1\r\n\r\n",
    ];
    for bytes in heads {
        let (parsed, rest) = parse(bytes);
        assert!(
            matches!(parsed, Parsed::HandOff),
            "{:?}: {parsed:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(&rest[..], *bytes, "hyper reads it from the start");
    }
}

#[test]
fn heads_over_the_limits_go_to_hyper_whole_or_in_pieces() {
    let limits = HeadLimits {
        max_headers: 3,
        max_head_bytes: 200,
    };
    let mut many = BytesMut::from(&b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n"[..]);
    assert!(matches!(parse_request(&mut many, limits), Parsed::HandOff));
    let mut three = BytesMut::from(&b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n"[..]);
    assert!(matches!(
        parse_request(&mut three, limits),
        Parsed::Request(_)
    ));
    let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "v".repeat(300));
    let mut whole = BytesMut::from(big.as_bytes());
    assert!(matches!(parse_request(&mut whole, limits), Parsed::HandOff));
    let mut piece = BytesMut::from(&big.as_bytes()[..250]);
    assert!(
        matches!(parse_request(&mut piece, limits), Parsed::HandOff),
        "an unfinished head already over the limit"
    );
    let mut beyond = BytesMut::from(&vec![b'a'; 120][..]);
    beyond[..4].copy_from_slice(b"GET ");
    assert!(matches!(
        parse_request(&mut beyond, limits),
        Parsed::Partial
    ));
}

fn encode(
    resp: Response<()>,
    size: BodySize,
    te_trailers: bool,
    close: bool,
) -> (String, Framing, bool) {
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let (framing, close) = encode_response(&parts, None, size, te_trailers, close, &mut out);
    (String::from_utf8(out).unwrap(), framing, close)
}

fn lines(head: &str) -> Vec<&str> {
    assert!(head.ends_with("\r\n\r\n"), "{head:?}");
    head.trim_end().split("\r\n").collect()
}

/// The head's fields, without `date` (whose value moves).
fn fields(head: &str) -> Vec<&str> {
    lines(head)[1..]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("date: "))
        .collect()
}

#[test]
fn a_known_length_is_written_as_content_length_with_a_date() {
    let resp = Response::builder()
        .header("content-type", "text/plain")
        .body(())
        .unwrap();
    let (head, framing, close) = encode(resp, BodySize::Exact(1024), false, false);
    assert_eq!(lines(&head)[0], "HTTP/1.1 200 OK");
    assert_eq!(
        fields(&head),
        ["content-type: text/plain", "content-length: 1024"]
    );
    let date = lines(&head)
        .into_iter()
        .find_map(|l| l.strip_prefix("date: "))
        .expect("a date");
    httpdate::parse_http_date(date).expect("an HTTP date");
    assert_eq!(framing, Framing::Length(1024));
    assert!(!close);
}

#[test]
fn an_unknown_length_is_chunked_and_an_empty_body_says_zero() {
    let (head, framing, _) = encode(Response::new(()), BodySize::Unknown, false, false);
    assert_eq!(fields(&head), ["transfer-encoding: chunked"]);
    assert_eq!(
        framing,
        Framing::Chunked {
            trailers: Vec::new()
        }
    );
    let resp = Response::builder()
        .status(404)
        .header("content-length", "9")
        .body(())
        .unwrap();
    let (head, framing, _) = encode(resp, BodySize::Empty, false, false);
    assert_eq!(lines(&head)[0], "HTTP/1.1 404 Not Found");
    assert_eq!(
        fields(&head),
        ["content-length: 0"],
        "a length the empty body does not have is dropped, as hyper does"
    );
    assert_eq!(framing, Framing::Length(0));
}

#[test]
fn a_content_length_header_frames_a_body_of_unknown_size() {
    let resp = Response::builder()
        .header("content-length", "12")
        .header("x", "y")
        .body(())
        .unwrap();
    let (head, framing, _) = encode(resp, BodySize::Unknown, false, false);
    assert_eq!(fields(&head), ["content-length: 12", "x: y"]);
    assert_eq!(framing, Framing::Length(12));
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    let resp = Response::builder()
        .status(204)
        .header("content-length", "5")
        .body(())
        .unwrap();
    let (head, framing, _) = encode(resp, BodySize::Exact(5), false, false);
    assert_eq!(lines(&head)[0], "HTTP/1.1 204 No Content");
    assert!(fields(&head).is_empty(), "{head:?}");
    assert_eq!(framing, Framing::Length(0));
    let resp = Response::builder()
        .status(304)
        .header("etag", "\"v1\"")
        .body(())
        .unwrap();
    let (head, framing, _) = encode(resp, BodySize::Unknown, false, false);
    assert_eq!(
        fields(&head),
        ["etag: \"v1\""],
        "no chunked framing on a 304"
    );
    assert_eq!(framing, Framing::Length(0));
}

#[test]
fn close_is_said_once_and_a_response_may_ask_for_it() {
    let (head, _, close) = encode(Response::new(()), BodySize::Empty, false, true);
    assert_eq!(fields(&head), ["content-length: 0", "connection: close"]);
    assert!(close);
    let resp = Response::builder()
        .header("connection", "close")
        .body(())
        .unwrap();
    let (head, _, close) = encode(resp, BodySize::Empty, false, true);
    assert_eq!(fields(&head), ["connection: close", "content-length: 0"]);
    assert!(close, "the response's own close");
    let resp = Response::builder()
        .header("connection", "close")
        .body(())
        .unwrap();
    let (_, _, close) = encode(resp, BodySize::Empty, false, false);
    assert!(close);
}

#[test]
fn a_date_and_a_reason_of_the_response_are_kept() {
    let resp = Response::builder()
        .status(299)
        .header("date", "Sun, 06 Nov 1994 08:49:37 GMT")
        .body(())
        .unwrap();
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    encode_response(
        &parts,
        Some(b"Fine"),
        BodySize::Empty,
        false,
        false,
        &mut out,
    );
    let head = String::from_utf8(out).unwrap();
    assert_eq!(
        lines(&head),
        [
            "HTTP/1.1 299 Fine",
            "date: Sun, 06 Nov 1994 08:49:37 GMT",
            "content-length: 0"
        ]
    );
}

#[test]
fn an_interim_status_is_refused_as_hyper_does() {
    let resp = Response::builder()
        .status(103)
        .header("link", "</a>")
        .body(())
        .unwrap();
    let (head, framing, close) = encode(resp, BodySize::Unknown, false, false);
    assert_eq!(lines(&head)[0], "HTTP/1.1 500 Internal Server Error");
    assert!(!head.contains("link"));
    assert_eq!(framing, Framing::Length(0));
    assert!(close);
}

#[test]
fn trailers_are_written_only_when_accepted_and_declared() {
    let resp = || {
        Response::builder()
            .header("trailer", "grpc-status, x-sum")
            .body(())
            .unwrap()
    };
    let (head, framing, _) = encode(resp(), BodySize::Unknown, true, false);
    assert_eq!(
        fields(&head),
        ["trailer: grpc-status, x-sum", "transfer-encoding: chunked"]
    );
    let Framing::Chunked { trailers } = framing else {
        panic!("{framing:?}")
    };
    assert_eq!(trailers, ["grpc-status", "x-sum"]);
    let mut fields_in = HeaderMap::new();
    fields_in.insert("grpc-status", HeaderValue::from_static("0"));
    fields_in.insert("x-other", HeaderValue::from_static("1"));
    fields_in.insert("content-length", HeaderValue::from_static("1"));
    let mut out = Vec::new();
    last_chunk(&mut out, Some(&fields_in), &trailers);
    assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");

    let (_, framing, _) = encode(resp(), BodySize::Unknown, false, false);
    assert_eq!(
        framing,
        Framing::Chunked {
            trailers: Vec::new()
        },
        "a client without TE: trailers gets none"
    );
    let mut out = Vec::new();
    chunk_head(&mut out, 300);
    assert_eq!(out, b"12c\r\n");
}
