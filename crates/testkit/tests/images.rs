//! Busybox images: digests, diff_ids and contents, for every compression,
//! and the OCI image-layout tarball. Needs no privileges.

use std::collections::BTreeMap;
use std::io::Read as _;

use skiff_testkit::image::{
    BUSYBOX_APPLETS, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD, MEDIA_TYPE_OCI_MANIFEST,
};
use skiff_testkit::{
    Compression, ImageBuilder, big_files_layer, busybox_layer, many_small_files_layer,
    sha256_digest, write_oci_layout_tar,
};

/// Path → (entry type, link target, mode, uid, gid, size) of a tar.
type Listing = BTreeMap<String, (tar::EntryType, Option<String>, u32, u64, u64, u64)>;

fn list(tar_bytes: &[u8]) -> Listing {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                (
                    h.entry_type(),
                    link,
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.size().unwrap(),
                ),
            )
        })
        .collect()
}

fn decompress(compression: Compression, blob: &[u8]) -> Vec<u8> {
    // Decode independently of the crate's own helper.
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(blob),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        Compression::Zstd => out = zstd::decode_all(blob).unwrap(),
    }
    out
}

#[test]
fn busybox_layer_digests_match_content_for_every_compression() {
    let mut diff_ids = Vec::new();
    for (compression, media_type) in [
        (Compression::None, MEDIA_TYPE_OCI_LAYER),
        (Compression::Gzip, MEDIA_TYPE_OCI_LAYER_GZIP),
        (Compression::Zstd, MEDIA_TYPE_OCI_LAYER_ZSTD),
    ] {
        let layer = busybox_layer(compression).unwrap();
        assert_eq!(layer.media_type, media_type);
        assert_eq!(layer.digest, sha256_digest(&layer.blob), "{compression:?}");
        let tar = decompress(compression, &layer.blob);
        assert_eq!(layer.diff_id, sha256_digest(&tar), "{compression:?}");
        if compression == Compression::None {
            assert_eq!(layer.digest, layer.diff_id);
        } else {
            assert!(layer.blob.len() < tar.len(), "{compression:?} compresses");
        }
        diff_ids.push(layer.diff_id);
    }
    assert!(diff_ids.windows(2).all(|w| w[0] == w[1]), "{diff_ids:?}");
    assert_eq!(
        busybox_layer(Compression::Gzip).unwrap().digest,
        busybox_layer(Compression::Gzip).unwrap().digest,
        "reproducible"
    );
}

#[test]
fn busybox_layer_has_a_usable_rootfs() {
    let layer = busybox_layer(Compression::Gzip).unwrap();
    let entries = list(&decompress(Compression::Gzip, &layer.blob));

    let busybox = &entries["bin/busybox"];
    assert_eq!(busybox.0, tar::EntryType::Regular);
    assert_eq!(busybox.2, 0o755);
    assert_eq!(busybox.5, std::fs::metadata("/bin/busybox").unwrap().len());

    let sh = &entries["bin/sh"];
    assert_eq!(sh.0, tar::EntryType::Symlink);
    assert_eq!(sh.1.as_deref(), Some("busybox"));
    for applet in BUSYBOX_APPLETS {
        let e = &entries[&format!("bin/{applet}")];
        assert_eq!(
            (e.0, e.1.as_deref()),
            (tar::EntryType::Symlink, Some("busybox"))
        );
    }

    assert_eq!(entries["tmp/"].2, 0o1777);
    let home = &entries["home/skiff/"];
    assert_eq!((home.3, home.4), (1000, 1000));
    for dir in ["root/", "usr/bin/", "var/", "proc/", "sys/", "dev/", "etc/"] {
        assert_eq!(entries[dir].0, tar::EntryType::Directory, "{dir}");
    }

    let tar = decompress(Compression::Gzip, &layer.blob);
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut files = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if path.starts_with("etc/") && e.header().entry_type().is_file() {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            files.insert(path, s);
        }
    }
    assert!(files["etc/passwd"].contains("skiff:x:1000:1000:skiff:/home/skiff:/bin/sh\n"));
    assert!(files["etc/passwd"].starts_with("root:x:0:0:root:/root:/bin/sh\n"));
    assert!(files["etc/group"].contains("extra:x:2000:skiff\n"));
}

#[test]
fn image_manifest_references_every_blob() {
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let image = ImageBuilder::new()
            .layer(busybox_layer(compression).unwrap())
            .cmd(["/bin/sh"])
            .build();
        assert_eq!(image.manifest_media_type, MEDIA_TYPE_OCI_MANIFEST);
        assert_eq!(image.manifest_digest, sha256_digest(&image.manifest));
        assert_eq!(image.config_digest, sha256_digest(&image.config));
        let m: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(m["config"]["digest"], image.config_digest.as_str());
        assert_eq!(m["config"]["size"], image.config.len());
        assert_eq!(m["layers"][0]["digest"], image.layers[0].digest.as_str());
        assert_eq!(m["layers"][0]["size"], image.layers[0].blob.len());
        assert_eq!(m["layers"][0]["mediaType"], compression.oci_media_type());
        let c: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(c["os"], "linux");
        assert_eq!(c["architecture"], skiff_testkit::image::host_arch());
        assert_eq!(c["rootfs"]["diff_ids"][0], image.layers[0].diff_id.as_str());
    }
}

#[test]
fn perf_layers_have_the_requested_shape() {
    let small = many_small_files_layer(600, 100, Compression::Zstd);
    let entries = list(&small.tar());
    let files: Vec<_> = entries
        .values()
        .filter(|e| e.0 == tar::EntryType::Regular)
        .collect();
    assert_eq!(files.len(), 600);
    assert!(files.iter().all(|e| e.5 == 100));
    assert!(entries.contains_key("data/d0002/f000599"));

    let big = big_files_layer(2, 3 << 20, Compression::Gzip);
    let tar = big.tar();
    assert_eq!(big.diff_id, sha256_digest(&tar));
    let entries = list(&tar);
    assert_eq!(entries["data/big-0001"].5, 3 << 20);
    assert!(big.blob.len() < tar.len() * 2 / 3, "compressible");
    assert!(big.blob.len() > tar.len() / 4, "not trivially compressible");
}

#[test]
fn oci_layout_tar_holds_index_and_blobs() {
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .build();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("image.tar");
    write_oci_layout_tar(&image, "docker.io/library/busybox:latest", &out).unwrap();

    let bytes = std::fs::read(&out).unwrap();
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut files = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    let layout: serde_json::Value = serde_json::from_slice(&files["oci-layout"]).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MEDIA_TYPE_OCI_INDEX);
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], image.manifest_digest.as_str());
    assert_eq!(m["mediaType"], MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "docker.io/library/busybox:latest"
    );
    let blob = |digest: &str| &files[&format!("blobs/sha256/{}", &digest[7..])];
    assert_eq!(blob(&image.manifest_digest), &image.manifest);
    assert_eq!(blob(&image.config_digest), &image.config);
    assert_eq!(blob(&image.layers[0].digest), &image.layers[0].blob);
    for (path, data) in &files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/")
            && !hex.is_empty()
        {
            assert_eq!(sha256_digest(data), format!("sha256:{hex}"));
        }
    }
}
