//! The command line's layout, as ARCHITECTURE.md states it: one `*_cmd.rs` file per
//! command, which parses, calls and prints; no command file uses another's items; the
//! modules under the commands (facts, operations, the shared flag groups) use no command
//! file, and none of them uses itself through the others (no import circle). Read from the
//! sources, so that a change that breaks the rule fails here, naming the import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module of `runtimeclass/src` (by file name, without `.rs`) and the crate modules
/// it names (`crate::x`), `main` and what it defines (`Global`, `Outcome`) aside.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a file name")
            .to_owned();
        if name == "main" {
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
        out.insert(name, used);
    }
    out
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

#[test]
fn the_modules_under_the_commands_form_no_circle() {
    let graph = imports();
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
    for m in graph.keys().filter(|m| !is_command(m)) {
        let found = visit(m, &graph, &mut Vec::new(), &mut done);
        assert_eq!(found, None, "an import circle");
    }
}
