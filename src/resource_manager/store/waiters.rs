//! Who waits for which log record: the handlers waiting for their record to be on disk
//! ([`super::Store::wait`]), by sequence number, each woken once, when its record is durable or
//! failed. A sync wakes only the handlers whose records it covers (a broadcast to every waiter
//! woke each of the 64 clients' handlers at every sync, to find most records still pending).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::committer::{Durable, Failed};

/// What a waiting handler is told: `Ok` once its record is on disk, else why it is not.
pub type Outcome = Result<(), String>;

struct Inner {
    now: Durable,
    pending: BTreeMap<u64, Vec<oneshot::Sender<Outcome>>>,
}

/// How far the log is durable, and the handlers waiting for records beyond.
pub struct Waiters {
    inner: Mutex<Inner>,
}

/// Sends each its outcome (outside the lock: a send wakes a task on another thread).
fn tell(woken: Vec<(oneshot::Sender<Outcome>, Outcome)>) {
    for (tx, outcome) in woken {
        // A handler whose client hung up dropped its receiver: nothing to tell.
        let _ = tx.send(outcome);
    }
}

impl Waiters {
    /// Every record up to `seq` is durable.
    pub fn new(seq: u64) -> Waiters {
        Waiters {
            inner: Mutex::new(Inner {
                now: Durable { seq, failed: None },
                pending: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How far the log is durable now.
    pub fn durable(&self) -> Durable {
        self.lock().now.clone()
    }

    /// What waiting for `seq` gives now, if it is decided.
    fn decided(now: &Durable, seq: u64) -> Option<Outcome> {
        if now.seq >= seq {
            return Some(Ok(()));
        }
        match &now.failed {
            Some(f) if f.covers(seq) => Some(Err(f.error.clone())),
            _ => None,
        }
    }

    /// Waits until record `seq` is durable (`Ok`) or failed (its error).
    pub async fn wait(&self, seq: u64) -> Outcome {
        let rx = {
            let mut g = self.lock();
            if let Some(outcome) = Self::decided(&g.now, seq) {
                return outcome;
            }
            let (tx, rx) = oneshot::channel();
            g.pending.entry(seq).or_default().push(tx);
            rx
        };
        rx.await
            .unwrap_or_else(|_| Err("the log committer stopped".to_string()))
    }

    /// Every record up to `seq` is on disk: their handlers are told.
    pub fn advance(&self, seq: u64) {
        let woken = {
            let mut g = self.lock();
            if seq <= g.now.seq {
                return;
            }
            g.now.seq = seq;
            let later = g.pending.split_off(&(seq + 1));
            let done = std::mem::replace(&mut g.pending, later);
            done.into_values()
                .flatten()
                .map(|tx| (tx, Ok(())))
                .collect::<Vec<_>>()
        };
        tell(woken);
    }

    /// The records `failed.first..=failed.last` failed: their handlers get the error (a
    /// poisoned log's failure, `0..=u64::MAX`, stays: nothing more becomes durable).
    pub fn fail(&self, failed: Failed) {
        let woken = {
            let mut g = self.lock();
            if g.now.failed.as_ref().is_some_and(|f| f.last == u64::MAX) {
                return;
            }
            let first = failed.first.max(g.now.seq + 1);
            let keys: Vec<u64> = if first <= failed.last {
                g.pending
                    .range(first..=failed.last)
                    .map(|(k, _)| *k)
                    .collect()
            } else {
                Vec::new()
            };
            let error = failed.error.clone();
            g.now.failed = Some(failed);
            keys.into_iter()
                .filter_map(|k| g.pending.remove(&k))
                .flatten()
                .map(|tx| (tx, Err(error.clone())))
                .collect::<Vec<_>>()
        };
        tell(woken);
    }

    /// The log stopped: whoever still waits is told so, and so is whoever waits later.
    pub fn close(&self) {
        let woken = {
            let mut g = self.lock();
            if !g.now.failed.as_ref().is_some_and(|f| f.last == u64::MAX) {
                g.now.failed = Some(Failed {
                    first: g.now.seq + 1,
                    last: u64::MAX,
                    error: "the state log was closed".to_string(),
                });
            }
            std::mem::take(&mut g.pending)
                .into_values()
                .flatten()
                .map(|tx| (tx, Err("the state log was closed".to_string())))
                .collect::<Vec<_>>()
        };
        tell(woken);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    type Wait<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

    /// Polls once: `None` while still waiting.
    fn poll(f: &mut Wait<'_>) -> Option<Outcome> {
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(o) => Some(o),
            Poll::Pending => None,
        }
    }

    fn waiting(w: &Waiters, seqs: std::ops::RangeInclusive<u64>) -> Vec<Wait<'_>> {
        let mut all: Vec<Wait<'_>> = seqs.map(|s| Box::pin(w.wait(s)) as Wait<'_>).collect();
        for f in &mut all {
            assert_eq!(poll(f), None, "nothing is durable yet");
        }
        all
    }

    fn failed(first: u64, last: u64, error: &str) -> Failed {
        Failed {
            first,
            last,
            error: error.into(),
        }
    }

    #[test]
    fn a_sync_answers_exactly_the_records_it_covers() {
        let w = Waiters::new(2);
        assert_eq!(poll(&mut (Box::pin(w.wait(2)) as Wait<'_>)), Some(Ok(())));
        let mut f = waiting(&w, 3..=7);
        w.advance(5);
        let now: Vec<_> = f.iter_mut().map(poll).collect();
        assert_eq!(now, [Some(Ok(())), Some(Ok(())), Some(Ok(())), None, None]);
        // An older position changes nothing.
        w.advance(4);
        assert_eq!(poll(&mut f[3]), None);
        assert_eq!(w.durable().seq, 5);
        w.advance(7);
        assert_eq!(poll(&mut f[3]), Some(Ok(())));
        assert_eq!(poll(&mut f[4]), Some(Ok(())));
    }

    #[test]
    fn a_failed_batch_fails_its_records_only_and_poison_fails_every_later_one() {
        let w = Waiters::new(0);
        let mut f = waiting(&w, 1..=6);
        w.advance(2);
        w.fail(failed(3, 4, "disk full"));
        let now: Vec<_> = f.iter_mut().map(poll).collect();
        let err = |m: &str| Some(Err(m.to_string()));
        assert_eq!(
            now,
            [
                Some(Ok(())),
                Some(Ok(())),
                err("disk full"),
                err("disk full"),
                None,
                None
            ]
        );
        // A late waiter of a failed record hears it at once.
        assert_eq!(
            poll(&mut (Box::pin(w.wait(4)) as Wait<'_>)),
            err("disk full")
        );
        w.fail(failed(0, u64::MAX, "poisoned"));
        assert_eq!(poll(&mut f[4]), err("poisoned"));
        assert_eq!(poll(&mut f[5]), err("poisoned"));
        // Poison stays: a later batch's failure does not replace it, nothing new waits.
        w.fail(failed(10, 11, "other"));
        assert_eq!(
            poll(&mut (Box::pin(w.wait(100)) as Wait<'_>)),
            err("poisoned")
        );
    }

    #[test]
    fn closing_answers_whoever_still_waits() {
        let w = Waiters::new(0);
        let mut f = waiting(&w, 1..=2);
        w.advance(1);
        w.close();
        assert_eq!(poll(&mut f[0]), Some(Ok(())));
        assert!(matches!(poll(&mut f[1]), Some(Err(m)) if m.contains("closed")));
    }

    #[test]
    fn after_close_every_wait_for_an_undecided_record_fails_at_once() {
        let w = Waiters::new(3);
        let mut before = waiting(&w, 4..=4);
        w.close();
        let closed = Some(Err("the state log was closed".to_string()));
        assert_eq!(poll(&mut before[0]), closed);
        // A wait that starts later is not left hanging either; a durable record stays durable.
        assert_eq!(poll(&mut (Box::pin(w.wait(9)) as Wait<'_>)), closed);
        assert_eq!(poll(&mut (Box::pin(w.wait(3)) as Wait<'_>)), Some(Ok(())));
    }
}
