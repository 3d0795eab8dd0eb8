//! A route's backend pool and its smooth weighted round-robin pick.
//!
//! The pick follows the smooth weighted round-robin that NGINX uses: each round every backend's
//! current weight grows by its weight, the largest is picked and lowered by the total. Weights
//! 2 and 1 give A, B, A rather than A, A, B. The order only depends on the weights, so it is
//! computed once when the pool is built, and a pick is one atomic increment and an index.
//!
//! Routes that list the same URL share one [`Backend`], so its health is the same whatever
//! route reaches it. The count of requests sent lives in the pool instead, so that each route
//! counts only its own.

use crate::backend::{Backend, InFlight};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A route's backends with their weights.
#[derive(Debug)]
pub struct Pool {
    members: Box<[Member]>,
    // One full cycle of the smooth weighted round-robin order, as indexes into `members`.
    order: Box<[u32]>,
    next: AtomicUsize,
    // The position in `order` after the last turn that replaced one of a backend that could
    // not serve it.
    replacement_cursor: AtomicUsize,
}

/// One backend of a pool.
#[derive(Debug)]
struct Member {
    backend: Arc<Backend>,
    weight: u32,
    // The positions in `order` of the backend's turns, ascending.
    turns: Box<[u32]>,
    // Requests this pool's route sent to the backend.
    requests: AtomicU64,
}

/// A backend that [`Pool::pick`] or [`Pool::pick_other`] chose.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    member: &'a Member,
}

impl<'a> Pick<'a> {
    /// Returns the chosen backend.
    pub fn backend(self) -> &'a Arc<Backend> {
        &self.member.backend
    }

    /// Counts a request to the backend, both in the pool's count for its route and in the
    /// backend's in-flight count. Dropping the returned guard ends the in-flight count.
    pub fn start_request(self) -> InFlight {
        self.member.requests.fetch_add(1, Ordering::Relaxed);
        self.member.backend.start_request()
    }
}

impl Pool {
    /// Builds a pool from backends and their weights. A weight of 0 is treated as 1.
    pub fn new(entries: Vec<(Arc<Backend>, u32)>) -> Pool {
        let weights: Vec<u32> = entries.iter().map(|(_, weight)| (*weight).max(1)).collect();
        let order = smooth_order(&weights).into_boxed_slice();
        let turns = turns_by_member(&order, entries.len());
        let members: Box<[Member]> = entries
            .into_iter()
            .zip(weights)
            .zip(turns)
            .map(|(((backend, _), weight), turns)| Member {
                backend,
                weight,
                turns,
                requests: AtomicU64::new(0),
            })
            .collect();
        Pool {
            members,
            order,
            next: AtomicUsize::new(0),
            replacement_cursor: AtomicUsize::new(0),
        }
    }

    /// Picks the next healthy backend in weighted order, or `None` when none is healthy.
    ///
    /// A turn of an unhealthy backend goes to a replacement (see [`Pool::pick_replacement`]),
    /// so the healthy backends keep their weights relative to each other.
    pub fn pick(&self) -> Option<Pick<'_>> {
        let len = self.order.len();
        if len == 0 {
            return None;
        }
        let servable = |member: &Member| member.backend.is_healthy();
        let position = self.next.fetch_add(1, Ordering::Relaxed);
        let member = &self.members[self.order[position % len] as usize];
        if servable(member) {
            return Some(Pick { member });
        }
        self.pick_replacement(servable)
    }

    /// Picks a healthy backend other than `exclude`, for a retry. The retry takes its turn
    /// from the replacements (see [`Pool::pick_replacement`]), not from the order that first
    /// attempts follow, so retries leave that order as it is. Taken from it, a retry would
    /// take the next request's turn: with a dead and a live backend, every first attempt
    /// would then go to the dead one.
    pub fn pick_other(&self, exclude: &Backend) -> Option<Pick<'_>> {
        if self.order.is_empty() {
            return None;
        }
        self.pick_replacement(|member| {
            member.backend.is_healthy() && !std::ptr::eq(&*member.backend, exclude)
        })
    }

    /// Picks a backend for a turn whose own backend cannot serve.
    ///
    /// Replacements follow the order on a cursor of their own and take the next turn that
    /// belongs to a servable backend, so over a cycle each servable backend replaces in
    /// proportion to its weight. Handing the turn to the next servable backend after the
    /// missed one would instead give all of a down backend's share to that neighbour. With
    /// three equal weights and one backend down, one of the other two would get twice the
    /// load.
    fn pick_replacement(&self, servable: impl Fn(&Member) -> bool) -> Option<Pick<'_>> {
        let mut servable_members = self.members.iter().filter(|member| servable(member));
        let first = servable_members.next()?;
        if servable_members.next().is_none() {
            return Some(Pick { member: first });
        }
        let len = self.order.len();
        let mut start = self.replacement_cursor.load(Ordering::Relaxed);
        loop {
            // `None` when every servable backend went down meanwhile.
            let (member, position) = self.next_servable_turn(start, &servable)?;
            // A worker that moved the cursor first took this turn, so the search starts again
            // from where that worker left the cursor. Each turn is then taken once.
            match self.replacement_cursor.compare_exchange_weak(
                start,
                (position + 1) % len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Pick { member }),
                Err(moved) => start = moved,
            }
        }
    }

    /// Returns the first turn at or after position `start` of the order, wrapping around the
    /// cycle, whose backend is servable, with that position.
    ///
    /// Each servable backend's next turn is found by a binary search in its own turns, so the
    /// cost does not grow with the unservable turns in between. With weights 10000, 1 and 1
    /// and the first backend down, walking the order would pass about 5000 turns per pick.
    fn next_servable_turn(
        &self,
        start: usize,
        servable: &impl Fn(&Member) -> bool,
    ) -> Option<(&Member, usize)> {
        let len = self.order.len();
        self.members
            .iter()
            .filter(|member| servable(member))
            .filter_map(|member| {
                let later = member
                    .turns
                    .partition_point(|&position| (position as usize) < start);
                // Past the member's last turn, its next one is its first of the next cycle.
                let position = *member.turns.get(later).or(member.turns.first())? as usize;
                let distance = (position + len - start) % len;
                Some((distance, member, position))
            })
            .min_by_key(|&(distance, _, _)| distance)
            .map(|(_, member, position)| (member, position))
    }

    /// Returns the backends with their weights, in configured order.
    pub fn backends(&self) -> impl Iterator<Item = (&Arc<Backend>, u32)> {
        self.members
            .iter()
            .map(|member| (&member.backend, member.weight))
    }

    /// Returns how many requests this pool's route sent to each backend since start, in
    /// configured order. A retry on another backend counts for both backends.
    pub fn request_counts(&self) -> impl Iterator<Item = u64> {
        self.members
            .iter()
            .map(|member| member.requests.load(Ordering::Relaxed))
    }

    /// Returns whether at least one backend is healthy.
    pub fn has_healthy(&self) -> bool {
        self.members
            .iter()
            .any(|member| member.backend.is_healthy())
    }
}

