//! What the core's and the agent's config files share: keys set from
//! environment variables ([`load`]) and the reference of every key
//! ([`reference`], docs/CONFIG.md), generated from the config structs' JSON
//! schema (`schemars`, whose descriptions are the fields' doc comments).
//!
//! # Environment variables
//!
//! `<PREFIX>__<KEY>` sets the dotted key `<key>`: the parts of the name after
//! the prefix, split at `__` and lowercased, are the key's parts, so
//! `SIGHTLINE_CORE__PIPELINE__PARTITIONS=4` sets `pipeline.partitions = 4`.
//! The value is read as a TOML value (`4`, `true`, `"a string"`, `["a"]`,
//! `{ k = "v" }`); a value that is not one is taken as a string, so
//! `SIGHTLINE_CORE__STORAGE__PATH=/var/lib/x` needs no quotes (a string that
//! looks like a number or a boolean does: `SIGHTLINE_AGENT__AGENT_ID='"42"'`).
//! Variables apply after the file and before command-line flags. A variable
//! naming no key, or with a value the key does not take, stops the start with
//! an error naming the variable.

use std::{collections::BTreeMap, ffi::OsString, fmt::Write as _};

use serde::de::DeserializeOwned;
use serde_json::Value as Json;

/// `[A-Z]+__` ... the separator between a prefix and a key and between a key's parts.
pub const ENV_SEPARATOR: &str = "__";

/// A config that could not be read, or a variable that does not fit it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is not valid TOML or does not fit the config.
    #[error("{0}")]
    File(String),
    /// An environment variable names no key, or its value does not fit the key.
    #[error("environment variable `{variable}` (config `{key}`): {reason}")]
    Variable {
        variable: String,
        key: String,
        reason: String,
    },
}

/// One `<PREFIX>__<KEY>=value` variable, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub variable: String,
    /// The key's parts, lowercased.
    pub path: Vec<String>,
    pub value: toml::Value,
}

impl Override {
    /// The dotted key.
    pub fn key(&self) -> String {
        self.path.join(".")
    }
}

/// The variables of `vars` that start with `<prefix>__`, sorted by name.
pub fn overrides(
    prefix: &str,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Override>, LoadError> {
    let head = format!("{prefix}{ENV_SEPARATOR}");
    let mut found = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(&head) else {
            continue;
        };
        let path: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(|p| p.to_ascii_lowercase())
            .collect();
        let bad = |reason: &str| LoadError::Variable {
            variable: name.to_string(),
            key: path.join("."),
            reason: reason.into(),
        };
        if path.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) {
            return Err(bad(
                "not a config key: parts are letters, digits and `_`, separated by `__`",
            ));
        }
        let Some(raw) = value.to_str() else {
            return Err(bad("the value is not UTF-8"));
        };
        found.push(Override {
            variable: name.to_string(),
            value: parse_value(raw),
            path,
        });
    }
    found.sort_by(|a, b| a.variable.cmp(&b.variable));
    Ok(found)
}

/// `raw` as a TOML value, or as a string when it is not one.
pub fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| raw.into()),
        _ => toml::Value::String(raw.to_string()),
    }
}

/// The config in `text` (a TOML document; `base` when there is no file) with
/// the variables of `vars` named `<prefix>__...` applied on top. Errors name
/// the variable whose value (or key) does not fit.
pub fn load<T: DeserializeOwned>(
    text: Option<&str>,
    base: toml::Table,
    prefix: &str,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<T, LoadError> {
    let found = overrides(prefix, vars)?;
    if found.is_empty() {
        // The file alone: toml's own errors, with line and column.
        return match text {
            Some(text) => toml::from_str(text).map_err(|e| LoadError::File(e.to_string())),
            None => {
                T::deserialize(toml::Value::Table(base)).map_err(|e| LoadError::File(e.to_string()))
            }
        };
    }
    let mut doc = match text {
        Some(text) => {
            toml::from_str::<toml::Table>(text).map_err(|e| LoadError::File(e.to_string()))?
        }
        None => base,
    };
    let check = |doc: &toml::Table| T::deserialize(toml::Value::Table(doc.clone()));
    // One variable at a time: the first whose value changes what is wrong
    // (or makes a right config wrong) is the one named.
    let mut before = check(&doc).err().map(|e| e.to_string());
    for o in &found {
        set(&mut doc, o)?;
        match check(&doc) {
            Ok(_) => before = None,
            Err(e) => {
                let now = e.to_string();
                if before.as_deref() != Some(now.as_str()) {
                    return Err(LoadError::Variable {
                        variable: o.variable.clone(),
                        key: o.key(),
                        reason: now,
                    });
                }
            }
        }
    }
    T::deserialize(toml::Value::Table(doc)).map_err(|e| {
        // What is wrong was wrong in the file already: say where in it.
        match text.map(toml::from_str::<T>) {
            Some(Err(spanned)) => LoadError::File(spanned.to_string()),
            _ => LoadError::File(e.to_string()),
        }
    })
}

/// Puts one variable's value at its key, making the tables on the way.
fn set(doc: &mut toml::Table, o: &Override) -> Result<(), LoadError> {
    let (last, parents) = o.path.split_last().expect("a key has at least one part");
    let mut table = doc;
    for (i, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(LoadError::Variable {
                    variable: o.variable.clone(),
                    key: o.key(),
                    reason: format!(
                        "`{}` is not a table (an array is set whole, as a TOML array)",
                        o.path[..=i].join(".")
                    ),
                })
            }
        };
    }
    table.insert(last.clone(), o.value.clone());
    Ok(())
}

