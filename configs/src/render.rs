//! Rendering a per-sandbox Kata configuration: the node's base configuration with the
//! sandbox plan's [`Overrides`] written into the few keys we own
//! ([`crate::keys::OWNED_KEYS`], all in `[hypervisor.qemu]`), and
//! `enable_annotations` cut down to what cannot steer the host, and `[runtime]
//! pod_resource_api_sock` rendered empty (the shim asks kubelet, not Kata). Every other byte —
//! comments, order, unknown keys, other hypervisor sections — is kept. Rendering is a pure
//! function of its inputs: the same input gives the same bytes.

use std::fmt;
use std::path::Path;

use toml_edit::{Document, Item, TableLike, Value};

use crate::annotations::{debug_kernel_param, HOST_PATH_ANNOTATIONS};
use crate::edit::{canonical, remove_entries, same_value, set_value};
use crate::error::{ConfigError, Location, Problem};
use crate::keys::{self, dotted, OWNED_KEYS, QEMU_SECTION, RUNTIME_SECTION};
use crate::overrides::Overrides;
use crate::pattern;
use crate::validate::{check_rules, check_types, getter, into_result, parse, section, span_of};

/// A rendered configuration, with what rendering noticed and changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The per-sandbox configuration file's text.
    pub text: String,
    /// What was removed or looks wrong but did not stop rendering; each names its entry.
    pub warnings: Vec<Warning>,
    /// Every owned key, base value → rendered value, in [`OWNED_KEYS`] order.
    pub diff: Vec<DiffEntry>,
}

impl Rendered {
    /// The owned keys whose value rendering changed.
    pub fn changes(&self) -> impl Iterator<Item = &DiffEntry> {
        self.diff.iter().filter(|d| d.changed())
    }
}

/// One owned key, as the base configuration has it and as rendered. Values are shown in
/// TOML's default formatting (`12`, `"root-port"`, `["kernel_params"]`); `None` is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    /// The key, dotted: `hypervisor.qemu.pcie_root_port`.
    pub key: String,
    /// The base configuration's value.
    pub base: Option<String>,
    /// The rendered value.
    pub rendered: Option<String>,
}

impl DiffEntry {
    /// Whether rendering changed the value.
    pub fn changed(&self) -> bool {
        self.base != self.rendered
    }
}

impl fmt::Display for DiffEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".to_owned());
        if self.changed() {
            write!(
                f,
                "{}: {} → {}",
                self.key,
                show(&self.base),
                show(&self.rendered)
            )
        } else {
            write!(f, "{}: {} (unchanged)", self.key, show(&self.base))
        }
    }
}

/// Something rendering did or noticed that the operator should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// An `enable_annotations` entry removed because it allows pod annotations that name
    /// something on the host.
    AnnotationRemoved {
        /// The entry as written.
        entry: String,
        /// The annotation names it allows (after `io.katacontainers.config.hypervisor.`).
        allows: Vec<&'static str>,
        /// Whether the entry uses regular-expression syntax we cannot analyse, so that it is
        /// removed for what it might allow.
        unchecked: bool,
    },
    /// `pcie_root_port` above what Kata makes (16); Kata cuts it.
    TooManyRootPorts {
        /// The rendered value.
        value: i64,
    },
    /// A parameter the plan appends to `kernel_params` opens a debug path into the guest.
    DebugKernelParam {
        /// The parameter.
        param: String,
        /// What it does.
        what: &'static str,
    },
    /// `[runtime] pod_resource_api_sock` of the base named a socket; rendered empty.
    PodResourcesCleared {
        /// The base's value.
        value: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::AnnotationRemoved {
                entry,
                allows,
                unchecked,
            } => {
                write!(f, "enable_annotations entry {entry:?} removed: ")?;
                if *unchecked {
                    f.write_str(
                        "its regular expression is beyond what kata-gpu can check, and it may \
                         allow ",
                    )?;
                } else {
                    f.write_str("it allows ")?;
                }
                write!(
                    f,
                    "pod annotations that choose host files or programs ({}); list the \
                     annotation names you need instead",
                    allows.join(", ")
                )
            }
            Warning::TooManyRootPorts { value } => write!(
                f,
                "hypervisor.qemu.pcie_root_port = {value}: Kata makes at most {} root ports",
                keys::MAX_PCIE_ROOT_PORTS
            ),
            Warning::DebugKernelParam { param, what } => write!(
                f,
                "hypervisor.qemu.kernel_params: appended parameter {param:?} {what}"
            ),
            Warning::PodResourcesCleared { value } => write!(
                f,
                "runtime.pod_resource_api_sock = {value:?} rendered \"\": the kata-gpu shim asks kubelet for the pod's devices and tells Kata the planned set; Kata asking too would cold-plug what it found"
            ),
        }
    }
}

