//! Identity and rights, with real processes on 127.0.0.1: a resource manager with a separate
//! node credential, executor managers holding it, and this process as a client holding only
//! the cluster secret (or a MUNGE credential from a `munged` of the test's own). Whatever one
//! client does, it cannot act as a node, nor end, redirect or read another's work.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{alloc_body, functions_library, http_as, manager_for_rm, wait_for, ResourceManager};
use serde_json::{json, Value};

fn bearer(s: &str) -> String {
    format!("Bearer {}", s.trim())
}

fn register_body(name: &str, address: &str) -> Vec<u8> {
    json!({"name": name, "address": address, "cores": 1, "memory": 0})
        .to_string()
        .into_bytes()
}

#[test]
fn only_the_node_credential_registers_heartbeats_drains_and_removes_nodes() {
    let rm = ResourceManager::start_secured("heartbeat_timeout_ms = 60000\n");
    let client = bearer(&rm.secret);
    let node = bearer(&rm.node_secret().expect("a node secret"));
    let call = |auth: &str, method: &str, path: &str, body: Option<&[u8]>| {
        http_as(&rm.http, method, path, Some(auth), &[], body)
    };

    // A client cannot register a node.
    let (code, body) = call(
        &client,
        "POST",
        "/v1/nodes",
        Some(&register_body("n1", "127.0.0.1:7")),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("node credential"), "{body}");
    assert_eq!(call(&client, "GET", "/v1/nodes/n1", None).0, 404);

    // The node credential can.
    let (code, body) = call(
        &node,
        "POST",
        "/v1/nodes",
        Some(&register_body("n1", "127.0.0.1:7")),
    );
    assert_eq!(code, 201, "{body}");

    // A client can neither redirect it, nor heartbeat, drain or remove it.
    let (code, body) = call(
        &client,
        "POST",
        "/v1/nodes",
        Some(&register_body("n1", "127.0.0.1:9")),
    );
    assert_eq!(code, 403, "{body}");
    for (method, path) in [
        ("POST", "/v1/nodes/n1/heartbeat"),
        ("POST", "/v1/nodes/n1/drain"),
        ("POST", "/v1/nodes/n1/resume"),
        ("DELETE", "/v1/nodes/n1"),
    ] {
        let (code, body) = call(&client, method, path, None);
        assert_eq!(code, 403, "{method} {path}: {body}");
    }
    let (code, body) = call(&client, "GET", "/v1/nodes/n1", None);
    assert_eq!(code, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["address"], "127.0.0.1:7", "not redirected: {body}");
    assert_eq!(view["state"], "alive", "{body}");

    // A wrong secret is no client at all.
    let (code, _) = call(&bearer("0000"), "GET", "/v1/nodes", None);
    assert_eq!(code, 401);

    // A client leases; the listings show the lease but never its token.
    let (code, body) = call(
        &client,
        "POST",
        "/v1/leases",
        Some(
            json!({"cores": 1, "client": "alice"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(code, 201, "{body}");
    let grant: Value = serde_json::from_str(&body).unwrap();
    let token = grant["token"].as_str().unwrap().to_string();
    let lease = grant["lease"].as_u64().unwrap();
    assert_eq!(token.len(), 64, "{body}");
    for path in [
        "/v1/leases".to_string(),
        "/v1/leases?ended=true".to_string(),
        format!("/v1/leases/{lease}"),
        "/v1/nodes".to_string(),
        "/v1/metrics".to_string(),
    ] {
        let (code, body) = call(&client, "GET", &path, None);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(
            !body.contains(&token),
            "{path} shows the lease token: {body}"
        );
    }
    // Another client, without the token, cannot release it.
    let (code, body) = call(
        &client,
        "DELETE",
        &format!("/v1/leases/{lease}"),
        Some(json!({"token": "00".repeat(32)}).to_string().as_bytes()),
    );
    assert_eq!(code, 403, "{body}");

    // The node credential removes the node; its lease ends.
    let (code, body) = call(&node, "DELETE", "/v1/nodes/n1", None);
    assert_eq!(code, 200, "{body}");
    let ended: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ended["ended"], json!([lease]), "{body}");
}

#[test]
fn ending_an_allocation_needs_its_token_or_its_lease_token() {
    let rm = ResourceManager::start_secured("default_ttl_ms = 60000\n");
    let core = common::cores()[0];
    let em = manager_for_rm(&rm, "n0", &[core], "");
    wait_for(Duration::from_secs(10), "the node to register", || {
        (rm.metrics()["nodes_alive"] == 1).then_some(())
    });
    let client = bearer(&rm.secret);
    let lease = |cores: u32| {
        let (code, body) = http_as(
            &rm.http,
            "POST",
            "/v1/leases",
            Some(&client),
            &[],
            Some(json!({"cores": cores}).to_string().as_bytes()),
        );
        assert_eq!(code, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        (
            v["lease"].as_u64().unwrap(),
            v["token"].as_str().unwrap().to_string(),
        )
    };
    let allocate = |lease: &(u64, String), hash: &str| {
        let mut req: Value = serde_json::from_str(&alloc_body(hash, &["echo"], 1)).unwrap();
        req["lease"] = json!(format!("{}:{}", lease.0, lease.1));
        let (code, body) = http_as(
            &em.http,
            "POST",
            "/v1/allocations",
            Some(&client),
            &[],
            Some(req.to_string().as_bytes()),
        );
        assert_eq!(code, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        (
            v["id"].as_u64().unwrap(),
            v["token"].as_str().unwrap().to_string(),
        )
    };
    let end = |id: u64, headers: &[(&str, &str)]| {
        http_as(
            &em.http,
            "DELETE",
            &format!("/v1/allocations/{id}"),
            Some(&client),
            headers,
            None,
        )
    };
    let state = |id: u64| {
        let (code, body) = em.call("GET", &format!("/v1/allocations/{id}"), None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let l1 = lease(1);
    let hash = em.upload_leased(functions_library(), &format!("{}:{}", l1.0, l1.1));
    let (a1, t1) = allocate(&l1, &hash);
    // Without a token, with a wrong one, with another lease's: refused, and it keeps running.
    let wrong = "ab".repeat(32);
    for headers in [
        vec![],
        vec![("X-Rfaas-Allocation-Token", wrong.as_str())],
        vec![("X-Rfaas-Lease-Token", wrong.as_str())],
    ] {
        let (code, body) = end(a1, &headers);
        assert_eq!(code, 403, "{headers:?}: {body}");
    }
    // An unknown id is answered the same way: ids reveal nothing.
    assert_eq!(end(999, &[]).0, 403);
    assert_eq!(state(a1), "running");
    // The status listing never shows allocation tokens.
    let (_, status) = em.call("GET", "/v1/status", None);
    assert!(!status.contains(&t1), "{status}");
    // Its own token ends it.
    let (code, body) = end(a1, &[("X-Rfaas-Allocation-Token", &t1)]);
    assert_eq!(code, 204, "{body}");
    assert_ne!(state(a1), "running");

    // The token of the lease it runs under ends it too.
    let (a2, _) = allocate(&l1, &hash);
    assert_eq!(state(a2), "running");
    let (code, body) = end(a2, &[("X-Rfaas-Lease-Token", &l1.1)]);
    assert_eq!(code, 204, "{body}");
    assert_ne!(state(a2), "running");
}

/// A `munged` of the test's own: its own key, socket and files in a temporary directory.
struct Munged {
    dir: tempfile::TempDir,
    child: Child,
}

impl Munged {
    /// `None` when munged is not installed (a failure under `CI=true`).
    fn start() -> Option<Munged> {
        if Command::new("munged").arg("--version").output().is_err() {
            common::skip_unless_ci("munged is not installed (scripts/setup.sh installs munge)");
            return None;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // Other users must reach the socket (the test makes a credential as `nobody`).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = dir.path().join("munge.key");
        std::fs::write(
            &key,
            rfaas::control::secret::random_bytes::<1024>().unwrap(),
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = |n: &str| dir.path().join(n);
        let child = Command::new("munged")
            .args(["--foreground", "--force"])
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", p("socket").display()))
            .arg(format!("--pid-file={}", p("munged.pid").display()))
            .arg(format!("--log-file={}", p("munged.log").display()))
            .arg(format!("--seed-file={}", p("munged.seed").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut m = Munged { dir, child };
        let socket = m.socket();
        wait_for(Duration::from_secs(10), "munged's socket", || {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("munged exited ({st})");
            }
            socket.exists().then_some(())
        });
        Some(m)
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("socket")
    }

    /// A credential made by `user` (`None`: this process's user).
    fn credential(&self, user: Option<&str>) -> String {
        let mut cmd = match user {
            None => Command::new("munge"),
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "munge"]);
                c
            }
        };
        let out = cmd
            .arg("--no-input")
            .arg(format!("--socket={}", self.socket().display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Munged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn munge_credentials_name_the_user_who_leases() {
    let Some(munged) = Munged::start() else {
        return;
    };
    let rm = ResourceManager::start_secured(&format!(
        "munge_socket = \"{}\"\n",
        munged.socket().display()
    ));
    let me = nix::unistd::geteuid().as_raw();
    let node = bearer(&rm.node_secret().unwrap());
    let (code, body) = http_as(
        &rm.http,
        "POST",
        "/v1/nodes",
        Some(&node),
        &[],
        Some(
            json!({"name": "n1", "address": "127.0.0.1:7", "cores": 4, "memory": 0})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(code, 201, "{body}");
    let grant = |cred: &str| {
        http_as(
            &rm.http,
            "POST",
            "/v1/leases",
            Some(&format!("Munge {cred}")),
            &[],
            Some(
                json!({"cores": 1, "client": "claims to be someone"})
                    .to_string()
                    .as_bytes(),
            ),
        )
    };

    // A lease taken with a MUNGE credential belongs to the user munged vouches for, whatever
    // the body claims.
    let cred = munged.credential(None);
    let (code, body) = grant(&cred);
    assert_eq!(code, 201, "{body}");
    let lease = serde_json::from_str::<Value>(&body).unwrap()["lease"]
        .as_u64()
        .unwrap();
    let (_, view) = rm.call("GET", &format!("/v1/leases/{lease}"), None);
    let view: Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["client"], format!("uid {me}"), "{view}");

    // The same credential again is a replay: refused.
    let (code, body) = grant(&cred);
    assert_eq!(code, 401, "{body}");
    assert!(body.to_lowercase().contains("replay"), "{body}");

    // Garbage and a credential of another key: refused.
    assert_eq!(grant("MUNGE:AAAA:").0, 401);
    assert_eq!(grant("not a credential").0, 401);

    // Another user (nobody) leases as itself; a MUNGE caller is no node.
    if me == 0 {
        let (code, body) = grant(&munged.credential(Some("nobody")));
        assert_eq!(code, 201, "{body}");
        let lease = serde_json::from_str::<Value>(&body).unwrap()["lease"]
            .as_u64()
            .unwrap();
        let (_, view) = rm.call("GET", &format!("/v1/leases/{lease}"), None);
        let nobody = String::from_utf8(
            Command::new("id")
                .args(["-u", "nobody"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(
            view.contains(&format!("\"uid {}\"", nobody.trim())),
            "{view}"
        );
    }
    let (code, body) = http_as(
        &rm.http,
        "POST",
        "/v1/nodes",
        Some(&format!("Munge {}", munged.credential(None))),
        &[],
        Some(&register_body("n9", "127.0.0.1:7")),
    );
    assert_eq!(code, 403, "{body}");
}

#[test]
fn a_client_with_munge_and_no_secret_leases_allocates_and_invokes() {
    use rfaas::client::{AllocationSpec, ClientOptions, Cluster, Credential, LeaseOptions};
    use rfaas::cluster::ClusterFile;
    use rfaas::control::munge::MungeSocket;
    let Some(munged) = Munged::start() else {
        return;
    };
    let keys = format!("munge_socket = \"{}\"\n", munged.socket().display());
    let rm = ResourceManager::start_secured(&keys);
    let em = manager_for_rm(&rm, "n1", &[common::cores()[0]], &keys);
    wait_for(common::NO_HANG, "the node registered", || {
        (rm.metrics()["nodes_alive"] == 1).then_some(())
    });
    // The cluster file names a secret this client cannot read: MUNGE needs none.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.json");
    std::fs::write(
        &file,
        json!({"version": 1, "provider": "shm", "secret_file": "absent",
               "resource_manager": rm.http})
        .to_string(),
    )
    .unwrap();
    let loaded = ClusterFile::load(&file).unwrap();
    assert!(Cluster::from_file(&loaded).is_err(), "no secret, no MUNGE");
    let cluster = Cluster::from_file_with(
        &loaded,
        Credential::Munge(MungeSocket::at(&munged.socket())),
    )
    .unwrap();
    let lease = cluster.lease(1, &LeaseOptions::default()).unwrap();
    // The lease belongs to the user munged vouches for.
    let (_, view) = rm.call("GET", &format!("/v1/leases/{}", lease.id()), None);
    let me = nix::unistd::geteuid().as_raw();
    assert!(view.contains(&format!("\"uid {me}\"")), "{view}");
    // Renewals and the executor manager's routes (upload, allocate) take fresh credentials.
    lease.renew().unwrap();
    let mut spec = AllocationSpec::new(functions_library().to_vec(), &["echo"]);
    spec.hot_timeout_ms = 0;
    let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
    let exec = cluster
        .allocate_leased(&fabric, &lease, &spec, ClientOptions::default())
        .unwrap();
    let f = exec.function("echo").unwrap();
    let mut out = vec![0u8; 64];
    let n = exec.invoke(f, b"as uid me", &mut out).unwrap();
    assert_eq!(&out[..n], b"as uid me");
    exec.deallocate().unwrap();
    lease.release().unwrap();

    // The command line takes MUNGE from the environment.
    let invoke = || common::invoke_echo_command(dir.path(), &file, b"from the environment");
    let out = invoke()
        .env("RFAAS_MUNGE_SOCKET", munged.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"from the environment",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without it, the same command cannot authenticate and says why.
    let out = invoke()
        .env_remove("RFAAS_MUNGE_SOCKET")
        .env_remove("RFAAS_MUNGE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("absent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(em);
}

#[test]
fn registrations_and_lease_requests_are_checked_field_by_field() {
    let rm = ResourceManager::start_secured("");
    let node = bearer(&rm.node_secret().unwrap());
    let register = |body: Value| {
        http_as(
            &rm.http,
            "POST",
            "/v1/nodes",
            Some(&node),
            &[],
            Some(body.to_string().as_bytes()),
        )
    };
    let hosted =
        |cores: u32| json!([{"lease": 77, "token": "ab".repeat(32), "cores": cores, "memory": 0}]);
    for (body, what) in [
        (
            json!({"name": "../../etc", "address": "127.0.0.1:7", "cores": 1}),
            "node name",
        ),
        (
            json!({"name": "a/b", "address": "127.0.0.1:7", "cores": 1}),
            "node name",
        ),
        (
            json!({"name": "n\u{202e}1", "address": "127.0.0.1:7", "cores": 1}),
            "node name",
        ),
        (
            json!({"name": "n1", "address": "not an address", "cores": 1}),
            "address",
        ),
        (
            json!({"name": "n1", "address": "127.0.0.1:0", "cores": 1}),
            "address",
        ),
        (
            json!({"name": "n1", "address": "127.0.0.1:7", "cores": 4294967295u32}),
            "cores",
        ),
        (
            json!({"name": "n1", "address": "127.0.0.1:7", "cores": 0}),
            "cores",
        ),
        (
            json!({"name": "n1", "address": "127.0.0.1:7", "cores": 1, "hosted": hosted(5)}),
            "hosted leases hold 5 cores",
        ),
        (
            json!({"name": "n1", "address": "127.0.0.1:7", "cores": 1, "extra": true}),
            "unknown field",
        ),
    ] {
        let (code, answer) = register(body.clone());
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(what), "{body}: {answer}");
    }
    let (_, nodes) = rm.call("GET", "/v1/nodes", None);
    assert!(!nodes.contains("\"n1\""), "{nodes}");
    // Within bounds: accepted, and the hosted lease is adopted within capacity.
    let (code, answer) =
        register(json!({"name": "n1", "address": "127.0.0.1:7", "cores": 2, "hosted": hosted(2)}));
    assert_eq!(code, 201, "{answer}");
    let view = rm.expect(200, "GET", "/v1/nodes/n1", None);
    assert_eq!(
        (view["cores_total"].clone(), view["cores_used"].clone()),
        (json!(2), json!(2))
    );

    // A lease request with a field the API does not know (a typo) is refused, not ignored.
    let (code, answer) = rm.call("POST", "/v1/leases", Some(json!({"cores": 1, "ttl": 5})));
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("unknown field"), "{answer}");
}

#[test]
fn slow_clients_without_credentials_cannot_lock_out_those_with() {
    use std::io::Write;
    let rm = ResourceManager::start("");
    // More connections than the server holds, each sending one byte of a request head and
    // then nothing, kept open by this test.
    let slow: Vec<std::net::TcpStream> = (0..rfaas::http::MAX_CONNECTIONS + 40)
        .filter_map(|_| {
            let mut s = std::net::TcpStream::connect(&rm.http).ok()?;
            s.write_all(b"G").ok()?;
            Some(s)
        })
        .collect();
    assert!(slow.len() > rfaas::http::MAX_CONNECTIONS, "{}", slow.len());
    // Authenticated clients are served, over and over, while those stay open.
    for i in 0..20 {
        let (code, body) = rm.call("GET", "/v1/metrics", None);
        assert_eq!(code, 200, "request {i}: {body}");
        let (code, body) = http_as(&rm.http, "GET", "/v1/health", None, &[], None);
        assert_eq!(code, 200, "health {i}: {body}");
    }
    drop(slow);
    // The refusals and closings did not flood the log.
    let warnings = rm.log_text().matches("WARN").count();
    assert!(warnings < 20, "{warnings} warnings:\n{}", rm.log_text());
}
