//! Validation of a Kata configuration: the types of the keys Kata reads, and the rules that
//! make a GPU sandbox start (ARCHITECTURE.md, "Handing Kata a per-sandbox configuration"). Every problem names
//! its key, and its line and column when the text is at hand.

use std::ops::Range;
use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use crate::error::{ConfigError, Location, Problem};
use crate::keys::{self, dotted, Kind, QEMU_SECTION, RUNTIME_SECTION};
use kata_gpu_fsutil::glob::Glob;

/// Finds where a key (section path, key name; empty name for the section) is in the file.
pub(crate) type Locate<'a> = dyn Fn(&[&str], &str) -> Option<Location> + 'a;

/// Reads a key's value (section path, key name) from the configuration being checked.
pub(crate) type Get<'v, 'a> = dyn Fn(&[&str], &str) -> Option<&'v Value> + 'a;

/// The getter over a document's root table.
pub(crate) fn getter<'v>(root: &'v Table) -> impl Fn(&[&str], &str) -> Option<&'v Value> + 'v {
    move |section_path, key| section(root, section_path)?.get(key)?.as_value()
}

/// Checks a configuration already parsed, e.g. one built or edited in memory. Its problems
/// carry no line numbers (an edited document has none); `origin` names it in the error.
pub fn validate(doc: &DocumentMut, origin: &Path) -> Result<(), ConfigError> {
    let mut problems = check_types(doc.as_table(), &|_, _| None);
    if problems.is_empty() {
        problems = check_rules(&getter(doc.as_table()), &|_, _| None);
    }
    into_result(origin, problems)
}

/// Parses and checks the configuration `text`, read from `origin`. A parse error, a value
/// of the wrong type, a missing `[hypervisor.qemu]` or a broken rule each name the key and
/// the line and column where it is.
pub fn validate_config(text: &str, origin: &Path) -> Result<(), ConfigError> {
    let doc = parse(text, origin)?;
    let locate = |section: &[&str], key: &str| {
        span_of(doc.as_table(), section, key).map(|span| Location::of_offset(text, span.start))
    };
    let mut problems = check_types(doc.as_table(), &locate);
    if problems.is_empty() {
        problems = check_rules(&getter(doc.as_table()), &locate);
    }
    into_result(origin, problems)
}

/// Parses `text`, keeping positions; a syntax error names the line and column.
pub(crate) fn parse<'t>(
    text: &'t str,
    origin: &Path,
) -> Result<toml_edit::Document<&'t str>, ConfigError> {
    toml_edit::Document::parse(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_path_buf(),
        location: Location::of_offset(text, e.span().map_or(0, |s| s.start)),
        message: e.message().trim_end().to_owned(),
    })
}

pub(crate) fn into_result(origin: &Path, problems: Vec<Problem>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            origin: origin.to_path_buf(),
            problems,
        })
    }
}

/// The table-like at `path` under `root`, if every step is one.
pub(crate) fn section<'a>(root: &'a Table, path: &[&str]) -> Option<&'a dyn TableLike> {
    let mut table: &dyn TableLike = root;
    for step in path {
        table = table.get(step)?.as_table_like()?;
    }
    Some(table)
}

/// The byte span of `key` in the table at `section` (of the section's header when `key` is
/// empty), in a document parsed with positions.
pub(crate) fn span_of(root: &Table, section_path: &[&str], key: &str) -> Option<Range<usize>> {
    if key.is_empty() {
        let (last, parent) = section_path.split_last()?;
        let (k, item) = section(root, parent)?.get_key_value(last)?;
        return item.as_table().and_then(Table::span).or_else(|| k.span());
    }
    let (k, item) = section(root, section_path)?.get_key_value(key)?;
    k.span().or_else(|| item.span())
}

/// Type problems: sections that are not tables, a missing `[hypervisor.qemu]`, and keys
/// Kata reads whose values are of the wrong type.
pub(crate) fn check_types(root: &Table, locate: &Locate<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (path, table) in keys::TYPED_SECTIONS {
        // Every step of the path must be a table where present.
        let mut here: &dyn TableLike = root;
        let mut missing = false;
        let mut not_table = false;
        for (i, step) in path.iter().enumerate() {
            let Some(item) = here.get(step) else {
                missing = true;
                break;
            };
            let Some(t) = item.as_table_like() else {
                problems.push(Problem {
                    key: path[..=i].join("."),
                    message: format!(
                        "must be a table, found {} {}",
                        article(item.type_name()),
                        item.type_name()
                    ),
                    location: locate(&path[..i], step),
                });
                not_table = true;
                break;
            };
            here = t;
        }
        if missing && path == QEMU_SECTION.as_slice() {
            problems.push(Problem {
                key: dotted(path, ""),
                message: "missing: the section [hypervisor.qemu] is required \
                          (Kata's QEMU settings for the GPU sandbox)"
                    .to_owned(),
                location: None,
            });
        }
        if missing || not_table {
            continue;
        }
        for (key, kind) in table {
            let Some(item) = here.get(key) else { continue };
            let ok = item.as_value().is_some_and(|v| kind.accepts(v));
            if !ok {
                problems.push(Problem {
                    key: dotted(path, key),
                    message: format!(
                        "must be {}, found {}",
                        kind.describe(),
                        found_type(item, *kind)
                    ),
                    location: locate(path, key),
                });
            }
        }
    }
    sort(&mut problems);
    problems
}