/// What rendering changes in `[hypervisor.qemu]`, decided from the base and the overrides.
#[derive(Debug, Default)]
struct Edits {
    /// Owned keys whose value changes, with the new value, in [`OWNED_KEYS`] order.
    pub set: Vec<(&'static str, Value)>,
    /// Indices of the `enable_annotations` entries to remove, ascending.
    pub remove: Vec<usize>,
    /// Whether `[runtime] pod_resource_api_sock` is set to `""`.
    pub clear_pod_resources: bool,
}

impl Edits {
    fn new_value(&self, key: &str) -> Option<&Value> {
        self.set.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Renders the per-sandbox configuration from `base_toml` (read from `origin`, which errors
/// name) and `overrides`.
///
/// Refused, with the key and (for the base) line and column: text that is not TOML; a base
/// whose keys have the wrong type or that has no `[hypervisor.qemu]`; an appended kernel
/// parameter that is not one word; a result that breaks a rule of [`crate::validate()`].
pub fn render(
    base_toml: &str,
    origin: &Path,
    overrides: &Overrides,
) -> Result<Rendered, ConfigError> {
    let (parsed, edits, diff, warnings) = prepare(base_toml, origin, overrides)?;
    let text = render_tree(parsed, base_toml, &edits);
    Ok(Rendered {
        text,
        warnings,
        diff,
    })
}

type Prepared<'t> = (Document<&'t str>, Edits, Vec<DiffEntry>, Vec<Warning>);

/// Everything but the text: the checks, the edits, the diff and the warnings.
fn prepare<'t>(
    base_toml: &'t str,
    origin: &Path,
    overrides: &Overrides,
) -> Result<Prepared<'t>, ConfigError> {
    let parsed = parse(base_toml, origin)?;
    let (edits, diff, warnings) = decide(parsed.as_table(), base_toml, origin, overrides)?;
    Ok((parsed, edits, diff, warnings))
}

fn decide(
    root: &toml_edit::Table,
    base_toml: &str,
    origin: &Path,
    overrides: &Overrides,
) -> Result<(Edits, Vec<DiffEntry>, Vec<Warning>), ConfigError> {
    let at = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| Location::of_offset(base_toml, s.start))
    };
    let mut problems = check_types(root, &|section, key| at(span_of(root, section, key)));
    problems.extend(check_overrides(overrides));
    into_result(origin, problems)?;
    let Some(qemu) = section(root, &QEMU_SECTION) else {
        // check_types reports a missing or malformed section; this is not reached.
        return Err(ConfigError::Invalid {
            origin: origin.to_path_buf(),
            problems: vec![Problem {
                key: dotted(&QEMU_SECTION, ""),
                message: "missing".to_owned(),
                location: None,
            }],
        });
    };

    let mut warnings = Vec::new();
    let mut edits = plan(qemu, overrides, &mut warnings);
    let pod_resources = section(root, &RUNTIME_SECTION)
        .and_then(|r| r.get(keys::POD_RESOURCE_API_SOCK))
        .and_then(Item::as_value)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty());
    if let Some(value) = pod_resources {
        edits.clear_pod_resources = true;
        warnings.push(Warning::PodResourcesCleared {
            value: value.to_owned(),
        });
    }

    let diff: Vec<DiffEntry> = OWNED_KEYS
        .iter()
        .map(|key| {
            let base = qemu.get(key).and_then(Item::as_value);
            let rendered = match (edits.new_value(key), base) {
                (Some(v), _) => Some(canonical(v)),
                (None, Some(Value::Array(a))) if *key == keys::ENABLE_ANNOTATIONS => {
                    let kept: Vec<String> = a
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !edits.remove.contains(i))
                        .map(|(_, v)| canonical(v))
                        .collect();
                    Some(format!("[{}]", kept.join(", ")))
                }
                (None, base) => base.map(canonical),
            };
            DiffEntry {
                key: dotted(&QEMU_SECTION, key),
                base: base.map(canonical),
                rendered,
            }
        })
        .collect();
    let mut diff = diff;
    if let Some(value) = pod_resources {
        diff.push(DiffEntry {
            key: dotted(&RUNTIME_SECTION, keys::POD_RESOURCE_API_SOCK),
            base: Some(canonical(&Value::from(value))),
            rendered: Some(canonical(&Value::from(""))),
        });
    }

    // The rules see the base with the new values; a problem with a key we did not change
    // points at the base file's line.
    let base_get = getter(root);
    let get = |section_path: &[&str], key: &str| {
        if section_path == QEMU_SECTION.as_slice() {
            if let Some(v) = edits.new_value(key) {
                return Some(v);
            }
        }
        base_get(section_path, key)
    };
    let locate = |section_path: &[&str], key: &str| {
        if section_path == QEMU_SECTION.as_slice() && edits.new_value(key).is_some() {
            return None;
        }
        at(span_of(root, section_path, key))
    };
    into_result(origin, check_rules(&get, &locate))?;

    if let Some(ports) = get(&QEMU_SECTION, keys::PCIE_ROOT_PORT)
        .and_then(Value::as_integer)
        .filter(|&p| p > keys::MAX_PCIE_ROOT_PORTS)
    {
        warnings.push(Warning::TooManyRootPorts { value: ports });
    }
    Ok((edits, diff, warnings))
}

