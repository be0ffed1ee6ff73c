//! A response being recorded into the cache while it streams (a fill), and how a recording is
//! finished once its client is gone.

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use streamgate_cache::record::Recorder;

/// A recording and the longest silence of the origin while it is finished without a client.
/// Kept apart from the body: the answer is moved about 25 times on its way to the client, and
/// at 272 bytes each move took glibc's looping AVX2 copy, at 256 its short one (callgrind).
#[derive(Debug)]
pub struct Recording {
    pub recorder: Recorder,
    pub drain_stall: std::time::Duration,
}

/// Longest a recording finished without a client may take, in stalls: an origin trickling a
/// byte just inside the stall timer cannot hold the fill budget and its connection for ever.
pub const DRAIN_STALLS: u32 = 10;

/// Reads the rest of `body` into `recorder` and stores it; gives up on an error, after `stall`
/// without data, or after ten stalls in all.
pub async fn finish_recording<B>(mut body: B, mut recorder: Recorder, stall: std::time::Duration)
where
    B: Body<Data = Bytes> + Unpin,
{
    let deadline = tokio::time::Instant::now() + stall.saturating_mul(DRAIN_STALLS);
    loop {
        let wait = stall.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(None) => {
                recorder.finish();
                return;
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && recorder.push(data).is_err()
                {
                    return;
                }
                if frame.is_data() && body.is_end_stream() {
                    recorder.finish();
                    return;
                }
                if frame.is_trailers() {
                    return;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return recorder.fail(),
        }
    }
}
