//! Registering a handler on a node: plan the file changes with the pure patcher, then apply
//! them under the lock (backup first, atomic, refusing files changed behind our back), and
//! keep the record that lets `unregister` undo them exactly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kata_gpu_containerd_config::dropin::{
    check_drop_in_safe, drop_in_file_name, drop_in_text, rancher_drop_in_dir, template_version,
};
use kata_gpu_containerd_config::{
    add_import, config_version, covers, daemon, diff, find_handler, fsio, imports,
    is_template_line, register, ConfigVersion, Error, HandlerSpec, Target,
};

use crate::node_state::{
    host_path, inside, now, under, ContainerdState, Mode, NodeLock, NodeState, PendingRestart,
};

/// The default systemd unit.
pub const DEFAULT_UNIT: &str = "containerd";

/// What to register where.
#[derive(Clone, Debug)]
pub struct Request {
    /// `--host-root`.
    pub root: PathBuf,
    /// The main config, as the host sees it.
    pub config: PathBuf,
    /// Drop-in mode: the directory, as the host sees it.
    pub drop_in_dir: Option<PathBuf>,
    /// The handler.
    pub spec: HandlerSpec,
    /// `--config-version`.
    pub version: Option<ConfigVersion>,
    /// The systemd unit.
    pub unit: String,
}

impl Request {
    /// The request for the command-line values (paths as given, made host paths).
    pub fn new(
        root: &Path,
        config: Option<&Path>,
        drop_in_dir: Option<&Path>,
        spec: HandlerSpec,
        version: Option<ConfigVersion>,
        unit: Option<&str>,
    ) -> Request {
        Request {
            root: root.to_path_buf(),
            config: host_path(
                root,
                config.unwrap_or(Path::new(kata_gpu_node::containerd::DEFAULT_CONFIG)),
            ),
            drop_in_dir: drop_in_dir.map(|d| host_path(root, d)),
            spec,
            version,
            unit: unit.unwrap_or(DEFAULT_UNIT).to_owned(),
        }
    }

    pub(crate) fn real(&self, host: &Path) -> anyhow::Result<PathBuf> {
        inside(&self.root, host)
    }
}

/// One file a plan changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    /// The file (under the host root).
    pub path: PathBuf,
    /// Its text now (`None`: absent).
    pub before: Option<String>,
    /// Its text after (`None`: removed).
    pub after: Option<String>,
    /// Back it up before the first change.
    pub backup: bool,
}

impl FileChange {
    /// The unified diff.
    pub fn diff(&self) -> String {
        diff::unified(&self.path, self.before.as_deref(), self.after.as_deref())
    }
}

/// The changes of one register/unregister, and the record to keep.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Files to change, in order.
    pub changes: Vec<FileChange>,
    /// The containerd record afterwards (`None`: none).
    pub state: Option<ContainerdState>,
    /// Things the user should know.
    pub notes: Vec<String>,
    /// A new registration starts: a backup left by an earlier one is replaced, so that it
    /// holds the config as it is now (within one registration the first backup stays).
    pub fresh_backup: bool,
    /// Directories register created, removed after the changes when they are empty.
    pub remove_dirs: Vec<PathBuf>,
    /// An unregister that changes files: the restart it leaves pending.
    pub pending_restart: Option<PendingRestart>,
}

impl Plan {
    /// Whether anything changes on disk.
    pub fn changes_files(&self) -> bool {
        !self.changes.is_empty()
    }
}

pub(crate) fn read(path: &Path) -> anyhow::Result<Option<String>> {
    Ok(fsio::read_config(path)?)
}

