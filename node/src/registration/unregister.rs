//! Unregistering a handler on a node: plan undoing exactly what the record says register
//! did — the handler or the keys it set, the imports entry, the drop-in and its directory,
//! the backup — refusing what would break containerd; [`super::apply`] then applies the
//! plan.

use std::path::Path;

use kata_gpu_containerd_config::dropin::drop_in_file_name;
use kata_gpu_containerd_config::{
    is_template_line, refuse_dangling_name, remove_import, unregister, ImportChange, Target,
};

use super::{read, refuse_links, FileChange, Plan, RegistrationError, Request};
use crate::record::{now, ContainerdState, Mode, PendingRestart};

/// Plans undoing the registration recorded in `old` (or, without a record, removing the
/// handler named in `req` from the files `req` names).
pub fn plan_unregister(
    req: &Request,
    old: Option<&ContainerdState>,
) -> Result<Plan, RegistrationError> {
    let mut notes = Vec::new();
    let (config, mode, drop_in) = match old {
        Some(o) => (o.config.clone(), o.mode, o.drop_in.clone()),
        None => {
            notes.push(format!(
                "no record of a registration of {}: removing it from the files named",
                req.spec.name
            ));
            let drop_in = req
                .drop_in_dir
                .as_ref()
                .map(|d| d.join(drop_in_file_name(&req.spec.name)));
            let mode = if drop_in.is_some() {
                Mode::DropIn
            } else {
                Mode::InPlace
            };
            (req.config.clone(), mode, drop_in)
        }
    };
    let config_real = req.real(&config)?;
    let file = config_real.display().to_string();
    let text = read(&config_real)?;
    let target = Target {
        file: &file,
        version: old.map(|o| o.version).or(req.version),
    };
    let created = old.is_some_and(|o| o.created_config);
    // The main config as it will be (outer None: not read, nothing to compare a backup with).
    let mut main_after: Option<Option<String>> = None;
    let mut changes = Vec::new();
    let mut remove_dirs = Vec::new();
    match (mode, &text) {
        (Mode::InPlace, Some(t)) => {
            let record = old.and_then(|o| o.registration.as_ref());
            let out = unregister(t, &req.spec.name, record, target)?;
            for key in &out.kept {
                notes.push(format!(
                    "kept {key} of {} as it is: it was edited after register (it no longer \
                     holds what register wrote); change it by hand if it should go",
                    req.spec.name
                ));
            }
            main_after = Some((!(created && out.text.trim().is_empty())).then_some(out.text));
        }
        (Mode::DropIn, Some(t)) if t.lines().next().is_some_and(is_template_line) => {
            main_after = Some(Some(t.clone()));
        }
        (Mode::DropIn, Some(t)) => {
            if let Some(entry) = drop_in.as_ref().map(|d| d.display().to_string()) {
                let change = old.and_then(|o| o.import.clone()).unwrap_or(ImportChange {
                    entry,
                    added: true,
                    created_key: false,
                    created_version_key: false,
                    added_final_newline: false,
                    final_line: None,
                });
                let out = remove_import(t, &change, target)?;
                main_after = Some((!(created && out.text.trim().is_empty())).then_some(out.text));
            }
        }
        (_, None) => {}
    }
    if let (Some(t), Some(after)) = (&text, &main_after) {
        if let Some(a) = after {
            refuse_dangling_name(t, a, &req.spec.name, &file)?;
        }
        if after.as_deref() != Some(t.as_str()) {
            changes.push(FileChange {
                path: config_real.clone(),
                before: text.clone(),
                after: after.clone(),
                backup: false,
            });
        }
    }
    if let Some(d) = drop_in.as_deref().filter(|_| mode == Mode::DropIn) {
        let real = req.real(d)?;
        if let Some(before) = read(&real)? {
            changes.push(FileChange {
                path: real,
                before: Some(before),
                after: None,
                backup: false,
            });
        }
        if let (Some(dir), true) = (d.parent(), old.is_some_and(|o| o.created_drop_in_dir)) {
            remove_dirs.push(req.real(dir)?);
        }
    }
    if let (Some(after), Some(backup)) = (&main_after, old.and_then(|o| o.backup.as_deref())) {
        drop_backup(req, backup, after.as_deref(), &mut changes, &mut notes)?;
    }
    let changed = !changes.is_empty();
    let pending_restart = changed.then(|| PendingRestart {
        config: config.clone(),
        unit: old.map_or_else(|| req.unit.clone(), |o| o.unit.clone()),
        changed_at: now(),
    });
    let plan = Plan {
        changes,
        state: None,
        notes: if changed || old.is_some() {
            notes
        } else {
            vec![format!(
                "{} is not registered; nothing to do",
                req.spec.name
            )]
        },
        fresh_backup: false,
        remove_dirs,
        pending_restart,
    };
    refuse_links(&plan)?;
    Ok(plan)
}

/// Removes the backup when the config goes back to exactly what it holds; else keeps it
/// and says why.
fn drop_backup(
    req: &Request,
    backup: &Path,
    after: Option<&str>,
    changes: &mut Vec<FileChange>,
    notes: &mut Vec<String>,
) -> Result<(), RegistrationError> {
    let backup_real = req.real(backup)?;
    let saved = read(&backup_real)?;
    match saved {
        Some(s) if Some(s.as_str()) == after => changes.push(FileChange {
            path: backup_real,
            before: Some(s),
            after: None,
            backup: false,
        }),
        Some(_) => notes.push(format!(
            "kept the backup {}: the config differs from it (edited since)",
            backup.display()
        )),
        None => {}
    }
    Ok(())
}
