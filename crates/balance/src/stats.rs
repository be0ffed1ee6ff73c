//! Per-backend live state in atomics, shared by the data plane (records outcomes) and the control
//! plane (health). It outlives routing tables: a reload carries it over to the new table.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Nanoseconds since the first call in this process: a cheap monotonic clock for atomics.
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// `now_nanos()` of an instant already read, so a request reads the clock once and reuses it.
pub fn nanos_at(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Starts at 1 so that 0 can mean "never".
    at.saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// Decay time constant of the latency EWMA: old samples weigh e^-1 after this long.
const EWMA_DECAY_NANOS: f64 = 2e9;

/// Active health as last decided by the prober (with rise/fall hysteresis).
const FLAG_DOWN: u8 = 1;
/// Drained by an operator: no new requests; in-flight ones finish.
const FLAG_DRAINED: u8 = 2;

/// Live state of one backend of one service's region.
#[derive(Debug)]
pub struct BackendState {
    flags: AtomicU8,
    in_flight: AtomicU32,
    /// Peak-EWMA of time to response head, f64 nanoseconds as bits; 0 = no sample yet.
    ewma_bits: AtomicU64,
    ewma_stamp: AtomicU64,
    /// Probe round-trip EWMA, f64 nanoseconds as bits.
    probe_rtt_bits: AtomicU64,
    consecutive_failures: AtomicU32,
    /// `now_nanos()` until which passive health keeps this backend out; 0 = not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// When the latest ejection's cool-down ended (or ends), for [`ejection_level`]; 0: never.
    ejection_ended: AtomicU64,
    /// Counts toward rise/fall; owned by the single prober task of this backend.
    probe_streak: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Set once the prober has a result, so `/backends` can tell "not probed yet".
    probed: AtomicBool,
}

impl Default for BackendState {
    fn default() -> Self {
        BackendState {
            flags: AtomicU8::new(0),
            in_flight: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(0),
            ewma_stamp: AtomicU64::new(0),
            probe_rtt_bits: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejection_ended: AtomicU64::new(0),
            probe_streak: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            probed: AtomicBool::new(false),
        }
    }
}

/// Why a backend does not take new requests, if it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    Down,
    Drained,
    Ejected,
}

impl Unavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Down => "down",
            Unavailable::Drained => "drained",
            Unavailable::Ejected => "ejected",
        }
    }
}

