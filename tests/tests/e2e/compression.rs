//! `[services.compression]` end to end: gzip, brotli and zstd negotiated from Accept-Encoding
//! (q-values honoured), decoded by the codecs' own libraries, stored once per encoding by the
//! cache (the origin sees one request per encoding), and left alone for ranges, small bodies,
//! other types and bodies the origin encoded itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use streamgate_tests::client::TestClient;
use streamgate_tests::config::Raw;
use streamgate_tests::*;

const SIZE: usize = 20_000;

/// The origin's `/c/` body of `size` bytes.
fn plain(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

async fn daemon(o: &Origin) -> TestDaemon {
    Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[o]))
        .service(
            Service::new("cdn")
                .listeners(&["web"])
                .hosts(&["cdn.test"])
                .regions(&["r"])
                .cache(Cache::new("64MiB").status_header("X-Edge"))
                .set("compression", Raw("{ min_size = \"1KiB\" }".into())),
        )
        .service(
            Service::new("api")
                .listeners(&["web"])
                .hosts(&["api.test"])
                .regions(&["r"])
                .set(
                    "compression",
                    Raw("{ encodings = [\"gzip\"], types = [\"text/*\"] }".into()),
                ),
        )
        .start()
        .await
}

fn url(d: &TestDaemon, path: &str) -> String {
    format!("http://{}{path}", d.addr("web"))
}

const HTML: &str = "/c/page?cc=max-age%3D60&size=20000&hdr=Content-Type:text/html&etag=v1";

#[tokio::test]
async fn each_encoding_is_compressed_once_and_served_from_the_cache() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let c = http1();
    for (accept, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.9, zstd;q=0.1", "br"),
        ("gzip, deflate, br, zstd", "zstd"),
    ] {
        for round in 0..2 {
            let a = get(
                &c,
                &url(&d, HTML),
                &[("host", "cdn.test"), ("accept-encoding", accept)],
            )
            .await
            .unwrap();
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.header("content-encoding"), Some(want), "{accept}");
            assert!(
                a.header("vary")
                    .unwrap()
                    .to_ascii_lowercase()
                    .contains("accept-encoding"),
                "{:?}",
                a.headers
            );
            assert_eq!(a.header("etag"), Some("W/\"v1\""), "another representation");
            assert!(a.body.len() < SIZE / 10, "{} bytes", a.body.len());
            assert_eq!(decode(want, &a.body), plain(SIZE), "{accept} round {round}");
        }
    }
    assert_eq!(o.hits(), 3, "one origin request per encoding");

    // Without Accept-Encoding: the identity, cached apart from the compressed copies.
    for _ in 0..2 {
        let a = get(&c, &url(&d, HTML), &[("host", "cdn.test")])
            .await
            .unwrap();
        assert_eq!(a.header("content-encoding"), None);
        assert_eq!(a.body, plain(SIZE));
        assert!(a.header("vary").is_some());
    }
    assert_eq!(o.hits(), 4);
    let a = get(
        &c,
        &url(&d, HTML),
        &[("host", "cdn.test"), ("accept-encoding", "gzip")],
    )
    .await
    .unwrap();
    assert_eq!(a.header("x-edge"), Some("HIT"));
}

#[tokio::test]
async fn ranges_small_bodies_other_types_and_encoded_bodies_are_left_alone() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let c = http1();
    let gzip = [("host", "cdn.test"), ("accept-encoding", "gzip")];

    let ranged = "/c/r?cc=max-age%3D60&size=20000&hdr=Content-Type:text/html";
    let a = get(
        &c,
        &url(&d, ranged),
        &[gzip[0], gzip[1], ("range", "bytes=0-99")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.header("content-encoding"), None);
    assert_eq!(a.body, plain(SIZE)[..100]);

    let small = "/c/s?cc=max-age%3D60&size=500&hdr=Content-Type:text/html";
    let a = get(&c, &url(&d, small), &gzip).await.unwrap();
    assert_eq!(a.header("content-encoding"), None, "below min_size");
    assert_eq!(a.body, plain(500));

    let png = "/c/p?cc=max-age%3D60&size=20000&hdr=Content-Type:image/png";
    let a = get(&c, &url(&d, png), &gzip).await.unwrap();
    assert_eq!(a.header("content-encoding"), None, "not a listed type");

    let keep = "/c/k?cc=max-age%3D60%2C+no-transform&size=20000&hdr=Content-Type:text/html";
    let a = get(&c, &url(&d, keep), &gzip).await.unwrap();
    assert_eq!(a.header("content-encoding"), None, "no-transform");

    // The origin's own encoding goes through once, untouched, and varies.
    let encoded =
        "/c/e?cc=max-age%3D60&size=20000&hdr=Content-Type:text/html&hdr=Content-Encoding:gzip";
    let a = get(&c, &url(&d, encoded), &gzip).await.unwrap();
    assert_eq!(a.header("content-encoding"), Some("gzip"));
    assert_eq!(a.body, plain(SIZE), "the origin's bytes as they were");
    assert!(a.header("vary").is_some());
}

