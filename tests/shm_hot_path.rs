//! The shm data path allocates nothing: a counting global allocator watches 20,000
//! write-with-immediate round trips (post, poll, post receive) on two threads after a warm-up.
//!
//! Locks and system calls are checked by the benchmark under `strace -c` (see the README); this
//! test pins down allocation, which is the easiest of the three to regress silently.

// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rfaas::rdma::shm::ShmFabric;
use rfaas::rdma::{
    Access, CompletionQueue, ConnRequest, Fabric, Listener, MemoryRegion, Op, QpInit, QueuePair,
    RecvWr, SendFlags, SendWr, Wc,
};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call forwards to the system allocator unchanged; counting has no effect on it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn spin_one<C: CompletionQueue>(cq: &C) -> Wc {
    let mut wc = [Wc::EMPTY; 1];
    let mut spins = 0u64;
    loop {
        if cq.poll(&mut wc) == 1 {
            return wc[0];
        }
        spins += 1;
        if spins % 1024 == 0 {
            std::thread::yield_now(); // two cores, two spinning threads: let the other run
        }
        assert!(spins < 2_000_000_000, "no completion");
    }
}

#[test]
fn shm_round_trips_do_not_allocate() {
    let server = ShmFabric::new().unwrap();
    let client = ShmFabric::new().unwrap();
    let listener = server.listen("127.0.0.1:0").unwrap();
    let addr = listener.local_addr();
    let srv_buf = server
        .alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .unwrap();
    let cli_buf = client
        .alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .unwrap();
    let ccq = client.create_cq(64).unwrap();
    let recvs: Vec<RecvWr> = (0..32)
        .map(|i| RecvWr {
            wr_id: i,
            sge: None,
        })
        .collect();
    const ROUNDS: u32 = 20_000;
    const WARMUP: u32 = 1_000;

    let srv_remote = srv_buf.remote(0, 64);
    let server_thread = std::thread::spawn(move || {
        let scq = server.create_cq(64).unwrap();
        let req = listener
            .next_request(Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let back = rfaas::rdma::RemoteBuf::from_bytes(req.private_data()).unwrap();
        let qp = req.accept(QpInit::new(&scq), &recvs, &[]).unwrap();
        for _ in 0..WARMUP + ROUNDS {
            let wc = spin_one(&scq);
            assert!(wc.is_ok());
            qp.post_recv(&RecvWr {
                wr_id: wc.wr_id,
                sge: None,
            })
            .unwrap();
            let wr = SendWr {
                wr_id: 0,
                op: Op::WriteImm(back, wc.imm.unwrap()),
                sge: Some(srv_buf.sge(0, 64)),
                flags: SendFlags::empty(),
            };
            qp.post_send(&wr).unwrap();
        }
        qp
    });
    let recvs: Vec<RecvWr> = (0..32)
        .map(|i| RecvWr {
            wr_id: i,
            sge: None,
        })
        .collect();
    let pd = cli_buf.remote(0, 64).to_bytes();
    let (qp, _) = client
        .connect(
            &addr,
            QpInit::new(&ccq),
            &recvs,
            &pd,
            Duration::from_secs(5),
        )
        .unwrap();
    for i in 0..WARMUP + ROUNDS {
        if i == WARMUP {
            COUNTING.store(true, Ordering::SeqCst);
        }
        let wr = SendWr {
            wr_id: u64::from(i),
            op: Op::WriteImm(srv_remote, i),
            sge: Some(cli_buf.sge(0, 64)),
            flags: SendFlags::empty(),
        };
        qp.post_send(&wr).unwrap();
        let wc = spin_one(&ccq);
        assert_eq!(wc.imm, Some(i));
        qp.post_recv(&RecvWr {
            wr_id: wc.wr_id,
            sge: None,
        })
        .unwrap();
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let _server_qp = server_thread.join().unwrap();
    assert_eq!(
        allocs, 0,
        "{allocs} allocations during {ROUNDS} shm round trips"
    );
}
