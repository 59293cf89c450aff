//! The node image, built without a container engine or a base distribution: `kata-gpu`,
//! the shim (under each profile's name) and exactly the shared libraries they load (as
//! `ldd` resolves them), in one layer of an OCI image layout written as a tar, which
//! `ctr images import` loads and any registry client (skopeo, crane, oras) pushes.
//!
//! An artifact set per profile may come along, at the path
//! [`kata_gpu_fsutil::layout::image_set_paths`] gives under [`ARTIFACTS_DIR`]: a directory
//! (or OCI layout) as its tree, a tarball as one file. `kata-gpu agent` installs it when
//! given no `--artifacts`.
//!
//! The same inputs give the same bytes, so the same digest: entries are sorted, owned by
//! 0:0, dated 0, and gzip carries no timestamp or name. The commit is the image's
//! `org.opencontainers.image.revision` label and annotation.

mod layer;
mod layout;
mod ldd;

use std::path::{Path, PathBuf};

use kata_gpu_plan::Profile;

pub use kata_gpu_artifacts::digest::Sha256Digest;
pub use layer::{Entry, Layer};
pub use layout::{oci_archive, ImageConfig};
pub use ldd::shared_libraries;

/// The label and annotation that carries the commit the image was built from.
pub const REVISION: &str = "org.opencontainers.image.revision";
/// Where the binaries sit in the image.
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where the artifact sets sit in the image.
pub const ARTIFACTS_DIR: &str = kata_gpu_fsutil::layout::IMAGE_SETS_DIR;

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `ldd` failed or said something we do not understand.
    #[error("ldd {binary}: {detail}")]
    Ldd {
        /// The binary.
        binary: PathBuf,
        /// What ldd said, or why it could not run.
        detail: String,
    },
    /// An input that makes no image (a path that is not absolute, a name used twice).
    #[error("{0}")]
    Invalid(String),
}

/// `Error::Io` for `path`.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What goes into the image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// The image's name as `ctr images import` records it (e.g. `ghcr.io/org/kata-gpu:v1`).
    pub name: String,
    /// The commit, for the revision label; empty leaves the label out.
    pub revision: String,
    /// The `kata-gpu` binary: the entrypoint, at `/usr/local/bin/kata-gpu`.
    pub kata_gpu: PathBuf,
    /// The shim binary, at `/usr/local/bin/<name>` for each name in `shim_names` (the first
    /// a file, the others links to it, since its name chooses its profile).
    pub shim: PathBuf,
    /// The shim's names, one per profile.
    pub shim_names: Vec<String>,
    /// The artifact set of each profile that has one: a directory, an OCI layout or a
    /// tarball (what `kata-gpu install --artifacts` takes).
    pub artifacts: Vec<(Profile, PathBuf)>,
}

/// The built image: the archive's bytes and its manifest's digest.
#[derive(Clone, Debug)]
pub struct Built {
    /// The OCI-layout tar.
    pub archive: Vec<u8>,
    /// The digest of the image manifest (what a registry reports after a push).
    pub digest: Sha256Digest,
    /// Every path in the layer, sorted.
    pub paths: Vec<String>,
}

/// Builds the image of `spec`.
pub fn build(spec: &ImageSpec) -> Result<Built, Error> {
    let Some((first, others)) = spec.shim_names.split_first() else {
        return Err(Error::Invalid("no name for the shim".into()));
    };
    let mut layer = Layer::default();
    layer.add_file(&format!("{BIN_DIR}/kata-gpu"), &spec.kata_gpu, 0o755)?;
    layer.add_file(&format!("{BIN_DIR}/{first}"), &spec.shim, 0o755)?;
    for name in others {
        layer.add(&format!("{BIN_DIR}/{name}"), Entry::Symlink(first.clone()))?;
    }
    for binary in [&spec.kata_gpu, &spec.shim] {
        for lib in shared_libraries(binary)? {
            let at = lib.display().to_string();
            if !layer.contains(&at) {
                layer.add_file(&at, &lib, 0o755)?;
            }
        }
    }
    for (profile, set) in &spec.artifacts {
        add_set(&mut layer, *profile, set)?;
    }
    // Mount points the node DaemonSet uses, and a place for temporary files.
    for dir in ["/host", "/tmp"] {
        layer.add(dir, Entry::Dir)?;
    }
    let paths = layer.paths();
    let config = ImageConfig {
        entrypoint: vec![format!("{BIN_DIR}/kata-gpu")],
        cmd: Vec::new(),
        env: vec![format!("PATH={BIN_DIR}:/usr/bin:/bin")],
        labels: if spec.revision.is_empty() {
            Vec::new()
        } else {
            vec![(REVISION.to_owned(), spec.revision.clone())]
        },
    };
    let (archive, digest) = oci_archive(&spec.name, &layer.to_tar()?, true, &config)?;
    Ok(Built {
        archive,
        digest,
        paths,
    })
}

/// Adds `profile`'s set at `source` under [`ARTIFACTS_DIR`]: a directory as its tree, a
/// file (a tarball) as `<profile>.tar`.
fn add_set(layer: &mut Layer, profile: Profile, source: &Path) -> Result<(), Error> {
    let [tree, tarball] =
        kata_gpu_fsutil::layout::image_set_paths(Path::new(ARTIFACTS_DIR), profile.name());
    if layer.contains(&tree.display().to_string()) || layer.contains(&tarball.display().to_string())
    {
        return Err(Error::Invalid(format!(
            "{}: a second artifact set for {}; give one per profile",
            source.display(),
            profile.name()
        )));
    }
    let meta = std::fs::metadata(source).map_err(io_at(source))?;
    if meta.is_dir() {
        layer.add_tree(&tree.display().to_string(), source)
    } else {
        layer.add_file(&tarball.display().to_string(), source, 0o644)
    }
}
