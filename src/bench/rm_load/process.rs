//! The resource manager under load as a child process: started on a fresh state directory,
//! killed and restarted (timed), and observed through `/proc` (RSS, CPU time) and the size of
//! its state (snapshot + log).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::RmLoadError;
use crate::resource_manager::ReadyInfo;

/// A resource manager process on a state directory.
pub struct RmProcess {
    exe: PathBuf,
    dir: PathBuf,
    child: Child,
    /// Its HTTP address.
    pub http: String,
    /// The cluster secret.
    pub secret: String,
}

/// Memory and CPU of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set now, bytes.
    pub rss: u64,
    /// Peak resident set, bytes.
    pub rss_peak: u64,
    /// User + system CPU time so far.
    pub cpu: Duration,
}

impl RmProcess {
    /// Writes a config into `dir` (state file, ready file, `extra` TOML keys) and starts
    /// `exe resource-manager` on it.
    pub fn start(exe: &Path, dir: &Path, extra: &str) -> Result<RmProcess, RmLoadError> {
        let secret = crate::control::secret::create_secret_file(&dir.join("secret"))
            .map_err(|e| RmLoadError::Setup(e.to_string()))?;
        std::fs::write(
            dir.join("rm.toml"),
            format!(
                "listen = \"127.0.0.1:0\"\nsecret_file = \"secret\"\n\
                 state_file = \"rm-state\"\nready_file = \"rm.json\"\n{extra}"
            ),
        )?;
        let (child, http) = spawn(exe, dir)?;
        Ok(RmProcess {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            child,
            http,
            secret,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then a new process on the same state; how long until it was ready.
    pub fn kill9_and_restart(&mut self) -> Result<Duration, RmLoadError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let t = Instant::now();
        let (child, http) = spawn(&self.exe, &self.dir)?;
        let took = t.elapsed();
        self.child = child;
        self.http = http;
        Ok(took)
    }

    /// RSS and CPU time now.
    pub fn usage(&self) -> Result<Usage, RmLoadError> {
        usage_of(self.pid())
    }

    /// (snapshot bytes, log bytes) of its state now.
    pub fn state_bytes(&self) -> Result<(u64, u64), RmLoadError> {
        let state = self.dir.join("rm-state");
        let snapshot = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
        let mut log = 0;
        for (_, p) in crate::resource_manager::store::segments::list(&state)? {
            log += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        }
        Ok((snapshot, log))
    }
}

impl Drop for RmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(exe: &Path, dir: &Path) -> Result<(Child, String), RmLoadError> {
    let ready = dir.join("rm.json");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("rm.log"))?;
    let mut child = Command::new(exe)
        .args(["resource-manager", "--config"])
        .arg(dir.join("rm.toml"))
        // Warnings only, unless the benchmark's own RUST_LOG asks for more.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| RmLoadError::Setup(format!("start {}: {e}", exe.display())))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait()? {
            return Err(RmLoadError::Setup(format!(
                "the resource manager exited ({st}) before it was ready; see {}",
                dir.join("rm.log").display()
            )));
        }
        if let Some(info) = std::fs::read(&ready)
            .ok()
            .and_then(|b| serde_json::from_slice::<ReadyInfo>(&b).ok())
        {
            return Ok((child, info.http));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(RmLoadError::Setup(
                "the resource manager was not ready within 120 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// RSS and CPU time of process `pid` now, from `/proc`.
pub fn usage_of(pid: u32) -> Result<Usage, RmLoadError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid))?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5); 12 and 13 after the ')'.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    let cpu_ticks = ticks(11) + ticks(12);
    Ok(Usage {
        rss: kb("VmRSS:"),
        rss_peak: kb("VmHWM:"),
        cpu: Duration::from_millis(cpu_ticks * 1000 / hz),
    })
}
