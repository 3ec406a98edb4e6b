//! Micro-benchmarks of the invocation protocol's pure parts (no I/O): the invocation header's
//! encode and decode, and the client's slot and credit machine (acquire a slot, match the
//! result immediate, read the status, release the slot).

// criterion_group! defines a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rfaas::protocol::{InvocationHeader, ResultImm, SlotTable, Status, HEADER_LEN};
use rfaas::rdma::RemoteBuf;

fn header() -> InvocationHeader {
    InvocationHeader {
        id: 0x1234_5678,
        function: 3,
        flags: 0,
        payload_len: 64,
        output: RemoteBuf {
            addr: 0x7f00_0000_1000,
            rkey: 42,
            len: 4096,
        },
    }
}

fn header_encode_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("invocation_header");
    let h = header();
    let mut buf = [0u8; HEADER_LEN + 64];
    group.bench_function("encode", |b| {
        b.iter(|| black_box(&h).encode(black_box(&mut buf[..])))
    });
    h.encode(&mut buf);
    group.bench_function("decode", |b| {
        b.iter(|| InvocationHeader::decode(black_box(&buf[..]), black_box(buf.len())))
    });
    assert_eq!(InvocationHeader::decode(&buf, buf.len()), Ok(h));
    group.finish();
}

fn slot_cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("slots");
    for slots in [1u32, 16, 256] {
        let mut t = SlotTable::new(slots, 1);
        group.bench_function(format!("acquire_complete_release/{slots}_slots"), |b| {
            b.iter(|| {
                let (slot, id) = t.acquire().expect("a free slot");
                let done = t
                    .complete(black_box(ResultImm::encode(slot, Status::Ok, id)))
                    .expect("matching result");
                let status = t.result(done.slot, done.id).expect("its result");
                t.release(slot);
                status
            })
        });
    }
    // With the table full but one: the credit check on a nearly exhausted connection.
    let mut t = SlotTable::new(256, 1);
    for _ in 0..255 {
        t.acquire().expect("a free slot");
    }
    group.bench_function("acquire_release/255_of_256_in_flight", |b| {
        b.iter(|| {
            let (slot, _) = t.acquire().expect("the last credit");
            assert!(t.acquire().is_none());
            t.release(black_box(slot));
        })
    });
    group.finish();
}

criterion_group!(benches, header_encode_decode, slot_cycle);
criterion_main!(benches);
