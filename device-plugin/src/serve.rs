//! The plugin's life: take the inventory, serve each resource on a 0600 socket in kubelet's
//! device-plugins directory, register it, watch health, and start over when kubelet's socket
//! is recreated (a kubelet restart removes every plugin socket and forgets every plugin).

use std::collections::BTreeSet;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_gpu_kubelet_api::deviceplugin::v1beta1::device_plugin_server::DevicePluginServer;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::registration_client::RegistrationClient;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::RegisterRequest;
use kata_gpu_kubelet_api::{
    connect_unix, DEVICE_PLUGINS_DIR, DEVICE_PLUGIN_VERSION, KUBELET_SOCKET,
};
use kata_gpu_plan::host::{Host, HostError};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;

use crate::allocate::Strategy;
use crate::health::device_list;
use crate::inventory::{inventory, Resource};
use crate::service::{options, PluginService};
pub use kata_gpu_plan::resource_names::Naming;

/// How the plugin runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The host's `/` (a DaemonSet's mount of it); every path below is under it.
    pub host_root: PathBuf,
    /// kubelet's device-plugins directory, as the host sees it.
    pub plugins_dir: PathBuf,
    /// How often health and kubelet's socket are looked at: a change reaches kubelet within
    /// one interval.
    pub interval: Duration,
    /// The forms Allocate answers in.
    pub strategy: Strategy,
    /// How long one registration with kubelet (connect and `Register`) may take: a kubelet
    /// that accepts and never answers is given up on, and tried again next interval.
    pub register_timeout: Duration,
    /// How resources are named.
    pub naming: Naming,
    /// How long a device may be missing from the host's inventory (unbound from vfio-pci,
    /// say) before the plugin stops advertising it; meanwhile it is listed unhealthy. A
    /// device that arrives is advertised within one interval.
    pub gone_after: Duration,
}

/// [`Config::register_timeout`] by default: kubelet answers `Register` at once (it only
/// records the plugin and dials it back later), so this is a wedged kubelet.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// [`Config::gone_after`] by default: longer than a rebind takes.
pub const GONE_AFTER: Duration = Duration::from_secs(60);

impl Config {
    /// The defaults for a host whose `/` is `host_root`.
    pub fn new(host_root: impl Into<PathBuf>) -> Self {
        Self {
            host_root: host_root.into(),
            plugins_dir: PathBuf::from(DEVICE_PLUGINS_DIR),
            interval: Duration::from_secs(5),
            strategy: Strategy::default(),
            register_timeout: REGISTER_TIMEOUT,
            naming: Naming::default(),
            gone_after: GONE_AFTER,
        }
    }
}

/// What stops the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The host could not be read.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A path of ours could not be made or used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Something other than our socket is where our socket goes.
    #[error(
        "{0} exists and is not a socket; remove it or move it aside, then start the plugin again"
    )]
    NotASocket(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PluginError + '_ {
    move |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The identity of a file: kubelet recreating its socket gives a new one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

/// Binds `path` as a socket only root can use, replacing a stale socket of ours. The socket
/// is bound in a fresh 0700 directory beside it, made 0600 there and renamed into place, so
/// it is never reachable with the process umask's mode.
fn bind_private(path: &Path) -> Result<tokio::net::UnixListener, PluginError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(io_err(path))?,
        Ok(_) => return Err(PluginError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io_err(&private))?;
    let staged = private.join("socket");
    let bound = tokio::net::UnixListener::bind(&staged)
        .map_err(io_err(&staged))
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(&staged))?;
            std::fs::rename(&staged, path).map_err(io_err(path))?;
            Ok(listener)
        });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// One registration round: the servers it started stop when `stop` is sent.
struct Round {
    stop: watch::Sender<bool>,
    sockets: Vec<PathBuf>,
    kubelet: Option<(u64, u64)>,
    /// What the round serves: (resource name, device id).
    served: BTreeSet<(String, String)>,
    /// Since when a device it serves has been missing from the host's inventory.
    missing_since: Option<Instant>,
}

/// A round ends when dropped, also half-way through its registrations (the plugin
/// stopping meanwhile): its servers stop and its sockets go.
impl Drop for Round {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for s in &self.sockets {
            if identity(s).is_some() {
                let _ = std::fs::remove_file(s);
            }
        }
    }
}

/// (resource name, device id) of every device in `resources`.
fn served(resources: &[Resource]) -> BTreeSet<(String, String)> {
    resources
        .iter()
        .flat_map(|r| r.devices.iter().map(|d| (r.name.clone(), d.id.clone())))
        .collect()
}