#[tokio::test]
async fn proxied_responses_and_head_requests() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let c = http1();
    let path = "/c/api?size=20000&hdr=Content-Type:text/plain%3B+charset%3Dutf-8";
    let a = get(
        &c,
        &url(&d, path),
        &[("host", "api.test"), ("accept-encoding", "br, gzip;q=0.5")],
    )
    .await
    .unwrap();
    assert_eq!(
        a.header("content-encoding"),
        Some("gzip"),
        "only the service's encodings"
    );
    assert_eq!(a.header("content-length"), None);
    assert_eq!(decode("gzip", &a.body), plain(SIZE));

    let a = send(
        &c,
        Method::HEAD,
        &url(&d, path),
        &[("host", "api.test"), ("accept-encoding", "gzip")],
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-encoding"), Some("gzip"));
    assert!(a.body.is_empty());
}

/// The labels compression adds are this proxy's: a backend that names Vary or Content-Encoding
/// in Connection (hop-by-hop on its own hop) cannot strip them from a compressed answer, so the
/// cache never serves gzip bytes to a client that did not ask for them, and no client gets them
/// unlabelled. A compressed answer offers no byte ranges, whatever the backend said: ranges
/// are served from the identity (as nginx's gzip does), and a client resuming a compressed
/// download with one would mix the two.
#[tokio::test]
async fn compressed_answers_keep_their_labels_and_offer_no_ranges() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let c = http1();
    let path = "/c/h?cc=max-age%3D60&size=20000&hdr=Content-Type:text/html\
&hdr=Connection:vary%2C+content-encoding&hdr=Accept-Ranges:bytes";
    let gzip = [("host", "cdn.test"), ("accept-encoding", "gzip")];
    for round in ["miss", "hit"] {
        let a = get(&c, &url(&d, path), &gzip).await.unwrap();
        assert_eq!(a.header("content-encoding"), Some("gzip"), "{round}");
        let vary = a.header("vary").unwrap_or("").to_ascii_lowercase();
        assert!(vary.contains("accept-encoding"), "{round}: {:?}", a.headers);
        assert_eq!(a.header("accept-ranges"), None, "{round}");
        assert_eq!(decode("gzip", &a.body), plain(SIZE), "{round}");
    }
    let a = get(&c, &url(&d, path), &[("host", "cdn.test")])
        .await
        .unwrap();
    assert_eq!(a.header("content-encoding"), None);
    assert_eq!(
        a.body,
        plain(SIZE),
        "the identity, not the stored gzip copy"
    );
    assert_eq!(a.header("accept-ranges"), Some("bytes"));
    assert_eq!(o.hits(), 2, "one origin request per encoding");
}

/// A 304 from the origin names the identity's strong ETag (If-None-Match compares weakly, RFC
/// 9110 §13.1.2, so `W/"v1"` matches `"v1"`); merged over the stored gzip copy's weak one, it
/// made the two copies share a strong validator, and a download resumed with `If-Range` would
/// have appended identity bytes to gzip ones.
#[tokio::test]
async fn a_revalidated_compressed_copy_keeps_its_weak_etag() {
    let o = RawOrigin::start(|head| {
        let head = head.to_ascii_lowercase();
        if head.contains("if-none-match:") && head.contains("\"v1\"") {
            return b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncache-control: max-age=0\r\n\r\n"
                .to_vec();
        }
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\netag: \"v1\"\r\ncache-control: max-age=0\r\n\
             content-type: text/html\r\ncontent-length: {SIZE}\r\n\r\n"
        )
        .into_bytes();
        answer.extend(plain(SIZE));
        answer
    })
    .await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").address(o.addr))
        .service(
            Service::new("cdn")
                .listeners(&["web"])
                .hosts(&["cdn.test"])
                .regions(&["r"])
                .cache(Cache::new("64MiB"))
                .set("compression", Raw("{ min_size = \"1KiB\" }".into())),
        )
        .start()
        .await;
    let c = http1();
    let gzip = [("host", "cdn.test"), ("accept-encoding", "gzip")];
    for round in ["stored", "revalidated", "revalidated again"] {
        let a = get(&c, &url(&d, "/r"), &gzip).await.unwrap();
        assert_eq!(a.header("content-encoding"), Some("gzip"), "{round}");
        assert_eq!(a.header("etag"), Some("W/\"v1\""), "{round}");
        assert_eq!(decode("gzip", &a.body), plain(SIZE), "{round}");
    }
    let asked = o.heads();
    assert_eq!(asked.len(), 3);
    assert!(
        asked[1..]
            .iter()
            .all(|h| h.to_ascii_lowercase().contains("if-none-match")),
        "the later two were revalidations: {asked:?}"
    );
}

