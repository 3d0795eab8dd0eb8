#![allow(clippy::unwrap_used)]

use super::*;
use governor::clock::FakeRelativeClock;
use std::net::Ipv4Addr;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 8));

fn config(requests_per_second: f64, burst: u32, key: RateLimitKey) -> RateLimitConfig {
    RateLimitConfig {
        enabled: true,
        requests_per_second,
        burst,
        key,
        ipv6_prefix: 64,
    }
}

fn limiter(
    requests_per_second: f64,
    burst: u32,
) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let config = config(requests_per_second, burst, RateLimitKey::ClientIp);
    (RateLimiter::with_clock(&config, clock.clone()), clock)
}

fn allowed_count(limiter: &RateLimiter<FakeRelativeClock>, client: IpAddr, attempts: u32) -> u32 {
    let mut allowed = 0;
    for _ in 0..attempts {
        if matches!(limiter.check(client), Decision::Allowed { .. }) {
            allowed += 1;
        }
    }
    allowed
}

#[test]
fn burst_then_reject() {
    let (limiter, _clock) = limiter(100.0, 50);

    for expected_remaining in (0..50).rev() {
        let decision = limiter.check(CLIENT);
        let Decision::Allowed { remaining, .. } = decision else {
            panic!("request with {expected_remaining} tokens left was {decision:?}");
        };
        assert_eq!(remaining, expected_remaining);
    }

    assert!(matches!(limiter.check(CLIENT), Decision::Rejected { .. }));
}

#[test]
fn refill_after_time() {
    let (limiter, clock) = limiter(100.0, 50);
    assert_eq!(allowed_count(&limiter, CLIENT, 1000), 50);

    // One token every 10 ms.
    clock.advance(Duration::from_millis(30));
    assert_eq!(allowed_count(&limiter, CLIENT, 1000), 3);

    // A long idle time fills the bucket only up to the burst.
    clock.advance(Duration::from_secs(60));
    assert_eq!(allowed_count(&limiter, CLIENT, 1000), 50);
}

#[test]
fn exact_counts_over_simulated_seconds() {
    // A client that tries every millisecond gets the burst plus one token per 10 ms.
    for seconds in 1..=3u32 {
        let (limiter, clock) = limiter(100.0, 50);
        let mut allowed = 0;
        for millisecond in 0..=seconds * 1000 {
            if millisecond > 0 {
                clock.advance(Duration::from_millis(1));
            }
            allowed += allowed_count(&limiter, CLIENT, 5);
        }
        assert_eq!(allowed, 50 + 100 * seconds, "after {seconds}s");
    }
}

#[test]
fn rejected_requests_cost_no_token() {
    let (limiter, clock) = limiter(100.0, 50);
    assert_eq!(allowed_count(&limiter, CLIENT, 50), 50);

    // Hammering an empty bucket must not push the next token further away.
    assert_eq!(allowed_count(&limiter, CLIENT, 10_000), 0);
    clock.advance(Duration::from_millis(10));

    assert!(matches!(
        limiter.check(CLIENT),
        Decision::Allowed { remaining: 0, .. }
    ));
}

#[test]
fn retry_after_is_time_to_next_token() {
    let (limiter, clock) = limiter(1.0, 5);
    assert_eq!(allowed_count(&limiter, CLIENT, 5), 5);

    let decision = limiter.check(CLIENT);
    assert_eq!(
        decision,
        Decision::Rejected {
            retry_after: Duration::from_secs(1)
        }
    );

    clock.advance(Duration::from_millis(300));
    let decision = limiter.check(CLIENT);
    assert_eq!(
        decision,
        Decision::Rejected {
            retry_after: Duration::from_millis(700)
        }
    );

    // The advertised wait is enough.
    clock.advance(Duration::from_millis(700));
    assert!(matches!(limiter.check(CLIENT), Decision::Allowed { .. }));
}

#[test]
fn rejection_headers_round_up() {
    let (limiter, _clock) = limiter(1.0, 5);

    // With one token a second and a burst of 5, the bucket is full 4 s after the next token.
    let cases = [
        (Duration::from_millis(700), "1", "5"),
        (Duration::from_millis(1), "1", "5"),
        (Duration::ZERO, "1", "4"),
        (Duration::from_secs(2), "2", "6"),
        (Duration::from_millis(2001), "3", "7"),
    ];
    for (retry_after, expected, full) in cases {
        let response: Response<bytes::Bytes> = limiter.rejection(retry_after);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], expected, "{retry_after:?}");
        assert_eq!(
            headers[RATELIMIT],
            format!("\"gateway\";r=0;t={full}").as_str(),
            "{retry_after:?}"
        );
    }
}

