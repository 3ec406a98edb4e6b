//! The README's client-library snippet ("The client library"), compiled: every line of the
//! README's block appears here, in order (`tests/docs.rs` checks it), with `main` around it
//! and a `println!` after each result.
//!
//! ```sh
//! target/release/rfaas local-cluster start --run-dir /tmp/rfaas
//! cargo run --release --example client_library
//! ```

use rfaas::client::{AllocationSpec, ClientOptions, Cluster};
use rfaas::rdma::shm::ShmFabric;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::open(Some("/tmp/rfaas/cluster.json".as_ref()))?;
    let mut spec = AllocationSpec::new(std::fs::read("target/release/libfunctions.so")?, &["echo"]);
    spec.cores = 2;
    let exec = cluster.allocate(&ShmFabric::new()?, &spec, ClientOptions::default(), 0)?;
    let echo = exec.function("echo")?;
    let mut out = vec![0u8; 4096];
    let n = exec.invoke(echo, b"hello", &mut out)?; // blocking
    println!("invoke: {:?}", String::from_utf8_lossy(&out[..n]));
    let p = exec.submit(Some(1), echo, b"async", 4096)?; // in flight; many per worker
    let m = exec.wait(p, &mut out)?;
    println!("submit + wait: {:?}", String::from_utf8_lossy(&out[..m]));
    exec.deallocate()?;
    Ok(())
}
