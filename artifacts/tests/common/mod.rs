//! Fixtures: small fake artifact sets as directories, tarballs and OCI layouts, a store
//! under a temporary host root, and snapshots of a tree to prove nothing changed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_gpu_artifacts::digest::Sha256Digest;
use kata_gpu_artifacts::{Store, StoreConfig};

pub const CLASS: &str = "kata-qemu-nvidia-gpu-snp";
pub const ROOT: &str = "/opt/nvidia-gpu-operator/artifacts/runtimeclasses";

/// A base Kata config as shipped, naming QEMU and the guest files where Kata installs them.
pub const BASE_CONFIG: &str = r#"# Copyright (c) 2024 Kata Containers
# configuration-qemu-nvidia-gpu-snp.toml

[hypervisor.qemu]
# Path to the QEMU binary
path = "/opt/kata/bin/qemu-snp-experimental"
kernel = "/opt/kata/share/kata-containers/vmlinuz-nvidia-gpu-confidential.container"
image = "/opt/kata/share/kata-containers/kata-containers-nvidia-gpu-confidential.img"
firmware = "/opt/kata/share/ovmf/AMDSEV.fd" # SNP firmware
machine_type = "q35"
confidential_guest = true
sev_snp_guest = true
valid_hypervisor_paths = ["/opt/kata/bin/qemu-snp-experimental"]

[runtime]
# no hotplug in a confidential guest
static_sandbox_resource_mgmt = true
"#;

/// One file of a fixture set.
#[derive(Clone, Debug)]
pub struct F {
    pub name: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

pub fn f(name: &str, data: impl Into<Vec<u8>>) -> F {
    F {
        name: name.into(),
        data: data.into(),
        mode: 0o644,
    }
}

/// A full set; `tag` changes the kernel's content so that two sets differ.
pub fn full_set(tag: &str) -> Vec<F> {
    vec![
        f(
            "vmlinuz-6.12.8-nvidia-gpu-confidential",
            format!("kernel {tag}"),
        ),
        f(
            "kata-containers-nvidia-gpu-confidential.img",
            vec![7u8; 300_000],
        ),
        f("AMDSEV.fd", "firmware"),
        F {
            mode: 0o755,
            ..f("qemu-system-x86_64", "#!qemu")
        },
        f("configuration-qemu-nvidia-gpu-snp.toml", BASE_CONFIG),
        f("sbom.spdx.json", "{}"),
    ]
}

/// The set without the file named `name`.
pub fn without(files: &[F], name: &str) -> Vec<F> {
    files.iter().filter(|x| x.name != name).cloned().collect()
}

/// A temporary host root with the default store layout under it.
pub struct Host {
    pub dir: tempfile::TempDir,
}

impl Host {
    pub fn new() -> Host {
        Host {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            lock_timeout: Duration::from_millis(300),
            ..StoreConfig::under_root(self.root())
        }
    }

    pub fn store(&self) -> Store {
        Store::new(self.config(), CLASS).expect("valid class")
    }

    /// The class directory on disk.
    pub fn class_dir(&self) -> PathBuf {
        self.root().join(ROOT.trim_start_matches('/')).join(CLASS)
    }

    /// A fresh directory for sources, outside the store.
    pub fn src(&self, name: &str) -> PathBuf {
        let p = self.root().join("src").join(name);
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        p
    }

    /// A per-sandbox configuration as the shim writes it.
    pub fn sandbox(&self, id: &str, text: &str) -> PathBuf {
        let dir = self.root().join("run/kata-gpu/sandboxes").join(id);
        fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("configuration.toml");
        fs::write(&p, text).expect("write");
        p
    }
}

pub fn write_dir(dir: &Path, files: &[F]) -> PathBuf {
    for x in files {
        let p = dir.join(&x.name);
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        fs::write(&p, &x.data).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(x.mode)).expect("chmod");
    }
    dir.to_path_buf()
}

/// One raw tar entry: any name, any kind, any link target (escapes included).
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
}

pub fn tar_bytes(files: &[F], extra: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for x in files {
        raw(
            &mut b,
            tar::EntryType::Regular,
            &x.name,
            "",
            &x.data,
            x.mode,
        );
    }
    for e in extra {
        match e {
            Entry::File(n, d) => raw(&mut b, tar::EntryType::Regular, n, "", d, 0o644),
            Entry::Dir(n) => raw(&mut b, tar::EntryType::Directory, n, "", b"", 0o755),
            Entry::Symlink(n, t) => raw(&mut b, tar::EntryType::Symlink, n, t, b"", 0o777),
            Entry::Hardlink(n, t) => raw(&mut b, tar::EntryType::Link, n, t, b"", 0o644),
            Entry::Fifo(n) => raw(&mut b, tar::EntryType::Fifo, n, "", b"", 0o644),
        }
    }
    b.into_inner().expect("tar in memory")
}

fn raw(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
    data: &[u8],
    mode: u32,
) {
    let mut h = tar::Header::new_gnu();
    let field = &mut h.as_old_mut().name;
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_link_name_literal(link).expect("short link");
    h.set_cksum();
    b.append(&h, data).expect("append");
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

pub fn write_tar(path: &Path, files: &[F], extra: &[Entry<'_>], gz: bool) -> PathBuf {
    let bytes = tar_bytes(files, extra);
    fs::write(path, if gz { gzip(&bytes) } else { bytes }).expect("write tar");
    path.to_path_buf()
}

/// An OCI layout the way `oras pull --oci-layout` leaves it: one blob per file with a
/// title annotation, an empty config, one manifest tagged `tag`.
pub fn write_oci(dir: &Path, files: &[F], tag: &str) -> PathBuf {
    let mut layers = Vec::new();
    for x in files {
        let d = blob(dir, &x.data);
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d.to_string(),
            "size": x.data.len(),
            "annotations": {"org.opencontainers.image.title": x.name},
        }));
    }
    add_manifest(dir, layers, tag)
}

/// Adds a manifest with `layers` (JSON descriptors) to the layout's index, tagged `tag`.
pub fn add_manifest(dir: &Path, layers: Vec<serde_json::Value>, tag: &str) -> PathBuf {
    let config = blob(dir, b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.nvidia.kata-artifacts.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.to_string(), "size": 2},
        "layers": layers,
    });
    let mbytes = serde_json::to_vec(&manifest).expect("json");
    let md = blob(dir, &mbytes);
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    index["manifests"]
        .as_array_mut()
        .expect("manifests array")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(),
            "size": mbytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("json"),
    )
    .expect("write");
    dir.to_path_buf()
}

/// Stores a blob and returns its digest.
pub fn blob(dir: &Path, data: &[u8]) -> Sha256Digest {
    let d = Sha256Digest::of(data);
    let p = dir.join("blobs/sha256").join(d.hex());
    fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
    fs::write(p, data).expect("write blob");
    d
}

/// Every path under `root` with what it is: file content digest and mode, link target, dir.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let e = e.expect("entry");
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        let meta = fs::symlink_metadata(&p).expect("meta");
        if meta.file_type().is_symlink() {
            out.insert(
                rel,
                format!("link {}", fs::read_link(&p).expect("link").display()),
            );
        } else if meta.is_dir() {
            out.insert(rel, "dir".into());
            walk(root, &p, out);
        } else {
            let data = fs::read(&p).expect("read");
            out.insert(
                rel,
                format!(
                    "file {:o} {}",
                    meta.permissions().mode() & 0o7777,
                    Sha256Digest::of(&data)
                ),
            );
        }
    }
}

/// Makes a read-only installed file writable and overwrites it.
pub fn tamper(path: &Path, data: &[u8]) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(path, data).expect("write");
}
