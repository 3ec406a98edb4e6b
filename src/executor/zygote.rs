//! The zygote: a fork server that starts executors without `exec`.
//!
//! Starting an executor with `exec` costs about 1.4 ms on a virtual machine before its first
//! line of Rust runs: the dynamic loader, and glibc's start-up, which asks the CPU for its
//! features and caches with dozens of `cpuid` instructions, each a trap to the hypervisor
//! (7 µs each on the project's VM). `fork` of a process that has done all that costs about
//! 70 µs. So an executor manager starts one executor process as its *zygote*
//! (`rfaas executor` with [`ZYGOTE_ENV`] set) when it starts, and forks every executor (fresh or
//! pooled) from it (SOCK, ATC'18, does the same for Python functions; Android for its apps).
//!
//! * The zygote never serves an allocation: it holds no token, no library, no tenant's byte, and
//!   opens no fabric; what a child inherits from it is the executor's code, its dynamic
//!   linking and glibc's and Rust's start-up, the same for every tenant. A child is a new
//!   process (new pid) that serves exactly one allocation, as one started with `exec` does.
//! * It talks to its manager over a `SOCK_SEQPACKET` socket on its standard input, one JSON
//!   message per packet ([`ZygoteRequest`], [`ZygoteReply`]). A fork request carries three
//!   descriptors (`SCM_RIGHTS`): the child's standard input, output and error (its log). The
//!   answer carries the child's pid and a pidfd of it, opened before the child can be reaped:
//!   the manager signals the child through it (never another process that reused its pid) and
//!   sees on it that the child ended. The zygote is the child's parent: it reaps it and reports
//!   its wait status.
//! * It has one thread, so `fork` copies all of it. It waits in `poll` for a request or a
//!   `SIGCHLD` (`signalfd`); SIGTERM, SIGINT, SIGHUP and SIGQUIT are blocked (a signal to the
//!   manager's whole process group must not take the zygote, and with it every executor,
//!   before the manager stopped them gracefully); it exits when its manager closes the socket,
//!   and dies with its manager (`PR_SET_PDEATHSIG`); its children die with it (the same), so a
//!   `kill -9` of the manager orphans nothing. Killing the zygote ends the executors it
//!   started, as killing the manager does; the manager starts a new zygote for the next one.
//! * A pooled child makes the memory it still shares with the zygote its own while it waits
//!   for its allocation ([`unshare_memory`]): else its cold start would pay a copy-on-write fault
//!   for each page it first writes to.
//! * What children of one zygote share: its address-space layout (ASLR is drawn once per
//!   zygote), glibc's stack-protector canary and pointer guard, and the keys of hash tables
//!   drawn before the fork (logging's set-up draws them). A tenant's native code can read these
//!   in its own executor and so knows them for the other tenants' executors on the node, which
//!   makes exploiting a memory-safety bug in another tenant's function easier (Android's zygote
//!   has the same property). No secret of the platform is drawn before the fork (tokens come
//!   from the manager with each configuration). Where tenants must not learn that much of each
//!   other, set `executor_start = "exec"` (each executor exec'd: about 1.3 ms more per fresh
//!   cold start on the project's VM).

#![allow(unsafe_code)] // fork(2) in a process of one thread, madvise(2) that writes nothing; each block says why it is sound.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use super::ExecutorError;

/// Environment variable that makes `rfaas executor` (or `rfaas-executor executor`) a zygote
/// (set by the executor manager, which starts it; removed in every child).
pub const ZYGOTE_ENV: &str = "RFAAS_EXECUTOR_ZYGOTE";

/// Largest message either side sends.
pub const MAX_MESSAGE: usize = 4096;

/// Descriptors a fork request carries: the child's standard input, output and error.
pub const FORK_FDS: usize = 3;

/// What the manager asks of its zygote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZygoteRequest {
    /// Fork an executor, with the [`FORK_FDS`] descriptors of the message as its standard
    /// input, output and error. `standby`: the cores a pooled process waits on (a cpulist,
    /// [`super::EARLY_STANDBY_ENV`]); `None` for a fresh executor.
    Fork {
        /// Chosen by the manager; the answer carries it.
        id: u64,
        /// The cores to wait on for a pooled process.
        standby: Option<String>,
        /// A pooled process: it unshares its memory while it waits ([`unshare_memory`]).
        #[serde(default)]
        pooled: bool,
    },
}

