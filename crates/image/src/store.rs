//! Image records in the metadata store: id → record, name → id.

use serde::{Deserialize, Serialize};
use skiff_meta::{MetaStore, Table};

use crate::digest::Digest;
use crate::error::ImageError;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The compressed blob's digest.
    pub digest: Digest,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
    /// The chain id (the snapshot key).
    pub chain_id: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: the config digest.
    pub id: Digest,
    /// `registry/repo:tag` names pointing at it.
    pub repo_tags: Vec<String>,
    /// `registry/repo@digest` names pointing at it.
    pub repo_digests: Vec<String>,
    /// The platform manifest.
    pub manifest: Digest,
    /// The index it was chosen from, if any.
    pub index: Option<Digest>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of the config and the compressed layers.
    pub size: u64,
    /// The image config's `User`.
    pub user: String,
    /// Pinned images are never garbage collected by the kubelet.
    pub pinned: bool,
}

impl ImageRecord {
    /// The chain ids of its layers, bottom first.
    pub fn chain_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }
}

/// Save `record` and point each of its names at it, taking names away from other images.
pub fn save(meta: &MetaStore, record: &ImageRecord) -> Result<ImageRecord, ImageError> {
    let merged = meta.write(|tx| {
        let mut rec = tx
            .get::<ImageRecord>(Table::IMAGES, record.id.as_str())?
            .map(|mut old| {
                for t in &record.repo_tags {
                    if !old.repo_tags.contains(t) {
                        old.repo_tags.push(t.clone());
                    }
                }
                for d in &record.repo_digests {
                    if !old.repo_digests.contains(d) {
                        old.repo_digests.push(d.clone());
                    }
                }
                old.layers = record.layers.clone();
                old.manifest = record.manifest.clone();
                old.index = record.index.clone();
                old.size = record.size;
                old.user = record.user.clone();
                old
            })
            .unwrap_or_else(|| record.clone());
        rec.repo_tags.sort();
        rec.repo_digests.sort();
        for name in record.repo_tags.iter().chain(&record.repo_digests) {
            if let Some(prev) = tx.get::<String>(Table::IMAGE_NAMES, name)?
                && prev != record.id.as_str()
                && let Some(mut other) = tx.get::<ImageRecord>(Table::IMAGES, &prev)?
            {
                other.repo_tags.retain(|t| t != name);
                other.repo_digests.retain(|d| d != name);
                tx.put(Table::IMAGES, &prev, &other)?;
            }
            tx.put(Table::IMAGE_NAMES, name, &record.id.as_str())?;
        }
        tx.put(Table::IMAGES, rec.id.as_str(), &rec)?;
        Ok(rec)
    })?;
    Ok(merged)
}

/// The record of an image id.
pub fn get(meta: &MetaStore, id: &Digest) -> Result<Option<ImageRecord>, ImageError> {
    Ok(meta.get(Table::IMAGES, id.as_str())?)
}

/// The image id a name points at.
pub fn by_name(meta: &MetaStore, name: &str) -> Result<Option<Digest>, ImageError> {
    let id: Option<String> = meta.get(Table::IMAGE_NAMES, name)?;
    Ok(id.and_then(|s| Digest::parse(&s).ok()))
}

/// Every image.
pub fn list(meta: &MetaStore) -> Result<Vec<ImageRecord>, ImageError> {
    Ok(meta
        .list::<ImageRecord>(Table::IMAGES)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Delete an image and all its names in one transaction.
pub fn delete(meta: &MetaStore, record: &ImageRecord) -> Result<(), ImageError> {
    meta.write(|tx| {
        for name in record.repo_tags.iter().chain(&record.repo_digests) {
            if tx.get::<String>(Table::IMAGE_NAMES, name)?.as_deref() == Some(record.id.as_str()) {
                tx.delete(Table::IMAGE_NAMES, name)?;
            }
        }
        tx.delete(Table::IMAGES, record.id.as_str())?;
        Ok(())
    })?;
    Ok(())
}