/// Edits the parsed document and prints it: `toml_edit` keeps every span it did not
/// touch as it was, and the file's CR LF line ends are put back.
fn render_tree(parsed: Document<&str>, base_toml: &str, edits: &Edits) -> String {
    let mut doc = parsed.into_mut();
    if let Some((qemu, inline)) = qemu_mut(&mut doc) {
        for (key, value) in &edits.set {
            set_value(qemu, inline, key, value.clone());
        }
        if let Some(array) = qemu
            .get_mut(keys::ENABLE_ANNOTATIONS)
            .and_then(|i| i.as_array_mut())
        {
            remove_entries(array, &edits.remove);
        }
    }
    if edits.clear_pod_resources {
        if let Some(runtime) = doc.get_mut(RUNTIME_SECTION[0]) {
            let inline = runtime.is_inline_table();
            if let Some(runtime) = runtime.as_table_like_mut() {
                set_value(
                    runtime,
                    inline,
                    keys::POD_RESOURCE_API_SOCK,
                    Value::from(""),
                );
            }
        }
    }
    let text = doc.to_string();
    if uses_crlf(base_toml) {
        to_crlf(&text)
    } else {
        text
    }
}

/// Whether a file's first line ends in CR LF. `toml_edit` prints LF only; a file written
/// with CR LF line ends gets them back.
fn uses_crlf(text: &str) -> bool {
    text.find('\n')
        .is_some_and(|i| i > 0 && text.as_bytes().get(i - 1) == Some(&b'\r'))
}

/// Turns every LF not already preceded by CR into CR LF.
fn to_crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut previous = '\0';
    for c in text.chars() {
        if c == '\n' && previous != '\r' {
            out.push('\r');
        }
        out.push(c);
        previous = c;
    }
    out
}

