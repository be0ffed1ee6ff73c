//! A cache fill goes at the origin's pace, not at its first client's: what a slow client, or
//! one that reads nothing, can do to the clients waiting on the same new object, and what the
//! read-ahead costs (held from `max_fill_bytes`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use streamgate_tests::*;

/// 128 MiB: `max_fill_bytes` is half, 64 MiB, of which read-ahead may hold what leaves
/// `max_object_size` free.
fn cache() -> Cache {
    Cache::new("128MiB")
}

async fn start(o: &Origin, cache: Cache) -> TestDaemon {
    Config::cdn(o.addr, &["*"], cache).start().await
}

async fn fetch(d: &TestDaemon, path: &str) -> Answer {
    get(
        &http1(),
        &d.url("web", path),
        &[("host", "cdn.example.com")],
    )
    .await
    .unwrap()
}

fn xc(a: &Answer) -> &str {
    a.header("x-cache").unwrap_or("-")
}

/// A 16 MiB object, larger than what the kernel buffers between the daemon and a client that
/// reads nothing, with a lock_timeout that a follower held by the leader's client would reach.
const BIG: &str = "/c/big?cc=max-age%3D60&size=16777216";
const BIG_LEN: usize = 16 << 20;

fn big_cache() -> Cache {
    cache().max_object_size("17MiB").lock_timeout("60s")
}

/// Waits until the origin has been asked `n` times (at most 10 s).
async fn until_asked(o: &Origin, n: u64) {
    for _ in 0..200 {
        if o.hits() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the origin was asked {} times, not {n}", o.hits());
}

/// A second client of the object at `path`: served from the one fill well within the
/// lock_timeout.
async fn follower_is_served_from_the_fill(d: &TestDaemon, o: &Origin, path: &str) {
    let follower = tokio::time::timeout(Duration::from_secs(20), fetch(d, path))
        .await
        .expect("the follower waited on a fill held back by a client that reads nothing");
    assert_eq!(follower.status, StatusCode::OK);
    assert_eq!(follower.body.len(), BIG_LEN);
    assert_eq!(o.hits(), 1, "one trip to the origin for both");
}

/// An HTTP/1.1 client with a 4 KiB receive buffer that has asked for `path` and reads nothing
/// yet; the origin has been asked.
async fn stalled_leader(d: &TestDaemon, o: &Origin, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let asked = o.hits();
    let mut leader = sock.connect(d.addr("web")).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: cdn.example.com\r\n\r\n");
    leader.write_all(head.as_bytes()).await.unwrap();
    until_asked(o, asked + 1).await;
    leader
}

/// Reads the leader's answer and checks that it is all of [`BIG`].
async fn leader_gets_it_all(mut leader: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let end = loop {
        let n = leader.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "the leader's answer was cut at {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= end + 4 + BIG_LEN
        {
            break end + 4;
        }
    };
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let body = &got[end..];
    assert_eq!(body.len(), BIG_LEN);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + (i % 26) as u8),
        "the leader's body is the object"
    );
}

async fn fill_bytes(d: &TestDaemon) -> f64 {
    metric(&d.metrics().await, "streamgate_cache_fill_bytes").unwrap_or(-1.0)
}

async fn dropped_for_memory(d: &TestDaemon) -> f64 {
    let series = "streamgate_cache_fills_dropped_total{reason=\"memory\"}";
    metric(&d.metrics().await, series).unwrap_or(-1.0)
}

/// The fill of a miss goes at the origin's pace, not at its first client's: a client that reads
/// nothing (or a byte a minute) must not keep every other client of a new object waiting for
/// the lock_timeout and then send them all to the origin at once, as nginx's proxy_buffering
/// does not either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_reads_nothing_does_not_hold_the_fill_it_leads() {
    let o = Origin::start("o").await;
    let d = start(&o, big_cache()).await;
    let leader = stalled_leader(&d, &o, BIG).await;
    follower_is_served_from_the_fill(&d, &o, BIG).await;
    // The leader still gets all of it when it reads.
    leader_gets_it_all(leader).await;
}