#[test]
fn full_after_counts_missing_tokens() {
    let (limiter, _clock) = limiter(2.0, 10);

    let decision = limiter.check(CLIENT);
    assert_eq!(
        decision,
        Decision::Allowed {
            remaining: 9,
            full_after: Duration::from_millis(500)
        }
    );
    assert_eq!(allowed_count(&limiter, CLIENT, 4), 4);

    let decision = limiter.check(CLIENT);
    assert_eq!(
        decision,
        Decision::Allowed {
            remaining: 4,
            full_after: Duration::from_millis(3000)
        }
    );
}

#[test]
fn policy_quota_is_the_rate_over_a_window_rounded_up() {
    let cases = [
        (100.0, 50, "\"gateway\";q=100;w=1"),
        (2.0, 5, "\"gateway\";q=6;w=3"),
        (1.0, 60, "\"gateway\";q=60;w=60"),
        (20.0, 10, "\"gateway\";q=20;w=1"),
        (10.0, 25, "\"gateway\";q=30;w=3"),
    ];
    for (rate, burst, expected) in cases {
        let (limiter, _clock) = limiter(rate, burst);
        assert_eq!(limiter.policy_header(), expected);
    }
}

#[test]
fn policy_of_decimal_rates_is_whole() {
    let cases = [
        // 25 s to refill 5 tokens at one per 5 s.
        (0.2, 5, "\"gateway\";q=5;w=25"),
        // 16.7 s rounds up to 17, and 0.3 × 17 = 5.1 rounds down to 5.
        (0.3, 5, "\"gateway\";q=5;w=17"),
        (0.5, 1, "\"gateway\";q=1;w=2"),
        (2.5, 5, "\"gateway\";q=5;w=2"),
        (2.5, 1, "\"gateway\";q=2;w=1"),
        // Ten a minute.
        (1.0 / 6.0, 10, "\"gateway\";q=10;w=60"),
        // 0.57 × 100 is 56.99999999999999 in floats.
        (0.57, 57, "\"gateway\";q=57;w=100"),
        (MIN_REQUESTS_PER_SECOND, 2, "\"gateway\";q=2;w=7200"),
    ];
    for (rate, burst, expected) in cases {
        let (limiter, _clock) = limiter(rate, burst);
        assert_eq!(
            limiter.policy_header(),
            expected,
            "rate {rate}, burst {burst}"
        );
    }
}

#[test]
fn whole_rates_keep_integer_arithmetic() {
    let rates = [1, 2, 3, 7, 100, 999_999_937, 1_000_000_000];
    let bursts = [1, 5, 50, 999_999_999, u32::MAX];
    for rate in rates {
        let per_second = Quota::per_second(NonZeroU32::new(rate).unwrap());
        assert_eq!(
            token_interval(f64::from(rate)),
            per_second.replenish_interval(),
            "rate {rate}"
        );
        for burst in bursts {
            let window = u64::from(burst.div_ceil(rate).max(1));
            let quota = u64::from(rate) * window;
            assert_eq!(
                policy_quota_and_window(f64::from(rate), burst),
                (quota, window),
                "rate {rate}, burst {burst}"
            );
        }
    }
}

#[test]
fn decimal_rate_intervals_are_nearest_nanosecond() {
    assert_eq!(token_interval(0.2), Duration::from_secs(5));
    // 1e9 / 0.00032 is 3124999999999.9995 in floats.
    assert_eq!(token_interval(0.00032), Duration::from_secs(3125));
    assert_eq!(token_interval(1.0 / 60.0), Duration::from_secs(60));
    assert_eq!(token_interval(0.3), Duration::from_nanos(3_333_333_333));
    assert_eq!(token_interval(1.5), Duration::from_nanos(666_666_667));
    assert_eq!(
        token_interval(MIN_REQUESTS_PER_SECOND),
        Duration::from_secs(3600)
    );
}

#[test]
fn decimal_rate_paces_requests() {
    let (limiter, clock) = limiter(0.2, 5);

    let decision = limiter.check(CLIENT);
    assert_eq!(
        decision,
        Decision::Allowed {
            remaining: 4,
            full_after: Duration::from_secs(5)
        }
    );
    assert_eq!(allowed_count(&limiter, CLIENT, 100), 4);
    assert_eq!(
        limiter.check(CLIENT),
        Decision::Rejected {
            retry_after: Duration::from_secs(5)
        }
    );

    clock.advance(Duration::from_millis(4999));
    assert_eq!(
        limiter.check(CLIENT),
        Decision::Rejected {
            retry_after: Duration::from_millis(1)
        }
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        limiter.check(CLIENT),
        Decision::Allowed {
            remaining: 0,
            full_after: Duration::from_secs(25)
        }
    );

    // Trying every 100 ms for a minute gets one request through every 5 s.
    let mut allowed = 0;
    for _ in 0..600 {
        clock.advance(Duration::from_millis(100));
        allowed += allowed_count(&limiter, CLIENT, 3);
    }
    assert_eq!(allowed, 12);
}

