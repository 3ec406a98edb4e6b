//! Where a lease expires and a node dies: [`Scheduler::tick`] lets time pass (nodes past the
//! heartbeat timeout are marked dead, leases past their deadline end), and
//! [`Scheduler::next_deadline`] says when it next has something to do.

use super::clock::Millis;
use super::event::Event;
use super::lease::EndReason;
use super::node::NodeState;
use super::state_machine::Scheduler;

impl Scheduler {
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
            self.touch_node(id);
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
}