/// Waits until `cache_fill_bytes` holds still (three equal readings 100 ms apart, not 0) and
/// returns it; every reading on the way is at most `limit`.
async fn settled_fill_bytes(d: &TestDaemon, limit: f64) -> f64 {
    let mut seen: Vec<f64> = Vec::new();
    for _ in 0..200 {
        let held = fill_bytes(d).await;
        assert!(
            held <= limit,
            "cache_fill_bytes reached {held}, past {limit}"
        );
        seen.push(held);
        if let [.., a, b, c] = seen[..]
            && a > 0.0
            && a == b
            && b == c
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cache_fill_bytes did not settle: {seen:?}");
}

/// Waits (up to 10 s) until the cache holds `n` objects.
async fn until_stored(d: &TestDaemon, n: f64, why: &str) {
    let mut objects = None;
    for _ in 0..200 {
        objects = metric(&d.metrics().await, "streamgate_cache_objects");
        if objects == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{why}: {objects:?} objects stored, not {n}");
}

/// Another new 16 MiB object, fetched meanwhile, is stored: the next request for it is a HIT
/// and nothing was dropped for memory.
async fn another_new_object_is_stored(d: &TestDaemon) {
    let other = "/c/other?cc=max-age%3D60&size=16777216";
    assert_eq!(fetch(d, other).await.body.len(), BIG_LEN);
    let again = fetch(d, other).await;
    assert_eq!((xc(&again), again.body.len()), ("HIT", BIG_LEN));
    assert_eq!(dropped_for_memory(d).await, 0.0);
}

/// What waits for a slow client is held from `max_fill_bytes` with the recordings, leaving
/// `max_object_size` of it free. With the rest spent, a recording that holds the whole body
/// (the origin said its length) goes on at the origin's pace and is stored; its client is then
/// served from the stored object, and all of the budget is given back while it still reads
/// nothing. Before, the fill waited for its client, its memory held all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_a_slow_client_is_bounded_and_given_back_once_stored() {
    let o = Origin::start("o").await;
    let d = start(&o, big_cache().max_fill_bytes("40MiB")).await;
    let leader = stalled_leader(&d, &o, BIG).await;
    until_stored(&d, 1.0, "the fill went at the leader's pace").await;
    let mut held = fill_bytes(&d).await;
    for _ in 0..100 {
        if held == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        held = fill_bytes(&d).await;
    }
    assert_eq!(
        held, 0.0,
        "the budget is given back while the leader reads nothing"
    );
    another_new_object_is_stored(&d).await;
    leader_gets_it_all(leader).await;
    let again = fetch(&d, BIG).await;
    assert_eq!((xc(&again), again.body.len()), ("HIT", BIG_LEN));
    assert_eq!(o.hits(), 2);
}

/// A few clients that each lead the fill of a new large object and read nothing could hold
/// every recording's memory (`max_fill_bytes`) for as long as they kept their connections:
/// no other new object of the service was stored meanwhile (dropped for memory, every request
/// for it sent to the origin). Their fills now end at the origin's pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_read_nothing_cannot_keep_other_objects_out_of_the_cache() {
    let o = Origin::start("o").await;
    // Two 16 MiB recordings and what was read ahead of the first fill 33 of the 34 MiB.
    let d = start(&o, big_cache().max_fill_bytes("34MiB")).await;
    let a = stalled_leader(&d, &o, "/c/a?cc=max-age%3D60&size=16777216").await;
    let b = stalled_leader(&d, &o, "/c/b?cc=max-age%3D60&size=16777216").await;
    until_stored(&d, 2.0, "the fills went at their leaders' pace").await;
    another_new_object_is_stored(&d).await;
    leader_gets_it_all(a).await;
    leader_gets_it_all(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_grants_no_window_does_not_hold_the_fill_it_leads() {
    let o = Origin::start("o").await;
    let d = start(&o, big_cache()).await;
    let mut leader = streamgate_tests::h2::h2_client(&d).await;
    let req = http::Request::get(format!("http://cdn.example.com{BIG}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    // The head is taken; the body is never read, so no window is given back.
    let resp = leader.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    follower_is_served_from_the_fill(&d, &o, BIG).await;
    // The leader gets all of it when it reads.
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), BIG_LEN);
}

/// A fill without a Content-Length goes at the origin's pace too, and read-ahead never takes
/// the memory its recording needs to grow: it was dropped when its own client's backlog had
/// taken the room (its followers then all went to the origin, and nothing was stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_without_a_length_is_read_ahead_and_never_dropped_for_it() {
    let o = Origin::start("o").await;
    let d = start(&o, big_cache()).await;
    let path = "/c/chunked?cc=max-age%3D60&size=16777216&chunked=1";
    let leader = stalled_leader(&d, &o, path).await;
    follower_is_served_from_the_fill(&d, &o, path).await;
    assert_eq!(
        dropped_for_memory(&d).await,
        0.0,
        "the recording was dropped"
    );
    drop(leader);
    // With 24 MiB to spend, the recording growing to 16 MiB and at most 7 MiB read ahead: the
    // budget runs out before the body is read, and the recording is still not the one dropped.
    let d = start(&o, big_cache().max_fill_bytes("40MiB")).await;
    let path = "/c/chunked-2?cc=max-age%3D60&size=16777216&chunked=1";
    let leader = stalled_leader(&d, &o, path).await;
    let held = settled_fill_bytes(&d, 23.0 * 1048576.0).await;
    assert_eq!(
        dropped_for_memory(&d).await,
        0.0,
        "the recording was dropped (cache_fill_bytes {held})"
    );
    // The leader leaves; the fill finishes without it.
    drop(leader);
    let mut objects = None;
    for _ in 0..200 {
        objects = metric(&d.metrics().await, "streamgate_cache_objects");
        if objects == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(objects, Some(1.0), "stored");
    let again = fetch(&d, path).await;
    assert_eq!((xc(&again), again.body.len()), ("HIT", BIG_LEN));
}

/// Reads one answer framed by its Content-Length from `s`: its head and body.
async fn read_answer(s: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a content-length");
            if got.len() >= end + 4 + len {
                let body = got[end + 4..end + 4 + len].to_vec();
                return (head, body);
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert_ne!(
            n,
            0,
            "the answer was cut: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A fill under 64 KiB whose first part came with its head, the rest later: its HTTP/1.1
/// client gets all of it as its Content-Length says, and the connection goes on. (Framed by
/// what was left to read, the answer was cut short by the part already read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fill_arriving_in_parts_reaches_an_http1_client_whole() {
    use tokio::io::AsyncWriteExt;
    let o = Arc::new(Origin::start("o").await);
    let d = start(&o, cache()).await;
    let path = "/c/parts?cc=max-age%3D60&size=40000&hold=1&holdat=8192";
    let mut s = tokio::net::TcpStream::connect(d.addr("web")).await.unwrap();
    let ask = format!("GET {path} HTTP/1.1\r\nhost: cdn.example.com\r\n\r\n");
    s.write_all(ask.as_bytes()).await.unwrap();
    let release = {
        let o = o.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            o.release();
        })
    };
    let want: Vec<u8> = (0..40000).map(|i| b'a' + (i % 26) as u8).collect();
    for round in ["miss", "hit"] {
        let (head, body) = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut s))
            .await
            .unwrap_or_else(|_| panic!("the {round}'s answer did not come whole"));
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(body == want, "the {round}'s body is the object");
        s.write_all(ask.as_bytes()).await.unwrap();
    }
    release.await.unwrap();
}