#[test]
fn decimal_rate_rejection_headers() {
    let (limiter, _clock) = limiter(0.2, 5);
    assert_eq!(allowed_count(&limiter, CLIENT, 5), 5);
    let Decision::Rejected { retry_after } = limiter.check(CLIENT) else {
        panic!("a sixth request after a burst of 5 was allowed");
    };

    let response: Response<bytes::Bytes> = limiter.rejection(retry_after);
    let headers = response.headers();
    assert_eq!(headers[header::RETRY_AFTER], "5");
    // The next token in 5 s, then the other 4 at 5 s each.
    assert_eq!(headers[RATELIMIT], "\"gateway\";r=0;t=25");
    assert_eq!(headers[RATELIMIT_POLICY], "\"gateway\";q=5;w=25");
}

#[test]
fn evict_waits_for_slow_refill() {
    // One token a minute: OTHER's bucket is full after 60 s and CLIENT's after 180 s, and
    // governor drops each one interval later.
    let (limiter, clock) = limiter(1.0 / 60.0, 3);
    assert_eq!(allowed_count(&limiter, CLIENT, 3), 3);
    assert_eq!(allowed_count(&limiter, OTHER, 1), 1);

    clock.advance(Duration::from_secs(119));
    limiter.evict_idle();
    assert_eq!(limiter.tracked_keys(), 2);

    clock.advance(Duration::from_secs(1));
    limiter.evict_idle();
    assert_eq!(limiter.tracked_keys(), 1);

    clock.advance(Duration::from_secs(120));
    limiter.evict_idle();
    assert_eq!(limiter.tracked_keys(), 0);
}

#[test]
fn keys_are_independent() {
    let (limiter, _clock) = limiter(100.0, 50);

    assert_eq!(allowed_count(&limiter, CLIENT, 1000), 50);
    assert_eq!(allowed_count(&limiter, OTHER, 1000), 50);
    assert_eq!(limiter.tracked_keys(), 2);
}

#[test]
fn mapped_ipv6_shares_ipv4_bucket() {
    let (limiter, _clock) = limiter(100.0, 50);
    let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();

    assert_eq!(allowed_count(&limiter, CLIENT, 30), 30);
    assert_eq!(allowed_count(&limiter, mapped, 1000), 20);
    assert_eq!(limiter.tracked_keys(), 1);
}

#[test]
fn ipv6_addresses_share_their_prefix_bucket() {
    let (limiter, _clock) = limiter(100.0, 50);
    let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let same_block: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
    let next_block: IpAddr = "2001:db8:1:3::1".parse().unwrap();

    assert_eq!(allowed_count(&limiter, first, 30), 30);
    assert_eq!(allowed_count(&limiter, same_block, 1000), 20);
    assert_eq!(allowed_count(&limiter, next_block, 1000), 50);
    assert_eq!(limiter.tracked_keys(), 2);
}

#[test]
fn ipv6_prefix_sets_block_size() {
    let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let neighbour: IpAddr = "2001:db8:1:2::2".parse().unwrap();
    let other_subnet: IpAddr = "2001:db8:1:ff::1".parse().unwrap();

    let whole = RateLimitConfig {
        ipv6_prefix: 128,
        ..config(100.0, 50, RateLimitKey::ClientIp)
    };
    let limiter = RateLimiter::with_clock(&whole, FakeRelativeClock::default());
    assert_eq!(allowed_count(&limiter, first, 1000), 50);
    assert_eq!(allowed_count(&limiter, neighbour, 1000), 50);

    // A /48 spans every /64 of 2001:db8:1::.
    let wide = RateLimitConfig {
        ipv6_prefix: 48,
        ..config(100.0, 50, RateLimitKey::ClientIp)
    };
    let limiter = RateLimiter::with_clock(&wide, FakeRelativeClock::default());
    assert_eq!(allowed_count(&limiter, first, 30), 30);
    assert_eq!(allowed_count(&limiter, other_subnet, 1000), 20);

    // An odd length cuts inside a group: /65 splits 2001:db8:1:2:: at its 65th bit.
    let odd = RateLimitConfig {
        ipv6_prefix: 65,
        ..config(100.0, 50, RateLimitKey::ClientIp)
    };
    let limiter = RateLimiter::with_clock(&odd, FakeRelativeClock::default());
    let low: IpAddr = "2001:db8:1:2:7fff::1".parse().unwrap();
    let high: IpAddr = "2001:db8:1:2:8000::1".parse().unwrap();
    assert_eq!(allowed_count(&limiter, first, 30), 30);
    assert_eq!(allowed_count(&limiter, low, 1000), 20);
    assert_eq!(allowed_count(&limiter, high, 1000), 50);
}

