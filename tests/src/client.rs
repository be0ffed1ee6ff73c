//! Real HTTP clients for tests: hyper's pooled client over HTTP/1.1 or HTTP/2 (prior
//! knowledge), a one-shot client bound to a chosen source address, and raw TCP.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How long the test clients keep an unused connection: under the daemon's `request_header`
/// (10 s), after which it closes a connection that has not sent its first request. hyper's
/// client opens a spare connection when a request starts while the last one is still being
/// handed back; with hyper's 90 s default that spare could be picked as the daemon closed it,
/// and a request already written is not retried (a chaos run failed a GET that way). Browsers
/// and other clients retry such an idempotent request; the tests' client does not.
const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

pub fn http1() -> TestClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(CLIENT_IDLE)
        .build(c)
}

pub fn http2() -> TestClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(CLIENT_IDLE)
        .http2_only(true)
        .build(c)
}

/// GET `url` with extra headers.
pub async fn get(
    client: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    send(client, Method::GET, url, headers, Bytes::new()).await
}

pub async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<Answer> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(body))?).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// One HTTP/1.1 GET over a fresh connection from source address `from` (any 127.x.y.z works on
/// Linux), so the proxy sees that peer address.
pub async fn get_from(
    from: IpAddr,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(to).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", to.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Writes `raw` on a new connection, reads nothing for `stall`, then reads until the peer ends
/// the connection (for at most 10 s): the bytes that arrived, or `None` if it was still open.
pub async fn stall_then_drain(
    to: SocketAddr,
    raw: &[u8],
    stall: std::time::Duration,
) -> std::io::Result<Option<usize>> {
    let mut s = TcpStream::connect(to).await?;
    s.write_all(raw).await?;
    tokio::time::sleep(stall).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    Ok(drained.ok().map(|()| got))
}

/// Writes `raw` on a new connection and reads until the peer closes or `limit` bytes arrive.
pub async fn raw_exchange(to: SocketAddr, raw: &[u8], limit: usize) -> std::io::Result<String> {
    let mut s = TcpStream::connect(to).await?;
    s.write_all(raw).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < limit {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One HTTP/1.1 GET over a new TLS connection to `to` with server name `sni`.
pub async fn get_tls(
    to: SocketAddr,
    sni: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let tcp = TcpStream::connect(to).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Splits a stream of responses with Content-Length framing into (head, body) pairs; an answer
/// whose body has not all arrived is left out.
pub fn answers(mut text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = text.find("\r\n\r\n") {
        let head = text[..end].to_ascii_lowercase();
        let len = crate::wire::content_length(&head);
        if text.len() < end + 4 + len {
            break;
        }
        let body = text[end + 4..end + 4 + len].to_string();
        out.push((head, body));
        text = &text[end + 4 + len..];
    }
    out
}
