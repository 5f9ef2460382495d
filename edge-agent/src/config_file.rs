//! Reading the agent's config: the file, then the `SIGHTLINE_AGENT__*`
//! environment variables on top (the rule: [`sightline_proto::config_doc`]),
//! and the reference of every key (docs/CONFIG.md), generated from
//! [`AgentConfig`]'s doc comments and defaults.

use std::{ffi::OsString, path::Path};

use sightline_proto::config_doc::{self, LoadError};

use crate::config::AgentConfig;

/// The prefix of the environment variables that set the agent's config keys:
/// `SIGHTLINE_AGENT__BUFFER__MAX_EVENTS=100000` sets `buffer.max_events`.
pub const ENV_PREFIX: &str = "SIGHTLINE_AGENT";

impl AgentConfig {
    /// The config in `file`, with the `SIGHTLINE_AGENT__*` variables of
    /// `vars` applied on top. Without a file every key has its default and
    /// `agent_id` is `default_id` (unless a variable sets it). An error names
    /// the file, or the variable that does not fit.
    pub fn load(
        file: Option<&Path>,
        default_id: &str,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> anyhow::Result<Self> {
        let text = match file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let mut base = toml::Table::new();
        base.insert("agent_id".into(), default_id.into());
        config_doc::load(text.as_deref(), base, ENV_PREFIX, vars).map_err(|e| match (e, file) {
            (LoadError::File(m), Some(p)) => anyhow::anyhow!("in {}: {m}", p.display()),
            (e, _) => e.into(),
        })
    }

    /// The agent's section of docs/CONFIG.md (`sightline-agent
    /// config-reference`), or the keys that have no doc comment.
    pub fn reference() -> Result<String, Vec<String>> {
        let schema = schemars::schema_for!(AgentConfig);
        config_doc::reference(
            "sightline-agent",
            "sightline-agent --config FILE",
            ENV_PREFIX,
            schema.as_value(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WhenFull;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn every_agent_key_has_a_meaning_and_docs_config_md_is_current() {
        let section = AgentConfig::reference()
            .unwrap_or_else(|keys| panic!("config keys without a doc comment: {keys:?}"));
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            doc.contains(&section),
            "docs/CONFIG.md does not hold the current `sightline-agent config-reference`: \
             run deploy/config-doc.sh"
        );
        for key in [
            "agent_id",
            "buffer.when_full",
            "capture.cameras",
            "capture.cameras[].mode",
        ] {
            assert!(section.contains(&format!("| `{key}` |")), "{key} missing");
        }
    }

    #[test]
    fn the_packaged_service_config_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/agent.toml");
        let cfg = AgentConfig::load(Some(&path), "unused", vars(&[])).unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.buffer.path,
            Path::new("/var/lib/sightline-agent/buffer")
        );
        assert_eq!(
            cfg.tls.dir.as_deref(),
            Some(Path::new("/etc/sightline/agent-pki"))
        );
    }

    #[test]
    fn agent_keys_are_set_from_environment_variables_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "agent_id = \"from-file\"\n[buffer]\nmax_events = 10\n",
        )
        .unwrap();
        let cfg = AgentConfig::load(
            Some(&file),
            "unused",
            vars(&[
                ("SIGHTLINE_AGENT__AGENT_ID", "gate-3"),
                ("SIGHTLINE_AGENT__BUFFER__WHEN_FULL", "block"),
                ("SIGHTLINE_AGENT__SENDER__LIVE_LANE_MAX_SHARE", "0.5"),
                ("SIGHTLINE_AGENT__INTAKE__LISTEN", "0.0.0.0:50061"),
                (
                    "SIGHTLINE_AGENT__CORE_URLS",
                    "[\"https://core-a:50443\", \"https://core-b:50443\"]",
                ),
                (
                    "SIGHTLINE_AGENT__CAPTURE__CAMERAS",
                    "[{ camera_oid = 7, input = \"synthetic://a\", mode = \"snapshot\" }]",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.agent_id, "gate-3");
        assert_eq!(cfg.buffer.max_events, 10, "the file's value stays");
        assert_eq!(cfg.buffer.when_full, WhenFull::Block);
        assert_eq!(cfg.sender.live_lane_max_share, 0.5);
        assert_eq!(cfg.intake.listen.unwrap().port(), 50061);
        assert_eq!(
            cfg.core_urls(),
            ["https://core-a:50443", "https://core-b:50443"]
        );
        assert_eq!(cfg.capture.cameras[0].camera_oid, 7);
        // Without a file: the default id, unless a variable names one.
        let cfg = AgentConfig::load(None, "agent-1", vars(&[])).unwrap();
        assert_eq!(cfg.agent_id, "agent-1");
        let cfg = AgentConfig::load(None, "agent-1", vars(&[("SIGHTLINE_AGENT__AGENT_ID", "x")]))
            .unwrap();
        assert_eq!(cfg.agent_id, "x");
    }

    #[test]
    fn a_bad_agent_environment_value_is_refused_naming_the_variable() {
        for (name, value) in [
            ("SIGHTLINE_AGENT__BUFFER__WHEN_FULL", "discard"),
            ("SIGHTLINE_AGENT__BUFFER__MAX_EVENTS", "-1"),
            ("SIGHTLINE_AGENT__AGENT_ID", "42"),
        ] {
            let err = AgentConfig::load(None, "a", vars(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{name}`")), "{name}={value}: {err}");
        }
    }

    #[test]
    fn an_unknown_agent_key_in_the_environment_is_refused_naming_the_variable() {
        for name in [
            "SIGHTLINE_AGENT__BUFFER__MAX_EVENT",
            "SIGHTLINE_AGENT__AGENTID",
            "SIGHTLINE_AGENT__CAPTURE__CAMERAS__MODE",
        ] {
            let err = AgentConfig::load(None, "a", vars(&[(name, "1")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{name}`")), "{name}: {err}");
        }
    }
}
