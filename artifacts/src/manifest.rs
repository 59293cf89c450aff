//! The manifest the store writes beside the files of every set, and the set digest that
//! names the set's directory. The digest is a pure function of the files as the source
//! ships them, so one set gives one digest whether it comes as a directory, a tarball or an
//! OCI layout.

use serde::{Deserialize, Serialize};

use crate::digest::{Hasher, Sha256Digest};
use crate::relpath::RelPath;
use crate::roles::Role;

/// The manifest's format version.
pub const FORMAT: u32 = 1;

/// What the store knows of one installed set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The set digest, `sha256:<hex>` (see [`set_digest`]).
    pub digest: String,
    /// The runtime class the set was installed for.
    pub class: String,
    /// The source it was installed from, as given.
    pub source: String,
    /// When it was installed, in nanoseconds since the Unix epoch.
    pub installed_at_ns: u64,
    /// Every installed file, sorted by path.
    pub files: Vec<FileRecord>,
}

/// One installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Its path inside the set directory.
    pub path: RelPath,
    /// Its role.
    pub role: Role,
    /// Its size in bytes, as installed.
    pub size: u64,
    /// Its SHA-256, 64 hex digits, as installed.
    pub sha256: String,
    /// For the rewritten base config: the file as the source shipped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Original>,
}

/// A file as the source shipped it, before the store rewrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    /// Its path in the source.
    pub path: RelPath,
    /// Its size.
    pub size: u64,
    /// Its SHA-256, 64 hex digits.
    pub sha256: String,
}

/// A file as the source ships it: the input of [`set_digest`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceFile {
    /// Its path in the source.
    pub path: RelPath,
    /// Its role.
    pub role: Role,
    /// Its size.
    pub size: u64,
    /// Its digest.
    pub digest: Sha256Digest,
}

/// The set digest: SHA-256 over one line `<sha256 hex> <size> <role> <path>\n` per file,
/// sorted by path, after the header line `kata-gpu-artifacts set v1\n`.
pub fn set_digest(files: &[SourceFile]) -> Sha256Digest {
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Hasher::new();
    h.update(b"kata-gpu-artifacts set v1\n");
    for f in sorted {
        h.update(format!("{} {} {} {}\n", f.digest.hex(), f.size, f.role, f.path).as_bytes());
    }
    h.finish()
}

