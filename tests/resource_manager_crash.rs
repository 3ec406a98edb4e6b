//! The resource manager killed with SIGKILL at random moments while clients grant and release
//! leases concurrently, a few dozen times, restarted each time on the same state directory
//! (the log is compacted often, so some kills land during a compaction). After each restart:
//! every acknowledged grant is live with its parts, nothing acknowledged as released is back,
//! no lease id was acknowledged twice, and on every node the cores of the live leases add up
//! to what it reports used, never beyond what it has.
//!
//! Seeded: the seed is printed; `RFAAS_CRASH_SEED=N` replays a run.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ResourceManager;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const CYCLES: usize = 30;
const CLIENTS: usize = 6;
const NODES: usize = 32;
const CORES: u64 = 32;
/// Leases a client holds at most.
const HOLD: usize = 3;

/// What the clients were told.
#[derive(Default)]
struct Model {
    /// Acknowledged grants not (acknowledged as) released: id → (token, parts (node, cores)).
    held: HashMap<u64, (String, Vec<(String, u64)>)>,
    /// Acknowledged releases.
    released: HashSet<u64>,
    /// Releases cut off by a kill: live or ended, either is right.
    uncertain: HashSet<u64>,
    /// Client tags of grants cut off by a kill: such a lease may exist.
    in_flight: HashSet<String>,
    /// Every id ever acknowledged.
    seen: HashSet<u64>,
}

fn parts_of(v: &Value) -> Vec<(String, u64)> {
    let mut p: Vec<(String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_string(),
                p["cores"].as_u64().unwrap(),
            )
        })
        .collect();
    p.sort();
    p
}

/// A request that may fail because the manager was killed: `None` then.
fn try_call(
    agent: &ureq::Agent,
    addr: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: Value,
) -> Option<(u16, String)> {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("Authorization", format!("Bearer {secret}"))
        .body(body.to_string().into_bytes())
        .unwrap();
    let mut resp = agent.run(req).ok()?;
    let code = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().ok()?;
    Some((code, text))
}

/// One client until the manager dies (or `stop`): grants and releases at random.
fn client(
    addr: String,
    secret: String,
    model: Arc<Mutex<Model>>,
    mut mine: Vec<u64>,
    mut rng: fastrand::Rng,
    tag: String,
    stop: Arc<AtomicBool>,
) {
    let agent = rfaas::http_agent::agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(common::NO_HANG))
            .http_status_as_error(false)
            .build(),
    );
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if mine.len() < HOLD && (mine.is_empty() || rng.u64(..2) == 0) {
            let who = format!("{tag}-{n}");
            let body = json!({"cores": 1 + rng.u64(..3), "ttl_ms": 600_000, "client": who,
                              "allow_split": true});
            let Some((code, text)) = try_call(&agent, &addr, &secret, "POST", "/v1/leases", body)
            else {
                model.lock().unwrap().in_flight.insert(who);
                return;
            };
            if code == 503 {
                continue;
            }
            assert_eq!(code, 201, "grant: {text}");
            let g: Value = serde_json::from_str(&text).unwrap();
            let id = g["lease"].as_u64().unwrap();
            let mut m = model.lock().unwrap();
            assert!(m.seen.insert(id), "lease id {id} acknowledged twice");
            m.held.insert(
                id,
                (
                    g["token"].as_str().unwrap().to_string(),
                    parts_of(&g["parts"]),
                ),
            );
            mine.push(id);
        } else {
            let id = mine.swap_remove(rng.u64(..mine.len() as u64) as usize);
            let token = model.lock().unwrap().held[&id].0.clone();
            let path = format!("/v1/leases/{id}");
            let Some((code, text)) = try_call(
                &agent,
                &addr,
                &secret,
                "DELETE",
                &path,
                json!({"token": token}),
            ) else {
                let mut m = model.lock().unwrap();
                m.held.remove(&id);
                m.uncertain.insert(id);
                return;
            };
            assert_eq!(code, 200, "release {id}: {text}");
            let mut m = model.lock().unwrap();
            m.held.remove(&id);
            m.released.insert(id);
        }
    }
}

