//! Closing idle connections when the process runs out of file descriptors.
//!
//! An accept that fails with `EMFILE` (or another shortage) leaves the new client waiting in
//! the listen queue. Idle connections would hold their descriptors until the read timeout, so
//! a gateway full of them serves no new client for that long. The worker that fails to accept
//! signals every worker's [`IdleShed`], and each idle connection closes, as HTTP/1.1 lets a
//! server close a connection that has no request in progress. Idle means waiting for a request
//! head with no byte of it received: after a response, or for [`NEW_GRACE`] or more since the
//! accept. A connection that was accepted just now is spared, since its client is most likely
//! sending its first request. Connections in the middle of a request are left alone.

use crate::deadline::{ConnectionDeadline, Phase, deadline_passed, now_for};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;

/// The shortest time between two signals of a worker's accept loop.
pub(crate) const SHED_INTERVAL: Duration = Duration::from_secs(1);

/// How long a new connection may go without sending a byte before a signal closes it. A
/// client usually sends its first request as soon as it connects. A connection silent this
/// long is more likely one opened ahead of need, or one that will never send.
///
/// It is shorter than [`SHED_INTERVAL`]: the connections accepted just after one signal, into
/// the descriptors it freed, must be past their grace at the next signal, or only every other
/// signal would close any.
pub(crate) const NEW_GRACE: Duration = Duration::from_millis(500);

/// The signal of one worker's connections to close while they are idle.
#[derive(Debug, Default)]
pub(crate) struct IdleShed {
    /// Counts the signals, so that a connection detects one with a load rather than a lock.
    signals: AtomicU64,
    /// Wakes the idle connections, whose tasks are not polled otherwise.
    notify: Notify,
}

impl IdleShed {
    /// Asks the idle connections to close.
    pub(crate) fn signal(&self) {
        self.signals.fetch_add(1, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// The reason [`deadline_or_shed`] ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The deadline of this phase passed (see [`deadline_passed`]).
    Deadline(Phase),
    /// `shed` was signalled while the connection was idle.
    Shed,
}

/// Returns when the connection of `deadline` is to end: its deadline passed, or `shed` was
/// signalled while the connection was idle (see [`ConnectionDeadline::is_idle`], with
/// [`NEW_GRACE`]). A signal at another time, while the connection handles a request or was
/// accepted just now, is ignored.
///
/// The connection's task polls this on each of its wake-ups, where the signal costs an atomic
/// load and a comparison of wakers. The wait joins the list of `Notify`, under its lock, on its
/// first poll, after a signal, and when the task's waker changes.
pub(crate) async fn deadline_or_shed(
    deadline: &ConnectionDeadline,
    check_interval: Duration,
    shed: &IdleShed,
) -> Ended {
    let mut passed = pin!(deadline_passed(deadline, check_interval));
    let mut seen = shed.signals.load(Ordering::Acquire);
    let mut notified = pin!(shed.notify.notified());
    let mut registered: Option<Waker> = None;
    poll_fn(|cx| {
        if let Poll::Ready(phase) = passed.as_mut().poll(cx) {
            return Poll::Ready(Ended::Deadline(phase));
        }
        loop {
            let signals = shed.signals.load(Ordering::Acquire);
            if signals != seen {
                seen = signals;
                if deadline.is_idle(now_for(NEW_GRACE), NEW_GRACE) {
                    return Poll::Ready(Ended::Shed);
                }
                notified.set(shed.notify.notified());
                registered = None;
            }
            // The wait stays registered while the connection is busy too: it may go idle
            // within this same wake-up of its task, after this poll, and then nothing would
            // poll the wait again before a request arrives.
            if registered
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            match notified.as_mut().poll(cx) {
                Poll::Pending => {
                    registered = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                // A signal between the load above and this poll: read it.
                Poll::Ready(()) => {
                    notified.set(shed.notify.notified());
                    registered = None;
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Signals `shed` after 20 ms from another task, so that only a registered waker can
    /// bring the signal to the waiting future.
    fn signal_soon(shed: &Arc<IdleShed>) {
        let shed = Arc::clone(shed);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            shed.signal();
        });
    }

    #[tokio::test]
    async fn kept_alive_connection_closes_on_signal() {
        let shed = Arc::new(IdleShed::default());
        let deadline = ConnectionDeadline::new(MINUTE, MINUTE);
        // One response sent, and the next head awaited with nothing of it read.
        deadline.start_response();
        deadline.await_head();
        deadline.set_received(false);
        let mut ended = pin!(deadline_or_shed(&deadline, MINUTE, &shed));
        signal_soon(&shed);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut ended).await;
        assert_eq!(ended, Ok(Ended::Shed));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_new_connection_closes_after_grace() {
        let shed = Arc::new(IdleShed::default());
        let deadline = ConnectionDeadline::new(MINUTE, MINUTE);
        let mut ended = pin!(deadline_or_shed(&deadline, MINUTE, &shed));

        // Accepted just now: its first request is most likely on its way.
        signal_soon(&shed);
        let short = Duration::from_millis(50);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());

        // A byte arrived, then the grace passed: a head is on its way.
        deadline.note_received();
        tokio::time::advance(NEW_GRACE).await;
        signal_soon(&shed);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());

        // Silent for the whole grace.
        deadline.set_received(false);
        signal_soon(&shed);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut ended).await;
        assert_eq!(ended, Ok(Ended::Shed));
    }

    #[tokio::test]
    async fn busy_or_new_connection_stays_open() {
        let shed = Arc::new(IdleShed::default());
        let deadline = ConnectionDeadline::new(MINUTE, MINUTE);
        let mut ended = pin!(deadline_or_shed(&deadline, MINUTE, &shed));
        let short = Duration::from_millis(50);

        // New, accepted within the grace: no request yet.
        signal_soon(&shed);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());

        // A head arrived and its request is being handled.
        deadline.clear();
        signal_soon(&shed);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());

        // Sending its response.
        deadline.start_response();
        signal_soon(&shed);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());

        // Kept alive, with part of its next head read ahead during the response.
        deadline.await_head();
        deadline.set_received(true);
        signal_soon(&shed);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());

        // Kept alive, with part of its next head received while it waited.
        deadline.set_received(false);
        deadline.note_received();
        signal_soon(&shed);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());

        // Kept alive and idle: polled once as the connection's task would be, then the next
        // signal ends it.
        deadline.await_head();
        deadline.set_received(false);
        assert!(tokio::time::timeout(short, &mut ended).await.is_err());
        signal_soon(&shed);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut ended).await;
        assert_eq!(ended, Ok(Ended::Shed));
    }
}
