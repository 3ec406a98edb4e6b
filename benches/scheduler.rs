//! Micro-benchmark of the scheduler, the resource manager's core without its HTTP API (no I/O):
//! one grant followed by the release of that lease, with a population of executor managers and
//! live leases in place. `scheduler_bench` measures the same with larger populations and prints
//! percentiles; this one runs under `cargo bench` with criterion's statistics.

// criterion_group! defines a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rfaas::scheduler::{Config, LeaseRequest, Millis, NodeInfo, Policy, Scheduler, TokenSource};

fn request(cores: u32, policy: Policy) -> LeaseRequest {
    LeaseRequest {
        cores,
        memory_per_core: 1 << 30,
        policy,
        allow_split: false,
        ttl: Some(Duration::from_secs(3600)),
        client: "bench".into(),
    }
}

/// `nodes` executor managers of 64 cores, and `leases` live leases of 1 to 8 cores.
fn populated(nodes: u32, leases: u32) -> Scheduler {
    let mut s = Scheduler::with_tokens(Config::default(), TokenSource::Seeded(7));
    for i in 0..nodes {
        s.register(
            NodeInfo {
                name: format!("node{i:05}"),
                address: format!("10.0.{}.{}:10000", i >> 8, i & 255),
                cores: 64,
                memory: 1 << 40,
                hosted: Vec::new(),
            },
            Millis(0),
        )
        .expect("register");
    }
    for i in 0..leases {
        let policy = if i % 2 == 0 {
            Policy::Pack
        } else {
            Policy::Spread
        };
        s.grant(request(i % 8 + 1, policy), Millis(0))
            .expect("populate");
    }
    s
}

fn grant_and_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler");
    for (nodes, leases) in [(16, 64), (1_000, 10_000)] {
        let mut s = populated(nodes, leases);
        for (name, policy) in [("pack", Policy::Pack), ("spread", Policy::Spread)] {
            group.bench_function(
                format!("grant_release_4_cores_{name}/{nodes}_nodes_{leases}_leases"),
                |b| {
                    b.iter(|| {
                        let g = s
                            .grant(black_box(request(4, policy)), Millis(1))
                            .expect("grant");
                        s.release(g.lease, &g.token).expect("release");
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, grant_and_release);
criterion_main!(benches);
