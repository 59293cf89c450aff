//! Writing specs atomically: a reader sees the old file or the new one, never half of one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use crate::model::Spec;
use crate::validate::validate_spec;

/// The file name a spec of `kind` gets in a spec directory: `vendor-class.yaml`.
pub fn spec_file_name(kind: &str) -> String {
    format!("{}.yaml", kind.replace('/', "-"))
}

/// Writes `bytes` to `path` through a temp file in the same directory, fsync and rename,
/// then fsyncs the directory so the rename survives a crash. The file gets `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

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
