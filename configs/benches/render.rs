//! Rendering a full-size Kata configuration (`tests/data/kata-4x-full.toml`, every section
//! and key Kata 4.x reads, with comments) for an HGX sandbox (12 root ports, memory, two
//! kernel parameters, one annotation entry removed), against a baseline measured in the
//! same run: parsing the same text with `toml_edit::DocumentMut::from_str`.
//!
//! Group `enable_annotations`: deciding which host-path annotation names each entry of an
//! `enable_annotations` list allows, for regular-expression entries (each compiled with
//! `regex`) against the baseline of as many plain-name entries (a substring test each).
//!
//! Run: `cargo bench -p kata-gpu-configs --bench render`. Goal: render under 200 µs.
//! `KATA_GPU_BENCH_CONFIG=<file>` adds the same pair for any other configuration, e.g. the
//! `configuration-qemu-nvidia-gpu-snp.toml` a Kata release installs.

use std::hint::black_box;
use std::path::Path;
use std::str::FromStr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kata_gpu_configs::annotations::HOST_PATH_ANNOTATIONS;
use kata_gpu_configs::{pattern, render, template, validate_config, Overrides};

const FULL: &str = include_str!("../tests/data/kata-4x-full.toml");

/// Plain names, as Kata's shipped lists have them: the substring fast path.
const LITERAL_ENTRIES: [&str; 6] = [
    "enable_iommu",
    "kernel_params",
    "default_vcpus",
    "default_memory",
    "cc_init_data",
    "virtio_fs_extra_args",
];

/// Regular expressions an operator might write, each compiled on every render.
const REGEX_ENTRIES: [&str; 6] = [
    "default_.*",
    "^(?:kernel_params|cc_init_data)$",
    "\\w+_path",
    "(?i)PATH",
    "^virtio_fs_(cache|cache_size)$",
    "^(a*)*(a*)*c$",
];

/// Which host-path names each entry allows, as rendering asks.
fn allowed(entries: &[&str]) -> usize {
    entries
        .iter()
        .map(|e| pattern::matching(e, &HOST_PATH_ANNOTATIONS).len())
        .sum()
}

fn hgx() -> Overrides {
    Overrides {
        pcie_root_port: Some(12),
        cold_plug_vfio: Some("root-port".into()),
        hot_plug_vfio: Some("no-port".into()),
        default_memory: Some(262_144),
        kernel_params_append: vec![
            "nvrc.smi.srs=1".into(),
            "agent.aa_kbc_params=cc_kbc::https://kbs.example.internal:8080".into(),
        ],
        cpu_features: Some("pmu=off,phys-bits=43".into()),
    }
}

fn benches(c: &mut Criterion) {
    let overrides = hgx();
    let origin = Path::new("kata-4x-full.toml");
    let mut g = c.benchmark_group("kata-4x-full");
    g.throughput(Throughput::Bytes(FULL.len() as u64));
    g.bench_function("baseline_parse", |b| {
        b.iter(|| toml_edit::DocumentMut::from_str(black_box(FULL)))
    });
    g.bench_function("render_hgx", |b| {
        b.iter(|| render(black_box(FULL), origin, black_box(&overrides)))
    });
    g.bench_function("validate_config", |b| {
        b.iter(|| validate_config(black_box(FULL), origin))
    });
    g.finish();

    let mut g = c.benchmark_group("enable_annotations");
    g.bench_function("baseline_literal_entries", |b| {
        b.iter(|| allowed(black_box(&LITERAL_ENTRIES)))
    });
    g.bench_function("regex_entries", |b| {
        b.iter(|| allowed(black_box(&REGEX_ENTRIES)))
    });
    g.finish();

    // Any other configuration, e.g. the one Kata ships, with KATA_GPU_BENCH_CONFIG=<file>.
    if let Some(path) = std::env::var_os("KATA_GPU_BENCH_CONFIG") {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut g = c.benchmark_group("external");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("baseline_parse", |b| {
            b.iter(|| toml_edit::DocumentMut::from_str(black_box(&text)))
        });
        g.bench_function("render_hgx", |b| {
            b.iter(|| render(black_box(&text), origin, black_box(&overrides)))
        });
        g.finish();
    }

    if let Ok(snp) = template("snp") {
        let mut g = c.benchmark_group("template-snp");
        g.throughput(Throughput::Bytes(snp.len() as u64));
        g.bench_function("baseline_parse", |b| {
            b.iter(|| toml_edit::DocumentMut::from_str(black_box(snp)))
        });
        g.bench_function("render_hgx", |b| {
            b.iter(|| render(black_box(snp), origin, black_box(&overrides)))
        });
        g.finish();
    }
}

criterion_group!(render_benches, benches);
criterion_main!(render_benches);
