//! The resource manager as a real process (`rfaas resource-manager`) on 127.0.0.1: nodes
//! register over HTTP, clients lease until the cluster is full, capacity comes back however a
//! lease ends, state survives `kill -9`, and bad or slow clients get clear 4xx answers while
//! everyone else is served.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{raw_exchange, wait_for, ResourceManager};
use serde_json::{json, Value};

fn node(name: &str, cores: u32) -> Value {
    json!({"name": name, "address": format!("127.0.0.1:{}", 10000 + cores), "cores": cores, "memory": 1u64 << 30})
}

fn register_three(rm: &ResourceManager) {
    for n in ["n1", "n2", "n3"] {
        let r = rm.expect(201, "POST", "/v1/nodes", Some(node(n, 4)));
        assert_eq!(r["new"], true);
        assert_eq!(r["node"]["cores_free"], 4);
    }
}

fn lease(rm: &ResourceManager, cores: u32, ttl_ms: u64) -> (u64, String) {
    let g = rm.expect(
        201,
        "POST",
        "/v1/leases",
        Some(json!({"cores": cores, "ttl_ms": ttl_ms, "client": "test"})),
    );
    (
        g["lease"].as_u64().unwrap(),
        g["token"].as_str().unwrap().to_string(),
    )
}

fn metric(m: &Value, key: &str) -> u64 {
    m[key]
        .as_u64()
        .or_else(|| m["counters"][key].as_u64())
        .unwrap_or_else(|| panic!("no {key} in {m}"))
}

