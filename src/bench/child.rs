//! The server side of every two-process benchmark runs in a child process: this binary, started
//! again with hidden `--internal-server` arguments.
//!
//! * The child reports readiness (and the address to connect to) with one line `READY <addr>` on
//!   its stdout, a pipe the parent reads with a timeout. Nothing secret is passed on its command
//!   line: only the mode, the buffer size, a core number and, for `shm-raw`, the number of an
//!   inherited descriptor.
//! * The child dies with the parent: it asks the kernel for `SIGKILL` when its parent goes
//!   (`PR_SET_PDEATHSIG`) and, in case the parent was already gone or the signal is lost, a
//!   watchdog thread exits the process when its stdin (a pipe whose write end only the parent
//!   holds) reaches end-of-file.
//! * Every wait has a timeout; a child that does not exit in time is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::BenchError;

/// Prefix of the readiness line.
const READY: &str = "READY ";

/// Exit code of a child whose parent disappeared.
const ORPHAN_EXIT: i32 = 3;

/// A running server process.
#[derive(Debug)]
pub struct ServerChild {
    child: Child,
    /// Held open so that the child's watchdog sees EOF only when we are gone or done.
    stdin: Option<ChildStdin>,
    ready: Option<mpsc::Receiver<Result<String, String>>>,
}

impl ServerChild {
    /// Starts `current_exe()` with `args`, stdin and stdout piped, stderr inherited.
    pub fn spawn(args: &[String]) -> Result<ServerChild, BenchError> {
        let exe =
            std::env::current_exe().map_err(|e| BenchError::io("locating this executable", e))?;
        let mut child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::io(format!("starting server process {}", exe.display()), e))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Server("no stdout pipe".into()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("bench-ready".into())
            .spawn(move || {
                let mut line = String::new();
                let res = match BufReader::new(stdout).read_line(&mut line) {
                    Ok(0) => Err("server process exited before it was ready".to_string()),
                    Ok(_) => match line.trim_end().strip_prefix(READY) {
                        Some(addr) => Ok(addr.to_string()),
                        None => Err(format!(
                            "server process said {:?} instead of READY",
                            line.trim_end()
                        )),
                    },
                    Err(e) => Err(format!("reading the server's ready line: {e}")),
                };
                let _ = tx.send(res);
            })
            .map_err(|e| BenchError::io("starting the ready-line reader", e))?;
        tracing::debug!(pid = child.id(), ?args, "server process started");
        Ok(ServerChild {
            child,
            stdin,
            ready: Some(rx),
        })
    }

    /// Waits up to `timeout` for the child's `READY <addr>` line and returns `addr`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String, BenchError> {
        let rx = self
            .ready
            .take()
            .ok_or_else(|| BenchError::Server("wait_ready called twice".into()))?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(addr)) => Ok(addr),
            Ok(Err(msg)) => {
                // Give it a moment to finish so that the message can carry its exit status.
                let status = self.wait_exit(Duration::from_millis(500));
                Err(BenchError::Server(match status {
                    Some(s) => format!("{msg} ({s})"),
                    None => msg,
                }))
            }
            Err(_) => Err(BenchError::Timeout(format!(
                "server process not ready within {timeout:?}"
            ))),
        }
    }

    /// Waits up to `timeout` for the child to exit by itself (after the client told it to stop);
    /// then closes its stdin and kills it if needed. Fails unless it exited successfully.
    pub fn finish(mut self, timeout: Duration) -> Result<(), BenchError> {
        let status = match self.wait_exit(timeout) {
            Some(s) => s,
            None => {
                self.stdin = None;
                match self.wait_exit(Duration::from_millis(200)) {
                    Some(s) => s,
                    None => {
                        self.kill();
                        return Err(BenchError::Timeout(format!(
                            "server process did not exit within {timeout:?}"
                        )));
                    }
                }
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(BenchError::Server(format!(
                "server process failed: {status}"
            )))
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => return None,
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stdin = None;
            if self.wait_exit(Duration::from_millis(100)).is_none() {
                self.kill();
            }
        }
    }
}

/// Called first thing in the child: die with the parent (parent-death signal plus a stdin EOF
/// watchdog).
pub fn server_init() -> Result<(), BenchError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| BenchError::io("prctl(PR_SET_PDEATHSIG)", std::io::Error::from(e)))?;
    std::thread::Builder::new()
        .name("bench-watchdog".into())
        .spawn(|| {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin().lock();
            // The parent never writes; read returns 0 (EOF) or an error once it is gone.
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            eprintln!("fabric_pingpong server: parent went away, exiting");
            std::process::exit(ORPHAN_EXIT);
        })
        .map_err(|e| BenchError::io("starting the watchdog", e))?;
    Ok(())
}

/// Tells the parent the child is ready and where to connect.
pub fn announce(addr: &str) -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}{addr}")
        .and_then(|()| out.flush())
        .map_err(|e| BenchError::io("writing the ready line", e))
}
