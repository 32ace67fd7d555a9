//! Jittered exponential backoff, shared by every client of the bus: the agent's MQTT link
//! (reconnects) and reconciler (retries after a failed pass), the controller's link. Jitter spreads a fleet's retries so that a gateway restart
//! does not turn into a synchronized reconnect storm.

use std::time::Duration;

use rand::Rng;

/// Doubles from `base` up to `max`, each delay randomized by ±30 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay (grows on every call until `max`).
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let nominal = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        nominal.mul_f64(rand::rng().random_range(0.7..=1.3))
    }

    /// Back to `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        let within = |d: Duration, nominal_ms: u64| {
            let ms = d.as_millis() as u64;
            ms >= nominal_ms * 7 / 10 && ms <= nominal_ms * 13 / 10 + 1
        };
        assert!(within(delays[0], 200), "{delays:?}");
        assert!(within(delays[1], 400), "{delays:?}");
        assert!(within(delays[3], 1600), "{delays:?}");
        assert!(within(delays[11], 10_000), "{delays:?}");
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert!(within(b.next_delay(), 200));
    }
}
