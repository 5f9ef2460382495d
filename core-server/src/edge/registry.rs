//! The agent registry: which cameras (and locations) each agent may publish
//! for, and which agents are revoked. Kept in a TOML file that operators may
//! edit (reloaded with Dataset B on SIGHUP) and that the admin API rewrites
//! (a new file renamed over the old, so a crash never leaves half of one).
//!
//! ```toml
//! [agents.gate-3]
//! cameras = [301, 302]
//! locations = [3]        # optional; empty or absent: any location
//!
//! [agents.old-host]
//! cameras = [101]
//! revoked = true
//! ```
//!
//! Revoking an agent also retires every certificate issued to it so far:
//! granted again, it must connect with a certificate issued after the
//! revocation (`certs_issued_after`, Unix seconds), so a copy of its old key
//! does not come back with the grant.
//!
//! In cluster mode the file is the node's copy of the cluster's grants
//! ([`crate::cluster::control`]): a grant or revocation on any node is made
//! in the cluster's bucket first and reaches every node's file, so a revoked
//! agent is refused by every node. A hand edit reloaded with SIGHUP is
//! carried to the bucket for the agents it changes; an agent left out of the
//! file is not forgotten (the cluster never forgets an agent: revoke it).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sightline_proto::v1::{AgentGrant, Detection};

use crate::cluster::control::{self, Control, Kind};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[serde(default)]
    pub cameras: BTreeSet<i64>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub locations: BTreeSet<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Certificates issued at or before this time (Unix seconds) are
    /// refused: set by a revocation, kept by a later grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_issued_after: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    agents: BTreeMap<String, Grant>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("agent registry {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the core runs without an agent registry (set edge.registry)")]
    NotEnforced,
    #[error("{0}")]
    Cluster(sightline_proto::ApiError),
}

impl From<RegistryError> for sightline_proto::ApiError {
    fn from(e: RegistryError) -> Self {
        use sightline_proto::Code;
        let code = match e {
            RegistryError::Invalid { .. } => Code::InvalidArgument,
            RegistryError::NotEnforced => Code::FailedPrecondition,
            RegistryError::File { .. } => Code::Internal,
            RegistryError::Cluster(e) => return e,
        };
        sightline_proto::ApiError::new(code, e.to_string())
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        sightline_proto::ApiError::from(e).into()
    }
}

/// Why a session is refused before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRefusal {
    Revoked,
    Unregistered,
    /// The certificate was issued before the agent's last revocation.
    RetiredCertificate {
        issued: i64,
        revoked: i64,
    },
}

impl SessionRefusal {
    /// In words, for `agent`.
    pub fn explain(&self, agent: &str) -> String {
        let at = |s: i64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.max(0) as u64),
            )
        };
        match self {
            Self::Revoked => format!("agent {agent:?} is revoked; an operator must grant it again"),
            Self::Unregistered => format!(
                "agent {agent:?} is not granted in the core's agent registry, so it may not publish: \
                 an admin grants it its cameras with `sightline-core grant --agent-id {agent} --cameras <ids>` \
                 (or the Admin API's GrantAgent); it is admitted at its next connection"
            ),
            Self::RetiredCertificate { issued, revoked } => format!(
                "this certificate of agent {agent:?} was issued at {} and the agent was revoked at {}: \
                 a revocation retires every certificate issued before it; issue a new one (sightline-core certs agent)",
                at(*issued),
                at(*revoked)
            ),
        }
    }
}

/// What a new registry file says: nothing granted yet.
const EMPTY_REGISTRY: &str = "\
# The agent registry: the cameras (and locations) each agent may publish for.
# Empty: every agent is refused until an admin grants it, e.g.
#   sightline-core grant --agent-id gate-3 --cameras 301,302
# (or the Admin API's GrantAgent), which rewrites this file. See
# deploy/agents.example.toml for the format; SIGHUP reloads hand edits.
";

/// The registry in force; swapped whole on every change.
pub struct Registry {
    path: Option<PathBuf>,
    agents: ArcSwap<BTreeMap<String, Arc<Grant>>>,
    /// Serialises writers (admin calls, reloads, the cluster's changes).
    write: tokio::sync::Mutex<()>,
    /// Cluster mode: where every change is made first.
    shared: std::sync::OnceLock<Control>,
}

