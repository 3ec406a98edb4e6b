//! Background load at a steady rate: a request for each of `items` once per `every`, spread
//! evenly over the period (heartbeats of the simulated nodes, renewals of the held leases),
//! over a few keep-alive connections ("lanes", one request in flight each) on the load
//! generator's async runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use hyper::Method;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::{Conn, Target};
use super::RmLoadError;
use crate::bench::stats::Latencies;

/// What a paced load did.
#[derive(Debug, Default)]
pub struct Paced {
    /// Latency of each operation.
    pub latencies: Latencies,
    /// Operations done.
    pub done: u64,
    /// Operations that failed (an error or a status other than 200).
    pub failed: u64,
    /// Operations started later than due by more than a tenth of the period.
    pub late: u64,
}

/// A request of a paced load: method, path, body.
pub type PacedRequest = (Method, String, Bytes);

/// A running paced load; [`Pacer::stop`] ends it.
pub struct Pacer {
    stop: watch::Sender<bool>,
    lanes: Vec<JoinHandle<Paced>>,
    /// Operations answered with success so far (what a sustained rate counts).
    pub done: Arc<AtomicU64>,
}

impl Pacer {
    /// Sends `request(item)` for every item of `items` once per `every` on `rt`, over `lanes`
    /// connections to `target` (item i on lane i % lanes, opened first); an answer other than
    /// 200 counts as failed.
    pub fn start(
        rt: &Runtime,
        target: &Target,
        items: usize,
        every: Duration,
        lanes: usize,
        request: impl Fn(usize) -> PacedRequest + Send + Sync + 'static,
    ) -> Result<Pacer, RmLoadError> {
        let (stop, _) = watch::channel(false);
        let done = Arc::new(AtomicU64::new(0));
        let request = Arc::new(request);
        let lanes = lanes.max(1);
        let conns = rt.block_on(Conn::open_many(target, lanes))?;
        let handles = conns
            .into_iter()
            .enumerate()
            .map(|(lane, mut conn)| {
                let mine: Vec<usize> = (lane..items).step_by(lanes).collect();
                let (mut stopped, done, request) =
                    (stop.subscribe(), done.clone(), request.clone());
                rt.spawn(async move {
                    let mut out = Paced::default();
                    let n = mine.len().max(1) as u32;
                    let start = Instant::now();
                    let mut round = 0u32;
                    'run: while !mine.is_empty() {
                        let base = start + every * round;
                        for (j, &item) in mine.iter().enumerate() {
                            let due = base + every * j as u32 / n;
                            let now = Instant::now();
                            if due > now {
                                tokio::select! {
                                    _ = tokio::time::sleep_until(due) => {}
                                    _ = stopped.wait_for(|s| *s) => break 'run,
                                }
                            } else if now - due > every / 10 {
                                out.late += 1;
                            }
                            if *stopped.borrow() {
                                break 'run;
                            }
                            let (method, path, body) = request(item);
                            match conn.call(method, &path, body).await {
                                Ok(a) => {
                                    out.latencies.record(a.took);
                                    if a.status == 200 {
                                        // The sustained rate counts answered calls only.
                                        done.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        out.failed += 1;
                                    }
                                }
                                Err(e) => {
                                    tracing::debug!("paced request failed: {e}");
                                    out.failed += 1;
                                }
                            }
                            out.done += 1;
                        }
                        round += 1;
                    }
                    out
                })
            })
            .collect();
        Ok(Pacer {
            stop,
            lanes: handles,
            done,
        })
    }

    /// Stops the lanes (each finishes the request it has in flight) and returns what they did.
    pub fn stop(self, rt: &Runtime) -> Paced {
        self.stop.send_replace(true);
        let mut all = Paced::default();
        for lane in self.lanes {
            match rt.block_on(lane) {
                Ok(p) => {
                    all.latencies.merge(&p.latencies);
                    all.done += p.done;
                    all.failed += p.failed;
                    all.late += p.late;
                }
                // Its counts are lost: at least its call in flight failed.
                Err(e) => {
                    tracing::warn!("a paced lane ended abnormally: {e}");
                    all.failed += 1;
                }
            }
        }
        all
    }
}