/// A duration in the config: a string such as `"500ms"`, `"15s"`, `"5m"`,
/// `"7d"` (humantime). For `#[schemars(with = ...)]`.
#[derive(Debug)]
pub struct Duration;

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "duration" })
    }
}

/// A size in the config: a string such as `"64 MiB"` or `"1 GiB"`, or a
/// number of bytes. For `#[schemars(with = ...)]`.
#[derive(Debug)]
pub struct ByteSize;

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "byte-size" })
    }
}

/// One key of the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// `pipeline.partitions`; `capture.cameras[].mode` inside an array of tables.
    pub key: String,
    pub kind: String,
    /// A TOML literal, `unset`, or `required`.
    pub default: String,
    pub meaning: String,
}

/// Every key of the config whose schema is `schema`, by section (the
/// dotted prefix of its table, "" for the top level), each in key order.
/// Keys without a meaning (no doc comment) are in the error, by name.
pub fn keys(schema: &Json) -> Result<Sections, Vec<String>> {
    let mut sections = BTreeMap::new();
    let mut undocumented = Vec::new();
    walk(schema, schema, "", "", &mut sections, &mut undocumented);
    if undocumented.is_empty() {
        Ok(sections)
    } else {
        Err(undocumented)
    }
}

/// Keys by section: its dotted prefix, to what the section is for and its keys.
pub type Sections = BTreeMap<String, (String, Vec<Key>)>;

fn walk(
    root: &Json,
    table: &Json,
    prefix: &str,
    about: &str,
    sections: &mut Sections,
    undocumented: &mut Vec<String>,
) {
    let section = sections
        .entry(prefix.to_string())
        .or_insert_with(|| (about.to_string(), Vec::new()));
    if section.0.is_empty() {
        section.0 = about.to_string();
    }
    let required: Vec<&str> = table["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let Some(props) = table["properties"].as_object() else {
        return;
    };
    for (name, prop) in props {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let target = non_null(root, prop);
        let meaning = text(
            prop["description"]
                .as_str()
                .or(target["description"].as_str()),
        );
        if target["properties"].is_object() {
            walk(root, target, &key, &meaning, sections, undocumented);
            continue;
        }
        let items = target
            .get("items")
            .map(|i| non_null(root, i))
            .filter(|i| i["properties"].is_object());
        let default = if required.contains(&name.as_str()) {
            "required".to_string()
        } else {
            match (prop.get("default"), items) {
                (Some(d), _) => toml_literal(d),
                // An array of tables whose rows cannot be written back: empty.
                (None, Some(_)) => "[]".into(),
                (None, None) => "unset".into(),
            }
        };
        if meaning.is_empty() {
            undocumented.push(key.clone());
        }
        let kind = match items {
            Some(_) => "array of tables".to_string(),
            None => kind(root, target),
        };
        let section = sections.get_mut(prefix).expect("made above");
        section.1.push(Key {
            key: key.clone(),
            kind,
            default,
            meaning,
        });
        if let Some(items) = items {
            let about = text(items["description"].as_str());
            walk(
                root,
                items,
                &format!("{key}[]"),
                &about,
                sections,
                undocumented,
            );
        }
    }
}

/// `schema` with its `$ref` followed and a `null` alternative (an `Option`) dropped.
fn non_null<'a>(root: &'a Json, schema: &'a Json) -> &'a Json {
    let schema = resolve(root, schema);
    for alt in ["anyOf", "oneOf"] {
        if let Some(list) = schema[alt].as_array() {
            let rest: Vec<&Json> = list
                .iter()
                .filter(|s| s["type"].as_str() != Some("null"))
                .collect();
            if rest.len() == 1 && list.len() == 2 {
                return resolve(root, rest[0]);
            }
        }
    }
    schema
}

fn resolve<'a>(root: &'a Json, schema: &'a Json) -> &'a Json {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => &root["$defs"][name],
        None => schema,
    }
}

