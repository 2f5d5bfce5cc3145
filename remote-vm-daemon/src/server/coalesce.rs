//! Renders shared by the requests waiting for them (`Coalescer`): at most one
//! at a time, on a blocking thread, each answering only requests that arrived
//! before it started, spaced by `[web] min_render_interval_seconds`. A request
//! says what it wants (`Want`: the metrics text, the stalls page); a render
//! makes what the requests it answers want, from one read of the maps and one
//! run of the task iterator.
use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

/// What a request wants of a render.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub metrics: bool,
    pub stalls: bool,
}

impl Want {
    pub const METRICS: Want = Want { metrics: true, stalls: false };
    pub const STALLS: Want = Want { metrics: false, stalls: true };

    fn and(self, other: Want) -> Want {
        Want { metrics: self.metrics || other.metrics, stalls: self.stalls || other.stalls }
    }
}

/// Renders shared by the requests waiting for them: at most one runs at a
/// time (on a blocking thread), each request is answered by the first render
/// that started after it arrived (never older numbers than the request), and
/// renders start at least `spacing` apart.
pub struct Coalescer<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    renders: Mutex<Generations>,
    wake: Notify,
    /// The last render done: its generation and result (`None`: it panicked).
    done: watch::Sender<(u64, Option<T>)>,
    /// When the render running now started (ns after `epoch`; 0: none runs).
    running_since: AtomicU64,
    epoch: Instant,
}

#[derive(Default)]
struct Generations {
    /// Renders started so far (the generation of the latest).
    started: u64,
    /// What the requests waiting for a render not started yet want.
    wanted: Option<Want>,
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    /// Spawns the task that runs `render` when requests want it.
    pub fn start(spacing: Duration, render: impl Fn(Want) -> T + Send + Sync + 'static) -> Coalescer<T> {
        let shared = Arc::new(Shared {
            renders: Mutex::new(Generations::default()),
            wake: Notify::new(),
            done: watch::Sender::new((0, None)),
            running_since: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        tokio::spawn(drive(shared.clone(), spacing, Arc::new(render)));
        Coalescer { shared }
    }

    /// The result of the first render that starts after this call, made with
    /// at least `want` (`None`: it panicked).
    pub async fn get(&self, want: Want) -> Option<T> {
        let mut done = self.shared.done.subscribe();
        let generation = {
            let mut g = self.shared.renders.lock().unwrap_or_else(PoisonError::into_inner);
            g.wanted = Some(g.wanted.unwrap_or_default().and(want));
            g.started + 1
        };
        self.shared.wake.notify_one();
        // The sender lives in `shared`, which we hold: never closed.
        let got = done.wait_for(|(done, _)| *done >= generation).await.ok()?;
        got.1.clone()
    }

    /// How long the render running now has run (`None`: none runs).
    pub fn running_for(&self) -> Option<Duration> {
        let since = self.shared.running_since.load(Ordering::Acquire);
        (since != 0).then(|| self.shared.epoch.elapsed().saturating_sub(Duration::from_nanos(since)))
    }
}

/// Runs a render when requests want one: one at a time, `spacing` apart.
async fn drive<T: Send + Sync + 'static>(shared: Arc<Shared<T>>, spacing: Duration, render: Arc<dyn Fn(Want) -> T + Send + Sync>) {
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        shared.wake.notified().await;
        if let Some(last) = last {
            tokio::time::sleep_until(last + spacing).await;
        }
        // Requests that arrived up to here are served by this render.
        let (generation, want) = {
            let mut g = shared.renders.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(want) = g.wanted.take() else {
                // A wake-up from a request the last render already took.
                continue;
            };
            g.started += 1;
            (g.started, want)
        };
        last = Some(tokio::time::Instant::now());
        let render = render.clone();
        let since = (shared.epoch.elapsed().as_nanos() as u64).max(1);
        shared.running_since.store(since, Ordering::Release);
        let result = tokio::task::spawn_blocking(move || render(want)).await.ok();
        shared.running_since.store(0, Ordering::Release);
        shared.done.send_replace((generation, result));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tokio::time::Instant;

    use super::*;

    const SPACING: Duration = Duration::from_millis(100);

    /// A render that returns how many renders ran, each at the instant recorded.
    fn counting(starts: Arc<Mutex<Vec<Instant>>>) -> impl Fn(Want) -> usize + Send + Sync + 'static {
        move |_| {
            let mut s = starts.lock().unwrap();
            s.push(Instant::now());
            s.len()
        }
    }