/// With no room to read ahead (`max_fill_bytes` no larger than `max_object_size`), a fill of
/// known length still reaches a client that reads as fast as the origin sends, piece by piece,
/// rather than all at once when the origin has sent the last byte; the client is fed from the
/// recording. (Fed only at the end, a video player timed out on a slow origin.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_with_no_room_to_read_ahead_still_streams_to_its_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = Arc::new(Origin::start("o").await);
    let d = start(&o, Cache::new("64MiB").max_object_size("48MiB")).await;
    // 8 MiB, of which the origin sends 2 MiB and then waits.
    let path = "/c/slow?cc=max-age%3D60&size=8388608&hold=1&holdat=2097152";
    let mut s = tokio::net::TcpStream::connect(d.addr("web")).await.unwrap();
    let ask = format!("GET {path} HTTP/1.1\r\nhost: cdn.example.com\r\n\r\n");
    s.write_all(ask.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let early = tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < 2 << 20 {
            let n = s.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        early.is_ok(),
        "the client had {} bytes of the 2 MiB the origin sent",
        got.len()
    );
    o.release();
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    while got.len() < end + (8 << 20) {
        let n = s.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "cut at {}", got.len() - end);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let want: Vec<u8> = (0..8 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    assert!(got[end..] == want[..], "the body is the object");
    let again = fetch(&d, path).await;
    assert_eq!((xc(&again), again.body.len()), ("HIT", 8 << 20));
}

/// Fills that go on after their client left are bounded: clients that asked for new objects of
/// a slow origin and left at once made the daemon hold a backend connection per request, with
/// no limit. The first 256 of a service still go on (and are stored); past that, a fill ends
/// with its client, as nginx's does, counted as `orphaned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_whose_clients_left_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let orphans = streamgate_cache::record::MAX_ORPHANS;
    let o = Origin::start("o").await;
    let d = start(&o, Cache::new("1GiB")).await;
    let n = orphans + 44;
    for i in 0..n {
        // 128 KiB, of which the origin sends 64 KiB and then waits.
        let path = format!("/c/left-{i}?cc=max-age%3D60&size=131072&hold=1");
        let mut s = tokio::net::TcpStream::connect(d.addr("web")).await.unwrap();
        let ask = format!("GET {path} HTTP/1.1\r\nhost: cdn.example.com\r\n\r\n");
        s.write_all(ask.as_bytes()).await.unwrap();
        let mut head = [0u8; 1024];
        assert!(s.read(&mut head).await.unwrap() > 0, "no answer for {path}");
        // The client leaves with its answer begun.
    }
    let series = "streamgate_cache_fills_dropped_total{reason=\"orphaned\"}";
    let mut dropped = None;
    for _ in 0..200 {
        dropped = metric(&d.metrics().await, series);
        if dropped == Some(44.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped, Some(44.0), "{}", d.metrics().await);
    // The fills kept go on once the origin sends the rest, and are stored.
    o.release();
    until_stored(&d, orphans as f64, "the fills without their clients").await;
}
