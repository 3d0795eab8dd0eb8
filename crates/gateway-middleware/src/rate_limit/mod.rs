//! Token-bucket rate limiting per client IP address or for all clients, with governor's GCRA.
//! An IPv6 client is keyed by its address's prefix (a /64 by default), because one subscriber
//! holds a whole block and could otherwise take a fresh bucket with each address in it.
//!
//! An idle client may send `burst` requests at once, then `requests_per_second` per second on
//! average, one token every `1 / requests_per_second` seconds. The rate may be a decimal
//! number, such as `0.2` for one request every 5 seconds. A rejected request costs no token.
//! Responses carry the `RateLimit` fields in the structured-field form of
//! draft-ietf-httpapi-ratelimit-headers-11 (the same syntax as revision -10), with one policy
//! named `"gateway"`:
//!
//! - `RateLimit-Policy: "gateway";q=QUOTA;w=WINDOW`, where `WINDOW` is the time to refill an
//!   empty bucket, `burst / requests_per_second` seconds rounded up to at least 1, and `QUOTA`
//!   is `requests_per_second × WINDOW`, the requests a client can keep sending in each window.
//!   The draft takes whole numbers, so with a decimal rate `QUOTA` is rounded down: rate 0.3
//!   and burst 5 give `w=17` and `q=5`. A client that paces itself by the policy gets at most
//!   the configured rate. An idle client can send up to `burst` more in its first window.
//!   Sent on 429 responses.
//! - `RateLimit: "gateway";r=REMAINING;t=SECONDS`, where `t` is the time until the bucket is
//!   full again, rounded up, on every response. On a 429 response `r` is 0, and `Retry-After`
//!   is the time until the next token, rounded up to at least one second.
//!
//! NOTE: on an allowed response `t` is the missing tokens times the token interval, since
//! governor's snapshot gives the tokens left but not the time to the next one. It can read up
//! to one interval long, which a slow decimal rate makes seconds.

mod layer;
#[cfg(test)]
mod tests;

pub use layer::{RateLimit, RateLimitLayer, ResponseFuture};

use crate::json;
use crate::value_store;
use gateway_config::{
    MAX_REQUESTS_PER_SECOND, MIN_REQUESTS_PER_SECOND, RateLimitConfig, RateLimitKey,
};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota};
use http::header::HeaderName;
use http::{HeaderValue, Response, StatusCode, header};
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// The `RateLimit` response header: the remaining quota of the policy.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` response header: the quota and window of the policy.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

type KeyedLimiter<C> =
    governor::RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, StateInformationMiddleware>;
type DirectLimiter<C> =
    governor::RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// The outcome of one [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The limiter is disabled, so the request passes without a check.
    Unlimited,
    /// The request took a token.
    Allowed {
        /// Tokens left in the bucket after this request.
        remaining: u32,
        /// Upper bound on the time until the bucket is full again: one replenish interval per
        /// missing token. The true time is at most one interval shorter.
        full_after: Duration,
    },
    /// The bucket is empty, so the request took no token.
    Rejected {
        /// Time until the next token arrives.
        retry_after: Duration,
    },
}

enum Buckets<C: Clock> {
    Disabled,
    PerClient(KeyedLimiter<C>),
    Global(DirectLimiter<C>),
}

/// A rate limit compiled from a [`RateLimitConfig`]: one bucket per client IP address, sharded
/// so no global lock is taken, or one bucket for all clients.
///
/// `C` is governor's clock. Tests pass `governor::clock::FakeRelativeClock` to
/// [`RateLimiter::with_clock`] and advance it by hand.
pub struct RateLimiter<C: Clock = DefaultClock> {
    buckets: Buckets<C>,
    /// Mask of the first `ipv6_prefix` bits of an IPv6 address, the bits that pick its bucket.
    ipv6_mask: u128,
    burst: u32,
    replenish_interval: Duration,
    policy: HeaderValue,
}

impl RateLimiter {
    /// Creates a limiter on the real clock.
    ///
    /// A `requests_per_second` outside [`MIN_REQUESTS_PER_SECOND`] to
    /// [`MAX_REQUESTS_PER_SECOND`] is moved to the nearer bound, NaN to the minimum, and a
    /// `burst` of 0 is raised to 1, because governor cannot represent them. Config validation
    /// rejects such values before they get here.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// Creates a limiter on `clock`. See [`RateLimiter::new`].
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let rate = supported_rate(config.requests_per_second);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(token_interval(rate))
            .expect("token_interval is at least 1 ns")
            .allow_burst(burst);

        let buckets = match (config.enabled, config.key) {
            (false, _) => Buckets::Disabled,
            (true, RateLimitKey::ClientIp) => Buckets::PerClient(
                governor::RateLimiter::dashmap_with_clock(quota, clock)
                    .with_middleware::<StateInformationMiddleware>(),
            ),
            (true, RateLimitKey::Global) => Buckets::Global(
                governor::RateLimiter::direct_with_clock(quota, clock)
                    .with_middleware::<StateInformationMiddleware>(),
            ),
        };

