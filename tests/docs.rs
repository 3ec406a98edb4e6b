//! The README and `--help` tell the truth: every flag a README command shows exists in that
//! binary's `--help`; every environment variable the README documents is read by the code or
//! the script it names; the client-library snippet is the compiled example; the resource
//! manager's walkthrough script runs against a real local cluster (started with
//! `RFAAS_PROVIDER=tcp`, which it must honour), whose `stop` keeps the durable state that
//! `start --resume-state` picks up; `make -C jobs/functions-c` writes where the README says.
//!
//! Tools the tests need (curl, jq, make, cc) are skipped with a message when missing, and fail
//! the test under `CI=true`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{http, rfaas_bin};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// Whether `tool` is on PATH; under `CI=true` a missing tool fails the test.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip_unless_ci(&format!(
            "{tool} is not installed (scripts/setup.sh installs it)"
        ));
    }
    found
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The binaries this package builds, by name (`scalable_benchmark` needs feature `mpi`).
fn binary(name: &str) -> Option<&'static str> {
    Some(match name {
        "rfaas" => env!("CARGO_BIN_EXE_rfaas"),
        "warm_benchmark" => env!("CARGO_BIN_EXE_warm_benchmark"),
        "cold_benchmark" => env!("CARGO_BIN_EXE_cold_benchmark"),
        "parallel_invocations" => env!("CARGO_BIN_EXE_parallel_invocations"),
        "lease_benchmark" => env!("CARGO_BIN_EXE_lease_benchmark"),
        "scheduler_bench" => env!("CARGO_BIN_EXE_scheduler_bench"),
        "fabric_pingpong" => env!("CARGO_BIN_EXE_fabric_pingpong"),
        "scalable_benchmark" => option_env!("CARGO_BIN_EXE_scalable_benchmark")?,
        _ => return None,
    })
}

