//! Structural checks of the Helm chart (`helm/identity-sidecar`) and the `Dockerfile`.
//!
//! Neither Helm nor a Docker engine runs where the tests run, so this file checks what can be
//! checked without them: the chart's YAML parses; every `.Values.x.y` a template uses is
//! declared in `values.yaml`, every declared value is used and documented by a comment; every
//! object carries the standard labels; `{{ if }}`/`{{ end }}` blocks balance; the default TOML
//! config is one the sidecar accepts and names only keys of `config/default.toml`; the
//! `SIDECAR__*` variables the chart sets name real keys; the multi-replica guards exist and are
//! wired; the Dockerfile is multi-stage and non-root, caches dependencies with cargo-chef and
//! labels the image from build arguments; `values.yaml` and every values example of the docs
//! validate against `values.schema.json`; the sidecar-mode templates make a native sidecar with
//! exec probes and a loopback admin port; and every metric the PrometheusRule and the Grafana
//! dashboard query is one a running app exports (also on its metrics-only port).
//!
//! Each check is a function returning its findings, and each has a test feeding it a broken
//! input, so a check that can no longer fail is itself a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------------------------
// Inputs

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    root().join("helm/identity-sidecar")
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parse_yaml(text: &str, what: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{what}: expected one YAML document");
    docs.remove(0)
}

fn values_text() -> String {
    read(chart_dir().join("values.yaml"))
}

fn values() -> Yaml {
    parse_yaml(&values_text(), "values.yaml")
}

/// Every file under `templates/`, by file name.
fn templates() -> BTreeMap<String, String> {
    let dir = chart_dir().join("templates");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("templates/ exists") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, read(&path));
        }
    }
    out
}

fn default_toml() -> String {
    read(root().join("config/default.toml"))
}

