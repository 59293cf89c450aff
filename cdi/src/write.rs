//! Writing specs atomically: a reader sees the old file or the new one, never half of one.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::model::Spec;
use crate::validate::validate_spec;

/// The file name a spec of `kind` gets in a spec directory: `vendor-class.yaml`.
pub fn spec_file_name(kind: &str) -> String {
    format!("{}.yaml", kind.replace('/', "-"))
}

pub use kata_gpu_fsutil::write_atomic;

/// Validates `spec` and writes it as YAML to `path`, atomically. Nothing is written when
/// the spec is invalid.
pub fn write_spec_file(path: &Path, spec: &Spec) -> Result<(), Error> {
    validate_spec(spec, Some(path))?;
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let yaml = serde_yaml_ng::to_string(spec)
        .map_err(|e| write_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    write_atomic(path, yaml.as_bytes(), 0o644).map_err(write_err)
}

/// Writes `spec` into `dir` as `vendor-class.yaml` (see [`write_spec_file`]); returns the path.
pub fn write_spec(dir: &Path, spec: &Spec) -> Result<PathBuf, Error> {
    let path = dir.join(spec_file_name(&spec.kind));
    write_spec_file(&path, spec)?;
    Ok(path)
}