#[test]
fn lease_until_full_then_release_returns_capacity_exactly() {
    let rm = ResourceManager::start("");
    register_three(&rm);
    // Registering again is idempotent: 200, not new.
    let again = rm.expect(200, "POST", "/v1/nodes", Some(node("n2", 4)));
    assert_eq!(again["new"], false);
    assert_eq!(
        rm.expect(200, "GET", "/v1/nodes", None)["nodes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // 3 cores at a time: one lease per node, then 3 cores free in total but 1 per node.
    let mut held = Vec::new();
    for _ in 0..3 {
        let g = rm.expect(
            201,
            "POST",
            "/v1/leases",
            Some(json!({"cores": 3, "policy": "spread"})),
        );
        assert_eq!(g["parts"].as_array().unwrap().len(), 1);
        assert!(g["parts"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        held.push((
            g["lease"].as_u64().unwrap(),
            g["token"].as_str().unwrap().to_string(),
        ));
    }
    let (code, body) = rm.call("POST", "/v1/leases", Some(json!({"cores": 2})));
    assert_eq!(code, 503, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "no capacity: 2 cores requested, largest free 1 on a node, 3 free in total"
        ),
        "{msg}"
    );
    // A split takes the last three single cores; then the cluster is full.
    let split = rm.expect(
        201,
        "POST",
        "/v1/leases",
        Some(json!({"cores": 3, "allow_split": true})),
    );
    assert_eq!(split["parts"].as_array().unwrap().len(), 3);
    held.push((
        split["lease"].as_u64().unwrap(),
        split["token"].as_str().unwrap().to_string(),
    ));
    let (code, body) = rm.call("POST", "/v1/leases", Some(json!({"cores": 1})));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no capacity"), "{body}");
    let m = rm.metrics();
    assert_eq!(
        (
            metric(&m, "cores_free"),
            metric(&m, "cores_used"),
            metric(&m, "leases_live")
        ),
        (0, 12, 4)
    );
    assert_eq!(
        rm.expect(200, "GET", "/v1/leases", None)["leases"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // A wrong token releases nothing.
    let (id, _) = &held[0];
    let (code, body) = rm.call(
        "DELETE",
        &format!("/v1/leases/{id}"),
        Some(json!({"token": "0".repeat(64)})),
    );
    assert_eq!(code, 403, "{body}");
    // Release all (first by header, the rest by body): capacity back exactly.
    let (code, body) = common::http_with_header(
        &rm.http,
        "DELETE",
        &format!("/v1/leases/{id}"),
        &rm.secret,
        ("X-Rfaas-Lease-Token", &held[0].1),
    );
    assert_eq!(code, 200, "{body}");
    for (id, token) in &held[1..] {
        let r = rm.expect(
            200,
            "DELETE",
            &format!("/v1/leases/{id}"),
            Some(json!({ "token": token })),
        );
        assert!(!r["parts"].as_array().unwrap().is_empty());
    }
    // Releasing twice: the lease has ended.
    let (code, body) = rm.call(
        "DELETE",
        &format!("/v1/leases/{}", held[1].0),
        Some(json!({"token": held[1].1})),
    );
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("has ended: released"), "{body}");
    let m = rm.metrics();
    assert_eq!(
        (
            metric(&m, "cores_free"),
            metric(&m, "cores_used"),
            metric(&m, "cores_total"),
            metric(&m, "leases_live"),
            metric(&m, "grants"),
            metric(&m, "releases"),
            metric(&m, "rejections"),
        ),
        (12, 0, 12, 0, 4, 4, 2)
    );
    assert_eq!(metric(&m, "memory_used"), 0);
    // A node drained takes no leases; deregistered, it is gone.
    rm.expect(200, "POST", "/v1/nodes/n1/drain", None);
    rm.expect(200, "POST", "/v1/nodes/n2/drain", None);
    let (code, body) = rm.call("POST", "/v1/leases", Some(json!({"cores": 4})));
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("\"node\":\"n3\""), "{body}");
    let d = rm.expect(200, "DELETE", "/v1/nodes/n3", None);
    assert_eq!(d["ended"].as_array().unwrap().len(), 1);
    let m = rm.metrics();
    assert_eq!(
        (metric(&m, "cores_total"), metric(&m, "cores_grantable")),
        (8, 0)
    );
    rm.expect(404, "POST", "/v1/nodes/n3/heartbeat", None);
}

#[test]
fn leases_renew_and_expire() {
    let rm = ResourceManager::start("");
    register_three(&rm);
    let (id, token) = lease(&rm, 2, 300);
    let (other, _) = lease(&rm, 1, 300);
    // Renewed for three TTLs and until the other one has expired.
    let t = Instant::now();
    wait_for(common::NO_HANG, "the unrenewed lease to expire", || {
        let r = rm.expect(
            200,
            "POST",
            &format!("/v1/leases/{id}/renew"),
            Some(json!({ "token": token })),
        );
        assert_eq!(r["ttl_ms"], 300);
        std::thread::sleep(Duration::from_millis(100));
        let o = rm.expect(200, "GET", &format!("/v1/leases/{other}"), None);
        (t.elapsed() >= Duration::from_millis(900) && o["state"] != "live").then_some(())
    });
    // Renewed: still live; the other one expired.
    let l = rm.expect(200, "GET", &format!("/v1/leases/{id}"), None);
    assert_eq!(l["state"], "live", "{l}");
    let o = rm.expect(200, "GET", &format!("/v1/leases/{other}"), None);
    assert_eq!(o["state"]["ended"]["kind"], "expired", "{o}");
    // Renewal stops: it expires.
    wait_for(common::NO_HANG, "the lease to expire", || {
        let m = rm.metrics();
        (metric(&m, "leases_live") == 0).then_some(())
    });
    let (code, body) = rm.call(
        "POST",
        &format!("/v1/leases/{id}/renew"),
        Some(json!({ "token": token })),
    );
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("expired"), "{body}");
    let m = rm.metrics();
    assert_eq!(
        (
            metric(&m, "expiries"),
            metric(&m, "cores_free"),
            metric(&m, "renewals") >= 5
        ),
        (2, 12, true)
    );
    let ended = rm.expect(200, "GET", "/v1/leases?ended=true", None);
    assert_eq!(ended["ended"].as_array().unwrap().len(), 2);
}

#[test]
fn missed_heartbeats_kill_the_node_and_end_its_leases() {
    let rm = ResourceManager::start("heartbeat_timeout_ms = 400\n");
    // Before the registrations: the silent node's last contact (its registration) is after it,
    // so it cannot be declared dead before t + 400 ms (less 10 ms: the clock counts whole ms).
    let t = Instant::now();
    register_three(&rm);
    let (id, token) = lease(&rm, 4, 60_000);
    let g = rm.expect(200, "GET", &format!("/v1/leases/{id}"), None);
    let dead = g["parts"][0]["node"].as_str().unwrap().to_string();
    let others: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != dead)
        .collect();
    wait_for(common::NO_HANG, "the silent node to be marked dead", || {
        for n in &others {
            rm.expect(200, "POST", &format!("/v1/nodes/{n}/heartbeat"), None);
        }
        let m = rm.metrics();
        (metric(&m, "nodes_dead") == 1).then_some(())
    });
    assert!(
        t.elapsed() >= Duration::from_millis(390),
        "declared dead before its heartbeat timeout: {:?}",
        t.elapsed()
    );
    // Its lease ends and its cores leave; the others (still beating) stay.
    let want = (2, 8, 8, 0, 1);
    let seen = wait_for(common::NO_HANG, "the dead node's lease to end", || {
        for n in &others {
            rm.expect(200, "POST", &format!("/v1/nodes/{n}/heartbeat"), None);
        }
        let m = rm.metrics();
        let seen = (
            metric(&m, "nodes_alive"),
            metric(&m, "cores_total"),
            metric(&m, "cores_free"),
            metric(&m, "leases_live"),
            metric(&m, "node_losses"),
        );
        (seen == want || metric(&m, "node_losses") > 1).then_some(seen)
    });
    assert_eq!(seen, want);
    let (code, body) = rm.call(
        "POST",
        &format!("/v1/leases/{id}/renew"),
        Some(json!({ "token": token })),
    );
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("died"), "{body}");
    let (code, body) = rm.call("POST", &format!("/v1/nodes/{dead}/heartbeat"), None);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("register again"), "{body}");
    let r = rm.expect(200, "POST", "/v1/nodes", Some(node(&dead, 4)));
    assert_eq!(r["revived"], true);
}

