//! `docs/configuration.md` is generated from `config/default.toml`, the file that documents
//! every key, so the page can never disagree with it. The test here regenerates the page in
//! memory and fails when the file on disk differs; `UPDATE_DOCS=1` rewrites the file instead.
//!
//! Hand-written rather than built on a TOML parser: the page needs the comments and the
//! commented-out keys, which a TOML parser throws away. The reading rules, kept deliberately
//! small so that `default.toml` stays plain:
//!
//! - a run of `#` comment lines describes the one key right after it; a key with no comment
//!   of its own gets none (never its neighbour's, nor a commented-out key's);
//! - `# key = value` is a key without a default (the value is an example);
//! - `# [[section.key]]` starts an example entry of a list of tables: the `# field = value`
//!   lines after it are fields of that one key, not keys.

use std::fmt::Write as _;

const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
const PAGE: &str = "docs/configuration.md";
const REGENERATE: &str = "UPDATE_DOCS=1 cargo nextest run -E 'test(configuration_page)'";

/// One key of `default.toml`, as the page shows it.
#[derive(Debug, Default)]
struct Key {
    name: String,
    /// The value as written; `None` for a commented-out key (no default).
    default: Option<String>,
    /// A commented-out key's example value.
    example: Option<String>,
    comment: Vec<String>,
    /// Fields of an entry, for a list of tables (`[[section.key]]`).
    fields: Vec<Field>,
}

#[derive(Debug)]
struct Field {
    name: String,
    example: String,
    comment: Vec<String>,
}

#[derive(Debug)]
struct Section {
    name: String,
    keys: Vec<Key>,
}

/// `name = value` with a bare lower-case key, or `None`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(" = ")?;
    let bare =
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    bare.then(|| (name, value.trim()))
}

/// `[name]` or `[[name]]`, with the brackets' depth.
fn header(line: &str) -> Option<(&str, usize)> {
    if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
        return Some((inner, 2));
    }
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    (!inner.contains('[') && !inner.contains(' ')).then_some((inner, 1))
}

fn parse(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    // Whether the pending comment was already given to a key (the next comment line starts a
    // new block rather than continuing the old one).
    let mut comment_used = false;
    // Inside `# [[section.key]]`: the index of that key in the current section.
    let mut entry_of: Option<usize> = None;
    let mut lines = text.lines();
    while let Some(raw) = lines.next() {
        let line = raw.trim();
        if line.is_empty() {
            comment.clear();
            entry_of = None;
            continue;
        }
        let commented = line.strip_prefix('#').map(|l| l.strip_prefix(' ').unwrap_or(l));
        let body = commented.unwrap_or(line);
        if let Some((name, depth)) = header(body) {
            if depth == 1 && commented.is_none() {
                sections.push(Section { name: name.to_owned(), keys: Vec::new() });
                entry_of = None;
            } else if depth == 2 {
                let (section, key) = name.rsplit_once('.').unwrap_or(("", name));
                let current = sections.last().expect("a list entry before any section");
                assert_eq!(current.name, section, "[[{name}]] outside [{section}]");
                entry_of = Some(
                    current
                        .keys
                        .iter()
                        .position(|k| k.name == key)
                        .unwrap_or_else(|| panic!("[[{name}]] before its key `{key} = []`")),
                );
            }
            comment.clear();
            continue;
        }
        let Some(section) = sections.last_mut() else { continue }; // the file's own preamble
        match key_value(body) {
            Some((name, value)) => {
                let mut value = value.to_owned();
                // A list written over several lines: read until its brackets balance.
                while value.matches('[').count() > value.matches(']').count() {
                    let more = lines.next().expect("an unclosed list");
                    let more = more.trim().trim_start_matches('#').trim();
                    value.push(' ');
                    value.push_str(more);
                }
                let own_comment = if comment_used { Vec::new() } else { comment.clone() };
                if let Some(index) = entry_of {
                    section.keys[index].fields.push(Field {
                        name: name.to_owned(),
                        example: value,
                        comment: own_comment,
                    });
                    comment.clear();
                } else {
                    let mut key = Key { name: name.to_owned(), comment: own_comment, ..Key::default() };
                    if commented.is_some() {
                        key.example = Some(value);
                    } else {
                        key.default = Some(value);
                    }
                    section.keys.push(key);
                    comment_used = true;
                }
            }
            None => {
                let Some(text) = commented else { panic!("cannot read this line: {raw}") };
                if comment_used {
                    comment.clear();
                    comment_used = false;
                }
                comment.push(text.to_owned());
            }
        }
        if commented.is_none() {
            entry_of = None;
        }
    }
    sections
}

/// A table cell: pipes escaped, so a comment cannot break the table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn code(value: &str) -> String {
    format!("`{}`", cell(value))
}

