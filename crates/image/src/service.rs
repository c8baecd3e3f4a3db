//! The image service: pull, list, look up, remove, garbage-collect, usage.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use skiff_meta::MetaStore;
use tokio::sync::{Mutex as AsyncMutex, RwLock};

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{ImageError, Kind};
use crate::hosts;
use crate::pipeline::{self, Compression};
use crate::progress::{LayerProgress, LayerState, PullProgress, PullSnapshot};
use crate::reference::{self, Lookup};
use crate::registry::{MAX_CONFIG_BYTES, Remote, Timeouts};
use crate::snapshot::Snapshotter;
use crate::store::{self, ImageRecord, LayerRecord};
use crate::unpack::UnpackOptions;

/// How the image service is set up.
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// Persistent root (content and snapshots live below it).
    pub root: PathBuf,
    /// The `certs.d`-style hosts directory.
    pub hosts_dir: PathBuf,
    /// Registry timeouts.
    pub timeouts: Timeouts,
    /// Attempts per layer and per manifest fetch on transient failures.
    pub attempts: u32,
    /// Whether skiff runs with the privileges to chown and create device nodes.
    pub privileged: bool,
    /// Flush a layer's files to disk before recording it (off by itself on tmpfs).
    pub durable: bool,
}

impl ImagesConfig {
    /// Defaults for a root and hosts directory.
    pub fn new(root: PathBuf, hosts_dir: PathBuf) -> ImagesConfig {
        ImagesConfig {
            root,
            hosts_dir,
            timeouts: Timeouts {
                connect: Duration::from_secs(10),
                read: Duration::from_secs(30),
            },
            attempts: 3,
            privileged: rustix::process::geteuid().is_root(),
            durable: true,
        }
    }
}

/// Space used by images.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Bytes.
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Snapshots removed.
    pub snapshots: usize,
    /// Blobs removed.
    pub blobs: usize,
}

/// The image service.
pub struct Images {
    config: ImagesConfig,
    meta: Arc<MetaStore>,
    content: ContentStore,
    snapshots: Snapshotter,
    /// One lock per chain id being fetched: concurrent pulls of a layer share the work.
    layer_locks: Mutex<HashMap<Digest, Weak<AsyncMutex<()>>>>,
    /// Pulls hold it shared; GC and removal exclusively, so GC never takes a layer a pull
    /// has committed but not yet recorded.
    gc_lock: RwLock<()>,
    /// Pulls in flight, for progress reporting.
    pulls: Mutex<Vec<Arc<PullProgress>>>,
    /// A failed pull left committed layers no image references; collect them when no
    /// pull is in flight.
    gc_pending: std::sync::atomic::AtomicBool,
    /// Running totals for the metrics endpoint.
    counters: crate::counters::Counters,
}

/// Removes a pull's progress entry when the pull ends, however it ends.
struct Registered<'a> {
    images: &'a Images,
    progress: Arc<PullProgress>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut pulls = self.images.pulls.lock().unwrap_or_else(|p| p.into_inner());
        pulls.retain(|p| !Arc::ptr_eq(p, &self.progress));
    }
}

/// The node's architecture as OCI platforms name it.
pub(crate) fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

fn malformed(reference: &str, what: &'static str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Malformed {
        reference: reference.into(),
        what,
        reason: e.to_string(),
    }
}

impl Images {
    /// Open the service: stores, clean-up of interrupted work, GC of unreferenced data.
    pub fn open(config: ImagesConfig, meta: Arc<MetaStore>) -> Result<Images, ImageError> {
        let content = ContentStore::open(&config.root)?;
        let snapshots = Snapshotter::open(&config.root, config.durable)?;
        let ingests = content.clean_ingests()?;
        let temps = snapshots.clean_temps()?;
        let images = Images {
            config,
            meta,
            content,
            snapshots,
            layer_locks: Mutex::new(HashMap::new()),
            gc_lock: RwLock::new(()),
            pulls: Mutex::new(Vec::new()),
            gc_pending: std::sync::atomic::AtomicBool::new(false),
            counters: crate::counters::Counters::default(),
        };
        let gc = images.gc_locked()?;
        tracing::info!(
            ingests,
            temps,
            gc_snapshots = gc.snapshots,
            gc_blobs = gc.blobs,
            flushes_layers = images.snapshots.syncs(),
            "image store ready"
        );
        Ok(images)
    }

