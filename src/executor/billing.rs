//! Billing: workers add their execution and hot-polling time into the executor manager's
//! registered memory with remote fetch-and-add, which lands without any action by the manager
//! (it reads the record when asked). Workers accumulate locally and add about once a second and
//! when they stop, so billing costs nothing per invocation.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::control::executor_manager_api::{BillingTarget, TOKEN_LEN};
use crate::rdma::{
    Access, CompletionQueue, Fabric, FabricError, MemoryRegion, Op, QpInit, QueuePair, RemoteBuf,
    SendFlags, SendWr, Wc,
};

struct Inner<F: Fabric> {
    qp: F::Qp,
    cq: F::Cq,
    result: F::Mr,
}

/// The billing connection as workers see it while it is being made: connecting takes a fabric
/// handshake with the manager, which the executor does in the background, off the cold start's
/// path. Empty while connecting, then the connection (`None` when it failed: billing is off).
pub struct BillingSlot<F: Fabric> {
    value: OnceLock<Option<Billing<F>>>,
    settled: Mutex<bool>,
    changed: Condvar,
}

/// Longest [`BillingSlot::wait`]: more than the connection's own timeout.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

impl<F: Fabric> Default for BillingSlot<F> {
    fn default() -> Self {
        BillingSlot {
            value: OnceLock::new(),
            settled: Mutex::new(false),
            changed: Condvar::new(),
        }
    }
}

impl<F: Fabric> BillingSlot<F> {
    /// Settles the slot (once; later calls change nothing).
    pub fn settle(&self, billing: Option<Billing<F>>) {
        let _ = self.value.set(billing);
        *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    /// The connection if the slot is settled (`Some(None)`: settled without billing); `None`
    /// while it is still being made.
    pub fn try_get(&self) -> Option<Option<&Billing<F>>> {
        self.value.get().map(Option::as_ref)
    }

    /// The connection, waiting until the slot is settled (whoever settles it does so after one
    /// connection attempt, which has a timeout of its own; at most `SETTLE_TIMEOUT`).
    pub fn wait(&self) -> Option<&Billing<F>> {
        let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
        let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        while !*settled {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            settled = self
                .changed
                .wait_timeout(settled, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(settled);
        self.value.get().and_then(Option::as_ref)
    }
}

/// A connection to the manager's billing record of this allocation.
pub struct Billing<F: Fabric> {
    inner: Mutex<Inner<F>>,
    record: RemoteBuf,
}

impl<F: Fabric> Billing<F> {
    /// Connects to the manager's billing listener, authenticated by the allocation token.
    pub fn connect(
        fabric: &F,
        target: &BillingTarget,
        token: &[u8; TOKEN_LEN],
    ) -> Result<Self, FabricError> {
        let cq = fabric.create_cq(16)?;
        let result = fabric.alloc_mr(16, Access::LOCAL_WRITE)?;
        let (qp, _) = fabric.connect(
            &target.address,
            QpInit::new(&cq),
            &[],
            token,
            Duration::from_secs(5),
        )?;
        let record = RemoteBuf {
            addr: target.addr,
            rkey: target.rkey,
            len: 16,
        };
        Ok(Billing {
            inner: Mutex::new(Inner { qp, cq, result }),
            record,
        })
    }

    /// Adds `execution_ns` and `hot_polling_ns` to the record.
    pub fn add(&self, execution_ns: u64, hot_polling_ns: u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (i, v) in [execution_ns, hot_polling_ns].into_iter().enumerate() {
            if v == 0 {
                continue;
            }
            let wr = SendWr {
                wr_id: i as u64,
                op: Op::FetchAdd {
                    remote: self.record.slice(8 * i as u32, 8),
                    add: v,
                },
                sge: Some(inner.result.sge(8 * i, 8)),
                flags: SendFlags::SIGNALED,
            };
            if let Err(e) = inner.qp.post_send(&wr) {
                tracing::warn!("billing: {e}");
                return;
            }
            let mut wc = [Wc::EMPTY; 1];
            match inner
                .cq
                .poll_wait(&mut wc, Duration::from_secs(1), Duration::from_micros(50))
            {
                Ok(1) if wc[0].is_ok() => {}
                Ok(1) => tracing::warn!(status = ?wc[0].status, "billing update failed"),
                _ => tracing::warn!("billing update got no completion"),
            }
        }
    }
}
