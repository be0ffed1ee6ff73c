//! An origin that answers with exactly the bytes a test gives it: for responses a well-behaved
//! HTTP library will not produce (both Content-Length and Transfer-Encoding, interim 1xx
//! responses before the final one, malformed framing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::wire::{chunked_end, content_length, is_chunked};

type Respond = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// When a raw origin reads a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bodies {
    /// After its answer, as backends that answer on the head do.
    AfterAnswer,
    /// Before its answer.
    BeforeAnswer,
    /// Never: what follows a head is read as the next request.
    Ignored,
}

/// A running raw origin. Each request head it reads is recorded and answered with
/// `respond(head)`; health probes (`/healthz`) get a plain 200. A body (by `Content-Length` or
/// chunked) is read after the answer is sent, as backends that answer on the head do (nginx's static
/// files to a POST, a 401 or 413): its length is recorded, and the connection goes on.
pub struct RawOrigin {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    /// Lengths of the request bodies read to their end.
    bodies: Arc<Mutex<Vec<usize>>>,
    /// Connections that carried at least one request (probes aside).
    request_conns: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for RawOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawOrigin")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RawOrigin {
    /// Answers every request `200 ok`, however many header fields it has (hyper's servers, like
    /// [`crate::Origin`], refuse more than 100): a 431 in front of it is the proxy's.
    pub async fn ok() -> RawOrigin {
        RawOrigin::start(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()).await
    }

    /// A daemon whose listener (named `web`) sends every request here.
    pub async fn behind(&self, web: crate::Listener) -> crate::TestDaemon {
        crate::Config::new()
            .listener(web)
            .region(crate::Region::new("origin").address(self.addr))
            .service(
                crate::Service::new("s")
                    .listeners(&["web"])
                    .regions(&["origin"]),
            )
            .start()
            .await
    }

    /// A daemon whose listener `web` sends every request here over HTTPS, trusting `cert`
    /// (made for `origin.test`), and the directory of its CA file (kept for the daemon's life).
    pub async fn behind_https(
        &self,
        cert: &crate::tls::Cert,
    ) -> (crate::TestDaemon, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = crate::tls::write_cert(dir.path(), "ca", cert);
        let d = crate::Config::new()
            .listener(crate::Listener::http("web"))
            .region(crate::Region::new("origin").address(self.addr))
            .service(
                crate::Service::new("s")
                    .listeners(&["web"])
                    .regions(&["origin"])
                    .upstream(
                        crate::Upstream::new()
                            .protocol("https")
                            .tls_ca_file(&ca)
                            .tls_server_name("origin.test"),
                    ),
            )
            .start()
            .await;
        (d, dir)
    }

    pub async fn start(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> RawOrigin {
        RawOrigin::start_with(respond, Bodies::AfterAnswer).await
    }

    /// A backend that reads each request's body before it answers, as most applications do.
    pub async fn answering_after_bodies(
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    ) -> RawOrigin {
        RawOrigin::start_with(respond, Bodies::BeforeAnswer).await
    }

    /// A backend that answers on the head and ignores the request's body framing: whatever
    /// follows a head on the connection is read as the next request (the "CL.0" backends of
    /// request-smuggling research: a static-file handler that never reads a POST's body).
    pub async fn ignoring_bodies(
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    ) -> RawOrigin {
        RawOrigin::start_with(respond, Bodies::Ignored).await
    }

    /// [`RawOrigin::ignoring_bodies`] behind TLS (`tls`): an HTTPS backend that answers on the
    /// head and reads what follows as the next request.
    pub async fn ignoring_bodies_tls(
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        tls: Arc<rustls::ServerConfig>,
    ) -> RawOrigin {
        RawOrigin::listen(Arc::new(respond), Bodies::Ignored, Some(tls)).await
    }

    /// [`RawOrigin::answering_after_bodies`] behind TLS (`tls`).
    pub async fn answering_after_bodies_tls(
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        tls: Arc<rustls::ServerConfig>,
    ) -> RawOrigin {
        RawOrigin::listen(Arc::new(respond), Bodies::BeforeAnswer, Some(tls)).await
    }

    async fn start_with(
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        bodies_read: Bodies,
    ) -> RawOrigin {
        RawOrigin::listen(Arc::new(respond), bodies_read, None).await
    }

    async fn listen(
        respond: Arc<Respond>,
        bodies_read: Bodies,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen {
            heads: Arc::new(Mutex::new(Vec::new())),
            bodies: Arc::new(Mutex::new(Vec::new())),
            request_conns: Arc::new(AtomicUsize::new(0)),
        };
        let kept = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let (respond, seen, tls) = (respond.clone(), seen.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(s, &*respond, bodies_read, &seen).await,
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                                serve(s, &*respond, bodies_read, &seen).await;
                            }
                        }
                    }
                });
            }
        });
        RawOrigin {
            addr,
            heads: kept.heads,
            bodies: kept.bodies,
            request_conns: kept.request_conns,
            task,
        }
    }

    /// Request heads received (probes aside).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Lengths of the request bodies read to their end, in order.
    pub fn bodies(&self) -> Vec<usize> {
        self.bodies.lock().unwrap().clone()
    }

    /// How many connections carried requests (probes aside).
    pub fn request_connections(&self) -> usize {
        self.request_conns.load(Ordering::Relaxed)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a raw origin records, shared by its connections.
#[derive(Clone)]
struct Seen {
    heads: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<usize>>>,
    request_conns: Arc<AtomicUsize>,
}

/// Answers the requests of one connection, reading their bodies as `bodies_read` says.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    respond: &Respond,
    bodies_read: Bodies,
    seen: &Seen,
) {
    let mut counted = false;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
        buf.drain(..end + 4);
        let answer = if head.starts_with("GET /healthz ") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
        } else {
            if !counted {
                counted = true;
                seen.request_conns.fetch_add(1, Ordering::Relaxed);
            }
            seen.heads.lock().unwrap().push(head.clone());
            respond(&head)
        };
        if bodies_read != Bodies::BeforeAnswer && !send(&mut s, &answer).await {
            return;
        }
        if bodies_read == Bodies::Ignored {
            continue;
        }
        let chunked = is_chunked(&head);
        let length = content_length(&head);
        // (bytes on the wire, body length) once the body is all in.
        let end = |buf: &[u8]| match chunked {
            true => chunked_end(buf),
            false => (buf.len() >= length).then_some((length, length)),
        };
        let (wire, body) = loop {
            if let Some(end) = end(&buf) {
                break end;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if wire > 0 {
            buf.drain(..wire);
            seen.bodies.lock().unwrap().push(body);
        }
        if bodies_read == Bodies::BeforeAnswer && !send(&mut s, &answer).await {
            return;
        }
    }
}

/// Writes `answer` and flushes it (TLS holds written bytes until a flush); false once the
/// connection is gone.
/// An answer framed by neither Content-Length nor Transfer-Encoding ends when the connection
/// does: it is closed after it.
async fn send<S: AsyncWrite + Unpin>(s: &mut S, answer: &[u8]) -> bool {
    let sent = s.write_all(answer).await.is_ok() && s.flush().await.is_ok();
    if sent && until_close(answer) {
        let _ = s.shutdown().await;
        return false;
    }
    sent
}

fn until_close(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
    let final_2xx = text.starts_with("http/1.1 2") || text.starts_with("http/1.0 2");
    final_2xx
        && !text.starts_with("http/1.1 204")
        && !text.contains("\r\ncontent-length:")
        && !text.contains("\r\ntransfer-encoding:")
}