/// Appended kernel parameters must each be one word the kernel reads as one parameter.
fn check_overrides(overrides: &Overrides) -> Vec<Problem> {
    overrides
        .kernel_params_append
        .iter()
        .filter(|p| {
            p.is_empty()
                || p.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        })
        .map(|p| Problem {
            key: dotted(&QEMU_SECTION, keys::KERNEL_PARAMS),
            message: format!(
                "appended parameter {p:?} is not one kernel parameter (it must be non-empty, \
                 without spaces, quotes or control characters)"
            ),
            location: None,
        })
        .collect()
}

/// `[hypervisor.qemu]`, and whether it is (or lies in) an inline table.
fn qemu_mut(doc: &mut toml_edit::DocumentMut) -> Option<(&mut dyn TableLike, bool)> {
    let mut table: &mut dyn TableLike = doc.as_table_mut();
    let mut inline = false;
    for step in QEMU_SECTION {
        let item = table.get_mut(step)?;
        inline |= item.is_inline_table();
        table = item.as_table_like_mut()?;
    }
    Some((table, inline))
}

/// Decides the edits: each override that differs from the base, the appended kernel
/// parameters, and the `enable_annotations` entries to remove.
fn plan(qemu: &dyn TableLike, overrides: &Overrides, warnings: &mut Vec<Warning>) -> Edits {
    let mut edits = Edits::default();
    let base = |key: &str| qemu.get(key).and_then(Item::as_value);
    let mut set = |key: &'static str, new: Value| {
        if !base(key).is_some_and(|old| same_value(old, &new)) {
            edits.set.push((key, new));
        }
    };
    if let Some(n) = overrides.pcie_root_port {
        set(keys::PCIE_ROOT_PORT, Value::from(i64::from(n)));
    }
    if let Some(mode) = &overrides.cold_plug_vfio {
        set(keys::COLD_PLUG_VFIO, Value::from(mode.as_str()));
    }
    if let Some(mode) = &overrides.hot_plug_vfio {
        set(keys::HOT_PLUG_VFIO, Value::from(mode.as_str()));
    }
    if let Some(mib) = overrides.default_memory {
        set(keys::DEFAULT_MEMORY, Value::from(i64::from(mib)));
    }
    if let Some(features) = &overrides.cpu_features {
        set(keys::CPU_FEATURES, Value::from(features.as_str()));
    }
    let existing = base(keys::KERNEL_PARAMS)
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(line) = kernel_params(existing, &overrides.kernel_params_append, warnings) {
        set(keys::KERNEL_PARAMS, Value::from(line));
    }
    if let Some(Value::Array(entries)) = base(keys::ENABLE_ANNOTATIONS) {
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.as_str().unwrap_or_default();
            let allows = pattern::matching(entry, &HOST_PATH_ANNOTATIONS);
            if !allows.is_empty() {
                warnings.push(Warning::AnnotationRemoved {
                    entry: entry.to_owned(),
                    allows,
                    unchecked: !pattern::is_supported(entry),
                });
                edits.remove.push(i);
            }
        }
    }
    edits
}

/// `existing` with each parameter of `append` not already on it added, as rendering
/// writes `kernel_params`; the plan predicts Kata's command line from it.
pub fn kernel_params_line(existing: &str, append: &[String]) -> String {
    kernel_params(existing, append, &mut Vec::new()).unwrap_or_else(|| existing.to_owned())
}

/// The kernel command line with each parameter of `append` not already on it (as the same
/// `key=value` or flag) added, in order, the existing text kept as it is; `None` when
/// nothing is added.
fn kernel_params(existing: &str, append: &[String], warnings: &mut Vec<Warning>) -> Option<String> {
    let present: Vec<&str> = existing.split_ascii_whitespace().collect();
    let mut added: Vec<&str> = Vec::new();
    for param in append {
        if let Some(what) = debug_kernel_param(param) {
            warnings.push(Warning::DebugKernelParam {
                param: param.clone(),
                what,
            });
        }
        if !present.contains(&param.as_str()) && !added.contains(&param.as_str()) {
            added.push(param);
        }
    }
    if added.is_empty() {
        return None;
    }
    let head = existing.trim_end();
    Some(if head.is_empty() {
        added.join(" ")
    } else {
        format!("{head} {}", added.join(" "))
    })
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