impl BackendState {
    /// True when new requests may go here: up, not drained, not ejected.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.flags.load(Relaxed) == 0 && self.not_ejected()
    }

    #[inline]
    fn not_ejected(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until == 0 || until <= now_nanos()
    }

    pub fn unavailable_reason(&self) -> Option<Unavailable> {
        let flags = self.flags.load(Relaxed);
        if flags & FLAG_DRAINED != 0 {
            Some(Unavailable::Drained)
        } else if flags & FLAG_DOWN != 0 {
            Some(Unavailable::Down)
        } else if !self.not_ejected() {
            Some(Unavailable::Ejected)
        } else {
            None
        }
    }

    pub fn is_up(&self) -> bool {
        self.flags.load(Relaxed) & FLAG_DOWN == 0
    }

    pub fn is_drained(&self) -> bool {
        self.flags.load(Relaxed) & FLAG_DRAINED != 0
    }

    pub fn is_ejected(&self) -> bool {
        !self.not_ejected()
    }

    /// Marks the backend up or down; returns true if that changed it.
    pub fn set_up(&self, up: bool) -> bool {
        let before = if up {
            self.flags.fetch_and(!FLAG_DOWN, Relaxed)
        } else {
            self.flags.fetch_or(FLAG_DOWN, Relaxed)
        };
        self.probed.store(true, Relaxed);
        (before & FLAG_DOWN == 0) != up
    }

    pub fn was_probed(&self) -> bool {
        self.probed.load(Relaxed)
    }

    /// Drains (no new requests) or undrains; returns true if that changed it.
    pub fn set_drained(&self, drained: bool) -> bool {
        let before = if drained {
            self.flags.fetch_or(FLAG_DRAINED, Relaxed)
        } else {
            self.flags.fetch_and(!FLAG_DRAINED, Relaxed)
        };
        (before & FLAG_DRAINED != 0) != drained
    }

    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Peak-EWMA latency to response head; `None` before the first sample.
    pub fn latency(&self) -> Option<Duration> {
        let v = f64::from_bits(self.ewma_bits.load(Relaxed));
        (v > 0.0).then(|| Duration::from_nanos(v as u64))
    }

    /// The latency estimate used for picking at `now` (`now_nanos()`), in nanoseconds:
    /// decayed toward zero for the time since its last sample, as tower's and Finagle's
    /// peak-EWMA read it. Undecayed, one slow answer (20 s) priced a backend out for good: the
    /// other always won the two choices, so it never got the request whose sample would bring
    /// its estimate down. Decayed, it is tried again once the estimate has faded (20 s to
    /// under 5 ms in about 17 s), and a backend still slow takes its peak back at once.
    /// Backends without samples get a small optimistic default so they are tried.
    #[inline]
    pub fn latency_cost_at(&self, now: u64) -> f64 {
        let v = f64::from_bits(self.ewma_bits.load(Relaxed));
        if v <= 0.0 {
            return 1e6;
        }
        match now.saturating_sub(self.ewma_stamp.load(Relaxed)) {
            0 => v,
            elapsed => v * (-(elapsed as f64) / EWMA_DECAY_NANOS).exp(),
        }
    }

    /// `now_nanos()` of the last latency sample; 0 before the first.
    #[inline]
    pub fn latency_stamp(&self) -> u64 {
        self.ewma_stamp.load(Relaxed)
    }

    /// How long ago the last latency sample was recorded.
    pub fn latency_age(&self) -> Option<Duration> {
        let stamp = self.ewma_stamp.load(Relaxed);
        (stamp != 0).then(|| Duration::from_nanos(now_nanos().saturating_sub(stamp)))
    }

    pub fn probe_rtt(&self) -> Option<Duration> {
        let v = f64::from_bits(self.probe_rtt_bits.load(Relaxed));
        (v > 0.0).then(|| Duration::from_nanos(v as u64))
    }

    /// Records a sample of time to response head. Peak-sensitive: a slower sample replaces the
    /// estimate at once, faster ones pull it down gradually.
    pub fn record_latency(&self, sample: Duration) {
        self.record_latency_at(sample, now_nanos());
    }

    /// `record_latency` with the current `now_nanos()` already known.
    pub fn record_latency_at(&self, sample: Duration, now: u64) {
        let rtt = sample.as_nanos() as f64;
        let last = self.ewma_stamp.swap(now, Relaxed);
        let elapsed = now.saturating_sub(last) as f64;
        let w = (-elapsed / EWMA_DECAY_NANOS).exp();
        let _ = self.ewma_bits.fetch_update(Relaxed, Relaxed, |bits| {
            let cur = f64::from_bits(bits);
            let next = if cur <= 0.0 || rtt > cur {
                rtt
            } else {
                cur * w + rtt * (1.0 - w)
            };
            Some(next.to_bits())
        });
    }

    /// Records a probe round trip (plain EWMA, alpha 0.3).
    pub fn record_probe_rtt(&self, sample: Duration) {
        let rtt = sample.as_nanos() as f64;
        let _ = self.probe_rtt_bits.fetch_update(Relaxed, Relaxed, |bits| {
            let cur = f64::from_bits(bits);
            let next = if cur <= 0.0 {
                rtt
            } else {
                cur * 0.7 + rtt * 0.3
            };
            Some(next.to_bits())
        });
    }

    /// Records the outcome of a real request for passive health. Returns `Some(cool_down)` when
    /// this failure ejected the backend. `room`: whether the region has room for one more
    /// ejection for failed answers (`max_ejection_percent`), asked only when one is due.
    pub fn record_outcome(
        &self,
        outcome: Outcome,
        policy: &streamgate_config::Outlier,
        room: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        if outcome == Outcome::Success {
            self.consecutive_failures.store(0, Relaxed);
            // A success after an ejection expired ends that ejection; the history of ejections
            // fades with time back (`ejection_level`).
            if self.ejected_until.load(Relaxed) != 0 && self.not_ejected() {
                self.ejected_until.store(0, Relaxed);
            }
            return None;
        }
        self.failures.fetch_add(1, Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let threshold = match outcome {
            Outcome::ConnectFailure => match (
                policy.consecutive_connect_failures,
                policy.consecutive_failures,
            ) {
                (Some(c), Some(f)) => c.min(f),
                (c, f) => c.or(f)?,
            },
            _ => policy.consecutive_failures?,
        };
        if n < threshold.get() || !self.not_ejected() {
            return None;
        }
        if outcome != Outcome::ConnectFailure && !room() {
            return None;
        }
        self.consecutive_failures.store(0, Relaxed);
        let now = now_nanos();
        let times = ejection_level(
            self.ejections.load(Relaxed),
            self.ejection_ended.load(Relaxed),
            now,
            policy.base_ejection,
        )
        .min(16);
        self.ejections.store(times + 1, Relaxed);
        let cool_down = policy
            .base_ejection
            .saturating_mul(1u32 << times.min(10))
            .min(policy.max_ejection);
        let until = now.saturating_add(u64::try_from(cool_down.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Relaxed);
        self.ejection_ended.store(until, Relaxed);
        Some(cool_down)
    }

    /// Forgets passive-health history (after an active probe saw the backend recover).
    pub fn clear_ejection(&self) {
        self.ejected_until.store(0, Relaxed);
        self.ejection_ended.store(0, Relaxed);
        self.ejections.store(0, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
    }

    /// Consecutive probe results of one kind: positive = successes, stored by the prober.
    pub fn probe_streak(&self) -> &AtomicU32 {
        &self.probe_streak
    }
}

/// How many ejections the next cool-down doubles for: the `prior` count, less one for each
/// `base` the backend has been back since its last cool-down `ended` (`now_nanos()` times).
/// Without it the count only ever grew, for backends without active health checks (whose
/// recovery clears it): after the fifth ejection in the process's life, every blip took a
/// backend out for the whole `max_ejection`. Envoy fades its ejection multiplier the same way,
/// one step per interval without an ejection.
pub fn ejection_level(prior: u32, ended: u64, now: u64, base: Duration) -> u32 {
    if ended == 0 || now <= ended {
        return prior;
    }
    let steps = (now - ended) / u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1);
    prior.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
}

/// How a request to a backend went, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The backend answered 5xx, broke the connection or sent garbage.
    Failure,
    /// The backend could not be reached at all.
    ConnectFailure,
}

