//! The fleet registry: which agents exist, which have a session open, what
//! they last reported. In memory; the watermarks it starts from come from the
//! store, so the fleet survives a restart of the core.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sightline_proto::v1::{AgentInfo, AgentStatus, Hello};
use tokio_util::sync::CancellationToken;

use crate::{edge::Peer, metrics::Metrics};

#[derive(Debug, Default, Clone)]
struct Entry {
    info: AgentInfo,
    /// The open session (id, and the token that ends it).
    session: Option<(u64, CancellationToken)>,
}

/// All agents the core knows.
pub struct Fleet {
    agents: Mutex<HashMap<String, Entry>>,
    next_session: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
}

impl Fleet {
    pub fn new(metrics: Arc<Metrics>, known: Vec<(String, u64, u64)>) -> Self {
        let mut agents = HashMap::new();
        for (agent, epoch, wm) in known {
            let e: &mut Entry = agents.entry(agent.clone()).or_default();
            // Keep the highest epoch's view (any one is better than none).
            if e.info.agent_id.is_empty() || epoch == e.info.epoch || wm > e.info.acked_seq {
                e.info.agent_id = agent;
                e.info.epoch = epoch;
                e.info.acked_seq = wm;
            }
        }
        Self {
            agents: Mutex::new(agents),
            next_session: std::sync::atomic::AtomicU64::new(1),
            metrics,
        }
    }

    /// Registers a new session; ends the agent's previous one, if any.
    /// Returns the session id and the token that ends this session.
    pub fn connect(&self, hello: &Hello, peer: &Peer, acked_seq: u64) -> (u64, CancellationToken) {
        let (agent, epoch) = (hello.agent_id.as_str(), hello.epoch);
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut agents = self.agents.lock().unwrap();
        let e = agents.entry(agent.to_string()).or_default();
        if let Some((old, t)) = e.session.take() {
            tracing::info!(
                agent,
                old_session = old,
                "a newer session supersedes the open one"
            );
            t.cancel();
        }
        e.session = Some((id, token.clone()));
        let i = &mut e.info;
        i.agent_id = agent.to_string();
        if i.epoch != epoch {
            i.duplicates_transport = 0;
        }
        i.epoch = epoch;
        i.connected = true;
        i.version = hello.version.clone();
        i.peer = peer.addr.clone();
        i.link = peer.link.to_string();
        i.agent_transport = hello.transport.clone();
        i.revoked = false;
        i.last_refusal.clear();
        i.last_seen_ms = sightline_proto::now_ms();
        i.acked_seq = acked_seq;
        i.next_seq = hello.next_seq;
        i.buffer_depth = hello.buffer_depth;
        i.lag = hello.next_seq.saturating_sub(acked_seq + 1);
        self.publish_gauges(i);
        (id, token)
    }

    /// Marks the session closed, if it is still the agent's current one.
    pub fn disconnect(&self, agent: &str, session: u64) {
        let mut agents = self.agents.lock().unwrap();
        if let Some(e) = agents.get_mut(agent) {
            if e.session.as_ref().is_some_and(|(id, _)| *id == session) {
                e.session = None;
                e.info.connected = false;
                self.metrics
                    .agent_connected
                    .get_or_create(&Metrics::agent(agent))
                    .set(0);
            }
        }
    }

    /// The agent reported its buffer and its cameras.
    pub fn status(&self, agent: &str, status: AgentStatus) {
        let mut agents = self.agents.lock().unwrap();
        if let Some(e) = agents.get_mut(agent) {
            let i = &mut e.info;
            let (next_seq, depth) = (status.next_seq, status.buffer_depth);
            i.last_seen_ms = sightline_proto::now_ms();
            i.next_seq = next_seq;
            i.buffer_depth = depth;
            i.cameras = status.cameras;
            if status.epochs_started > i.epochs_started {
                tracing::warn!(agent, epochs_started = status.epochs_started, why = %status.last_new_epoch,
                    "the agent started a new epoch: its buffer and the core's state disagreed");
            }
            i.epochs_started = status.epochs_started;
            i.last_new_epoch = status.last_new_epoch;
            if i.buffer_disk_fault != status.buffer_disk_fault
                && !status.buffer_disk_fault.is_empty()
            {
                tracing::warn!(agent, fault = %status.buffer_disk_fault, "the agent's buffer disk refuses writes");
            }
            i.buffer_disk_fault = status.buffer_disk_fault;
            i.oldest_held_ms = status.oldest_held_ms;
            i.intake = status.intake;
            i.lag = next_seq.saturating_sub(i.acked_seq + 1);
            self.publish_gauges(i);
        }
    }