    /// The snapshotter (the container code mounts its mounts).
    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// The persistent root.
    pub fn root(&self) -> &std::path::Path {
        &self.config.root
    }

    /// Pull `image` with `auth`: always asks the registry, even when the image is present.
    ///
    /// A failed pull leaves nothing behind: layers it committed are collected as soon as
    /// no other pull (which might be about to record them) is in flight.
    pub async fn pull(&self, image: &str, auth: RegistryAuth) -> Result<ImageRecord, ImageError> {
        use std::sync::atomic::Ordering;
        let result = {
            let _shared = self.gc_lock.read().await;
            self.pull_locked(image, auth).await
        };
        if result.is_err() {
            self.gc_pending.store(true, Ordering::Release);
        }
        if self.gc_pending.load(Ordering::Acquire)
            && let Ok(_exclusive) = self.gc_lock.try_write()
        {
            self.gc_pending.store(false, Ordering::Release);
            match self.gc_locked() {
                Ok(gc) if gc.snapshots + gc.blobs > 0 => {
                    tracing::info!(
                        gc_snapshots = gc.snapshots,
                        gc_blobs = gc.blobs,
                        "collected what a failed pull left"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "garbage collection after a failed pull"),
            }
        }
        result
    }

    async fn pull_locked(
        &self,
        image: &str,
        auth: RegistryAuth,
    ) -> Result<ImageRecord, ImageError> {
        let r = reference::parse(image)?;
        let endpoints = hosts::endpoints(&self.config.hosts_dir, r.registry())?;
        let by_digest = r.digest().is_some();
        let mut last_err = None;
        for ep in endpoints.iter().filter(|e| {
            if by_digest {
                e.capabilities.pull
            } else {
                e.capabilities.resolve
            }
        }) {
            let remote = Remote::new(ep, &r, &auth, self.config.timeouts)?;
            match self.pull_from(&remote, &r).await {
                Ok(rec) => return Ok(rec),
                Err(e) => {
                    tracing::warn!(image, endpoint = %ep.host, error = %e, "pull from endpoint failed");
                    let stop = matches!(
                        e.kind(),
                        Kind::Internal | Kind::InvalidArgument | Kind::ResourceExhausted
                    );
                    last_err = Some(e);
                    if stop {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ImageError::Registry {
            reference: image.into(),
            endpoint: self.config.hosts_dir.display().to_string(),
            message: "no registry host with the needed capability is configured".into(),
            kind: Kind::FailedPrecondition,
        }))
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, ImageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ImageError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Err(e) if e.transient() && attempt < self.config.attempts => {
                    let backoff = Duration::from_millis(200 << attempt.min(6));
                    tracing::info!(what, attempt, error = %e, backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn pull_from(
        &self,
        remote: &Remote,
        r: &oci_client::Reference,
    ) -> Result<ImageRecord, ImageError> {
        let name = remote.name.clone();
        let stage_start = std::time::Instant::now();
        let (top_bytes, top_digest) = self.retry("manifest", || remote.manifest(None)).await?;
        let parse_err = |e: crate::parse::ParseError| match e {
            crate::parse::ParseError::Malformed { what, reason } => malformed(&name, what, reason),
            crate::parse::ParseError::Unsupported { what, value } => ImageError::Unsupported {
                reference: name.clone(),
                what,
                value,
            },
        };
        let (manifest_bytes, manifest_digest, index) = match crate::parse::top(&top_bytes, goarch())
            .map_err(parse_err)?
        {
            crate::parse::Top::Index(d) => {
                let (bytes, digest) = self.retry("manifest", || remote.manifest(Some(&d))).await?;
                (bytes, digest, Some((top_bytes, top_digest.clone())))
            }
            crate::parse::Top::Manifest => (top_bytes, top_digest.clone(), None),
        };
        let manifest = crate::parse::manifest(&manifest_bytes).map_err(parse_err)?;
        let config_bytes = self
            .retry("config", || {
                remote.small_blob(
                    &manifest.config_digest,
                    manifest.config_size,
                    MAX_CONFIG_BYTES,
                )
            })
            .await?;
        let crate::parse::Config {
            config,
            diff_ids,
            chain_ids,
        } = crate::parse::config(&config_bytes, manifest.layers.len()).map_err(parse_err)?;
        let config_digest = manifest.config_digest.clone();
        let layers: Vec<LayerRecord> = manifest
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| LayerRecord {
                digest: l.digest,
                diff_id: diff_ids[i].clone(),
                chain_id: chain_ids[i].clone(),
                media_type: l.media_type,
                size: l.size,
            })
            .collect();

        self.counters
            .stage(crate::counters::Stage::Resolve, stage_start.elapsed());
        let stage_start = std::time::Instant::now();
        // All layers at once; each one streams through its own pipeline.
        let progress =
            PullProgress::new(&name, layers.iter().map(|l| (l.digest.to_string(), l.size)));
        self.pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(progress.clone());
        let _registered = Registered {
            images: self,
            progress: progress.clone(),
        };
        let fetches = layers
            .iter()
            .zip(&progress.layers)
            .map(|(l, p)| self.layer(remote, l, p));
        let results = futures_util::future::join_all(fetches).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        self.counters
            .stage(crate::counters::Stage::Layers, stage_start.elapsed());
        let stage_start = std::time::Instant::now();

        self.content.put(&manifest_digest, &manifest_bytes)?;
        self.content.put(&config_digest, &config_bytes)?;
        if let Some((bytes, d)) = &index {
            self.content.put(d, bytes)?;
        }
        let user = config
            .config()
            .as_ref()
            .and_then(|c| c.user().clone())
            .unwrap_or_default();
        let record = ImageRecord {
            id: config_digest,
            repo_tags: reference::tag_name(r).into_iter().collect(),
            repo_digests: vec![reference::digest_name(r, &top_digest)],
            manifest: manifest_digest,
            index: index.map(|(_, d)| d),
            size: config_bytes.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>(),
            layers,
            user,
            pinned: false,
        };
        let saved = store::save(&self.meta, &record)?;
        self.counters
            .stage(crate::counters::Stage::Commit, stage_start.elapsed());
        tracing::info!(image = %name, id = %saved.id, layers = saved.layers.len(), "pulled");
        Ok(saved)
    }

    fn layer_lock(&self, chain: &Digest) -> Arc<AsyncMutex<()>> {
        let mut locks = self.layer_locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = locks.get(chain).and_then(Weak::upgrade) {
            return l;
        }
        locks.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(AsyncMutex::new(()));
        locks.insert(chain.clone(), Arc::downgrade(&l));
        l
    }

    async fn layer(
        &self,
        remote: &Remote,
        layer: &LayerRecord,
        progress: &LayerProgress,
    ) -> Result<(), ImageError> {
        let lock = self.layer_lock(&layer.chain_id);
        let _held = lock.lock().await;
        if self.snapshots.exists(&layer.chain_id) {
            tracing::debug!(layer = %layer.digest, "layer present");
            progress.set(LayerState::Present);
            self.counters.layer_done(false);
            return Ok(());
        }
        let result = self
            .retry("layer", || {
                progress.reset();
                progress.set(LayerState::Downloading);
                self.layer_once(remote, layer, progress)
            })
            .await;
        progress.set(if result.is_ok() {
            self.counters.layer_done(true);
            LayerState::Done
        } else {
            LayerState::Failed
        });
        result
    }

    /// Running totals of pull stages and layer bytes.
    pub fn counters(&self) -> crate::counters::Snapshot {
        self.counters.snapshot()
    }

    /// The pulls in flight.
    pub fn progress(&self) -> Vec<PullSnapshot> {
        self.pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| p.snapshot())
            .collect()
    }

    async fn layer_once(
        &self,
        remote: &Remote,
        layer: &LayerRecord,
        progress: &LayerProgress,
    ) -> Result<(), ImageError> {
        let compression =
            Compression::of_media_type(&layer.media_type).unwrap_or(Compression::None);
        let temp = self.snapshots.prepare(&layer.chain_id)?;
        let stream = remote.layer_stream(&layer.digest).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let dir = temp.fs();
        let opts = UnpackOptions {
            privileged: self.config.privileged,
            writeback: self.snapshots.writeback(),
            ..UnpackOptions::default()
        };
        let worker =
            tokio::task::spawn_blocking(move || pipeline::run(rx, compression, &dir, &opts));
        let mut stream = std::pin::pin!(stream);
        let mut received: u64 = 0;
        // The blob is hashed here as it arrives, beside the pipeline's threads.
        let mut blob_hash = <sha2::Sha256 as sha2::Digest>::new();
        while let Some(item) = futures_util::StreamExt::next(&mut stream).await {
            if let Ok(chunk) = &item {
                sha2::Digest::update(&mut blob_hash, chunk);
                received += chunk.len() as u64;
                progress.add(chunk.len() as u64);
                self.counters.layer_bytes(chunk.len() as u64);
                if received > layer.size {
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "the registry sent more than the {} bytes the manifest declares",
                            layer.size
                        ))))
                        .await;
                    break;
                }
            }
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        let out = worker.await.map_err(|e| ImageError::Io {
            op: "join unpack worker",
            path: temp.fs(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if let Some(msg) = out.stream_failed {
            return Err(ImageError::Registry {
                reference: remote.name.clone(),
                endpoint: remote.host.clone(),
                message: format!("downloading layer {}: {msg}", layer.digest),
                kind: Kind::Unavailable,
            });
        }
        let digest = Digest::from_hasher(blob_hash);
        if out.size != layer.size || digest != layer.digest {
            return Err(ImageError::Mismatch {
                reference: remote.name.clone(),
                what: format!("layer {} (digest, size)", layer.digest),
                expected: format!("{}, {} bytes", layer.digest, layer.size),
                actual: format!("{digest}, {} bytes", out.size),
            });
        }
        let stats = out.unpacked.map_err(|source| ImageError::Unpack {
            reference: remote.name.clone(),
            layer: layer.digest.to_string(),
            source,
        })?;
        match &out.diff_id {
            Some(d) if d == &layer.diff_id => {}
            other => {
                return Err(ImageError::Mismatch {
                    reference: remote.name.clone(),
                    what: format!("layer {} diff_id", layer.digest),
                    expected: layer.diff_id.to_string(),
                    actual: other
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "(unknown)".into()),
                });
            }
        }
        let snapshots = self.snapshots.clone();
        let chain = layer.chain_id.clone();
        tokio::task::spawn_blocking(move || snapshots.commit(temp, &chain))
            .await
            .map_err(|e| ImageError::Io {
                op: "join commit",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|e| ImageError::Store {
                reference: remote.name.clone(),
                layer: layer.digest.to_string(),
                source: Box::new(e),
            })?;
        tracing::debug!(layer = %layer.digest, entries = stats.entries, bytes = stats.bytes, "layer unpacked");
        Ok(())
    }

    /// Import the images of an OCI layout tar or a `docker save` tar at `path`.
    /// `name` overrides (or supplies) the name of a single-image archive.
    pub async fn import(
        &self,
        path: &std::path::Path,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let _shared = self.gc_lock.read().await;
        let p = path.to_path_buf();
        let (found, handle) = tokio::task::spawn_blocking(move || crate::import::scan(&p))
            .await
            .map_err(|e| ImageError::Io {
                op: "join import",
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })??;
        if name.is_some() && found.len() > 1 {
            return Err(ImageError::InvalidReference {
                reference: name.unwrap_or_default().into(),
                reason: format!(
                    "the archive holds {} images; a name fits only one",
                    found.len()
                ),
            });
        }
        let handle = Arc::new(handle);
        let mut out = Vec::new();
        for f in &found {
            let (tags, digests) = crate::import::record_names(f, name)?;
            let mut layers = Vec::new();
            for (layer, member) in &f.layers {
                let lock = self.layer_lock(&layer.chain_id);
                let _held = lock.lock().await;
                let mut layer = layer.clone();
                if !self.snapshots.exists(&layer.chain_id) {
                    let (h, s, l, m) = (
                        handle.clone(),
                        self.snapshots.clone(),
                        layer.clone(),
                        member.clone(),
                    );
                    let opts = UnpackOptions {
                        privileged: self.config.privileged,
                        writeback: self.snapshots.writeback(),
                        ..UnpackOptions::default()
                    };
                    let verify = f.verify_digests;
                    let (digest, size) = tokio::task::spawn_blocking(move || {
                        h.unpack_layer(&s, &l, &m, &opts, verify)
                    })
                    .await
                    .map_err(|e| ImageError::Io {
                        op: "join import",
                        path: path.to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                    layer.digest = digest;
                    layer.size = size;
                }
                layers.push(layer);
            }
            self.content.put(&f.manifest.1, &f.manifest.0)?;
            self.content.put(&f.config.1, &f.config.0)?;
            if let Some((bytes, d)) = &f.index {
                self.content.put(d, bytes)?;
            }
            let rec = crate::import::record(f, tags, digests, layers);
            let saved = store::save(&self.meta, &rec)?;
            tracing::info!(archive = %path.display(), id = %saved.id, tags = ?saved.repo_tags, "imported");
            out.push(saved);
        }
        Ok(out)
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        store::list(&self.meta)
    }

    /// The image a CRI image string (id, tag or digest reference) names, if present.
    pub fn resolve(&self, image: &str) -> Result<Option<ImageRecord>, ImageError> {
        let id = match reference::lookup(image)? {
            Lookup::Id(d) => Some(d),
            Lookup::Name(n) => store::by_name(&self.meta, &n)?,
        };
        match id {
            Some(id) => store::get(&self.meta, &id),
            None => Ok(None),
        }
    }

    /// The stored config of an image.
    pub fn config_json(&self, record: &ImageRecord) -> Result<Vec<u8>, ImageError> {
        self.content.get(&record.id)
    }

    /// Remove an image with all its names; an absent image is not an error.
    /// `in_use` names the containers using an image id; a used image is refused.
    pub async fn remove(
        &self,
        image: &str,
        in_use: impl Fn(&Digest) -> Vec<String>,
    ) -> Result<(), ImageError> {
        let _exclusive = self.gc_lock.write().await;
        let Some(record) = self.resolve(image)? else {
            return Ok(());
        };
        let users = in_use(&record.id);
        if !users.is_empty() {
            return Err(ImageError::InUse {
                image: record.id.to_string(),
                containers: users.join(", "),
            });
        }
        store::delete(&self.meta, &record)?;
        let gc = self.gc_locked()?;
        tracing::info!(image, id = %record.id, gc_snapshots = gc.snapshots, gc_blobs = gc.blobs, "image removed");
        Ok(())
    }

    /// Remove snapshots and blobs no image references.
    pub async fn gc(&self) -> Result<GcStats, ImageError> {
        let _exclusive = self.gc_lock.write().await;
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<GcStats, ImageError> {
        let images = store::list(&self.meta)?;
        let mut chains = HashSet::new();
        let mut blobs = HashSet::new();
        for img in &images {
            chains.extend(img.chain_ids());
            blobs.insert(img.id.clone());
            blobs.insert(img.manifest.clone());
            if let Some(i) = &img.index {
                blobs.insert(i.clone());
            }
        }
        let mut stats = GcStats::default();
        for c in self.snapshots.list()? {
            if !chains.contains(&c) {
                self.snapshots.remove(&c)?;
                stats.snapshots += 1;
            }
        }
        for b in self.content.list()? {
            if !blobs.contains(&b) {
                self.content.delete(&b)?;
                stats.blobs += 1;
            }
        }
        Ok(stats)
    }

    /// Bytes and inodes used by snapshots and blobs (walks the snapshot directories).
    pub fn usage(&self) -> Usage {
        let (bytes, files) = self.content.usage();
        let mut usage = Usage {
            bytes,
            inodes: files,
        };
        let root = self.config.root.join("snapshots");
        let mut seen = HashSet::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(m) = e.metadata() else { continue };
                use std::os::unix::fs::MetadataExt;
                if !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                usage.inodes += 1;
                usage.bytes += m.blocks() * 512;
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        usage
    }
}
