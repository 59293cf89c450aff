//! What is true of a profile on the node: whether its artifacts are installed and
//! verified, its handler registered in containerd's config and loaded by the running
//! containerd (asked over CRI), whether containerd still has to restart, and what the shim
//! probes answered (`status`, `doctor`, `report` and the agent read it).

use std::path::{Path, PathBuf};

use kata_gpu_artifacts::{Store, StoreConfig};
use kata_gpu_containerd_config::{covers, find_handler, fsio, imports};
use serde::Serialize;

use kata_gpu_containerd_config::cri as cri_probe;
use kata_gpu_plan::Profile;

use crate::containerd::{restart_how, restart_owed, socket, DEFAULT_CONFIG};
use crate::paths::{host_path, shown};
use crate::record::{resolve as inside, ContainerdState, Mode, NodeState, RecordError};
use crate::shims;

/// What `status` is asked: the profile, and where to look (as the command line gives it).
#[derive(Clone, Debug)]
pub struct StatusQuery {
    /// The runtime class's profile.
    pub profile: Profile,
    /// containerd's config file (default: the one registered into, else the default).
    pub containerd_config: Option<PathBuf>,
    /// Root of the artifact store, a host path.
    pub artifacts_root: PathBuf,
    /// The containerd binary (its directory is where containerd also looks for shims).
    pub containerd: PathBuf,
    /// containerd's socket (default: the config's `[grpc] address`).
    pub socket: Option<PathBuf>,
}

impl StatusQuery {
    /// The defaults for `profile`: the record's config, the default store, `containerd` on
    /// PATH, the config's socket.
    pub fn of(profile: Profile) -> StatusQuery {
        StatusQuery {
            profile,
            containerd_config: None,
            artifacts_root: PathBuf::from(kata_gpu_fsutil::layout::DEFAULT_ROOT),
            containerd: PathBuf::from("containerd"),
            socket: None,
        }
    }
}

/// Why a profile's status could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The node's record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// containerd's config could not be read.
    #[error(transparent)]
    Config(#[from] kata_gpu_containerd_config::Error),
}

/// The status of one profile.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The handler.
    pub handler: String,
    /// An artifact set is current.
    pub installed: bool,
    /// The current set re-hashes clean (None: not installed).
    pub verified: Option<bool>,
    /// The handler is in containerd's config with the keys it needs.
    pub registered: bool,
    /// The running containerd serves the handler, by its CRI Status (None: could not ask).
    pub loaded: Option<bool>,
    /// containerd has not restarted since the config changed.
    pub restart_pending: bool,
    /// Our shim where containerd will run it from, with what its `-v` says (None: not found).
    pub shim: Option<String>,
    /// Kata's shim, where our shim's settings name it, is present.
    pub kata_shim: bool,
    /// Where sandboxes get their devices: `kubelet` or `annotations` (None: the shim
    /// settings cannot be read).
    pub device_source: Option<String>,
    /// Which Kata runtime the sandboxes go to, by the shim settings: `go` or `rs` (`runc`
    /// in tests; None: the shim settings cannot be read).
    pub kata_runtime: Option<String>,
    /// Details, one line each.
    pub details: Vec<String>,
    /// The probes behind `shim`, `kata_shim` and `device_source`, as they answered, so that
    /// doctor judges the same answers instead of running the shim's `-v` again.
    #[serde(skip)]
    pub probes: Probes,
}

/// What the shim probes answered (`None`: not asked).
#[derive(Debug, Default)]
pub struct Probes {
    /// Our shim where containerd runs it from (the handler's `runtime_path` when set).
    pub our_shim: Option<Result<shims::OurShim, String>>,
    /// Kata's shim, where the shim settings name it.
    pub kata_shim: Option<Result<Result<String, String>, String>>,
    /// Where sandboxes get their devices, from the shim settings.
    pub device_source: Option<Result<(bool, String), String>>,
    /// The shim settings the probes read (once).
    pub settings: Option<shims::SettingsRead>,
}

impl Status {
    /// Everything is installed, verified, registered and loaded, with no restart pending.
    pub fn ok(&self) -> bool {
        self.installed
            && self.verified == Some(true)
            && self.registered
            && self.loaded != Some(false)
            && !self.restart_pending
            && self.shim.is_some()
            && self.kata_shim
    }
}

