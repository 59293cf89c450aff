//! Register benchmark: a generated version-2 config of 2,000 lines (the containerd default's
//! shape: nested plugin tables with comments, 40 existing runtimes with options), in one
//! criterion group so that every figure comes from the same process and run:
//!
//! - `parse_floor` (a reference, not a goal): `toml_edit` parses the same text, the least
//!   any format-keeping edit must do;
//! - `register_new`: add our handler (parse, edit, render, and the built-in undo check that
//!   proves the edit surgical);
//! - `register_again`: the second run, which finds the handler up to date and writes
//!   nothing;
//! - `unregister`: remove it again with the record.
//!
//! Goal: `register_new` under 5 ms. Run with `cargo bench -p kata-gpu-containerd-config
//! --bench register`.

use std::fmt::Write;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_gpu_containerd_config::{register, unregister, ConfigVersion, HandlerSpec, Target};
use toml_edit::DocumentMut;

/// Lines the generated config has (at least).
const LINES: usize = 2_000;

/// A version-2 config of about `LINES` lines: a commented header, daemon sections, CRI with
/// many runtimes (each with options), and filler plugin sections.
fn config() -> String {
    let mut s = String::from(
        "# containerd config for GPU nodes\n# generated for the benchmark\n\nversion = 2\nroot = \"/var/lib/containerd\"\nstate = \"/run/containerd\"\n\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n  max_recv_message_size = 16777216\n\n[plugins]\n\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.9\"\n    enable_cdi = true\n\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n      default_runtime_name = \"runc\"\n\n      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\n",
    );
    for r in 0..40 {
        let _ = write!(
            s,
            "\n        # runtime {r}\n        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.rt{r}]\n          runtime_type = \"io.containerd.runc.v2\"\n          privileged_without_host_devices = false\n          pod_annotations = []\n          base_runtime_spec = \"\"\n\n          [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.rt{r}.options]\n            BinaryName = \"/usr/bin/runc-{r}\"\n            SystemdCgroup = true   # cgroup v2\n            NoPivotRoot = false\n"
        );
    }
    let mut p = 0;
    while s.lines().count() < LINES {
        let _ = write!(
            s,
            "\n  # plugin {p}\n  [plugins.\"io.containerd.example.v1.p{p}\"]\n    path = \"/opt/containerd/p{p}\"\n    enabled = true\n    threshold = 0.{p}\n    list = [\"a\", \"b\", 'c']\n"
        );
        p += 1;
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = config();
    assert!(text.lines().count() >= LINES);
    let spec = HandlerSpec::new(
        "kata-qemu-nvidia-gpu-snp",
        "io.containerd.kata-qemu-nvidia-gpu-snp.v2",
        "/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml",
    );
    let target = Target {
        file: "config.toml",
        version: Some(ConfigVersion::V2),
    };
    let done = register(&text, &spec, target).expect("register");
    assert!(done.changed);

    let mut g = c.benchmark_group("containerd_register_2000_lines");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("parse_floor", |b| {
        b.iter(|| black_box(black_box(&text).parse::<DocumentMut>().expect("parse")))
    });
    g.bench_function("register_new", |b| {
        b.iter(|| black_box(register(black_box(&text), &spec, target).expect("register")))
    });
    g.bench_function("register_again", |b| {
        b.iter(|| black_box(register(black_box(&done.text), &spec, target).expect("again")))
    });
    g.bench_function("unregister", |b| {
        b.iter(|| {
            black_box(
                unregister(
                    black_box(&done.text),
                    &spec.name,
                    Some(&done.record),
                    target,
                )
                .expect("unregister"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
