//! The storage tier (L3) of the KV cache, file backend: one file per block under its chained
//! block hash (`{hash:016x}.kv` in `--hicache-storage-dir`, format in [`format`]), written and
//! read by two threads of its own (backups, prefetches) so neither the scheduler nor the async
//! runtime waits on a disk. Writes are atomic (a temporary file renamed into place), so
//! workers sharing a directory never see half a block; a file that fails its header or
//! checksum is counted, skipped and forgotten (a later backup replaces it). The directory is
//! kept under its byte cap by deleting the least recently used files (a read refreshes a
//! file's modification time), pinned blocks' files last. The index of which blocks the directory holds is built by a
//! scan at start (so a restarted worker finds its predecessor's blocks) and refreshed by a
//! rescan every few seconds (blocks other workers wrote).

pub mod format;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use format::Reject;

use crate::metrics::StorageMetrics;
use dynamo_protocols::hashing::local_block_hash;

/// How long a request whose blocks are being prefetched waits for them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PrefetchStop {
    /// Not at all: it is admitted when its turn comes, with what has arrived by then.
    BestEffort,
    /// Until every block has arrived (or the prefetch failed).
    WaitComplete,
    /// Until every block has arrived or `base + per_1k_tokens × tokens / 1000` (at most
    /// `max`) has passed.
    Timeout {
        base: Duration,
        per_1k_tokens: Duration,
        max: Duration,
    },
}

impl PrefetchStop {
    /// SGLang's timeout policy: 2 s plus 0.1 s per thousand tokens, at most 30 s.
    pub const DEFAULT_TIMEOUT: PrefetchStop = PrefetchStop::Timeout {
        base: Duration::from_secs(2),
        per_1k_tokens: Duration::from_millis(100),
        max: Duration::from_secs(30),
    };

    /// How long a prefetch of `tokens` may hold its request (`None`: no limit).
    pub fn wait_for(self, tokens: usize) -> Option<Duration> {
        match self {
            PrefetchStop::BestEffort => Some(Duration::ZERO),
            PrefetchStop::WaitComplete => None,
            PrefetchStop::Timeout {
                base,
                per_1k_tokens,
                max,
            } => Some((base + per_1k_tokens.mul_f64(tokens as f64 / 1000.0)).min(max)),
        }
    }
}

/// `--hicache-storage-backend file` and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub dir: PathBuf,
    /// The directory's cap in bytes.
    pub max_bytes: u64,
    /// A request's blocks are prefetched when at least this many of its prompt tokens
    /// continue its cached prefix in storage (`--hicache-prefetch-threshold`).
    pub prefetch_threshold: usize,
    pub stop: PrefetchStop,
}

/// What the storage tier's threads tell the scheduler.
pub enum StoreNews {
    /// A prefetch's blocks.
    Prefetched(Prefetched),
    /// Blocks the directory now holds (sequence and local hash; the local hash is 0 for a
    /// block found by a scan) and blocks it no longer holds.
    Changed {
        stored: Vec<(u64, u64)>,
        removed: Vec<u64>,
    },
}

/// How the threads reach the scheduler.
pub type Notify = Arc<dyn Fn(StoreNews) + Send + Sync>;

/// Blocks a prefetch read, delivered in order as they are read; the last delivery has `end`.
pub struct Prefetched {
    pub id: u64,
    pub blocks: Vec<(BlockRef, Vec<u8>)>,
    pub end: Option<PrefetchEnd>,
}

/// A block asked of the storage tier: its sequence hash, its parent's, its tokens.
#[derive(Debug, Clone)]
pub struct BlockRef {
    pub hash: u64,
    pub parent: Option<u64>,
    pub tokens: Box<[u32]>,
}

/// The size of the blocks a store keeps: tokens per block, and bytes of one block's export.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub page: usize,
    pub export_bytes: usize,
}

/// How a prefetch ended on the reading thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchEnd {
    /// Every block asked for was read.
    Complete,
    /// A block was missing or rejected: the blocks before it were delivered.
    Failed,
    /// Its request went away before the reads were done.
    Cancelled,
}

struct Write {
    hash: u64,
    tokens: Box<[u32]>,
    bytes: Arc<[u8]>,
}

struct Read {
    id: u64,
    blocks: Vec<BlockRef>,
    cancel: Arc<AtomicBool>,
}

/// What the directory holds, as far as this worker knows: block hash → file size.
#[derive(Default)]
struct Index {
    files: HashMap<u64, u64>,
    bytes: u64,
}

