//! [`Scheduler`]: the resource manager's registry of executor managers and leases, as one
//! state machine.
//!
//! Commands ([`register`](Scheduler::register), [`heartbeat`](Scheduler::heartbeat),
//! [`drain`](Scheduler::drain), [`deregister`](Scheduler::deregister),
//! [`grant`](Scheduler::grant), [`renew`](Scheduler::renew), [`release`](Scheduler::release))
//! and the passage of time ([`tick`](Scheduler::tick)) change it; what the caller must act on
//! (stop executors of ended leases, tell clients) comes back as values and [`Event`]s. No I/O,
//! no clock: `now` is passed in.
//!
//! # Invariants (checked by [`Scheduler::check_invariants`])
//!
//! * On every node, the cores and memory used are exactly the sum of the parts of the live
//!   leases on it, and free = total − used (zero if a node came back smaller than its leases):
//!   no core is counted in two leases and free never exceeds total.
//! * However a lease ends (release, expiry, node death, deregistration), every part goes back
//!   to its node at once.
//! * Only alive nodes are in the placement index, each with its current free cores; a lease
//!   never has a part on a dead node.
//!
//! # Cost
//!
//! Grant is O(parts · log n) (a range query on the free-core index, see
//! [`super::placement`]), plus a token; renew and release are O(parts · log n); `tick` is
//! O((expired + dead) · log n). A node whose memory is too short for a request is skipped,
//! so a memory-bound request can walk more nodes.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::error::SchedError;
use super::event::{Ended, Event};
use super::lease::{
    EndReason, Grant, Lease, LeaseId, LeaseRequest, LeaseState, LeaseView, Origin, Part, PartView,
};
use super::metrics::{Counters, Metrics};
use super::node::{Node, NodeId, NodeInfo, NodeState, NodeView};
use super::placement::FreeIndex;
use super::token::{token_matches, TokenSource};

/// Longest node name accepted.
pub const MAX_NODE_NAME: usize = 255;

/// Tunables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A node not heard of for longer than this is marked dead at the next tick.
    pub heartbeat_timeout_ms: u64,
    /// TTL of a lease whose request names none.
    pub default_ttl_ms: u64,
    /// Longest TTL granted (longer requests are clamped).
    pub max_ttl_ms: u64,
    /// TTL of a lease adopted from a re-registering node (its client must renew within it).
    pub adopt_ttl_ms: u64,
    /// Most nodes one split request is spread over.
    pub max_split_parts: usize,
    /// Ended leases remembered (for "lease N has ended: expired" answers).
    pub keep_ended: usize,
    /// The first lease id (a restarted resource manager without durable state should start
    /// above every id it may have granted before, e.g. from the wall clock).
    pub first_lease_id: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_timeout_ms: 10_000,
            default_ttl_ms: 60_000,
            max_ttl_ms: 24 * 3_600_000,
            adopt_ttl_ms: 60_000,
            max_split_parts: 64,
            keep_ended: 10_000,
            first_lease_id: 1,
        }
    }
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The node's id.
    pub node: NodeId,
    /// Whether it was unknown before.
    pub new: bool,
    /// Whether it had been marked dead (it is alive again).
    pub revived: bool,
    /// Hosted leases the scheduler did not know: now live, with [`Config::adopt_ttl_ms`].
    pub adopted: Vec<LeaseId>,
    /// Hosted leases it knew: their part on this node is at least what the node reports.
    pub confirmed: Vec<LeaseId>,
    /// Hosted leases that had already ended: the executor manager must stop them (their
    /// capacity is not counted).
    pub stale: Vec<(LeaseId, EndReason)>,
}

/// An ended lease as remembered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndedLease {
    /// What listings show.
    pub view: LeaseView,
    token: String,
}

/// The whole state, for persistence ([`Scheduler::snapshot`], [`Scheduler::from_snapshot`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken (times in it are relative to the clock of that process).
    pub taken_at: Millis,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Live leases.
    pub leases: Vec<Lease>,
    /// Recently ended leases, oldest first.
    pub ended: Vec<EndedLease>,
    /// Next node id.
    pub next_node: u32,
    /// Next lease id.
    pub next_lease: u64,
    /// Counters.
    pub counters: Counters,
}

