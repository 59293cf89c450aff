//! What the proxy does at `Create`: apply CDI edits containerd did not apply, plan the
//! sandbox, render its Kata configuration, and point the downstream at it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cdi::{parse_cdi_annotations, QualifiedName, Registry};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{self, CodedOutputStream, MessageField};
use containerd_shim_protos::shim::shim::CreateTaskRequest;
use oci_spec::runtime::Spec as OciSpec;

use crate::proxy::CreateHook;
use kata_gpu_plan::host::Host;
use kata_gpu_plan::profile::Profile;
use kata_gpu_plan::sandbox::{plan, KataValues, PlanInput};
use kata_gpu_plan::settings::{DeviceSource, DownstreamKind, Settings};

/// CRI's annotation telling a pod's sandbox from its containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming a container's sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The type URL of Kata's runtime options.
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// Encodes `runtimeoptions.v1.Options { config_path = 2 }` (the message is not in
/// containerd-shim-protos, and one string field needs no generated code).
pub fn runtime_options(config_path: &str) -> Result<Vec<u8>, protobuf::Error> {
    let mut out = Vec::with_capacity(config_path.len() + 4);
    let mut stream = CodedOutputStream::vec(&mut out);
    stream.write_string(2, config_path)?;
    stream.flush()?;
    drop(stream);
    Ok(out)
}

/// Whether an `Any` carries `runtimeoptions.v1.Options` (with or without a URL host).
pub(crate) fn is_runtime_options(any: &Any) -> bool {
    any.type_url.rsplit('/').next() == Some(RUNTIME_OPTIONS)
}

/// The proxy's Create hook for one sandbox.
pub struct PlanHook {
    /// The profile served.
    pub profile: Profile,
    /// Our settings.
    pub settings: Settings,
    /// The containerd namespace.
    pub namespace: String,
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        kata_gpu_fsutil::create_dirs(dir, 0o700)?;
    }
    kata_gpu_fsutil::write_atomic(path, text.as_bytes(), 0o600)
}

/// Rewrites a bundle's `config.json`, keeping its mode.
fn write_bundle_spec(config_json: &Path, spec: &OciSpec) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(spec)
        .map_err(|e| format!("cannot encode {}: {e}", config_json.display()))?;
    let mode = fs::metadata(config_json)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    kata_gpu_fsutil::write_atomic(config_json, &text, mode)
        .map_err(|e| format!("cannot write {}: {e}", config_json.display()))
}

/// Whether `id` can name a directory of its own: not empty, no `/`, no `..`, no NUL. An
/// id that cannot would name the namespace's directory (every sandbox's state) or one
/// outside it. containerd's own ids never fail this.
pub fn is_path_safe_id(id: &str) -> bool {
    !id.is_empty() && id != "." && !id.contains(['/', '\0']) && !id.contains("..")
}

impl PlanHook {
    /// The directory of a sandbox's state: `<state_dir>/<namespace>/<sandbox-id>`; an id or
    /// namespace that is not a plain name (see [`is_path_safe_id`]) has none.
    pub fn sandbox_dir(&self, sandbox_id: &str) -> Result<PathBuf, String> {
        for (what, name) in [("sandbox id", sandbox_id), ("namespace", &self.namespace)] {
            if !is_path_safe_id(name) {
                return Err(format!(
                    "{what} {name:?} cannot name a state directory (empty, or with / or ..)"
                ));
            }
        }
        // `<state_dir>/s` holds the proxies' sockets (actions::socket_path): a namespace of
        // that name would put its sandboxes' state among them.
        let sockets = kata_gpu_fsutil::layout::PROXY_SOCKETS_DIR;
        if self.namespace == sockets {
            return Err(format!(
                "containerd namespace \"{sockets}\" cannot keep sandbox state: {} holds the kata-gpu proxies' sockets; run the sandbox in another namespace",
                self.settings.state_dir.join(sockets).display()
            ));
        }
        Ok(self
            .settings
            .state_dir
            .join(&self.namespace)
            .join(sandbox_id))
    }