impl Index {
    fn add(&mut self, hash: u64, size: u64) {
        if let Some(old) = self.files.insert(hash, size) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    fn forget(&mut self, hash: u64) {
        if let Some(old) = self.files.remove(&hash) {
            self.bytes -= old;
        }
    }
}

/// Shared by the scheduler's handle and the two I/O threads.
struct Shared {
    /// The largest file that can be a block of this store.
    max_file: u64,
    /// Pinned blocks: the cap deletes other files first.
    pinned: Mutex<std::collections::HashSet<u64>>,
    dir: PathBuf,
    identity: String,
    max_bytes: u64,
    index: Mutex<Index>,
    metrics: Option<StorageMetrics>,
    page: usize,
    tmp_seq: AtomicU64,
    notify: Notify,
}

/// Backups queued beyond this many are refused (counted as dropped), so a slow disk bounds
/// the memory the queue holds.
const WRITE_QUEUE: usize = 1024;
/// How often an idle thread rescans the directory.
const RESCAN: Duration = Duration::from_secs(3);
/// Temporary files older than this are left-overs of a crashed writer.
const STALE_TMP: Duration = Duration::from_secs(60);
/// Blocks per delivery of a prefetch.
const DELIVERY: usize = 8;

/// The scheduler's handle on the storage tier.
pub struct FileStore {
    shared: Arc<Shared>,
    writes: mpsc::SyncSender<Write>,
    reads: mpsc::Sender<Read>,
    pub cfg: StorageConfig,
}

impl FileStore {
    /// Open (creating) the directory, index what it holds, and start the I/O threads; what
    /// they read and what changes in the directory (the blocks found first) go to `notify`.
    pub fn open(
        cfg: StorageConfig,
        identity: String,
        block: BlockShape,
        metrics: Option<StorageMetrics>,
        notify: Notify,
    ) -> std::io::Result<Self> {
        fs::create_dir_all(&cfg.dir)?;
        // A block file's size: the header (magic, lengths, hash, checksum), the identity, the
        // tokens, one block's export; anything longer is not read into memory.
        let max_file =
            64 + identity.len() as u64 + 4 * block.page as u64 + block.export_bytes as u64;
        let page = block.page;
        let shared = Arc::new(Shared {
            max_file,
            pinned: Mutex::default(),
            dir: cfg.dir.clone(),
            identity,
            max_bytes: cfg.max_bytes,
            index: Mutex::new(Index::default()),
            metrics,
            page,
            tmp_seq: AtomicU64::new(0),
            notify,
        });
        shared.rescan(true)?;
        let (wtx, wrx) = mpsc::sync_channel(WRITE_QUEUE);
        let (rtx, rrx) = mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("hicache-backup".into())
            .spawn(move || s.backup_loop(wrx))?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("hicache-prefetch".into())
            .spawn(move || s.prefetch_loop(rrx))?;
        Ok(FileStore {
            shared,
            writes: wtx,
            reads: rtx,
            cfg,
        })
    }

    /// The directory holds block `hash` (as far as the index knows).
    pub fn contains(&self, hash: u64) -> bool {
        self.shared.index().files.contains_key(&hash)
    }

    /// Blocks and bytes the index holds.
    pub fn usage(&self) -> (usize, u64) {
        let i = self.shared.index();
        (i.files.len(), i.bytes)
    }

    /// Queue a backup of block `hash` unless the directory has it; false when the queue is
    /// full (the block is not stored).
    pub fn backup(&self, hash: u64, tokens: Box<[u32]>, bytes: Arc<[u8]>) -> bool {
        if self.contains(hash) {
            return true;
        }
        self.writes
            .try_send(Write {
                hash,
                tokens,
                bytes,
            })
            .is_ok()
    }

    /// Pin or unpin block `hash`: the cap deletes a pinned block's file only when nothing
    /// else is left to delete.
    pub fn set_pinned(&self, hash: u64, pinned: bool) {
        let mut p = self.shared.pinned.lock().unwrap_or_else(|e| e.into_inner());
        if pinned {
            p.insert(hash);
        } else {
            p.remove(&hash);
        }
    }