/// What the zygote tells its manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZygoteReply {
    /// The answer to fork request `id`: the child's pid, and a pidfd of it
    /// (`pidfd_open`, `SCM_RIGHTS`), which the manager signals it with and sees its end on.
    Forked {
        /// The request's.
        id: u64,
        /// The child's pid.
        pid: u32,
    },
    /// The answer to fork request `id` when it failed (`id` 0: a request that could not be
    /// read).
    ForkFailed {
        /// The request's.
        id: u64,
        /// Why.
        error: String,
    },
    /// Child `pid` ended; `status` is its raw wait status.
    Exited {
        /// The child.
        pid: u32,
        /// As `waitpid` gives it (`ExitStatus::from_raw`).
        status: i32,
    },
}

/// What [`serve`] returns as: the zygote (its manager is gone) or one of its children, with its
/// standard input, output and error in place and the environment of an executor.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// The zygote, done.
    Zygote,
    /// A child: go on as an executor (`main_stdin`).
    Executor,
}

/// Runs the zygote on the socket that is its standard input, until its manager closes it.
/// Returns [`Role::Executor`] in each child it forks.
pub fn serve() -> Result<Role, ExecutorError> {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = nix::sys::prctl::set_name(c"rfaas-zygote");
    // The socket moves off descriptor 0, which /dev/null takes (children get their own).
    let control = std::io::stdin().as_fd().try_clone_to_owned()?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2(null.as_raw_fd(), 0).map_err(std::io::Error::from)?;
    drop(null);
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(ExecutorError::Config(format!(
            "a zygote must have one thread to fork, it has {threads}"
        )));
    }
    // SAFETY: SIG_DFL installs no handler, so no code of ours runs in a signal context.
    // Inherited as ignored (exec keeps an ignored disposition), SIGCHLD would make the kernel
    // reap the children itself, and their exits would go unreported.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) }
        .map_err(std::io::Error::from)?;
    // Blocked, not ignored (its children start with an empty mask and default actions): a
    // SIGTERM to the manager's process group or cgroup (Slurm, systemd) must not end the
    // zygote, and with it every executor, before the manager has stopped them gracefully. The
    // zygote ends when its manager closes the socket.
    let mut blocked = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        blocked.add(sig);
    }
    blocked.thread_block().map_err(std::io::Error::from)?;
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    let signals = SignalFd::with_flags(&sigchld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(std::io::Error::from)?;
    let zygote = nix::unistd::getpid();
    tracing::debug!(pid = zygote.as_raw(), "zygote ready");
    loop {
        let (request, child_exited) = {
            let mut fds = [
                PollFd::new(control.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ExecutorError::Io(e.into())),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        // Drained before reaping: a child that ends after the reaping leaves a signal that
        // wakes the next poll.
        if child_exited {
            while let Ok(Some(_)) = signals.read_signal() {}
            reap(&control)?;
        }
        if !request {
            continue;
        }
        let Some((message, fds)) = receive(&control)? else {
            tracing::debug!("zygote: the manager closed the socket");
            return Ok(Role::Zygote);
        };
        let (id, standby, pooled) = match message {
            Ok(ZygoteRequest::Fork {
                id,
                standby,
                pooled,
            }) => (id, standby, pooled),
            Err(e) => {
                tracing::warn!("zygote: a malformed request ignored: {e}");
                let error = format!("malformed request: {e}");
                send(&control, &ZygoteReply::ForkFailed { id: 0, error }, None)?;
                continue;
            }
        };
        let Ok([stdin, stdout, stderr]) = <[OwnedFd; FORK_FDS]>::try_from(fds) else {
            let error = format!("a fork request must carry {FORK_FDS} descriptors");
            send(&control, &ZygoteReply::ForkFailed { id, error }, None)?;
            continue;
        };
        // SAFETY: this process has exactly one thread (checked above; the loop starts none: it
        // polls, reads, reaps and writes on this thread alone), so the child is a complete
        // copy of it: no lock held by another thread, no allocator or stdio state half-updated.
        // The child goes on in safe code (`Role::Executor`).
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                drop((control, signals));
                become_executor(zygote, [stdin, stdout, stderr], standby, pooled)?;
                return Ok(Role::Executor);
            }
            Ok(ForkResult::Parent { child }) => {
                let pid = child.as_raw() as u32;
                // Opened before the child can be reaped: it is this child, whatever its pid
                // becomes later.
                match pidfd_of(pid) {
                    Ok(fd) => send(&control, &ZygoteReply::Forked { id, pid }, Some(fd.as_fd()))?,
                    Err(e) => {
                        let _ = kill(child, Signal::SIGKILL);
                        let error = format!("pidfd_open: {e} (Linux 5.3 or later needed)");
                        send(&control, &ZygoteReply::ForkFailed { id, error }, None)?;
                    }
                }
            }
            Err(e) => {
                let error = format!("fork: {e}");
                send(&control, &ZygoteReply::ForkFailed { id, error }, None)?;
            }
        }
    }
}

