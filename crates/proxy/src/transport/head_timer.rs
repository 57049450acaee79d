//! The timer behind hyper's HTTP/1 header-read timeout on server connections, made cheap.
//!
//! hyper arms the timeout every time it waits for a request head (30 s by default): with
//! `TokioTimer` that is a new boxed `tokio::time::Sleep` per request, registered in the timer
//! wheel on its first poll and removed again when the head has arrived, about 1.2k
//! instructions per request on a keep-alive connection. [`HeadTimer`] keeps one tokio sleep per
//! connection instead. Each request's [`HeadSleep`] only remembers its deadline; the
//! connection's sleep stays registered, and since deadlines only move later, it fires at most
//! once per timeout period early (a spurious wake of the connection, which then re-arms it for
//! the current deadline). The timeout itself is unchanged: a head that has not arrived by its
//! deadline fails the connection, as with `TokioTimer`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// One connection's timer: give each server connection its own (`HeadTimer::default()`).
#[derive(Clone, Debug, Default)]
pub struct HeadTimer {
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// Tokio's clock (the one the sleeps run on), as `TokioTimer` does.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            deadline: tokio::time::Instant::from_std(deadline),
            armed: self.armed.clone(),
        })
    }
}

/// Ready once its deadline has passed; woken by the connection's shared sleep.
#[derive(Debug)]
pub struct HeadSleep {
    deadline: tokio::time::Instant,
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let ours = self.deadline;
        // Only this connection's task polls it: the lock is never contended, and a panic
        // while holding it cannot leave the sleep half-updated.
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(ours)));
        if sleep.deadline() > ours {
            // An earlier deadline than the armed one (not what hyper does, but allowed).
            sleep.as_mut().reset(ours);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if sleep.deadline() >= ours {
                return Poll::Ready(());
            }
            // It fired for an earlier head's deadline: wait for this one.
            sleep.as_mut().reset(ours);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `sleep` once without a task to wake: whether it is ready.
    fn ready(sleep: &mut Pin<Box<dyn Sleep>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.as_mut().poll(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn each_sleep_fires_at_its_own_deadline_on_one_shared_timer() {
        let timer = HeadTimer::default();
        let mut first = timer.sleep(Duration::from_secs(30));
        assert!(!ready(&mut first));
        tokio::time::advance(Duration::from_secs(10)).await;
        // The first head arrived; the next one gets a later deadline (t = 40 s).
        drop(first);
        let mut second = timer.sleep(Duration::from_secs(30));
        assert!(!ready(&mut second));
        // At t = 30 s the shared sleep fires for the old deadline: not yet this one's.
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(!ready(&mut second));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(!ready(&mut second), "t = 39 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(ready(&mut second), "t = 40 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_sleep_wakes_its_task_at_the_deadline() {
        let timer = HeadTimer::default();
        let started = tokio::time::Instant::now();
        // Re-armed once: the first deadline passes while the second sleep waits.
        let first = timer.sleep(Duration::from_secs(5));
        drop(tokio::time::timeout(Duration::from_secs(1), first).await);
        timer.sleep(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(6));
        // An earlier deadline than the armed one is honoured too.
        let mut later = timer.sleep(Duration::from_secs(60));
        assert!(!ready(&mut later));
        drop(later);
        let now = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(2)).await;
        assert_eq!(now.elapsed(), Duration::from_secs(2));
    }

    /// A real hyper HTTP/1 server connection on loopback with this timer and a 300 ms
    /// header-read timeout: keep-alive requests inside the timeout are answered, then a
    /// request head that stops halfway ends the connection at the timeout.
    #[tokio::test]
    async fn hyper_closes_a_connection_whose_head_stalls() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok")))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(HeadTimer::default())
                .header_read_timeout(Duration::from_millis(300))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![0u8; 1024];
        // Three requests, 200 ms apart: each head arrives within its own 300 ms, though the
        // connection is older than that.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            let n = client.read(&mut buf).await.unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("ok"), "{answer}");
        }
        client.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
        let started = std::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the server closes the stalled connection")
            .unwrap_or(0);
        let waited = started.elapsed();
        // hyper may answer 408 before closing; either way nothing more is served.
        let rest = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || rest.starts_with("HTTP/1.1 408"), "{rest}");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
}
