//! An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) as one tar: the form
//! `ctr images import` loads and registry clients push (`skopeo copy oci-archive:…`).

use std::io::Write;

use flate2::{Compression, GzBuilder};
use serde_json::json;

use crate::{Error, Sha256Digest, REVISION};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The parts of the image config a caller chooses.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `Labels` (the revision among them is also an annotation of the manifest).
    pub labels: Vec<(String, String)>,
}

fn io(e: std::io::Error) -> Error {
    Error::Io {
        path: "image archive".into(),
        source: e,
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": Sha256Digest::of(bytes).to_string(), "size": bytes.len() })
}

/// The layout tar of one amd64/linux image named `name` (recorded as
/// `io.containerd.image.name`, its tag as the ref name) with the single layer `layer_tar`
/// (gzipped without a timestamp when `gzip`), and its manifest's digest.
pub fn oci_archive(
    name: &str,
    layer_tar: &[u8],
    gzip: bool,
    config: &ImageConfig,
) -> Result<(Vec<u8>, Sha256Digest), Error> {
    let (layer, layer_type) = if gzip {
        let mut gz = GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Vec::new(), Compression::default());
        gz.write_all(layer_tar).map_err(io)?;
        (
            gz.finish().map_err(io)?,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    } else {
        (layer_tar.to_vec(), "application/vnd.oci.image.layer.v1.tar")
    };
    let labels: serde_json::Map<_, _> = config
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut inner = json!({ "Env": config.env, "Labels": labels });
    if !config.entrypoint.is_empty() {
        inner["Entrypoint"] = json!(config.entrypoint);
    }
    if !config.cmd.is_empty() {
        inner["Cmd"] = json!(config.cmd);
    }
    let image_config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": inner,
        "rootfs": { "type": "layers", "diff_ids": [Sha256Digest::of(layer_tar).to_string()] },
    })
    .to_string();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", image_config.as_bytes()),
        "layers": [descriptor(layer_type, &layer)],
    });
    if let Some((_, rev)) = config.labels.iter().find(|(k, _)| k == REVISION) {
        manifest["annotations"] = json!({ REVISION: rev });
    }
    let manifest = manifest.to_string();
    let digest = Sha256Digest::of(manifest.as_bytes());
    let tag = name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or("latest", |(_, t)| t);
    let mut entry = descriptor(MANIFEST, manifest.as_bytes());
    entry["annotations"] =
        json!({ "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag });
    entry["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    let index = json!({ "schemaVersion": 2, "manifests": [entry] }).to_string();

    let mut tar = tar::Builder::new(Vec::new());
    let mut put = |path: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, path, bytes).map_err(io)
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    put("index.json", index.as_bytes())?;
    let mut blobs = [
        (Sha256Digest::of(&layer), &layer[..]),
        (
            Sha256Digest::of(image_config.as_bytes()),
            image_config.as_bytes(),
        ),
        (digest, manifest.as_bytes()),
    ];
    blobs.sort_by_key(|(d, _)| *d);
    for (d, bytes) in blobs {
        put(&format!("blobs/sha256/{}", d.hex()), bytes)?;
    }
    Ok((tar.into_inner().map_err(io)?, digest))
}
