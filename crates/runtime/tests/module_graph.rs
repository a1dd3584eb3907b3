//! The runtime's modules form layers with arrows one way: this test reads
//! the module graph from the sources (every `crate::` and `super::` path a
//! module names, in `use` declarations or inline) and fails on a cycle,
//! naming the modules in it.
//!
//! A module's own tests (from `#[cfg(test)]` on) are left out: a test may
//! reach anything. A parent's `mod child;` declaration is not an arrow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its module path (`syscall::file`;
/// `crate` for lib.rs).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the runtime's sources are readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            let name = if parts.is_empty() {
                "crate".to_string()
            } else {
                parts.join("::")
            };
            (name, file)
        })
        .collect()
}

/// The code of a module without its tests and comments.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or("");
    body.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a module names: `crate::a::b`, `super::c`, and the members
/// of `use crate::{a, b::c}` groups, each as a list of segments starting
/// at `crate` or `super`.
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let bytes: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let root = if rest.starts_with("crate::") {
            Some("crate")
        } else if rest.starts_with("super::") {
            Some("super")
        } else {
            None
        };
        let preceded_by_ident = i > 0 && (bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        let (Some(root), false) = (root, preceded_by_ident) else {
            i += 1;
            continue;
        };
        i += root.len() + 2;
        for tail in path_tails(&bytes, &mut i) {
            let mut path = vec![root.to_string()];
            path.extend(tail);
            out.push(path);
        }
    }
    out
}

/// Reads what follows `crate::` at `*i`: one path (`a::b::C`) or a group
/// (`{a, b::{c, d}}`), as lists of segments.
fn path_tails(bytes: &[char], i: &mut usize) -> Vec<Vec<String>> {
    let skip_space = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut prefix = Vec::new();
    loop {
        skip_space(i);
        if *i < bytes.len() && bytes[*i] == '{' {
            *i += 1;
            let mut all = Vec::new();
            loop {
                skip_space(i);
                if *i >= bytes.len() {
                    return all;
                }
                if bytes[*i] == '}' {
                    *i += 1;
                    return all;
                }
                if bytes[*i] == ',' {
                    *i += 1;
                    continue;
                }
                let before = *i;
                for tail in path_tails(bytes, i) {
                    let mut path = prefix.clone();
                    path.extend(tail);
                    all.push(path);
                }
                if *i == before {
                    *i += 1;
                }
            }
        }
        let start = *i;
        while *i < bytes.len() && (bytes[*i].is_alphanumeric() || bytes[*i] == '_') {
            *i += 1;
        }
        if *i == start {
            return vec![prefix];
        }
        prefix.push(bytes[start..*i].iter().collect());
        if bytes.get(*i) == Some(&':') && bytes.get(*i + 1) == Some(&':') {
            *i += 2;
        } else {
            return vec![prefix];
        }
    }
}

/// The module a path leads to: the longest known module prefix of it
/// (`crate::vfs::storage::StorageError` is in `vfs::storage`; `crate::fatal`
/// in `crate`).
fn target(from: &str, path: &[String], known: &BTreeSet<String>) -> String {
    let mut segments: Vec<String> = match path[0].as_str() {
        "crate" => Vec::new(),
        _ => {
            let mut here: Vec<String> = if from == "crate" {
                Vec::new()
            } else {
                from.split("::").map(String::from).collect()
            };
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                here.pop();
                rest = &rest[1..];
            }
            here.extend(rest.iter().cloned());
            let mut full = vec!["crate".to_string()];
            full.extend(here);
            return target(from, &full, known);
        }
    };
    segments.extend(path[1..].iter().cloned());
    while !segments.is_empty() {
        let name = segments.join("::");
        if known.contains(&name) {
            return name;
        }
        segments.pop();
    }
    "crate".to_string()
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, node: &'a str) {
        let n = w.index.len();
        w.index.insert(node, n);
        w.low.insert(node, n);
        w.stack.push(node);
        w.on_stack.insert(node);
        for next in w.graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let low = w.low[node].min(w.low[next]);
                w.low.insert(node, low);
            } else if w.on_stack.contains(next) {
                let low = w.low[node].min(w.index[next]);
                w.low.insert(node, low);
            }
        }
        if w.low[node] == w.index[node] {
            let mut component = Vec::new();
            while let Some(top) = w.stack.pop() {
                w.on_stack.remove(top);
                component.push(top.to_string());
                if top == node {
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
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            visit(&mut walk, node);
        }
    }
    walk.found
}

