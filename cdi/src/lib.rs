//! Container Device Interface (CDI) specs, read with suspicion.
//!
//! CDI spec files decide which host device nodes, mounts and hooks end up in a container,
//! and the requests for them come from pod annotations. This crate parses specs of
//! versions 0.3.0 to 1.1.0 (JSON and YAML), enforces every rule of the specification (and a
//! few stricter ones of ours, listed in the crate's README), keeps a registry over the spec
//! directories, and injects devices into an OCI runtime spec all-or-nothing.
//!
//! ```
//! use cdi::{Registry, RegistryConfig, QualifiedName};
//! # let dir = tempfile::tempdir().unwrap();
//! # std::fs::write(dir.path().join("a.yaml"), "cdiVersion: 0.5.0\nkind: nvidia.com/pgpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    env: [GPU=0]\n").unwrap();
//! let config = RegistryConfig {
//!     spec_dirs: vec![dir.path().to_path_buf()],
//!     require_root_owned: false,
//!     ..RegistryConfig::default()
//! };
//! let registry = Registry::new(config);
//! let mut oci = oci_spec::runtime::Spec::default();
//! let gpu: QualifiedName = "nvidia.com/pgpu=0".parse().unwrap();
//! registry.inject(&mut oci, &[gpu]).unwrap();
//! ```

pub mod annotations;
pub mod error;
pub mod inject;
pub mod load;
pub mod model;
pub mod name;
pub mod registry;
pub mod validate;
pub mod version;
pub mod write;

pub use annotations::{parse_cdi_annotations, AnnotationError, CDI_ANNOTATION_PREFIX};
pub use error::{one_line, Error, Format, Problem, SpecError};
pub use load::{load_spec, parse_spec, read_spec_file};
pub use model::Spec;
pub use name::{NameError, QualifiedName};
pub use registry::{InjectError, Registry, RegistryConfig};
pub use validate::validate_spec;
pub use version::SpecVersion;
pub use write::{write_spec, write_spec_file};
