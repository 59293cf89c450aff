//! Why a sandbox cannot be planned. Every refusal names the device and says how to fix it,
//! because the user reads it in `kubectl describe pod`, far from the node.

use cdi::{AnnotationError, InjectError};

use crate::host::{Bdf, HostError};
use crate::profile::Profile;

/// The most devices a sandbox may have: Kata makes at most 16 root ports.
pub const MAX_DEVICES: usize = 16;

/// A refusal of the plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The pod's `cdi.k8s.io/*` annotations are malformed.
    #[error("pod annotation: {0}")]
    Annotation(#[from] AnnotationError),
    /// A requested CDI device does not resolve.
    #[error(transparent)]
    Resolve(#[from] InjectError),
    /// The host could not be read.
    #[error(transparent)]
    Host(#[from] HostError),
    /// VFIO devices are asked for but the IOMMU is off.
    #[error("the host has no IOMMU enabled, so {requested} cannot be passed through; {fix}")]
    NoIommu {
        /// The first device asked for.
        requested: String,
        /// How to turn the IOMMU on, for this CPU and command line.
        fix: String,
    },
    /// The profile's TEE is not offered by this host's KVM.
    #[error("profile {profile} needs {tee}, which this host's KVM does not offer ({file} is not Y); {fix}")]
    TeeUnavailable {
        /// The profile.
        profile: Profile,
        /// The TEE, in words.
        tee: &'static str,
        /// The sysfs parameter checked.
        file: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// A legacy group node under a confidential profile.
    #[error("{node} is a legacy VFIO group node; a confidential guest needs iommufd: request /dev/vfio/devices/vfioN instead (Linux 6.6+ with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV) and regenerate the host spec with `kata-gpu cdi generate`")]
    LegacyGroup {
        /// The node.
        node: String,
    },
    /// A function is not bound to vfio-pci.
    #[error("{bdf} ({id}) is bound to {driver}, not vfio-pci; run `kata-gpu vfio bind {bdf}` (it binds its whole IOMMU group)")]
    NotBoundToVfio {
        /// The function.
        bdf: Bdf,
        /// `vendor:device`.
        id: String,
        /// Its driver, or "no driver".
        driver: String,
    },
    /// A function whose `resource` file cannot be read: its root port cannot be sized.
    #[error("cannot read /sys/bus/pci/devices/{bdf}/resource ({reason}): without the BAR sizes of {bdf} the guest's physical address width cannot be sized, and a large BAR (an H100's 128 GiB BAR1) may not fit in the guest; check that /sys is the host's sysfs and the device is present")]
    NoResource {
        /// The function.
        bdf: Bdf,
        /// Why the file could not be read.
        reason: String,
    },
    /// A function has no IOMMU group.
    #[error("{bdf} has no IOMMU group; the IOMMU is off: {fix}")]
    NoGroup {
        /// The function.
        bdf: Bdf,
        /// How to turn the IOMMU on, for this CPU and command line.
        fix: String,
    },
    /// A group lists a function that sysfs does not have.
    #[error("IOMMU group {group} lists {bdf}, which is missing from /sys/bus/pci/devices; rescan the bus (echo 1 > /sys/bus/pci/rescan) or check the hardware")]
    MissingGroupMember {
        /// The group.
        group: u32,
        /// The missing function.
        bdf: Bdf,
    },
    /// A function bound to vfio-pci has no iommufd cdev under a confidential profile.
    #[error("{bdf} has no iommufd device (/dev/vfio/devices/vfioN); a confidential guest needs one: use Linux 6.6+ with CONFIG_VFIO_DEVICE_CDEV and rebind with `kata-gpu vfio bind {bdf}`")]
    NoCdev {
        /// The function.
        bdf: Bdf,
    },
    /// More functions than Kata has root ports.
    #[error("{count} PCI functions asked for ({list}), more than the {max} root ports Kata can create; request fewer devices")]
    TooManyDevices {
        /// How many.
        count: usize,
        /// At most this many.
        max: usize,
        /// Which, comma-separated.
        list: String,
    },
    /// A GPU not on the confidential-computing list while policy refuses such GPUs.
    #[error("{bdf} ({id}) is not a confidential-computing capable GPU (CC-capable: {capable}); use profile gpu or a CC-capable GPU")]
    NotCcCapable {
        /// The function.
        bdf: Bdf,
        /// `vendor:device`.
        id: String,
        /// The capable ids, comma-separated.
        capable: String,
    },
    /// `default_memory` asked for by the pod is out of bounds or not a number.
    #[error("pod annotation {key}={value:?}: {problem}; allowed are {min} to {max} MiB")]
    Memory {
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: &'static str,
        /// Lowest allowed.
        min: u32,
        /// Highest allowed.
        max: u32,
    },
    /// The guest cannot place every device's 64-bit BARs in the address width it can get.
    #[error("the guest needs {needed} physical address bits ({layout}) for the 64-bit BARs of {devices}, but this host gives {tee} guest at most {have} ({why}); ask for fewer GPUs or less memory in one pod")]
    AddressSpace {
        /// The devices with 64-bit BARs, comma-separated.
        devices: String,
        /// Bits needed.
        needed: u8,
        /// Bits the host gives.
        have: u8,
        /// Where `have` comes from.
        why: String,
        /// "an SEV-SNP", "a TDX" or "a".
        tee: &'static str,
        /// RAM and windows, in words.
        layout: String,
    },
    /// A legacy VFIO group whose only functions Kata skips at cold plug.
    #[error("{bdf} is an NVSwitch (class 068x) alone in IOMMU group {group}: Kata 3.30 skips such functions when it cold-plugs legacy VFIO groups and fails the sandbox with \"unsupported device type\"; expose it through iommufd (/dev/vfio/devices/vfioN, Linux 6.6+) and regenerate the host spec with `kata-gpu cdi generate`")]
    NvSwitchOnlyGroup {
        /// The group.
        group: u32,
        /// Its NVSwitch.
        bdf: Bdf,
    },
    /// A confidential sandbox with part of an NVSwitch board.
    #[error("this board has {board_gpus} GPUs and {board_switches} NVSwitches, and a confidential sandbox asks for {gpus} GPUs and {switches} NVSwitches: Hopper confidential computing gives a confidential VM either one GPU and no NVSwitch (CC mode) or every GPU and every NVSwitch (protected-PCIe mode); ask for one nvidia.com/pgpu, or for all {board_gpus} GPUs and {board_switches} NVSwitches")]
    PartialNvSwitchBoard {
        /// GPUs asked for.
        gpus: usize,
        /// NVSwitches asked for.
        switches: usize,
        /// GPUs on the board.
        board_gpus: usize,
        /// NVSwitches on the board.
        board_switches: usize,
    },
    /// A pod annotation that could steer the hypervisor outside what it may.
    #[error("pod annotation {key} is refused: {reason}")]
    RefusedAnnotation {
        /// The annotation key.
        key: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A CDI device of a kind other than ours.
    #[error("{device} is not a kata-gpu device (the sandbox takes only {kinds}); ask for GPUs and NVSwitches by those kinds")]
    ForeignKind {
        /// The CDI name.
        device: String,
        /// Our kinds, comma-separated.
        kinds: String,
    },
    /// A CDI device whose edits do more than give device nodes.
    #[error("{device} (CDI spec {spec}) brings {edits} beyond device nodes, which a VM's sandbox cannot take; regenerate the host spec with `kata-gpu cdi generate` or remove the other spec")]
    EditsBeyondNodes {
        /// The CDI name.
        device: String,
        /// The spec file.
        spec: String,
        /// What else it edits.
        edits: String,
    },
    /// A group holds one of our devices that was not asked for.
    #[error("IOMMU group {group} holds {bdf} ({id}) beside {with}, and a group passes through whole: ask for every GPU and NVSwitch of the group together, or enable ACS (or move the cards) so that each gets a group of its own")]
    SiblingNotAsked {
        /// The device not asked for.
        bdf: Bdf,
        /// `vendor:device`.
        id: String,
        /// The group.
        group: u32,
        /// The asked-for functions of the group, comma-separated.
        with: String,
    },
    /// The guest's size asked by annotation exceeds what the pod declared.
    #[error("pod annotation {key}={value:?} asks more than {of}: {bound}; {fix}")]
    AbovePodLimit {
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
        /// The bound, with its unit.
        bound: String,
        /// Which bound, in words.
        of: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// `default_vcpus` that is not a number.
    #[error("pod annotation {key}={value:?}: not a number of vCPUs; give one such as 4")]
    NotVcpus {
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
    },
    /// A device named by its PCI address whose spec node is another device's.
    #[error("{device} is {node} in {spec}, but sysfs says {node} is {actual}: the host spec was written before devices were rebound; regenerate it with `kata-gpu cdi generate` (and restart the device plugin)")]
    StaleName {
        /// The CDI name.
        device: String,
        /// The spec file.
        spec: String,
        /// The node the spec gives.
        node: String,
        /// What sysfs says the node is.
        actual: String,
    },
}