/// The registry of executor managers and leases.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    tokens: TokenSource,
    nodes: HashMap<NodeId, Node>,
    by_name: HashMap<String, NodeId>,
    next_node: u32,
    free: FreeIndex,
    heartbeats: BTreeSet<(Millis, NodeId)>,
    leases: HashMap<LeaseId, Lease>,
    deadlines: BTreeSet<(Millis, LeaseId)>,
    next_lease: u64,
    ended: VecDeque<LeaseId>,
    ended_by_id: HashMap<LeaseId, EndedLease>,
    counters: Counters,
}

impl Scheduler {
    /// An empty scheduler with random tokens.
    pub fn new(config: Config) -> Scheduler {
        Scheduler::with_tokens(config, TokenSource::Random)
    }

    /// An empty scheduler taking tokens from `tokens`.
    pub fn with_tokens(config: Config, tokens: TokenSource) -> Scheduler {
        Scheduler {
            next_lease: config.first_lease_id.max(1),
            config,
            tokens,
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            next_node: 0,
            free: FreeIndex::default(),
            heartbeats: BTreeSet::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            ended: VecDeque::new(),
            ended_by_id: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- nodes -------------------------------------------------------------------------

    fn node_id(&self, name: &str) -> Result<NodeId, SchedError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| SchedError::UnknownNode(name.to_string()))
    }

    /// Takes a node out of the indexes (before changing its usage, state or heartbeat).
    fn unindex(&mut self, id: NodeId) {
        let n = &self.nodes[&id];
        if n.schedulable() {
            self.free.remove(id, n.cores_free());
        }
        if n.heartbeating() {
            self.heartbeats.remove(&(n.last_heartbeat, id));
        }
    }

    /// Puts a node back in the indexes its state calls for.
    fn reindex(&mut self, id: NodeId) {
        let n = &self.nodes[&id];
        if n.schedulable() {
            self.free.insert(id, n.cores_free());
        }
        if n.heartbeating() {
            self.heartbeats.insert((n.last_heartbeat, id));
        }
    }

    /// Registers an executor manager, or registers it again (idempotent: same name, same
    /// node; address and capacity are updated; a dead node comes back alive; a draining one
    /// stays draining). Leases it reports hosting are reconciled so that no core is counted
    /// twice: unknown ones are adopted, known ones keep at least the reported share, ended
    /// ones are returned as stale. All or nothing: an inconsistent report changes nothing.
    pub fn register(&mut self, info: NodeInfo, now: Millis) -> Result<Registered, SchedError> {
        if info.name.is_empty() || info.name.len() > MAX_NODE_NAME {
            return Err(SchedError::Invalid(format!(
                "node name must have 1 to {MAX_NODE_NAME} bytes"
            )));
        }
        if info.address.is_empty() {
            return Err(SchedError::Invalid(format!(
                "node {:?} has no address",
                info.name
            )));
        }
        if info.cores == 0 {
            return Err(SchedError::Invalid(format!(
                "node {:?} offers no cores",
                info.name
            )));
        }
        let mut seen = HashSet::new();
        for h in &info.hosted {
            if !seen.insert(h.lease) {
                return Err(SchedError::Invalid(format!(
                    "node {:?} reports lease {} twice",
                    info.name, h.lease
                )));
            }
            if h.cores == 0 {
                return Err(SchedError::Invalid(format!(
                    "node {:?} reports lease {} with no cores",
                    info.name, h.lease
                )));
            }
            if let Some(l) = self.leases.get(&h.lease) {
                if !token_matches(&l.token, &h.token) {
                    return Err(SchedError::Invalid(format!(
                        "node {:?} reports lease {} with a token that does not match",
                        info.name, h.lease
                    )));
                }
            }
        }

        let (id, new, revived) = match self.by_name.get(&info.name).copied() {
            Some(id) => {
                self.unindex(id);
                let n = self.nodes.get_mut(&id).expect("indexed node exists");
                let revived = n.state == NodeState::Dead;
                n.address = info.address;
                n.cores_total = info.cores;
                n.memory_total = info.memory;
                n.last_heartbeat = n.last_heartbeat.max(now);
                if revived {
                    n.state = NodeState::Alive;
                }
                (id, false, revived)
            }
            None => {
                let id = NodeId(self.next_node);
                self.next_node += 1;
                self.nodes.insert(
                    id,
                    Node {
                        id,
                        name: info.name.clone(),
                        address: info.address,
                        cores_total: info.cores,
                        cores_used: 0,
                        memory_total: info.memory,
                        memory_used: 0,
                        last_heartbeat: now,
                        registered_at: now,
                        state: NodeState::Alive,
                        leases: BTreeSet::new(),
                    },
                );
                self.by_name.insert(info.name, id);
                (id, true, false)
            }
        };

        let mut out = Registered {
            node: id,
            new,
            revived,
            adopted: Vec::new(),
            confirmed: Vec::new(),
            stale: Vec::new(),
        };
        for h in info.hosted {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if let Some(l) = self.leases.get_mut(&h.lease) {
                match l.parts.iter_mut().find(|p| p.node == id) {
                    Some(p) => {
                        let (dc, dm) = (
                            h.cores.saturating_sub(p.cores),
                            h.memory.saturating_sub(p.memory),
                        );
                        p.cores += dc;
                        p.memory += dm;
                        node.cores_used += dc;
                        node.memory_used += dm;
                    }
                    None => {
                        l.parts.push(Part {
                            node: id,
                            cores: h.cores,
                            memory: h.memory,
                        });
                        node.cores_used += h.cores;
                        node.memory_used += h.memory;
                        node.leases.insert(h.lease);
                    }
                }
                out.confirmed.push(h.lease);
            } else if let Some(e) = self.ended_by_id.get(&h.lease) {
                let reason = match &e.view.state {
                    LeaseState::Ended(r) => r.clone(),
                    LeaseState::Live => EndReason::Released,
                };
                out.stale.push((h.lease, reason));
            } else {
                let expires_at = now.plus_ms(self.config.adopt_ttl_ms);
                node.cores_used += h.cores;
                node.memory_used += h.memory;
                node.leases.insert(h.lease);
                self.leases.insert(
                    h.lease,
                    Lease {
                        id: h.lease,
                        token: h.token,
                        client: h.client,
                        parts: vec![Part {
                            node: id,
                            cores: h.cores,
                            memory: h.memory,
                        }],
                        ttl_ms: self.config.adopt_ttl_ms,
                        granted_at: now,
                        expires_at,
                        state: LeaseState::Live,
                        origin: Origin::Adopted,
                    },
                );
                self.deadlines.insert((expires_at, h.lease));
                self.next_lease = self.next_lease.max(h.lease.0.saturating_add(1));
                self.counters.adoptions += 1;
                out.adopted.push(h.lease);
            }
        }
        self.reindex(id);
        Ok(out)
    }

