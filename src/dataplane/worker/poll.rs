//! [`PollWindow`]: how long an idle worker busy-polls before it sleeps,
//! chosen so that the polling pays for itself in CPU time.

use std::time::Duration;

/// Waits remembered to choose the window.
const HISTORY: usize = 32;

/// Waits between two choices of the window, once the history is full.
const RECHOOSE: u32 = 8;

/// What a worker's sleep and wake-up cost in CPU time, all told: the
/// `io_uring_enter` that sleeps, the two context switches, the task work
/// run on waking, and the cold caches after. Measured, not modelled: in
/// interleaved runs of netperf TCP_RR (MTU 1500, 3 x 3 s) a worker that
/// spun for each reply (20-30 us each, two per transaction) used 65-77 us
/// of CPU per transaction, one that slept for them 72-84 us. So a sleep
/// costs at least the 25 us the spin replaced; an eventfd ping-pong
/// between two threads measures only 6-7 us (the sleeper's system calls
/// alone), which would stop the polling that saves CPU here.
pub const SLEEP_COST: Duration = Duration::from_micros(30);

/// How long an idle worker busy-polls before it sleeps. Sleeping and being
/// woken costs CPU time (a system call, a context switch each way, a cold
/// cache): `sleep_cost` ([`SLEEP_COST`] in the workers). Polling costs the
/// time spun. The window is the longest one that, over
/// the last [`HISTORY`] waits (how long each idle spell lasted until work
/// came, however it ended), would have cost no more CPU than it saved:
///
/// ```text
///   waits sorted  d1 <= d2 <= ... <= dn;   window W = dk, the largest k with
///   k * sleep_cost  >=  (d1 + ... + dk)  +  (n - k) * dk
///   sleeps avoided      spun on the hits     spun on the misses
/// ```
///
/// and at most `max`. So a worker whose work comes back within a few
/// microseconds (a bulk stream, a guest kicking its queue, a
/// request/response flow on loopback) spins and saves both CPU and the
/// wake-up latency; one whose work comes later than a sleep costs (a
/// remote peer, an idle worker's 100 ms ticks) sleeps at once. Polling
/// then only lowers the CPU a worker uses per unit of work, never raises
/// it (as far as `sleep_cost` is right). `max` zero: never poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    sleep_cost: Duration,
    /// The last waits, in nanoseconds, oldest overwritten first.
    waits: [u64; HISTORY],
    len: usize,
    next: usize,
    /// Waits since the window was last chosen.
    since_choice: u32,
    cur: Duration,
}

impl PollWindow {
    /// A window of at most `max` (closed until waits show it pays) for a
    /// sleep that costs `sleep_cost` of CPU.
    pub fn new(max: Duration, sleep_cost: Duration) -> PollWindow {
        PollWindow {
            max,
            sleep_cost,
            waits: [0; HISTORY],
            len: 0,
            next: 0,
            since_choice: 0,
            cur: Duration::ZERO,
        }
    }

    /// How long to poll before the next sleep.
    pub fn window(&self) -> Duration {
        self.cur
    }

    /// An idle spell lasted `waited` until work came (caught by polling or
    /// after a sleep): remember it and choose the next window.
    pub fn waited(&mut self, waited: Duration) {
        if self.max.is_zero() {
            return;
        }
        self.waits[self.next] = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.next = (self.next + 1) % HISTORY;
        self.len = (self.len + 1).min(HISTORY);
        // Choosing sorts the history: every wait while it fills, then every
        // `RECHOOSE`th (the window lags a few waits behind, and a worker
        // that waits four times per transaction spends no time sorting).
        self.since_choice += 1;
        if self.len < HISTORY || self.since_choice >= RECHOOSE {
            self.since_choice = 0;
            self.cur = self.choose();
        }
    }

