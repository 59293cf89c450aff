//! Registry benchmark: a host with 1,000 spec files of 10 devices each (10,000 devices),
//! once as YAML and once as JSON.
//!
//! In one criterion group, so that every figure comes from the same process and run:
//!
//! - `floor_read_files/<fmt>`: list the directory and read every file into memory, the
//!   least any loader must do;
//! - `parse_floor/<fmt>` (a reference, not a goal): list, read, parse and validate every
//!   file with `cdi::load_spec`, the least any loader on these parsers must do;
//! - `cold_load/<fmt>`: `Registry::new` over the directory (list, stat, read, parse,
//!   validate, index); the registry is dropped outside the timed region;
//! - `warm_resolve_8/<fmt>`: resolve 8 names on a loaded registry;
//! - `warm_inject_8/<fmt>`: inject 8 devices into a copy of a base OCI spec.
//!
//! Goals: cold load within 2x the floor, warm resolve under 50 µs. Run with
//! `make bench` or `cargo bench -p cdi --bench registry`; BENCHMARKS.md has the figures.

use std::collections::BTreeMap;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdi::model::{ContainerEdits, Device, DeviceNode, Mount, Spec};
use cdi::{Format, QualifiedName, Registry, RegistryConfig};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

/// Spec files per directory.
const FILES: usize = 1_000;
/// Devices per spec file.
const DEVICES_PER_FILE: usize = 10;
/// Major number of the VFIO character devices (`/dev/vfio/devices/vfioN`).
const VFIO_MAJOR: i64 = 511;

/// The spec of file `n`: kind `vendorN.com/gpu`, devices `vfioK` with an explicit
/// character node, one env entry and one read-only bind mount each.
fn spec(n: usize) -> Spec {
    let devices = (0..DEVICES_PER_FILE)
        .map(|j| {
            let k = n * DEVICES_PER_FILE + j;
            Device {
                name: format!("vfio{k}"),
                annotations: BTreeMap::new(),
                container_edits: ContainerEdits {
                    env: vec![format!("VENDOR{n}_VISIBLE_DEVICE_{j}=vfio{k}")],
                    device_nodes: vec![DeviceNode {
                        path: format!("/dev/vfio/devices/vfio{k}"),
                        device_type: Some("c".into()),
                        major: Some(VFIO_MAJOR),
                        minor: Some(i64::try_from(k).expect("small")),
                        permissions: Some("rw".into()),
                        ..DeviceNode::default()
                    }],
                    mounts: vec![Mount {
                        host_path: format!("/usr/share/vendor{n}/firmware/vfio{k}.bin"),
                        container_path: format!("/usr/share/vendor{n}/firmware/vfio{k}.bin"),
                        options: vec!["ro".into(), "nosuid".into(), "nodev".into(), "bind".into()],
                        mount_type: None,
                    }],
                    ..ContainerEdits::default()
                },
            }
        })
        .collect();
    Spec {
        cdi_version: "0.6.0".into(),
        kind: format!("vendor{n}.com/gpu"),
        annotations: BTreeMap::new(),
        devices,
        container_edits: ContainerEdits {
            env: vec![format!("VENDOR{n}_DRIVER=1.0.{n}")],
            device_nodes: vec![DeviceNode {
                path: "/dev/iommu".into(),
                device_type: Some("c".into()),
                major: Some(10),
                minor: Some(123),
                ..DeviceNode::default()
            }],
            ..ContainerEdits::default()
        },
    }
}

/// Writes the 1,000 files in `format` into a fresh directory.
fn host(format: Format) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("temp dir for the benchmark host");
    let dir = root.path().join("cdi");
    fs::create_dir(&dir).expect("spec dir");
    for n in 0..FILES {
        let spec = spec(n);
        let (name, bytes) = match format {
            Format::Yaml => (
                format!("vendor{n}.com-gpu.yaml"),
                serde_yaml_ng::to_string(&spec)
                    .expect("spec serializes to YAML")
                    .into_bytes(),
            ),
            Format::Json => (
                format!("vendor{n}.com-gpu.json"),
                serde_json::to_vec_pretty(&spec).expect("spec serializes to JSON"),
            ),
        };
        fs::write(dir.join(name), bytes).expect("write spec file");
    }
    (root, dir)
}