#[test]
fn kill9_and_restart_keep_nodes_and_leases() {
    let mut rm = ResourceManager::start("");
    register_three(&rm);
    let held: Vec<(u64, String)> = (0..5).map(|_| lease(&rm, 2, 60_000)).collect();
    rm.expect(
        200,
        "DELETE",
        &format!("/v1/leases/{}", held[4].0),
        Some(json!({"token": held[4].1})),
    );
    let before = rm.expect(200, "GET", "/v1/leases", None)["leases"].clone();
    assert_eq!(before.as_array().unwrap().len(), 4);

    rm.kill9_and_restart();
    let nodes = rm.expect(200, "GET", "/v1/nodes", None)["nodes"].clone();
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let after = rm.expect(200, "GET", "/v1/leases", None)["leases"].clone();
    let ids = |v: &Value| -> Vec<(u64, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| (l["id"].as_u64().unwrap(), l["parts"].clone()))
            .collect()
    };
    assert_eq!(ids(&after), ids(&before));
    let m = rm.metrics();
    assert_eq!((metric(&m, "cores_used"), metric(&m, "cores_free")), (8, 4));
    // Old tokens still work; no core is granted twice; ids are never reused.
    rm.expect(
        200,
        "POST",
        &format!("/v1/leases/{}/renew", held[0].0),
        Some(json!({"token": held[0].1})),
    );
    let (a, _) = lease(&rm, 2, 60_000);
    let (b, _) = lease(&rm, 2, 60_000);
    assert!(a > held[4].0 && b > a, "{a} {b}");
    let (code, body) = rm.call("POST", "/v1/leases", Some(json!({"cores": 1})));
    assert_eq!(code, 503, "{body}");
    let m = rm.metrics();
    assert_eq!((metric(&m, "cores_used"), metric(&m, "grants")), (12, 7));

    // SIGTERM: saved, exit 0, ready file gone; a third start still knows everything.
    assert!(rm.terminate(common::NO_HANG).unwrap().success());
    assert!(!rm.dir.path().join("ready.json").exists());
    rm.kill9_and_restart();
    let m = rm.metrics();
    assert_eq!(
        (metric(&m, "cores_used"), metric(&m, "leases_live")),
        (12, 6)
    );
    assert!(rm.log_text().contains("state restored from the state file"));
}

