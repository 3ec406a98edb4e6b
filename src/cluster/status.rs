//! `rfaas status`: the resource manager's nodes and leases, and every executor manager's cores,
//! memory and allocations, as tables.
//!
//! The executor managers are those the cluster file lists or, when it lists none and names a
//! resource manager, the nodes that resource manager knows (their HTTP addresses). Per manager
//! it shows the NIC its cores are ordered by, the cores nearest it, the order allocations take
//! cores in and those free; per allocation, its cores in worker order.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::file::{ClusterFile, ManagerEntry};
use super::ClusterError;
use crate::control::executor_manager_api::{ApiError, ManagerStatus};

/// `rfaas status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Cluster file (default: $RFAAS_CLUSTER). With a resource manager in it, its nodes and
    /// live leases come first, then each executor manager it knows.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Per-manager (and resource manager) timeout, milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// Asks one manager for its status.
pub fn query(
    entry: &ManagerEntry,
    secret: &str,
    timeout: Duration,
) -> Result<ManagerStatus, String> {
    let agent = crate::http_agent::agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build(),
    );
    let mut resp = agent
        .get(format!("http://{}/v1/status", entry.http))
        .header("Authorization", &format!("Bearer {secret}"))
        .call()
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        let msg = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        return Err(format!("HTTP {}: {msg}", resp.status().as_u16()));
    }
    resp.body_mut()
        .read_json::<ManagerStatus>()
        .map_err(|e| format!("bad answer: {e}"))
}

