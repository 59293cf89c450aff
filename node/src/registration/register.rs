//! Planning a registration: the handler edited into the main config, or written as a
//! drop-in the main config imports; which one was done before decides what may be done now.

use std::path::{Path, PathBuf};

use kata_gpu_containerd_config::dropin::{
    check_drop_in_safe, drop_in_file_name, drop_in_text, rancher_drop_in_dir, template_version,
};
use kata_gpu_containerd_config::{
    add_import, config_version, covers, daemon, find_handler, fsio, imports, is_template_line,
    register, ConfigVersion, Error, Target,
};

use super::{read, refuse_links, FileChange, Plan, RegistrationError, Request};
use crate::paths::under;
use crate::record::{now, ContainerdState, Mode};

/// The version the host's containerd writes, for files that do not say: `containerd` on
/// PATH on a real host; under `--host-root`, the one on containerd's PATH inside the root
/// (none there: unknown), never the real host's.
fn containerd_default_version(root: &Path) -> Option<ConfigVersion> {
    let binary = if root == Path::new("/") {
        PathBuf::from("containerd")
    } else {
        crate::containerd::containerd_path(root)
            .split(':')
            .map(|d| under(root, &Path::new(d).join("containerd")))
            .find(|p| p.is_file())?
    };
    daemon::containerd_version(&binary)
        .ok()
        .and_then(|v| ConfigVersion::for_containerd(&v))
}

/// Runs `f` with the version hint; when the file turns out not to say its version and none
/// was given, asks `containerd --version` and runs it again.
fn with_version<T>(
    root: &Path,
    hint: Option<ConfigVersion>,
    f: impl Fn(Option<ConfigVersion>) -> Result<T, Error>,
) -> Result<T, Error> {
    match f(hint) {
        Err(Error::VersionUnknown { .. }) if hint.is_none() => {
            match containerd_default_version(root) {
                Some(v) => f(Some(v)),
                None => f(None),
            }
        }
        other => other,
    }
}

/// Plans registering `req.spec`; `old` is the record of an earlier registration.
pub fn plan_register(
    req: &Request,
    old: Option<&ContainerdState>,
) -> Result<Plan, RegistrationError> {
    let config_real = req.real(&req.config)?;
    let hint = req.version.or_else(|| template_version(&req.config));
    let text = read(&config_real)?;
    let file = config_real.display().to_string();
    if let Some(o) = old.filter(|o| o.config != req.config) {
        return Err(RegistrationError::RegisteredElsewhere {
            handler: req.spec.name.clone(),
            config: o.config.clone(),
        });
    }
    let old = old.filter(|o| o.spec.name == req.spec.name);
    let plan = match &req.drop_in_dir {
        None => {
            if let Some(o) = old.filter(|o| o.mode == Mode::DropIn) {
                return Err(RegistrationError::RegisteredAsDropIn {
                    handler: req.spec.name.clone(),
                    drop_in: o.drop_in.clone().unwrap_or_else(|| PathBuf::from("?")),
                });
            }
            plan_in_place(req, old, &config_real, text, &file, hint)?
        }
        Some(dir) => {
            if old.is_some_and(|o| o.mode == Mode::InPlace) {
                return Err(RegistrationError::RegisteredInPlace {
                    handler: req.spec.name.clone(),
                    config: req.config.clone(),
                });
            }
            plan_drop_in(req, old, dir, &config_real, text, &file, hint)?
        }
    };
    refuse_links(&plan)?;
    Ok(plan)
}

fn plan_in_place(
    req: &Request,
    old: Option<&ContainerdState>,
    config_real: &Path,
    text: Option<String>,
    file: &str,
    hint: Option<ConfigVersion>,
) -> Result<Plan, RegistrationError> {
    let current = text.clone().unwrap_or_default();
    let done = with_version(&req.root, hint, |version| {
        register(&current, &req.spec, Target { file, version })
    })?;
    let record = match old.and_then(|o| o.registration.clone()) {
        Some(prev) if done.changed => prev.then(done.record),
        Some(prev) => prev,
        None => done.record,
    };
    let mut changes = Vec::new();
    if done.changed {
        changes.push(FileChange {
            path: config_real.to_path_buf(),
            before: text.clone(),
            after: Some(done.text),
            backup: text.is_some(),
        });
    }
    let backup = old
        .and_then(|o| o.backup.clone())
        .or_else(|| (done.changed && text.is_some()).then(|| fsio::backup_path(&req.config)));
    let state = ContainerdState {
        spec: req.spec.clone(),
        config: req.config.clone(),
        version: record.version,
        mode: Mode::InPlace,
        registration: Some(record),
        created_config: old.is_some_and(|o| o.created_config) || text.is_none(),
        drop_in: None,
        created_drop_in_dir: false,
        import: None,
        backup,
        changed_at: changed_at(done.changed, old),
        restart_pending: done.changed || old.is_some_and(|o| o.restart_pending),
        unit: req.unit.clone(),
    };
    let mut notes = Vec::new();
    if text
        .as_deref()
        .is_some_and(|t| t.lines().next().is_some_and(is_template_line))
    {
        notes.push(format!(
            "{} is a Go template: k3s/rke2 render it into config.toml when they restart",
            req.config.display()
        ));
    }
    Ok(registered(changes, state, notes, old))
}

