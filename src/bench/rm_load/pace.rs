//! Background load at a steady rate: each of `items` once per `every`, spread evenly over the
//! period (heartbeats of the simulated nodes, renewals of the held leases), on a few threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bench::stats::Latencies;

/// What a paced load did.
#[derive(Debug, Default)]
pub struct Paced {
    /// Latency of each operation.
    pub latencies: Latencies,
    /// Operations done.
    pub done: u64,
    /// Operations that failed (an error or an unexpected status).
    pub failed: u64,
    /// Operations started later than due by more than a tenth of the period.
    pub late: u64,
}

/// Sleeps until `due` in short slices; `false` if `stop` was set meanwhile.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(50)));
    }
}

/// A running paced load; [`Pacer::stop`] ends it.
pub struct Pacer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    out: Arc<Mutex<Paced>>,
    /// Operations done so far.
    pub done: Arc<AtomicU64>,
}

impl Pacer {
    /// Runs `op(state, item)` for every item of `items` once per `every`, on `threads` threads
    /// (item i on thread i % threads, each with its own `state` from `make`). `op` returns
    /// whether the operation succeeded.
    pub fn start<S: Send + 'static>(
        items: usize,
        every: Duration,
        threads: usize,
        make: impl Fn() -> S,
        op: impl Fn(&mut S, usize) -> (bool, Duration) + Send + Sync + 'static,
    ) -> Pacer {
        let stop = Arc::new(AtomicBool::new(false));
        let out = Arc::new(Mutex::new(Paced::default()));
        let done = Arc::new(AtomicU64::new(0));
        let op = Arc::new(op);
        let threads = threads.max(1);
        let handles = (0..threads)
            .map(|t| {
                let mine: Vec<usize> = (t..items).step_by(threads).collect();
                let (stop, out, done, op) = (stop.clone(), out.clone(), done.clone(), op.clone());
                let mut state = make();
                std::thread::spawn(move || {
                    let mut local = Paced::default();
                    let n = mine.len().max(1) as u32;
                    let start = Instant::now();
                    let mut round = 0u32;
                    'run: loop {
                        let base = start + every * round;
                        for (j, &item) in mine.iter().enumerate() {
                            if stop.load(Ordering::Relaxed) {
                                break 'run;
                            }
                            let due = base + every * j as u32 / n;
                            let now = Instant::now();
                            if due > now {
                                if !sleep_until(due, &stop) {
                                    break 'run;
                                }
                            } else if now - due > every / 10 {
                                local.late += 1;
                            }
                            let (ok, took) = op(&mut state, item);
                            local.latencies.record(took);
                            local.done += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                            if !ok {
                                local.failed += 1;
                            }
                        }
                        if mine.is_empty() {
                            break;
                        }
                        round += 1;
                    }
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    o.latencies.merge(&local.latencies);
                    o.done += local.done;
                    o.failed += local.failed;
                    o.late += local.late;
                })
            })
            .collect();
        Pacer {
            stop,
            threads: handles,
            out,
            done,
        }
    }

    /// Stops the threads and returns what they did.
    pub fn stop(self) -> Paced {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.out.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
