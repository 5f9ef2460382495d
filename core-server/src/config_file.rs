//! Reading the core's config: the file, then the `SIGHTLINE_CORE__*`
//! environment variables on top (the rule: [`sightline_proto::config_doc`]),
//! and the reference of every key (docs/CONFIG.md), generated from
//! [`CoreConfig`]'s doc comments and defaults.

use std::{ffi::OsString, path::Path};

use sightline_proto::config_doc::{self, LoadError};

use crate::config::CoreConfig;

/// The prefix of the environment variables that set the core's config keys:
/// `SIGHTLINE_CORE__PIPELINE__PARTITIONS=4` sets `pipeline.partitions`.
pub const ENV_PREFIX: &str = "SIGHTLINE_CORE";

impl CoreConfig {
    /// The config in `file` (every default without one), with the
    /// `SIGHTLINE_CORE__*` variables of `vars` applied on top. An error names
    /// the file, or the variable that does not fit.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> anyhow::Result<Self> {
        let text = match file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            ),
            None => None,
        };
        config_doc::load(text.as_deref(), Default::default(), ENV_PREFIX, vars).map_err(|e| match (
            e, file,
        ) {
            (LoadError::File(m), Some(p)) => anyhow::anyhow!("in {}: {m}", p.display()),
            (e, _) => e.into(),
        })
    }

    /// The core's section of docs/CONFIG.md (`sightline-core config-reference`),
    /// or the keys that have no doc comment.
    pub fn reference() -> Result<String, Vec<String>> {
        let schema = schemars::schema_for!(CoreConfig);
        config_doc::reference(
            "sightline-core",
            "sightline-core serve --config FILE",
            ENV_PREFIX,
            schema.as_value(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn every_core_key_has_a_meaning_and_docs_config_md_is_current() {
        let section = CoreConfig::reference()
            .unwrap_or_else(|keys| panic!("config keys without a doc comment: {keys:?}"));
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            doc.contains(&section),
            "docs/CONFIG.md does not hold the current `sightline-core config-reference`: \
             run deploy/config-doc.sh"
        );
        for key in [
            "pipeline.partitions",
            "server.shutdown_grace",
            "media.options",
        ] {
            assert!(section.contains(&format!("| `{key}` |")), "{key} missing");
        }
    }

    #[test]
    fn the_packaged_service_config_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/core.toml");
        let cfg = CoreConfig::load(Some(&path), vars(&[])).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.storage.path, Path::new("/var/lib/sightline-core/store"));
    }

    #[test]
    fn core_keys_are_set_from_environment_variables_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("core.toml");
        std::fs::write(
            &file,
            "[pipeline]\npartitions = 2\n[storage]\nsync = true\n",
        )
        .unwrap();
        let cfg = CoreConfig::load(
            Some(&file),
            vars(&[
                ("SIGHTLINE_CORE__PIPELINE__PARTITIONS", "4"),
                (
                    "SIGHTLINE_CORE__STORAGE__PATH",
                    "/var/lib/sightline-core/store",
                ),
                ("SIGHTLINE_CORE__STORAGE__CACHE", "64 MiB"),
                ("SIGHTLINE_CORE__SERVER__SHUTDOWN_GRACE", "45s"),
                ("SIGHTLINE_CORE__SERVER__HTTP_LISTEN", "127.0.0.1:9090"),
                ("SIGHTLINE_CORE__MEDIA__OPTIONS__REGION", "eu-west-1"),
                ("SIGHTLINE_CORE__EDGE__TLS_DIR", "/etc/sightline/pki"),
                ("SIGHTLINE_CORE", "http://127.0.0.1:50051"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.pipeline.partitions, 4);
        assert!(
            cfg.storage.sync,
            "a key no variable names keeps the file's value"
        );
        assert_eq!(cfg.storage.path, Path::new("/var/lib/sightline-core/store"));
        assert_eq!(cfg.storage.cache.as_u64(), 64 << 20);
        assert_eq!(cfg.server.shutdown_grace.as_secs(), 45);
        assert_eq!(cfg.server.http_listen.port(), 9090);
        assert_eq!(cfg.media.options["region"], "eu-west-1");
        cfg.validate().unwrap();
    }

    #[test]
    fn a_bad_core_environment_value_is_refused_naming_the_variable() {
        for (name, value) in [
            ("SIGHTLINE_CORE__PIPELINE__PARTITIONS", "four"),
            ("SIGHTLINE_CORE__SERVER__SHUTDOWN_GRACE", "15"),
            ("SIGHTLINE_CORE__STORAGE__SYNC", "yes"),
        ] {
            let err = CoreConfig::load(None, vars(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{name}`")), "{name}={value}: {err}");
        }
    }

    #[test]
    fn an_unknown_core_key_in_the_environment_is_refused_naming_the_variable() {
        for name in [
            "SIGHTLINE_CORE__PIPELINE__PARTITIONZ",
            "SIGHTLINE_CORE__NO_SUCH_SECTION__X",
            "SIGHTLINE_CORE__PIPELINE",
        ] {
            let err = CoreConfig::load(None, vars(&[(name, "1")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{name}`")), "{name}: {err}");
        }
    }

    #[test]
    fn a_bad_file_is_reported_with_its_path_and_line_even_with_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("core.toml");
        std::fs::write(&file, "[pipeline]\npartitionz = 2\n").unwrap();
        let err = CoreConfig::load(
            Some(&file),
            vars(&[("SIGHTLINE_CORE__STORAGE__SYNC", "false")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("core.toml"), "{err}");
        assert!(
            err.contains("partitionz") && err.contains("line 2"),
            "{err}"
        );
    }
}
