//! Registering a handler in containerd's config on a node, and undoing it: plan the file
//! changes with the pure patcher ([`register`], [`unregister`]), then apply them under the
//! node lock (backup first, atomic, refusing files changed behind our back), and keep the
//! record that lets `unregister` undo them exactly; [`handler`] does one of them for a
//! profile's handler, with the restart that makes containerd load it.

use std::path::{Path, PathBuf};

use kata_gpu_containerd_config::{diff, fsio, ConfigVersion, Error, HandlerSpec};

use crate::paths::host_path;
use crate::record::{resolve, ContainerdState, NodeLock, NodeState, PendingRestart, RecordError};

pub mod handler;
pub mod register;
pub mod unregister;

pub use register::plan_register;
pub use unregister::plan_unregister;

/// Why a handler could not be registered or unregistered; nothing was changed unless the
/// variant says so.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A containerd config could not be read, patched or written.
    #[error(transparent)]
    Config(#[from] Error),
    /// The node's record could not be read (or a path not resolved under the root).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record of the registration could not be saved (files may have changed after it).
    #[error("cannot record the registration of {handler}")]
    Save {
        /// The handler.
        handler: String,
        /// Why.
        #[source]
        source: RecordError,
    },
    /// The handler is registered in another config file.
    #[error("{handler} is registered in {}; unregister it there first", config.display())]
    RegisteredElsewhere {
        /// The handler.
        handler: String,
        /// The config its record names.
        config: PathBuf,
    },
    /// The handler is registered through a drop-in; in place was asked.
    #[error("{handler} is registered through the drop-in {}; unregister it first to switch to in-place", drop_in.display())]
    RegisteredAsDropIn {
        /// The handler.
        handler: String,
        /// The drop-in.
        drop_in: PathBuf,
    },
    /// The handler is registered in place; a drop-in was asked.
    #[error("{handler} is registered in place in {}; unregister it first to switch to a drop-in", config.display())]
    RegisteredInPlace {
        /// The handler.
        handler: String,
        /// The config.
        config: PathBuf,
    },
    /// Another tool owns a handler of this name.
    #[error(transparent)]
    Foreign(#[from] crate::coexist::Refusal),
    /// A directory register created could not be removed.
    #[error("cannot remove {}", dir.display())]
    RemoveDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--restart` under a host root without a command that restarts that root's containerd.
    #[error("--restart under --host-root {}: kata-gpu runs no restart of the real host's containerd for it; add --restart-command CMD (the command that restarts the containerd reading that root's config), or leave --restart out; nothing was changed", root.display())]
    RestartUnderRoot {
        /// The root.
        root: PathBuf,
    },
}

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
                config.unwrap_or(Path::new(crate::containerd::DEFAULT_CONFIG)),
            ),
            drop_in_dir: drop_in_dir.map(|d| host_path(root, d)),
            spec,
            version,
            unit: unit.unwrap_or(DEFAULT_UNIT).to_owned(),
        }
    }

    fn real(&self, host: &Path) -> Result<PathBuf, RecordError> {
        resolve(&self.root, host)
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

fn read(path: &Path) -> Result<Option<String>, Error> {
    fsio::read_config(path)
}

/// Refuses a plan that would write through a symlink (a changed file or its backup), before
/// anything is written: see [`fsio::refuse_symlink`].
fn refuse_links(plan: &Plan) -> Result<(), Error> {
    for c in &plan.changes {
        fsio::refuse_symlink(&c.path)?;
        if c.backup {
            fsio::refuse_symlink(&fsio::backup_path(&c.path))?;
        }
    }
    Ok(())
}

/// Applies a plan; the caller holds the node lock. The record is the intent: a register's is saved
/// before any file changes, so that a failed write or a crash never leaves a handler that no
/// record lets `unregister` remove (a record claiming more than was done is harmless: undoing
/// what is absent changes nothing); an unregister's goes only after its files changed. Each
/// file is backed up once when asked, then replaced atomically (or removed) only if it still
/// holds what the plan read.
pub fn apply(
    root: &Path,
    handler: &str,
    plan: &Plan,
    _held: &NodeLock,
) -> Result<(), RegistrationError> {
    let record = |plan_state: &Option<ContainerdState>| -> Result<(), RegistrationError> {
        let mut state = NodeState::load(root, handler)?;
        state.containerd = plan_state.clone();
        match (&mut state.containerd, state.unregistered.take()) {
            // Registered again before containerd restarted: the restart is still owed.
            (Some(c), Some(p)) => {
                if crate::containerd::restart_owed(root, &p.config, p.changed_at) {
                    c.restart_pending = true;
                    c.changed_at = c.changed_at.max(p.changed_at);
                }
            }
            (None, earlier) => state.unregistered = plan.pending_restart.clone().or(earlier),
            (Some(_), None) => {}
        }
        state
            .save(root, handler)
            .map_err(|source| RegistrationError::Save {
                handler: handler.to_owned(),
                source,
            })
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
            Err(source) => {
                return Err(RegistrationError::RemoveDir {
                    dir: dir.clone(),
                    source,
                })
            }
        }
    }
    if plan.state.is_none() {
        record(&None)?;
    }
    Ok(())
}
