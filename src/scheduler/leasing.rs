//! Leases granted, renewed and released: [`Scheduler::grant`] (placement by policy, split over
//! nodes when allowed), [`Scheduler::renew`], [`Scheduler::release`], and the token checks.

use super::clock::Millis;
use super::error::SchedError;
use super::event::Ended;
use super::lease::{
    EndReason, Grant, Lease, LeaseId, LeaseRequest, LeaseState, Origin, Part, PartView,
};
use super::node::{Node, NodeId};
use super::state_machine::Scheduler;
use super::token::token_matches;

impl Scheduler {
    /// Whether `token` is the token of live lease `id` (constant-time compare); `false` for an
    /// unknown or ended lease. For services that check a lease someone presents.
    pub fn lease_token_matches(&self, id: LeaseId, token: &str) -> bool {
        self.leases
            .get(&id)
            .is_some_and(|l| token_matches(&l.token, token))
    }

    /// Why `id` is not live (ended or unknown), checking the token of a remembered one.
    pub(super) fn not_live(&self, id: LeaseId, token: &str) -> SchedError {
        match self.ended_by_id.get(&id) {
            Some(e) if !token_matches(&e.token, token) => SchedError::WrongToken(id),
            Some(e) => SchedError::LeaseEnded {
                lease: id,
                reason: match &e.view.state {
                    LeaseState::Ended(r) => r.clone(),
                    LeaseState::Live => EndReason::Released,
                },
            },
            None => SchedError::UnknownLease(id),
        }
    }

    pub(super) fn no_capacity(&mut self, req: &LeaseRequest) -> SchedError {
        self.counters.rejections += 1;
        SchedError::NoCapacity {
            requested: req.cores,
            memory_per_core: req.memory_per_core,
            largest_free: self.free.largest_free(),
            total_free: self.free.total_free(),
            split_allowed: req.allow_split,
        }
    }

    /// Grants a lease: cores (and memory) on one node by the request's policy, or on several
    /// when no node has them all and the request allows a split.
    pub fn grant(&mut self, req: LeaseRequest, now: Millis) -> Result<Grant, SchedError> {
        if req.cores == 0 {
            self.counters.rejections += 1;
            return Err(SchedError::Invalid(
                "a lease needs at least one core".into(),
            ));
        }
        let ttl_ms = match req.ttl {
            None => self.config.default_ttl_ms,
            Some(t) => u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
        }
        .min(self.config.max_ttl_ms);
        if ttl_ms == 0 {
            self.counters.rejections += 1;
            return Err(SchedError::Invalid("the TTL must be at least 1 ms".into()));
        }
        let Some(memory) = u64::from(req.cores).checked_mul(req.memory_per_core) else {
            self.counters.rejections += 1;
            return Err(SchedError::Invalid(
                "memory per core × cores overflows".into(),
            ));
        };
        let nodes = &self.nodes;
        let memory_free = |id: NodeId| nodes.get(&id).map_or(0, Node::memory_free);
        let placed = match self
            .free
            .place_one(req.cores, memory, req.policy, memory_free)
        {
            Some(id) => Some(vec![(id, req.cores)]),
            None if req.allow_split => self.free.place_split(
                req.cores,
                req.memory_per_core,
                self.config.max_split_parts.max(1),
                memory_free,
            ),
            None => None,
        };
        let Some(placed) = placed else {
            return Err(self.no_capacity(&req));
        };
        let token = self.tokens.next_token()?;
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        let mut parts = Vec::with_capacity(placed.len());
        let mut views = Vec::with_capacity(placed.len());
        for (nid, cores) in placed {
            let part = Part {
                node: nid,
                cores,
                memory: u64::from(cores) * req.memory_per_core,
            };
            let n = self.nodes.get_mut(&nid).expect("indexed node exists");
            self.free.remove(nid, n.cores_free());
            n.cores_used += part.cores;
            n.memory_used += part.memory;
            n.leases.insert(id);
            self.free.insert(nid, n.cores_free());
            views.push(PartView {
                node: n.name.clone(),
                address: n.address.clone(),
                cores: part.cores,
                memory: part.memory,
            });
            parts.push(part);
        }
        let expires_at = now.plus_ms(ttl_ms);
        self.deadlines.insert((expires_at, id));
        self.leases.insert(
            id,
            Lease {
                id,
                token: token.clone(),
                client: req.client,
                parts,
                ttl_ms,
                granted_at: now,
                expires_at,
                state: LeaseState::Live,
                origin: Origin::Granted,
            },
        );
        self.counters.grants += 1;
        self.touch_lease(id);
        Ok(Grant {
            lease: id,
            token,
            parts: views,
            ttl_ms,
            expires_at,
        })
    }

    /// Extends a live lease by its TTL from `now`; returns its new deadline. A lease whose
    /// deadline has passed cannot be renewed (it ends at the next tick).
    pub fn renew(
        &mut self,
        lease: LeaseId,
        token: &str,
        now: Millis,
    ) -> Result<Millis, SchedError> {
        let Some(l) = self.leases.get_mut(&lease) else {
            return Err(self.not_live(lease, token));
        };
        if !token_matches(&l.token, token) {
            return Err(SchedError::WrongToken(lease));
        }
        if now >= l.expires_at {
            return Err(SchedError::LeaseExpired(lease));
        }
        let to = now.plus_ms(l.ttl_ms).max(l.expires_at);
        self.deadlines.remove(&(l.expires_at, lease));
        self.deadlines.insert((to, lease));
        l.expires_at = to;
        self.counters.renewals += 1;
        self.touch_lease(lease);
        Ok(to)
    }

    /// Ends a lease at its client's request; its capacity is back. Returns where its
    /// executors run (to be stopped).
    pub fn release(&mut self, lease: LeaseId, token: &str) -> Result<Ended, SchedError> {
        match self.leases.get(&lease) {
            None => Err(self.not_live(lease, token)),
            Some(l) if !token_matches(&l.token, token) => Err(SchedError::WrongToken(lease)),
            Some(_) => Ok(self
                .end_lease(lease, EndReason::Released)
                .expect("the lease is live")),
        }
    }
}
