//! Billing: a fabric domain and listener owned by the executor manager, and one registered region
//! of 16-byte records (execution ns at offset 0, hot-polling ns at offset 8), one record per
//! live allocation.
//!
//! An executor connects a queue pair to the billing listener with the allocation token (32 raw
//! bytes) as private data; the connection is accepted only when the token matches the one of a
//! live allocation (constant-time comparison), and refused otherwise. The executor's workers then
//! fetch-add into the record with remote atomics, which land without any action by the manager;
//! the manager reads the record when asked (status) and when the allocation ends.
//!
//! Trust: every record lives in one region with one rkey, so an executor that passed the token
//! check could add into another allocation's record. Executors are the manager's own binary,
//! started by it; the check keeps out anything else.
//!
//! Records are handed out by the registry and reused last (FIFO), and zeroed when an allocation
//! opens one, so a late update of an executor that just died cannot land in a new owner's record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::control::executor_manager_api::{BillingTarget, TOKEN_LEN};
use crate::control::secret::secrets_equal;
use crate::rdma::{
    Access, CompletionQueue, ConnRequest, Fabric, FabricError, FabricUser, Listener, MemoryRegion,
    Provider, QpInit, QueuePair, Wc,
};

/// Bytes of one record.
pub const RECORD_BYTES: usize = 16;

enum Cmd {
    /// Drop the queue pair of this record.
    Close(usize),
}

/// The manager's billing endpoint. Dropping it stops the listener thread.
pub struct Billing {
    provider: Provider,
    address: String,
    records: Arc<dyn MemoryRegion>,
    tokens: Arc<Mutex<Vec<Option<[u8; TOKEN_LEN]>>>>,
    cmds: Mutex<mpsc::Sender<Cmd>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Billing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Billing")
            .field("provider", &self.provider)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

struct Started {
    address: String,
    records: Arc<dyn MemoryRegion>,
}

struct Serve {
    host: String,
    slots: usize,
    tokens: Arc<Mutex<Vec<Option<[u8; TOKEN_LEN]>>>>,
    cmds: mpsc::Receiver<Cmd>,
    stop: Arc<AtomicBool>,
    started: mpsc::Sender<Result<Started, FabricError>>,
}

impl FabricUser for Serve {
    type Output = ();

    fn run<F: Fabric>(self, fabric: F) {
        let setup = (|| {
            let records = fabric.alloc_mr(
                self.slots * RECORD_BYTES,
                Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
            )?;
            let listener = fabric.listen(&format!("{}:0", self.host))?;
            let cq = fabric.create_cq(64)?;
            Ok::<_, FabricError>((Arc::new(records), listener, cq))
        })();
        let (records, listener, cq) = match setup {
            Ok(s) => s,
            Err(e) => {
                let _ = self.started.send(Err(e));
                return;
            }
        };
        let records_dyn: Arc<dyn MemoryRegion> = records.clone();
        let _ = self.started.send(Ok(Started {
            address: listener.local_addr(),
            records: records_dyn,
        }));
        let mut qps: Vec<Option<F::Qp>> = (0..self.slots).map(|_| None).collect();
        let mut wc = [Wc::EMPTY; 16];
        while !self.stop.load(Ordering::Acquire) {
            while let Ok(Cmd::Close(slot)) = self.cmds.try_recv() {
                if let Some(qp) = qps.get_mut(slot).and_then(Option::take) {
                    qp.disconnect();
                }
            }
            while cq.poll(&mut wc) > 0 {}
            let req = match listener.next_request(Duration::from_millis(50)) {
                Ok(Some(req)) => req,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("billing listener failed: {e}");
                    return;
                }
            };
            let slot = {
                let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                let data = req.private_data();
                // Compare against every live token (no early exit), each in constant time.
                let mut found = None;
                for (i, t) in tokens.iter().enumerate() {
                    if let Some(t) = t {
                        if secrets_equal(t, data) && found.is_none() {
                            found = Some(i);
                        }
                    }
                }
                found
            };
            let Some(slot) = slot else {
                tracing::warn!(
                    peer = req.peer(),
                    "refused a billing connection: no allocation has that token"
                );
                req.reject("wrong allocation token");
                continue;
            };
            match req.accept(QpInit::new(&cq), &[], &[]) {
                Ok(qp) => {
                    if let Some(old) = qps[slot].replace(qp) {
                        old.disconnect();
                    }
                }
                Err(e) => tracing::warn!("accepting a billing connection failed: {e}"),
            }
        }
        for qp in qps.into_iter().flatten() {
            qp.disconnect();
        }
    }
}

