//! One HTTP/1.1 exchange with a backend: connect, write the request head, send the body from a
//! task of its own while the response head is read, and the connection states that follow.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio_util::io::poll_read_buf;

use super::codec::{self, RequestFraming, ResponseHead};
use super::{RequestBody, Upload, UpstreamError};

/// Read size for response heads (and a whole small response).
const READ_HEAD: usize = 8 * 1024;

pub(super) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(UpstreamError::ConnectTimeout),
        Ok(Err(e)) => Err(UpstreamError::Connect(e)),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// The errors a keep-alive connection closed by the backend produces.
pub(super) fn is_stale_connection(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Closed { .. } => true,
        UpstreamError::Io { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

pub(super) struct Failure {
    pub(super) error: UpstreamError,
    /// Some response bytes arrived: the backend saw the request.
    pub(super) response_started: bool,
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Failure {
        Failure {
            error,
            response_started: false,
        }
    }
}

/// Writes the request and reads the response head into `buf`, which then holds the bytes read
/// past it. Returns the connection and the head.
///
/// A request body is sent by a task of its own while the response head is awaited, so a backend
/// that answers early (413, 401, or an echo streaming back) is read while the body still flows.
pub(super) async fn exchange(
    mut conn: TcpStream,
    wire: &[u8],
    body: RequestBody,
    framing: RequestFraming,
    buf: &mut BytesMut,
    mut raw: Option<&mut Vec<[u16; 4]>>,
) -> Result<(Conn, ResponseHead), Failure> {
    // A connection's kept buffer takes the whole answer again in place once nothing points into
    // it; a new connection's (or one still shared) is allocated here.
    buf.clear();
    buf.reserve(READ_HEAD);
    let whole: &[u8] = match &body {
        RequestBody::Whole(b, _, _) => b,
        _ => &[],
    };
    write_both(&mut conn, wire, whole)
        .await
        .map_err(|e| io_err("sending the request", e))?;
    let mut conn = match body {
        // Its body went with the head, read whole before (the upload is done).
        RequestBody::Empty | RequestBody::Whole(..) => Conn::Whole(conn),
        // All of it is in before it starts (an HTTP/2 client's `content-length: 0` without
        // END_STREAM, or an END_STREAM that came after the body was looked at): nothing to
        // send, so no task to wait for. The upload is done, so the response deadline is the
        // backend's from here.
        RequestBody::Stream(_, upload)
            if matches!(framing, RequestFraming::Empty | RequestFraming::Length(0)) =>
        {
            upload.finished();
            Conn::Whole(conn)
        }
        RequestBody::Stream(client_body, upload) => {
            let (rd, wr) = conn.into_split();
            let writer = tokio::spawn(write_body(wr, client_body, framing, upload.clone()));
            Conn::Split {
                rd,
                writer: BodyWriter(Some(writer)),
                upload,
            }
        }
    };
    loop {
        match codec::parse_response_head(buf, raw.as_deref_mut()) {
            Err(e) => {
                return Err(Failure {
                    error: e.into(),
                    response_started: true,
                });
            }
            Ok(Some(head)) => {
                let s = head.status.as_u16();
                // Interim responses (100 Continue, 103 Early Hints) are not the answer.
                if (100..200).contains(&s) && s != 101 {
                    continue;
                }
                if let Conn::Split { upload, .. } = &conn {
                    upload.answered(s);
                }
                return Ok((conn, head));
            }
            Ok(None) => {
                let started = !buf.is_empty();
                if let Err(error) = read_more(&mut conn, buf).await {
                    // If the client's body broke, that is the story, not the backend's reaction.
                    let error = match conn.writer_error().await {
                        Some(e @ UpstreamError::ClientBody(_)) => e,
                        _ => error,
                    };
                    return Err(Failure {
                        error,
                        response_started: started,
                    });
                }
            }
        }
    }
}

/// Writes `head` and then `body`, in one system call when the socket takes both.
async fn write_both(conn: &mut TcpStream, mut head: &[u8], mut body: &[u8]) -> io::Result<()> {
    while !head.is_empty() && !body.is_empty() {
        let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let n = conn.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    conn.write_all(head).await?;
    conn.write_all(body).await
}

/// A backend connection while its response is read: whole, or split while a task still sends
/// the request body.
#[derive(Debug)]
pub(crate) enum Conn {
    Whole(TcpStream),
    Split {
        rd: OwnedReadHalf,
        writer: BodyWriter,
        upload: Arc<Upload>,
    },
}

/// What a backend connection whose answer has ended can do next.
#[derive(Debug)]
pub(crate) enum Reuse {
    /// Serve another request now.
    Now(TcpStream),
    /// The request body is still being sent. The rest still goes: a body dropped half-read
    /// makes hyper's server close the client's connection, and a client that reuses it loses
    /// its next request (h2load: one connection in 30 with two workers, 16 KiB uploads). Then
    /// the connection serves again only if the answer began after the whole body had gone
    /// (its writer was finishing); see [`Upload::answered_early`] for why not otherwise.
    AfterUpload(UploadTail),
    /// Closed.
    No,
}

/// The rest of a request body on its way after the answer; see [`Reuse::AfterUpload`].
#[derive(Debug)]
pub(crate) struct UploadTail {
    rd: OwnedReadHalf,
    writer: BodyWriter,
    upload: Arc<Upload>,
}

/// An upload that moves nothing for this long after its answer is given up on, and so is one
/// still going after `TAIL_MAX`: nginx's `lingering_timeout` and `lingering_time`, the bounds
/// it puts on reading a body nobody will use.
const TAIL_QUIET: Duration = Duration::from_secs(5);
const TAIL_MAX: Duration = Duration::from_secs(30);

impl UploadTail {
    /// Waits for the rest of the body to go; the connection if it went whole and may serve
    /// again. Given up (the upload aborted, the connection closed) when it stalls or runs long.
    pub(crate) async fn finish(mut self) -> Option<TcpStream> {
        let started = Instant::now();
        let handle = self.writer.0.as_mut()?;
        loop {
            let quiet = Duration::from_nanos(
                streamgate_balance::stats::now_nanos().saturating_sub(self.upload.last_progress()),
            );
            // Given up: the writer is aborted as `self` drops.
            let wait = tail_wait(started.elapsed(), quiet)?;
            if let Ok(done) = tokio::time::timeout(wait, &mut *handle).await {
                return match done {
                    Ok(Ok(wr)) if !self.upload.answered_early() => self.rd.reunite(wr).ok(),
                    _ => None,
                };
            }
        }
    }
}

/// How long to wait for a tail before looking again, `waited` after its answer ended and
/// `quiet` after its upload last moved; None: give up.
fn tail_wait(waited: Duration, quiet: Duration) -> Option<Duration> {
    if waited >= TAIL_MAX || quiet >= TAIL_QUIET {
        return None;
    }
    Some((TAIL_QUIET - quiet).min(TAIL_MAX - waited))
}

/// The task sending a request body; aborted if the exchange ends before it does.
#[derive(Debug)]
pub(crate) struct BodyWriter(Option<JoinHandle<Result<OwnedWriteHalf, UpstreamError>>>);

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if let Some(w) = &self.0 {
            w.abort();
        }
    }
}

impl Conn {
    /// What the connection can do once its answer has ended.
    pub(crate) fn into_reusable(self) -> Reuse {
        match self {
            Conn::Whole(s) => Reuse::Now(s),
            Conn::Split {
                rd,
                mut writer,
                upload,
            } => {
                let Some(handle) = writer.0.as_mut() else {
                    return Reuse::No;
                };
                if !handle.is_finished() {
                    // Its body dropped with the writer, h2 resets the client's stream.
                    if upload.stop_after_answer() {
                        return Reuse::No;
                    }
                    return Reuse::AfterUpload(UploadTail { rd, writer, upload });
                }
                // A finished task's output is ready: polling once with a no-op waker takes it,
                // outside tokio's cooperative budget, which a task that has just moved a long
                // answer has spent (a budgeted poll then says Pending, and the connection was
                // closed instead of pooled).
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let mut taken = std::pin::pin!(tokio::task::unconstrained(handle));
                match taken.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(Ok(Ok(wr))) if !upload.answered_early() => {
                        match rd.reunite(wr) {
                            Ok(s) => Reuse::Now(s),
                            Err(_) => Reuse::No,
                        }
                    }
                    _ => Reuse::No,
                }
            }
        }
    }

    /// The body writer's error, once it has finished with one.
    async fn writer_error(&mut self) -> Option<UpstreamError> {
        if let Conn::Split {
            writer: BodyWriter(Some(w)),
            ..
        } = self
            && w.is_finished()
        {
            return match w.await {
                Ok(Err(e)) => Some(e),
                _ => None,
            };
        }
        None
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Whole(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Split { rd, .. } => std::pin::Pin::new(rd).poll_read(cx, buf),
        }
    }
}