/// The type of a key, as the reference says it.
fn kind(root: &Json, schema: &Json) -> String {
    let consts: Vec<String> = ["oneOf", "anyOf"]
        .iter()
        .filter_map(|alt| schema[*alt].as_array())
        .flatten()
        .map(|s| resolve(root, s))
        .filter_map(|s| {
            s.get("const")
                .or_else(|| s["enum"].as_array().and_then(|e| e.first()))
        })
        .map(toml_literal)
        .chain(
            schema["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| !v.is_null())
                .map(toml_literal),
        )
        .collect();
    if !consts.is_empty() {
        return consts.join(" \\| ");
    }
    let types: Vec<&str> = match &schema["type"] {
        Json::String(t) => vec![t.as_str()],
        Json::Array(ts) => ts.iter().filter_map(Json::as_str).collect(),
        _ => vec![],
    };
    let one = types.into_iter().find(|t| *t != "null").unwrap_or("value");
    match (one, schema["format"].as_str()) {
        ("string", Some("duration")) => "duration".into(),
        ("string", Some("byte-size")) => "size".into(),
        ("integer", _) => "integer".into(),
        ("number", _) => "float".into(),
        ("object", _) => match schema["additionalProperties"]["type"].as_str() {
            Some(t) => format!("table of {t}"),
            None => "table".into(),
        },
        ("array", _) => "array".into(),
        (t, _) => t.into(),
    }
}

/// A doc comment as one line: intra-doc links kept as code.
fn text(doc: Option<&str>) -> String {
    let joined = doc
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    joined
        .replace("[`", "`")
        .replace("`]", "`")
        .replace('|', "\\|")
}

/// A default value as TOML writes it.
fn toml_literal(v: &Json) -> String {
    match v {
        Json::Null => "unset".into(),
        Json::String(s) => format!("{s:?}"),
        Json::Array(a) if a.is_empty() => "[]".into(),
        Json::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

/// The reference section of one program: `title` (the binary), how its file
/// is given, its variables' prefix, and a table of keys per config table.
/// Fails naming the keys without a doc comment.
pub fn reference(
    title: &str,
    file_flag: &str,
    prefix: &str,
    schema: &Json,
) -> Result<String, Vec<String>> {
    let sections = keys(schema)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- BEGIN {title} config-reference: generated by `{title} config-reference`; \
         edit the doc comments in the code, then run deploy/config-doc.sh -->"
    );
    let _ = writeln!(out, "## {title}\n");
    let _ = writeln!(
        out,
        "The file is given with `{file_flag}`; every key is optional unless its default \
         says `required`. A key `a.b_c` is also set by the environment variable \
         `{prefix}__A__B_C`.\n"
    );
    for (name, (about, keys)) in &sections {
        if keys.is_empty() {
            continue;
        }
        let heading = if name.is_empty() {
            "Top level".to_string()
        } else if let Some(array) = name.strip_suffix("[]") {
            format!("`[[{array}]]`")
        } else {
            format!("`[{name}]`")
        };
        let _ = writeln!(out, "### {heading}\n");
        if !about.is_empty() {
            let _ = writeln!(out, "{about}\n");
        }
        let _ = writeln!(out, "| Key | Type | Default | Meaning |");
        let _ = writeln!(out, "|---|---|---|---|");
        for k in keys {
            let default = match k.default.as_str() {
                "unset" | "required" => format!("*{}*", k.default),
                d => format!("`{}`", d.replace('|', "\\|")),
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                k.key, k.kind, default, k.meaning
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "<!-- END {title} config-reference -->");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        name: String,
        #[serde(default)]
        inner: Inner,
    }
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        count: u32,
        #[serde(default)]
        path: String,
    }

    #[test]
    fn a_variable_sets_its_dotted_key_over_the_file() {
        let cfg: Cfg = load(
            Some("name = \"a\"\n[inner]\ncount = 1\n"),
            Default::default(),
            "APP",
            vars(&[
                ("APP__INNER__COUNT", "4"),
                ("APP__INNER__PATH", "/var/lib/x"),
                ("APP_OTHER", "ignored"),
                ("OTHER__NAME", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!((cfg.name.as_str(), cfg.inner.count), ("a", 4));
        assert_eq!(cfg.inner.path, "/var/lib/x");
    }

    #[test]
    fn a_variable_can_supply_a_key_the_file_lacks() {
        let cfg: Cfg = load(
            Some(""),
            Default::default(),
            "APP",
            vars(&[("APP__NAME", "b")]),
        )
        .unwrap();
        assert_eq!(cfg.name, "b");
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_variable() {
        let err = load::<Cfg>(
            Some("name = \"a\""),
            Default::default(),
            "APP",
            vars(&[("APP__INNER__COUNT", "many"), ("APP__INNER__PATH", "p")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`APP__INNER__COUNT`"), "{err}");
        assert!(err.contains("`inner.count`"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_variable() {
        for name in ["APP__INNER__COUNTS", "APP__NOPE__X", "APP__INNER____COUNT"] {
            let err = load::<Cfg>(
                Some("name = \"a\""),
                Default::default(),
                "APP",
                vars(&[(name, "1")]),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("`{name}`")), "{name}: {err}");
        }
        let err = load::<Cfg>(
            Some("name = \"a\""),
            Default::default(),
            "APP",
            vars(&[("APP__NAME__X", "1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`name` is not a table"), "{err}");
    }

    #[test]
    fn values_are_toml_values_or_else_strings() {
        assert_eq!(parse_value("4"), toml::Value::Integer(4));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("\"42\""), toml::Value::String("42".into()));
        assert_eq!(
            parse_value("127.0.0.1:80"),
            toml::Value::String("127.0.0.1:80".into())
        );
        assert_eq!(
            parse_value("1\nx = 2"),
            toml::Value::String("1\nx = 2".into())
        );
        assert!(parse_value("[1, 2]").is_array());
    }
}
