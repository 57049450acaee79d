//! Drains a served connection when the proxy shuts down, without polling the shutdown signal
//! on every wake-up of the connection's task.
//!
//! A `select!` over a connection and `CancellationToken::cancelled()` polls both each time the
//! task wakes, and polling the cancellation future takes the token's waiter lock. A keep-alive
//! connection's task wakes several times per request (the request, the upstream's response
//! head and body, the write), so that cost a few hundred instructions per proxied request.
//! Here the cancellation future gets its own waker, which only raises a flag and wakes the
//! task: it is polled again only when it, not the connection, woke the task.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

/// Runs `conn` to completion; when `shutdown` is cancelled first, calls `graceful` on it once
/// (e.g. hyper's `graceful_shutdown`: finish the in-flight request, then close) and keeps
/// running it until it ends.
pub async fn serve_until_drained<C, G>(
    shutdown: &CancellationToken,
    mut conn: Pin<&mut C>,
    graceful: G,
) -> C::Output
where
    C: Future,
    G: FnOnce(Pin<&mut C>),
{
    // Raised initially so the first poll registers the cancellation future's waker.
    let signal = Arc::new(Signal {
        raised: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let signal_waker = Waker::from(signal.clone());
    let mut cancelled = pin!(shutdown.cancelled());
    let mut graceful = Some(graceful);
    poll_fn(move |cx| {
        if graceful.is_some() {
            // Registered before the flag is read: a cancellation between the two still wakes
            // this task (the flag is then seen now or on the next poll).
            signal.task.register(cx.waker());
            if signal.raised.swap(false, Ordering::AcqRel)
                && cancelled
                    .as_mut()
                    .poll(&mut Context::from_waker(&signal_waker))
                    .is_ready()
                && let Some(graceful) = graceful.take()
            {
                graceful(conn.as_mut());
            }
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// The cancellation future's waker: notes that it fired and wakes the connection's task.
struct Signal {
    raised: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Duration;

    /// A connection that ends only after `graceful` was called on it.
    struct Conn {
        drained: bool,
        polls: u32,
    }

    impl Future for Conn {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.polls += 1;
            if self.drained {
                Poll::Ready(self.polls)
            } else {
                // Wakes itself, like a connection busy with requests.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn cancellation_while_busy_drains_the_connection() {
        let shutdown = CancellationToken::new();
        let canceller = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            canceller.cancel();
        });
        let mut conn = pin!(Conn {
            drained: false,
            polls: 0
        });
        let polls = tokio::time::timeout(
            Duration::from_secs(5),
            serve_until_drained(&shutdown, conn.as_mut(), |c| c.get_mut().drained = true),
        )
        .await
        .expect("the connection drains once shutdown is cancelled");
        assert!(polls > 1);
    }

    #[tokio::test]
    async fn cancellation_of_an_idle_connection_wakes_it() {
        // Never wakes itself: only the cancellation can make progress.
        struct Idle(bool);
        impl Future for Idle {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                if self.0 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
        }
        let shutdown = CancellationToken::new();
        let canceller = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            canceller.cancel();
        });
        let mut conn = pin!(Idle(false));
        tokio::time::timeout(
            Duration::from_secs(5),
            serve_until_drained(&shutdown, conn.as_mut(), |c| c.get_mut().0 = true),
        )
        .await
        .expect("an idle connection is woken and drained by the cancellation");
    }

    #[tokio::test]
    async fn a_connection_that_ends_first_is_not_drained() {
        let shutdown = CancellationToken::new();
        let mut conn = pin!(async { 7 });
        let out = serve_until_drained(&shutdown, conn.as_mut(), |_| {
            panic!("not drained: shutdown was never cancelled")
        })
        .await;
        assert_eq!(out, 7);
    }
}
