//! What a cache fill's pump ([`super::pump`]) has read of the origin's body ahead of a client
//! slower than the origin: pieces held from the fill budget until the client takes them, or
//! slices of the recorded body once the recording has ended.

use std::collections::VecDeque;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;

use super::pump::{PIECE, Piece};
use super::recording::Recording;
use streamgate_cache::record::AheadBytes;

/// Pieces read ahead of the client, each with its bytes of the fill budget.
#[derive(Default)]
pub(super) struct Ahead {
    pub(super) pieces: VecDeque<(Piece, Option<AheadBytes>)>,
    /// The budget refused the last piece: read no further until the client catches up.
    pub(super) over_budget: bool,
    /// When the client last took a piece, or was given one to take.
    pub(super) since: Option<Instant>,
}

impl Ahead {
    pub(super) fn push(&mut self, piece: Piece, recording: Option<&Recording>) {
        let n = data_len(&piece);
        let hold = recording.and_then(|r| r.recorder.hold_ahead(n as u64));
        self.over_budget |= n > 0 && hold.is_none();
        if self.pieces.is_empty() {
            self.since = Some(Instant::now());
        }
        self.pieces.push_back((piece, hold));
    }

    pub(super) fn clear(&mut self) {
        self.pieces.clear();
        self.over_budget = false;
    }

    /// Replaces what waits for the client with the recorded body from `sent` on: slices of
    /// the stored object, which hold no fill budget (the cache counts them).
    pub(super) fn serve_rest_from(&mut self, body: &Bytes, sent: usize) {
        self.clear();
        let mut rest = body.slice(sent.min(body.len())..);
        while rest.len() > PIECE {
            self.pieces
                .push_back((Ok(Frame::data(rest.split_to(PIECE))), None));
        }
        if !rest.is_empty() {
            self.pieces.push_back((Ok(Frame::data(rest)), None));
        }
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }
}

/// Bytes of data in `piece`.
pub(super) fn data_len(piece: &Piece) -> usize {
    piece
        .as_ref()
        .ok()
        .and_then(Frame::data_ref)
        .map_or(0, Bytes::len)
}