    /// A node is alive at `now`.
    pub fn heartbeat(&mut self, node: &str, now: Millis) -> Result<(), SchedError> {
        let id = self.node_id(node)?;
        let n = &self.nodes[&id];
        if n.state == NodeState::Dead {
            return Err(SchedError::NodeDead(node.to_string()));
        }
        if now > n.last_heartbeat {
            self.heartbeats.remove(&(n.last_heartbeat, id));
            self.heartbeats.insert((now, id));
            self.nodes.get_mut(&id).expect("node exists").last_heartbeat = now;
        }
        Ok(())
    }

    fn set_state(&mut self, node: &str, to: NodeState) -> Result<(), SchedError> {
        let id = self.node_id(node)?;
        if self.nodes[&id].state == NodeState::Dead {
            return Err(SchedError::NodeDead(node.to_string()));
        }
        self.unindex(id);
        self.nodes.get_mut(&id).expect("node exists").state = to;
        self.reindex(id);
        Ok(())
    }

    /// The node takes no new leases; the ones it has continue (idempotent).
    pub fn drain(&mut self, node: &str) -> Result<(), SchedError> {
        self.set_state(node, NodeState::Draining)
    }

    /// A draining node takes new leases again (idempotent).
    pub fn resume(&mut self, node: &str) -> Result<(), SchedError> {
        self.set_state(node, NodeState::Alive)
    }

    /// Forgets a node; its leases end ([`EndReason::Deregistered`]) and are returned as events.
    pub fn deregister(&mut self, node: &str) -> Result<Vec<Event>, SchedError> {
        let id = self.node_id(node)?;
        let reason = EndReason::Deregistered(node.to_string());
        let mut events = Vec::new();
        self.end_node_leases(id, &reason, &mut events);
        self.unindex(id);
        self.nodes.remove(&id);
        self.by_name.remove(node);
        Ok(events)
    }

    fn end_node_leases(&mut self, id: NodeId, reason: &EndReason, events: &mut Vec<Event>) {
        let held: Vec<LeaseId> = self.nodes[&id].leases.iter().copied().collect();
        for l in held {
            if let Some(e) = self.end_lease(l, reason.clone()) {
                events.push(Event::LeaseEnded(e));
            }
        }
    }

    // ----- leases ------------------------------------------------------------------------

