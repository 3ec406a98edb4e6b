//! The manager's side of the zygote, the fork server its executors are started from
//! ([`crate::executor::zygote`] says why and how).
//!
//! * [`Zygote`] starts the zygote process (the manager's executor executable, with
//!   [`ZYGOTE_ENV`] set and a `SOCK_SEQPACKET` socket as its standard input) on first use, and
//!   a new one when it died or stopped answering. One that ended before it forked anything is
//!   not tried again for [`RETRY_AFTER`]; meanwhile executors are started with `exec`, as they
//!   are when a fork request fails.
//! * [`Zygote::fork`] makes the child's pipes and hands their other ends to the zygote with the
//!   request (an id of its own); the answer is the child's pid and a pidfd of it. A reader
//!   task receives the answers and the children's exit statuses (the zygote reaps them), which
//!   it hands to the [`ForkedChild`] of each.
//! * The manager signals a child through its pidfd (`pidfd_send_signal`): never another
//!   process that got its pid, and not through the zygote, so a stopped or hung zygote does not
//!   keep a child alive that the manager kills. A child whose end the zygote does not report
//!   within [`UNREPORTED_GRACE`] of its pidfd saying it ended counts as ended all the same.
//! * A zygote that does not answer a fork request within [`FORK_ANSWER_TIMEOUT`] (or whose
//!   socket fails) is retired: it gets no more requests, and is killed once its last child
//!   ended (through its pidfd). When a zygote dies, its children die too (their `PR_SET_PDEATHSIG`): each is
//!   reported killed by SIGKILL once its pidfd says it is gone.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::{oneshot, watch};

use crate::executor::zygote::{ZygoteReply, ZygoteRequest, FORK_FDS, MAX_MESSAGE, ZYGOTE_ENV};

use super::spawn::{open_log, open_streams, ExecutorImage, ExecutorStdin, ExecutorStdout};

/// Longest wait for the zygote to answer a fork request before the executor is started with
/// `exec` instead and the zygote retired (a fork takes well under a millisecond).
pub const FORK_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long after a zygote that did not work the next one is tried.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a signalled child's end may go unreported by its zygote once its pidfd says it
/// ended (a stopped or hung zygote reports nothing).
pub const UNREPORTED_GRACE: Duration = Duration::from_millis(200);

/// How often a signalled child's pidfd is looked at.
const PIDFD_POLL: Duration = Duration::from_millis(5);

/// How often any other child's pidfd is looked at (its zygote reports its end at once, unless
/// the zygote is stopped or hung).
const PIDFD_IDLE_POLL: Duration = Duration::from_secs(1);

/// How long, once a zygote is gone, each of its children is waited for (they were sent
/// SIGKILL by the kernel) before it is reported killed.
const ORPHAN_WAIT: Duration = Duration::from_secs(2);

/// Raw wait status of a process killed by SIGKILL: what a zygote's children get when it dies.
const KILLED: i32 = Signal::SIGKILL as i32;

/// The manager's zygote: started on first use, replaced when it dies.
#[derive(Debug)]
pub struct Zygote {
    /// What it and its children are started from.
    image: ExecutorImage,
    /// Its own log.
    log: PathBuf,
    slot: Mutex<Slot>,
}

/// The running zygote, and what restarting one takes into account.
#[derive(Debug, Default)]
struct Slot {
    link: Option<Arc<Link>>,
    /// No new zygote before this (the last one did not work).
    retry_at: Option<Instant>,
    /// Zygotes that ended and were (or will be) replaced.
    replaced: u64,
}

/// One running zygote.
#[derive(Debug)]
pub struct Link {
    pid: u32,
    /// The zygote's pidfd: signalled through it, never a process that reused its pid once the
    /// reader task reaped it.
    pidfd: OwnedFd,
    /// A `SOCK_SEQPACKET` socket: tokio's datagram type waits for it to be readable, and the
    /// messages are read and written with `recvmsg` and `sendmsg` (they carry descriptors).
    socket: UnixDatagram,
    state: Mutex<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Fork requests sent and not answered yet, by id.
    forks: HashMap<u64, oneshot::Sender<Result<ForkedChild, String>>>,
    next_id: u64,
    /// Live children: where their exit status goes, and their pidfd.
    exits: HashMap<u32, (watch::Sender<Option<i32>>, Arc<OwnedFd>)>,
    /// It takes no more requests (it ended, failed, or was retired).
    closed: bool,
    /// Retired: it is killed once its last child ended.
    retired: bool,
    /// Children it forked.
    forked: u64,
}