    /// Start reading `blocks` in order; `cancel` set stops it between blocks.
    pub fn prefetch(&self, id: u64, blocks: Vec<BlockRef>, cancel: Arc<AtomicBool>) {
        // The reading thread outlives every handle; a send fails only at shutdown.
        let _ = self.reads.send(Read { id, blocks, cancel });
    }
}

fn path_of(dir: &Path, hash: u64) -> PathBuf {
    dir.join(format!("{hash:016x}.kv"))
}

impl Shared {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory's block files as (hash, size, modified), and (`clean`) left-over
    /// temporary files removed.
    fn list(&self, clean: bool) -> std::io::Result<Vec<(u64, u64, SystemTime)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let Ok(e) = e else { continue };
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(meta) = e.metadata() else { continue };
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.ends_with(".tmp") {
                let old = modified.elapsed().is_ok_and(|a| a > STALE_TMP);
                if clean && old {
                    let _ = fs::remove_file(e.path());
                }
                continue;
            }
            let Some(hex) = name.strip_suffix(".kv") else {
                continue;
            };
            if let Ok(hash) = u64::from_str_radix(hex, 16) {
                out.push((hash, meta.len(), modified));
            }
        }
        Ok(out)
    }

    /// Rebuild the index from the directory; what appeared and disappeared is news.
    fn rescan(&self, clean: bool) -> std::io::Result<()> {
        let files = self.list(clean)?;
        let mut index = Index::default();
        for (h, size, _) in files {
            index.add(h, size);
        }
        let (stored, removed) = {
            let mut old = self.index();
            let stored: Vec<(u64, u64)> = index
                .files
                .keys()
                .filter(|h| !old.files.contains_key(h))
                .map(|&h| (h, 0))
                .collect();
            let removed: Vec<u64> = old
                .files
                .keys()
                .filter(|h| !index.files.contains_key(h))
                .copied()
                .collect();
            *old = index;
            (stored, removed)
        };
        self.changed(stored, removed);
        self.publish_usage();
        Ok(())
    }

    fn changed(&self, stored: Vec<(u64, u64)>, removed: Vec<u64>) {
        if !stored.is_empty() || !removed.is_empty() {
            (self.notify)(StoreNews::Changed { stored, removed });
        }
    }

    fn publish_usage(&self) {
        if let Some(m) = &self.metrics {
            let i = self.index();
            m.used_bytes.set(i.bytes as i64);
        }
    }

    fn backup_loop(self: Arc<Self>, rx: mpsc::Receiver<Write>) {
        loop {
            let first = match rx.recv_timeout(RESCAN) {
                Ok(w) => w,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.rescan(false);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            // Take what is queued as one batch (pages per batch, bandwidth).
            let mut batch = vec![first];
            while batch.len() < 64 {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let t0 = Instant::now();
            let (mut pages, mut bytes) = (0u64, 0u64);
            let mut stored = Vec::new();
            for Write {
                hash,
                tokens,
                bytes: b,
            } in batch
            {
                if let Some(n) = self.write(hash, &tokens, &b) {
                    pages += 1;
                    bytes += n;
                    stored.push((hash, local_block_hash(&tokens)));
                }
            }
            self.changed(stored, Vec::new());
            if let (Some(m), true) = (&self.metrics, pages > 0) {
                m.backuped_tokens.inc_by(pages * self.page as u64);
                m.backup_pgs.observe(pages as f64);
                let secs = t0.elapsed().as_secs_f64().max(1e-9);
                m.backup_bandwidth.observe(bytes as f64 / secs / 1e9);
            }
            if self.index().bytes > self.max_bytes {
                self.enforce_cap();
            }
            self.publish_usage();
        }
    }

    /// Write one block file atomically; its size, or `None` when it was not written.
    fn write(&self, hash: u64, tokens: &[u32], payload: &[u8]) -> Option<u64> {
        if self.index().files.contains_key(&hash) {
            return None;
        }
        let data = format::encode(&self.identity, hash, tokens, payload);
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{hash:016x}.{}.{n}.tmp", std::process::id()));
        let done = fs::write(&tmp, &data).and_then(|()| fs::rename(&tmp, path_of(&self.dir, hash)));
        if let Err(e) = done {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(error = %e, dir = %self.dir.display(), "storage tier: a block backup failed");
            if let Some(m) = &self.metrics {
                m.dropped
                    .with_label_values(&["storage_write_failed"])
                    .inc_by(self.page as u64);
            }
            return None;
        }
        self.index().add(hash, data.len() as u64);
        Some(data.len() as u64)
    }

    /// Delete the least recently used files until the directory is under 90 % of its cap
    /// (measured from the directory itself: other workers' files count).
    fn enforce_cap(&self) {
        let Ok(mut files) = self.list(false) else {
            return;
        };
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        // Unpinned files first, least recently used first.
        let pinned = self
            .pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        files.sort_by_key(|f| (pinned.contains(&f.0), f.2));
        let goal = self.max_bytes / 10 * 9;
        let mut removed = Vec::new();
        for (hash, size, _) in files {
            if total <= goal {
                break;
            }
            if fs::remove_file(path_of(&self.dir, hash)).is_ok() {
                removed.push(hash);
            }
            total -= size;
            self.index().forget(hash);
        }
        if let Some(m) = &self.metrics {
            m.dropped
                .with_label_values(&["storage_cap"])
                .inc_by(removed.len() as u64 * self.page as u64);
        }
        self.changed(Vec::new(), removed);
    }

    fn prefetch_loop(self: Arc<Self>, rx: mpsc::Receiver<Read>) {
        let deliver = |p| (self.notify)(StoreNews::Prefetched(p));
        while let Ok(Read { id, blocks, cancel }) = rx.recv() {
            let t0 = Instant::now();
            let mut out = Vec::new();
            let mut read_bytes = 0u64;
            let mut pages = 0u64;
            let mut end = PrefetchEnd::Complete;
            for b in blocks {
                if cancel.load(Ordering::Relaxed) {
                    end = PrefetchEnd::Cancelled;
                    break;
                }
                match self.read(b.hash, &b.tokens) {
                    Ok(payload) => {
                        read_bytes += payload.len() as u64;
                        pages += 1;
                        out.push((b, payload));
                    }
                    Err(()) => {
                        end = PrefetchEnd::Failed;
                        break;
                    }
                }
                if out.len() == DELIVERY {
                    deliver(Prefetched {
                        id,
                        blocks: std::mem::take(&mut out),
                        end: None,
                    });
                }
            }
            if let (Some(m), true) = (&self.metrics, pages > 0) {
                m.prefetched_tokens.inc_by(pages * self.page as u64);
                m.prefetch_pgs.observe(pages as f64);
                let secs = t0.elapsed().as_secs_f64().max(1e-9);
                m.prefetch_bandwidth.observe(read_bytes as f64 / secs / 1e9);
            }
            deliver(Prefetched {
                id,
                blocks: out,
                end: Some(end),
            });
        }
    }

    /// Read and check block `hash`; a rejected file is counted and forgotten.
    fn read(&self, hash: u64, tokens: &[u32]) -> Result<Vec<u8>, ()> {
        let path = path_of(&self.dir, hash);
        let data = match fs::File::open(&path).and_then(|f| {
            use std::io::Read as _;
            // Never more than a block file can be (a huge or hostile file is not read).
            let mut d = Vec::new();
            f.take(self.max_file + 1).read_to_end(&mut d)?;
            Ok(d)
        }) {
            Ok(d) if d.len() as u64 > self.max_file => return self.reject(hash, Reject::Foreign),
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.index().forget(hash);
                self.changed(Vec::new(), vec![hash]);
                return Err(());
            }
            Err(_) => return self.reject(hash, Reject::Truncated),
        };
        match format::decode(&data, &self.identity, hash, tokens) {
            Ok(p) => {
                // Recency for the cap: a block read is kept longer.
                if let Ok(f) = fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Ok(p.to_vec())
            }
            Err(r) => self.reject(hash, r),
        }
    }

    fn reject(&self, hash: u64, why: Reject) -> Result<Vec<u8>, ()> {
        tracing::warn!(
            block = format_args!("{hash:016x}"),
            reason = why.label(),
            dir = %self.dir.display(),
            "storage tier: a block file was skipped"
        );
        if let Some(m) = &self.metrics {
            m.rejected.with_label_values(&[why.label()]).inc();
        }
        self.index().forget(hash);
        self.changed(Vec::new(), vec![hash]);
        Err(())
    }
}

/// The storage identity of a model: its file (or directory) name, size and a hash of its
/// first MiB (the GGUF header and tensor table; for a directory, its config and file list),
/// followed by the KV layout. Blocks written under another identity are never read.
pub fn identity(model: &Path, layout: &dynamo_protocols::kv_transfer::KvLayout) -> String {
    use std::io::Read as _;
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut size = 0u64;
    if model.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(model)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect();
        entries.sort();
        for (n, len) in entries {
            h.update(n.to_string_lossy().as_bytes());
            h.update(&len.to_le_bytes());
            size += len;
        }
        if let Ok(c) = fs::read(model.join("config.json")) {
            h.update(&c);
        }
    } else if let Ok(f) = fs::File::open(model) {
        size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut head = Vec::with_capacity(1 << 20);
        let _ = f.take(1 << 20).read_to_end(&mut head);
        h.update(&head);
    }
    format!(
        "model={name} size={size} head={:016x} kv: {layout}",
        h.digest()
    )
}
