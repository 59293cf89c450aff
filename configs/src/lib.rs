//! Kata configuration: the templates we ship per profile and the rendering of a
//! per-sandbox `configuration.toml` from a node's base config plus the plan's overrides.
//!
//! Only a small, named set of keys is ours to change ([`keys::OWNED_KEYS`], all in
//! `[hypervisor.qemu]`); everything else in a user's file is kept byte for byte.
//!
//! - [`render()`]: base text + [`Overrides`] → [`Rendered`] (text, warnings, diff of owned keys).
//! - [`validate()`] / [`validate_config`]: the rules a GPU sandbox configuration must follow,
//!   each failure naming its key (and line and column when the text is known).
//! - [`check_pod_annotations`]: the pod annotations the sandbox plan must refuse, by the
//!   profile's [`AnnotationPolicy`].
//! - [`template`] / [`template_for`]: the base configurations we ship for `snp`, `tdx` and
//!   `gpu`, for Kata's Go runtime or its Rust one ([`KataRuntime`]).
//! - [`write_rendered`]: the one side effect, an atomic write.

mod allow;
pub mod annotations;
mod cmdline;
mod edit;
pub mod error;
pub use kata_gpu_fsutil::glob;
pub mod keys;
pub mod overrides;
pub mod pattern;
pub mod render;
pub mod templates;
pub mod validate;
mod write;

pub use allow::DEFAULT_MEMORY as DEFAULT_MEMORY_ANNOTATION;
pub use annotations::{
    check_pod_annotation, check_pod_annotations, debug_kernel_param, AnnotationPolicy,
    AnnotationRefused, Refusal,
};
pub use error::{ConfigError, Location, Problem};
pub use overrides::Overrides;
pub use render::{kernel_params_line, render, DiffEntry, Rendered, Warning};
pub use templates::{
    template, template_file_name, template_file_name_for, template_for, KataRuntime, PROFILES,
};
pub use validate::{validate, validate_config};
pub use write::write_rendered;

/// The TOML editing library this crate's API speaks ([`validate()`] takes its documents).
pub use toml_edit;
