//! Per-key rate limiting: each API key may send [`RateLimit::per_second`] requests a second
//! on average, in bursts of up to [`RateLimit::burst`] (a GCRA token bucket from `governor`).
//! Beyond that a request gets 429 `rate_limited` with `Retry-After` (whole seconds), before
//! its handler runs.

use std::num::NonZeroU32;

use arca_events::ApiKeyId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::problem::ApiError;

/// How many requests one API key may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<ApiKeyId>,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self { limiter: RateLimiter::keyed(quota), clock: DefaultClock::default() }
    }

    /// Counts one request of `key`; 429 when it is over its rate.
    pub fn check(&self, key: ApiKeyId) -> Result<(), ApiError> {
        // Forget idle keys now and then, so the table does not grow with every key ever seen.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this API key sent too many requests; try again in {seconds} s"),
            )
            .retry_after(seconds.max(1))
        })
    }
}
