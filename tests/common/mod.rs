//! Helpers for tests that run real `rfaas` processes on 127.0.0.1: an executor manager on a
//! temporary directory (killed with everything it spawned on drop), plain HTTP requests, the
//! example function library, and `/proc` checks. Every wait is bounded.

#![allow(dead_code)]

pub mod black_scholes;
pub mod local_cluster;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rfaas::executor_manager::ReadyInfo;

/// The `rfaas` binary under test.
pub fn rfaas_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rfaas")
}

/// The "did not hang" limit of tests: generous on purpose. Tests check what happens, not how fast
/// (speed is measured by the benchmarks); a wait or elapsed time beyond this means a hang.
pub const NO_HANG: Duration = Duration::from_secs(60);

/// Whether the tests run in CI (`CI` set to `true` or `1`), where a test whose tool or resource
/// is missing must fail rather than skip.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"))
}

/// For a test that cannot run here because `missing` (a tool, cores, a device) is absent: under
/// `CI=true` it panics, so the test fails; elsewhere it prints `SKIPPED: ...` and the caller
/// returns (the test passes, loudly).
pub fn skip_unless_ci(missing: &str) {
    assert!(
        !in_ci(),
        "{missing}; under CI=true a missing tool or resource fails the test instead of skipping it"
    );
    eprintln!("SKIPPED: {missing}");
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` maps a file whose path contains `needle`.
pub fn maps_contain(pid: u32, needle: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .contains(needle)
}

/// `rfaas executor-manager FLAGS` (with a secret file that does not exist) fails, and its
/// error names `needle`: a bad flag is refused before anything else is looked at.
pub fn manager_refuses(flags: &[&str], needle: &str) {
    let out = Command::new(rfaas_bin())
        .arg("executor-manager")
        .args(flags)
        .args(["--secret-file", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{flags:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{flags:?}: {err}");
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    rfaas::cluster::procs::alive(pid)
}

/// Live processes in process group (or session) `id`.
pub fn group_members(id: i32) -> Vec<i32> {
    rfaas::cluster::procs::members(id)
        .into_iter()
        .map(|p| p.pid)
        .collect()
}

/// The cores this test process may use.
pub fn cores() -> Vec<u32> {
    rfaas::pin::allowed_cores()
        .into_iter()
        .map(|c| c as u32)
        .collect()
}

/// An executor manager process on a temporary directory.
pub struct Manager {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub http: String,
    pub secret: String,
    pub log: PathBuf,
}

/// Options of a test manager (TOML keys of its config file).
pub struct ManagerOptions {
    pub provider: &'static str,
    pub cores: Vec<u32>,
    pub extra: String,
    /// Environment of the manager (and so of its executors), e.g. `RFAAS_OFI_PROVIDER`.
    pub env: Vec<(&'static str, String)>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            provider: "shm",
            cores: cores(),
            extra: "request_timeout_ms = 1000\nexecutor_connect_timeout_ms = 30000\nstop_grace_ms = 1000\n".into(),
            env: Vec::new(),
        }
    }
}

impl Manager {
    /// Starts a manager with default options.
    pub fn start() -> Manager {
        Manager::start_with(ManagerOptions::default())
    }

    /// Starts a manager and waits (bounded) until its API answers.
    pub fn start_with(opts: ManagerOptions) -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let secret_path = dir.path().join("secret");
        let secret = rfaas::control::secret::create_secret_file(&secret_path).unwrap();
        let cores: Vec<String> = opts.cores.iter().map(u32::to_string).collect();
        let config = format!(
            "node = \"test-node\"\nlisten = \"127.0.0.1:0\"\nprovider = \"{}\"\nfabric_host = \"127.0.0.1\"\n\
             cores = [{}]\nsecret_file = \"secret\"\nrun_dir = \"run\"\nready_file = \"ready.json\"\n{}",
            opts.provider,
            cores.join(", "),
            opts.extra
        );
        fs::write(dir.path().join("em.toml"), config).unwrap();
        Manager::spawn_in(dir, secret, &opts.env)
    }

    /// Starts `rfaas executor-manager` on the `em.toml` already written in `dir` (with `secret`
    /// in `dir/secret`) and waits (bounded) until its ready file names its API.
    fn spawn_in(dir: tempfile::TempDir, secret: String, env: &[(&'static str, String)]) -> Manager {
        let log = dir.path().join("manager.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(rfaas_bin())
            .args(["executor-manager", "--new-session", "--config"])
            .arg(dir.path().join("em.toml"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut m = Manager {
            dir,
            child,
            http: String::new(),
            secret,
            log,
        };
        let ready = m.dir.path().join("ready.json");
        let info: ReadyInfo = wait_for(
            Duration::from_secs(20),
            "the executor manager's ready file",
            || {
                if let Ok(Some(st)) = m.child.try_wait() {
                    panic!(
                        "executor manager exited ({st}) before it was ready:\n{}",
                        m.log_text()
                    );
                }
                serde_json::from_slice(&fs::read(&ready).ok()?).ok()
            },
        );
        m.http = info.http;
        m
    }

    /// The manager's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its pid (also its process group and session).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A request with the right secret.
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        http(&self.http, method, path, Some(&self.secret), body)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> rfaas::control::executor_manager_api::ManagerStatus {
        let (code, body) = self.call("GET", "/v1/status", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Allocates `cores` workers running `functions` of the uploaded library `lib` through the
    /// HTTP API; fails the test (with the manager's log) unless it is granted.
    pub fn allocate(
        &self,
        lib: &str,
        functions: &[&str],
        cores: u32,
    ) -> rfaas::control::executor_manager_api::Allocation {
        let body = alloc_body(lib, functions, cores);
        let (code, body) = self.call("POST", "/v1/allocations", Some(body.as_bytes()));
        assert_eq!(
            code,
            201,
            "allocation failed: {body}\nmanager log:\n{}",
            self.log_text()
        );
        serde_json::from_str(&body).unwrap()
    }

    /// Releases allocation `a` (`DELETE /v1/allocations/{id}`); fails the test unless 204.
    pub fn release(&self, a: &rfaas::control::executor_manager_api::Allocation) {
        let (code, body) = self.call("DELETE", &format!("/v1/allocations/{}", a.id), None);
        assert_eq!(code, 204, "{body}");
    }

    /// Uploads a library; its hash.
    pub fn upload(&self, lib: &[u8]) -> String {
        let hash = rfaas::function::ContentHash::of(lib).to_hex();
        let (code, body) = self.call("PUT", &format!("/v1/libraries/{hash}"), Some(lib));
        assert!(code == 201 || code == 200, "{code} {body}");
        hash
    }

    /// Uploads a library under `lease` (`"<id>:<token>"`); its hash.
    pub fn upload_leased(&self, lib: &[u8], lease: &str) -> String {
        let hash = rfaas::function::ContentHash::of(lib).to_hex();
        let (code, body) = http_as(
            &self.http,
            "PUT",
            &format!("/v1/libraries/{hash}"),
            Some(&format!("Bearer {}", self.secret)),
            &[("X-Rfaas-Lease", lease)],
            Some(lib),
        );
        assert!(code == 201 || code == 200, "{code} {body}");
        hash
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid());
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(pid, Signal::SIGTERM);
            if wait_exit(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        // Whatever it left behind (nothing, if it works) goes too.
        let _ = killpg(pid, Signal::SIGKILL);
    }
}

/// One HTTP/1.1 request with ureq: `(status, body)`.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    secret: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, String) {
    let bearer = secret.map(|s| format!("Bearer {s}"));
    http_as(addr, method, path, bearer.as_deref(), &[], body)
}

/// One HTTP/1.1 request with `Authorization: <authorization>` (when given), more headers and
/// an optional body: `(status, body)`.
pub fn http_as(
    addr: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    let agent = rfaas::http_agent::agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build(),
    );
    let url = format!("http://{addr}{path}");
    let mut req = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = match body {
        Some(b) => agent.run(req.body(b.to_vec()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let code = resp.status().as_u16();
    (code, resp.body_mut().read_to_string().unwrap_or_default())
}

/// Writes raw bytes to `addr` and reads until the server closes or `timeout`; the response
/// text and how long it took.
pub fn raw_exchange(addr: &str, bytes: &[u8], timeout: Duration) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

/// Bytes that pass an executor manager's look at an upload (an ELF64 header of a shared
/// object for this machine) but that no dynamic loader accepts, followed by `tag`.
pub fn fake_shared_object(tag: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1; // version
    b[16] = 3; // ET_DYN
    b.extend_from_slice(tag);
    b
}

/// A client that stalls: connects to `addr` and writes `bytes` before it returns (so the stall
/// is in place before whatever the caller does next), then reads in a thread until the server
/// closes (or [`NO_HANG`]). The thread returns the response text, how long it took from the
/// connect, and when it ended (to order it against other events).
pub fn stalled_exchange(
    addr: &str,
    bytes: &[u8],
) -> std::thread::JoinHandle<(String, Duration, Instant)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(NO_HANG)).unwrap();
    s.write_all(bytes).unwrap();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let end = Instant::now();
        (String::from_utf8_lossy(&out).into_owned(), end - t, end)
    })
}

/// An allocation request body.
pub fn alloc_body(library: &str, functions: &[&str], cores: u32) -> String {
    serde_json::json!({
        "library": library,
        "functions": functions,
        "cores": cores,
        "input_capacity": 4096,
        "output_capacity": 4096,
        "slots": 4,
        "hot_timeout_ms": 0,
        "client": "executor_manager test",
    })
    .to_string()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The newest modification time of the files under `paths` (relative to the repository).
fn newest_source(paths: &[&str]) -> SystemTime {
    fn walk(path: &Path, newest: &mut SystemTime) {
        let Ok(meta) = fs::metadata(path) else { return };
        if meta.is_dir() {
            for entry in fs::read_dir(path).unwrap().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(m) = meta.modified() {
            *newest = (*newest).max(m);
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    for p in paths {
        walk(&repo().join(p), &mut newest);
    }
    newest
}

/// The function library `file` (`lib<name>.so`) of workspace package `package`: a
/// `target/<profile>/<file>` newer than every file under `sources` (`make test` builds every
/// library of the workspace first), or built here into a target directory of this test's own.
pub fn workspace_library(package: &str, file: &str, sources: &[&str]) -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile_dir = deps.parent().unwrap();
    let newest = newest_source(sources);
    let fresh = [profile_dir.join(file), deps.join(file)]
        .into_iter()
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .filter(|(m, _)| *m >= newest)
        .max();
    if let Some((_, path)) = fresh {
        return fs::read(path).unwrap();
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libraries-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--lib",
            "-p",
            package,
            "--manifest-path",
        ])
        .arg(repo().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo to build a function library");
    assert!(
        out.status.success(),
        "cargo build -p {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(target.join("debug").join(file)).unwrap()
}

/// `rfaas invoke` of the example library's `echo` on `input` against the cluster file `cluster`
/// (10 s per call), with the library and the input written into `dir`: add environment, then
/// run it.
pub fn invoke_echo_command(dir: &Path, cluster: &Path, input: &[u8]) -> Command {
    let lib = dir.join("libfunctions.so");
    fs::write(&lib, functions_library()).unwrap();
    let input_file = dir.join("in");
    fs::write(&input_file, input).unwrap();
    let mut c = Command::new(rfaas_bin());
    c.args(["invoke", "--function", "echo", "--timeout-s", "10"])
        .arg("--library")
        .arg(&lib)
        .arg("--input")
        .arg(&input_file)
        .arg("--cluster")
        .arg(cluster);
    c
}

/// The C library `lib<name>.so` of `jobs/functions-c`, built with its Makefile (the C compiler
/// is part of the build environment: scripts/setup.sh installs it) into this test's own
/// directory `out` of the target's scratch space.
pub fn functions_c_library(out: &str, name: &str) -> Vec<u8> {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(out);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/functions-c");
    let st = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("OUT={}", out_dir.display()))
        .status()
        .expect("run make");
    assert!(
        st.success(),
        "building the C libraries of jobs/functions-c failed"
    );
    fs::read(out_dir.join(format!("lib{name}.so"))).unwrap()
}

/// The example function library (`jobs/functions`): `$RFAAS_TEST_FUNCTIONS_LIB`, or
/// [`workspace_library`].
pub fn functions_library() -> &'static [u8] {
    static LIB: OnceLock<Vec<u8>> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Some(path) = std::env::var_os(rfaas::env::TEST_FUNCTIONS_LIB) {
            return fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", PathBuf::from(path).display()));
        }
        workspace_library(
            "rfaas-functions",
            "libfunctions.so",
            &[
                "src",
                "Cargo.toml",
                "jobs/functions/src",
                "jobs/functions/Cargo.toml",
            ],
        )
    })
}

/// A resource manager process on a temporary directory (its state file survives restarts;
/// killed on drop).
pub struct ResourceManager {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub http: String,
    pub secret: String,
    pub log: PathBuf,
    /// Extra TOML keys of its config file.
    pub extra: String,
}

impl ResourceManager {
    /// Starts a resource manager whose config file has `extra` TOML keys, with a state file.
    pub fn start(extra: &str) -> ResourceManager {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &str) -> ResourceManager {
        let secret =
            rfaas::control::secret::create_secret_file(&dir.path().join("secret")).unwrap();
        let config = format!(
            "listen = \"127.0.0.1:0\"\nsecret_file = \"secret\"\nstate_file = \"state.json\"\n\
             ready_file = \"ready.json\"\ntick_interval_ms = 20\n{extra}"
        );
        fs::write(dir.path().join("rm.toml"), config).unwrap();
        let log = dir.path().join("rm.log");
        let (child, http) = Self::spawn(dir.path(), &log);
        ResourceManager {
            dir,
            child,
            http,
            secret,
            log,
            extra: extra.into(),
        }
    }

    fn spawn(dir: &Path, log: &Path) -> (Child, String) {
        let ready = dir.join("ready.json");
        let _ = fs::remove_file(&ready);
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(rfaas_bin())
            .args(["resource-manager", "--config"])
            .arg(dir.join("rm.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let info: rfaas::resource_manager::ReadyInfo = wait_for(
            Duration::from_secs(20),
            "the resource manager's ready file",
            || {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!(
                        "resource manager exited ({st}) before it was ready:\n{}",
                        fs::read_to_string(log).unwrap_or_default()
                    );
                }
                serde_json::from_slice(&fs::read(&ready).ok()?).ok()
            },
        );
        (child, info.http)
    }

    /// [`Self::start`] with a separate node credential (`node_secret_file`): the cluster
    /// secret ([`Self::secret`]) is then a client's only.
    pub fn start_secured(extra: &str) -> ResourceManager {
        let dir = tempfile::tempdir().unwrap();
        rfaas::control::secret::create_secret_file(&dir.path().join("node-secret")).unwrap();
        Self::start_in(dir, &format!("node_secret_file = \"node-secret\"\n{extra}"))
    }

    /// The node credential, when started with [`Self::start_secured`].
    pub fn node_secret(&self) -> Option<String> {
        fs::read_to_string(self.dir.path().join("node-secret")).ok()
    }

    /// `kill -9`, then a new process on the same directory (config and state file).
    pub fn kill9_and_restart(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let (child, http) = Self::spawn(self.dir.path(), &self.log);
        self.child = child;
        self.http = http;
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        wait_exit(&mut self.child, timeout)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request with the right secret and a JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        let body = body.map(|b| b.to_string());
        http(
            &self.http,
            method,
            path,
            Some(&self.secret),
            body.as_deref().map(str::as_bytes),
        )
    }

    /// A request that must answer `code`; its JSON body.
    pub fn expect(
        &self,
        code: u16,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (c, text) = self.call(method, path, body);
        assert_eq!(c, code, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// `GET /v1/metrics`.
    pub fn metrics(&self) -> serde_json::Value {
        self.expect(200, "GET", "/v1/metrics", None)
    }
}

impl Drop for ResourceManager {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request with the secret and one extra header, no body: `(status, body)`.
pub fn http_with_header(
    addr: &str,
    method: &str,
    path: &str,
    secret: &str,
    header: (&str, &str),
) -> (u16, String) {
    let bearer = format!("Bearer {secret}");
    http_as(addr, method, path, Some(&bearer), &[header], None)
}

/// The fabric a test cluster runs on: an rfaas provider and, for `ofi`, the libfabric provider
/// its managers, executors and clients use (`RFAAS_OFI_PROVIDER`).
#[derive(Clone, Copy, Debug)]
pub struct Net {
    /// `shm`, `tcp` or `ofi`.
    pub provider: rfaas::rdma::Provider,
    /// The libfabric provider (`shm`, `tcp;ofi_rxm`) when `provider` is `ofi`.
    pub ofi: Option<&'static str>,
}

impl Net {
    /// rfaas's own shared-memory provider (what the tests use unless they say otherwise).
    pub const SHM: Net = Net {
        provider: rfaas::rdma::Provider::Shm,
        ofi: None,
    };

    /// The `ofi` provider on libfabric provider `libfabric`.
    pub const fn ofi(libfabric: &'static str) -> Net {
        Net {
            provider: rfaas::rdma::Provider::Ofi,
            ofi: Some(libfabric),
        }
    }

    /// The environment processes of this fabric need (`RFAAS_OFI_PROVIDER` for ofi).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.ofi
            .map(|p| (rfaas::env::OFI_PROVIDER, p.to_string()))
            .into_iter()
            .collect()
    }
}

/// An executor manager registered with `rm` (its secret, node name `node`, `cores`); waits
/// (bounded) until its API answers. `extra`: more TOML keys.
pub fn manager_for_rm(rm: &ResourceManager, node: &str, cores: &[u32], extra: &str) -> Manager {
    manager_for_rm_on(rm, node, cores, extra, Net::SHM)
}

/// [`manager_for_rm`] on fabric `net` (its executors too).
pub fn manager_for_rm_on(
    rm: &ResourceManager,
    node: &str,
    cores: &[u32],
    extra: &str,
    net: Net,
) -> Manager {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(dir.path().join("secret"))
        .unwrap();
    f.write_all(rm.secret.as_bytes()).unwrap();
    drop(f);
    // With a separate node credential, the manager holds it too (the client does not).
    let extra = match rm.node_secret() {
        Some(node_secret) => {
            let mut f = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(dir.path().join("node-secret"))
                .unwrap();
            f.write_all(node_secret.as_bytes()).unwrap();
            format!("node_secret_file = \"node-secret\"\n{extra}")
        }
        None => extra.to_string(),
    };
    let cores: Vec<String> = cores.iter().map(u32::to_string).collect();
    let config = format!(
        "node = \"{node}\"\nlisten = \"127.0.0.1:0\"\nprovider = \"{}\"\nfabric_host = \"127.0.0.1\"\n\
         cores = [{}]\nsecret_file = \"secret\"\nrun_dir = \"run\"\nready_file = \"ready.json\"\n\
         resource_manager = \"{}\"\nrequest_timeout_ms = 1000\nexecutor_connect_timeout_ms = 30000\n\
         stop_grace_ms = 1000\n{extra}",
        net.provider.name(),
        cores.join(", "),
        rm.http
    );
    fs::write(dir.path().join("em.toml"), config).unwrap();
    Manager::spawn_in(dir, rm.secret.clone(), &net.env())
}

/// Writes `cluster.json` in `rm`'s directory for a shm cluster of `rm` and `ems` (named
/// `{prefix}{i}`, on nodes `n{i}`) and returns its path.
pub fn write_cluster_file(rm: &ResourceManager, ems: &[Manager], prefix: &str) -> PathBuf {
    write_cluster_file_for(rm, ems, prefix, rfaas::rdma::Provider::Shm)
}

/// [`write_cluster_file`] for a cluster whose executors use `provider`.
pub fn write_cluster_file_for(
    rm: &ResourceManager,
    ems: &[Manager],
    prefix: &str,
    provider: rfaas::rdma::Provider,
) -> PathBuf {
    use rfaas::cluster::{ClusterFile, ManagerEntry};
    let file = rm.dir.path().join("cluster.json");
    ClusterFile {
        version: 1,
        provider,
        secret_file: rm.dir.path().join("secret"),
        executor_managers: ems
            .iter()
            .enumerate()
            .map(|(i, m)| ManagerEntry {
                name: format!("{prefix}{i}"),
                http: m.http.clone(),
                node: format!("n{i}"),
            })
            .collect(),
        resource_manager: Some(rm.http.clone()),
    }
    .write(&file)
    .unwrap();
    file
}