    fn part_view(&self, p: &Part) -> PartView {
        let (node, address) = self
            .nodes
            .get(&p.node)
            .map_or((String::new(), String::new()), |n| {
                (n.name.clone(), n.address.clone())
            });
        PartView {
            node,
            address,
            cores: p.cores,
            memory: p.memory,
        }
    }

    fn lease_view(&self, l: &Lease) -> LeaseView {
        LeaseView {
            id: l.id,
            client: l.client.clone(),
            parts: l.parts.iter().map(|p| self.part_view(p)).collect(),
            ttl_ms: l.ttl_ms,
            granted_at: l.granted_at,
            expires_at: l.expires_at,
            state: l.state.clone(),
            origin: l.origin,
        }
    }

    /// Ends a live lease: every part goes back to its node; remembered as ended.
    fn end_lease(&mut self, id: LeaseId, reason: EndReason) -> Option<Ended> {
        let mut lease = self.leases.remove(&id)?;
        self.deadlines.remove(&(lease.expires_at, id));
        for p in &lease.parts {
            let Some(n) = self.nodes.get(&p.node) else {
                continue;
            };
            if n.schedulable() {
                self.free.remove(p.node, n.cores_free());
            }
            let n = self.nodes.get_mut(&p.node).expect("node exists");
            debug_assert!(n.cores_used >= p.cores && n.memory_used >= p.memory);
            n.cores_used = n.cores_used.saturating_sub(p.cores);
            n.memory_used = n.memory_used.saturating_sub(p.memory);
            n.leases.remove(&id);
            if n.schedulable() {
                self.free.insert(p.node, n.cores_free());
            }
        }
        match &reason {
            EndReason::Released => self.counters.releases += 1,
            EndReason::Expired => self.counters.expiries += 1,
            EndReason::NodeDead(_) | EndReason::Deregistered(_) => self.counters.node_losses += 1,
        }
        lease.state = LeaseState::Ended(reason.clone());
        let view = self.lease_view(&lease);
        let ended = Ended {
            lease: id,
            client: lease.client.clone(),
            reason,
            parts: view.parts.clone(),
        };
        if self.config.keep_ended > 0 {
            while self.ended.len() >= self.config.keep_ended {
                if let Some(old) = self.ended.pop_front() {
                    self.ended_by_id.remove(&old);
                }
            }
            self.ended.push_back(id);
            self.ended_by_id.insert(
                id,
                EndedLease {
                    view,
                    token: lease.token,
                },
            );
        }
        Some(ended)
    }

    /// Whether `token` is the token of live lease `id` (constant-time compare); `false` for an
    /// unknown or ended lease. For services that check a lease someone presents.
    pub fn lease_token_matches(&self, id: LeaseId, token: &str) -> bool {
        self.leases
            .get(&id)
            .is_some_and(|l| token_matches(&l.token, token))
    }