    /// Applies the CDI devices the spec asks for and does not have yet; returns whether
    /// the spec changed.
    fn apply_cdi(
        &self,
        registry: &Registry,
        spec: &mut OciSpec,
        names: &[QualifiedName],
    ) -> Result<bool, String> {
        let present: Vec<String> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
            .map(|d| d.path().display().to_string())
            .collect();
        let missing: Vec<QualifiedName> = names
            .iter()
            .filter(|name| {
                registry.get(name).is_none_or(|d| {
                    d.device
                        .container_edits
                        .device_nodes
                        .iter()
                        .any(|n| !present.contains(&n.path))
                })
            })
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        registry
            .inject(spec, &missing)
            .map_err(|e| cdi::one_line(&e))?;
        Ok(true)
    }

    /// The CDI names a container gets: where kubelet decides, only devices its sandbox
    /// holds (the pod's own annotation, copied to its containers, may name other ids of the
    /// kind than kubelet allocated; the sandbox runs on the allocation).
    fn container_names(
        &self,
        annotations: &std::collections::HashMap<String, String>,
        registry: &Registry,
        names: Vec<QualifiedName>,
    ) -> Vec<QualifiedName> {
        if self.settings.device_source != DeviceSource::Kubelet || names.is_empty() {
            return names;
        }
        let claim = annotations
            .get(SANDBOX_ID)
            .and_then(|id| self.sandbox_dir(id).ok())
            .and_then(|dir| crate::claims::read(&dir));
        let host = Host::new(&self.settings.host_root);
        let (kept, left) = crate::claims::within(claim.as_ref(), &host, registry, &names);
        if !left.is_empty() {
            tracing::info!(
                "{} left out of the container: not devices its sandbox holds (kubelet's allocation)",
                kata_gpu_plan::sandbox::allocated::list(&left)
            );
        }
        kept
    }

    fn handle(&self, mut request: CreateTaskRequest) -> Result<CreateTaskRequest, String> {
        let config_json = Path::new(&request.bundle).join("config.json");
        let mut spec = OciSpec::load(&config_json)
            .map_err(|e| format!("cannot read {}: {e}", config_json.display()))?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let container_type = annotations.get(CONTAINER_TYPE).map(String::as_str);
        let registry = Registry::new(self.settings.registry_config());
        let names =
            parse_cdi_annotations(&annotations).map_err(|e| format!("pod annotation: {e}"))?;

        if container_type == Some("container") {
            let names = self.container_names(&annotations, &registry, names);
            if self.apply_cdi(&registry, &mut spec, &names)? {
                write_bundle_spec(&config_json, &spec)?;
            }
            // CRI on containerd 2.x sends the handler's options on every Create, and runc's
            // shim knows only its own type.
            if self.settings.downstream_kind == DownstreamKind::Runc
                && request.options.as_ref().is_some_and(is_runtime_options)
            {
                request.options = MessageField::none();
            }
            return Ok(request);
        }
        let sandbox_id = annotations
            .get(SANDBOX_ID)
            .cloned()
            .unwrap_or_else(|| request.id.clone());
        // The sandbox's devices: kubelet's allocation, or (annotation mode) the pod's own.
        let lookup = crate::pod_resources::Lookup::from_settings(&self.settings);
        let allocated =
            crate::pod_resources::sandbox_devices(&lookup, &mut spec, &registry, &sandbox_id)?;
        if container_type != Some("sandbox") && self.apply_cdi(&registry, &mut spec, &names)? {
            write_bundle_spec(&config_json, &spec)?;
        }

        let base_path = self.settings.base_config_path(self.profile);
        let base_text = fs::read_to_string(&base_path).map_err(|e| {
            format!(
                "cannot read the base Kata config {}: {e}; install the artifacts (kata-gpu artifacts install) or set base_config in the shim settings",
                base_path.display()
            )
        })?;
        let host = Host::new(&self.settings.host_root);
        let base = KataValues::from_config(&base_text);
        let policy = self.settings.policy();
        let planned = plan(&PlanInput {
            profile: self.profile,
            oci: &spec,
            registry: &registry,
            host: &host,
            base: &base,
            policy: &policy,
            sandbox_id: Some(&sandbox_id),
        })
        .map_err(|e| e.to_string())?;
        let rendered = kata_gpu_configs::render::render(&base_text, &base_path, &planned.overrides)
            .map_err(|e| {
                format!(
                    "cannot render the Kata config from {}: {e}",
                    base_path.display()
                )
            })?;
        let dir = self.sandbox_dir(&sandbox_id)?;
        // One device, one live sandbox: claimed by PCI address, whatever name asked for it.
        let claim = crate::claims::Claim {
            namespace: self.namespace.clone(),
            sandbox: sandbox_id.clone(),
            pod: crate::pod_resources::pod_of(&annotations)
                .map(|(ns, name)| format!("{ns}/{name}")),
            devices: planned.devices.iter().map(|d| d.bdf.to_string()).collect(),
        };
        crate::claims::claim(&self.settings.state_dir, &dir, &claim).map_err(|e| e.to_string())?;
        let config_path = dir.join("configuration.toml");
        write_private(&config_path, &rendered.text)
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let plan_json = serde_json::to_string_pretty(&planned.view()).unwrap_or_default();
        write_private(&dir.join("plan.json"), &plan_json).map_err(|e| {
            format!(
                "cannot write the plan beside {}: {e}",
                config_path.display()
            )
        })?;

        if allocated {
            // Kata cold-plugs what the sandbox's annotations name: the planned set.
            write_bundle_spec(&config_json, &spec)?;
        }

        let options = request.options.as_ref().cloned();
        let ours = runtime_options(&config_path.display().to_string())
            .map_err(|e| format!("cannot encode the runtime options: {e}"))?;
        request.options = match (self.settings.downstream_kind, options) {
            // Kata: our options, or theirs with the path replaced.
            (kind, None) if kind.reads_kata_options() => MessageField::some(Any {
                type_url: RUNTIME_OPTIONS.to_owned(),
                value: ours,
                ..Any::default()
            }),
            (kind, Some(any)) if kind.reads_kata_options() && is_runtime_options(&any) => {
                MessageField::some(Any {
                    type_url: any.type_url.clone(),
                    value: ours,
                    ..Any::default()
                })
            }
            // runc reads only its own options type; Kata's would make it panic.
            (DownstreamKind::Runc, Some(any)) if is_runtime_options(&any) => MessageField::none(),
            (_, other) => other
                .map(MessageField::some)
                .unwrap_or_else(MessageField::none),
        };
        Ok(request)
    }
}