/// Counts one request against a backend for as long as it lives (until the response body ends).
#[derive(Debug)]
pub struct Lease {
    state: Arc<BackendState>,
    started: Instant,
}

impl Lease {
    pub fn new(state: Arc<BackendState>) -> Lease {
        Lease::starting_at(state, Instant::now())
    }

    /// A lease whose latency is measured from `started` (a time the caller already read).
    pub fn starting_at(state: Arc<BackendState>, started: Instant) -> Lease {
        state.in_flight.fetch_add(1, Relaxed);
        state.requests.fetch_add(1, Relaxed);
        Lease { state, started }
    }

    pub fn state(&self) -> &BackendState {
        &self.state
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records the time from lease to response head, the head having arrived at `at`.
    pub fn record_head_at(&self, at: Instant) -> Duration {
        let took = at.saturating_duration_since(self.started);
        self.state.record_latency_at(took, nanos_at(at));
        took
    }

    /// [`Lease::record_head_at`] counted from `sent` (`now_nanos()` when the last of the
    /// request went, 0 if it has not or is unknown) when that is later than the lease's
    /// start: a client's upload that took two minutes is not two minutes of backend latency.
    pub fn record_head_after(&self, sent: u64, at: Instant) {
        let at_nanos = nanos_at(at);
        // An answer before the upload's end (an early 413, say) counts from the lease's start.
        let sent = if sent <= at_nanos { sent } else { 0 };
        let from = nanos_at(self.started).max(sent);
        let took = Duration::from_nanos(at_nanos.saturating_sub(from));
        self.state.record_latency_at(took, at_nanos);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_counts_in_flight_until_dropped() {
        let s = Arc::new(BackendState::default());
        let a = Lease::new(s.clone());
        let b = Lease::new(s.clone());
        assert_eq!(s.in_flight(), 2);
        drop(a);
        assert_eq!(s.in_flight(), 1);
        drop(b);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.requests.load(Relaxed), 2);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = BackendState::default();
        assert_eq!(s.latency(), None);
        s.record_latency(Duration::from_millis(10));
        assert_eq!(s.latency(), Some(Duration::from_millis(10)));
        s.record_latency(Duration::from_millis(100));
        assert_eq!(
            s.latency(),
            Some(Duration::from_millis(100)),
            "a peak is taken at once"
        );
        s.record_latency(Duration::from_millis(1));
        let after = s.latency().unwrap();
        assert!(after <= Duration::from_millis(100) && after > Duration::from_millis(1));
    }

    #[test]
    fn a_slow_upload_is_not_backend_latency() {
        let s = Arc::new(BackendState::default());
        let t0 = Instant::now();
        let lease = Lease::starting_at(s.clone(), t0);
        let upload_done = t0 + Duration::from_secs(120);
        let head = upload_done + Duration::from_millis(5);
        lease.record_head_after(nanos_at(upload_done), head);
        assert_eq!(s.latency(), Some(Duration::from_millis(5)));
        // An answer before the upload's end counts from the start.
        let s = Arc::new(BackendState::default());
        let lease = Lease::starting_at(s.clone(), t0);
        let early = t0 + Duration::from_millis(30);
        lease.record_head_after(nanos_at(upload_done), early);
        assert_eq!(s.latency(), Some(Duration::from_millis(30)));
        // Nothing uploaded: from the start.
        let s = Arc::new(BackendState::default());
        let lease = Lease::starting_at(s.clone(), t0);
        lease.record_head_after(0, early);
        assert_eq!(s.latency(), Some(Duration::from_millis(30)));
    }

    #[test]
    fn the_cost_of_an_old_sample_fades_so_the_backend_is_tried_again() {
        let s = BackendState::default();
        assert_eq!(s.latency_cost_at(now_nanos()), 1e6, "untried: 1 ms");
        let t0 = now_nanos();
        s.record_latency_at(Duration::from_secs(20), t0);
        let secs = |n: u64| t0 + n * 1_000_000_000;
        for (at, most, least) in [
            (t0, 20.0e9, 19.9e9),
            (secs(2), 7.4e9, 7.3e9),
            (secs(17), 5.0e6, 3.0e6),
        ] {
            let c = s.latency_cost_at(at);
            assert!(c <= most && c >= least, "{c} at {}", at - t0);
        }
        // A sample again: the peak is back at once.
        s.record_latency_at(Duration::from_secs(20), secs(17));
        assert!(s.latency_cost_at(secs(17)) >= 19.9e9);
    }

    #[test]
    fn flags_and_reasons() {
        let s = BackendState::default();
        assert!(s.is_available());
        assert!(s.set_drained(true));
        assert!(!s.set_drained(true));
        assert_eq!(s.unavailable_reason(), Some(Unavailable::Drained));
        s.set_drained(false);
        assert!(s.set_up(false));
        assert_eq!(s.unavailable_reason(), Some(Unavailable::Down));
        assert!(!s.is_available());
        s.set_up(true);
        assert!(s.is_available());
    }

    #[test]
    fn consecutive_failures_eject_with_growing_cool_down() {
        let policy = streamgate_config::Outlier {
            consecutive_failures: std::num::NonZeroU32::new(3),
            consecutive_connect_failures: std::num::NonZeroU32::new(1),
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
            max_ejection_percent: 50,
        };
        let s = BackendState::default();
        assert_eq!(s.record_outcome(Outcome::Failure, &policy, || true), None);
        assert_eq!(
            s.record_outcome(Outcome::Success, &policy, || true),
            None,
            "a success resets the streak"
        );
        assert_eq!(s.record_outcome(Outcome::Failure, &policy, || true), None);
        assert_eq!(s.record_outcome(Outcome::Failure, &policy, || true), None);
        assert_eq!(
            s.record_outcome(Outcome::Failure, &policy, || true),
            Some(Duration::from_secs(1))
        );
        assert!(!s.is_available());
        assert_eq!(s.unavailable_reason(), Some(Unavailable::Ejected));
        // Expire it by hand and fail again: the cool-down doubles, capped by max_ejection.
        s.ejected_until.store(1, Relaxed);
        for _ in 0..2 {
            s.record_outcome(Outcome::Failure, &policy, || true);
        }
        assert_eq!(
            s.record_outcome(Outcome::Failure, &policy, || true),
            Some(Duration::from_secs(2))
        );
        s.ejected_until.store(1, Relaxed);
        for _ in 0..2 {
            s.record_outcome(Outcome::Failure, &policy, || true);
        }
        assert_eq!(
            s.record_outcome(Outcome::Failure, &policy, || true),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn ejections_fade_with_time_back() {
        let s = Duration::from_secs;
        let at = |secs: u64| secs * 1_000_000_000;
        // (prior ejections, the last cool-down ended at, now, base) -> the level counted from
        for (prior, ended, now, base, level) in [
            (3, 0, at(100), s(10), 3),                // never ejected: nothing to fade
            (3, at(100), at(50), s(10), 3),           // still cooling down
            (3, at(100), at(109), s(10), 3),          // back for less than one base
            (3, at(100), at(110), s(10), 2),          // one base back: one step
            (6, at(100), at(135), s(10), 3),          // three and a half: three steps
            (6, at(100), at(100_000), s(10), 0),      // long healthy: from the start
            (2, at(100), at(200), Duration::ZERO, 0), // no base: no history
        ] {
            assert_eq!(
                ejection_level(prior, ended, now, base),
                level,
                "{prior} {ended} {now}"
            );
        }
    }

    #[test]
    fn a_region_without_room_keeps_a_backend_whose_answers_failed_but_not_one_refusing() {
        let policy = streamgate_config::Outlier {
            consecutive_failures: std::num::NonZeroU32::new(1),
            ..Default::default()
        };
        let s = BackendState::default();
        assert_eq!(s.record_outcome(Outcome::Failure, &policy, || false), None);
        assert!(s.is_available(), "no room: not ejected for a 5xx");
        assert!(
            s.record_outcome(Outcome::Failure, &policy, || true)
                .is_some()
        );
        let t = BackendState::default();
        assert!(
            t.record_outcome(Outcome::ConnectFailure, &policy, || false)
                .is_some(),
            "a refused connection ejects whatever the room"
        );
    }

    #[test]
    fn a_backend_long_healthy_is_ejected_for_the_first_cool_down_again() {
        let policy = streamgate_config::Outlier {
            consecutive_failures: std::num::NonZeroU32::new(1),
            consecutive_connect_failures: std::num::NonZeroU32::new(1),
            base_ejection: Duration::from_millis(1),
            max_ejection: Duration::from_millis(30),
            max_ejection_percent: 50,
        };
        let s = BackendState::default();
        // Each cool-down expired by hand at once, yet ended an hour from now: no time back in
        // between however long the thread is preempted (with `now_nanos()` here, 1 ms of it
        // was one base back, and the level went down a step).
        let no_time_back = || now_nanos() + 3_600_000_000_000;
        for _ in 0..6 {
            s.ejected_until.store(1, Relaxed);
            s.ejection_ended.store(no_time_back(), Relaxed);
            s.record_outcome(Outcome::Failure, &policy, || true);
        }
        assert_eq!(s.ejections.load(Relaxed), 6);
        s.ejected_until.store(1, Relaxed);
        s.ejection_ended.store(no_time_back(), Relaxed);
        assert_eq!(
            s.record_outcome(Outcome::Failure, &policy, || true),
            Some(Duration::from_millis(30)),
            "straight after: max_ejection"
        );
        // Healthy for twenty bases since the last cool-down ended (at least: a longer sleep
        // only fades the level further, and it is already at its floor).
        s.ejected_until.store(1, Relaxed);
        s.ejection_ended.store(now_nanos(), Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            s.record_outcome(Outcome::Success, &policy, || true)
                .is_none()
        );
        assert_eq!(
            s.record_outcome(Outcome::Failure, &policy, || true),
            Some(Duration::from_millis(1)),
            "the first cool-down, not max_ejection"
        );
    }

    #[test]
    fn a_refused_connection_ejects_at_once_by_default() {
        let policy = streamgate_config::Outlier::default();
        let s = BackendState::default();
        assert!(
            s.record_outcome(Outcome::ConnectFailure, &policy, || false)
                .is_some()
        );
        assert!(!s.is_available());
        let off = streamgate_config::Outlier {
            consecutive_failures: None,
            consecutive_connect_failures: None,
            ..policy
        };
        let t = BackendState::default();
        assert_eq!(
            t.record_outcome(Outcome::ConnectFailure, &off, || false),
            None
        );
    }
}