/// Computes one cycle of smooth weighted round-robin over `weights`, reduced by their common
/// divisor so that the cycle is as short as possible.
fn smooth_order(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

/// Returns, for each of `members` members, the positions in `order` of its turns, ascending.
fn turns_by_member(order: &[u32], members: usize) -> Vec<Box<[u32]>> {
    let mut turns = vec![Vec::new(); members];
    for (position, &member) in (0u32..).zip(order) {
        turns[member as usize].push(position);
    }
    turns.into_iter().map(Vec::into_boxed_slice).collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::HealthPolicy;
    use http::Uri;

    fn pool(weights: &[u32]) -> Pool {
        let policy = HealthPolicy {
            unhealthy_threshold: 1,
            healthy_threshold: 1,
        };
        Pool::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let url: Uri = format!("http://127.0.0.1:{}", 9001 + i).parse().unwrap();
                    (Arc::new(Backend::new(url, policy)), w)
                })
                .collect(),
        )
    }

    fn picks(pool: &Pool, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| pool.pick().unwrap().backend().url().port_u16().unwrap() - 9001)
            .collect()
    }

    #[test]
    fn two_to_one_interleaves() {
        let pool = pool(&[2, 1]);
        assert_eq!(picks(&pool, 6), [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn two_to_one_exact_every_cycle() {
        let pool = pool(&[2, 1]);
        for _ in 0..10 {
            let window = picks(&pool, 30);
            assert_eq!(window.iter().filter(|&&i| i == 0).count(), 20);
            assert_eq!(window.iter().filter(|&&i| i == 1).count(), 10);
        }
    }

    #[test]
    fn equal_weights_alternate() {
        let pool = pool(&[1, 1, 1]);
        assert_eq!(picks(&pool, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn order_matches_nginx_example() {
        // Weights 5, 1, 1 give a, a, b, a, c, a, a in NGINX's smooth round-robin.
        assert_eq!(smooth_order(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn common_divisor_shortens_cycle() {
        assert_eq!(smooth_order(&[200, 100]), [0, 1, 0]);
    }

    #[test]
    fn unhealthy_backend_is_skipped() {
        let pool = pool(&[2, 1]);
        let (second, _) = pool.backends().nth(1).unwrap();
        second.record_request_failure("refused");
        assert!(picks(&pool, 30).iter().all(|&i| i == 0));
        second.record_check_success();
        assert_eq!(picks(&pool, 30).iter().filter(|&&i| i == 1).count(), 10);
    }

    /// Counts the picks of each backend in `n` picks.
    fn shares(pool: &Pool, n: usize) -> Vec<usize> {
        let picked = picks(pool, n);
        (0..pool.members.len() as u16)
            .map(|i| picked.iter().filter(|&&p| p == i).count())
            .collect()
    }

    #[test]
    fn down_backend_share_split_evenly() {
        let pool = pool(&[1, 1, 1]);
        let (second, _) = pool.backends().nth(1).unwrap();
        second.record_request_failure("refused");
        assert_eq!(shares(&pool, 300), [150, 0, 150]);
    }

    #[test]
    fn down_backend_share_split_by_weight() {
        let pool = pool(&[3, 2, 1]);
        let (second, _) = pool.backends().nth(1).unwrap();
        second.record_request_failure("refused");
        assert_eq!(shares(&pool, 120), [90, 0, 30]);

        let (first, _) = pool.backends().next().unwrap();
        second.record_check_success();
        first.record_request_failure("refused");
        let after = shares(&pool, 120);
        assert_eq!(after[0], 0);
        assert_eq!(after[1], 80);
        assert_eq!(after[2], 40);
    }

    #[test]
    fn only_servable_backend_takes_every_turn() {
        let pool = pool(&[5, 1, 2]);
        let (first, _) = pool.backends().next().unwrap();
        let (third, _) = pool.backends().nth(2).unwrap();
        first.record_request_failure("refused");
        third.record_request_failure("refused");
        assert_eq!(shares(&pool, 80), [0, 80, 0]);
    }

    #[test]
    fn retries_keep_first_attempts_in_turn() {
        let pool = pool(&[1, 1]);
        let mut firsts = Vec::new();
        for _ in 0..10 {
            let first = pool.pick().unwrap().backend();
            let port = first.url().port_u16().unwrap();
            firsts.push(port);
            if port == 9001 {
                // The first attempt failed: the retry goes to the other backend.
                let retry = pool.pick_other(first).unwrap().backend();
                assert_eq!(retry.url().port_u16(), Some(9002));
            }
        }
        assert_eq!(firsts.iter().filter(|&&port| port == 9001).count(), 5);
        assert_eq!(firsts.iter().filter(|&&port| port == 9002).count(), 5);
    }

    #[test]
    fn heavy_down_backend_share_split() {
        let pool = pool(&[10_000, 1, 3]);
        let (first, _) = pool.backends().next().unwrap();
        first.record_request_failure("refused");
        assert_eq!(shares(&pool, 4000), [0, 1000, 3000]);
    }

    #[test]
    fn concurrent_replacements_take_each_turn_once() {
        let pool = pool(&[10_000, 1, 1]);
        let (first, _) = pool.backends().next().unwrap();
        first.record_request_failure("refused");
        // Two threads pick 20,000 times in all, two cycles of the order. The main turns give
        // the second and third backends two picks each, and the replacements alternate
        // between them, so each gets half unless two threads take the same turn.
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        pool.pick().unwrap().start_request();
                    }
                });
            }
        });
        let counts: Vec<u64> = pool.request_counts().collect();
        assert_eq!(counts, [0, 10_000, 10_000]);
    }

    #[test]
    fn retries_follow_weights() {
        let pool = pool(&[1, 2, 1]);
        let (first, _) = pool.backends().next().unwrap();
        let mut counts = [0; 3];
        for _ in 0..300 {
            let other = pool.pick_other(first).unwrap().backend();
            let port = other.url().port_u16().unwrap();
            counts[usize::from(port - 9001)] += 1;
        }
        assert_eq!(counts, [0, 200, 100]);
    }

    #[test]
    fn shared_backend_counts_per_pool() {
        let url = Uri::from_static("http://127.0.0.1:9001");
        let shared = Arc::new(Backend::new(url, HealthPolicy::default()));
        let first = Pool::new(vec![(Arc::clone(&shared), 1)]);
        let second = Pool::new(vec![(Arc::clone(&shared), 1)]);
        for _ in 0..3 {
            drop(first.pick().unwrap().start_request());
        }
        let in_flight = second.pick().unwrap().start_request();
        assert_eq!(first.request_counts().collect::<Vec<_>>(), [3]);
        assert_eq!(second.request_counts().collect::<Vec<_>>(), [1]);
        assert_eq!(shared.snapshot().in_flight, 1);
        drop(in_flight);
    }

    #[test]
    fn all_unhealthy_gives_none() {
        let pool = pool(&[1, 1]);
        for (backend, _) in pool.backends() {
            backend.record_request_failure("refused");
        }
        assert!(pool.pick().is_none());
        assert!(!pool.has_healthy());
    }

    #[test]
    fn pick_other_avoids_excluded() {
        let pool = pool(&[1, 1]);
        let first = pool.pick().unwrap().backend();
        for _ in 0..10 {
            let other = pool.pick_other(first).unwrap().backend();
            assert!(!Arc::ptr_eq(other, first));
        }
        let single = self::pool(&[1]);
        let only = single.pick().unwrap().backend();
        assert!(single.pick_other(only).is_none());
    }

    #[test]
    fn concurrent_picks_keep_weights() {
        let pool = Arc::new(pool(&[2, 1]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || picks(&pool, 3_000))
            })
            .collect();
        let all: Vec<u16> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(all.iter().filter(|&&i| i == 0).count(), 8_000);
        assert_eq!(all.iter().filter(|&&i| i == 1).count(), 4_000);
    }
}