impl Billing {
    /// Opens a domain of `provider`, registers `slots` records and listens on `host` (any port).
    pub fn start(provider: Provider, host: &str, slots: usize) -> Result<Billing, FabricError> {
        let slots = slots.max(1);
        let tokens = Arc::new(Mutex::new(vec![None; slots]));
        let stop = Arc::new(AtomicBool::new(false));
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (started_tx, started_rx) = mpsc::channel();
        let serve = Serve {
            host: host.to_string(),
            slots,
            tokens: tokens.clone(),
            cmds: cmd_rx,
            stop: stop.clone(),
            started: started_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("rfaas-billing".into())
            .spawn(move || {
                if let Err(e) = provider.run(serve) {
                    let _ = started_tx.send(Err(e));
                }
            })
            .map_err(|e| FabricError::io("start the billing thread", e))?;
        let started = started_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| FabricError::Timeout(Duration::from_secs(30)))??;
        Ok(Billing {
            provider,
            address: started.address,
            records: started.records,
            tokens,
            cmds: Mutex::new(cmd_tx),
            stop,
            thread: Some(thread),
        })
    }

    /// The fabric address executors connect to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Number of records.
    pub fn slots(&self) -> usize {
        self.records.len() / RECORD_BYTES
    }

    /// Zeroes record `slot` and accepts a billing connection presenting `token` for it.
    /// Returns where the executor adds.
    pub fn open(&self, slot: usize, token: [u8; TOKEN_LEN]) -> BillingTarget {
        self.records
            .atomic_u64(slot * RECORD_BYTES)
            .store(0, Ordering::Release);
        self.records
            .atomic_u64(slot * RECORD_BYTES + 8)
            .store(0, Ordering::Release);
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())[slot] = Some(token);
        let remote = self
            .records
            .remote(slot * RECORD_BYTES, RECORD_BYTES as u32);
        BillingTarget {
            address: self.address.clone(),
            addr: remote.addr,
            rkey: remote.rkey,
        }
    }

    /// The record `slot` now: (execution ns, hot-polling ns).
    pub fn read(&self, slot: usize) -> (u64, u64) {
        (
            self.records
                .atomic_u64(slot * RECORD_BYTES)
                .load(Ordering::Acquire),
            self.records
                .atomic_u64(slot * RECORD_BYTES + 8)
                .load(Ordering::Acquire),
        )
    }

    /// Refuses further connections for `slot`, drops its queue pair, and returns the record.
    pub fn close(&self, slot: usize) -> (u64, u64) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())[slot] = None;
        let _ = self
            .cmds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Cmd::Close(slot));
        self.read(slot)
    }
}

impl Drop for Billing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdma::{Op, SendFlags, SendWr};

    struct Client {
        address: String,
        target: BillingTarget,
        token: [u8; TOKEN_LEN],
    }

    impl FabricUser for Client {
        type Output = Result<(), FabricError>;
        fn run<F: Fabric>(self, fabric: F) -> Self::Output {
            let cq = fabric.create_cq(16)?;
            let res = fabric.alloc_mr(16, Access::LOCAL_WRITE)?;
            let wrong = [0u8; TOKEN_LEN];
            let refused = fabric.connect(
                &self.address,
                QpInit::new(&cq),
                &[],
                &wrong,
                Duration::from_secs(5),
            );
            assert!(
                matches!(refused, Err(FabricError::Rejected(_))),
                "wrong token accepted"
            );
            let (qp, _) = fabric.connect(
                &self.address,
                QpInit::new(&cq),
                &[],
                &self.token,
                Duration::from_secs(5),
            )?;
            let record = crate::rdma::RemoteBuf {
                addr: self.target.addr,
                rkey: self.target.rkey,
                len: 16,
            };
            for (i, add) in [(0u32, 1000u64), (1, 5), (0, 234)] {
                let wr = SendWr {
                    wr_id: 0,
                    op: Op::FetchAdd {
                        remote: record.slice(8 * i, 8),
                        add,
                    },
                    sge: Some(res.sge(0, 8)),
                    flags: SendFlags::SIGNALED,
                };
                qp.post_send(&wr)?;
                let mut wc = [Wc::EMPTY; 1];
                assert_eq!(
                    cq.poll_wait(&mut wc, Duration::from_secs(5), Duration::from_micros(50))?,
                    1
                );
                assert!(wc[0].is_ok(), "{:?}", wc[0].status);
            }
            Ok(())
        }
    }

    #[test]
    fn authenticated_fetch_adds_land_in_the_record() {
        let billing = Billing::start(Provider::Shm, "127.0.0.1", 4).unwrap();
        assert_eq!(billing.slots(), 4);
        let token = [7u8; TOKEN_LEN];
        let target = billing.open(2, token);
        let client = Client {
            address: billing.address().to_string(),
            target,
            token,
        };
        Provider::Shm.run(client).unwrap().unwrap();
        assert_eq!(billing.read(2), (1234, 5));
        assert_eq!(billing.read(1), (0, 0));
        assert_eq!(billing.close(2), (1234, 5));
        billing.open(2, [8u8; TOKEN_LEN]);
        assert_eq!(billing.read(2), (0, 0), "a reopened record starts at zero");
    }
}
