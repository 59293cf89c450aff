//! Install benchmark: a 512 MiB artifact set (kernel 16 MiB, image 476 MiB, firmware
//! 4 MiB, QEMU 16 MiB, base config, SBOM) of incompressible bytes, from a directory.
//!
//! In one criterion group, so that every figure comes from the same process and run:
//!
//! - `floor_cp_r`: `cp -r` of the set's directory, the floor the goal is measured against;
//! - `floor_fs_copy`: `std::fs::copy` of each file (copy_file_range, no hashing);
//! - `floor_cp_r_fsync`: `cp -r`, then `sync FILE…` of the copies (fsync each), what a
//!   durable copy costs;
//! - `sha256_only`: read and SHA-256 every file on one thread, writing nothing: what
//!   hashing alone costs on this CPU (install overlaps it with the copy, so it can come
//!   close to this figure but no implementation of copy + SHA-256 gets far below it);
//! - `install`: `kata_gpu_artifacts::install` into an empty store: scan, copy while hashing
//!   (one read pass), fsync of every file, manifest, config rewrite, rename and switch.
//!
//! Every iteration writes to a fresh directory that is removed outside the timed region.
//! Goal: `install` within 1.5x of `floor_cp_r`. Run with
//! `cargo bench -p kata-gpu-artifacts --bench install`; BENCH_DIR picks the scratch
//! directory (default: the system temp dir; the same file system for every figure).

use std::fs;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use kata_gpu_artifacts::{install, InstallOptions, Store, StoreConfig};

const MIB: usize = 1 << 20;

const CONFIG: &str = r#"# base config
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinuz.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
firmware = "/opt/kata/share/ovmf/AMDSEV.fd"
valid_hypervisor_paths = ["/opt/kata/bin/qemu-system-x86_64"]
[runtime]
static_sandbox_resource_mgmt = true
"#;

/// Writes `len` pseudo-random (incompressible) bytes to `path`.
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut f = fs::File::create(path).expect("create");
    let mut x = seed | 1;
    let mut buf = vec![0u8; MIB];
    for _ in 0..len / MIB {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).expect("write");
    }
}

/// The 512 MiB set's directory.
fn make_set(dir: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dir).expect("mkdir");
    random_file(
        &dir.join("vmlinuz-6.12.8-nvidia-gpu-confidential"),
        16 * MIB,
        1,
    );
    random_file(&dir.join("kata-containers-confidential.img"), 476 * MIB, 2);
    random_file(&dir.join("AMDSEV.fd"), 4 * MIB, 3);
    random_file(&dir.join("qemu-system-x86_64"), 16 * MIB, 4);
    fs::write(dir.join("configuration-qemu-nvidia-gpu-snp.toml"), CONFIG).expect("write");
    fs::write(dir.join("sbom.spdx.json"), "{}").expect("write");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// Times `op` on a fresh scratch directory per iteration; removes it untimed.
fn timed(scratch: &Path, iters: u64, op: &dyn Fn(&Path)) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let dest = scratch.join(format!("dest-{i}"));
        let start = Instant::now();
        op(&dest);
        total += start.elapsed();
        fs::remove_dir_all(&dest).expect("clean up");
    }
    total
}

fn bench(c: &mut Criterion) {
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let work = tempfile::tempdir_in(base).expect("scratch dir");
    let src = work.path().join("set");
    let files = make_set(&src);
    let scratch = work.path().join("scratch");
    fs::create_dir_all(&scratch).expect("mkdir");

    let mut g = c.benchmark_group("install_512MiB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));

    g.bench_function("floor_cp_r", |b| {
        b.iter_custom(|n| {
            timed(&scratch, n, &|dest| {
                let ok = Command::new("cp").arg("-r").arg(&src).arg(dest).status();
                assert!(ok.expect("cp").success());
            })
        })
    });
    g.bench_function("floor_fs_copy", |b| {
        b.iter_custom(|n| {
            timed(&scratch, n, &|dest| {
                fs::create_dir(dest).expect("mkdir");
                for f in &files {
                    let name = f.file_name().expect("file name");
                    black_box(fs::copy(f, dest.join(name)).expect("copy"));
                }
            })
        })
    });
    g.bench_function("floor_cp_r_fsync", |b| {
        b.iter_custom(|n| {
            timed(&scratch, n, &|dest| {
                let ok = Command::new("cp").arg("-r").arg(&src).arg(dest).status();
                assert!(ok.expect("cp").success());
                let copies = files
                    .iter()
                    .map(|f| dest.join(f.file_name().expect("name")));
                let ok = Command::new("sync").args(copies).status();
                assert!(ok.expect("sync").success());
            })
        })
    });
    g.bench_function("sha256_only", |b| {
        b.iter(|| {
            for f in &files {
                let file = fs::File::open(f).expect("open");
                black_box(kata_gpu_artifacts::digest::hash_reader(file).expect("hash"));
            }
        })
    });
    g.bench_function("install", |b| {
        b.iter_custom(|n| {
            timed(&scratch, n, &|dest| {
                let store = Store::new(StoreConfig::under_root(dest), "bench").expect("store");
                let r = install(&store, &src, &InstallOptions::default()).expect("install");
                black_box(r);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
