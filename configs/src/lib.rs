//! Kata configuration: the templates we ship per profile and the rendering of a
//! per-sandbox `configuration.toml` from a node's base config plus the plan's overrides.
//!
//! Only a small, named set of keys is ours to change; everything else in a user's file is
//! kept byte for byte.

pub mod overrides;

pub use overrides::Overrides;