/// A child of the zygote, as the manager holds it.
#[derive(Debug)]
pub struct ForkedChild {
    /// Its pid.
    pub pid: u32,
    link: std::sync::Weak<Link>,
    pidfd: Arc<OwnedFd>,
    exit: watch::Receiver<Option<i32>>,
    /// Signalled: its pidfd is looked at often ([`PIDFD_POLL`]).
    signalled: bool,
}

impl Zygote {
    /// A zygote of `image` logging to `log`, started on first use.
    pub fn new(image: ExecutorImage, log: PathBuf) -> Zygote {
        Zygote {
            image,
            log,
            slot: Mutex::new(Slot::default()),
        }
    }

    /// Starts the zygote now unless it runs. Call it from a thread that lives as long as the
    /// manager (the runtime's main thread or a worker thread, never a blocking-pool thread):
    /// the zygote's death signal fires when the thread that started it exits.
    pub fn prepare(&self) {
        if let Err(e) = self.link() {
            tracing::warn!("{e}");
        }
    }

    /// The pid of the running zygote, if one runs.
    pub fn pid(&self) -> Option<u32> {
        let slot = lock(&self.slot);
        slot.link
            .as_ref()
            .filter(|l| !l.state().closed)
            .map(|l| l.pid)
    }

    /// Forks an executor with its standard error appended to `log`; `standby`: the cores it
    /// waits on for its configuration; `pooled`: for the pool (it makes its memory its own while
    /// it waits). An error says why the caller should start it with `exec`.
    pub async fn fork(
        &self,
        log: &Path,
        standby: Option<&[u32]>,
        pooled: bool,
    ) -> Result<(ForkedChild, ExecutorStdin, ExecutorStdout), String> {
        let link = self.link()?;
        let (theirs, ours) = open_streams(log)
            .map_err(|e| format!("executor streams (log {}): {e}", log.display()))?;
        let (id, answer) = link.request(
            standby.map(super::config::format_cpulist),
            pooled,
            theirs.each_ref().map(|fd| fd.as_fd()),
        )?;
        drop(theirs);
        let child = match tokio::time::timeout(FORK_ANSWER_TIMEOUT, answer).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err("the zygote ended".into()),
            Err(_) => {
                // Its children are left alone; the next fork starts another zygote. A late
                // answer finds no one waiting: that child is killed.
                link.state().forks.remove(&id);
                link.retire(&format!(
                    "did not answer a fork request within {FORK_ANSWER_TIMEOUT:?}"
                ));
                return Err("the zygote did not answer".into());
            }
        };
        let (stdin, stdout) = ours
            .into_pipes()
            .map_err(|e| format!("executor streams: {e}"))?;
        Ok((child, stdin, stdout))
    }

    /// The running zygote, started if none runs.
    fn link(&self) -> Result<Arc<Link>, String> {
        let mut slot = lock(&self.slot);
        if let Some(old) = &slot.link {
            let st = old.state();
            if !st.closed {
                drop(st);
                return Ok(old.clone());
            }
            // One that ended before it forked anything does not work (a binary without the
            // zygote, a start-up that fails): not again at every allocation.
            let useless = st.forked == 0;
            drop(st);
            slot.link = None;
            slot.replaced += 1;
            if useless {
                slot.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
        if slot.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err("no zygote (the last one did not work)".into());
        }
        let started = match Link::start(&self.image, &self.log) {
            Ok(l) => l,
            Err(e) => {
                slot.retry_at = Some(Instant::now() + RETRY_AFTER);
                return Err(e);
            }
        };
        match slot.replaced {
            0 => tracing::info!(pid = started.pid, "executor zygote started"),
            n => tracing::warn!(pid = started.pid, replaced = n, "executor zygote restarted"),
        }
        slot.link = Some(started.clone());
        Ok(started)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Its executors were stopped before (a manager's shutdown stops them first).
        if let Some(link) = lock(&self.slot).link.take() {
            link.kill("");
        }
    }
}

impl Link {
    /// Starts a zygote and the task that reads its answers.
    fn start(image: &ExecutorImage, log: &Path) -> Result<Arc<Link>, String> {
        let fail = |e: std::io::Error| format!("cannot start the executor zygote: {e}");
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| fail(e.into()))?;
        // The zygote's end blocks: it waits in `poll` and answers at once.
        rustix::io::ioctl_fionbio(&theirs, false).map_err(|e| fail(e.into()))?;
        let log = open_log(log).map_err(fail)?;
        let mut child = image
            .command(log)
            .env(ZYGOTE_ENV, "1")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()
            .map_err(fail)?;
        let Some(pid) = child.id() else {
            return Err(fail(std::io::Error::other("it exited at once")));
        };
        // Opened before anything can reap it (only the reader task below does).
        let pidfd = crate::executor::zygote::pidfd_of(pid)
            .map_err(|e| fail(std::io::Error::other(format!("pidfd_open: {e}"))))?;
        let link = Arc::new(Link {
            pid,
            pidfd,
            socket: UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(ours))
                .map_err(fail)?,
            state: Mutex::new(LinkState::default()),
        });
        let reader = link.clone();
        tokio::spawn(async move {
            let why = reader.read_answers().await;
            // No more requests; it is reaped before its children are reported.
            reader.close(&why);
            let _ = child.start_kill();
            let status = child.wait().await;
            let (forked, orphans) = {
                let mut st = reader.state();
                (st.forked, st.exits.drain().collect::<Vec<_>>())
            };
            match status {
                Ok(s) if why.is_empty() && orphans.is_empty() => {
                    tracing::debug!(pid, forked, "executor zygote {s}")
                }
                s => tracing::warn!(
                    pid,
                    forked,
                    executors = orphans.len(),
                    "executor zygote gone ({}; {}): its executors die with it",
                    if why.is_empty() { "exited" } else { &why },
                    s.map_or_else(|e| e.to_string(), super::spawn::exit_reason)
                ),
            }
            // Sent SIGKILL by the kernel as the zygote died (and here once more, through their
            // pidfds, should that have missed one): reported once gone.
            for (_, (_, pidfd)) in &orphans {
                let _ = rustix::process::pidfd_send_signal(&**pidfd, rustix::process::Signal::KILL);
            }
            let until = Instant::now() + ORPHAN_WAIT;
            for (pid, (tx, pidfd)) in orphans {
                while !ended(&pidfd) && Instant::now() < until {
                    tokio::time::sleep(PIDFD_POLL).await;
                }
                if !ended(&pidfd) {
                    tracing::error!(pid, "executor still alive {ORPHAN_WAIT:?} after SIGKILL");
                }
                let _ = tx.send(Some(KILLED));
            }
        });
        Ok(link)
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        lock(&self.state)
    }

    /// Sends a fork request with the child's descriptors; its id, and the receiver of the
    /// answer.
    fn request(
        &self,
        standby: Option<String>,
        pooled: bool,
        fds: [std::os::fd::BorrowedFd<'_>; FORK_FDS],
    ) -> Result<(u64, oneshot::Receiver<Result<ForkedChild, String>>), String> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FORK_FDS))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err("descriptors do not fit the message".into());
        }
        let mut st = self.state();
        if st.closed {
            return Err("the zygote takes no more requests".into());
        }
        st.next_id += 1;
        let id = st.next_id;
        let doc = serde_json::to_vec(&ZygoteRequest::Fork {
            id,
            standby,
            pooled,
        })
        .map_err(|e| e.to_string())?;
        // Registered before it is sent: the answer may come at once.
        let (tx, rx) = oneshot::channel();
        st.forks.insert(id, tx);
        drop(st);
        let sent = rustix::net::sendmsg(
            &self.socket,
            &[IoSlice::new(&doc)],
            &mut ancillary,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        );
        match sent {
            Ok(_) => Ok((id, rx)),
            Err(e) => {
                self.state().forks.remove(&id);
                let why = format!("sending a fork request failed: {e}");
                match e {
                    // A full socket is no reason to give the zygote up (this one is exec'd).
                    rustix::io::Errno::AGAIN => {}
                    // It is gone: its reader task sees the end too.
                    rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET => self.close(&why),
                    // Its executors are left alone; the next fork starts another zygote.
                    _ => self.retire(&why),
                }
                Err(format!("cannot reach the zygote: {e}"))
            }
        }
    }

    /// Reads answers until the socket closes or fails; why it stopped ("" when it closed).
    async fn read_answers(self: &Arc<Self>) -> String {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let received = self
                .socket
                .async_io(Interest::READABLE, || {
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
                    let msg = rustix::net::recvmsg(
                        &self.socket,
                        &mut [IoSliceMut::new(&mut buf)],
                        &mut ancillary,
                        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
                    )?;
                    let fd = ancillary.drain().find_map(|m| match m {
                        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
                        _ => None,
                    });
                    Ok((msg.bytes, fd))
                })
                .await;
            let (n, fd) = match received {
                Ok(r) => r,
                Err(e) => return e.to_string(),
            };
            if n == 0 {
                return String::new();
            }
            match serde_json::from_slice::<ZygoteReply>(&buf[..n.min(buf.len())]) {
                Ok(reply) => self.answer(reply, fd),
                Err(e) => return format!("it sent a malformed answer: {e}"),
            }
        }
    }

    fn answer(self: &Arc<Self>, reply: ZygoteReply, pidfd: Option<OwnedFd>) {
        let mut st = self.state();
        match reply {
            ZygoteReply::Forked { id, pid } => {
                let waiter = st.forks.remove(&id);
                let Some(pidfd) = pidfd else {
                    drop(st);
                    tracing::error!(pid, "executor zygote: a child without its pidfd");
                    if let Some(w) = waiter {
                        let _ = w.send(Err("the zygote sent no pidfd".into()));
                    }
                    return;
                };
                st.forked += 1;
                let pidfd = Arc::new(pidfd);
                let (tx, rx) = watch::channel(None);
                st.exits.insert(pid, (tx, pidfd.clone()));
                let child = ForkedChild {
                    pid,
                    link: Arc::downgrade(self),
                    pidfd,
                    exit: rx,
                    signalled: false,
                };
                // Unlocked first: a child nobody waits for any more is dropped, which kills it.
                drop(st);
                match waiter {
                    Some(w) => {
                        let _ = w.send(Ok(child));
                    }
                    None => drop(child),
                }
            }
            ZygoteReply::ForkFailed { id, error } => {
                if let Some(w) = st.forks.remove(&id) {
                    let _ = w.send(Err(format!("the zygote could not fork: {error}")));
                } else {
                    tracing::warn!("executor zygote: {error}");
                }
            }
            ZygoteReply::Exited { pid, status } => {
                if let Some((tx, _)) = st.exits.remove(&pid) {
                    let _ = tx.send(Some(status));
                }
                if st.retired && st.exits.is_empty() {
                    drop(st);
                    self.kill("");
                }
            }
        }
    }

    /// Takes no more requests; waiting requests fail.
    fn close(&self, why: &str) {
        let mut st = self.state();
        if !st.closed && !why.is_empty() {
            tracing::warn!(pid = self.pid, "executor zygote: {why}");
        }
        st.closed = true;
        // Dropped senders: their requests fail.
        st.forks.clear();
    }

    /// Takes no more requests, and is killed once its last child ended (it may not answer
    /// any more: it is not asked to exit).
    fn retire(&self, why: &str) {
        self.close(why);
        let mut st = self.state();
        st.retired = true;
        let idle = st.exits.is_empty();
        drop(st);
        if idle {
            self.kill("");
        }
    }

    /// A child whose end its zygote did not report: no longer waited for.
    fn forget(&self, pid: u32) {
        let mut st = self.state();
        st.exits.remove(&pid);
        let idle = st.retired && st.exits.is_empty();
        drop(st);
        if idle {
            self.kill("");
        }
    }

    /// Takes no more requests and kills the zygote now (its children die with it).
    fn kill(&self, why: &str) {
        self.close(why);
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
    }
}

