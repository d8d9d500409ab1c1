//! Rate-limited logging for lines a guest or a vhost-user front-end can
//! trigger.
//!
//! # Theory of operation
//!
//! A guest that breaks a queue, resets the device and breaks it again, or
//! a front-end that connects, sends a bad message and reconnects, chooses
//! how often such a line is written; unlimited, that is a way to fill the
//! host's disk and burn its CPU. [`log_limited!`](crate::log_limited) gives
//! each call site its own [`RateLimit`] (a `static` inside the macro's
//! expansion): at most `burst` lines per [`INTERVAL`], the rest counted.
//! The first line let through in a later window is preceded by one line
//! saying how many were suppressed.
//!
//! ```text
//!  window 1 (10 s): line line line line line | x x x x (suppressed += 4)
//!  window 2:        "4 similar lines suppressed" line ...
//! ```
//!
//! Limits: the count of a flood that stops for good is never reported
//! (nothing calls the site again), as with Linux's `printk_ratelimit`.
//! The state is a small mutex per call site, taken only when the log level
//! is enabled; these are error paths, not the data path.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use log as __log;

/// The window of every limited call site.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Lines per window at a call site unless it asks for another burst.
pub const BURST: u32 = 5;

/// One call site's window.
#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// At most `burst` admissions per `interval`; see the module docs.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    state: Mutex<Window>,
}

impl RateLimit {
    /// A limiter letting `burst` lines through per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> RateLimit {
        RateLimit {
            burst,
            interval,
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` with the number
    /// of lines suppressed since the last one written (report them first),
    /// `None` to stay quiet (counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.interval);
        if expired {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < self.burst {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            None
        }
    }
}

/// `log!` with a per-call-site rate limit ([`RateLimit`], [`BURST`] lines
/// per [`INTERVAL`] unless `burst N` is given):
///
/// ```
/// uipd::log_limited!(log::Level::Error, "queue {} stopped", 3);
/// uipd::log_limited!(log::Level::Info, burst 50, "front-end connected");
/// ```
#[macro_export]
macro_rules! log_limited {
    ($lvl:expr, burst $burst:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit =
            $crate::ratelimit::RateLimit::new($burst, $crate::ratelimit::INTERVAL);
        let lvl: $crate::ratelimit::__log::Level = $lvl;
        if $crate::ratelimit::__log::log_enabled!(lvl) {
            if let Some(suppressed) = LIMIT.admit(::std::time::Instant::now()) {
                if suppressed > 0 {
                    $crate::ratelimit::__log::log!(
                        lvl,
                        "{} similar lines suppressed (rate limit)",
                        suppressed
                    );
                }
                $crate::ratelimit::__log::log!(lvl, $($arg)+);
            }
        }
    }};
    ($lvl:expr, $($arg:tt)+) => {
        $crate::log_limited!($lvl, burst $crate::ratelimit::BURST, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_counts_and_reports_in_the_next_window() {
        let r = RateLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..10)
            .map(|i| r.admit(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(&admitted[..3], &[Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // Still inside the window.
        assert_eq!(r.admit(t0 + Duration::from_secs(9)), None);
        // Next window: the first line carries the 8 suppressed.
        assert_eq!(r.admit(t0 + Duration::from_secs(10)), Some(8));
        assert_eq!(r.admit(t0 + Duration::from_secs(11)), Some(0));
    }

    #[test]
    fn a_time_going_backwards_does_not_reopen_or_panic() {
        let r = RateLimit::new(1, Duration::from_secs(10));
        let t0 = Instant::now() + Duration::from_secs(100);
        assert_eq!(r.admit(t0), Some(0));
        assert_eq!(r.admit(t0 - Duration::from_secs(50)), None);
    }

    #[test]
    fn the_macro_compiles_with_and_without_a_burst() {
        for i in 0..20 {
            crate::log_limited!(log::Level::Trace, "line {i}");
            crate::log_limited!(log::Level::Trace, burst 2, "line {}", i);
        }
    }
}
