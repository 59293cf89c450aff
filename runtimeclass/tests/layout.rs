//! The layout, as ARCHITECTURE.md states it. The command line: one `*_cmd.rs` file per
//! command, which parses, calls and prints; no command file uses another's items; the
//! modules under the commands (the shared flag groups, printing) use no command file, and
//! none of them uses itself through the others (no import circle). The node library
//! (`node/src`): no import circle among its modules either. Read from the sources, so that a
//! change that breaks the rule fails here, naming the import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of a crate's `src` (`name.rs`, or every file under `name/`) and
/// the crate modules it names (`crate::x`); the crate root (`main`, `lib`) and what it
/// defines (`Global`, `Outcome`) aside.
fn imports_in(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    let mut todo = vec![src.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let rel = path.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a file");
        let name = Path::new(first.as_os_str())
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a file name")
            .to_owned();
        if name == "main" || name == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut used = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !module.is_empty() && module != name {
                used.insert(module);
            }
            // `use crate::{a, b::C}`: each lower-case head inside the braces.
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for part in group.split(',') {
                    let head: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !head.is_empty() && head != "self" {
                        used.insert(head);
                    }
                }
            }
        }
        out.entry(name).or_default().extend(used);
    }
    out
}

/// The command line's modules.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    imports_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn is_command(module: &str) -> bool {
    module.ends_with("_cmd")
}

#[test]
fn no_command_uses_another_and_nothing_below_the_commands_uses_one() {
    let graph = imports();
    assert!(graph.len() > 20, "{graph:?}");
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        for u in used.iter().filter(|u| is_command(u)) {
            wrong.push(format!("{module} uses {u}"));
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
}

/// A circle of imports among the modules of `graph` that are not commands, if any.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Depth-first search for a back edge among the modules that are not commands (a
    // command's private submodules, e.g. doctor's checks, are reached through it).
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_owned());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if is_command(next) || !graph.contains_key(next.as_str()) {
                continue;
            }
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .filter(|m| !is_command(m))
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_under_the_commands_form_no_circle() {
    assert_eq!(circle(&imports()), None, "an import circle");
}

#[test]
fn the_node_library_forms_no_circle() {
    let graph = imports_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src"));
    assert!(graph.len() > 15, "{graph:?}");
    assert!(graph["install"].contains("registration"), "{graph:?}");
    assert_eq!(circle(&graph), None, "an import circle");
}