/// A pidfd of process `pid` (`pidfd_open`, Linux 5.3 or later).
pub fn pidfd_of(pid: u32) -> rustix::io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(rustix::io::Errno::SRCH)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
}

/// Whether this process is a pooled child of a zygote (set in the child, before it runs as an
/// executor).
static POOLED_CHILD: AtomicBool = AtomicBool::new(false);

/// Whether this process was forked from a zygote for the pool: it should
/// [`unshare_memory`] while it waits for its allocation.
pub fn pooled_child() -> bool {
    POOLED_CHILD.load(Ordering::Relaxed)
}

/// Writable mappings larger than this are left alone by [`unshare_memory`] (reading their page
/// table entries would cost more than the faults it saves).
const MAX_UNSHARE_MAPPING: u64 = 256 << 20;

/// Takes a private copy of every page this process still shares, copy-on-write, with the zygote
/// it was forked from (present in a private writable mapping, not mapped by this process alone:
/// `/proc/self/pagemap`), without writing to any (`MADV_POPULATE_WRITE`). A pooled executor
/// does this while it waits for its allocation: else the first write to each such page (its
/// heap, the dynamic loader's lists, its stacks) would take a fault and a copy on the cold
/// start's path. Returns how many pages it copied.
pub fn unshare_memory() -> std::io::Result<usize> {
    const PRESENT: u64 = 1 << 63;
    const EXCLUSIVE: u64 = 1 << 56;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")?;
    let mut copied = 0;
    let mut entries = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let perms = perms.as_bytes();
        if perms.len() < 4 || perms[0] != b'r' || perms[3] != b'p' {
            continue;
        }
        let file = fields.nth(3).is_some_and(|path| path.starts_with('/'));
        let Some((start, end)) = range.split_once('-').and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        }) else {
            continue;
        };
        if end <= start || end - start > MAX_UNSHARE_MAPPING {
            continue;
        }
        if perms[1] != b'w' {
            // Code and constants of a file: fork copied none of their page table entries.
            if file {
                populate(start, end - start, libc::MADV_POPULATE_READ);
            }
            continue;
        }
        let pages = ((end - start) / page) as usize;
        entries.resize(pages * 8, 0u8);
        if pagemap
            .read_exact_at(&mut entries, start / page * 8)
            .is_err()
        {
            continue; // unmapped meanwhile
        }
        let shared = |i: usize| {
            let e = u64::from_ne_bytes(entries[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            e & PRESENT != 0 && e & EXCLUSIVE == 0
        };
        let mut run: Option<usize> = None;
        for i in 0..=pages {
            match (i < pages && shared(i), run) {
                (true, None) => run = Some(i),
                (false, Some(first)) => {
                    populate(
                        start + first as u64 * page,
                        (i - first) as u64 * page,
                        libc::MADV_POPULATE_WRITE,
                    );
                    copied += i - first;
                    run = None;
                }
                _ => {}
            }
        }
    }
    Ok(copied)
}

/// Faults `len` bytes from `addr` in, as writable (`MADV_POPULATE_WRITE`: a private copy of
/// each page shared copy-on-write) or readable (`MADV_POPULATE_READ`). Fails quietly (a range
/// unmapped meanwhile).
fn populate(addr: u64, len: u64, advice: libc::c_int) {
    // SAFETY: MADV_POPULATE_READ and MADV_POPULATE_WRITE only populate page tables as a read
    // or write fault would, "without the actual memory access": no byte of this process's
    // memory changes, so nothing any thread holds is affected. The range came from
    // /proc/self/maps; if another thread unmapped or remapped it since, the call fails (ENOMEM,
    // EFAULT) or populates the new mapping, which is equally harmless; the result is ignored.
    let _ = unsafe { libc::madvise(addr as usize as *mut libc::c_void, len as usize, advice) };
}

