//! Writing a rendered configuration: a reader (Kata starting a sandbox) sees the old file or
//! the new one, never half of one.

use std::path::Path;

use crate::error::ConfigError;

/// Writes `text` to `path` through a temporary file in the same directory, fsync and
/// rename, then fsyncs the directory so that the rename survives a crash. The file is
/// readable by all (`0644`): it holds no secret, and Kata may run as another user. On error
/// the temporary file is removed and `path` is as it was.
pub fn write_rendered(path: &Path, text: &str) -> Result<(), ConfigError> {
    kata_gpu_fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| {
        ConfigError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("configuration.toml");
        write_rendered(&path, "a = 1\n").unwrap_or_else(|e| panic!("{e}"));
        write_rendered(&path, "a = 2\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read_to_string(&path).ok().as_deref(), Some("a = 2\n"));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("nope/configuration.toml");
        let e = write_rendered(&path, "a = 1\n").expect_err("should be refused");
        assert!(e
            .to_string()
            .starts_with(&format!("writing {}: ", path.display())));
        assert!(!path.exists());
    }
}