/// ` (pod NAMESPACE/NAME)` from a bundle's spec annotations, or nothing where the spec
/// cannot be read or names no pod (a `ctr run`).
fn pod_words(bundle: &str) -> String {
    let Ok(spec) = OciSpec::load(Path::new(bundle).join("config.json")) else {
        return String::new();
    };
    let annotations = spec.annotations().clone().unwrap_or_default();
    crate::pod_resources::pod_of(&annotations)
        .map(|(ns, name)| format!(" (pod={ns}/{name})"))
        .unwrap_or_default()
}

impl CreateHook for PlanHook {
    fn on_create(&self, request: CreateTaskRequest) -> Result<CreateTaskRequest, String> {
        let id = request.id.clone();
        let bundle = request.bundle.clone();
        let result = self.handle(request);
        if let Err(reason) = &result {
            // kubelet shows the reason in `kubectl describe pod`; the node's log keeps it
            // with the sandbox (every line's prefix) and the pod it was for.
            tracing::error!("Create of {id} refused{}: {reason}", pod_words(&bundle));
            // A failed Create leaves nothing behind.
            if let Ok(dir) = self.sandbox_dir(&id) {
                let _ = fs::remove_dir_all(dir);
            }
        }
        result
    }

    fn on_deleted(&self, id: &str) {
        let dir = match self.sandbox_dir(id) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!("nothing removed for a deleted task: {e}");
                return;
            }
        };
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
        // The namespace's directory stays, even empty: removed here, it could vanish between
        // another sandbox's making it and making its own directory in it, failing that
        // sandbox's Create. `kata-gpu uninstall` removes the state directory whole.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_hook(state: &Path, namespace: &str) -> PlanHook {
        PlanHook {
            profile: Profile::Snp,
            settings: Settings {
                state_dir: state.to_path_buf(),
                ..Settings::default()
            },
            namespace: namespace.to_owned(),
        }
    }

    #[test]
    fn only_plain_ids_name_a_state_directory() {
        let state = tempfile::tempdir().expect("tempdir");
        let s = plan_hook(state.path(), "k8s.io");
        assert_eq!(
            s.sandbox_dir("pod-1.a_b").expect("a plain id"),
            state.path().join("k8s.io/pod-1.a_b")
        );
        for bad in ["", ".", "..", "a/b", "../x", "a..b", "x\0y", "/abs"] {
            assert!(s.sandbox_dir(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "..", "a/b"] {
            assert!(
                plan_hook(state.path(), bad).sandbox_dir("pod").is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn deleting_a_task_with_a_bad_id_removes_nothing() {
        let state = tempfile::tempdir().expect("tempdir");
        let s = plan_hook(state.path(), "default");
        for pod in ["pod-a", "pod-b"] {
            let dir = state.path().join("default").join(pod);
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("configuration.toml"), "x").expect("config");
        }
        for bad in ["", ".", "..", "pod-a/..", "../default"] {
            s.on_deleted(bad);
        }
        for pod in ["pod-a", "pod-b"] {
            assert!(state
                .path()
                .join("default")
                .join(pod)
                .join("configuration.toml")
                .is_file());
        }
        s.on_deleted("pod-a");
        assert!(!state.path().join("default/pod-a").exists());
        assert!(state
            .path()
            .join("default/pod-b/configuration.toml")
            .is_file());
    }

    #[test]
    fn a_namespace_named_like_the_sockets_directory_keeps_no_state_there() {
        let state = tempfile::tempdir().expect("tempdir");
        let err = plan_hook(state.path(), "s")
            .sandbox_dir("pod")
            .expect_err("refused");
        assert!(
            err.starts_with("containerd namespace \"s\" cannot keep sandbox state: "),
            "{err}"
        );
        assert!(plan_hook(state.path(), "s2").sandbox_dir("pod").is_ok());
    }

    #[test]
    fn the_last_sandbox_of_a_namespace_leaves_its_directory_for_the_next() {
        // Removing the namespace's directory when it empties raced another sandbox's
        // Create, which makes that directory and then its own in it (issue 25 item 5).
        let state = tempfile::tempdir().expect("tempdir");
        let s = plan_hook(state.path(), "k8s.io");
        let only = state.path().join("k8s.io/pod-a");
        fs::create_dir_all(&only).expect("mkdir");
        fs::write(only.join("configuration.toml"), "x").expect("config");
        s.on_deleted("pod-a");
        assert!(!only.exists());
        assert!(state.path().join("k8s.io").is_dir());
        // The next sandbox's state goes where it always did.
        write_private(&state.path().join("k8s.io/pod-b/plan.json"), "{}").expect("written");
    }

    #[test]
    fn a_runc_downstream_never_gets_kata_options_on_a_pods_container() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut hook = plan_hook(state.path(), "k8s.io");
        hook.settings.downstream_kind = DownstreamKind::Runc;
        let bundle = state.path().join("bundle");
        fs::create_dir_all(&bundle).expect("bundle");
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": { CONTAINER_TYPE: "container", SANDBOX_ID: "pod" },
        });
        fs::write(bundle.join("config.json"), spec.to_string()).expect("config.json");
        // What `kata-gpu containerd register` configures, as CRI 2.x passes it.
        let request = CreateTaskRequest {
            id: "app".into(),
            bundle: bundle.display().to_string(),
            options: MessageField::some(Any {
                type_url: format!("type.googleapis.com/{RUNTIME_OPTIONS}"),
                value: runtime_options("/etc/kata/configuration.toml").expect("encode"),
                ..Any::default()
            }),
            ..Default::default()
        };
        let forwarded = hook.on_create(request).expect("the container's Create");
        assert!(forwarded.options.is_none(), "{:?}", forwarded.options);
    }

    #[test]
    fn runtime_options_encode_as_protobuf_field_2() {
        assert_eq!(
            runtime_options("/x").expect("encode"),
            [0x12, 0x02, b'/', b'x']
        );
        let long = "a".repeat(200);
        let bytes = runtime_options(&long).expect("encode");
        assert_eq!(&bytes[..3], &[0x12, 0xc8, 0x01]);
        assert_eq!(bytes.len(), 3 + 200);
    }
}