fn artifacts(args: &StatusQuery, root: &Path, s: &mut Status) {
    let config = StoreConfig {
        root: args.artifacts_root.clone(),
        ..StoreConfig::under_root(root)
    };
    let store = match Store::new(config, &s.handler) {
        Ok(store) => store,
        Err(e) => return s.details.push(format!("artifacts: {e}")),
    };
    match store.current() {
        Ok(Some(version)) => {
            s.installed = true;
            s.details.push(format!("artifacts: current set {version}"));
            match kata_gpu_artifacts::verify(&store, false) {
                Ok(reports) => {
                    let findings: usize = reports.iter().map(|r| r.findings.len()).sum();
                    s.verified = Some(findings == 0);
                    if findings > 0 {
                        s.details.push(format!(
                            "artifacts: {findings} file(s) changed since install (kata-gpu artifacts verify)"
                        ));
                    }
                }
                Err(e) => {
                    s.verified = Some(false);
                    s.details.push(format!("artifacts: cannot verify: {e}"));
                }
            }
        }
        Ok(None) => s.details.push(format!(
            "artifacts: none installed for {} (kata-gpu install --artifacts SRC)",
            s.handler
        )),
        Err(e) => s.details.push(format!("artifacts: {e}")),
    }
}

/// Whether the registration's files carry the handler as recorded.
fn registered(root: &Path, c: &ContainerdState, s: &mut Status) -> Result<bool, StatusError> {
    let config_real = inside(root, &c.config)?;
    let main = fsio::read_config(&config_real)?;
    match c.mode {
        Mode::InPlace => {
            let found = main.as_deref().and_then(|t| find_handler(t, &c.spec.name));
            Ok(found.is_some_and(|f| f.satisfies(&c.spec)))
        }
        Mode::DropIn => {
            let Some(drop_in) = &c.drop_in else {
                return Ok(false);
            };
            let text = fsio::read_config(&inside(root, drop_in)?)?;
            let ok = text
                .as_deref()
                .and_then(|t| find_handler(t, &c.spec.name))
                .is_some_and(|f| f.satisfies(&c.spec));
            let entry = drop_in.display().to_string();
            let listed = main
                .as_deref()
                .map(|t| imports(t, &config_real.display().to_string()))
                .transpose()?
                .unwrap_or_default()
                .iter()
                .any(|p| covers(p, &entry));
            if ok && !listed && c.import.is_some() {
                s.details.push(format!(
                    "containerd: {} no longer imports {entry}",
                    shown(root, &c.config)
                ));
            }
            Ok(ok && (listed || c.import.is_none()))
        }
    }
}

