//! Generated protobuf and gRPC code. These types stop at the handler boundary: domain and storage code
//! never sees them.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("auth.v1");

        /// Encoded `FileDescriptorSet` of `auth/v1/auth.proto` and its imports, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/auth_v1_descriptor.bin"));
    }
}

pub mod posts {
    pub mod v1 {
        tonic::include_proto!("posts.v1");

        /// Encoded `FileDescriptorSet` of `posts/v1/posts.proto` and its imports, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/posts_v1_descriptor.bin"));
    }
}