/// Paths a module names relative to itself: `child::item` for one of its
/// own child modules (`table::SYSCALLS` in `syscall`, `arena::Arena` in
/// lib.rs), as `crate::` paths.
fn child_paths(module: &str, code: &str, known: &BTreeSet<String>) -> Vec<Vec<String>> {
    let prefix = if module == "crate" {
        String::new()
    } else {
        format!("{module}::")
    };
    let children: Vec<&str> = known
        .iter()
        .filter_map(|k| k.strip_prefix(prefix.as_str()))
        .filter(|rest| !rest.is_empty() && !rest.contains("::") && *rest != "crate")
        .collect();
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    for child in children {
        let needle: Vec<char> = format!("{child}::").chars().collect();
        let mut i = 0;
        while i + needle.len() <= chars.len() {
            let starts = chars[i..i + needle.len()] == needle[..];
            let before = if i == 0 { ' ' } else { chars[i - 1] };
            let fresh = !(before.is_alphanumeric() || before == '_' || before == ':');
            if starts && fresh {
                let mut path = vec!["crate".to_string()];
                path.extend(
                    module
                        .split("::")
                        .filter(|s| *s != "crate")
                        .map(String::from),
                );
                path.push(child.to_string());
                out.push(path);
                i += needle.len();
            } else {
                i += 1;
            }
        }
    }
    out
}

fn graph_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (name, file) in &modules {
        let text = std::fs::read_to_string(file).expect("a readable source file");
        let code = code(&text);
        let mut paths = named_paths(&code);
        paths.extend(child_paths(name, &code, &known));
        let edges: BTreeSet<String> = paths
            .iter()
            .map(|path| target(name, path, &known))
            .filter(|to| to != name)
            .collect();
        graph.insert(name.clone(), edges);
    }
    graph
}

#[test]
fn the_runtime_modules_form_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&src);
    assert!(graph.len() > 20, "found only {} modules", graph.len());
    let found = cycles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|component| {
            let inside: BTreeSet<&String> = component.iter().collect();
            let arrows: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| inside.contains(to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            format!("{{{}}}: {}", component.join(", "), arrows.join(", "))
        })
        .collect();
    assert!(
        found.is_empty(),
        "the runtime's modules import each other in a circle:\n{}",
        described.join("\n")
    );
}

#[test]
fn the_graph_reader_sees_paths_groups_and_super() {
    let known: BTreeSet<String> = ["crate", "a", "a::b", "c", "c::d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = code(
        "use crate::{a::b::Thing, c};\nuse super::d;\nfn f() { crate::a::call(); x_crate::nothing(); }\n\
         // crate::c::d in a comment\n#[cfg(test)]\nmod tests { use crate::c::d; }",
    );
    let targets: BTreeSet<String> = named_paths(&code)
        .iter()
        .map(|p| target("c::e", p, &known))
        .collect();
    let expected: BTreeSet<String> = ["a", "a::b", "c", "c::d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(targets, expected);
    let mut graph = BTreeMap::new();
    graph.insert("x".to_string(), BTreeSet::from(["y".to_string()]));
    graph.insert("y".to_string(), BTreeSet::from(["x".to_string()]));
    graph.insert("z".to_string(), BTreeSet::from(["x".to_string()]));
    assert_eq!(cycles(&graph), vec![vec!["x".to_string(), "y".to_string()]]);
    let children: BTreeSet<String> = child_paths("c", "d::f(); c::d::g(); xd::h();", &known)
        .iter()
        .map(|p| target("c", p, &known))
        .collect();
    assert_eq!(children, BTreeSet::from(["c::d".to_string()]));
    let roots: Vec<Vec<String>> = child_paths("crate", "use a::b; c::d::x();", &known);
    assert_eq!(roots.len(), 2);
}
