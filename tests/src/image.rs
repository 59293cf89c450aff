//! OCI image archives built by the tests: a busybox root file system as one layer, in an
//! OCI image layout tar that `ctr images import` takes, so that CRI pods need no registry.

use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!("sha256:{}", kata_gpu_fsutil::hex(&hash))
}

fn append(archive: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    archive.append_data(&mut header, path, bytes)
}

/// Writes `dest` (an OCI layout tar) holding one image named `name` (e.g.
/// `docker.io/library/kata-gpu-pause:test`) whose only layer is `rootfs`, and whose
/// command is `cmd`.
pub fn write_oci_archive(rootfs: &Path, name: &str, cmd: &[&str], dest: &Path) -> io::Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs)?;
    let layer = layer.into_inner()?;
    let layer_digest = digest(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    })
    .to_string();
    let config_digest = digest(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len() }],
    })
    .to_string();
    let manifest_digest = digest(manifest.as_bytes());
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag },
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    })
    .to_string();
    let mut archive = tar::Builder::new(Vec::new());
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append(&mut archive, "index.json", index.as_bytes())?;
    for (d, bytes) in [
        (&layer_digest, &layer[..]),
        (&config_digest, config.as_bytes()),
        (&manifest_digest, manifest.as_bytes()),
    ] {
        append(
            &mut archive,
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            bytes,
        )?;
    }
    std::fs::write(dest, archive.into_inner()?)
}
