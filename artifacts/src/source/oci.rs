//! An OCI image layout as a source: `index.json` and `blobs/sha256/<hex>`, the way
//! `oras pull --oci-layout` or `oras copy --to-oci-layout` store an artifact.
//!
//! Every blob is checked against its descriptor: the index's manifest, the manifest's config
//! and each layer. A layer with an `org.opencontainers.image.title` annotation is one file
//! of that name (ORAS pushes files that way); a tar layer (or a title with
//! `io.deis.oras.content.unpack`, an ORAS directory) contributes its entries.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{tarball, Archive, Listing, Origin, Scan};
use crate::digest::Sha256Digest;
use crate::error::{io_at, Error, Result};

const TITLE: &str = "org.opencontainers.image.title";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const UNPACK: &str = "io.deis.oras.content.unpack";
/// The most a manifest or index may weigh; real ones are a few KiB.
const MAX_JSON: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// An index or a manifest: the fields of either, all optional.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// The artifact manifest of OCI 1.1 release candidates names its files `blobs`.
    #[serde(default)]
    blobs: Vec<Descriptor>,
}

fn oci_err(file: &Path, problem: impl Into<String>) -> Error {
    Error::Oci {
        file: file.to_path_buf(),
        problem: problem.into(),
    }
}

/// Scans the layout at `root`; `wanted_ref` picks a manifest by its ref name (tag).
pub(super) fn scan(root: &Path, wanted_ref: Option<&str>) -> Result<Scan> {
    let index_path = root.join("index.json");
    let index = parse(&index_path, &read_capped(&index_path)?)?;
    let mut listing = Listing::new(root);
    let chosen = choose(&index_path, &index.manifests, wanted_ref)?;
    let manifest = load_manifest(root, &chosen, 0)?;
    let (manifest_path, doc) = manifest;
    if let Some(config) = &doc.config {
        let path = blob_path(root, &manifest_path, config)?;
        check_blob(&path, config)?;
    }
    let layers: Vec<&Descriptor> = doc.layers.iter().chain(doc.blobs.iter()).collect();
    if layers.is_empty() {
        return Err(oci_err(
            &manifest_path,
            "the manifest has no layers; push the set's files into it",
        ));
    }
    for layer in layers {
        let path = blob_path(root, &manifest_path, layer)?;
        let digest = digest_of(&manifest_path, layer)?;
        let actual = fs::metadata(&path)
            .map_err(io_at(&path, "read blob"))?
            .len();
        if actual != layer.size {
            return Err(Error::SizeMismatch {
                file: path,
                expected: layer.size,
                actual,
            });
        }
        let title = layer.annotations.get(TITLE);
        let unpack = layer.annotations.get(UNPACK).is_some_and(|v| v == "true");
        let mt = layer.media_type.as_str();
        if mt.contains("zstd") {
            return Err(oci_err(&path, format!("layer of type {mt}: zstd is not supported; push the files uncompressed or as tar+gzip")));
        }
        let is_tar = mt.ends_with(".tar") || mt.contains(".tar+") || mt.ends_with("tar.gzip");
        match title {
            Some(title) if !unpack => {
                listing.add_file(title, layer.size, false, Origin::Blob { path, digest })?;
            }
            _ if unpack || is_tar => {
                let gzip = mt.contains("gzip") || starts_with_gzip_magic(&path)?;
                tarball::scan_layer(
                    Archive {
                        path,
                        gzip,
                        descriptor: Some((digest, layer.size)),
                    },
                    &mut listing,
                )?;
            }
            _ => {
                return Err(oci_err(&path, format!(
                    "layer {} of type {mt:?} has no {TITLE} annotation and is not a tar layer; push each file with a title (oras push does)",
                    layer.digest
                )))
            }
        }
    }
    listing.finish()
}