/// The name of a set's directory: `sha256-<hex>`.
pub fn version_name(digest: &Sha256Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// The digest a set directory's name stands for, when it is one.
pub fn parse_version_name(name: &str) -> Option<Sha256Digest> {
    name.strip_prefix("sha256-")
        .and_then(Sha256Digest::from_hex)
}

impl Manifest {
    /// The manifest as pretty JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!(
                "manifest format {} is not {FORMAT}; a newer kata-gpu wrote it",
                m.format
            ));
        }
        Ok(m)
    }

    /// Refuses a manifest that does not belong in the set directory `version`: the set
    /// digest recomputed from its records (each file as the source shipped it, the base
    /// config as its `original`) must be the digest the directory is named for, and so must
    /// its `digest` field. The name is the one thing a changed manifest cannot change with it.
    pub fn check_name(&self, version: &str) -> Result<(), String> {
        let named = parse_version_name(version)
            .ok_or_else(|| format!("{version} is not a set name (sha256-<hex>)"))?;
        if self.digest != named.to_string() {
            return Err(format!(
                "names set {} but lies in {version}; reinstall the set",
                self.digest
            ));
        }
        let computed = self.recomputed_digest();
        if computed != Some(named) {
            let computed = computed.map_or("no valid digest".to_owned(), |d| d.to_string());
            return Err(format!(
                "the manifest does not match the set's name: its files hash to {computed}, not \
                 the {named} the set is named for; it was changed after install; reinstall the \
                 set from its source"
            ));
        }
        Ok(())
    }

    /// The set digest of the files as its records say the source shipped them; `None` when
    /// a record's digest is not 64 lowercase hex digits.
    fn recomputed_digest(&self) -> Option<Sha256Digest> {
        let sources = self
            .files
            .iter()
            .map(|f| {
                let (path, size, sha256) = match &f.original {
                    Some(o) => (&o.path, o.size, &o.sha256),
                    None => (&f.path, f.size, &f.sha256),
                };
                Some(SourceFile {
                    path: path.clone(),
                    role: Role::of(path),
                    size,
                    digest: Sha256Digest::from_hex(sha256)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(set_digest(&sources))
    }

    /// The total size of the installed files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The record of the file playing `role`.
    pub fn file_with(&self, role: Role) -> Option<&FileRecord> {
        self.files.iter().find(|f| f.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> SourceFile {
        let path = RelPath::parse(path).expect("valid");
        SourceFile {
            role: Role::of(&path),
            path,
            size: content.len() as u64,
            digest: Sha256Digest::of(content),
        }
    }

    #[test]
    fn the_digest_ignores_order_and_sees_every_byte() {
        let a = [file("vmlinuz-1", b"k"), file("a.img", b"i")];
        let b = [file("a.img", b"i"), file("vmlinuz-1", b"k")];
        assert_eq!(set_digest(&a), set_digest(&b));
        let c = [file("a.img", b"I"), file("vmlinuz-1", b"k")];
        assert_ne!(set_digest(&a), set_digest(&c));
        let d = [file("b.img", b"i"), file("vmlinuz-1", b"k")];
        assert_ne!(set_digest(&a), set_digest(&d));
    }

    #[test]
    fn version_names_round_trip() {
        let d = Sha256Digest::of(b"x");
        assert_eq!(parse_version_name(&version_name(&d)), Some(d));
        assert_eq!(parse_version_name("current"), None);
    }

    #[test]
    fn manifests_round_trip_and_refuse_other_formats() {
        let m = Manifest {
            format: FORMAT,
            digest: Sha256Digest::of(b"x").to_string(),
            class: "c".into(),
            source: "/src".into(),
            installed_at_ns: 1,
            files: vec![FileRecord {
                path: RelPath::parse("vmlinuz-1").expect("valid"),
                role: Role::Kernel,
                size: 1,
                sha256: Sha256Digest::of(b"k").hex(),
                original: None,
            }],
        };
        assert_eq!(Manifest::from_json(&m.to_json()), Ok(m.clone()));
        let newer = String::from_utf8_lossy(&m.to_json()).replace("\"format\": 1", "\"format\": 2");
        assert!(Manifest::from_json(newer.as_bytes())
            .expect_err("newer")
            .contains("format 2"));
        let escaping = String::from_utf8_lossy(&m.to_json()).replace("vmlinuz-1", "../vmlinuz-1");
        assert!(Manifest::from_json(escaping.as_bytes()).is_err());
    }

    /// (what is changed in a manifest that says it is set `sha256-<name>`, the refusal)
    #[test]
    fn a_manifest_must_hash_to_its_directorys_name() {
        let kernel = |content: &[u8]| FileRecord {
            path: RelPath::parse("vmlinuz-1").expect("valid"),
            role: Role::Kernel,
            size: content.len() as u64,
            sha256: Sha256Digest::of(content).hex(),
            original: None,
        };
        let digest = set_digest(&[SourceFile {
            path: RelPath::parse("vmlinuz-1").expect("valid"),
            role: Role::Kernel,
            size: 1,
            digest: Sha256Digest::of(b"k"),
        }]);
        let genuine = Manifest {
            format: FORMAT,
            digest: digest.to_string(),
            class: "c".into(),
            source: "/src".into(),
            installed_at_ns: 1,
            files: vec![kernel(b"k")],
        };
        let version = version_name(&digest);
        assert_eq!(genuine.check_name(&version), Ok(()));
        type Change = fn(&mut Manifest);
        let table: [(Change, &str); 4] = [
            (
                |m| m.files[0].sha256 = Sha256Digest::of(b"K").hex(),
                "its files hash to sha256:",
            ),
            (|m| m.files[0].size = 2, "its files hash to sha256:"),
            (
                |m| m.files[0].sha256 = "zz".into(),
                "its files hash to no valid digest",
            ),
            (
                |m| m.digest = Sha256Digest::of(b"y").to_string(),
                "but lies in sha256-",
            ),
        ];
        for (change, words) in table {
            let mut m = genuine.clone();
            change(&mut m);
            let e = m.check_name(&version).expect_err("refused");
            assert!(e.contains(words), "{e}");
            assert!(
                e.ends_with("reinstall the set from its source")
                    || e.ends_with("reinstall the set"),
                "{e}"
            );
        }
        assert!(genuine.check_name("current").is_err());
    }
}