fn shown(devices: &BTreeSet<&(String, String)>) -> String {
    devices
        .iter()
        .map(|(r, id)| format!("{id} ({r})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Round {
    fn end(self) {
        drop(self);
    }

    /// Whether the host's devices are no longer those served: one arrived (at once), or one
    /// has been missing for `gone_after` (till then, health lists it unhealthy).
    fn devices_changed(&mut self, host: &Host, config: &Config) -> bool {
        let now = match inventory(host, config.naming) {
            Ok(rs) => served(&rs),
            Err(e) => {
                tracing::warn!(
                    "cannot list the host's devices: {e}; trying again within {:?}",
                    config.interval
                );
                return false;
            }
        };
        let arrived: BTreeSet<_> = now.difference(&self.served).collect();
        if !arrived.is_empty() {
            tracing::info!("devices arrived: {}; serving them", shown(&arrived));
            return true;
        }
        let left: BTreeSet<_> = self.served.difference(&now).collect();
        if left.is_empty() {
            self.missing_since = None;
            return false;
        }
        let since = *self.missing_since.get_or_insert_with(Instant::now);
        if since.elapsed() < config.gone_after {
            return false;
        }
        tracing::info!(
            "devices left the host's inventory {:?} ago: {}; no longer advertised",
            config.gone_after,
            shown(&left)
        );
        true
    }

    /// Whether kubelet restarted (its socket is new) or removed one of ours.
    fn stale(&self, kubelet_sock: &Path) -> bool {
        identity(kubelet_sock) != self.kubelet || self.sockets.iter().any(|s| identity(s).is_none())
    }
}

/// Registers `resource`, giving up after `limit`.
async fn register(kubelet_sock: &Path, resource: &Resource, limit: Duration) -> Result<(), String> {
    tokio::time::timeout(limit, register_once(kubelet_sock, resource))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "kubelet at {} did not answer the registration of {} within {limit:?}",
                kubelet_sock.display(),
                resource.name
            ))
        })
}

async fn register_once(kubelet_sock: &Path, resource: &Resource) -> Result<(), String> {
    let channel = connect_unix(kubelet_sock)
        .await
        .map_err(|e| format!("cannot reach kubelet at {}: {e}", kubelet_sock.display()))?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: DEVICE_PLUGIN_VERSION.to_owned(),
            endpoint: resource.socket_name(),
            resource_name: resource.name.clone(),
            options: Some(options()),
        })
        .await
        .map_err(|e| {
            format!(
                "kubelet at {} refused {}: {}",
                kubelet_sock.display(),
                resource.name,
                e.message()
            )
        })?;
    Ok(())
}

/// Starts serving every resource and registers each; `None` when kubelet is not there yet.
async fn start_round(
    config: &Config,
    host: &Host,
    dir: &Path,
) -> Result<Option<Round>, PluginError> {
    let kubelet_sock = dir.join(KUBELET_SOCKET);
    let Some(kubelet) = identity(&kubelet_sock) else {
        return Ok(None);
    };
    let (stop, stopped) = watch::channel(false);
    let resources = inventory(host, config.naming)?;
    let mut round = Round {
        stop,
        sockets: Vec::new(),
        kubelet: Some(kubelet),
        served: served(&resources),
        missing_since: None,
    };
    if resources.is_empty() {
        tracing::info!(
            "no device to advertise yet (none bound to vfio-pci); looking again every {:?}",
            config.interval
        );
    }
    for resource in resources {
        let resource = Arc::new(resource);
        let path = dir.join(resource.socket_name());
        let listener = match bind_private(&path) {
            Ok(l) => l,
            Err(e) => {
                round.end();
                return Err(e);
            }
        };
        round.sockets.push(path);
        let (tx, list) = watch::channel(device_list(host, &resource));
        let service = PluginService {
            resource: resource.clone(),
            list,
            strategy: config.strategy,
        };
        let mut until = stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = until.wait_for(|s| *s).await;
            };
            let served = tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!("serving the device plugin stopped: {e}");
            }
        });
        let (health_host, health_resource, interval) =
            (host.clone(), resource.clone(), config.interval);
        let mut until = stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = until.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let now = device_list(&health_host, &health_resource);
                tx.send_if_modified(|old| {
                    let changed = *old != now;
                    if changed {
                        tracing::info!("{}: device health changed", health_resource.name);
                        *old = now;
                    }
                    changed
                });
            }
        });
        if let Err(e) = register(&kubelet_sock, &resource, config.register_timeout).await {
            tracing::warn!("{e}; trying again within {:?}", config.interval);
            round.kubelet = None;
        } else {
            tracing::info!(
                "registered {} ({} devices) on {}",
                resource.name,
                resource.devices.len(),
                round
                    .sockets
                    .last()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    Ok(Some(round))
}

/// Runs the plugin until `shutdown` completes; then its sockets are removed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), PluginError> {
    let host = Host::new(&config.host_root);
    let dir = kata_gpu_fsutil::resolve_in_root(&config.host_root, &config.plugins_dir)
        .map_err(io_err(&config.plugins_dir))?;
    let kubelet_sock = dir.join(KUBELET_SOCKET);
    tokio::pin!(shutdown);
    let mut round: Option<Round> = None;
    loop {
        let stale = round.as_ref().is_some_and(|r| r.stale(&kubelet_sock));
        let changed = !stale
            && round
                .as_mut()
                .is_some_and(|r| r.devices_changed(&host, &config));
        if round.is_none() || stale || changed {
            if let Some(old) = round.take() {
                if stale {
                    tracing::info!(
                        "kubelet's socket {} changed; registering again",
                        kubelet_sock.display()
                    );
                }
                old.end();
            }
            // A round registers with kubelet: shutdown is watched meanwhile, so a slow
            // kubelet never delays SIGTERM (the round's sockets go when it is dropped).
            tokio::select! {
                _ = &mut shutdown => break,
                started = start_round(&config, &host, &dir) => round = started?,
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
    if let Some(r) = round {
        r.end();
    }
    Ok(())
}
