//! Billing: workers add their execution and hot-polling time into the executor manager's
//! registered memory with remote fetch-and-add, which lands without any action by the manager
//! (it reads the record when asked). Workers accumulate locally and add about once a second and
//! when they stop, so billing costs nothing per invocation.

use std::sync::Mutex;
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
