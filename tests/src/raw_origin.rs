//! An origin that answers with exactly the bytes a test gives it: for responses a well-behaved
//! HTTP library will not produce (both Content-Length and Transfer-Encoding, interim 1xx
//! responses before the final one, malformed framing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    async fn start_with(
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        bodies_read: Bodies,
    ) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Respond> = Arc::new(respond);
        let seen = heads.clone();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let read_bodies = bodies.clone();
        let request_conns = Arc::new(AtomicUsize::new(0));
        let conns = request_conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (respond, seen, conns) = (respond.clone(), seen.clone(), conns.clone());
                let read_bodies = read_bodies.clone();
                tokio::spawn(async move {
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
                                conns.fetch_add(1, Ordering::Relaxed);
                            }
                            seen.lock().unwrap().push(head.clone());
                            respond(&head)
                        };
                        if bodies_read != Bodies::BeforeAnswer
                            && s.write_all(&answer).await.is_err()
                        {
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
                            read_bodies.lock().unwrap().push(body);
                        }
                        if bodies_read == Bodies::BeforeAnswer
                            && s.write_all(&answer).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        RawOrigin {
            addr,
            heads,
            bodies,
            request_conns,
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