/// Picks the one manifest of an index, by ref name when asked.
fn choose(file: &Path, manifests: &[Descriptor], wanted: Option<&str>) -> Result<Descriptor> {
    let refs: Vec<&str> = manifests
        .iter()
        .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    let picked: Vec<&Descriptor> = match wanted {
        Some(w) => manifests
            .iter()
            .filter(|d| d.annotations.get(REF_NAME).is_some_and(|r| r == w))
            .collect(),
        None => manifests.iter().collect(),
    };
    match (picked.as_slice(), wanted) {
        ([one], _) => Ok((*one).clone()),
        ([], Some(w)) => Err(oci_err(
            file,
            format!(
                "no manifest is tagged {w:?} (tags: [{}]); name one of those",
                refs.join(", ")
            ),
        )),
        ([], None) => Err(oci_err(file, "lists no manifest; pull the artifact again")),
        (many, _) => Err(oci_err(
            file,
            format!(
                "lists {} manifests; name one with --ref TAG (tags: [{}])",
                many.len(),
                refs.join(", ")
            ),
        )),
    }
}

/// Loads a manifest blob; an index found there is followed to its one manifest.
fn load_manifest(root: &Path, desc: &Descriptor, depth: u32) -> Result<(PathBuf, Document)> {
    let index_path = root.join("index.json");
    let path = blob_path(root, &index_path, desc)?;
    let bytes = read_capped(&path)?;
    check_bytes(&path, desc, &bytes)?;
    let doc = parse(&path, &bytes)?;
    let is_index = desc.media_type.contains("image.index")
        || desc.media_type.contains("manifest.list")
        || doc.media_type.contains("image.index")
        || (!doc.manifests.is_empty() && doc.layers.is_empty() && doc.blobs.is_empty());
    if !is_index {
        return Ok((path, doc));
    }
    if depth >= 3 {
        return Err(oci_err(
            &path,
            "indexes nest too deep; pull the artifact for one platform",
        ));
    }
    let next = choose(&path, &doc.manifests, None)?;
    load_manifest(root, &next, depth + 1)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Document> {
    serde_json::from_slice(bytes).map_err(|e| {
        oci_err(
            path,
            format!("not a valid OCI index or manifest ({e}); pull the artifact again"),
        )
    })
}

fn digest_of(file: &Path, desc: &Descriptor) -> Result<Sha256Digest> {
    Sha256Digest::parse_oci(&desc.digest).ok_or_else(|| {
        oci_err(file, format!("descriptor digest {:?} is not sha256:<64 lowercase hex digits>; only sha256 blobs are supported", desc.digest))
    })
}

/// `blobs/sha256/<hex>`; the digest is checked first so that it cannot name another path.
fn blob_path(root: &Path, file: &Path, desc: &Descriptor) -> Result<PathBuf> {
    let d = digest_of(file, desc)?;
    Ok(root.join("blobs").join("sha256").join(d.hex()))
}

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let f = fs::File::open(path).map_err(io_at(path, "read"))?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(path, "read"))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(oci_err(
            path,
            "is larger than 4 MiB, too large for an index or manifest; pull the artifact again",
        ));
    }
    Ok(bytes)
}

fn check_bytes(path: &Path, desc: &Descriptor, bytes: &[u8]) -> Result<()> {
    let want = digest_of(path, desc)?;
    let got = Sha256Digest::of(bytes);
    if got != want {
        return Err(Error::DigestMismatch {
            file: path.to_path_buf(),
            expected: want.to_string(),
            actual: got.to_string(),
        });
    }
    if bytes.len() as u64 != desc.size {
        return Err(Error::SizeMismatch {
            file: path.to_path_buf(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Hashes a small blob (the config) and checks it against its descriptor.
fn check_blob(path: &Path, desc: &Descriptor) -> Result<()> {
    let f = fs::File::open(path).map_err(io_at(path, "read blob"))?;
    let (size, got) = crate::digest::hash_reader(f).map_err(io_at(path, "read blob"))?;
    let want = digest_of(path, desc)?;
    if got != want {
        return Err(Error::DigestMismatch {
            file: path.to_path_buf(),
            expected: want.to_string(),
            actual: got.to_string(),
        });
    }
    if size != desc.size {
        return Err(Error::SizeMismatch {
            file: path.to_path_buf(),
            expected: desc.size,
            actual: size,
        });
    }
    Ok(())
}

fn starts_with_gzip_magic(path: &Path) -> Result<bool> {
    let mut head = [0u8; 2];
    let mut f = fs::File::open(path).map_err(io_at(path, "read blob"))?;
    let n = super::read_up_to(&mut f, &mut head).map_err(io_at(path, "read blob"))?;
    Ok(n == 2 && head == [0x1f, 0x8b])
}