fn plan_drop_in(
    req: &Request,
    old: Option<&ContainerdState>,
    dir: &Path,
    config_real: &Path,
    text: Option<String>,
    file: &str,
    hint: Option<ConfigVersion>,
) -> Result<Plan, RegistrationError> {
    let main = text.clone().unwrap_or_default();
    let template = main.lines().next().is_some_and(is_template_line);
    let version = match config_version(&main, file)?.or(hint) {
        Some(v) => v,
        None => containerd_default_version(&req.root).ok_or_else(|| Error::VersionUnknown {
            file: file.to_owned(),
            why: "the file does not say and `containerd --version` did not tell".to_owned(),
        })?,
    };
    check_drop_in_safe(&main, version, file)?;
    let drop_in_host = dir.join(drop_in_file_name(&req.spec.name));
    let entry = drop_in_host.display().to_string();
    let drop_in_real = req.real(&drop_in_host)?;
    let ours = drop_in_text(&req.spec, version)?;
    let existing = read(&drop_in_real)?;
    let creates_dir = !req.real(dir)?.is_dir();
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    if existing.as_deref() != Some(ours.as_str()) {
        changes.push(FileChange {
            path: drop_in_real,
            before: existing.clone(),
            after: Some(ours),
            backup: existing.is_some(),
        });
    }
    let mut import = old.and_then(|o| o.import.clone());
    if template {
        // k3s/rke2: the base template owns `imports`; the rendered config must already
        // import the directory.
        let rendered = req.real(&req.config.with_file_name("config.toml"))?;
        let listed = read(&rendered)?
            .map(|t| imports(&t, &rendered.display().to_string()))
            .transpose()?
            .unwrap_or_default();
        if !listed.iter().any(|p| covers(p, &entry)) {
            return Err(Error::TemplateImports {
                file: file.to_owned(),
                hint: rancher_drop_in_dir(&req.config, version)
                    .map_or_else(|| "config.toml.d/".to_owned(), |d| d.display().to_string()),
            }
            .into());
        }
    } else {
        let edit = add_import(
            &main,
            &entry,
            Target {
                file,
                version: Some(version),
            },
        )?;
        if edit.changed {
            changes.push(FileChange {
                path: config_real.to_path_buf(),
                before: text.clone(),
                after: Some(edit.text),
                backup: text.is_some(),
            });
        }
        if import.is_none() || edit.changed {
            import = Some(edit.change);
        }
        if !import.as_ref().is_some_and(|i| i.added) {
            notes.push(format!(
                "{} already imports {entry}; nothing added to it",
                req.config.display()
            ));
        }
    }
    if find_handler(&main, &req.spec.name).is_some() {
        notes.push(format!(
            "{} also defines {} itself; the drop-in's keys win on containerd 2.x",
            req.config.display(),
            req.spec.name
        ));
    }
    let changed = !changes.is_empty();
    let backed_up = changes.iter().any(|c| c.path == config_real && c.backup);
    let state = ContainerdState {
        spec: req.spec.clone(),
        config: req.config.clone(),
        version,
        mode: Mode::DropIn,
        registration: None,
        created_config: old.is_some_and(|o| o.created_config)
            || (text.is_none() && import.as_ref().is_some_and(|i| i.added)),
        drop_in: Some(drop_in_host),
        created_drop_in_dir: old.is_some_and(|o| o.created_drop_in_dir) || creates_dir,
        import,
        backup: old
            .and_then(|o| o.backup.clone())
            .or_else(|| backed_up.then(|| fsio::backup_path(&req.config))),
        changed_at: changed_at(changed, old),
        restart_pending: changed || old.is_some_and(|o| o.restart_pending),
        unit: req.unit.clone(),
    };
    Ok(registered(changes, state, notes, old))
}

/// When the registration last changed the files: now when this one does, else when the
/// earlier one did.
fn changed_at(changed: bool, old: Option<&ContainerdState>) -> u64 {
    if changed {
        now()
    } else {
        old.map_or(now(), |o| o.changed_at)
    }
}

/// The plan of a registration: its changes, the record afterwards, and its notes; a
/// backup is taken afresh unless the earlier registration's is kept.
fn registered(
    changes: Vec<FileChange>,
    state: ContainerdState,
    notes: Vec<String>,
    old: Option<&ContainerdState>,
) -> Plan {
    Plan {
        changes,
        state: Some(state),
        notes,
        fresh_backup: old.and_then(|o| o.backup.as_ref()).is_none(),
        remove_dirs: Vec::new(),
        pending_restart: None,
    }
}