/// A `hold=1` answer's head, for `host`, gzip-accepted, for `client` (by X-Forwarded-For, which
/// only a daemon that trusts loopback reads): the body's first 64 KiB are sent, the rest waits
/// for [`Origin::release`].
async fn held(
    c: &TestClient,
    d: &TestDaemon,
    host: &str,
    path: &str,
    client: &str,
) -> Response<Incoming> {
    let req = Request::get(url(d, path))
        .header("host", host)
        .header("accept-encoding", "gzip")
        .header("x-forwarded-for", client)
        .body(Full::new(Bytes::new()))
        .unwrap();
    c.request(req).await.unwrap()
}

/// Reads a gzip body frame by frame into `dec` until it has decoded `want` bytes: a body that
/// never yields that much in 10 s fails.
async fn decode_until(body: &mut Incoming, dec: &mut Gunzip, want: usize) {
    let read = async {
        while dec.get_ref().len() < want {
            let frame = body.frame().await.expect("the stream ended early").unwrap();
            if let Ok(data) = frame.into_data() {
                dec.write_all(&data).unwrap();
                dec.flush().unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("what the backend sent so far did not reach the client decodable");
}

type Gunzip = flate2::write::GzDecoder<Vec<u8>>;

fn gunzip() -> Gunzip {
    flate2::write::GzDecoder::new(Vec::new())
}

/// A backend that sends part of a body and pauses (a page's head flushed early, a feed) is
/// seen by the client up to the pause: the encoder's output is flushed whenever the backend
/// has nothing more for now, not held until a block fills.
#[tokio::test]
async fn a_compressed_stream_reaches_the_client_as_the_backend_sends_it() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let c = http1();
    let path = "/c/stream?size=200000&hold=1&hdr=Content-Type:text/plain";
    let mut resp = held(&c, &d, "api.test", path, "192.0.2.1").await;
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut dec = gunzip();
    decode_until(resp.body_mut(), &mut dec, 64 * 1024).await;
    assert_eq!(dec.get_ref()[..], plain(200_000)[..64 * 1024]);
    o.release();
    let rest = resp.into_body().collect().await.unwrap().to_bytes();
    dec.write_all(&rest).unwrap();
    assert_eq!(
        dec.finish().unwrap(),
        plain(200_000),
        "whole, trailer included"
    );
}

/// A service whose encoders may hold 1 MiB (two gzip encoders; one per client), with a cache,
/// that takes X-Forwarded-For from loopback.
async fn tight_daemon(o: &Origin) -> TestDaemon {
    Config::new()
        .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[o]))
        .service(
            Service::new("cdn")
                .listeners(&["web"])
                .regions(&["r"])
                .cache(Cache::new("64MiB").status_header("X-Edge"))
                // gzip encoders count 384 KiB each: two fit.
                .set(
                    "compression",
                    Raw("{ encodings = [\"gzip\"], max_memory = \"1MiB\" }".into()),
                ),
        )
        .start()
        .await
}

/// Held gzip streams of `clients`, on their own connections, read until their first bytes.
async fn hold_encoders(
    c: &TestClient,
    d: &TestDaemon,
    clients: &[&str],
) -> Vec<Response<Incoming>> {
    let big = "size=200000&hold=1&hdr=Content-Type:text/html&cc=max-age%3D60";
    let mut open = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let mut resp = held(c, d, "cdn.test", &format!("/c/held{i}?{big}"), client).await;
        let encoding = resp.headers().get("content-encoding");
        assert_eq!(
            encoding.and_then(|v| v.to_str().ok()),
            Some("gzip"),
            "stream {i}: {resp:?}"
        );
        decode_until(resp.body_mut(), &mut gunzip(), 1).await;
        open.push(resp);
    }
    open
}