#[test]
fn nat64_clients_keyed_by_ipv4() {
    let limiter = RateLimiter::with_clock(
        &config(100.0, 50, RateLimitKey::ClientIp),
        FakeRelativeClock::default(),
    );
    let translated: IpAddr = "64:ff9b::c633:640b".parse().unwrap();
    let same_client: IpAddr = "198.51.100.11".parse().unwrap();
    let other_client: IpAddr = "64:ff9b::c633:640c".parse().unwrap();
    assert_eq!(allowed_count(&limiter, translated, 30), 30);
    assert_eq!(allowed_count(&limiter, same_client, 1000), 20);
    assert_eq!(allowed_count(&limiter, other_client, 1000), 50);
}

#[test]
fn prefix_masks_keep_leading_bits() {
    assert_eq!(prefix_mask(128), u128::MAX);
    assert_eq!(prefix_mask(64), u128::MAX << 64);
    assert_eq!(prefix_mask(1), 1 << 127);
    assert_eq!(prefix_mask(0), 0);
}

#[test]
fn global_key_is_shared() {
    let clock = FakeRelativeClock::default();
    let limiter = RateLimiter::with_clock(&config(100.0, 50, RateLimitKey::Global), clock.clone());

    assert_eq!(allowed_count(&limiter, CLIENT, 30), 30);
    assert_eq!(allowed_count(&limiter, OTHER, 1000), 20);
    assert_eq!(limiter.tracked_keys(), 0);

    clock.advance(Duration::from_millis(100));
    assert_eq!(allowed_count(&limiter, OTHER, 1000), 10);
}

#[test]
fn disabled_limiter_is_unlimited() {
    let clock = FakeRelativeClock::default();
    let mut config = config(1.0, 1, RateLimitKey::ClientIp);
    config.enabled = false;
    let limiter = RateLimiter::with_clock(&config, clock);

    assert!(!limiter.is_enabled());
    for _ in 0..100 {
        assert_eq!(limiter.check(CLIENT), Decision::Unlimited);
    }
    assert_eq!(limiter.tracked_keys(), 0);
}

#[test]
fn invalid_values_are_raised_to_minimum() {
    for rate in [0.0, -1.0, f64::NAN, 1e-9] {
        let (limiter, _clock) = limiter(rate, 0);

        assert!(
            matches!(
                limiter.check(CLIENT),
                Decision::Allowed { remaining: 0, .. }
            ),
            "rate {rate}"
        );
        assert_eq!(
            limiter.check(CLIENT),
            Decision::Rejected {
                retry_after: Duration::from_secs(3600)
            },
            "rate {rate}"
        );
    }
}

#[test]
fn rate_above_maximum_is_lowered() {
    for rate in [2e9, f64::INFINITY] {
        let (limiter, _clock) = limiter(rate, 1);
        assert_eq!(
            limiter.replenish_interval,
            Duration::from_nanos(1),
            "rate {rate}"
        );
    }
}

#[test]
fn evict_keeps_busy_clients() {
    let (limiter, clock) = limiter(1.0, 10);
    assert_eq!(allowed_count(&limiter, CLIENT, 10), 10);
    assert_eq!(allowed_count(&limiter, OTHER, 1), 1);

    // OTHER's bucket is full again after 1 s; CLIENT's needs 10 s.
    clock.advance(Duration::from_secs(5));
    limiter.evict_idle();
    assert_eq!(limiter.tracked_keys(), 1);

    // CLIENT still owes tokens, so its bucket must not have been reset.
    assert_eq!(allowed_count(&limiter, CLIENT, 100), 5);
}

#[test]
fn ratelimit_value_fits_largest_numbers() {
    assert_eq!(
        super::ratelimit_value(u32::MAX, u64::MAX),
        "\"gateway\";r=4294967295;t=18446744073709551615"
    );
    assert_eq!(super::ratelimit_value(0, 1), "\"gateway\";r=0;t=1");
}

#[test]
fn ratelimit_value_cache_keeps_pairs_apart() {
    // 5 and 69 share a slot of the cache, and so do two refill times of one count.
    for _ in 0..2 {
        assert_eq!(super::ratelimit_value(5, 1), "\"gateway\";r=5;t=1");
        assert_eq!(super::ratelimit_value(69, 1), "\"gateway\";r=69;t=1");
        assert_eq!(super::ratelimit_value(5, 2), "\"gateway\";r=5;t=2");
        assert_eq!(super::ratelimit_value(5, 1), "\"gateway\";r=5;t=1");
    }
}
