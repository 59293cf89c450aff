//! containerd config text → register → unregister: no panic on any input, and whatever
//! register accepts and changes, unregister with its record gives back byte for byte.
#![no_main]

use kata_gpu_containerd_config::{register, unregister, HandlerSpec, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = HandlerSpec::new(
        "kata-qemu-nvidia-gpu-snp",
        "io.containerd.kata-qemu-nvidia-gpu-snp.v2",
        "/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml",
    );
    let target = Target {
        file: "config.toml",
        version: None,
    };
    let Ok(done) = register(text, &spec, target) else {
        return;
    };
    if !done.changed {
        return;
    }
    let again = register(
        &done.text,
        &spec,
        Target {
            file: "config.toml",
            version: None,
        },
    )
    .expect("a registered config registers again");
    assert!(!again.changed, "register is idempotent");
    let undone = unregister(
        &done.text,
        &spec.name,
        Some(&done.record),
        Target {
            file: "config.toml",
            version: None,
        },
    )
    .expect("what register wrote, unregister takes");
    assert_eq!(
        undone.text, text,
        "unregister gives back the original bytes"
    );
});
