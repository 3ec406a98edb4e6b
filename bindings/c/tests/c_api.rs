//! The C API as a user gets it: `scripts/install-capi.sh` installs this build's librfaas into a
//! temporary PREFIX, the C, C++ and Fortran programs are compiled with `cc`/`g++`/`mpicc`/`mpif90`
//! and `pkg-config --cflags --libs rfaas` against that PREFIX only, and run on a real local
//! cluster (`rfaas local-cluster start`: a resource manager and an executor manager on
//! 127.0.0.1, shm) — plain client, MPI examples under `mpirun -n 2`, bad input, the C-vs-Rust
//! benchmark script; and the checked-in `rfaas.h` must be what cbindgen generates now.
//!
//! Needs this build's `rfaas`, `libfunctions.so` and `librfaas_c.so` in `target/<profile>/`
//! (`make test` builds them). Under `CI=true` a missing tool (cbindgen, cc, mpicc, mpif90,
//! pkg-config, mpirun) fails the test; elsewhere the test says so and skips.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long one program (or mpirun) may run before the test gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>`: where cargo put this build's binaries and libraries.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn built(name: &str) -> PathBuf {
    let p = build_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --all-features)",
        p.display()
    );
    p
}

/// Whether `tool` runs; under CI=true its absence fails the test.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is not installed (CI=true: failing instead of skipping; scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: {tool} is not installed");
    }
    ok
}

/// Runs `cmd` to its end within [`RUN_TIMEOUT`] (killing its process group after that), with
/// stdout and stderr in files: exit status and the output. Without the `LD_LIBRARY_PATH` that
/// cargo sets for tests (it names the build tree): programs must find the installed library.
fn run(mut cmd: Command, what: &str) -> (ExitStatus, String) {
    cmd.env_remove("LD_LIBRARY_PATH");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let err = dir.path().join("err");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let status =
        status.unwrap_or_else(|| panic!("{what} still running after {RUN_TIMEOUT:?}:\n{text}"));
    (status, text)
}

/// Runs `cmd` and requires success.
fn run_ok(cmd: Command, what: &str) -> String {
    let (status, text) = run(cmd, what);
    assert!(status.success(), "{what}: {status}\n{text}");
    text
}

/// The library installed into a temporary PREFIX, and the programs built against it.
struct Installed {
    _dir: tempfile::TempDir,
    prefix: PathBuf,
    bin: PathBuf,
}

impl Installed {
    fn pkg_config(&self, args: &[&str]) -> Vec<String> {
        let mut c = Command::new("pkg-config");
        c.args(args)
            .arg("rfaas")
            .env("PKG_CONFIG_PATH", self.prefix.join("lib/pkgconfig"));
        run_ok(c, "pkg-config")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// Installs and compiles once for every test (None: a tool is missing, outside CI).
fn installed() -> Option<&'static Installed> {
    static I: OnceLock<Option<Installed>> = OnceLock::new();
    I.get_or_init(|| {
        if !["cc", "g++", "mpicc", "mpif90", "pkg-config", "mpirun"]
            .iter()
            .all(|t| have(t))
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("prefix");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // The libraries cargo built for this test (in deps/, newer than any uplifted copy).
        built("deps/librfaas_c.so");
        let mut c = Command::new(repo().join("scripts/install-capi.sh"));
        c.arg(&prefix).arg(build_dir());
        run_ok(c, "scripts/install-capi.sh");
        let i = Installed {
            _dir: dir,
            prefix,
            bin,
        };
        let cflags = i.pkg_config(&["--cflags"]);
        let libs = i.pkg_config(&["--libs"]);
        let include = i.pkg_config(&["--variable=includedir"]);
        let ex = repo().join("examples");
        let tests_c = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
        let builds: Vec<(&str, Vec<String>, PathBuf, &str)> = vec![
            ("cc", vec![], ex.join("c/echo_client.c"), "echo_client"),
            (
                "g++",
                vec!["-x".into(), "c++".into()],
                ex.join("c/echo_client.c"),
                "echo_client_cxx",
            ),
            ("mpicc", vec![], ex.join("c/offload_mpi.c"), "offload_mpi"),
            ("mpicc", vec![], tests_c.join("bad_input.c"), "bad_input"),
            (
                "cc",
                vec![],
                tests_c.join("assets_client.c"),
                "assets_client",
            ),
            (
                "mpif90",
                vec![
                    format!("{}/rfaas.f90", include[0]),
                    "-J".into(),
                    i.bin.display().to_string(),
                ],
                ex.join("fortran/offload_mpi.f90"),
                "offload_mpi_f",
            ),
        ];
        for (compiler, pre, src, out) in builds {
            let mut c = Command::new(compiler);
            c.args(["-Wall", "-O1", "-o"])
                .arg(i.program(out))
                .args(&pre)
                .arg(&src)
                .args(&cflags)
                .args(&libs)
                .arg("-lm")
                .current_dir(&i.bin);
            run_ok(c, &format!("{compiler} {}", src.display()));
        }
        Some(i)
    })
    .as_ref()
}

/// `rfaas local-cluster start` on a temporary directory; stopped on drop.
struct LocalCluster {
    dir: tempfile::TempDir,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new(built("rfaas"));
        c.args(["local-cluster", "start", "--provider", "shm", "--run-dir"])
            .arg(dir.path().join("run"));
        run_ok(c, "rfaas local-cluster start");
        LocalCluster { dir }
    }