/// The version the host's containerd writes, for files that do not say: `containerd` on
/// PATH on a real host; under `--host-root`, the one on containerd's PATH inside the root
/// (none there: unknown), never the real host's.
fn containerd_default_version(root: &Path) -> Option<ConfigVersion> {
    let binary = if root == Path::new("/") {
        PathBuf::from("containerd")
    } else {
        kata_gpu_node::containerd::containerd_path(root)
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
) -> anyhow::Result<T> {
    match f(hint) {
        Err(Error::VersionUnknown { .. }) if hint.is_none() => {
            match containerd_default_version(root) {
                Some(v) => Ok(f(Some(v))?),
                None => Ok(f(None)?),
            }
        }
        other => Ok(other?),
    }
}

/// Plans registering `req.spec`; `old` is the record of an earlier registration.
pub fn plan_register(req: &Request, old: Option<&ContainerdState>) -> anyhow::Result<Plan> {
    let config_real = req.real(&req.config)?;
    let hint = req.version.or_else(|| template_version(&req.config));
    let text = read(&config_real)?;
    let file = config_real.display().to_string();
    if let Some(o) = old.filter(|o| o.config != req.config) {
        bail!(
            "{} is registered in {}; unregister it there first",
            req.spec.name,
            o.config.display()
        );
    }
    let old = old.filter(|o| o.spec.name == req.spec.name);
    let plan = match &req.drop_in_dir {
        None => {
            if let Some(o) = old.filter(|o| o.mode == Mode::DropIn) {
                bail!(
                    "{} is registered through the drop-in {}; unregister it first to switch to in-place",
                    req.spec.name,
                    o.drop_in.as_deref().unwrap_or(Path::new("?")).display()
                );
            }
            plan_in_place(req, old, &config_real, text, &file, hint)?
        }
        Some(dir) => {
            if old.is_some_and(|o| o.mode == Mode::InPlace) {
                bail!(
                    "{} is registered in place in {}; unregister it first to switch to a drop-in",
                    req.spec.name,
                    req.config.display()
                );
            }
            plan_drop_in(req, old, dir, &config_real, text, &file, hint)?
        }
    };
    refuse_links(&plan)?;
    Ok(plan)
}

/// Refuses a plan that would write through a symlink (a changed file or its backup), before
/// anything is written: see [`fsio::refuse_symlink`].
pub(crate) fn refuse_links(plan: &Plan) -> Result<(), Error> {
    for c in &plan.changes {
        fsio::refuse_symlink(&c.path)?;
        if c.backup {
            fsio::refuse_symlink(&fsio::backup_path(&c.path))?;
        }
    }
    Ok(())
}

fn plan_in_place(
    req: &Request,
    old: Option<&ContainerdState>,
    config_real: &Path,
    text: Option<String>,
    file: &str,
    hint: Option<ConfigVersion>,
) -> anyhow::Result<Plan> {
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
        changed_at: if done.changed {
            now()
        } else {
            old.map_or(now(), |o| o.changed_at)
        },
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
    Ok(Plan {
        changes,
        state: Some(state),
        notes,
        fresh_backup: old.and_then(|o| o.backup.as_ref()).is_none(),
        remove_dirs: Vec::new(),
        pending_restart: None,
    })
}

fn plan_drop_in(
    req: &Request,
    old: Option<&ContainerdState>,
    dir: &Path,
    config_real: &Path,
    text: Option<String>,
    file: &str,
    hint: Option<ConfigVersion>,
) -> anyhow::Result<Plan> {
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
        changed_at: if changed {
            now()
        } else {
            old.map_or(now(), |o| o.changed_at)
        },
        restart_pending: changed || old.is_some_and(|o| o.restart_pending),
        unit: req.unit.clone(),
    };
    Ok(Plan {
        changes,
        state: Some(state),
        notes,
        fresh_backup: old.and_then(|o| o.backup.as_ref()).is_none(),
        remove_dirs: Vec::new(),
        pending_restart: None,
    })
}

/// Applies a plan; the caller holds the node lock. The record is the intent: a register's is saved
/// before any file changes, so that a failed write or a crash never leaves a handler that no
/// record lets `unregister` remove (a record claiming more than was done is harmless: undoing
/// what is absent changes nothing); an unregister's goes only after its files changed. Each
/// file is backed up once when asked, then replaced atomically (or removed) only if it still
/// holds what the plan read.
pub fn apply(root: &Path, handler: &str, plan: &Plan, _held: &NodeLock) -> anyhow::Result<()> {
    let record = |plan_state: &Option<ContainerdState>| -> anyhow::Result<()> {
        let mut state = NodeState::load(root, handler)?;
        state.containerd = plan_state.clone();
        match (&mut state.containerd, state.unregistered.take()) {
            // Registered again before containerd restarted: the restart is still owed.
            (Some(c), Some(p)) => {
                if kata_gpu_node::containerd::restart_owed(root, &p.config, p.changed_at) {
                    c.restart_pending = true;
                    c.changed_at = c.changed_at.max(p.changed_at);
                }
            }
            (None, earlier) => state.unregistered = plan.pending_restart.clone().or(earlier),
            (Some(_), None) => {}
        }
        state
            .save(root, handler)
            .with_context(|| format!("cannot record the registration of {handler}"))
    };
    if plan.state.is_some() {
        record(&plan.state)?;
    }
    for c in &plan.changes {
        if c.backup {
            fsio::backup(&c.path, plan.fresh_backup)?;
        }
        match &c.after {
            Some(text) => fsio::replace_if_unchanged(&c.path, c.before.as_deref(), text, None)?,
            None => {
                if fsio::read_config(&c.path)? != c.before {
                    return Err(Error::ChangedConcurrently {
                        path: c.path.clone(),
                    }
                    .into());
                }
                fsio::remove_file(&c.path)?;
            }
        }
    }
    for dir in &plan.remove_dirs {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", dir.display())),
        }
    }
    if plan.state.is_none() {
        record(&None)?;
    }
    Ok(())
}