/// One client's encoders hold at most an eighth of `max_memory` (one encoder here): a client
/// that opens streams and reads none cannot stop other clients' answers being compressed (and
/// cached compressed).
#[tokio::test]
async fn one_clients_encoders_hold_only_its_share() {
    let o = Origin::start("o").await;
    let d = tight_daemon(&o).await;
    let c = http1();
    let open = hold_encoders(&c, &d, &["192.0.2.1"]).await;
    let page = |n: u32| format!("/c/share{n}?size=20000&hdr=Content-Type:text/html");
    let from = |client| {
        [
            ("host", "cdn.test"),
            ("accept-encoding", "gzip"),
            ("x-forwarded-for", client),
        ]
    };
    let a = get(&c, &url(&d, &page(1)), &from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(a.header("content-encoding"), None, "past its share");
    assert_eq!(a.body, plain(SIZE));
    let a = get(&c, &url(&d, &page(2)), &from("192.0.2.9"))
        .await
        .unwrap();
    assert_eq!(a.header("content-encoding"), Some("gzip"), "another client");
    assert_eq!(decode("gzip", &a.body), plain(SIZE));
    assert_eq!(d.limited("compression").await, 1.0);
    o.release();
    drop(open);
}

/// A stale object refreshed in the background while the encoders are all at work keeps its
/// compressed copy: the refresh's identity answer is not stored in its place.
#[tokio::test]
async fn a_background_refresh_past_max_memory_keeps_the_compressed_copy() {
    let o = Origin::start("o").await;
    let d = tight_daemon(&o).await;
    let c = http1();
    let path = "/c/swr?size=20000&hdr=Content-Type:text/html\
&cc=max-age%3D1%2C+stale-while-revalidate%3D60";
    let gzip = [("host", "cdn.test"), ("accept-encoding", "gzip")];
    let a = get(&c, &url(&d, path), &gzip).await.unwrap();
    assert_eq!(a.header("content-encoding"), Some("gzip"));
    // Two clients' streams: `tight_daemon`'s encoders are all at work.
    let open = hold_encoders(&c, &d, &["192.0.2.1", "192.0.2.2"]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = o.hits();
    let a = get(&c, &url(&d, path), &gzip).await.unwrap();
    assert_eq!(a.header("content-encoding"), Some("gzip"), "the stale copy");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while o.hits() == before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        o.hits() > before,
        "the stale copy was refreshed in the background"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = get(&c, &url(&d, path), &gzip).await.unwrap();
    assert_eq!(
        a.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        a.headers
    );
    assert_eq!(decode("gzip", &a.body), plain(SIZE));
    o.release();
    drop(open);
}

/// Encoders are bounded by `max_memory` across the daemon: a client cannot pin gigabytes by
/// opening streams it never reads. A response past the bound goes out as it came, is counted,
/// and is not stored, so that the cache's compressed copy is made by a later request.
#[tokio::test]
async fn encoders_past_max_memory_send_the_identity_which_is_not_stored() {
    let o = Origin::start("o").await;
    let d = tight_daemon(&o).await;
    let c = http1();
    // Two clients' streams: `tight_daemon`'s encoders are all at work.
    let open = hold_encoders(&c, &d, &["192.0.2.1", "192.0.2.2"]).await;
    let small = "/c/page?size=20000&hdr=Content-Type:text/html&cc=max-age%3D60";
    let gzip = [("host", "cdn.test"), ("accept-encoding", "gzip")];
    let a = get(&c, &url(&d, small), &gzip).await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-encoding"), None, "{:?}", a.headers);
    assert_eq!(a.body, plain(SIZE));
    let vary = a.header("vary").unwrap_or("").to_ascii_lowercase();
    assert!(vary.contains("accept-encoding"), "{:?}", a.headers);
    assert_eq!(d.limited("compression").await, 1.0);

    o.release();
    for resp in open {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
    // The encoders are given back as their streams end; the identity was not kept for gzip.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let a = loop {
        let a = get(&c, &url(&d, small), &gzip).await.unwrap();
        if a.header("content-encoding").is_some() || std::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        a.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        a.headers
    );
    assert_eq!(a.header("x-edge"), Some("MISS"));
    assert_eq!(decode("gzip", &a.body), plain(SIZE));
    let a = get(&c, &url(&d, small), &gzip).await.unwrap();
    assert_eq!(a.header("x-edge"), Some("HIT"));
    assert_eq!(decode("gzip", &a.body), plain(SIZE));
}
