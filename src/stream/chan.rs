//! One channel of a streaming session (stdin, stdout, stderr, error, resize, or a
//! forwarded port's data and error), whichever transport carries it: a SPDY stream, or
//! a channel multiplexed on a WebSocket. The session code (`remote`, `forward`) is
//! written once against these.
//!
//! Every byte in either direction touches the session's [`Activity`], which the idle
//! timeout reads.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::ws::WsTx;

/// When a session last moved a byte.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// A session that is active now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Something moved.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub fn idle(&self) -> Duration {
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Resolves once the session has been idle for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let idle = self.idle();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// The sending half of a channel (towards the client).
#[derive(Clone)]
pub enum ChanWriter {
    /// A SPDY stream.
    Spdy(skiff_spdy::StreamWriter, Arc<Activity>),
    /// A WebSocket channel.
    Ws(WsTx),
}

impl ChanWriter {
    /// Send `data` (waits while the transport's queue is full).
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        match self {
            ChanWriter::Spdy(w, a) => {
                a.touch();
                w.send(data).await
            }
            ChanWriter::Ws(w) => w.send(data).await,
        }
    }

    /// End this direction of the channel (SPDY FIN; on WebSocket v5 the close signal,
    /// before v5 nothing: the session's end ends it).
    pub async fn finish(&self) -> io::Result<()> {
        match self {
            ChanWriter::Spdy(w, _) => w.finish().await,
            ChanWriter::Ws(w) => w.finish().await,
        }
    }
}

/// The receiving half of a channel (from the client).
pub enum ChanReader {
    /// A SPDY stream.
    Spdy(skiff_spdy::StreamReader, Arc<Activity>),
    /// A WebSocket channel (the session's reader task routes frames here).
    Ws(mpsc::Receiver<Bytes>),
}

impl ChanReader {
    /// The next chunk, or `None` once the client closed the channel or the session ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        match self {
            ChanReader::Spdy(r, a) => {
                let got = r.recv().await;
                a.touch();
                got
            }
            ChanReader::Ws(rx) => rx.recv().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_time_restarts_with_each_touch() {
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(a.idle() >= Duration::from_millis(30));
        a.touch();
        assert!(a.idle() < Duration::from_millis(30));
        let started = Instant::now();
        a.idle_for(Duration::from_millis(40)).await;
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