/// Whether the process of `pidfd` ended (its pidfd is readable then).
fn ended(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

impl ForkedChild {
    /// Sends `signal` to it through its pidfd (nothing once it ended).
    pub fn signal(&mut self, signal: Signal) {
        if self.exit.borrow().is_some() {
            return;
        }
        self.signalled = true;
        if let Some(sig) = rustix::process::Signal::from_named_raw(signal as i32) {
            let _ = rustix::process::pidfd_send_signal(&*self.pidfd, sig);
        }
    }

    /// Waits until it ended: its raw wait status, as its zygote reported it; `None` when its
    /// pidfd says it ended but its zygote did not say how within [`UNREPORTED_GRACE`] (a
    /// stopped or hung zygote). The pidfd is looked at every [`PIDFD_POLL`] once the child
    /// was signalled, else every [`PIDFD_IDLE_POLL`].
    pub async fn wait(&mut self) -> Option<i32> {
        let mut ended_at: Option<Instant> = None;
        loop {
            let poll = match (self.signalled, ended_at) {
                (false, None) => PIDFD_IDLE_POLL,
                _ => PIDFD_POLL,
            };
            tokio::select! {
                r = self.exit.wait_for(|s| s.is_some()) => {
                    return Some(r.ok().and_then(|s| *s).unwrap_or(KILLED));
                }
                _ = tokio::time::sleep(poll) => {
                    if !ended(&self.pidfd) {
                        continue;
                    }
                    let at = *ended_at.get_or_insert_with(Instant::now);
                    if at.elapsed() >= UNREPORTED_GRACE {
                        if let Some(link) = self.link.upgrade() {
                            tracing::warn!(pid = self.pid, zygote = link.pid, "executor ended, and its zygote did not report how");
                            link.forget(self.pid);
                        }
                        return None;
                    }
                }
            }
        }
    }

    /// Whether it ended.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some() || ended(&self.pidfd)
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        // As `kill_on_drop` does for a spawned one.
        self.signal(Signal::SIGKILL);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