/// The client's body broke off: recorded ([`Upload::broke`]) before the backend sees it end.
fn client_broke(upload: &Upload, reason: String) -> UpstreamError {
    upload.broke();
    UpstreamError::ClientBody(reason)
}

fn io_err(stage: &'static str, source: io::Error) -> UpstreamError {
    UpstreamError::Io { stage, source }
}

async fn read_more<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<(), UpstreamError> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_HEAD);
    }
    let n = std::future::poll_fn(|cx| poll_read_buf(std::pin::Pin::new(&mut *rd), cx, buf))
        .await
        .map_err(|e| io_err("reading the response head", e))?;
    if n == 0 {
        return Err(UpstreamError::Closed {
            stage: "response head",
        });
    }
    Ok(())
}

/// A request body's frames that are in already are sent to the backend together: one write
/// (and, chunked, one chunk) for what a client sent as many small pieces. Sent one by one, a
/// chunked upload of 10 000 one-byte chunks (60 KB from the client) cost 30 000 `send` calls
/// and made the backend parse 10 000 chunks; nginx buffers a body, HAProxy writes it in
/// buffer-sized blocks.
const GATHER: usize = 64 * 1024;
/// A frame at least this large goes out as it is, not copied into the gathered bytes.
const WHOLE_FRAME: usize = 8 * 1024;