/// Bytes for people: `512 B`, `3.0 MiB`, `23.4 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Nanoseconds for people: `850 ns`, `12.3 µs`, `4.0 ms`, `2.5 s`.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.1} s", ns as f64 / 1e9),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// Renders the status of a cluster: one row per manager, then its allocations.
pub fn render(
    cluster: &ClusterFile,
    statuses: &[(ManagerEntry, Result<ManagerStatus, String>)],
) -> String {
    let mut out = format!(
        "provider {}, {} executor manager(s)\n\n",
        cluster.provider,
        statuses.len()
    );
    let mut rows = vec![[
        "MANAGER",
        "NODE",
        "HTTP",
        "CORES FREE/TOTAL",
        "MEMORY FREE/TOTAL",
        "ALLOCATIONS",
    ]
    .map(String::from)
    .to_vec()];
    for (e, st) in statuses {
        rows.push(match st {
            Ok(s) => {
                let live = s
                    .allocations
                    .iter()
                    .filter(|a| matches!(a.state.as_str(), "starting" | "running" | "stopping"))
                    .count();
                vec![
                    e.name.clone(),
                    s.node.clone(),
                    e.http.clone(),
                    format!("{}/{}", s.cores_free, s.cores_total),
                    format!(
                        "{} / {}",
                        human_bytes(s.memory_free),
                        human_bytes(s.memory_total)
                    ),
                    format!("{live} live, {} ended", s.allocations.len() - live),
                ]
            }
            Err(err) => vec![
                e.name.clone(),
                e.node.clone(),
                e.http.clone(),
                "-".into(),
                "-".into(),
                format!("unreachable: {err}"),
            ],
        });
    }
    out.push_str(&table(&rows));
    let cpus = crate::executor_manager::config::format_cpulist;
    let mut pinning = vec![[
        "MANAGER",
        "NIC",
        "NEAR NIC",
        "CORE ORDER",
        "FREE CORES",
        "OWN THREADS ON",
    ]
    .map(String::from)
    .to_vec()];
    for (e, st) in statuses {
        let Ok(s) = st else { continue };
        let or_dash = |v: &[u32]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                cpus(v)
            }
        };
        pinning.push(vec![
            e.name.clone(),
            s.nic.clone().unwrap_or_else(|| "-".into()),
            or_dash(&s.nic_cores),
            or_dash(&s.core_order),
            or_dash(&s.free_cores),
            match s.manager_cores.as_deref() {
                None => "-".to_string(),
                Some([]) => "all".to_string(),
                Some(own) => cpus(own),
            },
        ]);
    }
    if pinning.len() > 1 {
        out.push('\n');
        out.push_str(&table(&pinning));
    }
    let mut pools = vec![[
        "MANAGER",
        "POOL READY/SIZE",
        "POOL MEMORY",
        "FROM POOL",
        "FOUND EMPTY",
        "DIED IN POOL",
        "EXECUTORS START",
    ]
    .map(String::from)
    .to_vec()];
    for (e, st) in statuses {
        let Ok(s) = st else { continue };
        let p = &s.pool;
        pools.push(vec![
            e.name.clone(),
            format!("{}/{}", p.ready.len(), p.size),
            human_bytes(p.memory),
            p.taken.to_string(),
            p.empty.to_string(),
            p.died.to_string(),
            match (p.executor_start.as_str(), p.zygote) {
                ("fork", Some(pid)) => format!("fork (zygote {pid})"),
                ("fork", None) => "fork (no zygote: exec)".to_string(),
                ("", _) => "-".to_string(),
                (how, _) => how.to_string(),
            },
        ]);
    }
    if pools.len() > 1 {
        out.push('\n');
        out.push_str(&table(&pools));
    }
    let mut allocs = vec![[
        "MANAGER",
        "ALLOCATION",
        "STATE",
        "CORES",
        "EXECUTION",
        "HOT POLLING",
        "REASON",
    ]
    .map(String::from)
    .to_vec()];
    for (e, st) in statuses {
        for a in st.iter().flat_map(|s| &s.allocations) {
            allocs.push(vec![
                e.name.clone(),
                a.id.to_string(),
                a.state.clone(),
                crate::executor_manager::config::format_cpulist(&a.cores),
                human_ns(a.execution_ns),
                human_ns(a.hot_polling_ns),
                a.reason.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    if allocs.len() > 1 {
        out.push('\n');
        out.push_str(&table(&allocs));
    }
    out
}

/// The executor managers to query: the cluster file's, or, when it lists none, the nodes of
/// the resource manager's list that are not dead.
pub fn managers_to_query(
    cluster: &ClusterFile,
    nodes: Option<&crate::control::resource_manager_api::NodeList>,
) -> Vec<ManagerEntry> {
    if !cluster.executor_managers.is_empty() {
        return cluster.executor_managers.clone();
    }
    nodes
        .iter()
        .flat_map(|n| &n.nodes)
        .filter(|n| n.state.name() != "dead")
        .map(|n| ManagerEntry {
            name: n.name.clone(),
            http: n.address.clone(),
            node: n.name.clone(),
        })
        .collect()
}

/// Queries every manager of the cluster; the rendered table, and whether all answered.
pub fn run(args: &StatusArgs) -> Result<(String, bool), ClusterError> {
    let (_, cluster) = ClusterFile::from_args(args.cluster.as_deref())?;
    let secret = cluster.secret()?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let rm = cluster.resource_manager.as_ref().map(|addr| {
        let client = crate::client::RmClient::new(addr, &secret);
        (addr, client.nodes().and_then(|n| Ok((n, client.leases()?))))
    });
    let nodes = match &rm {
        Some((_, Ok((nodes, _)))) => Some(nodes),
        _ => None,
    };
    let statuses: Vec<_> = managers_to_query(&cluster, nodes)
        .into_iter()
        .map(|e| {
            let st = query(&e, &secret, timeout);
            (e, st)
        })
        .collect();
    let mut ok = statuses.iter().all(|(_, s)| s.is_ok());
    let mut out = render(&cluster, &statuses);
    if let Some(line) = crate::rdma::provider::describe_line(cluster.provider) {
        let _ = writeln!(out, "\n{line}");
    }
    if let Some((addr, answer)) = &rm {
        match answer {
            Ok((nodes, leases)) => out.push_str(&render_rm(addr, nodes, leases)),
            Err(e) => {
                ok = false;
                let _ = write!(out, "\nresource manager {addr}: unreachable: {e}\n");
            }
        }
    }
    Ok((out, ok))
}

/// Renders what the resource manager knows: its nodes (free and used cores) and live leases.
pub fn render_rm(
    addr: &str,
    nodes: &crate::control::resource_manager_api::NodeList,
    leases: &crate::control::resource_manager_api::LeaseList,
) -> String {
    let free: u64 = nodes
        .nodes
        .iter()
        .filter(|n| n.state.name() != "dead")
        .map(|n| u64::from(n.cores_free))
        .sum();
    let used: u64 = nodes.nodes.iter().map(|n| u64::from(n.cores_used)).sum();
    let mut out = format!(
        "\nresource manager {addr}: {} node(s), {free} cores free, {used} used, {} lease(s)\n\n",
        nodes.nodes.len(),
        leases.leases.len()
    );
    let mut rows = vec![["NODE", "STATE", "HTTP", "CORES FREE/USED/TOTAL", "LEASES"]
        .map(String::from)
        .to_vec()];
    for n in &nodes.nodes {
        rows.push(vec![
            n.name.clone(),
            n.state.name().to_string(),
            n.address.clone(),
            format!("{}/{}/{}", n.cores_free, n.cores_used, n.cores_total),
            n.leases.to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    if !leases.leases.is_empty() {
        let mut rows = vec![["LEASE", "CLIENT", "CORES", "PARTS", "EXPIRES IN"]
            .map(String::from)
            .to_vec()];
        for l in &leases.leases {
            rows.push(vec![
                l.id.to_string(),
                l.client.clone(),
                l.parts.iter().map(|p| p.cores).sum::<u32>().to_string(),
                l.parts
                    .iter()
                    .map(|p| format!("{}:{}", p.node, p.cores))
                    .collect::<Vec<_>>()
                    .join(","),
                human_ns(l.expires_at.0.saturating_sub(leases.now_ms) * 1_000_000),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::executor_manager_api::AllocationStatus;
    use crate::rdma::Provider;

    #[test]
    fn renders_a_readable_table() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_ns(850), "850 ns");
        assert_eq!(human_ns(2_500_000_000), "2.5 s");
        let e = |n: &str| ManagerEntry {
            name: n.into(),
            http: "127.0.0.1:1".into(),
            node: "host".into(),
        };
        let cluster = ClusterFile {
            version: 1,
            provider: Provider::Shm,
            secret_file: "s".into(),
            executor_managers: vec![],
            resource_manager: None,
        };
        let st = ManagerStatus {
            node: "host".into(),
            cores_total: 2,
            cores_free: 1,
            memory_total: 1 << 30,
            memory_free: 1 << 29,
            allocations: vec![AllocationStatus {
                id: 3,
                state: "exited".into(),
                reason: Some("killed by signal 11 (SIGSEGV)".into()),
                code: None,
                status: None,
                cores: vec![0],
                execution_ns: 1500,
                hot_polling_ns: 0,
            }],
            nic: Some("mlx5_0".into()),
            nic_cores: vec![0, 1],
            core_order: vec![0, 1],
            free_cores: vec![1],
            manager_cores: Some(vec![2, 3]),
            pool: crate::control::executor_manager_api::PoolStatus {
                size: 2,
                ready: vec![77],
                memory: 3 << 20,
                taken: 5,
                empty: 1,
                died: 0,
                nudge_ready: true,
                executor_start: "fork".into(),
                zygote: Some(76),
            },
        };
        let text = render(
            &cluster,
            &[
                (e("em-0"), Ok(st)),
                (e("em-1"), Err("connection refused".into())),
            ],
        );
        assert!(
            text.contains("em-0") && text.contains("1/2") && text.contains("512.0 MiB / 1.0 GiB"),
            "{text}"
        );
        assert!(text.contains("unreachable: connection refused"), "{text}");
        assert!(
            text.contains("SIGSEGV") && text.contains("1.5 µs"),
            "{text}"
        );
        let pin_row = text
            .lines()
            .find(|l| l.starts_with("em-0") && l.contains("mlx5_0"))
            .unwrap_or_else(|| panic!("no pinning row: {text}"));
        let cols: Vec<&str> = pin_row.split_whitespace().collect();
        assert_eq!(cols, ["em-0", "mlx5_0", "0-1", "0-1", "1", "2-3"], "{text}");
        assert!(
            text.contains("NEAR NIC") && text.contains("CORE ORDER"),
            "{text}"
        );
        let pool_row = text
            .lines()
            .skip_while(|l| !l.contains("POOL READY/SIZE"))
            .nth(1)
            .unwrap_or_else(|| panic!("no pool row: {text}"));
        let cols: Vec<&str> = pool_row.split_whitespace().collect();
        assert_eq!(
            cols,
            ["em-0", "1/2", "3.0", "MiB", "5", "1", "0", "fork", "(zygote", "76)"],
            "{text}"
        );
    }

    #[test]
    fn older_managers_without_pinning_fields_still_parse() {
        let old = r#"{"node":"n","cores_total":2,"cores_free":2,"memory_total":1,
                      "memory_free":1,"allocations":[]}"#;
        let st: ManagerStatus = serde_json::from_str(old).unwrap();
        assert_eq!((st.nic, st.core_order.len()), (None, 0));
        assert_eq!(st.manager_cores, None, "not reported: shown as -");
    }

    #[test]
    fn managers_come_from_the_resource_manager_when_the_file_lists_none() {
        use crate::control::resource_manager_api::NodeList;
        let mut cluster = ClusterFile {
            version: 1,
            provider: Provider::Shm,
            secret_file: "s".into(),
            executor_managers: vec![],
            resource_manager: Some("127.0.0.1:5000".into()),
        };
        let nodes: NodeList = serde_json::from_value(serde_json::json!({
            "now_ms": 5,
            "nodes": [
                {"id": 1, "name": "n1", "address": "10.0.0.1:10000", "state": "alive",
                 "cores_total": 2, "cores_used": 0, "cores_free": 2, "memory_total": 0,
                 "memory_used": 0, "memory_free": 0, "last_heartbeat": 4, "leases": 0},
                {"id": 2, "name": "n2", "address": "10.0.0.2:10000", "state": "dead",
                 "cores_total": 2, "cores_used": 0, "cores_free": 2, "memory_total": 0,
                 "memory_used": 0, "memory_free": 0, "last_heartbeat": 1, "leases": 0}
            ]
        }))
        .unwrap();
        let got = managers_to_query(&cluster, Some(&nodes));
        assert_eq!(
            got,
            vec![ManagerEntry {
                name: "n1".into(),
                http: "10.0.0.1:10000".into(),
                node: "n1".into()
            }]
        );
        assert!(managers_to_query(&cluster, None).is_empty());
        cluster.executor_managers = got.clone();
        let listed = managers_to_query(
            &cluster,
            Some(&NodeList {
                now_ms: 0,
                nodes: vec![],
            }),
        );
        assert_eq!(listed, got, "a file that lists managers is used as it is");
    }
}
