//! Property: for arbitrary valid TOML, register either refuses with a reason about the
//! input (never "not surgical"), or its output parses, holds the handler, keeps every
//! other key's value, and unregister gives back the input byte for byte.

use std::collections::BTreeMap;

use kata_gpu_containerd_config::{
    find_handler, register, unregister, ConfigVersion, Error, HandlerSpec, Target,
};
use proptest::prelude::*;
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};

#[derive(Clone, Debug)]
enum Scalar {
    Int(i64),
    Str(String),
    Bool(bool),
    List(Vec<i64>),
}

#[derive(Clone, Copy, Debug)]
enum Style {
    Header,
    Dotted,
    Inline,
}

#[derive(Clone, Debug)]
enum Tree {
    Leaf(Scalar),
    Table(Vec<(String, Tree)>, Style, bool),
}

/// Keys from the handler's path, so that generated documents collide with it often.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "plugins",
        "io.containerd.grpc.v1.cri",
        "io.containerd.cri.v1.runtime",
        "containerd",
        "runtimes",
        "runc",
        "kata",
        "options",
        "runtime_type",
        "a",
        "b-c",
        "x y",
    ])
    .prop_map(str::to_owned)
}

fn scalar() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        any::<i64>().prop_map(Scalar::Int),
        "[a-z/ #'\"\\\\]{0,8}".prop_map(Scalar::Str),
        any::<bool>().prop_map(Scalar::Bool),
        prop::collection::vec(-5i64..5, 0..3).prop_map(Scalar::List),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    scalar()
        .prop_map(Tree::Leaf)
        .prop_recursive(5, 40, 4, |inner| {
            (
                prop::collection::vec((key(), inner), 0..4),
                prop_oneof![
                    Just(Style::Header),
                    Just(Style::Dotted),
                    Just(Style::Inline)
                ],
                any::<bool>(),
            )
                .prop_map(|(entries, style, comment)| Tree::Table(entries, style, comment))
        })
}

fn scalar_value(s: &Scalar) -> Value {
    match s {
        Scalar::Int(i) => Value::from(*i),
        Scalar::Str(s) => Value::from(s.as_str()),
        Scalar::Bool(b) => Value::from(*b),
        Scalar::List(l) => Value::Array(l.iter().copied().collect::<Array>()),
    }
}

fn inline(entries: &[(String, Tree)]) -> InlineTable {
    let mut t = InlineTable::new();
    for (k, v) in entries {
        let v = match v {
            Tree::Leaf(s) => scalar_value(s),
            Tree::Table(e, _, _) => Value::InlineTable(inline(e)),
        };
        t.insert(k, v);
    }
    t
}

fn table(entries: &[(String, Tree)], dotted: bool) -> Table {
    let mut t = Table::new();
    t.set_dotted(dotted);
    for (k, v) in entries {
        let item = match v {
            Tree::Leaf(s) => Item::Value(scalar_value(s)),
            Tree::Table(e, Style::Inline, _) => Item::Value(Value::InlineTable(inline(e))),
            Tree::Table(e, style, comment) => {
                let mut child = table(e, dotted || matches!(style, Style::Dotted));
                if *comment && !child.is_dotted() {
                    child.decor_mut().set_prefix("\n# a comment\n");
                }
                Item::Table(child)
            }
        };
        t.insert(k, item);
    }
    t
}

/// One level of the handler's path: its neighbours, its style, a comment on its header.
type Level = (Vec<(String, Tree)>, Style, bool);

/// The handler's path, `depth` levels deep, each level a table of a random style with
/// random neighbours, so that generated documents share a prefix with the handler's path.
fn spine(cri: &'static str, depth: usize, levels: Vec<Level>) -> Vec<(String, Tree)> {
    let path = ["plugins", cri, "containerd", "runtimes", "kata"];
    let mut inner: Option<(String, Tree)> = None;
    for level in (0..depth.min(path.len())).rev() {
        let (mut entries, style, comment) = levels[level].clone();
        entries.retain(|(k, _)| k != path.get(level + 1).copied().unwrap_or(""));
        if let Some(child) = inner.take() {
            entries.push(child);
        }
        inner = Some((path[level].to_owned(), Tree::Table(entries, style, comment)));
    }
    inner.into_iter().collect()
}