#[test]
fn bad_clients_get_clear_errors_and_others_are_served() {
    let request_timeout = Duration::from_secs(2);
    let rm = ResourceManager::start(&format!(
        "request_timeout_ms = {}\n",
        request_timeout.as_millis()
    ));
    register_three(&rm);
    let addr = rm.http.clone();
    let http = |method: &str, path: &str, secret: Option<&str>, body: &[u8]| {
        common::http(&addr, method, path, secret, Some(body))
    };
    let s = Some(rm.secret.as_str());

    let (code, body) = http("POST", "/v1/leases", s, b"{\"cores\": ");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad lease request"), "{body}");
    let (code, body) = http("POST", "/v1/nodes", s, b"{\"name\": \"x\", \"cores\": 2}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("missing field `address`"), "{body}");
    let (code, body) = http("POST", "/v1/leases", s, b"{\"cores\": 0}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("at least one core"), "{body}");
    let (code, body) = http("POST", "/v1/leases", Some("wrong"), b"{\"cores\": 1}");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("wrong cluster secret"), "{body}");
    let (code, body) = common::http(&addr, "GET", "/v1/nodes", None, None);
    assert_eq!(code, 401, "{body}");
    assert_eq!(common::http(&addr, "GET", "/v1/health", None, None).0, 200);
    let (code, body) = rm.call("GET", "/v1/leases/abc", None);
    assert_eq!(code, 400, "{body}");
    assert_eq!(rm.call("GET", "/v1/leases/424242", None).0, 404);
    assert_eq!(rm.call("GET", "/v1/nope", None).0, 404);
    let (code, body) = rm.call("DELETE", "/v1/leases/1", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("send the lease token"), "{body}");

    // 100 MB announced: 413 at once, nothing read.
    let auth = format!("Authorization: Bearer {}\r\n", rm.secret);
    let head = format!(
        "POST /v1/leases HTTP/1.1\r\nHost: rm\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: 104857600\r\n\r\n"
    );
    let mut big = head.into_bytes();
    big.extend(std::iter::repeat_n(b' ', 64 << 10));
    let (resp, took) = raw_exchange(&addr, &big, common::NO_HANG);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("larger than 65536 bytes"), "{resp}");
    assert!(took < common::NO_HANG, "{took:?}");
    // 100 MB chunked (no length announced): 413 after 64 KiB.
    let mut s2 = TcpStream::connect(&addr).unwrap();
    s2.set_read_timeout(Some(common::NO_HANG)).unwrap();
    write!(
        s2,
        "POST /v1/leases HTTP/1.1\r\nHost: rm\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..100 {
        if write!(s2, "{:x}\r\n", chunk.len()).is_err()
            || s2.write_all(&chunk).is_err()
            || s2.write_all(b"\r\n").is_err()
        {
            break; // the server answered and closed
        }
    }
    let mut resp = String::new();
    let _ = s2.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");

    // A client that never finishes its head, and one that never finishes its body (both in
    // place first), while another is served before they are cut.
    let slow_head = common::stalled_exchange(&addr, b"POST /v1/leases HTTP/1.1\r\nHost: rm\r\n");
    let req = format!(
        "POST /v1/leases HTTP/1.1\r\nHost: rm\r\n{auth}Content-Length: 100\r\n\r\n{{\"cores\""
    );
    let slow_body = common::stalled_exchange(&addr, req.as_bytes());
    let g = rm.expect(201, "POST", "/v1/leases", Some(json!({"cores": 1})));
    let served = Instant::now();
    assert!(g["token"].is_string());
    let (resp, took, cut) = slow_body.join().unwrap();
    assert!(served < cut, "a slow client held up another one");
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("not received within"), "{resp}");
    assert!(
        took >= request_timeout && took < common::NO_HANG,
        "{took:?}"
    );
    let (resp, took, cut) = slow_head.join().unwrap();
    assert!(served < cut, "a slow client held up another one");
    assert!(!resp.contains("201"), "{resp}");
    assert!(took < common::NO_HANG, "{took:?}");
    // Still serving; nothing leaked.
    let m = rm.metrics();
    assert_eq!((metric(&m, "cores_used"), metric(&m, "grants")), (1, 1));
}

