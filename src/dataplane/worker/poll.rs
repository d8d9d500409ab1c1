//! [`PollWindow`]: how long an idle worker busy-polls before it sleeps.

use std::time::Duration;

/// The smallest non-zero busy-poll window.
const POLL_START: Duration = Duration::from_micros(10);

/// How long an idle worker busy-polls before it sleeps: adaptive, the way
/// KVM sizes its halt polling. Sleeping and being woken costs a context
/// switch each way and, on a VM whose CPU went idle, an IPI and a halt
/// exit: tens of microseconds, a request/response transaction's worth.
/// Polling pays only when work comes soon, so the window follows how long
/// the worker's sleeps last: a sleep that polling up to `max` would have
/// caught doubles the window (from `POLL_START`); a longer one halves it
/// (below `POLL_START` it is off). A busy request/response flow keeps
/// the window open, an idle worker's sleeps (100 ms ticks) close it at
/// once, so an idle uipd does not spin. `max` zero: never poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    cur: Duration,
}

impl PollWindow {
    /// A window that grows up to `max` (closed at first).
    pub fn new(max: Duration) -> PollWindow {
        PollWindow {
            max,
            cur: Duration::ZERO,
        }
    }

    /// How long to poll before the next sleep.
    pub fn window(&self) -> Duration {
        self.cur
    }

    /// The worker slept `slept` (polling, if any, found nothing first).
    pub fn slept(&mut self, slept: Duration) {
        if self.max.is_zero() {
            return;
        }
        if slept <= self.max {
            self.cur = (self.cur * 2).max(POLL_START).min(self.max);
        } else {
            self.cur /= 2;
            if self.cur < POLL_START {
                self.cur = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn poll_window_opens_on_short_sleeps_up_to_its_max() {
        let mut p = PollWindow::new(50 * US);
        assert_eq!(p.window(), Duration::ZERO, "closed at first");
        let mut seen = Vec::new();
        for _ in 0..5 {
            p.slept(30 * US);
            seen.push(p.window());
        }
        assert_eq!(seen, [10 * US, 20 * US, 40 * US, 50 * US, 50 * US]);
        // A sleep of exactly the maximum would have been caught.
        p.slept(50 * US);
        assert_eq!(p.window(), 50 * US);
    }

    #[test]
    fn poll_window_halves_on_long_sleeps_and_closes_when_idle() {
        let mut p = PollWindow::new(80 * US);
        for _ in 0..4 {
            p.slept(5 * US);
        }
        assert_eq!(p.window(), 80 * US);
        p.slept(81 * US);
        assert_eq!(p.window(), 40 * US);
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), 20 * US);
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), 10 * US);
        // Below the smallest window it is off: an idle worker sleeps at once.
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), Duration::ZERO);
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn poll_window_with_max_zero_never_polls() {
        let mut p = PollWindow::new(Duration::ZERO);
        for _ in 0..10 {
            p.slept(US);
        }
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn poll_window_below_the_smallest_step_is_its_max() {
        let mut p = PollWindow::new(3 * US);
        p.slept(US);
        assert_eq!(p.window(), 3 * US);
    }
}