/// The fenced code blocks of `md` with their info string (`sh`, `rust`, ...).
fn code_blocks(md: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => cur = Some((info.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.push(cur.take().unwrap()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// Commands in a shell block: continuation lines joined, comments dropped.
fn commands(block: &str) -> Vec<String> {
    let joined = block.replace("\\\n", " ");
    joined
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// `(binary, subcommands, flags)` for every invocation of one of our binaries in `cmd`:
/// `target/release/X ...` or `cargo run ... --bin X -- ...`.
fn invocations(cmd: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let name = if let Some(n) = w.strip_prefix("target/release/") {
            n
        } else if *w == "--bin" && words.first() == Some(&"cargo") {
            match words.get(i + 1) {
                Some(n) => n,
                None => continue,
            }
        } else {
            continue;
        };
        if binary(name).is_none() {
            continue;
        }
        let mut rest = &words[i + 1..];
        if *w == "--bin" {
            // cargo run ... --bin X -- FLAGS
            rest = match rest.iter().position(|x| *x == "--") {
                Some(p) => &rest[p + 1..],
                None => &[],
            };
        }
        let mut subs = Vec::new();
        let mut flags = Vec::new();
        for x in rest {
            if matches!(*x, "|" | "&&" | ";" | ">" | "<") {
                break;
            }
            if let Some(f) = x.strip_prefix("--") {
                if !f.is_empty() {
                    flags.push(format!("--{}", f.split('=').next().unwrap()));
                }
            } else if flags.is_empty() && x.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                subs.push(x.to_string());
            }
        }
        out.push((name.to_string(), subs, flags));
    }
    out
}

fn help(name: &str, subs: &[String]) -> String {
    let exe = binary(name).unwrap();
    let o = Command::new(exe).args(subs).arg("--help").output().unwrap();
    assert!(o.status.success(), "{name} {subs:?} --help: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mentions_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        !help[i + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn every_flag_a_readme_command_shows_is_in_that_binarys_help() {
    let md = readme();
    let mut checked = 0;
    let mut missing = Vec::new();
    for (info, body) in code_blocks(&md) {
        if info != "sh" {
            continue;
        }
        for cmd in commands(&body) {
            for (name, subs, flags) in invocations(&cmd) {
                let h = help(&name, &subs);
                for f in flags {
                    checked += 1;
                    if !mentions_flag(&h, &f) {
                        missing.push(format!("{name} {} {f}  (in: {cmd})", subs.join(" ")));
                    }
                }
            }
        }
    }
    // The fabric benchmark's option table.
    let section = md
        .split("## The fabric floor benchmark")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a fabric floor benchmark section");
    let h = help("fabric_pingpong", &[]);
    for row in section.lines().filter(|l| l.starts_with("| `-")) {
        let cell = row.split('|').nth(1).unwrap();
        for f in cell.split(['`', ',', ' ']) {
            if f.starts_with("--") {
                checked += 1;
                if !mentions_flag(&h, f) {
                    missing.push(format!("fabric_pingpong {f}  (option table)"));
                }
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} flags found: is the parser right?"
    );
    assert!(
        missing.is_empty(),
        "README flags absent from --help:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_environment_variable_the_readme_documents_is_read() {
    let md = readme();
    let env_rs = std::fs::read_to_string(root().join("src/env.rs")).unwrap();
    let read_by = |file: &str| std::fs::read_to_string(root().join(file)).unwrap_or_default();
    let slurm: String = ["slurm/rfaas-cluster.sh", "slurm/scalable-benchmark.sh"]
        .iter()
        .map(|f| read_by(f))
        .collect();
    let table = md
        .split("## Environment variables")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has an environment variable table");
    let mut documented = BTreeSet::new();
    let mut missing = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').collect();
        let (names, reader) = (cells[1], cells[2]);
        for name in names.split('`').skip(1).step_by(2) {
            let name = name.split('=').next().unwrap();
            if !name.starts_with("RFAAS_") || name.contains('*') {
                continue;
            }
            documented.insert(name.to_string());
            let quoted = format!("\"{name}\"");
            let ok = if reader.contains("slurm/") {
                slurm.contains(name)
            } else if reader.contains("scripts/setup.sh") {
                read_by("scripts/setup.sh").contains(name)
            } else {
                env_rs.contains(&quoted)
            };
            if !ok {
                missing.push(format!("{name} (read by {})", reader.trim()));
            }
        }
    }
    // And the other way: every variable src/env.rs declares is in the table.
    for line in env_rs.lines().filter(|l| l.contains("pub const")) {
        if let Some(name) = line.split('"').nth(1) {
            if name.starts_with("RFAAS_") && !documented.contains(name) {
                missing.push(format!("{name}: in src/env.rs, not in the README's table"));
            }
        }
    }
    // Variables the Slurm tables name are read by the Slurm scripts.
    let slurm_section = md
        .split("### Running on Slurm")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .unwrap();
    for row in slurm_section.lines().filter(|l| l.starts_with("| `RFAAS_")) {
        for name in row.split('|').nth(1).unwrap().split('`').skip(1).step_by(2) {
            let name = name.split('<').next().unwrap();
            if !slurm.contains(name) {
                missing.push(format!("{name}: in the Slurm tables, not in slurm/*.sh"));
            }
        }
    }
    assert!(documented.len() >= 4, "{documented:?}");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_readme_client_snippet_is_the_compiled_example() {
    let md = readme();
    let after = md
        .split("### The client library")
        .nth(1)
        .expect("README has a client library section");
    let (_, snippet) = code_blocks(after).into_iter().next().expect("a code block");
    let norm = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let example = std::fs::read_to_string(root().join("examples/client_library.rs")).unwrap();
    let mut lines = example.lines().map(norm);
    let mut n = 0;
    for want in snippet.lines().map(norm).filter(|l| !l.is_empty()) {
        assert!(
            lines.any(|l| l == want),
            "README line not in examples/client_library.rs (in order): {want}"
        );
        n += 1;
    }
    assert!(n >= 10, "snippet of {n} lines");
}

fn local_cluster(args: &[&str], run: &Path, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(rfaas_bin());
    cmd.arg("local-cluster")
        .args(args)
        .arg("--run-dir")
        .arg(run);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn grants_counted(run: &Path) -> u64 {
    let cluster = rfaas::cluster::ClusterFile::load(&run.join("cluster.json")).unwrap();
    let (code, body) = http(
        cluster.resource_manager.as_deref().unwrap(),
        "GET",
        "/v1/metrics",
        Some(&cluster.secret().unwrap()),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    m["counters"]["grants"].as_u64().unwrap()
}

#[test]
fn the_walkthrough_runs_on_a_tcp_cluster_whose_state_outlives_stop() {
    if !have("curl") || !have("jq") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // RFAAS_PROVIDER chooses the provider when --provider is not given.
    let out = local_cluster(
        &["start", "--nodes", "1"],
        &run,
        &[("RFAAS_PROVIDER", "tcp")],
    );
    assert!(out.status.success(), "start: {}", text(&out));
    let cluster = rfaas::cluster::ClusterFile::load(&run.join("cluster.json")).unwrap();
    assert_eq!(cluster.provider.name(), "tcp");

    let walk = Command::new(root().join("scripts/resource-manager-walkthrough.sh"))
        .arg(run.join("cluster.json"))
        .output()
        .unwrap();
    let log = text(&walk);
    let stopped = local_cluster(&["stop"], &run, &[]);
    assert!(walk.status.success(), "walkthrough failed:\n{log}");
    assert!(log.contains("walkthrough done"), "{log}");
    assert!(stopped.status.success(), "stop: {}", text(&stopped));

    // stop keeps the durable state; start --resume-state starts from it (the walkthrough's two
    // grants are counted there), a plain start does not.
    let state = run.join("rm-state");
    assert!(state.exists(), "stop removed {}", state.display());
    let out = local_cluster(&["start", "--resume-state"], &run, &[]);
    assert!(out.status.success(), "start --resume-state: {}", text(&out));
    let resumed = grants_counted(&run);
    let out = local_cluster(&["stop"], &run, &[]);
    assert!(out.status.success(), "stop: {}", text(&out));
    let out = local_cluster(&["start"], &run, &[]);
    assert!(out.status.success(), "start: {}", text(&out));
    let fresh = grants_counted(&run);
    let out = local_cluster(&["stop"], &run, &[]);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert_eq!(
        (resumed, fresh),
        (2, 0),
        "grants counted after --resume-state, after a plain start"
    );
}

#[test]
fn functions_c_builds_where_the_readme_says() {
    if !have("make") || !have("cc") {
        return;
    }
    let md = readme();
    assert!(md.contains("`make -C jobs/functions-c` writes `target/functions/libfunctions_c.so`"));
    let dir = tempfile::tempdir().unwrap();
    let out_dir: PathBuf = dir.path().join("lib");
    let o = Command::new("make")
        .args(["-s", "-C"])
        .arg(root().join("jobs/functions-c"))
        .arg(format!("OUT={}", out_dir.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(out_dir.join("libfunctions_c.so").is_file());
    let o = Command::new("make")
        .args(["-s", "-C", "jobs/functions-c"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(root().join("target/functions/libfunctions_c.so").is_file());
}

#[test]
fn cold_benchmark_help_states_its_warmup_bound() {
    let h = help("cold_benchmark", &[]);
    let warmup = h
        .split("--warmup")
        .nth(1)
        .and_then(|s| s.split("\n      --").next())
        .unwrap();
    assert!(
        warmup.contains("at most 3") && warmup.contains("[default: 3]"),
        "{warmup}"
    );
}

#[test]
fn the_readme_layout_matches_the_tree() {
    let md = readme();
    let block = md
        .split("## Project layout")
        .nth(1)
        .and_then(|s| code_blocks(s).into_iter().next())
        .expect("README has a project layout block")
        .1;
    let mut named = Vec::new();
    for line in block.lines().filter(|l| !l.starts_with(' ')) {
        // "src/pin.rs, src/env.rs pinning ..." names two paths.
        for w in line.split_whitespace() {
            named.push(w.trim_end_matches(',').to_string());
            if !w.ends_with(',') {
                break;
            }
        }
    }
    let missing: Vec<_> = named.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "layout names what does not exist: {missing:?}"
    );
    // Every module of src/ is in the layout (lib.rs, logging.rs aside: named by lib.rs).
    let mut absent = Vec::new();
    for e in std::fs::read_dir(root().join("src")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let path = if e.file_type().unwrap().is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        if !["src/lib.rs", "src/logging.rs"].contains(&path.as_str()) && !block.contains(&path) {
            absent.push(path);
        }
    }
    assert!(absent.is_empty(), "not in the README's layout: {absent:?}");
}

#[test]
fn local_cluster_and_status_help_name_the_resource_manager() {
    for subs in [
        &["local-cluster"][..],
        &["local-cluster", "start"],
        &["status"],
    ] {
        let subs: Vec<String> = subs.iter().map(|s| s.to_string()).collect();
        let h = help("rfaas", &subs);
        assert!(
            h.contains("resource manager"),
            "rfaas {subs:?} --help:\n{h}"
        );
    }
    let h = help("rfaas", &["local-cluster".into(), "stop".into()]);
    assert!(h.contains("rm-state is kept"), "{h}");
    let h = help("rfaas", &["local-cluster".into(), "start".into()]);
    assert!(
        h.contains("RFAAS_PROVIDER") && h.contains("--resume-state"),
        "{h}"
    );
}