    /// A commit for the agent was acknowledged.
    pub fn committed(
        &self,
        agent: &str,
        acked: u64,
        dup_transport: u64,
        dup_semantic: u64,
        rejected: u64,
    ) {
        let mut agents = self.agents.lock().unwrap();
        if let Some(e) = agents.get_mut(agent) {
            let i = &mut e.info;
            i.last_seen_ms = sightline_proto::now_ms();
            i.acked_seq = i.acked_seq.max(acked);
            i.next_seq = i.next_seq.max(acked + 1);
            i.lag = i.next_seq.saturating_sub(i.acked_seq + 1);
            // The agent deletes what is acknowledged: it holds at most what
            // it assigned and the core has not committed (its own report,
            // up to a second old, may say more).
            i.buffer_depth = i.buffer_depth.min(i.lag);
            i.duplicates_transport += dup_transport;
            i.duplicates_semantic += dup_semantic;
            i.rejected += rejected;
            self.publish_gauges(i);
        }
    }

    fn publish_gauges(&self, i: &AgentInfo) {
        let l = Metrics::agent(&i.agent_id);
        self.metrics
            .agent_connected
            .get_or_create(&l)
            .set(i.connected as i64);
        self.metrics.agent_lag.get_or_create(&l).set(i.lag as i64);
        self.metrics
            .agent_buffer_depth
            .get_or_create(&l)
            .set(i.buffer_depth as i64);
        let age_s = if i.oldest_held_ms > 0 && i.buffer_depth > 0 {
            (sightline_proto::now_ms() - i.oldest_held_ms).max(0) / 1000
        } else {
            0
        };
        self.metrics.agent_backlog_age.get_or_create(&l).set(age_s);
    }

    /// Every agent, by id.
    pub fn snapshot(&self) -> Vec<AgentInfo> {
        let agents = self.agents.lock().unwrap();
        let mut out: Vec<AgentInfo> = agents.values().map(|e| e.info.clone()).collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// A session of `agent` was refused (certificate, identity, registry).
    pub fn refused(&self, agent: &str, why: &str, revoked: bool) {
        let mut agents = self.agents.lock().unwrap();
        let e = agents.entry(agent.to_string()).or_default();
        e.info.agent_id = agent.to_string();
        e.info.last_refusal = why.to_string();
        e.info.revoked = revoked;
    }

    /// Events of `agent` were refused for a camera or location not its own.
    pub fn denied(&self, agent: &str, n: u64, last: &str) {
        let mut agents = self.agents.lock().unwrap();
        if let Some(e) = agents.get_mut(agent) {
            e.info.denied += n;
            e.info.last_denied = last.to_string();
        }
    }

    /// Revocation: marks the agent and ends its open session at once.
    pub fn revoke(&self, agent: &str) {
        let mut agents = self.agents.lock().unwrap();
        let e = agents.entry(agent.to_string()).or_default();
        e.info.agent_id = agent.to_string();
        e.info.revoked = true;
        if let Some((_, t)) = &e.session {
            t.cancel();
        }
    }

    /// A grant lifted the agent's revocation.
    pub fn reinstate(&self, agent: &str) {
        if let Some(e) = self.agents.lock().unwrap().get_mut(agent) {
            e.info.revoked = false;
        }
    }

    /// Ends every open session (shutdown).
    pub fn close_all(&self) {
        for e in self.agents.lock().unwrap().values() {
            if let Some((_, t)) = &e.session {
                t.cancel();
            }
        }
    }
}