fn found_type(item: &Item, kind: Kind) -> String {
    match (item.as_value(), kind) {
        (Some(Value::Integer(i)), Kind::U32 | Kind::U64) => format!("{}", i.value()),
        (Some(Value::Array(a)), Kind::StrArray) => match a.iter().find(|v| !v.is_str()) {
            Some(v) => format!(
                "an array holding {} {}",
                article(v.type_name()),
                v.type_name()
            ),
            None => "an array".to_owned(),
        },
        _ => format!("{} {}", article(item.type_name()), item.type_name()),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn get_bool(get: &Get<'_, '_>, section_path: &[&str], key: &str) -> bool {
    get(section_path, key).and_then(Value::as_bool) == Some(true)
}

fn get_str<'v>(get: &Get<'v, '_>, section_path: &[&str], key: &str) -> Option<&'v str> {
    get(section_path, key).and_then(Value::as_str)
}

/// The rules a GPU sandbox configuration must follow, over values read through `get` (a
/// document whose `[hypervisor.qemu]` exists and whose types are right: check_types first).
pub(crate) fn check_rules(get: &Get<'_, '_>, locate: &Locate<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let q = &QEMU_SECTION[..];
    let mut problem = |section_path: &[&str], key: &str, message: String, at: (&[&str], &str)| {
        problems.push(Problem {
            key: dotted(section_path, key),
            message,
            location: locate(section_path, key).or_else(|| locate(at.0, at.1)),
        });
    };

    // cold_plug_vfio / hot_plug_vfio: known values, and never both.
    let mut ports = [None, None];
    for (i, key) in [keys::COLD_PLUG_VFIO, keys::HOT_PLUG_VFIO]
        .into_iter()
        .enumerate()
    {
        let Some(v) = get_str(get, q, key) else {
            continue;
        };
        if v.is_empty() || v == "no-port" {
            continue;
        }
        if keys::PORT_VALUES.contains(&v) {
            ports[i] = Some(v);
        } else {
            problem(
                q,
                key,
                format!("{v:?} is not one of {}", keys::PORT_VALUES.join(", ")),
                (q, key),
            );
        }
    }
    if let [Some(cold), Some(hot)] = ports {
        problem(
            q,
            keys::HOT_PLUG_VFIO,
            format!(
                "hot_plug_vfio = {hot:?} and cold_plug_vfio = {cold:?} are both set; Kata \
                 allows one (GPUs are cold-plugged: set hot_plug_vfio = \"no-port\")"
            ),
            (q, keys::COLD_PLUG_VFIO),
        );
    }

    // A confidential guest cannot hot-plug CPUs or memory.
    if get_bool(get, q, "confidential_guest")
        && !get_bool(get, &RUNTIME_SECTION, "static_sandbox_resource_mgmt")
    {
        problem(
            &RUNTIME_SECTION,
            "static_sandbox_resource_mgmt",
            "must be true when hypervisor.qemu.confidential_guest = true: a confidential \
             guest cannot hot-plug CPUs or memory, so the sandbox is sized before boot"
                .to_owned(),
            (q, "confidential_guest"),
        );
    }

    // SEV-SNP boots from the AMDSEV firmware.
    if get_bool(get, q, "sev_snp_guest") && get_str(get, q, "firmware").is_none_or(str::is_empty) {
        problem(
            q,
            "firmware",
            "must name the SEV-SNP firmware (e.g. AMDSEV.fd) when sev_snp_guest = true".to_owned(),
            (q, "sev_snp_guest"),
        );
    }

    // The hypervisor must be one the configuration itself allows.
    let path = get_str(get, q, "path").filter(|p| !p.is_empty());
    let allowed: Vec<&str> = get(q, "valid_hypervisor_paths")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // A malformed glob allows nothing (Go's filepath.Match refuses it): say which.
    let globs: Vec<Glob> = allowed
        .iter()
        .filter_map(|pattern| match Glob::new(pattern) {
            Ok(glob) => Some(glob),
            Err(e) => {
                problem(
                    q,
                    "valid_hypervisor_paths",
                    format!("{e}; Kata would match no path with it, fix or remove it"),
                    (q, "valid_hypervisor_paths"),
                );
                None
            }
        })
        .collect();
    if let Some(path) = path {
        if !allowed.is_empty() && !globs.iter().any(|glob| glob.matches(path)) {
            problem(
                q,
                "path",
                format!(
                    "{path:?} is not inside valid_hypervisor_paths [{}]",
                    allowed
                        .iter()
                        .map(|g| format!("{g:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                (q, "path"),
            );
        }
    }
    sort(&mut problems);
    problems
}

/// File order where known, then by key.
fn sort(problems: &mut [Problem]) {
    problems.sort_by(|a, b| match (a.location, b.location) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.key.cmp(&b.key)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.key.cmp(&b.key),
    });
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
