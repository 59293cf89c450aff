//! `-info` under the real containerd 2.3.4: containerd runs `<shim> -info` before it starts
//! a shim; its log must not say that failed, and containerd's own decoder
//! (`ctr plugins inspect-runtime`) must read our answer: our name and version, the
//! downstream's OCI features.

use kata_gpu_tests::shimrig::{err, out, Downstream, Rig, RUNTIME};
use kata_gpu_tests::{available, Containerd};

#[test]
fn containerd_2_3_loads_the_proxy_runtime_info() {
    let test = "containerd_2_3_loads_the_proxy_runtime_info";
    let Some(_) = available(test, Containerd::V2_3.bin_dir()) else {
        return;
    };
    let rig = Rig::on(Containerd::V2_3, Downstream::Runc, "");

    // containerd 2.3 runs `-info` before it starts a shim, and logs it when that fails.
    let id = Rig::id("info");
    let o = rig.run(&["--rm"], &id, &["/bin/busybox", "true"]);
    assert!(o.status.success(), "ctr run: {}", err(&o));
    let log = rig.ctrd.log();
    assert!(
        !log.contains("failed to load runtime info") && !log.contains("unknown flag -info"),
        "containerd 2.3.4 could not read the proxy's runtime info:\n{log}"
    );

    // containerd's own decoder reads the answer (the runtime by its type, with the options
    // of the handler).
    let o = rig.ctr(&[
        "plugins",
        "inspect-runtime",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        "/etc/kata-gpu/none.toml",
    ]);
    assert!(o.status.success(), "inspect-runtime: {}", err(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("inspect-runtime printed no JSON ({e}): {}", out(&o)));
    assert_eq!(info["Name"], RUNTIME, "{info}");
    assert_eq!(
        info["Version"]["Version"],
        env!("CARGO_PKG_VERSION"),
        "{info}"
    );
    // The OCI features are runc's, as its shim reported them.
    assert!(
        info["Features"]["ociVersionMin"].is_string(),
        "no OCI features: {info}"
    );
    assert!(
        info["Annotations"]["io.kata-gpu.downstream"]
            .as_str()
            .is_some_and(|d| d.starts_with("io.containerd.runc.v2")),
        "{info}"
    );
}
