//! The control thread of a shm domain: watches every connection's socket and fails the queue
//! pair as soon as its peer goes away (exit, crash, SIGKILL, or `disconnect`), and accepts the
//! connections of the domain's listeners.
//!
//! The data path never makes a system call, so it cannot notice a dead peer by itself; this
//! thread does, in one `epoll_wait`, and then moves the queue pair to the error state and wakes
//! waiters so that outstanding receives flush.
//!
//! Listeners are served by the same thread ([`Control::watch_readable`]) rather than by a
//! thread of their own: starting a thread cost a fresh executor about 30-50 µs (of one core)
//! before it could report that it listens.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use super::qp::QpShared;
use crate::rdma::error::{FabricError, Result};

/// What the control thread calls when a descriptor it watches for it becomes readable.
pub(crate) trait OnReadable: Send + Sync {
    /// Handles the readiness; must not block for long (the thread also watches connections).
    fn on_readable(&self);
}

struct Shared {
    epfd: OwnedFd,
    /// Registered in epoll under token 0; written on drop so the thread stops at once.
    stop_fd: OwnedFd,
    conns: Mutex<HashMap<u64, Weak<QpShared>>>,
    readable: Mutex<HashMap<u64, Arc<dyn OnReadable>>>,
    next: AtomicU64,
    stop: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("epfd", &self.epfd)
            .field("conns", &self.conns)
            .field("next", &self.next)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

/// Handle on the control thread; stops and joins it on drop.
#[derive(Debug)]
pub(crate) struct Control {
    sh: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    pub(crate) fn start() -> Result<Control> {
        // SAFETY: plain epoll instance creation; result checked.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(FabricError::io(
                "epoll_create1",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_fd = crate::rdma::notify::new_eventfd()?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: valid epoll fd, valid eventfd, valid event pointer.
        if unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stop_fd.as_raw_fd(),
                &mut ev,
            )
        } != 0
        {
            return Err(FabricError::io(
                "epoll_ctl add",
                std::io::Error::last_os_error(),
            ));
        }
        let sh = Arc::new(Shared {
            epfd,
            stop_fd,
            conns: Mutex::new(HashMap::new()),
            readable: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        let s2 = sh.clone();
        let thread = std::thread::Builder::new()
            .name("rfaas-shm-ctl".into())
            .spawn(move || run(&s2))
            .map_err(|e| FabricError::io("spawn shm control thread", e))?;
        Ok(Control {
            sh,
            thread: Some(thread),
        })
    }

    /// Starts watching a queue pair's socket; returns the token to `forget` it with.
    pub(crate) fn watch(&self, qp: &Arc<QpShared>, sock: RawFd) -> Result<u64> {
        let token = self.sh.next.fetch_add(1, Ordering::Relaxed);
        self.sh
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, Arc::downgrade(qp));
        let events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR;
        if let Err(e) = self.epoll_add(sock, events, token) {
            self.forget(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Adds `fd` (which the caller keeps open while it is watched) to the epoll set for
    /// `events`, reported under `token`.
    fn epoll_add(&self, fd: RawFd, events: libc::c_int, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: valid epoll fd, `fd` open (the caller's contract), valid event pointer.
        let r =
            unsafe { libc::epoll_ctl(self.sh.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r != 0 {
            return Err(FabricError::io(
                "epoll_ctl add",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Calls `what` on the control thread whenever `fd` is readable (level-triggered), until
    /// [`Control::forget_readable`]; the token to forget it with. `fd` must stay open until then.
    pub(crate) fn watch_readable(&self, fd: RawFd, what: Arc<dyn OnReadable>) -> Result<u64> {
        let token = self.sh.next.fetch_add(1, Ordering::Relaxed);
        self.sh
            .readable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, what);
        if let Err(e) = self.epoll_add(fd, libc::EPOLLIN, token) {
            self.sh
                .readable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
            return Err(e);
        }
        Ok(token)
    }

    /// Stops watching `fd` (registered under `token`): no call starts after this returns (one
    /// running on the control thread may still finish).
    pub(crate) fn forget_readable(&self, token: u64, fd: RawFd) {
        // SAFETY: removing a descriptor the caller still holds open from this epoll instance.
        unsafe {
            libc::epoll_ctl(
                self.sh.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        self.sh
            .readable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }

    /// Stops watching (the socket is removed from epoll when it is closed).
    pub(crate) fn forget(&self, token: u64) {
        self.sh
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::Release);
        let _ = nix::unistd::write(&self.sh.stop_fd, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            // The control thread itself can drop the last handle on the domain (through the last
            // queue pair it failed); it then exits on its own instead of joining itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn run(sh: &Shared) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
    while !sh.stop.load(Ordering::Acquire) {
        // SAFETY: `events` is a valid buffer of 32 entries; the stop eventfd wakes it on drop.
        let n = unsafe { libc::epoll_wait(sh.epfd.as_raw_fd(), events.as_mut_ptr(), 32, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!("shm control thread: epoll_wait: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            continue;
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == 0 {
                continue; // the stop eventfd; the loop condition sees `stop`
            }
            let readable = sh
                .readable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&token)
                .cloned();
            if let Some(what) = readable {
                what.on_readable();
                continue;
            }
            let qp = sh
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
            let Some(qp) = qp.and_then(|w| w.upgrade()) else {
                continue;
            };
            // Nothing is sent on the socket after the handshake: any event means the peer closed
            // it (exit, crash or disconnect).
            let fd = qp.sock.as_raw_fd();
            // SAFETY: removing a still-open socket that this epoll instance watches.
            unsafe {
                libc::epoll_ctl(
                    sh.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
            if !qp.closed.load(Ordering::Acquire) {
                tracing::info!(
                    qp = qp.qp_num,
                    peer_pid = qp.peer.pid,
                    "shm peer disconnected"
                );
            }
            qp.fail();
        }
    }
}
