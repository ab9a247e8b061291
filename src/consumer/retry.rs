//! Exponential backoff with jitter, bounded by a maximum delay.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, current: initial }
    }

    /// The next delay: doubling from the initial delay up to the maximum,
    /// with ±20% jitter; a server's `Retry-After` wins when longer.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        let d = base.mul_f64(jitter).min(self.max).max(self.initial.min(self.max) / 2);
        match retry_after {
            Some(ra) if ra > d => ra.min(self.max.max(ra).min(Duration::from_secs(300))),
            _ => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let first = b.next(None);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120), "{first:?}");
        for _ in 0..10 {
            b.next(None);
        }
        let late = b.next(None);
        assert!(late <= Duration::from_millis(1000) && late >= Duration::from_millis(800), "{late:?}");
        assert_eq!(b.next(Some(Duration::from_secs(3))), Duration::from_secs(3));
    }
}
