//! skiff's image service: registry client, content store, snapshots, unpack, GC.

pub mod unpack;