impl Registry {
    /// Loads `path`; a missing file is an empty registry (every agent refused
    /// until granted). `None`: not enforced.
    pub fn open(path: Option<PathBuf>) -> Result<Self, RegistryError> {
        let agents = match &path {
            Some(p) => read(p)?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            path,
            agents: ArcSwap::from_pointee(agents),
            write: tokio::sync::Mutex::new(()),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Loads `path`, first writing it empty (a comment saying how agents
    /// are granted) when it does not exist.
    pub fn open_or_create(path: PathBuf) -> Result<Self, RegistryError> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(EMPTY_REGISTRY.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| file_err(&path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(file_err(&path, e)),
        }
        Self::open(Some(path))
    }

    pub fn enforced(&self) -> bool {
        self.path.is_some()
    }

    /// Cluster mode: from now on every change is made in `control`'s bucket
    /// first.
    pub fn share(&self, control: Control) {
        let _ = self.shared.set(control);
    }

    /// Every agent's grant, as held now.
    pub fn grants(&self) -> Vec<(String, Arc<Grant>)> {
        self.agents
            .load()
            .iter()
            .map(|(a, g)| (a.clone(), g.clone()))
            .collect()
    }

    /// Applies `agent`'s grant from the cluster's bucket at revision `rev`
    /// (unless this copy holds a newer one); whether it changed anything.
    /// A core without a registry keeps none.
    pub async fn mirror(
        &self,
        c: &Control,
        agent: &str,
        grant: Grant,
        rev: u64,
    ) -> Result<bool, RegistryError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let _w = self.write.lock().await;
        let k = control::key(Kind::Agent, agent);
        if !c.newer(&k, rev) {
            return Ok(false);
        }
        let current = self.agents.load();
        let changed = current.get(agent).map(|g| &**g) != Some(&grant);
        if changed {
            let mut next = (**current).clone();
            next.insert(agent.to_string(), Arc::new(grant));
            self.write_file(path, next).await?;
        }
        c.applied(&k, rev);
        Ok(changed)
    }

    /// Whether `agent` may open a session; `issued`: when its certificate
    /// was issued (Unix seconds), on a TLS link.
    pub fn admit(&self, agent: &str, issued: Option<i64>) -> Result<(), SessionRefusal> {
        if !self.enforced() {
            return Ok(());
        }
        match self.agents.load().get(agent) {
            None => Err(SessionRefusal::Unregistered),
            Some(g) if g.revoked => Err(SessionRefusal::Revoked),
            Some(g) => match (g.certs_issued_after, issued) {
                (Some(revoked), Some(issued)) if issued <= revoked => {
                    Err(SessionRefusal::RetiredCertificate { issued, revoked })
                }
                _ => Ok(()),
            },
        }
    }

    pub fn is_revoked(&self, agent: &str) -> bool {
        self.agents.load().get(agent).is_some_and(|g| g.revoked)
    }

    /// A view for checking one batch: the agent's grant as it is now.
    pub fn grant(&self, agent: &str) -> Option<Arc<Grant>> {
        if !self.enforced() {
            return None;
        }
        Some(self.agents.load().get(agent).cloned().unwrap_or_default())
    }

    /// Re-reads the file (SIGHUP). A bad file is refused and the registry in
    /// use stays. Returns the agents now revoked, whose sessions must end.
    pub async fn reload(&self) -> Result<Vec<String>, RegistryError> {
        let Some(path) = &self.path else {
            return Ok(vec![]);
        };
        let revoked_in = |m: &BTreeMap<String, Arc<Grant>>| -> Vec<String> {
            m.iter()
                .filter(|(_, g)| g.revoked)
                .map(|(a, _)| a.clone())
                .collect()
        };
        if self.shared.get().is_none() {
            let _w = self.write.lock().await;
            let fresh = read(path)?;
            let revoked = revoked_in(&fresh);
            self.agents.store(Arc::new(fresh));
            return Ok(revoked);
        }
        // Cluster mode: the edit's changes go to the bucket, one agent at a
        // time.
        let fresh = read(path)?;
        let current = self.agents.load_full();
        for (agent, g) in &fresh {
            if current.get(agent) != Some(g) {
                let g = (**g).clone();
                self.update(agent, |e| *e = g.clone()).await?;
            }
        }
        let kept: Vec<&String> = current.keys().filter(|a| !fresh.contains_key(*a)).collect();
        if !kept.is_empty() {
            tracing::warn!(agents = ?kept, "SIGHUP: agents left out of the registry file are kept (a cluster never forgets an agent; revoke it instead)");
            let _w = self.write.lock().await;
            self.write_file(path, (**self.agents.load()).clone())
                .await?;
        }
        Ok(revoked_in(&fresh))
    }

    /// Sets an agent's cameras and locations (and lifts a revocation).
    pub async fn grant_agent(&self, g: AgentGrant) -> Result<AgentGrant, RegistryError> {
        sightline_proto::validate_agent_id(&g.agent_id).map_err(|e| RegistryError::Invalid {
            field: "agent_id",
            reason: e.reason,
        })?;
        let mut grant = Grant {
            cameras: g.cameras.iter().copied().collect(),
            locations: g.locations.iter().copied().collect(),
            revoked: false,
            certs_issued_after: None,
        };
        let grant = self
            .update(&g.agent_id, |e| {
                // The certificates a revocation retired stay retired.
                grant.certs_issued_after = e.certs_issued_after;
                *e = grant.clone();
            })
            .await?;
        Ok(to_proto(&g.agent_id, &grant))
    }

    /// Revokes an agent (known or not: a certificate issued to a host that
    /// never connected can be revoked too).
    pub async fn revoke(&self, agent: &str) -> Result<AgentGrant, RegistryError> {
        sightline_proto::validate_agent_id(agent).map_err(|e| RegistryError::Invalid {
            field: "agent_id",
            reason: e.reason,
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let out = self
            .update(agent, |e| {
                e.revoked = true;
                e.certs_issued_after = Some(now);
            })
            .await?;
        Ok(to_proto(agent, &out))
    }

    /// Changes `agent`'s grant with `f` and returns it (in cluster mode `f`
    /// may run again, on the grant another node changed meanwhile).
    async fn update(
        &self,
        agent: &str,
        mut f: impl FnMut(&mut Grant),
    ) -> Result<Grant, RegistryError> {
        let Some(path) = &self.path else {
            return Err(RegistryError::NotEnforced);
        };
        if let Some(c) = self.shared.get() {
            let (g, rev) = c
                .modify(Kind::Agent, agent, |cur: Option<Grant>| {
                    let mut g = cur.unwrap_or_default();
                    f(&mut g);
                    Ok(g)
                })
                .await
                .map_err(RegistryError::Cluster)?;
            self.mirror(c, agent, g.clone(), rev).await?;
            return Ok(g);
        }
        let _w = self.write.lock().await;
        let mut next = (**self.agents.load()).clone();
        let g = Arc::make_mut(next.entry(agent.to_string()).or_default());
        f(g);
        let g = g.clone();
        self.write_file(path, next).await?;
        Ok(g)
    }

    /// Writes `next` to the file (a new file renamed over the old) and puts
    /// it in force; the caller holds `write`.
    async fn write_file(
        &self,
        path: &Path,
        next: BTreeMap<String, Arc<Grant>>,
    ) -> Result<(), RegistryError> {
        let text = toml::to_string(&RegistryFile {
            agents: next
                .iter()
                .map(|(a, g)| (a.clone(), (**g).clone()))
                .collect(),
        })
        .map_err(|e| file_err(path, e))?;
        let tmp = path.with_extension("toml.tmp");
        let (p, t) = (path.to_path_buf(), tmp.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&t)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&t, &p)
        })
        .await
        .map_err(|e| file_err(path, e))?
        .map_err(|e| file_err(&tmp, e))?;
        self.agents.store(Arc::new(next));
        Ok(())
    }

    pub fn list(&self) -> Vec<AgentGrant> {
        self.agents
            .load()
            .iter()
            .map(|(a, g)| to_proto(a, g))
            .collect()
    }
}

impl Grant {
    /// Why `agent` may not publish `d`, naming the field; `None` if it may.
    pub fn refuse(&self, agent: &str, d: &Detection) -> Option<(&'static str, String)> {
        if self.revoked {
            return Some(("agent_id", format!("agent {agent:?} is revoked")));
        }
        if !self.cameras.contains(&d.video_camera_oid) {
            return Some((
                "video_camera_oid",
                format!(
                    "camera {} is not registered to agent {agent:?}",
                    d.video_camera_oid
                ),
            ));
        }
        if !self.locations.is_empty() && !self.locations.contains(&d.geographical_location_oid) {
            return Some((
                "geographical_location_oid",
                format!(
                    "location {} is not registered to agent {agent:?}",
                    d.geographical_location_oid
                ),
            ));
        }
        None
    }
}

fn to_proto(agent: &str, g: &Grant) -> AgentGrant {
    AgentGrant {
        agent_id: agent.to_string(),
        cameras: g.cameras.iter().copied().collect(),
        locations: g.locations.iter().copied().collect(),
        revoked: g.revoked,
    }
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn read(path: &Path) -> Result<BTreeMap<String, Arc<Grant>>, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(file_err(path, e)),
    };
    let file: RegistryFile = toml::from_str(&text).map_err(|e| file_err(path, e))?;
    for agent in file.agents.keys() {
        sightline_proto::validate_agent_id(agent)
            .map_err(|e| file_err(path, format!("agents.{agent}: {}", e.reason)))?;
    }
    Ok(file
        .agents
        .into_iter()
        .map(|(a, g)| (a, Arc::new(g)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(camera: i64, location: i64) -> Detection {
        Detection {
            video_camera_oid: camera,
            geographical_location_oid: location,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn grants_and_revocations_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.toml");
        let r = Registry::open(Some(path.clone())).unwrap();
        assert_eq!(r.admit("a", None), Err(SessionRefusal::Unregistered));
        r.grant_agent(AgentGrant {
            agent_id: "a".into(),
            cameras: vec![7, 8],
            locations: vec![1],
            revoked: false,
        })
        .await
        .unwrap();
        assert_eq!(r.admit("a", Some(1_000)), Ok(()));
        let g = r.grant("a").unwrap();
        assert!(g.refuse("a", &det(7, 1)).is_none());
        let (field, why) = g.refuse("a", &det(9, 1)).unwrap();
        assert_eq!(field, "video_camera_oid");
        assert!(why.contains("camera 9"), "{why}");
        assert_eq!(
            g.refuse("a", &det(8, 2)).unwrap().0,
            "geographical_location_oid"
        );
        r.revoke("a").await.unwrap();
        assert_eq!(r.admit("a", None), Err(SessionRefusal::Revoked));
        // A new registry from the same file agrees.
        let again = Registry::open(Some(path.clone())).unwrap();
        assert!(again.is_revoked("a"));
        assert_eq!(again.list()[0].cameras, vec![7, 8]);
        // A bad file is refused, naming it; the registry in use stays.
        std::fs::write(&path, "[agents.a]\ncameras = \"x\"\n").unwrap();
        let e = again.reload().await.unwrap_err().to_string();
        assert!(e.contains("agents.toml"), "{e}");
        assert!(again.is_revoked("a"));
    }

    #[tokio::test]
    async fn a_grant_after_a_revocation_takes_only_newer_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(Some(dir.path().join("agents.toml"))).unwrap();
        let grant = AgentGrant {
            agent_id: "a".into(),
            cameras: vec![7],
            ..Default::default()
        };
        r.grant_agent(grant.clone()).await.unwrap();
        assert_eq!(r.admit("a", Some(1_000)), Ok(()));
        r.revoke("a").await.unwrap();
        r.grant_agent(grant).await.unwrap();
        let revoked = r.grant("a").unwrap().certs_issued_after.unwrap();
        let refused = r.admit("a", Some(revoked)).unwrap_err();
        assert_eq!(
            refused,
            SessionRefusal::RetiredCertificate {
                issued: revoked,
                revoked
            }
        );
        let why = refused.explain("a");
        assert!(why.contains("issue a new one"), "{why}");
        assert_eq!(r.admit("a", Some(revoked + 1)), Ok(()));
        // Read back from the file, the same.
        let again = Registry::open(Some(dir.path().join("agents.toml"))).unwrap();
        assert!(again.admit("a", Some(revoked)).is_err());
        assert!(!again.is_revoked("a"));
    }

    #[test]
    fn the_example_registry_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.toml");
        std::fs::write(&path, include_str!("../../../deploy/agents.example.toml")).unwrap();
        let r = Registry::open(Some(path)).unwrap();
        assert_eq!(r.list().len(), 3);
        assert_eq!(r.admit("old-host", None), Err(SessionRefusal::Revoked));
        assert_eq!(r.admit("gate-3", None), Ok(()));
    }

    #[tokio::test]
    async fn a_missing_registry_file_is_created_empty_and_refuses_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.toml");
        let r = Registry::open_or_create(path.clone()).unwrap();
        assert!(r.enforced());
        assert!(path.exists());
        let refused = r.admit("new", None).unwrap_err();
        assert_eq!(refused, SessionRefusal::Unregistered);
        let why = refused.explain("new");
        assert!(
            why.contains("not granted") && why.contains("sightline-core grant"),
            "{why}"
        );
        r.grant_agent(AgentGrant {
            agent_id: "new".into(),
            cameras: vec![1],
            ..Default::default()
        })
        .await
        .unwrap();
        // An existing file is kept as it is.
        let again = Registry::open_or_create(path).unwrap();
        assert_eq!(again.admit("new", None), Ok(()));
    }

    #[test]
    fn without_a_file_nothing_is_enforced() {
        let r = Registry::open(None).unwrap();
        assert!(!r.enforced());
        assert_eq!(r.admit("anyone", None), Ok(()));
        assert!(r.grant("anyone").is_none());
    }
}
