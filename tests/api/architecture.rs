//! The module structure as docs/architecture.md draws it: no import cycles between the
//! crate's top-level modules, and every import runs down the layers the page lists.
//!
//! Read from the source itself (every `crate::<module>` path outside comments and string
//! literals, in `use` lines and inline paths alike) rather than by a tool such as
//! cargo-modules, which would compile rust-analyzer on every cold CI run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `from → to → the places (file:line) where `from` names `to``.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None`: the crate roots).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The source with comments and the contents of string and character literals blanked
/// (newlines kept, so line numbers stay right). Hand-written: a full Rust parser (syn) would
/// do, but this needs only to tell code from comments and literals.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !is_ident(chars.get(i.wrapping_sub(1)))
        {
            // A raw string: r"…", r#"…"#, with any number of #.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(&other) => out.push(blank(other)),
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&inner) = chars.get(i) {
                    out.push(blank(inner));
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Every top-level module a piece of code names through `crate::`, with its line:
/// `crate::x::…`, `crate::x` and each item of `crate::{x::…, y}`.
fn named_modules(code: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        if start > 0 && is_ident(Some(&(bytes[start - 1] as char))) {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (offset, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        let name: String = group[offset..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        found.push((name, line));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.push((name, line));
            }
        }
    }
    found
}

fn graph() -> (Graph, BTreeSet<String>) {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> =
        files.iter().filter_map(|f| module_of(f.strip_prefix(&src).unwrap())).collect();
    let mut graph = Graph::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(from) = module_of(relative) else { continue };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (to, line) in named_modules(&code) {
            // `crate::App` and other re-exports of the root are not modules.
            if to == from || !modules.contains(&to) {
                continue;
            }
            let place = format!("src/{}:{line}", relative.display());
            graph.entry(from.clone()).or_default().entry(to).or_default().push(place);
        }
    }
    (graph, modules)
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(graph: &Graph, modules: &BTreeSet<String>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(w: &mut Walk<'g>, v: &'g str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        if let Some(targets) = w.graph.get(v) {
            for to in targets.keys() {
                let to = to.as_str();
                if !w.index.contains_key(to) {
                    visit(w, to);
                    let low = w.low[v].min(w.low[to]);
                    w.low.insert(v, low);
                } else if w.on_stack.contains(to) {
                    let low = w.low[v].min(w.index[to]);
                    w.low.insert(v, low);
                }
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(top) = w.stack.pop() {
                w.on_stack.remove(top);
                component.push(top.to_owned());
                if top == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for m in modules {
        if !walk.index.contains_key(m.as_str()) {
            visit(&mut walk, m);
        }
    }
    walk.found
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let (graph, modules) = graph();
    let found = cycles(&graph, &modules);
    let mut report = String::new();
    for component in &found {
        report.push_str(&format!("\ncycle among {component:?}:\n"));
        for from in component {
            for (to, places) in graph.get(from).into_iter().flatten() {
                if component.contains(to) {
                    report.push_str(&format!("  {from} -> {to}: {}\n", places.join(", ")));
                }
            }
        }
    }
    assert!(found.is_empty(), "top-level modules import each other in a circle:{report}");
}

/// The layers of docs/architecture.md: the lines of its `layers` block, top to bottom, each
/// naming the modules of one layer.
fn documented_layers() -> Vec<Vec<String>> {
    let page = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let block = page
        .split("<!-- layers -->")
        .nth(1)
        .expect("docs/architecture.md has a `<!-- layers -->` block")
        .split("<!-- /layers -->")
        .next()
        .unwrap();
    block
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- "))
        .map(|line| {
            let names = line.split(':').next().unwrap();
            names.split(',').map(|n| n.trim().trim_matches('`').to_owned()).collect()
        })
        .collect()
}

#[test]
fn every_import_runs_down_the_layers_of_docs_architecture() {
    let (graph, modules) = graph();
    let layers = documented_layers();
    let layer_of: BTreeMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i))).collect();
    let undocumented: Vec<&String> = modules.iter().filter(|m| !layer_of.contains_key(m.as_str())).collect();
    assert!(undocumented.is_empty(), "modules docs/architecture.md does not place: {undocumented:?}");
    let stale: Vec<&&str> = layer_of.keys().filter(|m| !modules.contains(**m)).collect();
    assert!(stale.is_empty(), "docs/architecture.md names modules that do not exist: {stale:?}");
    let mut upward = Vec::new();
    for (from, targets) in &graph {
        for (to, places) in targets {
            // Layers are listed top first: an import must name a module on a later line.
            if layer_of[from.as_str()] >= layer_of[to.as_str()] {
                upward.push(format!("{from} -> {to}: {}", places.join(", ")));
            }
        }
    }
    assert!(upward.is_empty(), "imports that do not run down the layers:\n{}", upward.join("\n"));
}

#[test]
fn the_reader_tells_code_from_comments_and_literals() {
    let source = "use crate::a::X; // crate::b\n/* crate::c */ let s = \"crate::d\"; let c = '\"';\n\
                  let r = r#\"crate::e\"#; fn f<'x>() { crate::g::h(); }\nuse crate::{i::J, k};\n\
                  let not = mycrate::l;";
    let names: Vec<String> = named_modules(&code_only(source)).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "g", "i", "k"]);
}
