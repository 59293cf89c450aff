//! Generates the kubelet API bindings from the `.proto` files under `proto/` (needs `protoc`,
//! which `make deps` installs).

fn main() {
    let protos = [
        "proto/deviceplugin/v1beta1/api.proto",
        "proto/podresources/v1/api.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Err(e) = tonic_prost_build::configure().compile_protos(&protos, &["proto"]) {
        panic!("cannot generate the kubelet API from {protos:?}: {e} (is protoc installed? `make deps`)");
    }
}