fn config(dir: &Path) -> RegistryConfig {
    RegistryConfig {
        spec_dirs: vec![dir.to_path_buf()],
        dev_root: dir.to_path_buf(),
        require_root_owned: false,
    }
}

/// The floor: list the directory and read every file.
fn read_all(dir: &Path) -> usize {
    let mut total = 0;
    for entry in fs::read_dir(dir).expect("list spec dir") {
        let path = entry.expect("dir entry").path();
        total += fs::read(&path).expect("read spec file").len();
    }
    total
}

/// Not a goal, a reference: list, read, parse and validate every file with the crate's
/// own `load_spec`, the least any loader built on these parsers must do. The specs are
/// returned so that, as for `cold_load`, freeing them is not timed.
fn read_and_load_all(dir: &Path, format: Format) -> Vec<cdi::Spec> {
    let mut specs = Vec::with_capacity(FILES);
    for entry in fs::read_dir(dir).expect("list spec dir") {
        let path = entry.expect("dir entry").path();
        let bytes = fs::read(&path).expect("read spec file");
        specs.push(cdi::load_spec(&bytes, format, &path).expect("benchmark spec loads"));
    }
    specs
}

/// 8 names spread over the host, each from a different file.
fn names() -> Vec<QualifiedName> {
    (0..8)
        .map(|i| {
            let n = i * 125 + 7;
            let k = n * DEVICES_PER_FILE + i % DEVICES_PER_FILE;
            format!("vendor{n}.com/gpu=vfio{k}")
                .parse()
                .expect("valid name")
        })
        .collect()
}

/// A base OCI spec as containerd would hand it over: the defaults plus an env and an
/// annotation.
fn base_oci() -> oci_spec::runtime::Spec {
    let mut oci = oci_spec::runtime::Spec::default();
    if let Some(process) = oci.process_mut() {
        let mut env = process.env().clone().unwrap_or_default();
        env.push("HOME=/root".into());
        process.set_env(Some(env));
    }
    oci.set_annotations(Some(
        [(
            "io.kubernetes.cri.container-type".to_owned(),
            "container".to_owned(),
        )]
        .into(),
    ));
    oci
}

fn registry_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("cdi_registry");
    for (format, label) in [(Format::Yaml, "yaml"), (Format::Json, "json")] {
        let (_root, dir) = host(format);
        let expected_devices = FILES * DEVICES_PER_FILE;

        // Check once that the host loads completely before timing anything.
        let registry = Registry::new(config(&dir));
        assert!(
            registry.skipped().is_empty(),
            "benchmark specs skipped: {:?}",
            registry.skipped()
        );
        assert_eq!(registry.devices().count(), expected_devices);
        let names = names();
        let base = base_oci();
        {
            let mut oci = base.clone();
            registry
                .inject(&mut oci, &names)
                .expect("benchmark names inject");
        }

        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        group.bench_function(format!("floor_read_files/{label}"), |b| {
            b.iter(|| black_box(read_all(black_box(&dir))));
        });
        group.bench_function(format!("parse_floor/{label}"), |b| {
            b.iter_with_large_drop(|| read_and_load_all(black_box(&dir), format));
        });
        // The registry is dropped outside the timed region: freeing 10,000 devices is not
        // part of loading them (and would add about a fifth to the figure).
        group.bench_function(format!("cold_load/{label}"), |b| {
            b.iter_with_large_drop(|| Registry::new(config(black_box(&dir))));
        });

        group
            .sample_size(50)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        group.bench_function(format!("warm_resolve_8/{label}"), |b| {
            b.iter(|| {
                let resolved = registry.resolve(black_box(&names)).expect("resolves");
                black_box(resolved.len())
            });
        });
        group.bench_function(format!("warm_inject_8/{label}"), |b| {
            b.iter_batched(
                || base.clone(),
                |mut oci| {
                    registry
                        .inject(&mut oci, black_box(&names))
                        .expect("injects");
                    oci
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, registry_benches);
criterion_main!(benches);
