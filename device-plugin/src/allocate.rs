//! Allocate's answer, as pure logic: for each container, the CDI names of its devices
//! (`cdi_devices`, read by kubelet 1.28 and later) and, for older kubelets, the VFIO device
//! nodes and the same CDI names in the annotation form (`cdi.k8s.io/<plugin>_<id>`).

use std::collections::HashMap;

use cdi::QualifiedName;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, AllocateResponse, CdiDevice, ContainerAllocateResponse, DeviceSpec,
};

use crate::inventory::Resource;

/// The plugin name in annotation keys.
pub const ANNOTATION_PLUGIN: &str = "kata-gpu-device-plugin";
/// The node every legacy VFIO group needs beside its group node.
const VFIO_CONTAINER: &str = "/dev/vfio/vfio";
/// The node every iommufd cdev needs beside itself.
const IOMMUFD: &str = "/dev/iommu";

/// Which forms Allocate answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    /// `cdi_devices` (kubelet 1.28 and later pass them to the runtime through CRI).
    pub cdi_cri: bool,
    /// The annotation form, for runtimes that read CDI requests from annotations.
    pub cdi_annotations: bool,
    /// The device nodes themselves, for kubelets and runtimes without CDI.
    pub device_specs: bool,
}

impl Default for Strategy {
    /// Every form: the plugin cannot learn kubelet's version, and the three name one set.
    fn default() -> Self {
        Self {
            cdi_cri: true,
            cdi_annotations: true,
            device_specs: true,
        }
    }
}

/// What is wrong with an Allocate request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocateError {
    /// kubelet asked for an id the plugin never advertised.
    #[error("unknown {resource} device {id:?}; this node advertises: {known}")]
    Unknown {
        /// The resource.
        resource: String,
        /// The id asked for.
        id: String,
        /// The ids advertised.
        known: String,
    },
    /// An id that cannot form a CDI name or annotation key.
    #[error("{resource} device {id:?} cannot be named in CDI: {reason}")]
    BadName {
        /// The resource.
        resource: String,
        /// The id.
        id: String,
        /// Why.
        reason: String,
    },
}

fn device_spec(path: &str) -> DeviceSpec {
    DeviceSpec {
        container_path: path.to_owned(),
        host_path: path.to_owned(),
        permissions: "rw".to_owned(),
    }
}

/// Answers `request` for `resource` in the forms `strategy` names.
pub fn allocate(
    resource: &Resource,
    request: &AllocateRequest,
    strategy: Strategy,
) -> Result<AllocateResponse, AllocateError> {
    let mut responses = Vec::with_capacity(request.container_requests.len());
    for container in &request.container_requests {
        let mut names: Vec<QualifiedName> = Vec::new();
        let mut nodes: Vec<DeviceSpec> = Vec::new();
        for id in &container.devices_ids {
            let Some(device) = resource.device(id) else {
                return Err(AllocateError::Unknown {
                    resource: resource.name.clone(),
                    id: id.clone(),
                    known: resource
                        .devices
                        .iter()
                        .map(|d| d.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let name: QualifiedName =
                resource.cdi_name(id).parse().map_err(|e: cdi::NameError| {
                    AllocateError::BadName {
                        resource: resource.name.clone(),
                        id: id.clone(),
                        reason: e.to_string(),
                    }
                })?;
            names.push(name);
            let extra = if device.node.starts_with("/dev/vfio/devices/") {
                IOMMUFD
            } else {
                VFIO_CONTAINER
            };
            for path in [extra, device.node.as_str()] {
                if !nodes.iter().any(|n| n.host_path == path) {
                    nodes.push(device_spec(path));
                }
            }
        }
        let mut out = ContainerAllocateResponse::default();
        if strategy.cdi_cri {
            out.cdi_devices = names
                .iter()
                .map(|n| CdiDevice {
                    name: n.to_string(),
                })
                .collect();
        }
        if strategy.cdi_annotations && !names.is_empty() {
            let mut annotations = std::collections::BTreeMap::new();
            let short = resource.short();
            cdi::annotations::add_cdi_annotation(
                &mut annotations,
                ANNOTATION_PLUGIN,
                short,
                &names,
            )
            .map_err(|e| AllocateError::BadName {
                resource: resource.name.clone(),
                id: container.devices_ids.join(","),
                reason: e.to_string(),
            })?;
            out.annotations = annotations.into_iter().collect::<HashMap<_, _>>();
        }
        if strategy.device_specs {
            out.devices = nodes;
        }
        responses.push(out);
    }
    Ok(AllocateResponse {
        container_responses: responses,
    })
}