        let (quota_per_window, window) = policy_quota_and_window(rate, burst.get());
        let policy = format!("\"gateway\";q={quota_per_window};w={window}");

        RateLimiter {
            buckets,
            ipv6_mask: prefix_mask(config.ipv6_prefix),
            burst: burst.get(),
            replenish_interval: quota.replenish_interval(),
            policy: HeaderValue::try_from(policy).expect("quotes, digits and ASCII are valid"),
        }
    }

    /// Returns false when the config had `enabled: false`: every check then returns
    /// [`Decision::Unlimited`] without touching governor.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.buckets, Buckets::Disabled)
    }

    /// Takes a token for `client` if one is left.
    ///
    /// An IPv4-mapped IPv6 address shares the bucket of its IPv4 address, and IPv6 addresses
    /// that share their first `ipv6_prefix` bits share a bucket. With the `global` key, every
    /// client shares one bucket.
    pub fn check(&self, client: IpAddr) -> Decision {
        match &self.buckets {
            Buckets::Disabled => Decision::Unlimited,
            Buckets::PerClient(limiter) => {
                let outcome = limiter.check_key(&self.key_of(client));
                self.decide(outcome, limiter.clock())
            }
            Buckets::Global(limiter) => self.decide(limiter.check(), limiter.clock()),
        }
    }

    /// Returns the key of `client`'s bucket: an IPv4 address whole, an IPv6 address cut to
    /// its prefix.
    ///
    /// An address of the well-known NAT64 prefix `64:ff9b::/96` (RFC 6052) is an IPv4 client
    /// reaching an IPv6-only gateway through a translator, so it is keyed by the IPv4 address
    /// in its last 32 bits. Cut to a prefix, every IPv4 client of the translator would share
    /// one bucket.
    fn key_of(&self, client: IpAddr) -> IpAddr {
        const NAT64_PREFIX: u128 = 0x0064_ff9b_u128 << 96;
        match client.to_canonical() {
            IpAddr::V6(address) if address.to_bits() >> 32 == NAT64_PREFIX >> 32 => {
                IpAddr::V4(Ipv4Addr::from_bits(address.to_bits() as u32))
            }
            IpAddr::V6(address) => {
                IpAddr::V6(Ipv6Addr::from_bits(address.to_bits() & self.ipv6_mask))
            }
            v4 => v4,
        }
    }

    fn decide(&self, outcome: Result<StateSnapshot, NotUntil<C::Instant>>, clock: &C) -> Decision {
        match outcome {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = self.burst.saturating_sub(remaining);
                Decision::Allowed {
                    remaining,
                    full_after: self.replenish_interval * missing,
                }
            }
            Err(not_until) => Decision::Rejected {
                retry_after: not_until.wait_time_from(clock.now()),
            },
        }
    }

    /// Returns the number of client addresses with a bucket in memory: 0 with the `global`
    /// key or when disabled.
    pub fn tracked_keys(&self) -> usize {
        match &self.buckets {
            Buckets::PerClient(limiter) => limiter.len(),
            Buckets::Disabled | Buckets::Global(_) => 0,
        }
    }

    /// Drops the buckets of clients that have been idle long enough for their bucket to be
    /// full again, then releases the freed memory. Such a bucket is the same as a new one, so
    /// no client gains or loses tokens.
    ///
    /// governor keeps a bucket until one replenish interval after it is full, so a client's
    /// bucket goes at the latest `(burst + 1) / requests_per_second` seconds after its last
    /// request.
    pub fn evict_idle(&self) {
        if let Buckets::PerClient(limiter) = &self.buckets {
            let before = limiter.len();
            limiter.retain_recent();
            limiter.shrink_to_fit();
            tracing::debug!(
                before,
                after = limiter.len(),
                "evicted idle rate limit buckets"
            );
        }
    }

    /// Returns the `RateLimit-Policy` field value, `"gateway";q=QUOTA;w=WINDOW`.
    pub fn policy_header(&self) -> &HeaderValue {
        &self.policy
    }

    /// Builds the 429 response for a rejected request: the body
    /// `{"error":"rate limit exceeded","status":429}` with the
    /// `RateLimit-Policy`, `RateLimit` and `Retry-After` headers.
    pub fn rejection<B: From<bytes::Bytes>>(&self, retry_after: Duration) -> Response<B> {
        let seconds = whole_seconds_up(retry_after).max(1);
        // The next token comes after `retry_after`, and the others of an empty bucket follow
        // one interval apart.
        let full_after = retry_after + self.replenish_interval * self.burst.saturating_sub(1);
        let full_seconds = whole_seconds_up(full_after).max(1);

        let mut response =
            json::error_response(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded", None);
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_POLICY, self.policy.clone());
        headers.insert(RATELIMIT, ratelimit_value(0, full_seconds));
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

impl<C> RateLimiter<C>
where
    C: Clock + Send + Sync + 'static,
{
    /// Spawns a task that calls [`RateLimiter::evict_idle`] every `every` (at least 1 ms) until
    /// `shutdown` becomes true or its sender is dropped.
    ///
    /// The task holds only a weak reference, so it also ends once the limiter itself is
    /// dropped, for example after a config reload replaced it.
    pub fn spawn_eviction(
        self: &Arc<Self>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let limiter: Weak<Self> = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(1));

        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + every;
            let mut ticker = tokio::time::interval_at(start, every);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

            loop {
                if *shutdown.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    _ = ticker.tick() => {
                        let Some(limiter) = limiter.upgrade() else {
                            break;
                        };
                        limiter.evict_idle();
                    }
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match self.buckets {
            Buckets::Disabled => "disabled",
            Buckets::PerClient(_) => "client_ip",
            Buckets::Global(_) => "global",
        };
        f.debug_struct("RateLimiter")
            .field("key", &key)
            .field("burst", &self.burst)
            .field("replenish_interval", &self.replenish_interval)
            .finish_non_exhaustive()
    }
}

/// Slots in each thread's cache of `RateLimit` values.
const CACHED_VALUES: usize = 64;

thread_local! {
    /// Recent `RateLimit` values, each in the slot of its remaining count. Under steady traffic
    /// a client's remaining count and refill time repeat, so a response can often reuse a
    /// value instead of formatting and checking a new one.
    static VALUES: RefCell<[Option<(u32, u64, HeaderValue)>; CACHED_VALUES]> =
        const { RefCell::new([const { None }; CACHED_VALUES]) };
}

/// Returns the `RateLimit` field value `"gateway";r=REMAINING;t=SECONDS`, from the thread's
/// cache when the same pair was formatted before.
fn ratelimit_value(remaining: u32, seconds: u64) -> HeaderValue {
    VALUES.with_borrow_mut(|values| {
        let slot = &mut values[remaining as usize % CACHED_VALUES];
        match slot {
            Some((r, t, value)) if *r == remaining && *t == seconds => value.clone(),
            _ => {
                let value = format_ratelimit(remaining, seconds);
                *slot = Some((remaining, seconds, value.clone()));
                value
            }
        }
    })
}

/// Formats a `RateLimit` field value. A cached value has memory of its own, so that it does
/// not hold on to a shared buffer of other values.
fn format_ratelimit(remaining: u32, seconds: u64) -> HeaderValue {
    // Formatted on the stack: the value is at most 45 bytes.
    let mut text = [0u8; 48];
    let mut length = 0;
    let mut push = |piece: &[u8]| {
        text[length..length + piece.len()].copy_from_slice(piece);
        length += piece.len();
    };
    let mut digits = [0u8; 20];
    push(b"\"gateway\";r=");
    push(value_store::decimal(u64::from(remaining), &mut digits));
    push(b";t=");
    push(value_store::decimal(seconds, &mut digits));
    HeaderValue::from_bytes(&text[..length]).expect("quotes, digits and ASCII are valid")
}

/// Returns the mask of the first `prefix` bits of an IPv6 address. Validation keeps `prefix`
/// between 1 and 128. A 0 would key every address alike.
fn prefix_mask(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// Returns `rate` moved into the range that config validation accepts, NaN to its minimum.
fn supported_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        MIN_REQUESTS_PER_SECOND
    } else {
        rate.clamp(MIN_REQUESTS_PER_SECOND, MAX_REQUESTS_PER_SECOND)
    }
}