    fn file(&self) -> String {
        self.dir
            .path()
            .join("run/cluster.json")
            .display()
            .to_string()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new(built("rfaas"))
            .args(["local-cluster", "stop", "--run-dir"])
            .arg(self.dir.path().join("run"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn library() -> String {
    built("libfunctions.so").display().to_string()
}

fn mpirun(n: usize, program: &Path, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--bind-to", "none", "--oversubscribe", "-n", &n.to_string()])
        .arg(program)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1");
    c
}

#[test]
fn header_is_current() {
    if !have("cbindgen") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("rfaas.h");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new("cbindgen");
    c.arg("--config")
        .arg(crate_dir.join("cbindgen.toml"))
        .arg("--output")
        .arg(&fresh)
        .arg(crate_dir);
    run_ok(c, "cbindgen");
    let want = std::fs::read_to_string(&fresh).unwrap();
    let have = std::fs::read_to_string(crate_dir.join("include/rfaas.h")).unwrap();
    assert!(
        want == have,
        "bindings/c/include/rfaas.h is not what cbindgen generates from the sources: regenerate it with\n  \
         cbindgen --config bindings/c/cbindgen.toml --output bindings/c/include/rfaas.h bindings/c"
    );
}

#[test]
fn installed_files_and_pkg_config() {
    let Some(i) = installed() else { return };
    for f in [
        "lib/librfaas.so",
        "lib/librfaas.a",
        "include/rfaas.h",
        "include/rfaas.f90",
        "lib/pkgconfig/rfaas.pc",
    ] {
        assert!(i.prefix.join(f).is_file(), "{f} not installed");
    }
    let libs = i.pkg_config(&["--libs"]).join(" ");
    assert!(libs.contains("-lrfaas") && libs.contains("-lmpi"), "{libs}");
    let version = i.pkg_config(&["--modversion"]).join("");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    // The executable finds the installed library (rpath), not the build tree's.
    let mut c = Command::new("ldd");
    c.arg(i.program("echo_client"));
    let ldd = run_ok(c, "ldd");
    let line = ldd
        .lines()
        .find(|l| l.contains("librfaas.so"))
        .unwrap_or_else(|| panic!("not linked to librfaas.so:\n{ldd}"));
    assert!(
        line.contains(&i.prefix.join("lib/librfaas.so").display().to_string()),
        "{line}"
    );
}

#[test]
fn plain_c_and_cxx_clients_invoke_echo() {
    let Some(i) = installed() else { return };
    let cluster = LocalCluster::start();
    for program in ["echo_client", "echo_client_cxx"] {
        let mut c = Command::new(i.program(program));
        c.arg(cluster.file())
            .arg(library())
            .current_dir(i.bin.as_path());
        let text = run_ok(c, program);
        assert!(
            text.contains("echo_client: invoke: \"hello from C\""),
            "{text}"
        );
        assert!(text.contains("4 calls in flight: ok"), "{text}");
        let lib_len = std::fs::metadata(library()).unwrap().len();
        assert!(
            text.contains(&format!("library as {lib_len} bytes: ok")),
            "{text}"
        );
        assert!(text.trim_end().ends_with("echo_client: ok"), "{text}");
    }
}

/// Black–Scholes under `mpirun -n 2` (options per rank, batch): every rank's prices match the
/// program's own local computation, and rank 0's session report counts every offload.
fn black_scholes(program: &str) {
    let Some(i) = installed() else { return };
    let cluster = LocalCluster::start();
    let (options, batch) = (3000usize, 400usize);
    let args = vec![
        cluster.file(),
        library(),
        options.to_string(),
        batch.to_string(),
        "0".into(),
    ];
    let text = run_ok(mpirun(2, &i.program(program), &args), program);
    for rank in 0..2 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("rank {rank}: {options} options")))
            .unwrap_or_else(|| panic!("no line of rank {rank}:\n{text}"));
        assert!(line.ends_with(": ok"), "{line}");
    }
    let offloads = 2 * options.div_ceil(batch);
    assert!(
        text.contains(&format!(
            "2 ranks, {offloads} offloads in the session report"
        )),
        "{text}"
    );
    assert!(text.contains("result correct on every rank"), "{text}");
}

#[test]
fn c_black_scholes_two_ranks() {
    black_scholes("offload_mpi");
}

#[test]
fn fortran_black_scholes_two_ranks() {
    black_scholes("offload_mpi_f");
}

#[test]
fn bad_input_gets_codes_and_messages_two_ranks() {
    let Some(i) = installed() else { return };
    let cluster = LocalCluster::start();
    let text = run_ok(
        mpirun(2, &i.program("bad_input"), &[cluster.file(), library()]),
        "bad_input",
    );
    let ok_lines = text.lines().filter(|l| l.starts_with("ok: ")).count();
    assert!(ok_lines > 40, "{text}");
    for rank in 0..2 {
        assert!(
            text.contains(&format!("bad_input: rank {rank}: {ok_lines} checks passed")),
            "rank {rank} did not pass its {ok_lines} checks:\n{text}"
        );
    }
    for check in [
        "invoke(output capacity too small) -> RFAAS_STATUS_OUTPUT_TOO_SMALL",
        "session_init(MPI_COMM_NULL) -> RFAAS_STATUS_INVALID_ARGUMENT",
        "offload after finish -> RFAAS_STATUS_FINISHED",
        "function(unknown name) -> RFAAS_STATUS_UNKNOWN_FUNCTION",
    ] {
        assert!(text.contains(check), "{check}:\n{text}");
    }
}

/// The C library with an init function (`jobs/functions-c/stateful.c`), built with `make`.
fn stateful_c_library(dir: &Path) -> String {
    let mut c = Command::new("make");
    c.arg("-s")
        .arg("-C")
        .arg(repo().join("jobs/functions-c"))
        .arg(format!("OUT={}", dir.display()));
    run_ok(c, "make -C jobs/functions-c");
    dir.join("libstateful_c.so").display().to_string()
}

/// Assets through the C API: `rfaas_allocation_spec::assets` reaches the C library's
/// `rfaas_init`; its failure is `RFAAS_STATUS_INIT_FAILED` with its message; bad names and a
/// NULL array are refused.
#[test]
fn c_client_ships_assets_to_a_c_init() {
    let Some(i) = installed() else { return };
    let cluster = LocalCluster::start();
    let libs = tempfile::tempdir().unwrap();
    let lib = stateful_c_library(libs.path());
    let mut c = Command::new(i.program("assets_client"));
    c.arg(cluster.file()).arg(lib).current_dir(i.bin.as_path());
    let text = run_ok(c, "assets_client");
    assert!(
        text.contains("lookup through the table: ok, init ran 1 time(s)"),
        "{text}"
    );
    assert!(
        text.contains(
            "allocate with 'fail' -> RFAAS_STATUS_INIT_FAILED: function library init failed: \
             asset 'fail' says: from C"
        ),
        "{text}"
    );
    assert!(text.trim_end().ends_with("assets_client: ok"), "{text}");
}

/// The benchmark script on this build, briefly: one CSV, both clients, the requested counts.
#[test]
fn capi_bench_script_writes_both_clients() {
    if installed().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("capi.csv");
    let (reps, rounds) = (150usize, 2usize);
    let mut c = Command::new(repo().join("scripts/capi-bench.sh"));
    c.arg(build_dir())
        .arg(&csv)
        .env("SIZES", "64")
        .env("REPETITIONS", reps.to_string())
        .env("WARMUP", "10")
        .env("ROUNDS", rounds.to_string());
    let text = run_ok(c, "scripts/capi-bench.sh");
    let body = std::fs::read_to_string(&csv).unwrap();
    let mut lines = body.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.last(), Some(&"client"));
    let lat = header.iter().position(|h| *h == "latency_ns").unwrap();
    let size = header.iter().position(|h| *h == "payload_bytes").unwrap();
    let mut per_client = std::collections::BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), header.len(), "{l}");
        assert_eq!(f[size], "64");
        assert!(f[lat].parse::<u64>().unwrap() > 0, "{l}");
        *per_client
            .entry(f[header.len() - 1].to_string())
            .or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<String, usize> =
        [("c", reps * rounds), ("rust", reps * rounds)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(per_client, want, "{text}");
    assert!(text.contains("capi_bench: shm hot 64 B: rust n="), "{text}");
}