/// Gathers the status of `args.profile` on the host under `root`.
pub fn gather(args: &StatusQuery, root: &Path) -> Result<Status, StatusError> {
    let handler = args.profile.handler();
    let state = NodeState::load(root, handler)?;
    let mut s = Status {
        handler: handler.to_owned(),
        installed: false,
        verified: None,
        registered: false,
        loaded: None,
        restart_pending: false,
        shim: None,
        kata_shim: false,
        device_source: None,
        kata_runtime: None,
        details: Vec::new(),
        probes: Probes::default(),
    };
    artifacts(args, root, &mut s);
    let config = match (
        &args.containerd_config,
        &state.containerd,
        &state.unregistered,
    ) {
        (Some(c), _, _) => host_path(root, c),
        (None, Some(c), _) => c.config.clone(),
        (None, None, Some(p)) => p.config.clone(),
        (None, None, None) => PathBuf::from(DEFAULT_CONFIG),
    };
    // What the running containerd serves, asked over its CRI socket (not the file).
    let socket = socket(root, &config, args.socket.as_deref());
    let running = cri_probe::loaded_handlers(&socket, cri_probe::TIMEOUT);
    let loaded = running
        .as_ref()
        .ok()
        .map(|hs| hs.iter().any(|h| h == handler));
    match &state.containerd {
        Some(c) => {
            s.registered = registered(root, c, &mut s)?;
            s.details.push(format!(
                "containerd: {} {} in {}",
                if s.registered {
                    "registered"
                } else {
                    "NOT registered (edited since?)"
                },
                match c.mode {
                    Mode::InPlace => "in place".to_owned(),
                    Mode::DropIn => format!(
                        "as drop-in {}",
                        shown(root, c.drop_in.as_deref().unwrap_or(Path::new("?")))
                    ),
                },
                shown(root, &c.config)
            ));
            // The running containerd's answer beats the record: it serves the handler or not.
            s.restart_pending = match loaded {
                Some(l) => s.registered && !l,
                None => c.restart_pending && restart_owed(root, &c.config, c.changed_at),
            };
            {
                if s.restart_pending {
                    s.details.push(format!(
                        "containerd: must restart to load the change: {}",
                        restart_how(root, &c.unit, None, &c.config).line
                    ));
                }
            }
        }
        None => {
            let text = fsio::read_config(&inside(root, &config)?)?;
            s.registered = text
                .as_deref()
                .and_then(|t| find_handler(t, handler))
                .is_some();
            s.details.push(format!(
                "containerd: {} in {} (no record of kata-gpu registering it)",
                if s.registered {
                    "found"
                } else {
                    "not registered"
                },
                shown(root, &config)
            ));
            s.restart_pending = match (loaded, &state.unregistered) {
                (Some(l), _) => l && !s.registered,
                (None, Some(p)) => restart_owed(root, &p.config, p.changed_at),
                (None, None) => false,
            };
            if let Some(p) = &state.unregistered {
                if s.restart_pending {
                    s.details.push(format!(
                        "containerd: must restart to unload {handler} (unregistered since it started): {}",
                        restart_how(root, &p.unit, None, &p.config).line
                    ));
                }
            }
        }
    }
    s.loaded = loaded;
    s.details.push(match (&running, loaded) {
        (Ok(_), Some(true)) => format!(
            "containerd: the running containerd ({}) serves {handler}",
            socket.display()
        ),
        (Ok(hs), _) => format!(
            "containerd: the running containerd ({}) does NOT serve {handler} (it serves {})",
            socket.display(),
            hs.join(", ")
        ),
        (Err(e), _) => format!("containerd: {e}"),
    });
    shims(args, root, &state, &mut s);
    Ok(s)
}

/// Our shim as containerd will run it, and Kata's as our shim will.
fn shims(args: &StatusQuery, root: &Path, state: &NodeState, s: &mut Status) {
    let runtime_path = state
        .containerd
        .as_ref()
        .and_then(|c| c.spec.runtime_path.as_deref());
    let our = shims::our_shim(root, args.profile, &args.containerd, runtime_path);
    match &our {
        Ok(found) => match &found.version {
            Ok(v) => {
                s.details.push(format!(
                    "shim: containerd runs {} ({v})",
                    shown(root, &found.path)
                ));
                if !shims::same_version(v) {
                    s.details.push(format!(
                        "shim: it is not kata-gpu's version {}: install both from one build (make install)",
                        env!("CARGO_PKG_VERSION")
                    ));
                }
                s.shim = Some(v.clone());
            }
            Err(e) => s.details.push(format!("shim: {e}")),
        },
        Err(missing) => s.details.push(format!(
            "shim: {missing}: make install (or kata-gpu binaries install)"
        )),
    }
    s.probes.our_shim = Some(our);
    let settings = shims::settings(args.profile, root);
    let kata = shims::kata_shim(&settings, root);
    match &kata {
        Ok(Ok(found)) => {
            s.kata_shim = true;
            s.details.push(format!("kata shim: {found}"));
        }
        Ok(Err(missing)) => s.details.push(format!("kata shim: {missing}")),
        Err(e) => s.details.push(format!("kata shim: {e}")),
    }
    s.probes.kata_shim = Some(kata);
    match shims::kata_runtime(&settings, root) {
        Ok((name, line)) => {
            s.kata_runtime = Some(name);
            s.details.push(format!("kata runtime: {line}"));
        }
        Err(e) => s.details.push(format!("kata runtime: {e}")),
    }
    let devices = shims::device_source(&settings, root);
    match &devices {
        Ok((kubelet, line)) => {
            s.device_source = Some(if *kubelet { "kubelet" } else { "annotations" }.to_owned());
            s.details.push(format!("devices: {line}"));
        }
        Err(e) => s.details.push(format!("devices: {e}")),
    }
    s.probes.device_source = Some(devices);
    s.probes.settings = Some(settings);
}
