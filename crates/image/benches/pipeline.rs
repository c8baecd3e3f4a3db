//! Throughput of the pull pipeline's stages: sha256, gzip and zstd
//! decompression, and layer unpacking on io_uring vs blocking syscalls.
//!
//! Data is the testkit's pseudo-random stream (16 letters, ~2:1
//! compressible). Unpacking writes into a tmpfs (`/dev/shm`) unless
//! `SKIFF_BENCH_DIR` names another directory, so the figures measure the
//! unpacker and the syscall path rather than a disk.
//!
//! `cargo bench -p skiff-image --bench pipeline` (a few minutes);
//! `cargo bench -p skiff-image --no-run` only builds.

use std::hint::black_box;
use std::io::{self, Read, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest as _, Sha256};
use skiff_image::unpack::{IoEngine, UnpackOptions, unpack};
use skiff_testkit::image::{Compression, PseudoRandom, big_files_layer, many_small_files_layer};

const DATA_LEN: usize = 16 << 20;
const SMALL_FILES: usize = 5000;
const SMALL_SIZE: u64 = 2 << 10;
const BIG_FILES: usize = 4;
const BIG_SIZE: u64 = 16 << 20;

fn data() -> Vec<u8> {
    let mut buf = vec![0; DATA_LEN];
    PseudoRandom::new(42).read_exact(&mut buf).unwrap();
    buf
}

fn configure() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

fn hashing(c: &mut Criterion) {
    let data = data();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sha256", |b| {
        b.iter(|| black_box(Sha256::digest(black_box(&data))));
    });
    g.finish();
}

fn decompression(c: &mut Criterion) {
    let data = data();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&data).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&data[..], 3).unwrap();
    let mut g = c.benchmark_group("decompress");
    // Throughput in uncompressed bytes: what the tar reader receives.
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("gzip", |b| {
        b.iter(|| {
            let mut d = flate2::read::GzDecoder::new(&gz[..]);
            io::copy(&mut d, &mut io::sink()).unwrap()
        });
    });
    g.bench_function("zstd", |b| {
        b.iter(|| {
            let mut d = zstd::stream::read::Decoder::new(&zst[..]).unwrap();
            io::copy(&mut d, &mut io::sink()).unwrap()
        });
    });
    g.finish();
    eprintln!(
        "compressed 16 MiB: gzip {} bytes, zstd {} bytes",
        gz.len(),
        zst.len()
    );
}

/// Where layers are unpacked: `SKIFF_BENCH_DIR`, else `/dev/shm`, else
/// the temp dir.
fn bench_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKIFF_BENCH_DIR") {
        return dir.into();
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn unpack_into_fresh_dir(c: &mut Criterion, group: &str, tar: &[u8], throughput: Throughput) {
    let base = bench_dir();
    let mut g = c.benchmark_group(group);
    g.throughput(throughput);
    for (name, engine) in [
        ("io_uring", IoEngine::Uring),
        ("blocking", IoEngine::Blocking),
    ] {
        let opts = UnpackOptions {
            engine,
            ..UnpackOptions::default()
        };
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir_in(&base).unwrap();
                    let root = dir.path().join("root");
                    std::fs::create_dir(&root).unwrap();
                    (dir, root)
                },
                // The temp dir is returned, so removing it is not timed.
                |(dir, root)| {
                    unpack(tar, &root, &opts).unwrap();
                    dir
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

fn unpacking(c: &mut Criterion) {
    eprintln!("unpacking into {}", bench_dir().display());
    let small = many_small_files_layer(SMALL_FILES, SMALL_SIZE, Compression::None).tar();
    unpack_into_fresh_dir(
        c,
        "unpack_small_files",
        &small,
        Throughput::Elements(SMALL_FILES as u64),
    );
    drop(small);
    let big = big_files_layer(BIG_FILES, BIG_SIZE, Compression::None).tar();
    unpack_into_fresh_dir(
        c,
        "unpack_big_files",
        &big,
        Throughput::Bytes(BIG_FILES as u64 * BIG_SIZE),
    );
}

criterion_group! {
    name = pipeline;
    config = configure();
    targets = hashing, decompression, unpacking
}
criterion_main!(pipeline);