/// The checks after a restart.
fn check(rm: &ResourceManager, model: &Model, cycle: usize) {
    let live: HashMap<u64, (String, Vec<(String, u64)>)> =
        rm.expect(200, "GET", "/v1/leases", None)["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["id"].as_u64().unwrap(),
                    (
                        l["client"].as_str().unwrap().to_string(),
                        parts_of(&l["parts"]),
                    ),
                )
            })
            .collect();
    for (id, (_, parts)) in &model.held {
        let got = live
            .get(id)
            .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged lease {id} is gone"));
        assert_eq!(&got.1, parts, "cycle {cycle}: lease {id} changed its parts");
    }
    for id in &model.released {
        assert!(
            !live.contains_key(id),
            "cycle {cycle}: released lease {id} came back"
        );
    }
    for (id, (who, _)) in &live {
        assert!(
            model.held.contains_key(id)
                || model.uncertain.contains(id)
                || model.in_flight.contains(who),
            "cycle {cycle}: lease {id} of {who:?} was never granted to anyone waiting"
        );
    }
    // Capacity adds up, node by node, from the leases.
    let mut used: HashMap<String, u64> = HashMap::new();
    for (_, parts) in live.values() {
        for (node, cores) in parts {
            *used.entry(node.clone()).or_default() += cores;
        }
    }
    let nodes = rm.expect(200, "GET", "/v1/nodes", None)["nodes"].clone();
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), NODES, "cycle {cycle}: nodes lost");
    let mut total_used = 0;
    for n in nodes {
        let name = n["name"].as_str().unwrap();
        let u = used.get(name).copied().unwrap_or(0);
        assert!(u <= CORES, "cycle {cycle}: {u} cores leased on {name}");
        assert_eq!(
            n["cores_used"].as_u64().unwrap(),
            u,
            "cycle {cycle}: {name}"
        );
        assert_eq!(
            n["cores_free"].as_u64().unwrap(),
            CORES - u,
            "cycle {cycle}"
        );
        total_used += u;
    }
    let m = rm.metrics();
    assert_eq!(
        m["cores_used"].as_u64().unwrap(),
        total_used,
        "cycle {cycle}"
    );
    assert_eq!(m["leases_live"].as_u64().unwrap(), live.len() as u64);
}

#[test]
fn sigkill_during_grants_and_releases_loses_nothing_acknowledged() {
    let seed = std::env::var("RFAAS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rfaas::control::ids::first_id_now);
    println!("RFAAS_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    // A small log threshold and few remembered ended leases: compactions all the time.
    let mut rm = ResourceManager::start("compact_log_bytes = 16384\nkeep_ended = 100\n");
    for i in 0..NODES {
        rm.expect(
            201,
            "POST",
            "/v1/nodes",
            Some(
                json!({"name": format!("n{i}"), "address": format!("127.0.0.1:{}", 20000 + i),
                        "cores": CORES, "memory": 0}),
            ),
        );
    }
    let model = Arc::new(Mutex::new(Model::default()));
    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let held: Vec<u64> = model.lock().unwrap().held.keys().copied().collect();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let mine = held
                    .iter()
                    .copied()
                    .filter(|id| *id as usize % CLIENTS == c)
                    .collect();
                let (addr, secret, model, stop) = (
                    rm.http.clone(),
                    rm.secret.clone(),
                    model.clone(),
                    stop.clone(),
                );
                let r = rng.fork();
                let tag = format!("c{cycle}-{c}");
                std::thread::spawn(move || client(addr, secret, model, mine, r, tag, stop))
            })
            .collect();
        // A random moment of the burst (this chooses when to kill; it orders nothing).
        std::thread::sleep(Duration::from_millis(rng.u64(..150)));
        kill(Pid::from_raw(rm.child.id() as i32), Signal::SIGKILL).unwrap();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("a client failed");
        }
        rm.kill9_and_restart();
        check(&rm, &model.lock().unwrap(), cycle);
    }
    let m = model.lock().unwrap();
    let log = rm.log_text();
    let compactions = log.matches("state compacted into a snapshot").count();
    let torn = log.matches("dropping a torn tail").count();
    println!(
        "{CYCLES} kills: {} grants acknowledged, {} releases, {} cut off by a kill, \
         {compactions} compactions, {torn} torn tails dropped",
        m.seen.len(),
        m.released.len(),
        m.uncertain.len() + m.in_flight.len()
    );
    assert!(m.released.len() > CYCLES, "the burst did too little");
    assert!(compactions > 0, "no compaction happened:\n{log}");
    // Ids continue above every id ever acknowledged.
    let g = rm.expect(201, "POST", "/v1/leases", Some(json!({"cores": 1})));
    let id = g["lease"].as_u64().unwrap();
    assert!(m.seen.iter().all(|s| *s < id), "id {id} after restarts");
}
