//! [`Event`]: what [`super::Scheduler::tick`] and node removals report, for the caller to tell
//! executor managers (stop the executors of ended leases) and clients.

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::lease::{EndReason, LeaseId, PartView};

/// A lease that ended, and where its cores were (their executors must be stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// The lease.
    pub lease: LeaseId,
    /// Who held it.
    pub client: String,
    /// How it ended.
    pub reason: EndReason,
    /// Its parts: the cores went back to these nodes.
    pub parts: Vec<PartView>,
}

/// Something that happened as time passed or a node went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A node missed its heartbeats: it is dead, its cores left the pool. The leases it held
    /// follow as [`Event::LeaseEnded`] with [`EndReason::NodeDead`].
    NodeDead {
        /// Its name.
        node: String,
        /// When it was last heard of.
        last_heartbeat: Millis,
    },
    /// A lease ended (expired, a node died or deregistered); its capacity is back.
    LeaseEnded(Ended),
}

impl Event {
    /// Whether this is a lease's expiry.
    pub fn is_expiry(&self) -> bool {
        matches!(self, Event::LeaseEnded(e) if e.reason == EndReason::Expired)
    }
}