/// Returns the time between two tokens at `rate` requests per second, in whole nanoseconds.
/// A whole rate gets the interval of governor's `Quota::per_second`, one second divided by the
/// rate and truncated. A decimal rate gets the nearest nanosecond, because most decimals are
/// not exact in binary: `1e9 / 0.00032` comes out as 3124999999999.9995, not 3125 s. `rate`
/// must be in the range of [`supported_rate`].
fn token_interval(rate: f64) -> Duration {
    if rate.fract() == 0.0 {
        // At most 1e9, so it fits a u32.
        Duration::from_secs(1) / rate as u32
    } else {
        Duration::from_nanos((1e9 / rate).round() as u64)
    }
}

/// Returns the `RateLimit-Policy` quota and window: the window is the time to refill an
/// empty bucket in whole seconds, rounded up to at least 1, and the quota is the requests at
/// `rate` in that window, rounded down. Both are exact for a whole rate.
fn policy_quota_and_window(rate: f64, burst: u32) -> (u64, u64) {
    let window = without_float_error(f64::from(burst) / rate).ceil().max(1.0);
    let quota = without_float_error(rate * window).floor();
    // Both are below 2^53: the quota is at most burst + rate, and the window at most
    // burst × 3600, so the casts are exact.
    (quota as u64, window as u64)
}

/// Returns the nearest whole number when `value` is within a relative 1e-12 of it, else
/// `value`. A decimal rate such as `0.57` is not exact in binary, so `0.57 × 100` comes out
/// as 56.99999999999999, which rounding down would turn into 56.
fn without_float_error(value: f64) -> f64 {
    let nearest = value.round();
    if (value - nearest).abs() <= nearest.abs() * 1e-12 {
        nearest
    } else {
        value
    }
}

fn whole_seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
