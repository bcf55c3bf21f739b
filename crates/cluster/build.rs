//! Compiles the control plane's protobuf definitions with a vendored `protoc`, so that
//! no system package is needed.

fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored ships protoc for this platform");
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/cluster.proto"], &["proto"])
        .expect("the control plane's protobuf definitions compile");
}