fn assert_clean(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// YAML trees

/// Mapping-key paths of a YAML tree (`a`, `a.b`, …), not descending into sequences.
fn key_paths(node: &Yaml, prefix: &str, out: &mut BTreeSet<String>) {
    if let Yaml::Hash(map) = node {
        for (k, v) in map {
            let key = yaml_key(k);
            let path = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
            out.insert(path.clone());
            key_paths(v, &path, out);
        }
    }
}

/// Leaf paths: keys whose value is not a non-empty mapping.
fn leaf_paths(node: &Yaml, prefix: &str, out: &mut BTreeSet<String>) {
    if let Yaml::Hash(map) = node {
        for (k, v) in map {
            let key = yaml_key(k);
            let path = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
            match v {
                Yaml::Hash(inner) if !inner.is_empty() => leaf_paths(v, &path, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
}

fn yaml_key(k: &Yaml) -> String {
    match k {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn lookup<'a>(node: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(node, |n, seg| match n {
        Yaml::Hash(map) => map.get(&Yaml::String(seg.to_string())),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------
// Go template actions

#[derive(Debug, Clone, PartialEq)]
enum ActionKind {
    /// `if`, `with`, `range`, `define`, `block`: opens a block.
    Open(String),
    /// `else`, `else if …`, `else with …`.
    Else,
    End,
    Comment,
    Plain,
}

#[derive(Debug, Clone)]
struct Action {
    /// Byte offsets of `{{` and just past `}}`.
    start: usize,
    end: usize,
    kind: ActionKind,
    /// The action's text without delimiters, trim markers and surrounding spaces.
    text: String,
    /// Conditions of the enclosing blocks, outermost first; a condition whose `else` branch
    /// encloses the action is prefixed with `else of `.
    within: Vec<String>,
}

/// Splits a template into its actions and checks that blocks balance.
fn parse_actions(src: &str) -> Result<Vec<Action>, String> {
    let bytes = src.as_bytes();
    let mut actions = Vec::new();
    let mut stack: Vec<(String, bool)> = Vec::new(); // (opening text, in else branch)
    let mut i = 0;
    while let Some(off) = src[i..].find("{{") {
        let start = i + off;
        let mut j = start + 2;
        let mut quote: Option<u8> = None;
        let end = loop {
            if j >= bytes.len() {
                return Err(format!("unterminated action at byte {start}"));
            }
            let c = bytes[j];
            match quote {
                Some(b'"') if c == b'\\' => j += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'`' => quote = Some(c),
                None if c == b'}' && bytes.get(j + 1) == Some(&b'}') => break j + 2,
                None => {}
            }
            j += 1;
        };
        let inner = &src[start + 2..end - 2];
        let text = inner.trim_start_matches('-').trim_end_matches('-').trim().to_string();
        let first = text.split_whitespace().next().unwrap_or("");
        let kind = if text.starts_with("/*") {
            ActionKind::Comment
        } else {
            match first {
                "if" | "with" | "range" | "define" | "block" => ActionKind::Open(first.to_string()),
                "else" => ActionKind::Else,
                "end" => ActionKind::End,
                _ => ActionKind::Plain,
            }
        };
        let within: Vec<String> = stack
            .iter()
            .map(|(t, in_else)| if *in_else { format!("else of {t}") } else { t.clone() })
            .collect();
        match &kind {
            ActionKind::Open(_) => stack.push((text.clone(), false)),
            ActionKind::Else => match stack.last_mut() {
                // `else if c` continues the chain: later actions are under the new condition
                // and the negation of the previous one; record the new one.
                Some(top) if text == "else" => top.1 = true,
                Some(top) => *top = (text.trim_start_matches("else").trim().to_string(), false),
                None => return Err(format!("`{{{{ {text} }}}}` outside any block at byte {start}")),
            },
            ActionKind::End => {
                if stack.pop().is_none() {
                    return Err(format!("`{{{{ end }}}}` without an open block at byte {start}"));
                }
            }
            ActionKind::Comment | ActionKind::Plain => {}
        }
        actions.push(Action { start, end, kind, text, within });
        i = end;
    }
    if let Some((open, _)) = stack.last() {
        return Err(format!("block `{{{{ {open} }}}}` is never closed ({} open)", stack.len()));
    }
    Ok(actions)
}

/// The bodies of `{{ define "name" }}` blocks.
fn defines(src: &str) -> BTreeMap<String, String> {
    let actions = parse_actions(src).expect("helpers parse");
    let mut out = BTreeMap::new();
    for (idx, a) in actions.iter().enumerate() {
        if a.kind == ActionKind::Open("define".into()) {
            let name = a.text.split('"').nth(1).expect("define has a quoted name").to_string();
            let depth = a.within.len();
            let end = actions[idx + 1..]
                .iter()
                .find(|b| b.kind == ActionKind::End && b.within.len() == depth + 1)
                .expect("define is closed");
            out.insert(name, src[a.end..end.start].to_string());
        }
    }
    out
}

/// `.Values.a.b.c` paths referenced in a template.
fn value_refs(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (pos, _) in src.match_indices(".Values.") {
        let rest = &src[pos + ".Values.".len()..];
        let path: String =
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.').collect();
        let path = path.trim_end_matches('.');
        if !path.is_empty() {
            out.insert(path.to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Checks

fn check_chart_yaml(chart: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let chart = match YamlLoader::load_from_str(chart) {
        Ok(docs) if docs.len() == 1 => docs.into_iter().next().unwrap(),
        Ok(_) => return vec!["Chart.yaml: expected one document".into()],
        Err(e) => return vec![format!("Chart.yaml is not YAML: {e}")],
    };
    if chart["apiVersion"].as_str() != Some("v2") {
        problems.push("Chart.yaml: apiVersion must be v2".into());
    }
    if chart["name"].as_str() != Some("identity-sidecar") {
        problems.push("Chart.yaml: name must be identity-sidecar (the directory's name)".into());
    }
    if chart["type"].as_str() != Some("application") {
        problems.push("Chart.yaml: type must be application".into());
    }
    match chart["version"].as_str() {
        Some(v) if v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u64>().is_ok()) => {}
        other => problems.push(format!("Chart.yaml: version must be SemVer x.y.z, got {other:?}")),
    }
    let app = chart["appVersion"].as_str();
    if app != Some(env!("CARGO_PKG_VERSION")) {
        problems.push(format!(
            "Chart.yaml: appVersion {app:?} must be the crate version {:?} (a quoted string)",
            env!("CARGO_PKG_VERSION")
        ));
    }
    problems
}

/// Every `.Values` path used by a template resolves in values.yaml.
fn check_value_refs_declared(values: &Yaml, templates: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, src) in templates {
        for path in value_refs(src) {
            if lookup(values, &path).is_none() {
                problems.push(format!("{name}: .Values.{path} is not declared in values.yaml"));
            }
        }
    }
    problems
}

/// Every value in values.yaml is used by some template (itself or an enclosing mapping).
fn check_values_used(values: &Yaml, templates: &BTreeMap<String, String>) -> Vec<String> {
    let refs: BTreeSet<String> = templates.values().flat_map(|t| value_refs(t)).collect();
    let mut leaves = BTreeSet::new();
    leaf_paths(values, "", &mut leaves);
    leaves
        .into_iter()
        .filter(|leaf| !refs.iter().any(|r| leaf == r || leaf.starts_with(&format!("{r}."))))
        .map(|leaf| format!("values.yaml: {leaf} is used by no template"))
        .collect()
}

/// One mapping key of values.yaml as written: its path and whether the line above it is a
/// comment.
#[derive(Debug)]
struct KeyLine {
    path: String,
    line: usize,
    documented: bool,
}

/// Reads values.yaml line by line: mapping keys with their paths. Block scalars (`config: |`)
/// and sequence items are content, not keys.
fn scan_value_keys(text: &str) -> Result<Vec<KeyLine>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut skip_deeper_than: Option<usize> = None;
    for (i, raw) in lines.iter().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if let Some(limit) = skip_deeper_than {
            if indent > limit {
                continue;
            }
            skip_deeper_than = None;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed == "-" || trimmed.starts_with("- ") {
            skip_deeper_than = Some(indent);
            continue;
        }
        let Some(colon) = trimmed.find(':').filter(|&c| {
            let after = &trimmed[c + 1..];
            after.is_empty() || after.starts_with(' ')
        }) else {
            return Err(format!("values.yaml:{}: cannot read a key in {trimmed:?}", i + 1));
        };
        let key = trimmed[..colon].trim_matches(|c| c == '"' || c == '\'').to_string();
        let rest = trimmed[colon + 1..].trim();
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        let path = stack.iter().map(|(_, k)| k.as_str()).chain([key.as_str()]).collect::<Vec<_>>().join(".");
        let documented = i > 0 && lines[i - 1].trim_start().starts_with('#');
        out.push(KeyLine { path, line: i + 1, documented });
        stack.push((indent, key));
        if rest.starts_with('|') || rest.starts_with('>') {
            skip_deeper_than = Some(indent);
        }
    }
    Ok(out)
}

/// Every key of values.yaml has a comment line directly above it; the line scan agrees with
/// the YAML parser about which keys exist.
fn check_values_documented(text: &str) -> Vec<String> {
    let tree = match YamlLoader::load_from_str(text) {
        Ok(mut docs) if docs.len() == 1 => docs.remove(0),
        _ => return vec!["values.yaml does not parse as one YAML document".into()],
    };
    let keys = match scan_value_keys(text) {
        Ok(k) => k,
        Err(e) => return vec![e],
    };
    let mut problems: Vec<String> = keys
        .iter()
        .filter(|k| !k.documented)
        .map(|k| format!("values.yaml:{}: `{}` has no comment line directly above it", k.line, k.path))
        .collect();
    let scanned: BTreeSet<String> = keys.iter().map(|k| k.path.clone()).collect();
    let mut parsed = BTreeSet::new();
    key_paths(&tree, "", &mut parsed);
    for missing in parsed.difference(&scanned) {
        problems.push(format!("values.yaml: key {missing} was not seen by the comment scan"));
    }
    for extra in scanned.difference(&parsed) {
        problems.push(format!("values.yaml: comment scan saw {extra}, which YAML does not have"));
    }
    problems
}

/// Secrets are references to existing Secrets (`name`/`key`), never values.
fn check_secrets_are_references(values: &Yaml) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(Yaml::Hash(secrets)) = lookup(values, "secrets") else {
        return vec!["values.yaml: `secrets` mapping is missing".into()];
    };
    for (k, v) in secrets {
        let key = yaml_key(k);
        match (key.as_str(), v) {
            ("mountPath", Yaml::String(p)) if p.starts_with('/') => {}
            ("previousSigningKeys", Yaml::Array(a)) if a.is_empty() => {}
            (_, Yaml::Hash(h)) => {
                let fields: BTreeSet<String> = h.keys().map(yaml_key).collect();
                let expected: BTreeSet<String> = ["name", "key"].map(String::from).into();
                if fields != expected {
                    problems
                        .push(format!("secrets.{key}: only `name` and `key` belong here, got {fields:?}"));
                }
                if h.get(&Yaml::String("name".into())).and_then(Yaml::as_str) != Some("") {
                    problems.push(format!("secrets.{key}.name: the default must be empty"));
                }
            }
            _ => problems.push(format!("secrets.{key}: not a {{name, key}} Secret reference")),
        }
    }
    for required in ["databaseUrl", "redisUrl", "keycloakClientSecret", "signingKey"] {
        if !secrets.contains_key(&Yaml::String(required.into())) {
            problems.push(format!("secrets.{required} is missing"));
        }
    }
    problems
}

/// Every object template (`kind:`) carries the standard labels; the labels helper defines them;
/// every template's blocks balance.
fn check_labels_and_blocks(templates: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, src) in templates {
        if let Err(e) = parse_actions(src) {
            problems.push(format!("{name}: {e}"));
        }
        for (n, doc) in src.split("\n---").enumerate() {
            let defines_object = doc.lines().any(|l| l.starts_with("kind: "));
            if defines_object && !doc.contains(r#"include "identity-sidecar.labels" ."#) {
                problems.push(format!("{name} (document {n}): object without the standard labels include"));
            }
        }
    }
    let Some(helpers) = templates.get("_helpers.tpl") else {
        problems.push("_helpers.tpl is missing".into());
        return problems;
    };
    if parse_actions(helpers).is_err() {
        return problems;
    }
    let defs = defines(helpers);
    let labels = defs.get("identity-sidecar.labels").cloned().unwrap_or_default();
    let selector = defs.get("identity-sidecar.selectorLabels").cloned().unwrap_or_default();
    let full = if labels.contains(r#"include "identity-sidecar.selectorLabels""#) {
        format!("{labels}{selector}")
    } else {
        labels
    };
    for label in [
        "app.kubernetes.io/name:",
        "app.kubernetes.io/instance:",
        "app.kubernetes.io/version:",
        "app.kubernetes.io/managed-by:",
        "helm.sh/chart:",
    ] {
        if !full.contains(label) {
            problems.push(format!("_helpers.tpl: identity-sidecar.labels does not set {label}"));
        }
    }
    for label in ["app.kubernetes.io/name:", "app.kubernetes.io/instance:"] {
        if !selector.contains(label) {
            problems.push(format!("_helpers.tpl: identity-sidecar.selectorLabels does not set {label}"));
        }
    }
    problems
}

/// Config keys documented in config/default.toml — set ones and commented-out ones
/// (`# key = value`, also under commented `# [[section.table]]` headers, whose keys are
/// recorded as `section.table[].key`) — with the TOML type of their example value.
fn known_config_keys(default_toml: &str) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    let table: toml::Table = default_toml.parse().expect("config/default.toml parses");
    fn walk(t: &toml::Table, prefix: &str, out: &mut BTreeMap<String, &'static str>) {
        for (k, v) in t {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            out.insert(path.clone(), v.type_str());
            if let toml::Value::Table(inner) = v {
                walk(inner, &path, out);
            }
        }
    }
    walk(&table, "", &mut out);
    let mut section = String::new();
    for line in default_toml.lines() {
        let line = line.trim();
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = h.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let Some(comment) = line.strip_prefix('#').map(str::trim) else { continue };
        if let Some(h) = comment.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = format!("{h}[]");
            continue;
        }
        let Some((key, _)) = comment.split_once('=') else { continue };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            continue;
        }
        let Ok(one) = comment.parse::<toml::Table>() else { continue };
        let Some(v) = one.get(key) else { continue };
        let path = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
        out.entry(path).or_insert(v.type_str());
    }
    out
}

/// The chart's default TOML names only keys config/default.toml documents, with their types.
fn check_config_keys(config: &str, known: &BTreeMap<String, &'static str>) -> Vec<String> {
    let table: toml::Table = match config.parse() {
        Ok(t) => t,
        Err(e) => return vec![format!("values.yaml `config` is not TOML: {e}")],
    };
    fn walk(t: &toml::Table, prefix: &str, known: &BTreeMap<String, &'static str>, out: &mut Vec<String>) {
        for (k, v) in t {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            let Some(expected) = known.get(&path) else {
                out.push(format!("`config`: {path} is not a key of config/default.toml"));
                continue;
            };
            if v.type_str() != *expected {
                out.push(format!(
                    "`config`: {path} is a {}, config/default.toml has a {expected}",
                    v.type_str()
                ));
            }
            match v {
                toml::Value::Table(inner) => walk(inner, &path, known, out),
                toml::Value::Array(items) => {
                    for item in items {
                        if let toml::Value::Table(inner) = item {
                            walk(inner, &format!("{path}[]"), known, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut problems = Vec::new();
    walk(&table, "", known, &mut problems);
    problems
}

/// `SIDECAR__SECTION__KEY` variables name documented config keys.
fn check_env_names(
    sources: &BTreeMap<String, String>,
    known: &BTreeMap<String, &'static str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, src) in sources {
        for (pos, _) in src.match_indices("SIDECAR__") {
            let var: String = src[pos..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if var.len() == "SIDECAR__".len() {
                continue; // prose such as `SIDECAR__*`
            }
            let path = var["SIDECAR__".len()..].split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>();
            let path = path.join(".");
            if !known.contains_key(&path) {
                problems.push(format!("{name}: {var} names no key of config/default.toml ({path})"));
            }
        }
    }
    problems
}

/// The multi-replica guards: inside `identity-sidecar.validate`, a `fail` under "more than one
/// replica" and "no database Secret", another under "no signing-key Secret"; the multi-replica
/// condition covers replicaCount > 1 and autoscaling; the Deployment (always rendered)
/// includes the validation unconditionally.
fn check_guards(helpers: &str, deployment: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let actions = match parse_actions(helpers) {
        Ok(a) => a,
        Err(e) => return vec![format!("_helpers.tpl: {e}")],
    };
    let defs = defines(helpers);
    let multi = defs.get("identity-sidecar.multiReplica").map(String::as_str).unwrap_or("");
    let multi_actions = parse_actions(multi).unwrap_or_default();
    let covers = multi_actions.iter().any(|a| {
        a.kind == ActionKind::Open("if".into())
            && a.text.contains(" or ")
            && a.text.contains(".Values.autoscaling.enabled")
            && a.text.contains("gt (int .Values.replicaCount) 1")
    });
    if !covers {
        problems.push(
            "identity-sidecar.multiReplica must be true when `or .Values.autoscaling.enabled \
             (gt (int .Values.replicaCount) 1)`"
                .into(),
        );
    }
    let guarded = |needle: &str, condition: &str| {
        actions.iter().any(|a| {
            a.kind == ActionKind::Plain
                && a.text.starts_with("fail ")
                && a.text.contains(needle)
                && a.text.contains("more than one replica")
                && a.within.iter().any(|w| w.starts_with(r#"define "identity-sidecar.validate""#))
                && a.within.iter().any(|w| w == r#"if include "identity-sidecar.multiReplica" ."#)
                && a.within.iter().any(|w| w == condition)
        })
    };
    if !guarded("secrets.databaseUrl.name", "if not .Values.secrets.databaseUrl.name") {
        problems
            .push("no guard refusing more than one replica without PostgreSQL (secrets.databaseUrl)".into());
    }
    if !guarded("secrets.signingKey.name", "if not .Values.secrets.signingKey.name") {
        problems.push("no guard refusing more than one replica without a signing-key Secret".into());
    }
    let admin_guard = actions.iter().any(|a| {
        a.text.starts_with("fail ")
            && a.text.contains("admin_listen")
            && a.within.iter().any(|w| w.contains("regexMatch") && w.contains("admin_listen"))
    });
    if !admin_guard {
        problems.push("no guard refusing a config whose server.admin_listen is not 0.0.0.0:8081".into());
    }
    match parse_actions(deployment) {
        Ok(d) => {
            if !d.iter().any(|a| a.text == r#"include "identity-sidecar.validate" ."# && a.within.is_empty())
            {
                problems
                    .push("deployment.yaml must include identity-sidecar.validate outside any block".into());
            }
        }
        Err(e) => problems.push(format!("deployment.yaml: {e}")),
    }
    problems
}

/// Pod hardening and wiring the Deployment must keep.
fn check_deployment(values: &Yaml, deployment: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let expect = |path: &str, want: Yaml, problems: &mut Vec<String>| {
        if lookup(values, path) != Some(&want) {
            problems.push(format!("values.yaml: {path} must default to {want:?}"));
        }
    };
    expect("securityContext.runAsNonRoot", Yaml::Boolean(true), &mut problems);
    expect("securityContext.readOnlyRootFilesystem", Yaml::Boolean(true), &mut problems);
    expect("securityContext.allowPrivilegeEscalation", Yaml::Boolean(false), &mut problems);
    expect("securityContext.capabilities.drop", Yaml::Array(vec![Yaml::String("ALL".into())]), &mut problems);
    expect("securityContext.seccompProfile.type", Yaml::String("RuntimeDefault".into()), &mut problems);
    expect("podSecurityContext.runAsNonRoot", Yaml::Boolean(true), &mut problems);
    expect("podSecurityContext.seccompProfile.type", Yaml::String("RuntimeDefault".into()), &mut problems);
    for needle in [
        ".Values.securityContext",
        ".Values.podSecurityContext",
        ".Values.resources",
        ".Values.extraContainers",
        "containerPort: 8080",
        "containerPort: 8081",
        "- name: http",
        "- name: admin",
        "path: /healthz",
        "path: /readyz",
        "port: admin",
        "name: SIDECAR_CONFIG",
        "value: /etc/identity-sidecar/config.toml",
        "mountPath: /etc/identity-sidecar/config.toml",
        "mountPath: /tmp",
        "checksum/config:",
        "persistentVolumeClaim:",
        r#"include "identity-sidecar.secretEnv""#,
        r#"include "identity-sidecar.secretSources""#,
    ] {
        if !deployment.contains(needle) {
            problems.push(format!("deployment.yaml lacks `{needle}`"));
        }
    }
    problems
}

/// One Dockerfile instruction: keyword (upper-case) and arguments, continuations joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (kw, args) = current.split_once(char::is_whitespace).unwrap_or((current.as_str(), ""));
        out.push((kw.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

fn check_dockerfile(dockerfile: &str, dockerignore: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let instructions = dockerfile_instructions(dockerfile);
    let stages: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, (k, _))| k == "FROM").map(|(i, _)| i).collect();
    if stages.len() < 2 {
        problems.push(format!("Dockerfile: multi-stage build expected, found {} FROM", stages.len()));
        return problems;
    }
    let builder = &instructions[stages[0]].1;
    if !builder.starts_with("rust:") || !builder.contains("bookworm") {
        problems
            .push(format!("Dockerfile: the first stage should build from rust:…-bookworm, got {builder}"));
    }
    let build_stage = &instructions[stages[0]..stages[stages.len() - 1]];
    if !build_stage.iter().any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked")) {
        problems.push("Dockerfile: the builder must run `cargo build --release --locked`".into());
    }
    let last = &instructions[*stages.last().unwrap()..];
    let runtime = &last[0].1;
    if runtime.starts_with("rust:") {
        problems.push("Dockerfile: the runtime stage must not be the Rust toolchain image".into());
    }
    let user = last.iter().rev().find(|(k, _)| k == "USER").map(|(_, a)| a.as_str());
    match user {
        None => problems.push("Dockerfile: the runtime stage sets no USER (it would run as root)".into()),
        Some(u) => {
            let uid = u.split(':').next().unwrap_or("");
            if uid == "root" || uid == "0" || uid.parse::<u32>().is_err() {
                problems.push(format!("Dockerfile: USER {u} must be a numeric non-root uid"));
            }
        }
    }
    let has = |kw: &str, pred: &dyn Fn(&str) -> bool| last.iter().any(|(k, a)| k == kw && pred(a));
    if !has("ENTRYPOINT", &|a| a == r#"["/usr/local/bin/identity-sidecar"]"#) {
        problems.push(r#"Dockerfile: ENTRYPOINT ["/usr/local/bin/identity-sidecar"] expected"#.into());
    }
    if !has("CMD", &|a| a == r#"["serve"]"#) {
        problems.push(r#"Dockerfile: CMD ["serve"] expected"#.into());
    }
    if !has("EXPOSE", &|a| a.split_whitespace().collect::<Vec<_>>() == ["8080", "8081"]) {
        problems.push("Dockerfile: EXPOSE 8080 8081 expected".into());
    }
    // No shell in the runtime image: the HEALTHCHECK must run the binary itself (exec form).
    if !has("HEALTHCHECK", &|a| a.contains(r#"CMD ["/usr/local/bin/identity-sidecar", "health", "--ready"]"#))
    {
        problems.push(
            r#"Dockerfile: HEALTHCHECK ... CMD ["/usr/local/bin/identity-sidecar", "health", "--ready"] expected"#.into(),
        );
    }
    if !has("ENV", &|a| a.contains("SIDECAR_CONFIG=/etc/identity-sidecar/config.toml")) {
        problems.push("Dockerfile: ENV SIDECAR_CONFIG=/etc/identity-sidecar/config.toml expected".into());
    }
    if !has("COPY", &|a| a.contains("--from=") && a.ends_with("/usr/local/bin/identity-sidecar")) {
        problems.push("Dockerfile: the runtime stage must copy the binary from the builder".into());
    }
    if !has("COPY", &|a| a.ends_with("/etc/identity-sidecar/config.toml")) {
        problems.push("Dockerfile: the runtime stage must ship /etc/identity-sidecar/config.toml".into());
    }
    problems.extend(check_dockerfile_cache_and_labels(&instructions, &stages));
    let ignored: BTreeSet<&str> = dockerignore.lines().map(str::trim).collect();
    for needed in ["target/", ".git"] {
        if !ignored.contains(needed) {
            problems.push(format!(".dockerignore must exclude {needed}"));
        }
    }
    problems
}

/// Dependency caching with cargo-chef (a stage prepares the recipe; the builder cooks it before
/// it copies the sources), the commit passed to the compiler, and the OCI labels filled from
/// build arguments of the runtime stage (none with a hard-coded value).
fn check_dockerfile_cache_and_labels(instructions: &[(String, String)], stages: &[usize]) -> Vec<String> {
    let mut problems = Vec::new();
    let stage_of =
        |i: usize| &instructions[i..stages.iter().copied().find(|&s| s > i).unwrap_or(instructions.len())];
    let prepares = stages.iter().any(|&s| {
        stage_of(s)
            .iter()
            .any(|(k, a)| k == "RUN" && a.contains("cargo chef prepare --recipe-path recipe.json"))
    });
    if !prepares {
        problems.push("Dockerfile: no stage runs `cargo chef prepare --recipe-path recipe.json`".into());
    }
    let cooks_first = stages.iter().any(|&s| {
        let stage = stage_of(s);
        let cook =
            stage.iter().position(|(k, a)| k == "RUN" && a.contains("cargo chef cook --release --locked"));
        let sources = stage.iter().position(|(k, a)| k == "COPY" && a == ". .");
        let build =
            stage.iter().position(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked"));
        let recipe =
            stage.iter().any(|(k, a)| k == "COPY" && a.contains("--from=") && a.contains("recipe.json"));
        matches!((cook, sources, build), (Some(c), Some(s), Some(b)) if c < s && s < b) && recipe
    });
    if !cooks_first {
        problems.push(
            "Dockerfile: the builder must copy the recipe, `cargo chef cook --release --locked`, and only \
             then `COPY . .` and build"
                .into(),
        );
    }
    let commit =
        instructions.iter().any(|(k, a)| k == "ENV" && a.contains("IDENTITY_SIDECAR_COMMIT=${REVISION}"));
    if !commit {
        problems.push("Dockerfile: the builder must set IDENTITY_SIDECAR_COMMIT=${REVISION}".into());
    }
    let runtime = stage_of(*stages.last().expect("stages"));
    let args: BTreeMap<&str, &str> = runtime
        .iter()
        .filter(|(k, _)| k == "ARG")
        .map(|(_, a)| a.split_once('=').unwrap_or((a.as_str(), "")))
        .collect();
    let labels: String =
        runtime.iter().filter(|(k, _)| k == "LABEL").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(" ");
    for (label, arg) in
        [("source", "SOURCE"), ("revision", "REVISION"), ("created", "CREATED"), ("version", "VERSION")]
    {
        if !labels.contains(&format!(r#"org.opencontainers.image.{label}="${{{arg}}}""#)) {
            problems.push(format!(
                r#"Dockerfile: LABEL org.opencontainers.image.{label}="${{{arg}}}" expected in the runtime stage"#
            ));
        }
        match args.get(arg) {
            None => problems.push(format!("Dockerfile: the runtime stage must declare ARG {arg}")),
            Some(default) if !default.trim_matches('"').is_empty() => {
                problems.push(format!("Dockerfile: ARG {arg} must not hard-code a value ({default})"))
            }
            Some(_) => {}
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The chart and Dockerfile as committed

#[test]
fn chart_yaml_and_values_parse() {
    assert_clean("Chart.yaml", check_chart_yaml(&read(chart_dir().join("Chart.yaml"))));
    assert!(matches!(values(), Yaml::Hash(_)), "values.yaml must be a mapping");
}

#[test]
fn every_template_value_is_declared_and_every_value_used() {
    let (values, templates) = (values(), templates());
    assert!(templates.contains_key("_helpers.tpl") && templates.contains_key("deployment.yaml"));
    assert_clean("undeclared values", check_value_refs_declared(&values, &templates));
    assert_clean("unused values", check_values_used(&values, &templates));
}

#[test]
fn every_value_is_documented() {
    assert_clean("undocumented values", check_values_documented(&values_text()));
}

#[test]
fn secrets_are_only_references_to_existing_secrets() {
    assert_clean("secrets", check_secrets_are_references(&values()));
}

#[test]
fn objects_carry_standard_labels_and_blocks_balance() {
    let templates = templates();
    for expected in [
        "deployment.yaml",
        "configmap.yaml",
        "service.yaml",
        "networkpolicy.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "servicemonitor.yaml",
        "migration-job.yaml",
        "serviceaccount.yaml",
        "NOTES.txt",
    ] {
        assert!(templates.contains_key(expected), "templates/{expected} is missing");
    }
    assert_clean("labels and blocks", check_labels_and_blocks(&templates));
}

#[test]
fn default_config_is_one_the_sidecar_accepts() {
    let values = values();
    let config = values["config"].as_str().expect("values.yaml `config` is a string");
    let known = known_config_keys(&default_toml());
    assert_clean("config keys", check_config_keys(config, &known));

    // Load it exactly as the pod does: the file, then the chart's SQLite URL variable.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let env = [(
        "SIDECAR__DATABASE__URL".to_string(),
        "sqlite:///var/lib/identity-sidecar/identity-sidecar.db?mode=rwc".to_string(),
    )];
    let loaded =
        identity_sidecar::Config::load(Some(path.as_path()), env).expect("the chart's default config loads");
    identity_sidecar::app::check(&loaded).expect("the chart's default config passes the startup check");
    assert_eq!(
        loaded.server.admin_listen.to_string(),
        "0.0.0.0:8081",
        "probes need the admin port off loopback"
    );
    assert_eq!(loaded.server.listen.port(), 8080);
}

#[test]
fn env_variables_name_real_config_keys() {
    let known = known_config_keys(&default_toml());
    let mut sources = templates();
    sources.insert("Dockerfile".into(), read(root().join("Dockerfile")));
    let all: String = sources.values().cloned().collect();
    for wired in [
        "SIDECAR__DATABASE__URL_FILE",
        "SIDECAR__CACHE__REDIS_URL_FILE",
        "SIDECAR__KEYCLOAK_ADMIN__CLIENT_SECRET_FILE",
        "SIDECAR__ENTITLEMENTS__SIGNING_KEY_FILE",
        "SIDECAR__ENTITLEMENTS__PREVIOUS_KEY_FILES",
    ] {
        assert!(all.contains(wired), "the chart does not set {wired}");
    }
    assert_clean("environment variables", check_env_names(&sources, &known));
}

#[test]
fn multi_replica_requires_postgres_and_signing_key() {
    let templates = templates();
    assert_clean("guards", check_guards(&templates["_helpers.tpl"], &templates["deployment.yaml"]));
}

#[test]
fn deployment_is_hardened_and_wired() {
    assert_clean("deployment", check_deployment(&values(), &templates()["deployment.yaml"]));
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    assert_clean(
        "Dockerfile",
        check_dockerfile(&read(root().join("Dockerfile")), &read(root().join(".dockerignore"))),
    );
}

// ---------------------------------------------------------------------------------------------
// Each check fails on a broken input

fn broken(src: &str, from: &str, to: &str) -> String {
    assert!(src.contains(from), "test fixture: {from:?} not found");
    src.replacen(from, to, 1)
}

#[test]
fn checks_catch_a_broken_chart_yaml() {
    let chart = read(chart_dir().join("Chart.yaml"));
    assert!(!check_chart_yaml(&broken(&chart, "apiVersion: v2", "apiVersion: v1")).is_empty());
    assert!(
        !check_chart_yaml(&broken(&chart, r#"appVersion: "0.1.0""#, r#"appVersion: "9.9.9""#)).is_empty()
    );
    assert!(!check_chart_yaml("name: [unclosed").is_empty());
}

#[test]
fn checks_catch_undeclared_and_unused_values() {
    let (values, mut templates) = (values(), templates());
    let deployment = templates["deployment.yaml"].clone();
    templates.insert(
        "deployment.yaml".into(),
        broken(&deployment, ".Values.revisionHistoryLimit", ".Values.revisionHistory"),
    );
    let undeclared = check_value_refs_declared(&values, &templates);
    assert!(undeclared.iter().any(|p| p.contains(".Values.revisionHistory ")), "{undeclared:?}");
    let unused = check_values_used(&values, &templates);
    assert!(unused.iter().any(|p| p.contains("revisionHistoryLimit")), "{unused:?}");
}

#[test]
fn checks_catch_an_undocumented_value() {
    let text = values_text();
    let text = broken(&text, "# Size limit of the emptyDir mounted at /tmp.\n", "");
    let problems = check_values_documented(&text);
    assert!(problems.iter().any(|p| p.contains("tmpSizeLimit")), "{problems:?}");
    let nested =
        broken(&values_text(), "    # Key inside that Secret.\n    key: redis-url", "    key: redis-url");
    let problems = check_values_documented(&nested);
    assert!(problems.iter().any(|p| p.contains("secrets.redisUrl.key")), "{problems:?}");
}

#[test]
fn checks_catch_a_secret_value() {
    let text = broken(&values_text(), "    key: redis-url", "    key: redis-url\n    password: hunter2");
    assert!(!check_secrets_are_references(&parse_yaml(&text, "broken values")).is_empty());
    let text = broken(&values_text(), "    key: signing-key.pem", "    key: signing-key.pem\n    pem: xyz");
    assert!(!check_secrets_are_references(&parse_yaml(&text, "broken values")).is_empty());
}

#[test]
fn checks_catch_missing_labels_and_unbalanced_blocks() {
    let mut templates = templates();
    let service = templates["service.yaml"].clone();
    templates.insert(
        "service.yaml".into(),
        broken(
            &service,
            r#"include "identity-sidecar.labels" ."#,
            r#"include "identity-sidecar.selectorLabels" ."#,
        ),
    );
    let problems = check_labels_and_blocks(&templates);
    assert!(problems.iter().any(|p| p.starts_with("service.yaml")), "{problems:?}");

    let mut templates = self::templates();
    let hpa = templates["hpa.yaml"].clone();
    templates.insert("hpa.yaml".into(), broken(&hpa, "{{- end }}\n{{- end }}", "{{- end }}"));
    let problems = check_labels_and_blocks(&templates);
    assert!(problems.iter().any(|p| p.starts_with("hpa.yaml") && p.contains("never closed")), "{problems:?}");

    let mut templates = self::templates();
    let helpers = templates["_helpers.tpl"].clone();
    templates.insert("_helpers.tpl".into(), broken(&helpers, "app.kubernetes.io/managed-by:", "managed-by:"));
    let problems = check_labels_and_blocks(&templates);
    assert!(problems.iter().any(|p| p.contains("managed-by")), "{problems:?}");
}

#[test]
fn checks_catch_unknown_config_keys() {
    let known = known_config_keys(&default_toml());
    // Commented-out keys of default.toml count as known.
    for key in
        ["oidc.issuer", "database.url_file", "cache.redis_url_file", "keycloak_admin.client_secret_file"]
    {
        assert!(known.contains_key(key), "{key} should be known from default.toml");
    }
    assert!(known.contains_key("auth.rules[].prefix"));
    let values = values();
    let config = values["config"].as_str().unwrap();
    let typo = broken(config, "admin_listen =", "admin_listn =");
    assert!(!check_config_keys(&typo, &known).is_empty());
    let section = format!("{config}\n[bogus]\nkey = 1\n");
    assert!(!check_config_keys(&section, &known).is_empty());
    let wrong_type = broken(config, r#"audiences = ["example-app"]"#, r#"audiences = "example-app""#);
    assert!(!check_config_keys(&wrong_type, &known).is_empty());
    assert!(!check_config_keys("[server\n", &known).is_empty());
    let rule = format!("{config}\n[[auth.rules]]\nprefix = \"/a\"\nrequire = true\n");
    assert_clean("a valid auth rule", check_config_keys(&rule, &known));
    let bad_rule = format!("{config}\n[[auth.rules]]\nprefx = \"/a\"\n");
    assert!(!check_config_keys(&bad_rule, &known).is_empty());
}

#[test]
fn checks_catch_a_misspelt_env_variable() {
    let known = known_config_keys(&default_toml());
    let mut templates = templates();
    let helpers = templates["_helpers.tpl"].clone();
    templates.insert(
        "_helpers.tpl".into(),
        broken(&helpers, "SIDECAR__CACHE__REDIS_URL_FILE", "SIDECAR__CACHE__REDIS_FILE"),
    );
    let problems = check_env_names(&templates, &known);
    assert!(problems.iter().any(|p| p.contains("SIDECAR__CACHE__REDIS_FILE")), "{problems:?}");
}

#[test]
fn checks_catch_missing_guards() {
    let templates = templates();
    let (helpers, deployment) = (&templates["_helpers.tpl"], &templates["deployment.yaml"]);
    let no_pg = broken(
        helpers,
        "{{- if not .Values.secrets.databaseUrl.name }}\n{{- fail",
        "{{- if false }}\n{{- fail",
    );
    assert!(check_guards(&no_pg, deployment).iter().any(|p| p.contains("PostgreSQL")));
    let no_key = broken(helpers, "{{- if not .Values.secrets.signingKey.name }}", "{{- if false }}");
    assert!(check_guards(&no_key, deployment).iter().any(|p| p.contains("signing-key")));
    let no_hpa = broken(helpers, "or .Values.autoscaling.enabled (gt", "and true (gt");
    assert!(check_guards(&no_hpa, deployment).iter().any(|p| p.contains("multiReplica")));
    let no_admin =
        broken(helpers, r#"(regexMatch "(?m)^[ \\t]*admin_listen"#, r#"(regexMatch "(?m)^[ \\t]*listen"#);
    assert!(check_guards(&no_admin, deployment).iter().any(|p| p.contains("admin_listen")));
    let not_included = broken(deployment, r#"{{- include "identity-sidecar.validate" . }}"#, "");
    assert!(check_guards(helpers, &not_included).iter().any(|p| p.contains("deployment.yaml")));
    let conditional = format!("{{{{- if .Values.x }}}}\n{deployment}\n{{{{- end }}}}");
    assert!(check_guards(helpers, &conditional).iter().any(|p| p.contains("outside any block")));
}

#[test]
fn checks_catch_a_weakened_deployment() {
    let (values_text, deployment) = (values_text(), templates()["deployment.yaml"].clone());
    let writable = broken(&values_text, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false");
    assert!(!check_deployment(&parse_yaml(&writable, "values"), &deployment).is_empty());
    let no_probe = broken(&deployment, "path: /readyz", "path: /healthz");
    assert!(!check_deployment(&values(), &no_probe).is_empty());
}

#[test]
fn checks_catch_a_root_or_single_stage_dockerfile() {
    let (dockerfile, ignore) = (read(root().join("Dockerfile")), read(root().join(".dockerignore")));
    let root_user = broken(&dockerfile, "USER 65532:65532", "USER root");
    assert!(check_dockerfile(&root_user, &ignore).iter().any(|p| p.contains("USER")));
    let no_user = broken(&dockerfile, "USER 65532:65532", "");
    assert!(check_dockerfile(&no_user, &ignore).iter().any(|p| p.contains("USER")));
    let single = "FROM debian:bookworm-slim\nUSER 1000\nENTRYPOINT [\"/x\"]\n";
    assert!(check_dockerfile(single, &ignore).iter().any(|p| p.contains("multi-stage")));
    let no_entry = broken(&dockerfile, r#"ENTRYPOINT ["/usr/local/bin/identity-sidecar"]"#, "");
    assert!(check_dockerfile(&no_entry, &ignore).iter().any(|p| p.contains("ENTRYPOINT")));
    assert!(check_dockerfile(&dockerfile, "").iter().any(|p| p.contains(".dockerignore")));
    let shell_probe = broken(
        &dockerfile,
        r#"CMD ["/usr/local/bin/identity-sidecar", "health", "--ready"]"#,
        "CMD curl -f http://127.0.0.1:8081/readyz",
    );
    assert!(check_dockerfile(&shell_probe, &ignore).iter().any(|p| p.contains("HEALTHCHECK")));
}

#[test]
fn checks_catch_a_dockerfile_without_dependency_caching_or_labels() {
    let (dockerfile, ignore) = (read(root().join("Dockerfile")), read(root().join(".dockerignore")));
    let no_cook = broken(&dockerfile, "cargo chef cook --release --locked", "true");
    assert!(check_dockerfile(&no_cook, &ignore).iter().any(|p| p.contains("cook")));
    let no_plan = broken(&dockerfile, "cargo chef prepare --recipe-path recipe.json", "true");
    assert!(check_dockerfile(&no_plan, &ignore).iter().any(|p| p.contains("prepare")));
    let fixed_version = broken(&dockerfile, "ARG VERSION=\"\"", "ARG VERSION=0.1.0");
    assert!(check_dockerfile(&fixed_version, &ignore).iter().any(|p| p.contains("ARG VERSION")));
    let no_revision = broken(
        &dockerfile,
        r#"org.opencontainers.image.revision="${REVISION}""#,
        r#"org.opencontainers.image.revision="abc""#,
    );
    assert!(check_dockerfile(&no_revision, &ignore).iter().any(|p| p.contains("image.revision")));
    let no_commit = broken(&dockerfile, "IDENTITY_SIDECAR_COMMIT=${REVISION}", "UNUSED=${REVISION}");
    assert!(check_dockerfile(&no_commit, &ignore).iter().any(|p| p.contains("IDENTITY_SIDECAR_COMMIT")));
}

// ---------------------------------------------------------------------------------------------
// The metrics port (`server.metrics_listen`), which the chart's sidecar mode exposes to
// Prometheus while the admin port stays on loopback

/// A running app with `server.metrics_listen` on loopback port 0, built directly because the
/// test helper knows only the public and admin ports. Returns the metrics and admin addresses.
async fn app_with_metrics_port(
    kc: &crate::helpers::FakeKeycloak,
    dir: &tempfile::TempDir,
) -> (std::net::SocketAddr, std::net::SocketAddr, identity_sidecar::AppHandle) {
    let mut env = crate::helpers::base_env(kc);
    crate::helpers::set(&mut env, "SIDECAR__SERVER__METRICS_LISTEN", "127.0.0.1:0");
    let db = dir.path().join("sidecar.db");
    crate::helpers::set(&mut env, "SIDECAR__DATABASE__URL", format!("sqlite://{}?mode=rwc", db.display()));
    let config = identity_sidecar::Config::load(None, env).expect("test config is valid");
    let app = identity_sidecar::App::build(config).await.expect("app builds");
    let metrics = app.metrics_addr().expect("server.metrics_listen is set");
    let admin = app.admin_addr();
    (metrics, admin, app.spawn())
}

#[tokio::test]
async fn the_metrics_port_serves_the_admin_ports_metrics_and_nothing_else() {
    let kc = crate::helpers::FakeKeycloak::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (metrics, admin, handle) = app_with_metrics_port(&kc, &dir).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let scraped = http.get(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let from_admin = http.get(format!("http://{admin}/metrics")).send().await.unwrap();
    assert_eq!(
        scraped.headers().get("content-type"),
        from_admin.headers().get("content-type"),
        "both ports answer /metrics in the same format"
    );
    let text = scraped.text().await.unwrap();
    assert!(text.contains("# TYPE identity_sidecar_jwks_stale gauge"), "{text}");

    for path in [
        "/healthz",
        "/readyz",
        "/.well-known/jwks.json",
        "/admin/v1/openapi.json",
        "/admin/v1/organizations",
        "/",
    ] {
        let status = http.get(format!("http://{metrics}{path}")).send().await.unwrap().status();
        assert_eq!(status, 404, "the metrics port must not serve {path}");
    }
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_metrics_listen_there_is_no_metrics_port() {
    let kc = crate::helpers::FakeKeycloak::start().await;
    let mut env = crate::helpers::base_env(&kc);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sidecar.db");
    crate::helpers::set(&mut env, "SIDECAR__DATABASE__URL", format!("sqlite://{}?mode=rwc", db.display()));
    let config = identity_sidecar::Config::load(None, env).expect("test config is valid");
    assert_eq!(config.server.metrics_listen, None, "unset by default");
    let app = identity_sidecar::App::build(config).await.expect("app builds");
    assert_eq!(app.metrics_addr(), None);
}

// ---------------------------------------------------------------------------------------------
// values.schema.json, the sidecar mode, and the metric names of the alerts and the dashboard

/// A YAML tree as JSON, the form JSON Schema validates (Helm does the same conversion).
fn yaml_to_json(node: &Yaml) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Yaml::Hash(map) => Value::Object(map.iter().map(|(k, v)| (yaml_key(k), yaml_to_json(v))).collect()),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::String(r.clone())),
        Yaml::Boolean(b) => Value::Bool(*b),
        _ => Value::Null,
    }
}

/// Helm's coalescing of a values file over the chart's defaults: mappings merge key by key,
/// anything else replaces.
fn merge_values(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge_values(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The values examples of the docs: fenced blocks marked ` ```yaml values ` and shell
/// heredocs `<<'YAML' … YAML`, by file and position.
fn values_examples(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let end = match line.trim() {
            "```yaml values" => "```",
            l if l.ends_with("<<'YAML'") => "YAML",
            _ => continue,
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != end).collect();
        out.push(body.join("\n"));
    }
    out
}

/// Problems of `values` (merged over the chart's defaults) against the chart's schema.
fn check_against_schema(schema: &serde_json::Value, example: &str, what: &str) -> Vec<String> {
    let mut merged = yaml_to_json(&values());
    match YamlLoader::load_from_str(example) {
        Ok(docs) if docs.len() == 1 => merge_values(&mut merged, &yaml_to_json(&docs[0])),
        Ok(_) => return vec![format!("{what}: expected one YAML document")],
        Err(e) => return vec![format!("{what} is not YAML: {e}")],
    }
    validate_json_schema(schema, &merged).into_iter().map(|p| format!("{what}: {p}")).collect()
}

/// Validates with the reference implementation of JSON Schema, PyPI's `jsonschema` (draft
/// 2020-12, as Helm 3.18+), in a virtualenv pinned by tests/chart/requirements.txt: the Rust
/// validators turn on features of shared dependencies (serde_json's float_roundtrip, regex's)
/// that rebuild the whole dependency tree. One problem per line; the schema itself is checked.
fn validate_json_schema(schema: &serde_json::Value, instance: &serde_json::Value) -> Vec<String> {
    use std::io::Write as _;
    const SCRIPT: &str = "import json, sys, jsonschema\n\
        doc = json.load(sys.stdin)\n\
        jsonschema.Draft202012Validator.check_schema(doc['schema'])\n\
        for e in jsonschema.Draft202012Validator(doc['schema']).iter_errors(doc['instance']):\n\
        \x20   print('/' + '/'.join(map(str, e.absolute_path)) + ': ' + e.message)\n";
    let venv = crate::helpers::python::venv("chart-venv", "tests/chart/requirements.txt");
    let mut child = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python starts");
    let input = serde_json::json!({"schema": schema, "instance": instance}).to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return vec![format!("the validator failed: {}", String::from_utf8_lossy(&out.stderr))];
    }
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn schema() -> serde_json::Value {
    serde_json::from_str(&read(chart_dir().join("values.schema.json"))).expect("values.schema.json is JSON")
}

fn docs_with_values_examples() -> Vec<(String, String)> {
    ["helm/identity-sidecar/README.md", "docs/operations.md"]
        .into_iter()
        .map(|p| (p.to_string(), read(root().join(p))))
        .collect()
}

#[test]
fn the_schema_accepts_values_yaml_and_every_values_example_in_the_docs() {
    let schema = schema();
    assert_clean("values.yaml", check_against_schema(&schema, "{}", "values.yaml"));
    let mut examples = 0;
    for (path, text) in docs_with_values_examples() {
        for (n, example) in values_examples(&text).iter().enumerate() {
            examples += 1;
            assert_clean(
                path.as_str(),
                check_against_schema(&schema, example, &format!("{path} example {n}")),
            );
        }
    }
    assert!(examples >= 4, "expected the docs' values examples, found {examples}");
}

#[test]
fn the_schema_refuses_typos_and_wrong_types() {
    let schema = schema();
    assert!(!check_against_schema(&schema, "replicaCont: 2", "typo").is_empty());
    assert!(!check_against_schema(&schema, "mode: daemonset", "mode").is_empty());
    assert!(!check_against_schema(&schema, "memory:\n  cacheMaxBytes: lots", "type").is_empty());
    assert!(
        !check_against_schema(&schema, "secrets:\n  redisUrl:\n    name: x\n    password: y", "secret")
            .is_empty()
    );
    assert!(!check_against_schema(&schema, "sidecar:\n  appPort: 70000", "port").is_empty());
    let examples = values_examples("```yaml values\nmode: sidecar\n```\nx <<'YAML'\nreplicaCount: 1\nYAML\n");
    assert_eq!(examples, ["mode: sidecar", "replicaCount: 1"]);
}

/// The sidecar-mode templates: a native sidecar (restartPolicy: Always) whose probes run the
/// binary, whose admin listener stays on loopback, with its own user (the pod's
/// securityContext is the app's), mounting only volumes the volumes template defines; the
/// README shows an app chart including both templates, its app container with its own
/// securityContext and bound to 127.0.0.1.
fn check_sidecar_mode(sidecar_tpl: &str, readme: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let defs = defines(sidecar_tpl);
    let Some(container) = defs.get("identity-sidecar.sidecarContainer") else {
        return vec!["_sidecar.tpl: no identity-sidecar.sidecarContainer".into()];
    };
    let Some(volumes) = defs.get("identity-sidecar.sidecarVolumes") else {
        return vec!["_sidecar.tpl: no identity-sidecar.sidecarVolumes".into()];
    };
    for needle in [
        "restartPolicy: Always",
        r#"command: ["/usr/local/bin/identity-sidecar", "health"]"#,
        r#"command: ["/usr/local/bin/identity-sidecar", "health", "--ready"]"#,
        "name: SIDECAR__SERVER__ADMIN_LISTEN\n      value: \"127.0.0.1:8081\"",
        "name: SIDECAR__SERVER__METRICS_LISTEN",
        "name: SIDECAR__UPSTREAM__URL",
        "http://127.0.0.1:%d",
        "containerPort: 8080",
        r#"dict "runAsUser""#,
        ".Values.securityContext",
        r#"include "identity-sidecar.secretEnv""#,
        r#"include "identity-sidecar.derivedMemory""#,
    ] {
        if !container.contains(needle) {
            problems.push(format!("sidecarContainer lacks `{needle}`"));
        }
    }
    for forbidden in ["httpGet", "podSecurityContext | ", "fsGroup"] {
        if container.contains(forbidden) {
            problems.push(format!("sidecarContainer must not use `{forbidden}`"));
        }
    }
    for (pos, _) in container.match_indices("- name: identity-sidecar-") {
        let name: String = container[pos + 8..].chars().take_while(|c| !c.is_whitespace()).collect();
        if !volumes.contains(&format!("- name: {name}\n")) {
            problems.push(format!("sidecarContainer mounts {name}, which sidecarVolumes does not define"));
        }
    }
    let example = readme.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).unwrap_or("");
    for needle in [
        "initContainers:",
        r#"include "identity-sidecar.sidecarContainer" (index .Subcharts "identity-sidecar")"#,
        r#"include "identity-sidecar.sidecarVolumes" (index .Subcharts "identity-sidecar")"#,
        "127.0.0.1:8000",
    ] {
        if !example.contains(needle) {
            problems.push(format!("README's app-chart example lacks `{needle}`"));
        }
    }
    let app = example.split("- name: app").nth(1).unwrap_or("");
    if !app.split("volumes:").next().unwrap_or("").contains("securityContext:") {
        problems.push("README's app container must keep its own securityContext".into());
    }
    problems
}

#[test]
fn the_sidecar_mode_is_a_native_sidecar_with_exec_probes_and_a_loopback_admin_port() {
    let templates = templates();
    let readme = read(chart_dir().join("README.md"));
    assert_clean("sidecar mode", check_sidecar_mode(&templates["_sidecar.tpl"], &readme));
    // The NetworkPolicy selects the app's pods in sidecar mode and admits only the sidecar's
    // ports; the standalone objects are not rendered there.
    let policy = &templates["networkpolicy.yaml"];
    assert!(policy.contains(".Values.sidecar.podSelector"), "{policy}");
    assert!(policy.contains("{{ if $sidecar }}8080{{ else }}http{{ end }}"));
    assert!(
        policy.contains("{{ if $sidecar }}{{ int $.Values.sidecar.metricsPort }}{{ else }}admin{{ end }}")
    );
    for name in [
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "pvc.yaml",
        "servicemonitor.yaml",
        "apisixroute.yaml",
    ] {
        let actions = parse_actions(&templates[name]).unwrap();
        let gated = actions
            .iter()
            .filter(|a| a.kind == ActionKind::Open("if".into()) && a.within.is_empty())
            .any(|a| a.text.contains(r#"eq .Values.mode "deployment""#));
        assert!(gated, "{name} must render only in deployment mode");
    }
}

#[test]
fn checks_catch_a_broken_sidecar_template() {
    let templates = templates();
    let (tpl, readme) = (&templates["_sidecar.tpl"], read(chart_dir().join("README.md")));
    let no_native = broken(tpl, "restartPolicy: Always\n  args", "restartPolicy: OnFailure\n  args");
    assert!(check_sidecar_mode(&no_native, &readme).iter().any(|p| p.contains("restartPolicy")));
    let open_admin = broken(tpl, "value: \"127.0.0.1:8081\"", "value: \"0.0.0.0:8081\"");
    assert!(check_sidecar_mode(&open_admin, &readme).iter().any(|p| p.contains("ADMIN_LISTEN")));
    let http_probe = broken(tpl, "    exec:\n", "    httpGet:\n");
    assert!(check_sidecar_mode(&http_probe, &readme).iter().any(|p| p.contains("httpGet")));
    let lost_volume = broken(tpl, "- name: identity-sidecar-tmp\n  emptyDir", "- name: tmp\n  emptyDir");
    assert!(check_sidecar_mode(&lost_volume, &readme).iter().any(|p| p.contains("identity-sidecar-tmp")));
    let no_ctx = broken(
        &readme,
        "          securityContext:\n            allowPrivilegeEscalation",
        "          x:\n            allowPrivilegeEscalation",
    );
    assert!(check_sidecar_mode(tpl, &no_ctx).iter().any(|p| p.contains("securityContext")));
}

/// `identity_sidecar_*` names used in a text (queries of alerts or dashboards).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (pos, _) in text.match_indices("identity_sidecar_") {
        if text[..pos].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String =
            text[pos..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        out.insert(name);
    }
    out
}

/// Sample names the exposition allows, from its `# TYPE` lines: counters as `_total`,
/// histograms as `_bucket`/`_sum`/`_count`, gauges as they are.
fn exported_series(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            // OpenMetrics: an info family `x` writes its one sample as `x_info`.
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            out.insert(format!("{name}{suffix}"));
        }
    }
    out
}

fn check_metric_names(sources: &BTreeMap<String, String>, exported: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (what, text) in sources {
        let names = metric_names_in(text);
        if names.is_empty() {
            problems.push(format!("{what}: names no identity_sidecar_ metric at all"));
        }
        for name in names.difference(exported) {
            problems.push(format!("{what}: {name} is not exported by the binary"));
        }
    }
    problems
}

fn monitoring_sources() -> BTreeMap<String, String> {
    let dashboard = read(chart_dir().join("dashboards/identity-sidecar.json"));
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()), "the dashboard has panels");
    BTreeMap::from([
        ("dashboards/identity-sidecar.json".to_string(), dashboard),
        ("templates/prometheusrule.yaml".to_string(), templates()["prometheusrule.yaml"].clone()),
    ])
}

/// The app's registry with one sample in every labelled family: a family writes nothing,
/// not even its `# TYPE` line, until its first label set is used, so a fresh app's scrape
/// shows only the unlabelled metrics.
fn every_family_touched() -> String {
    let m = identity_sidecar::metrics::Metrics::new();
    let one = || vec![("test", "1")];
    for family in [
        &m.requests,
        &m.auth_decisions,
        &m.jwks_fetches,
        &m.cache,
        &m.upstream_responses,
        &m.reconciliations,
        &m.reconcile_changes,
        &m.redis_errors,
        &m.redis_invalidations,
        &m.jobs,
        &m.code_redemptions,
        &m.userinfo_claims_dropped,
        &m.active_organization_selections,
        &m.assignments,
    ] {
        family.get_or_create(&one()).inc();
    }
    m.jobs_queue_depth.get_or_create(&one()).set(1);
    m.requests_in_flight.get_or_create(&one()).set(1);
    m.request_duration.get_or_create(&one()).observe(0.1);
    m.render()
}

#[tokio::test]
async fn alerts_and_dashboard_query_only_metrics_the_binary_exports() {
    let kc = crate::helpers::FakeKeycloak::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (metrics, _, handle) = app_with_metrics_port(&kc, &dir).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let scraped = http.get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    handle.shutdown().await.unwrap();
    let exported = exported_series(&every_family_touched());
    let from_app = exported_series(&scraped);
    assert!(!from_app.is_empty(), "{scraped}");
    assert!(from_app.is_subset(&exported), "the running app's families are the registry's: {from_app:?}");
    assert!(exported.contains("identity_sidecar_requests_total"), "{exported:?}");

    let sources = monitoring_sources();
    assert_clean("metric names", check_metric_names(&sources, &exported));

    let mut typo = sources.clone();
    let rule = typo["templates/prometheusrule.yaml"]
        .replace("identity_sidecar_jwks_stale", "identity_sidecar_jwks_old");
    typo.insert("templates/prometheusrule.yaml".into(), rule);
    let problems = check_metric_names(&typo, &exported);
    assert!(problems.iter().any(|p| p.contains("identity_sidecar_jwks_old")), "{problems:?}");
}
