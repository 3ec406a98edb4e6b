//! The progress thread: one per domain, so that one-sided operations land with no action by the
//! target application.
//!
//! It waits in an epoll on the streams of the domain's queue pairs and drives any stream that
//! turns readable (reads frames, applies writes and atomics, answers reads, pushes completions
//! and wakes waiters). Streams are registered one-shot: an event disarms the stream until it is
//! re-armed. If an application thread holds the stream's reader when the event comes, the
//! thread leaves the stream to it and that reader re-arms it when it lets go, so the progress
//! thread never spins on a stream it cannot read (on a 2-core machine such spinning would
//! preempt the very thread that holds the reader).
//!
//! When the application busy-polls a CQ (its poll counter keeps moving and it has not armed the
//! CQ to block), `poll` drives that CQ's streams itself and the progress thread only gets in the
//! way: its wake-ups cost a cross-CPU hand-off per message. So when such a stream turns
//! readable, the thread *delegates* it: it stops watching it for readability (hang-ups still
//! wake it) and looks again every [`DELEGATED_TICK`]; once the polling stops (or at once, when
//! the application arms the CQ to block), it watches the stream again. A one-sided operation
//! therefore lands within about two ticks even when an application stops polling without
//! arming, and immediately when it blocks.
//!
//! The same loop runs the timers: receiver-not-ready, the answer timeout, held-back
//! acknowledgements, and re-arming streams whose event someone else consumed.

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::qp::{lock, Interest, QpInner};
use crate::rdma::error::{FabricError, Result};
use crate::rdma::notify::new_eventfd;

/// Tick while some stream holds a frame for a receive or owes an acknowledgement.
pub(crate) const FAST_TICK: Duration = Duration::from_millis(1);
/// Tick while some stream is delegated to a busy-polling application: how soon a stream is
/// taken back after the polling stops. Every tick costs the polling application a little (on a
/// small machine the progress thread preempts it), so not too often.
pub(crate) const DELEGATED_TICK: Duration = Duration::from_millis(10);
/// Tick otherwise (answer timeouts and the like have coarser deadlines).
pub(crate) const SLOW_TICK: Duration = Duration::from_millis(20);

const WAKE_TOKEN: u64 = 0;

struct Shared {
    epoll: Epoll,
    wake: OwnedFd,
    stop: AtomicBool,
    qps: Mutex<HashMap<u64, Arc<QpInner>>>,
    next_token: AtomicU64,
}

/// Handle on a domain's progress thread; stops it on drop.
pub(crate) struct Progress {
    sh: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

fn ev_flags(i: Interest) -> EpollFlags {
    match i {
        Interest::On => EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT,
        _ => EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT,
    }
}

impl Progress {
    /// Starts the thread.
    pub(crate) fn start() -> Result<Progress> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = new_eventfd()?;
        epoll.add(
            wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
        )?;
        let sh = Arc::new(Shared {
            epoll,
            wake,
            stop: AtomicBool::new(false),
            qps: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(WAKE_TOKEN + 1),
        });
        let sh2 = sh.clone();
        let thread = std::thread::Builder::new()
            .name("rfaas-tcp-progress".into())
            .spawn(move || run(sh2))
            .map_err(|e| FabricError::io("spawn tcp progress thread", e))?;
        Ok(Progress {
            sh,
            thread: Some(thread),
        })
    }

    /// A fresh epoll token for a queue pair.
    pub(crate) fn new_token(&self) -> u64 {
        self.sh.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts watching `qp`'s stream for readability.
    pub(crate) fn register(&self, qp: &Arc<QpInner>) -> Result<()> {
        lock(&self.sh.qps).insert(qp.token, qp.clone());
        if let Err(e) = self.sh.epoll.add(
            qp.stream.as_fd(),
            EpollEvent::new(ev_flags(Interest::On), qp.token),
        ) {
            lock(&self.sh.qps).remove(&qp.token);
            return Err(FabricError::io("epoll add", std::io::Error::from(e)));
        }
        Ok(())
    }

    /// Changes what is watched on `stream` (caller holds the queue pair's interest lock).
    pub(crate) fn set_interest(&self, stream: &TcpStream, token: u64, want: Interest) {
        let r = match want {
            Interest::Removed => self.sh.epoll.delete(stream.as_fd()),
            i => self
                .sh
                .epoll
                .modify(stream.as_fd(), &mut EpollEvent::new(ev_flags(i), token)),
        };
        if let Err(e) = r {
            tracing::debug!(
                fd = stream.as_raw_fd(),
                "epoll update to {want:?} failed: {e}"
            );
        }
    }

    /// Forgets the queue pair with `token` (its epoll entry must be removed already).
    pub(crate) fn unregister(&self, token: u64) {
        let qp = lock(&self.sh.qps).remove(&token);
        // Drop it outside the lock (it may be the last reference).
        drop(qp);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd; a full counter already wakes.
        unsafe {
            libc::write(self.sh.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
        if let Some(t) = self.thread.take() {
            // The last reference to the domain can be dropped on the progress thread itself
            // (it briefly holds queue pairs): then it just exits on its own.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn run(sh: Arc<Shared>) {
    let mut events = vec![EpollEvent::empty(); 64];
    let mut next_tick = Instant::now() + SLOW_TICK;
    while !sh.stop.load(Ordering::SeqCst) {
        let left = next_tick.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let n = match sh.epoll.wait(&mut events, EpollTimeout::from(ms)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                tracing::error!("tcp progress: epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                0
            }
        };
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        for ev in &events[..n] {
            let token = ev.data();
            if token == WAKE_TOKEN {
                let mut v: u64 = 0;
                // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
                unsafe {
                    libc::read(sh.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
                }
                continue;
            }
            let Some(qp) = lock(&sh.qps).get(&token).cloned() else {
                continue;
            };
            let fl = ev.events();
            qp.fired();
            if fl.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR | EpollFlags::EPOLLRDHUP)
                || !qp.is_connected()
            {
                // The peer closed or the connection broke: read the end of the stream even if
                // a frame waits for a receive or an application thread drives the stream.
                if qp.held.load(Ordering::SeqCst) && qp.is_connected() {
                    qp.set_error(super::qp::Cause::PeerGone(
                        "closed while a frame waited for a receive".into(),
                    ));
                }
                qp.progress_drive();
                continue;
            }
            if qp.busy_polled(now) {
                qp.delegate();
                next_tick = next_tick.min(now + DELEGATED_TICK);
                continue;
            }
            qp.progress_drive();
        }
        if now >= next_tick {
            let qps: Vec<Arc<QpInner>> = lock(&sh.qps).values().cloned().collect();
            let mut every = SLOW_TICK;
            for qp in &qps {
                every = every.min(qp.tick(now));
            }
            next_tick = now + every;
        }
    }
}