/// The page for `text` (the content of `config/default.toml`).
fn configuration_page(text: &str) -> String {
    let mut page = String::new();
    page.push_str(
        "# Configuration\n\n\
         <!-- Generated from config/default.toml by the test `configuration_page` \
         (src/config/docs_page.rs). Do not edit: change config/default.toml and run\n     ",
    );
    page.push_str(REGENERATE);
    page.push_str(
        "\n-->\n\n\
         Every key of identity-sidecar, its default and what it does, in the order of\n\
         [`config/default.toml`](../config/default.toml) (the file this page is generated from).\n\n\
         The configuration is read in three layers, each overriding the one before:\n\n\
         1. the defaults below (built into the binary);\n\
         2. a TOML file given by `--config PATH` or the `SIDECAR_CONFIG` variable;\n\
         3. environment variables `SIDECAR__SECTION__KEY` (`SIDECAR__OIDC__ISSUER`), with lists and\n   \
         tables written as JSON: `SIDECAR__OIDC__AUDIENCES='[\"my-app\"]'`,\n   \
         `SIDECAR__AUTH__RULES='[{\"prefix\":\"/admin\",\"require\":true}]'`.\n\n\
         An unknown key is an error that names the key; so is a bad value. A secret key\n\
         (`database.url`, `cache.redis_url`, `keycloak_admin.client_secret`) also accepts\n\
         `<key>_file`, a path whose content is the secret. `identity-sidecar check-config`\n\
         prints the effective configuration with secrets redacted.\n\n\
         A key shown with the default *none* is unset unless you set it; its example shows the\n\
         form.\n",
    );
    for section in parse(text) {
        let _ = write!(page, "\n## `[{}]`\n\n| key | default | meaning |\n|---|---|---|\n", section.name);
        for key in &section.keys {
            let default = key.default.as_deref().map_or("*none*".to_owned(), code);
            let mut meaning = cell(&key.comment.join(" "));
            if let Some(example) = &key.example {
                if !meaning.is_empty() {
                    meaning.push(' ');
                }
                let _ = write!(meaning, "Example: {}.", code(example));
            }
            if !key.fields.is_empty() {
                if !meaning.is_empty() {
                    meaning.push(' ');
                }
                meaning.push_str("Each entry (`[[");
                let _ = write!(meaning, "{}.{}]]`) has the fields ", section.name, key.name);
                let fields: Vec<String> = key
                    .fields
                    .iter()
                    .map(|f| {
                        let mut s = format!("`{}` (e.g. {})", f.name, code(&f.example));
                        if !f.comment.is_empty() {
                            let _ = write!(s, ": {}", cell(f.comment.join(" ").trim_end_matches('.')));
                        }
                        s
                    })
                    .collect();
                meaning.push_str(&fields.join("; "));
                if !meaning.ends_with('.') {
                    meaning.push('.');
                }
            }
            let _ = writeln!(page, "| `{}.{}` | {default} | {meaning} |", section.name, key.name);
        }
    }
    page
}

#[test]
fn the_configuration_page_is_generated_from_default_toml() {
    let want = configuration_page(DEFAULT_TOML);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PAGE);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{PAGE} is stale: config/default.toml changed. Regenerate it with\n    {REGENERATE}\n\
         (or UPDATE_DOCS=1 cargo test --lib configuration_page) and commit the result."
    );
}

/// Every key the code knows is on the page, so a key added to `Config` but not to
/// `default.toml` shows up here as well as in `default_toml_documents_every_key_with_its_default`.
#[test]
fn the_configuration_page_names_every_config_key() {
    let page = configuration_page(DEFAULT_TOML);
    let defaults = toml::Value::try_from(super::Config::default()).unwrap();
    let toml::Value::Table(sections) = &defaults else { panic!() };
    let mut missing = Vec::new();
    for (section, keys) in sections {
        let toml::Value::Table(keys) = keys else { panic!() };
        for key in keys.keys() {
            if !page.contains(&format!("| `{section}.{key}` |")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    // Keys without a default (Options) are absent from the serialised defaults.
    for key in ["oidc.issuer", "upstream.url", "cache.redis_url", "keycloak_admin.client_secret"] {
        if !page.contains(&format!("| `{key}` |")) {
            missing.push(key.to_owned());
        }
    }
    assert!(missing.is_empty(), "the configuration page lacks {missing:?}");
}

#[test]
fn a_commented_out_keys_comment_stays_with_it_and_list_entries_are_fields() {
    let page = configuration_page(
        "[a]\n# About x.\n# x = 1\ny = 2\n# About z.\nz = [\n  1,\n]\nlist = []\n\
         # [[a.list]]\n# name = \"n\"\n# What s is.\n# s = \"s\"\n",
    );
    assert!(page.contains("| `a.x` | *none* | About x. Example: `1`. |"), "{page}");
    assert!(page.contains("| `a.y` | `2` |  |"), "{page}");
    assert!(page.contains("| `a.z` | `[ 1, ]` | About z. |"), "{page}");
    assert!(
        page.contains(
            "| `a.list` | `[]` | Each entry (`[[a.list]]`) has the fields `name` (e.g. `\"n\"`); \
             `s` (e.g. `\"s\"`): What s is. |"
        ),
        "{page}"
    );
    assert!(!page.contains("`a.name`") && !page.contains("`a.s`"), "{page}");
}
