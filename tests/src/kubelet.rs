//! Stand-ins for kubelet's side of its gRPC APIs, speaking the real protocol over unix
//! sockets: PodResources v1 `Get`, and device-plugin registration. Each serves from its own
//! thread so that blocking tests (`ctr`, CRI calls, a plugin's own runtime) run beside it.
//! kubelet itself does not run here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kata_gpu_kubelet_api::deviceplugin::v1beta1::registration_server::{
    Registration, RegistrationServer,
};
use kata_gpu_kubelet_api::deviceplugin::v1beta1::{Empty as RegEmpty, RegisterRequest};
use kata_gpu_kubelet_api::podresources::v1::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use kata_gpu_kubelet_api::podresources::v1::{
    ContainerDevices, ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse,
    PodResources,
};
use tonic::{Request, Response, Status};

/// One container's devices: (resource name, device ids).
pub type Devices = Vec<(String, Vec<String>)>;

/// What kubelet allocated to one pod: (resource name, device ids) per container.
#[derive(Clone, Debug)]
pub struct Allocation {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Per container: its name and its (resource, ids).
    pub containers: Vec<(String, Devices)>,
}

impl Allocation {
    /// One container `main` of pod `namespace/name` with `ids` of `resource`.
    pub fn one(namespace: &str, name: &str, resource: &str, ids: &[&str]) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            containers: vec![(
                "main".to_owned(),
                vec![(
                    resource.to_owned(),
                    ids.iter().map(|s| (*s).to_owned()).collect(),
                )],
            )],
        }
    }

    fn to_proto(&self) -> PodResources {
        PodResources {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            containers: self
                .containers
                .iter()
                .map(|(name, devices)| ContainerResources {
                    name: name.clone(),
                    devices: devices
                        .iter()
                        .map(|(resource, ids)| ContainerDevices {
                            resource_name: resource.clone(),
                            device_ids: ids.clone(),
                            topology: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

struct Lister {
    pods: Vec<Allocation>,
    asked: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        let r = request.into_inner();
        if let Ok(mut asked) = self.asked.lock() {
            asked.push((r.pod_namespace.clone(), r.pod_name.clone()));
        }
        // kubelet answers a pod it does not know with an error, not an empty pod.
        let pod = self
            .pods
            .iter()
            .find(|p| p.namespace == r.pod_namespace && p.name == r.pod_name)
            .ok_or_else(|| {
                Status::unknown(format!(
                    "pod {} not found in namespace {}",
                    r.pod_name, r.pod_namespace
                ))
            })?;
        Ok(Response::new(GetPodResourcesResponse {
            pod_resources: Some(pod.to_proto()),
        }))
    }
}

/// The stand-in, serving until dropped.
pub struct PodResourcesStandIn {
    socket: PathBuf,
    asked: Arc<Mutex<Vec<(String, String)>>>,
    server: Option<Server>,
}

impl PodResourcesStandIn {
    /// Serves `pods` on `socket` (its directory is made).
    pub fn start(socket: &Path, pods: Vec<Allocation>) -> Self {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).expect("pod-resources dir");
        }
        let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind pod-resources");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let lister = Lister {
            pods,
            asked: asked.clone(),
        };
        let router =
            tonic::transport::Server::builder().add_service(PodResourcesListerServer::new(lister));
        Self {
            socket: socket.to_path_buf(),
            asked,
            server: Some(Server::spawn(listener, router)),
        }
    }

    /// The pods asked for, as (namespace, name), in order.
    pub fn asked(&self) -> Vec<(String, String)> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Drop for PodResourcesStandIn {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A stand-in for kubelet's device-plugin registration: `Registration.Register` served on
/// `<root>/var/lib/kubelet/device-plugins/kubelet.sock`, each request kept for the test.
pub struct KubeletRegistration {
    dir: PathBuf,
    registrations: std::sync::mpsc::Receiver<RegisterRequest>,
    server: Option<Server>,
}

/// A gRPC server on its own thread, stopped when dropped.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `router` on the (already bound) `listener` from a thread of its own.
    fn spawn(
        listener: std::os::unix::net::UnixListener,
        router: tonic::transport::server::Router,
    ) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
                let _ = router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await;
            });
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Registrar {
    registered: Mutex<std::sync::mpsc::Sender<RegisterRequest>>,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegEmpty>, Status> {
        if let Ok(tx) = self.registered.lock() {
            let _ = tx.send(request.into_inner());
        }
        Ok(Response::new(RegEmpty {}))
    }
}

impl KubeletRegistration {
    /// Starts kubelet's registration socket under `root` (the directory is made).
    pub fn start(root: &Path) -> Self {
        let dir = root.join("var/lib/kubelet/device-plugins");
        std::fs::create_dir_all(&dir).expect("device-plugins dir");
        let (tx, registrations) = std::sync::mpsc::channel();
        let listener = std::os::unix::net::UnixListener::bind(dir.join("kubelet.sock"))
            .expect("bind kubelet.sock");
        let router =
            tonic::transport::Server::builder().add_service(RegistrationServer::new(Registrar {
                registered: Mutex::new(tx),
            }));
        Self {
            dir,
            registrations,
            server: Some(Server::spawn(listener, router)),
        }
    }

    /// kubelet's device-plugins directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next registration (a minute's bound only fails a test that would hang).
    pub fn next_registration(&self) -> RegisterRequest {
        self.registrations
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a registration within a minute")
    }

    /// A registration that comes within `bound`, if any.
    pub fn registration_within(&self, bound: std::time::Duration) -> Option<RegisterRequest> {
        self.registrations.recv_timeout(bound).ok()
    }

    /// What a kubelet restart does: its socket and every plugin's go, a new socket comes.
    pub fn restart(mut self, root: &Path) -> Self {
        drop(self.server.take());
        for e in std::fs::read_dir(&self.dir).expect("dir").flatten() {
            std::fs::remove_file(e.path()).expect("remove socket");
        }
        Self::start(root)
    }
}

/// The sandbox device plugin on a runtime and thread of its own, as `kata-gpu device-plugin`
/// runs it; stopped when dropped.
pub struct DevicePlugin {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), kata_gpu_device_plugin::PluginError>>>,
}

impl DevicePlugin {
    /// Starts the plugin with `config`.
    pub fn start(config: kata_gpu_device_plugin::Config) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(kata_gpu_device_plugin::run(config, async {
                    let _ = stopped.await;
                }))
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the plugin and returns how its run ended.
    pub fn stop(mut self) -> Result<(), kata_gpu_device_plugin::PluginError> {
        self.halt().expect("the plugin was running")
    }

    /// How the plugin's run ended when it ends by itself (an error) within `within`, else
    /// how it ends when stopped then: a stop sent too early would end a run that had not
    /// yet reached what the caller waits for.
    pub fn ended_within(
        mut self,
        within: std::time::Duration,
    ) -> Result<(), kata_gpu_device_plugin::PluginError> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline
            && !self.thread.as_ref().is_some_and(|t| t.is_finished())
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.halt().expect("the plugin was running")
    }

    fn halt(&mut self) -> Option<Result<(), kata_gpu_device_plugin::PluginError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().map(|t| t.join().expect("plugin thread"))
    }
}

impl Drop for DevicePlugin {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// A kubelet that accepts connections on its registration socket and never answers: what
/// a wedged kubelet looks like to a plugin. Each connection is held open until dropped.
pub struct SilentKubelet {
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentKubelet {
    /// Binds `<root>/var/lib/kubelet/device-plugins/kubelet.sock` (the directory is made).
    pub fn start(root: &Path) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = root.join("var/lib/kubelet/device-plugins");
        std::fs::create_dir_all(&dir).expect("device-plugins dir");
        let listener = std::os::unix::net::UnixListener::bind(dir.join("kubelet.sock"))
            .expect("bind kubelet.sock");
        listener.set_nonblocking(true).expect("nonblocking");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        held.push(stream);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        Self {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until it has accepted `n` connections; false after `bound`.
    pub fn wait_accepted(&self, n: usize, bound: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while self.accepted() < n {
            if start.elapsed() > bound {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }
}

impl Drop for SilentKubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
