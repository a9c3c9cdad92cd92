//! Compiles `proto/` with protox (pure Rust), so a fresh clone builds with cargo alone: no system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Each proto file with the name of the descriptor set written for its service's reflection endpoint.
/// One set per service, so reflection on auth-svc lists only auth.v1 and likewise for posts-svc.
const PROTOS: &[(&str, &str)] = &[
    ("auth/v1/auth.proto", "auth_v1_descriptor.bin"),
    ("posts/v1/posts.proto", "posts_v1_descriptor.bin"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    for (file, descriptor) in PROTOS {
        // `compile` includes imported files (google/protobuf/timestamp.proto), which reflection clients need.
        let fds = protox::compile([file], ["proto"])?;
        fs::write(out_dir.join(descriptor), fds.encode_to_vec())?;
    }

    let all = protox::compile(PROTOS.iter().map(|(file, _)| file), ["proto"])?;
    tonic_prost_build::configure().compile_fds(all)?;
    Ok(())
}