async fn write_body(
    mut wr: OwnedWriteHalf,
    mut body: hyper::body::Incoming,
    framing: RequestFraming,
    upload: Arc<Upload>,
) -> Result<OwnedWriteHalf, UpstreamError> {
    let chunked = framing == RequestFraming::Chunked;
    // All of a known length is in (`Length(0)` before any frame): the backend has the whole
    // body, and need not wait for an HTTP/2 client's END_STREAM, which may come in a frame of
    // its own later, or never (a reset).
    let all_in =
        |upload: &Upload| matches!(framing, RequestFraming::Length(n) if upload.bytes() == n);
    let mut gathered = BytesMut::new();
    while !all_in(&upload) {
        let Some(frame) = next_frame(&mut body, &mut wr, &mut gathered, chunked).await? else {
            break;
        };
        let frame = frame.map_err(|e| client_broke(&upload, e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if data.is_empty() {
                continue;
            }
            upload.sent(data.len());
            if upload.over_limit() {
                return Err(UpstreamError::ClientBody("larger than max_body".into()));
            }
            // `upload` counts what this task sends (the body's one reader).
            if matches!(framing, RequestFraming::Length(n) if upload.bytes() > n) {
                return Err(client_broke(&upload, "longer than its length".into()));
            }
            // Done before its last bytes go: a backend that reads the body answers only after
            // they have, and its answer must not look early however late this thread runs on
            // after the write (CI saw one preempted there, and a connection closed).
            if all_in(&upload) {
                upload.finished();
            }
            if data.len() >= WHOLE_FRAME {
                send_data(&mut wr, gathered.split().freeze(), chunked).await?;
                send_data(&mut wr, data, chunked).await?;
            } else {
                gathered.extend_from_slice(&data);
                if gathered.len() >= GATHER {
                    send_data(&mut wr, gathered.split().freeze(), chunked).await?;
                }
            }
        }
        // Its last byte is in: hyper's server says so only once it reads again, which after
        // an early answer waits for the client's next request (and the connection for it).
        if body.is_end_stream() {
            break;
        }
    }
    // An HTTP/2 client's RST_STREAM with NO_ERROR ends hyper's body as if it were whole. A
    // backend still owed bytes would read the next request on this connection as the rest.
    if matches!(framing, RequestFraming::Length(_)) && !all_in(&upload) {
        return Err(client_broke(&upload, "ended before its length".into()));
    }
    // The same reset of a body without a length: the last chunk would tell the backend that
    // the body is whole.
    upload
        .check_end(&body)
        .map_err(|cut| UpstreamError::ClientBody(cut.to_string()))?;
    upload.finished();
    send_data(&mut wr, gathered.split().freeze(), chunked).await?;
    if chunked {
        wr.write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| io_err("sending the request body", e))?;
    }
    Ok(wr)
}

