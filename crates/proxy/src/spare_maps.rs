//! Emptied header maps kept on each worker thread for the next backend answer.
//!
//! A proxied HTTP/1.1 request used to allocate twice, both for the field map of the backend's
//! answer (its index and its entries; `benches/benches/allocs.rs`), and to free the request's
//! map, just as large, when it was done. The request's map is now emptied and kept here
//! ([`give`]), and the next answer's head is parsed into it ([`take`]): the maps of a proxied
//! HTTP/1.1 request cost no allocation. The answer's map becomes the connection's next request
//! map (see `http::h1`), so one map per connection goes round and one waits here.
//!
//! A map is kept only up to [`MAX_CAPACITY`] fields and [`KEEP`] maps per thread, so a client's
//! 100-field request cannot make the thread hold more than a few hundred KiB.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread: more than one, for answers read while other requests' maps are still
/// in use; few, because each answer needs only one.
const KEEP: usize = 16;

/// Maps with room for more fields than this are dropped, not kept.
const MAX_CAPACITY: usize = 128;

/// Maps with room for fewer fields than this are dropped too: an HTTP/2 request's map (about
/// six) would have to grow for an answer (nginx sends ten fields), and growing it cost h2c 200
/// instructions a request more than a new map (callgrind).
const MIN_CAPACITY: usize = 12;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `map`, emptied, for a later [`take`] on this thread (or drops it: too small, too
/// large, or too many kept already).
pub(crate) fn give(mut map: HeaderMap) {
    // `capacity` counts names; values repeated under one name are in a list of their own that
    // `clear` empties but does not free, and that this cannot see once they are gone. Maps
    // with more values than names are not kept (HTTP/1.1 requests cannot have many: at most
    // `max_headers`; see `http::forward` for the maps that are given at all).
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&map.capacity()) || map.len() > map.capacity() {
        return;
    }
    map.clear();
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < KEEP
        {
            spare.push(map);
        }
    });
}

/// An empty map with room for `fields` fields: a kept one when there is one.
pub(crate) fn take(fields: usize) -> HeaderMap {
    let kept = SPARE
        .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    match kept {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::{CONTENT_LENGTH, ETAG};

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        let mut map = HeaderMap::with_capacity(20);
        map.insert(ETAG, HeaderValue::from_static("\"a\""));
        map.append(CONTENT_LENGTH, HeaderValue::from_static("1"));
        let room = map.capacity();
        give(map);
        let back = take(4);
        assert!(back.is_empty());
        assert_eq!(back.capacity(), room);
        // Nothing is kept any more: a new map, sized as asked.
        let fresh = take(4);
        assert!(fresh.capacity() >= 4 && fresh.capacity() < room);
    }

    #[test]
    fn small_and_large_maps_are_not_kept_and_the_count_is_bounded() {
        give(HeaderMap::new());
        give(HeaderMap::with_capacity(4));
        give(HeaderMap::with_capacity(MAX_CAPACITY * 2));
        assert_eq!(take(0).capacity(), 0);
        for _ in 0..KEEP * 2 {
            give(HeaderMap::with_capacity(MIN_CAPACITY));
        }
        let kept = SPARE.with(|s| s.borrow().len());
        assert_eq!(kept, KEEP);
    }

    #[test]
    fn a_map_with_more_values_than_names_is_not_kept() {
        let mut map = HeaderMap::with_capacity(MIN_CAPACITY);
        for _ in 0..MIN_CAPACITY * 4 {
            map.append(http::header::COOKIE, HeaderValue::from_static("a=b"));
        }
        give(map);
        assert_eq!(take(0).capacity(), 0);
    }
}