    /// The longest window that paid for itself over the remembered waits.
    fn choose(&self) -> Duration {
        let mut d = self.waits;
        let d = &mut d[..self.len];
        d.sort_unstable();
        let n = d.len() as u128;
        let cost = self.sleep_cost.as_nanos();
        let max = self.max.as_nanos();
        let mut best = 0;
        let mut spun_on_hits: u128 = 0;
        for (i, &w) in d.iter().enumerate() {
            let w = u128::from(w);
            if w > max {
                break;
            }
            spun_on_hits += w;
            let k = i as u128 + 1;
            if k * cost >= spun_on_hits + (n - k) * w {
                best = w;
            }
        }
        Duration::from_nanos(u64::try_from(best).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn window_after(max: Duration, cost: Duration, waits: &[Duration]) -> Duration {
        let mut p = PollWindow::new(max, cost);
        for &w in waits {
            p.waited(w);
        }
        p.window()
    }

    #[test]
    fn poll_window_is_closed_at_first() {
        assert_eq!(PollWindow::new(50 * US, 5 * US).window(), Duration::ZERO);
    }

    #[test]
    fn poll_window_opens_when_work_comes_sooner_than_a_sleep_costs() {
        // Every wait 2 us, a sleep costs 5: spinning 2 us saves 5.
        assert_eq!(window_after(50 * US, 5 * US, &[2 * US; 8]), 2 * US);
        // The window is the longest wait that still pays: 3 us hits at
        // 1, 2, 3 us cost 6 us spun and save 15.
        assert_eq!(window_after(50 * US, 5 * US, &[US, 2 * US, 3 * US]), 3 * US);
    }

    #[test]
    fn poll_window_stays_closed_when_replies_take_longer_than_a_sleep_costs() {
        // A request/response flow whose replies take 25 us: spinning for
        // them would cost 25 us to save 5.
        assert_eq!(
            window_after(50 * US, 5 * US, &[25 * US; HISTORY]),
            Duration::ZERO
        );
    }

    #[test]
    fn poll_window_counts_the_misses_it_would_spin_through() {
        // Half the waits 1 us, half 100 ms: a 1 us window catches 16 (saves
        // 80 us) and spins 1 us through each of 16 misses plus 16 us on
        // hits: 32 us. It pays.
        let mut waits = vec![US; 16];
        waits.extend([Duration::from_millis(100); 16]);
        assert_eq!(window_after(50 * US, 5 * US, &waits), US);
        // A 4 us wait among 100 ms ones: 1 hit saves 5, 31 misses cost 124.
        let mut waits = vec![Duration::from_millis(100); 31];
        waits.push(4 * US);
        assert_eq!(window_after(50 * US, 5 * US, &waits), Duration::ZERO);
    }

    #[test]
    fn poll_window_closes_when_the_worker_goes_idle() {
        let mut p = PollWindow::new(50 * US, 5 * US);
        for _ in 0..HISTORY {
            p.waited(2 * US);
        }
        assert_eq!(p.window(), 2 * US);
        let mut ticks = 0;
        while !p.window().is_zero() {
            p.waited(Duration::from_millis(100));
            ticks += 1;
            assert!(ticks <= HISTORY, "never closed");
        }
        // 2 us hits save 3 us net each; a 2 us miss costs 2: it closes once
        // misses outnumber about 3 in 5 of the remembered waits.
        assert!(
            (15..=25).contains(&ticks),
            "closed after {ticks} idle ticks"
        );
    }

    #[test]
    fn poll_window_never_exceeds_its_max() {
        // Waits of 30 us with a sleep that costs 100: worth spinning, but
        // not beyond the 20 us cap, and 30 us waits are not caught by 20.
        assert_eq!(
            window_after(20 * US, 100 * US, &[30 * US; 8]),
            Duration::ZERO
        );
        let mut waits = vec![10 * US; 4];
        waits.extend([30 * US; 4]);
        assert_eq!(window_after(20 * US, 100 * US, &waits), 10 * US);
    }

    #[test]
    fn poll_window_with_max_zero_never_polls() {
        assert_eq!(
            window_after(Duration::ZERO, 5 * US, &[US; 10]),
            Duration::ZERO
        );
    }
}