/// The body's next frame. One that is not in yet lets what is gathered go first, unless it
/// comes after a yield: hyper's HTTP/1.1 server hands a body over a frame at a time, decoding
/// the next in the connection's task once this one is taken, so that task must run first.
async fn next_frame(
    body: &mut hyper::body::Incoming,
    wr: &mut OwnedWriteHalf,
    gathered: &mut BytesMut,
    chunked: bool,
) -> Result<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>, UpstreamError> {
    use futures_util::FutureExt;
    if let Some(next) = body.frame().now_or_never() {
        return Ok(next);
    }
    if gathered.is_empty() {
        return Ok(body.frame().await);
    }
    tokio::task::yield_now().await;
    if let Some(next) = body.frame().now_or_never() {
        return Ok(next);
    }
    send_data(wr, gathered.split().freeze(), chunked).await?;
    Ok(body.frame().await)
}

/// Writes `data` (as one chunk if `chunked`) in one vectored write where the socket takes it.
async fn send_data(
    wr: &mut OwnedWriteHalf,
    data: bytes::Bytes,
    chunked: bool,
) -> Result<(), UpstreamError> {
    use bytes::Buf;
    if data.is_empty() {
        return Ok(());
    }
    let sent = if chunked {
        let size = format!("{:x}\r\n", data.len());
        let mut all = size.as_bytes().chain(data).chain(&b"\r\n"[..]);
        wr.write_all_buf(&mut all).await
    } else {
        let mut data = data;
        wr.write_all_buf(&mut data).await
    };
    sent.map_err(|e| io_err("sending the request body", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_waits_while_its_upload_moves_for_at_most_thirty_seconds() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (since the answer ended, since the upload last moved) -> wait before looking again
        let table = [
            (s(0), s(0), Some(s(5))),
            (s(0), ms(100), Some(ms(4900))),
            (s(4), s(4), Some(s(1))),
            (s(5), s(5), None),
            (s(12), ms(10), Some(ms(4990))),
            (s(27), s(0), Some(s(3))),
            (s(29), s(2), Some(s(1))),
            (s(30), s(0), None),
            (s(40), s(1), None),
        ];
        for (waited, quiet, want) in table {
            assert_eq!(tail_wait(waited, quiet), want, "{waited:?} {quiet:?}");
        }
    }

    /// A task that has just moved a long answer has spent tokio's cooperative budget, and a
    /// JoinHandle polled then says Pending even when its task is done: the connection was
    /// closed instead of pooled.
    #[tokio::test]
    async fn a_finished_writer_is_taken_however_busy_the_task_was() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let _peer = l.accept().await.unwrap();
        let (rd, wr) = c.into_split();
        let upload = Upload::new(u64::MAX, false);
        upload.finished();
        let writer = tokio::spawn(async move { Ok(wr) });
        while !writer.is_finished() {
            tokio::task::yield_now().await;
        }
        // Spend this task's budget without yielding, as many reads of a long answer do.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..1000 {
            tx.send(()).unwrap();
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut spent = false;
        for _ in 0..1000 {
            if rx.poll_recv(&mut cx).is_pending() {
                spent = true;
                break;
            }
        }
        assert!(spent, "the budget ran out");
        let conn = Conn::Split {
            rd,
            writer: BodyWriter(Some(writer)),
            upload,
        };
        assert!(matches!(conn.into_reusable(), Reuse::Now(_)));
    }
}