#[test]
fn an_unrenewed_lease_expires_on_the_wall_clock_however_often_the_rm_restarts() {
    let mut rm = ResourceManager::start("");
    register_three(&rm);
    let g = rm.expect(
        201,
        "POST",
        "/v1/leases",
        Some(json!({"cores": 1, "ttl_ms": 1500, "client": "test"})),
    );
    let id = g["lease"].as_u64().unwrap();
    let deadline = g["expires_at_unix_ms"].as_u64().unwrap();
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // Restart it (kill -9) again and again until well past the deadline: the downtime counts,
    // and no restart moves the deadline.
    let mut restarts = 0;
    while restarts < 3 || unix_ms() < deadline + 500 {
        rm.kill9_and_restart();
        restarts += 1;
        let (code, body) = rm.call("GET", &format!("/v1/leases/{id}"), None);
        assert_eq!(code, 200, "{body}");
        let view: Value = serde_json::from_str(&body).unwrap();
        if view["state"] == "live" {
            assert_eq!(
                view["expires_at"].as_u64().unwrap(),
                deadline,
                "restart {restarts} moved the deadline: {view}"
            );
        }
    }
    wait_for(Duration::from_secs(10), "the lease to have expired", || {
        let (_, body) = rm.call("GET", &format!("/v1/leases/{id}"), None);
        body.contains("expired").then_some(())
    });
    assert_eq!(metric(&rm.metrics(), "cores_used"), 0);
}

#[test]
fn lease_ids_are_never_reused_even_when_the_state_file_is_lost() {
    let mut rm = ResourceManager::start("");
    register_three(&rm);
    let (first, _) = lease(&rm, 1, 60_000);
    // Lose the state (snapshot and log), restart: the node registers again, a new lease is
    // granted.
    lose_state(rm.dir.path());
    rm.kill9_and_restart();
    lose_state(rm.dir.path());
    rm.kill9_and_restart();
    rm.expect(201, "POST", "/v1/nodes", Some(node("n1", 4)));
    let (second, _) = lease(&rm, 1, 60_000);
    assert!(second > first, "id {second} after {first}: reused");
    // The old holder learns its lease is unknown, not that its token is wrong.
    let (code, body) = rm.call("GET", &format!("/v1/leases/{first}"), None);
    assert_eq!(code, 404, "{body}");
}

/// Removes the state file and its log segments (`state.json.log.N`).
fn lose_state(dir: &std::path::Path) {
    fs_remove(&dir.join("state.json"));
    let mut segments = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.json.log.")
        {
            fs_remove(&p);
            segments += 1;
        }
    }
    assert!(segments > 0, "no log segment beside the state file");
}

fn fs_remove(p: &std::path::Path) {
    std::fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
}