    /// Why `id` is not live (ended or unknown), checking the token of a remembered one.
    fn not_live(&self, id: LeaseId, token: &str) -> SchedError {
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

    fn no_capacity(&mut self, req: &LeaseRequest) -> SchedError {
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

    /// Lets time pass: nodes not heard of for longer than the heartbeat timeout are marked
    /// dead (their leases end), then leases whose deadline is at or before `now` expire.
    pub fn tick(&mut self, now: Millis) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(&(heard, id)) = self.heartbeats.first() {
            if heard.plus_ms(self.config.heartbeat_timeout_ms) >= now {
                break;
            }
            let name = self.nodes[&id].name.clone();
            events.push(Event::NodeDead {
                node: name.clone(),
                last_heartbeat: heard,
            });
            self.end_node_leases(id, &EndReason::NodeDead(name), &mut events);
            self.unindex(id);
            self.nodes.get_mut(&id).expect("node exists").state = NodeState::Dead;
            self.counters.node_deaths += 1;
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            match self.end_lease(id, EndReason::Expired) {
                Some(e) => events.push(Event::LeaseEnded(e)),
                None => {
                    self.deadlines.pop_first();
                }
            }
        }
        events
    }

    /// The earliest time at which [`Scheduler::tick`] has something to do (`None`: nothing
    /// pending), for a caller that sleeps until then.
    pub fn next_deadline(&self) -> Option<Millis> {
        let node = self
            .heartbeats
            .first()
            .map(|(h, _)| h.plus_ms(self.config.heartbeat_timeout_ms).plus_ms(1));
        let lease = self.deadlines.first().map(|(d, _)| *d);
        match (node, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- queries -----------------------------------------------------------------------

    /// One node.
    pub fn node(&self, name: &str) -> Option<NodeView> {
        self.by_name.get(name).map(|id| self.nodes[id].view())
    }

    /// Every node, by id (registration order).
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self.nodes.values().map(Node::view).collect();
        v.sort_unstable_by_key(|n| n.id);
        v
    }

    /// One lease, live or recently ended.
    pub fn lease(&self, id: LeaseId) -> Option<LeaseView> {
        match self.leases.get(&id) {
            Some(l) => Some(self.lease_view(l)),
            None => self.ended_by_id.get(&id).map(|e| e.view.clone()),
        }
    }

    /// Live leases, by id.
    pub fn leases(&self) -> Vec<LeaseView> {
        let mut v: Vec<LeaseView> = self.leases.values().map(|l| self.lease_view(l)).collect();
        v.sort_unstable_by_key(|l| l.id);
        v
    }

    /// Recently ended leases, oldest first.
    pub fn ended_leases(&self) -> Vec<LeaseView> {
        self.ended
            .iter()
            .filter_map(|id| self.ended_by_id.get(id).map(|e| e.view.clone()))
            .collect()
    }

    /// Live leases.
    pub fn live_leases(&self) -> usize {
        self.leases.len()
    }

    /// Gauges and counters now.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics {
            leases_live: self.leases.len() as u64,
            cores_grantable: self.free.total_free(),
            counters: self.counters,
            ..Metrics::default()
        };
        for n in self.nodes.values() {
            match n.state {
                NodeState::Alive => m.nodes_alive += 1,
                NodeState::Draining => m.nodes_draining += 1,
                NodeState::Dead => {
                    m.nodes_dead += 1;
                    continue;
                }
            }
            m.cores_total += u64::from(n.cores_total);
            m.cores_used += u64::from(n.cores_used);
            m.cores_free += u64::from(n.cores_free());
            m.memory_total += n.memory_total;
            m.memory_used += n.memory_used;
            m.memory_free += n.memory_free();
        }
        m
    }

    // ----- persistence -------------------------------------------------------------------

    /// The whole state at `now`, to persist.
    pub fn snapshot(&self, now: Millis) -> Snapshot {
        let mut nodes: Vec<Node> = self.nodes.values().cloned().collect();
        nodes.sort_unstable_by_key(|n| n.id);
        let mut leases: Vec<Lease> = self.leases.values().cloned().collect();
        leases.sort_unstable_by_key(|l| l.id);
        Snapshot {
            taken_at: now,
            nodes,
            leases,
            ended: self
                .ended
                .iter()
                .filter_map(|id| self.ended_by_id.get(id).cloned())
                .collect(),
            next_node: self.next_node,
            next_lease: self.next_lease,
            counters: self.counters,
        }
    }

    /// Restores a snapshot in a process whose clock reads `now`: leases keep the time they
    /// had left when it was taken (the downtime is not held against them), nodes get a full
    /// heartbeat timeout to show up. Usage is recomputed from the leases, not trusted.
    pub fn from_snapshot(
        config: Config,
        tokens: TokenSource,
        snap: Snapshot,
        now: Millis,
    ) -> Result<Scheduler, SchedError> {
        let rebase = |t: Millis| Millis(now.0.saturating_sub(snap.taken_at.0.saturating_sub(t.0)));
        let mut s = Scheduler::with_tokens(config, tokens);
        s.counters = snap.counters;
        s.next_node = snap.next_node;
        s.next_lease = s.next_lease.max(snap.next_lease);
        for mut n in snap.nodes {
            if s.nodes.contains_key(&n.id) || s.by_name.contains_key(&n.name) {
                return Err(SchedError::Invalid(format!(
                    "snapshot lists node {:?} twice",
                    n.name
                )));
            }
            n.cores_used = 0;
            n.memory_used = 0;
            n.leases.clear();
            n.registered_at = rebase(n.registered_at);
            n.last_heartbeat = now;
            s.next_node = s.next_node.max(n.id.0.saturating_add(1));
            s.by_name.insert(n.name.clone(), n.id);
            s.nodes.insert(n.id, n);
        }
        for mut l in snap.leases {
            if l.parts.is_empty() || s.leases.contains_key(&l.id) {
                return Err(SchedError::Invalid(format!(
                    "snapshot lease {} is empty or listed twice",
                    l.id
                )));
            }
            for p in &l.parts {
                let n = s.nodes.get_mut(&p.node).ok_or_else(|| {
                    SchedError::Invalid(format!("snapshot lease {} is on an unknown node", l.id))
                })?;
                if n.state == NodeState::Dead || !n.leases.insert(l.id) {
                    return Err(SchedError::Invalid(format!(
                        "snapshot lease {} is on dead node {:?} or twice on one node",
                        l.id, n.name
                    )));
                }
                n.cores_used += p.cores;
                n.memory_used += p.memory;
            }
            l.state = LeaseState::Live;
            l.granted_at = rebase(l.granted_at);
            l.expires_at = now.plus_ms(l.expires_at.0.saturating_sub(snap.taken_at.0));
            s.next_lease = s.next_lease.max(l.id.0.saturating_add(1));
            s.deadlines.insert((l.expires_at, l.id));
            s.leases.insert(l.id, l);
        }
        for e in snap.ended {
            let id = e.view.id;
            if s.leases.contains_key(&id) || s.ended_by_id.contains_key(&id) {
                continue;
            }
            s.next_lease = s.next_lease.max(id.0.saturating_add(1));
            s.ended.push_back(id);
            s.ended_by_id.insert(id, e);
        }
        let ids: Vec<NodeId> = s.nodes.keys().copied().collect();
        for id in ids {
            s.reindex(id);
        }
        Ok(s)
    }