    fn spawn_get<T: Clone + Send + Sync + 'static>(c: &Arc<Coalescer<T>>) -> tokio::task::JoinHandle<Option<T>> {
        let c = c.clone();
        tokio::spawn(async move { c.get(Want::METRICS).await })
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_render() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(Coalescer::start(SPACING, counting(starts.clone())));
        let waiting: Vec<_> = (0..64).map(|_| spawn_get(&c)).collect();
        for w in waiting {
            assert!(matches!(w.await.unwrap(), Some(1 | 2)));
        }
        assert!((1..=2).contains(&starts.lock().unwrap().len()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_after_a_render_started_waits_for_the_next() {
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (gate_tx, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let runs = AtomicU64::new(0);
        let c = Arc::new(Coalescer::start(SPACING, move |_| {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            started_tx.send((n, Instant::now())).unwrap();
            gate.lock().unwrap().recv().unwrap();
            n
        }));
        let first = spawn_get(&c);
        let (n, t1) = started.recv().await.unwrap();
        assert_eq!(n, 1);
        // Arrives while render 1 runs: its numbers may predate the request.
        let second = spawn_get(&c);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some(1));
        let (n, t2) = started.recv().await.unwrap();
        assert_eq!(n, 2);
        assert!(t2 - t1 >= SPACING, "{:?}", t2 - t1);
        gate_tx.send(()).unwrap();
        assert_eq!(second.await.unwrap(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn renders_start_no_more_often_than_the_spacing() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(Coalescer::start(SPACING, counting(starts.clone())));
        let mut last = 0;
        for _ in 0..5 {
            // Each request is answered by a render that started after it.
            let n = c.get(Want::METRICS).await.unwrap();
            assert_eq!(n, last + 1);
            last = n;
        }
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), 5);
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= SPACING, "{:?}", pair[1] - pair[0]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_spacing_still_coalesces() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(Coalescer::start(Duration::ZERO, counting(starts.clone())));
        for want in 1..=3 {
            assert_eq!(c.get(Want::METRICS).await, Some(want));
        }
        let waiting: Vec<_> = (0..16).map(|_| spawn_get(&c)).collect();
        for w in waiting {
            assert!(matches!(w.await.unwrap(), Some(4 | 5)));
        }
        assert!((4..=5).contains(&starts.lock().unwrap().len()));
    }

    #[tokio::test]
    async fn a_render_that_panics_answers_none_and_the_next_one_runs() {
        let runs = AtomicU64::new(0);
        let c = Coalescer::start(Duration::ZERO, move |_| {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            assert!(n > 0, "first render fails (expected in this test)");
            n
        });
        assert_eq!(c.get(Want::METRICS).await, None);
        assert_eq!(c.get(Want::METRICS).await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_render_makes_what_every_request_it_answers_wants() {
        let c = Arc::new(Coalescer::start(SPACING, |want: Want| want));
        // Idle: each alone gets a render of its own want.
        assert_eq!(c.get(Want::STALLS).await, Some(Want::STALLS));
        // Both kinds waiting for the same render: it makes both.
        let a = {
            let c = c.clone();
            tokio::spawn(async move { c.get(Want::METRICS).await })
        };
        let b = {
            let c = c.clone();
            tokio::spawn(async move { c.get(Want::STALLS).await })
        };
        let both = Want { metrics: true, stalls: true };
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (Some(both), Some(both)));
        assert_eq!(c.running_for(), None);
    }
}