/// In a child: puts its descriptors on 0, 1 and 2, unblocks `SIGCHLD`, dies with the zygote,
/// and makes its environment an executor's.
fn become_executor(
    zygote: Pid,
    [stdin, stdout, stderr]: [OwnedFd; FORK_FDS],
    standby: Option<String>,
    pooled: bool,
) -> Result<(), ExecutorError> {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // The zygote may have died before the death signal was set.
    if nix::unistd::getppid() != zygote {
        return Err(ExecutorError::Config("the zygote is gone".into()));
    }
    let _ = nix::sys::prctl::set_name(c"rfaas-executor");
    POOLED_CHILD.store(pooled, Ordering::Relaxed);
    SigSet::empty()
        .thread_set_mask()
        .map_err(std::io::Error::from)?;
    for (fd, to) in [(&stdin, 0), (&stdout, 1), (&stderr, 2)] {
        nix::unistd::dup2(fd.as_raw_fd(), to).map_err(std::io::Error::from)?;
    }
    drop((stdin, stdout, stderr));
    // One thread: nothing reads the environment while it changes.
    std::env::remove_var(ZYGOTE_ENV);
    match standby {
        Some(cores) => std::env::set_var(super::EARLY_STANDBY_ENV, cores),
        None => std::env::remove_var(super::EARLY_STANDBY_ENV),
    }
    Ok(())
}

/// Reaps every child that ended and tells the manager.
fn reap(control: &OwnedFd) -> Result<(), ExecutorError> {
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, (code & 0xff) << 8),
            Ok(WaitStatus::Signaled(pid, sig, core)) => {
                (pid, (sig as i32) | (i32::from(core) << 7))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(ExecutorError::Io(e.into())),
        };
        let pid = pid.as_raw() as u32;
        send(control, &ZygoteReply::Exited { pid, status }, None)?;
    }
}

/// A request and the descriptors it carried; `None` once the manager closed the socket.
type Received = Option<(Result<ZygoteRequest, String>, Vec<OwnedFd>)>;

fn receive(control: &OwnedFd) -> Result<Received, ExecutorError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FORK_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            control,
            &mut [IoSliceMut::new(&mut buf)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r.map_err(std::io::Error::from)?,
        }
    };
    let fds: Vec<OwnedFd> = ancillary
        .drain()
        .flat_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => fds.collect(),
            _ => Vec::new(),
        })
        .collect();
    if msg.bytes == 0 {
        return Ok(None);
    }
    if msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Ok(Some((Err("truncated".into()), fds)));
    }
    let request = serde_json::from_slice(&buf[..msg.bytes]).map_err(|e| e.to_string());
    Ok(Some((request, fds)))
}

/// Sends `reply`, with descriptor `fd` if given.
fn send(
    control: &OwnedFd,
    reply: &ZygoteReply,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), ExecutorError> {
    let doc = serde_json::to_vec(reply).map_err(|e| ExecutorError::Config(e.to_string()))?;
    let fds: Vec<std::os::fd::BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        ancillary.push(SendAncillaryMessage::ScmRights(&fds));
    }
    loop {
        match rustix::net::sendmsg(
            control,
            &[IoSlice::new(&doc)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map(drop).map_err(|e| ExecutorError::Io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back() {
        for req in [
            ZygoteRequest::Fork {
                id: 3,
                standby: Some("0-3".into()),
                pooled: true,
            },
            ZygoteRequest::Fork {
                id: u64::MAX,
                standby: None,
                pooled: false,
            },
        ] {
            let doc = serde_json::to_vec(&req).unwrap();
            assert!(doc.len() < MAX_MESSAGE);
            assert_eq!(serde_json::from_slice::<ZygoteRequest>(&doc).unwrap(), req);
        }
        let doc = serde_json::to_string(&ZygoteReply::Exited {
            pid: 9,
            status: 256,
        })
        .unwrap();
        assert_eq!(doc, r#"{"exited":{"pid":9,"status":256}}"#);
    }
}