    // ----- invariants --------------------------------------------------------------------

    /// Checks every invariant (O(nodes + leases)); the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut used: HashMap<NodeId, (u32, u64, BTreeSet<LeaseId>)> = HashMap::new();
        for (id, l) in &self.leases {
            if *id != l.id || l.state != LeaseState::Live || l.parts.is_empty() {
                return Err(format!("lease {id} is malformed"));
            }
            if !self.deadlines.contains(&(l.expires_at, *id)) {
                return Err(format!("lease {id} has no deadline"));
            }
            if self.ended_by_id.contains_key(id) {
                return Err(format!("lease {id} is both live and ended"));
            }
            let mut on = HashSet::new();
            for p in &l.parts {
                if !on.insert(p.node) {
                    return Err(format!("lease {id} has two parts on node {}", p.node));
                }
                match self.nodes.get(&p.node) {
                    None => return Err(format!("lease {id} is on unknown node {}", p.node)),
                    Some(n) if n.state == NodeState::Dead => {
                        return Err(format!("lease {id} is on dead node {}", n.name))
                    }
                    Some(_) => {}
                }
                let u = used.entry(p.node).or_default();
                u.0 += p.cores;
                u.1 += p.memory;
                u.2.insert(*id);
            }
        }
        if self.deadlines.len() != self.leases.len() {
            return Err("stale deadlines".into());
        }
        let (mut indexed, mut heartbeating) = (0, 0);
        for (id, n) in &self.nodes {
            let (c, m, ls) = used.remove(id).unwrap_or_default();
            if n.cores_used != c || n.memory_used != m || n.leases != ls {
                return Err(format!(
                    "node {}: {} cores / {} bytes / {} leases used, leases hold {c} / {m} / {}",
                    n.name,
                    n.cores_used,
                    n.memory_used,
                    n.leases.len(),
                    ls.len()
                ));
            }
            if n.cores_free() > n.cores_total || n.memory_free() > n.memory_total {
                return Err(format!("node {}: free exceeds total", n.name));
            }
            if n.schedulable() {
                indexed += 1;
                if !self.free.contains(*id, n.cores_free()) {
                    return Err(format!("node {} missing from the free index", n.name));
                }
            }
            if n.heartbeating() {
                heartbeating += 1;
                if !self.heartbeats.contains(&(n.last_heartbeat, *id)) {
                    return Err(format!("node {} missing from the heartbeat index", n.name));
                }
            }
            if self.by_name.get(&n.name) != Some(id) {
                return Err(format!("node {} missing from the name map", n.name));
            }
        }
        if indexed != self.free.len() || heartbeating != self.heartbeats.len() {
            return Err("stale index entries".into());
        }
        if self.by_name.len() != self.nodes.len() {
            return Err("stale name map entries".into());
        }
        let free: u64 = self
            .nodes
            .values()
            .filter(|n| n.schedulable())
            .map(|n| u64::from(n.cores_free()))
            .sum();
        if free != self.free.total_free() {
            return Err(format!(
                "index says {} free, nodes say {free}",
                self.free.total_free()
            ));
        }
        if self.ended.len() != self.ended_by_id.len() {
            return Err("ended ring and map disagree".into());
        }
        Ok(())
    }
}
