//! Every fuzz target over its corpus (`fuzz/corpus/<target>`) and a few thousand
//! deterministic mutations of it: the short run of each target the ordinary test suite
//! (and so CI) does. Long runs with libFuzzer's coverage guidance: `scripts/fuzz`.

use std::path::{Path, PathBuf};

/// Mutations per corpus file.
const MUTATIONS: usize = 400;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// A small xorshift generator: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }
}

/// Flip, overwrite, insert, delete or duplicate a few bytes; cut or splice.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, b'/', b'.', b'"', b'\n', 0x7f, 0x80][rng.below(8)];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next().to_le_bytes()[0]);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i + 1);
                v.drain(i..i + n);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below((v.len() - i).min(64) + 1);
                let chunk: Vec<u8> = v[i..i + n].to_vec();
                v.splice(i..i, chunk);
            }
            5 => v.truncate(rng.below(v.len() + 1)),
            _ if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            _ => {}
        }
    }
    v
}

fn exercise(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ target.len() as u64);
    for (path, bytes) in &files {
        run(bytes);
        for _ in 0..MUTATIONS {
            let other = &files[rng.below(files.len())].1;
            let input = mutate(&mut rng, bytes, other);
            let outcome = std::panic::catch_unwind(|| run(&input));
            if outcome.is_err() {
                let saved = std::env::temp_dir().join(format!("skiff-fuzz-{target}-crash"));
                std::fs::write(&saved, &input).unwrap();
                panic!(
                    "{target}: a mutation of {} crashed it; input saved at {}",
                    path.display(),
                    saved.display()
                );
            }
        }
    }
}

#[test]
fn unpack_tar() {
    exercise("unpack_tar", skiff_fuzzing::unpack_tar::run);
}

#[test]
fn image_json() {
    exercise("image_json", skiff_fuzzing::image_json::run);
}

#[test]
fn hosts_toml() {
    exercise("hosts_toml", skiff_fuzzing::hosts_toml::run);
}

#[test]
fn spdy_frames() {
    exercise("spdy_frames", skiff_fuzzing::spdy_frames::run);
}

#[test]
fn shim_protocol() {
    exercise("shim_protocol", skiff_fuzzing::shim_protocol::run);
}

#[test]
fn oci_spec() {
    exercise("oci_spec", skiff_fuzzing::oci_spec::run);
}
