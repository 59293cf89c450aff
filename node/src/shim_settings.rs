//! Which of Kata's runtimes a class's proxy hands its sandboxes to: `kata-gpu install
//! --kata-runtime rs` writes the class's shim settings file (`<store>/<class>/shim.toml`, the
//! first file the shim reads after `$KATA_GPU_SHIM_CONFIG`) naming Kata's Rust shim
//! (runtime-rs) as the downstream; `go` (the default) writes nothing, the shim's defaults
//! being Kata's Go shim. Before anything is written, install refuses a base config of the
//! other runtime (runtime-rs refuses the Go runtime's keys at every sandbox's Create, and the
//! Go runtime reads none of runtime-rs's) and a settings file that someone else wrote.

use std::path::{Path, PathBuf};

use kata_gpu_configs::{template_file_name_for, KataRuntime};
use kata_gpu_containerd_config::{diff, fsio};
use kata_gpu_plan::Profile;

use crate::paths::{shown, under};
use crate::record::{resolve, RecordError, Written};
use crate::steps::Step;

/// Why the shim settings file could not be planned, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum ShimSettingsError {
    /// A path could not be resolved under the root, or the record not saved.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A file could not be read or removed.
    #[error(transparent)]
    File(#[from] kata_gpu_containerd_config::Error),
    /// The base config is the other runtime's.
    #[error("{file}: {key} is a key of {}'s configuration, and --kata-runtime {asked} hands the sandboxes to {}: give a base config for it (configs/templates/{template}) or pass --kata-runtime {found}", found.describe(), asked.describe())]
    OtherRuntime {
        /// The base config, as shown.
        file: String,
        /// The key that tells.
        key: String,
        /// The runtime the config is for.
        found: KataRuntime,
        /// The runtime asked for.
        asked: KataRuntime,
        /// The template of the asked runtime.
        template: String,
    },
    /// The settings file is a symlink.
    #[error("{shown} is a symlink: kata-gpu does not write the shim settings through one; replace it with the file itself")]
    Symlink {
        /// The file, as shown.
        shown: String,
    },
    /// The settings file says something else than install writes.
    #[error("{shown}: {difference} differs from what --kata-runtime {runtime} writes, and kata-gpu {} it: set downstream = \"{RS_DOWNSTREAM}\" and downstream_kind = \"kata-rs\" in it yourself, or move it aside and run install again", if *changed_since { "wrote it but someone changed it since; it does not replace" } else { "did not write" })]
    Differs {
        /// The file, as shown.
        shown: String,
        /// Its first difference from ours.
        difference: String,
        /// The runtime asked for.
        runtime: KataRuntime,
        /// kata-gpu wrote it, and it changed since.
        changed_since: bool,
    },
    /// The settings file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file (or its directory).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where kata-deploy installs runtime-rs's shim, as the host sees it.
pub const RS_DOWNSTREAM: &str = "/opt/kata/runtime-rs/bin/containerd-shim-kata-v2";

/// The settings file's text for `runtime`; `None` for the Go runtime, whose shim is the
/// settings' default downstream.
pub fn text(runtime: KataRuntime) -> Option<String> {
    match runtime {
        KataRuntime::Go => None,
        KataRuntime::Rs => Some(format!(
            "# Written by `kata-gpu install --kata-runtime rs`; `kata-gpu uninstall` removes it.\n\
             # The proxy hands this class's sandboxes to Kata's Rust shim (runtime-rs).\n\
             downstream = \"{RS_DOWNSTREAM}\"\n\
             downstream_kind = \"kata-rs\"\n"
        )),
    }
}

/// Refuses a base config of the other Kata runtime than `asked`, in one line naming the
/// file (as shown) and the key that tells; a config with no telling key passes.
pub fn check_base_config(
    profile: Profile,
    asked: KataRuntime,
    file: &str,
    text: &str,
) -> Result<(), ShimSettingsError> {
    if let Some((found, key)) = KataRuntime::of_config(text) {
        if found != asked {
            return Err(ShimSettingsError::OtherRuntime {
                file: file.to_owned(),
                key: key.to_string(),
                found,
                asked,
                template: template_file_name_for(profile.name(), asked)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
    }
    Ok(())
}

/// What install will do to the settings file.
#[derive(Debug)]
pub enum Plan {
    /// Nothing: up to date, or not ours and not needed.
    Nothing(Option<String>),
    /// Write `text` (new, or replacing what install wrote before).
    Write(String),
    /// Remove what install wrote before (the class goes back to the Go runtime).
    Remove,
    /// Forget the record: the file is gone, or someone changed it (said in the note).
    Forget(Option<String>),
}

/// Decides what to do to the settings file, refusing (before anything is written) to
/// replace a file install did not write or that changed since.
pub fn plan(
    profile: Profile,
    runtime: KataRuntime,
    root: &Path,
    recorded: Option<&Written>,
) -> Result<Plan, ShimSettingsError> {
    let host = crate::paths::shim_settings(profile);
    let real = resolve(root, &host)?;
    if std::fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(ShimSettingsError::Symlink {
            shown: shown(root, &host),
        });
    }
    let on_disk = fsio::read_config(&real)?;
    let ours_still = |t: &String| recorded.is_some_and(|r| &r.text == t);
    Ok(match (text(runtime), on_disk) {
        (Some(want), None) => Plan::Write(want),
        (Some(want), Some(t)) if t == want => Plan::Nothing(
            (recorded.is_none()).then(|| {
                format!(
                    "{} already says so; kata-gpu did not write it, and uninstall leaves it",
                    shown(root, &host)
                )
            }),
        ),
        (Some(want), Some(t)) if ours_still(&t) => Plan::Write(want),
        (Some(want), Some(t)) => {
            return Err(ShimSettingsError::Differs {
                shown: shown(root, &host),
                difference: first_difference(&t, &want),
                runtime,
                changed_since: recorded.is_some(),
            })
        }
        (None, Some(t)) if ours_still(&t) => Plan::Remove,
        (None, Some(_)) if recorded.is_some() => Plan::Forget(Some(format!(
            "{} changed since kata-gpu wrote it: left as it is (remove it to use Kata's Go runtime)",
            shown(root, &host)
        ))),
        (None, None) if recorded.is_some() => Plan::Forget(None),
        (None, _) => Plan::Nothing(None),
    })
}

/// The first key whose value differs between a settings file and ours (ours first), as
/// `key = value` (or `key absent`), else the first key ours lacks.
fn first_difference(theirs: &str, ours: &str) -> String {
    let (Ok(theirs), Ok(ours)) = (
        theirs.parse::<toml_edit::DocumentMut>(),
        ours.parse::<toml_edit::DocumentMut>(),
    ) else {
        return "its content (no valid TOML)".to_owned();
    };
    let value = |d: &toml_edit::DocumentMut, k: &str| {
        d.get(k)
            .and_then(toml_edit::Item::as_value)
            .map(|v| v.to_string().trim().to_owned())
    };
    for (key, _) in ours.iter() {
        match value(&theirs, key) {
            None => return format!("{key} absent"),
            Some(v) if Some(&v) != value(&ours, key).as_ref() => return format!("{key} = {v}"),
            Some(_) => {}
        }
    }
    let extra = theirs
        .iter()
        .map(|(k, _)| k)
        .find(|k| ours.get(k).is_none())
        .map_or("its comments".to_owned(), |k| {
            format!("{k} (a key kata-gpu does not write)")
        });
    extra
}

/// Carries out `plan`: the file written atomically (the record saved first by the caller
/// through `record`), or removed; the step says what, or (dry run) the diff.
pub fn apply(
    plan: Plan,
    profile: Profile,
    runtime: KataRuntime,
    root: &Path,
    dry_run: bool,
    recorded: &mut Option<Written>,
    record: &mut dyn FnMut(&Option<Written>) -> Result<(), RecordError>,
) -> Result<Step, ShimSettingsError> {
    let host = crate::paths::shim_settings(profile);
    let real = resolve(root, &host)?;
    let shown_path = shown(root, &host);
    let mut step = Step::new("settings", "");
    let kind = runtime.describe();
    match plan {
        Plan::Nothing(note) => {
            step.result = match runtime {
                KataRuntime::Go => format!("{kind}: no settings file of kata-gpu's"),
                KataRuntime::Rs => format!("up to date {shown_path} ({kind})"),
            };
            step.notes.extend(note);
        }
        Plan::Write(text) => {
            if dry_run {
                let before = fsio::read_config(&real)?;
                step.diffs
                    .push(diff::unified(&real, before.as_deref(), Some(&text)));
                step.result = format!("would write {shown_path} ({kind})");
            } else {
                let created_dirs = match recorded {
                    Some(r) => r.created_dirs.clone(),
                    None => missing_dirs(root, &host),
                };
                *recorded = Some(Written {
                    path: host.clone(),
                    text: text.clone(),
                    created_dirs,
                });
                record(recorded)?;
                let failed = |path: &Path| {
                    let path = path.to_path_buf();
                    move |source| ShimSettingsError::Write { path, source }
                };
                if let Some(dir) = real.parent() {
                    kata_gpu_fsutil::create_dirs(dir, 0o755).map_err(failed(dir))?;
                }
                kata_gpu_fsutil::write_atomic(&real, text.as_bytes(), 0o644)
                    .map_err(failed(&real))?;
                step.result = format!("wrote {shown_path} ({kind})");
            }
            if !under(root, Path::new(RS_DOWNSTREAM)).is_file() {
                step.warnings.push(format!(
                    "{} does not exist: install Kata's Rust shim (kata-deploy puts runtime-rs there)",
                    shown(root, Path::new(RS_DOWNSTREAM))
                ));
            }
        }
        Plan::Remove => {
            if dry_run {
                let before = fsio::read_config(&real)?;
                step.diffs
                    .push(diff::unified(&real, before.as_deref(), None));
                step.result = format!("would remove {shown_path} ({kind})");
            } else {
                remove(root, recorded)?;
                record(recorded)?;
                step.result = format!("removed {shown_path} ({kind})");
            }
        }
        Plan::Forget(note) => {
            if !dry_run {
                *recorded = None;
                record(recorded)?;
            }
            step.result = format!("{kind}: no settings file of kata-gpu's");
            step.warnings.extend(note);
        }
    }
    Ok(step)
}

/// The directories above the settings file that do not exist, deepest first, as the host
/// sees them.
fn missing_dirs(root: &Path, host: &Path) -> Vec<PathBuf> {
    host.ancestors()
        .skip(1)
        .take_while(|d| d.parent().is_some() && !under(root, d).exists())
        .map(Path::to_path_buf)
        .collect()
}

/// Removes the recorded settings file and the directories install created for it (those
/// that are empty now), and clears the record.
fn remove(root: &Path, recorded: &mut Option<Written>) -> Result<(), ShimSettingsError> {
    if let Some(r) = recorded.take() {
        fsio::remove_file(&resolve(root, &r.path)?)?;
        for dir in &r.created_dirs {
            if std::fs::remove_dir(resolve(root, dir)?).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// `uninstall`'s step: the settings file install wrote goes while it is what install wrote;
/// one changed since stays, and the step says so.
pub fn uninstall_step(
    root: &Path,
    recorded: &mut Option<Written>,
    dry_run: bool,
) -> Result<Step, ShimSettingsError> {
    let mut step = Step::new("settings", "nothing to remove");
    let Some(r) = recorded.clone() else {
        return Ok(step);
    };
    let real = resolve(root, &r.path)?;
    let shown_path = shown(root, &r.path);
    match fsio::read_config(&real)? {
        Some(t) if t == r.text => {
            if dry_run {
                step.diffs.push(diff::unified(&real, Some(&t), None));
            } else {
                remove(root, recorded)?;
            }
            step.result = format!(
                "{} {shown_path}",
                if dry_run { "would remove" } else { "removed" }
            );
        }
        Some(_) => {
            if !dry_run {
                *recorded = None;
            }
            step.result = format!("kept {shown_path}");
            step.warnings.push(format!(
                "{shown_path} changed since kata-gpu install wrote it: left as it is (remove it yourself if it is no longer wanted)"
            ));
        }
        None => {
            if !dry_run {
                *recorded = None;
            }
        }
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rs_settings_are_what_the_shim_reads_as_runtime_rs() {
        let rs = text(KataRuntime::Rs).expect("settings");
        let s = kata_gpu_plan::settings::Settings::parse(&rs, Path::new("shim.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.downstream_kind,
            kata_gpu_plan::settings::DownstreamKind::KataRs
        );
        assert_eq!(s.downstream, Path::new(RS_DOWNSTREAM));
        assert_eq!(
            crate::shims::runtime_of(s.downstream_kind),
            Some(KataRuntime::Rs)
        );
        assert_eq!(text(KataRuntime::Go), None);
    }

    #[test]
    fn a_base_config_of_the_other_runtime_is_refused_naming_file_and_key() {
        let go = kata_gpu_configs::template("snp").expect("template");
        let rs = kata_gpu_configs::template_for("snp", KataRuntime::Rs).expect("template");
        check_base_config(Profile::Snp, KataRuntime::Go, "f", go).expect("go on go");
        check_base_config(Profile::Snp, KataRuntime::Rs, "f", rs).expect("rs on rs");
        check_base_config(Profile::Snp, KataRuntime::Rs, "f", "[hypervisor.qemu]\n")
            .expect("no telling key");
        let e = check_base_config(Profile::Snp, KataRuntime::Rs, "/s/c.toml", go)
            .expect_err("go on rs")
            .to_string();
        assert!(
            e.starts_with("/s/c.toml: agent.kata.dial_timeout is a key of Kata's Go runtime's"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = check_base_config(Profile::Snp, KataRuntime::Go, "/s/c.toml", rs)
            .expect_err("rs on go")
            .to_string();
        assert!(e.contains("agent.kata.dial_timeout_ms"), "{e}");
    }

    #[test]
    fn the_first_difference_names_a_key() {
        let ours = text(KataRuntime::Rs).expect("settings");
        assert_eq!(
            first_difference("downstream_kind = \"kata\"\n", &ours),
            "downstream absent"
        );
        let theirs = ours.replace("kata-rs\"", "kata\"");
        assert_eq!(
            first_difference(&theirs, &ours),
            "downstream_kind = \"kata\""
        );
        assert_eq!(
            first_difference(&format!("{ours}state_dir = \"/x\"\n"), &ours),
            "state_dir (a key kata-gpu does not write)"
        );
    }
}
