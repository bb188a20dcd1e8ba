//! Retry delays and jitter: exponential backoff with random jitter, and the
//! small random source behind both (no dependency; not for cryptography).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static STATE: AtomicU64 = AtomicU64::new(0);

/// A pseudo-random number in `[0, 1)` (splitmix64 over a shared counter,
/// seeded from the clock).
pub(crate) fn random_fraction() -> f64 {
    if STATE.load(Ordering::Relaxed) == 0 {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let _ = STATE.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The delay before the retry that follows failed attempt `attempt` (from
/// 1): `base · 2^(attempt-1)` capped at `max`, minus up to 25% jitter.
pub(crate) fn retry_delay(base: Duration, max: Duration, attempt: i32) -> Duration {
    let exponent = attempt.saturating_sub(1).clamp(0, 62) as u32;
    let full = base
        .checked_mul(1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    full.mul_f64(1.0 - 0.25 * random_fraction())
}

/// `interval` scaled by a random factor in `[0.8, 1.2)`.
pub(crate) fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * random_fraction())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_stay_in_range() {
        for _ in 0..10_000 {
            let x = random_fraction();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..=3 {
            let full = base * 2u32.pow(attempt as u32 - 1);
            let delay = retry_delay(base, max, attempt);
            assert!(
                delay <= full && delay >= full.mul_f64(0.75),
                "{attempt}: {delay:?}"
            );
        }
        assert!(retry_delay(base, max, 40) <= max);
        assert!(retry_delay(base, max, i32::MAX) >= max.mul_f64(0.75));
    }

    #[test]
    fn poll_jitter_spreads_around_the_interval() {
        let interval = Duration::from_secs(1);
        for _ in 0..1000 {
            let d = jittered(interval);
            assert!(d >= Duration::from_millis(800) && d < Duration::from_millis(1200));
        }
    }
}
