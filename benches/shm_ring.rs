//! Micro-benchmark of the shm provider's completion ring (no I/O, no system call on this path):
//! a producer publishes a write-with-immediate entry and the owner polls it, in one thread, so
//! this is the ring's own cost without the cross-core cache-line transfer that
//! `fabric_pingpong --provider shm` (`make bench`) includes.

// criterion_group! defines a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rfaas::rdma::shm::RingLoop;

fn publish_and_poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("shm_ring");
    for depth in [16u32, 1024] {
        let mut ring = RingLoop::new(depth).expect("create a ring segment");
        let mut imm = 0u32;
        group.bench_function(format!("publish_poll/depth_{depth}"), |b| {
            b.iter(|| {
                imm = imm.wrapping_add(1);
                let got = ring.round_trip(black_box(imm));
                assert_eq!(got, Some(imm));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, publish_and_poll);
criterion_main!(benches);