fn level() -> impl Strategy<Value = Level> {
    (
        prop::collection::vec((key(), tree()), 0..3),
        prop_oneof![
            Just(Style::Header),
            Just(Style::Dotted),
            Just(Style::Inline)
        ],
        any::<bool>(),
    )
}

fn document() -> impl Strategy<Value = String> {
    (
        prop::option::of(2i64..=3),
        prop::collection::vec((key(), tree()), 0..4),
        0usize..=5,
        prop::collection::vec(level(), 5),
    )
        .prop_map(|(version, mut entries, depth, levels)| {
            let cri = if version == Some(3) {
                "io.containerd.cri.v1.runtime"
            } else {
                "io.containerd.grpc.v1.cri"
            };
            entries.retain(|(k, _)| depth == 0 || k != "plugins");
            entries.extend(spine(cri, depth, levels));
            let mut root = Table::new();
            if let Some(v) = version {
                root.insert("version", toml_edit::value(v));
                entries.retain(|(k, _)| k != "version");
            }
            for (k, item) in table(&entries, false).iter() {
                root.insert(k, item.clone());
            }
            DocumentMut::from(root).to_string()
        })
}

/// Every leaf as (dotted path, typed value), inline tables walked like tables.
fn leaves(item: &Item, path: &str, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| format!("{path}/{k}");
    match item {
        Item::Table(t) => t.iter().for_each(|(k, v)| leaves(v, &join(k), out)),
        Item::Value(Value::InlineTable(t)) => t
            .iter()
            .for_each(|(k, v)| leaves(&Item::Value(v.clone()), &join(k), out)),
        Item::Value(v) => {
            let mut bare = v.clone();
            bare.decor_mut().clear();
            out.insert(path.to_owned(), format!("{bare}"));
        }
        _ => {}
    }
}

fn spec() -> HandlerSpec {
    HandlerSpec::new("kata", "io.containerd.kata.v2", "/opt/k/configuration.toml")
}

fn ours(path: &str) -> bool {
    path == "/version"
        || ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"]
            .iter()
            .any(|p| {
                let handler = format!("/plugins/{p}/containerd/runtimes/kata/");
                // Our keys, and whatever odd value they held (replaced whole).
                path.strip_prefix(&handler).is_some_and(|rest| {
                    [
                        "runtime_type",
                        "privileged_without_host_devices",
                        "pod_annotations",
                        "options/ConfigPath",
                    ]
                    .iter()
                    .any(|k| rest == *k || rest.starts_with(&format!("{k}/")))
                })
            })
}

fn others(text: &str) -> BTreeMap<String, String> {
    let doc: DocumentMut = text.parse().expect("parses");
    let mut out = BTreeMap::new();
    leaves(doc.as_item(), "", &mut out);
    out.retain(|k, _| !ours(k));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn register_keeps_everything_else(text in document()) {
        prop_assume!(text.parse::<DocumentMut>().is_ok());
        let target = Target { file: "gen.toml", version: Some(ConfigVersion::V2) };
        match register(&text, &spec(), target) {
            Ok(done) => {
                let found = find_handler(&done.text, "kata");
                prop_assert!(found.as_ref().is_some_and(|f| f.satisfies(&spec())),
                    "handler missing or wrong: {found:?}\n{}", done.text);
                let mut after = others(&done.text);
                if done.record.added_default_runtime {
                    after.retain(|k, _| !k.contains("/containerd/runtimes/runc/"));
                }
                prop_assert_eq!(others(&text), after, "{}", done.text);
                let undone = unregister(&done.text, "kata", Some(&done.record), target)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(undone.text, text);
            }
            Err(Error::WrongKind { .. } | Error::Version1 { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected refusal: {e}\n{text}"),
        }
    }
}
