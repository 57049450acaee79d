//! Polls config directories by content hash and feeds the [`ConfigIndex`].
//!
//! Polling rather than inotify: it works the same on every filesystem (bind mounts, ConfigMap
//! volumes whose symlinks are swapped, network filesystems) and a few hundred milliseconds of
//! delay is well within what a config change needs.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_config::{ConfigError, Document, Outcome, ResourceRef, parse_documents};

use super::{ConfigIndex, ConfigSnapshot};

/// Bounds what one directory or file can cost per poll.
const MAX_FILES_PER_DIR: usize = 10_000;
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("config directory {}: {source}", path.display())]
pub struct MissingDir {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The directories being watched, what was last read from each file, and the index.
#[derive(Debug)]
pub struct DirStore {
    dirs: Vec<PathBuf>,
    index: ConfigIndex,
    /// Content hash per file as last applied; a file is re-parsed only when it changes.
    hashes: BTreeMap<String, u64>,
    /// The last error per unreadable directory, so it is logged once rather than every poll.
    dir_errors: BTreeMap<PathBuf, String>,
    tx: watch::Sender<Arc<ConfigSnapshot>>,
}

impl DirStore {
    /// Checks every directory exists (a typo must fail at startup, not serve an empty mesh).
    pub fn new(dirs: Vec<PathBuf>) -> Result<Self, MissingDir> {
        for dir in &dirs {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(MissingDir {
                        path: dir.clone(),
                        source: std::io::Error::other("not a directory"),
                    });
                }
                Err(source) => {
                    return Err(MissingDir {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        let (tx, _) = watch::channel(Arc::new(ConfigSnapshot::default()));
        Ok(Self {
            dirs,
            index: ConfigIndex::default(),
            hashes: BTreeMap::new(),
            dir_errors: BTreeMap::new(),
            tx,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.tx.subscribe()
    }

    /// Reads every directory once; publishes a snapshot if anything changed.
    pub async fn poll(&mut self) {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut changed = false;
        for dir in self.dirs.clone() {
            let files = match list(&dir).await {
                Ok(files) => {
                    if self.dir_errors.remove(&dir).is_some() {
                        tracing::info!(dir = %dir.display(), "config directory readable again");
                    }
                    files
                }
                Err(err) => {
                    let msg = err.to_string();
                    if self.dir_errors.insert(dir.clone(), msg.clone()).as_ref() != Some(&msg) {
                        tracing::warn!(dir = %dir.display(), error = %msg, "cannot list config directory; keeping its files in force");
                    }
                    // Keep what came from this directory rather than emptying the mesh.
                    let parent = Some(dir.as_path());
                    let kept = self
                        .index
                        .files()
                        .filter(|f| Path::new(f).parent() == parent);
                    seen.extend(kept.map(str::to_string));
                    continue;
                }
            };
            for path in files {
                let name = path.to_string_lossy().into_owned();
                seen.insert(name.clone());
                changed |= self.read_file(&path, &name).await;
            }
        }
        let gone: Vec<String> = self
            .index
            .files()
            .filter(|f| !seen.contains(*f))
            .map(str::to_string)
            .collect();
        for file in gone {
            tracing::info!(file, "config file removed");
            self.index.remove(&file);
            self.hashes.remove(&file);
            changed = true;
        }
        if changed {
            self.tx.send_replace(Arc::new(self.index.snapshot()));
        }
    }

    /// Returns whether the index changed.
    async fn read_file(&mut self, path: &Path, name: &str) -> bool {
        let bytes = match read_bounded(path).await {
            Ok(bytes) => bytes,
            // Removed between listing and reading: the next poll sees it gone.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return false,
            Err(err) => {
                let message = format!("cannot read: {err}");
                let already = self.index_error(name) == Some(&message);
                if !already {
                    tracing::warn!(file = name, error = %err, "cannot read config file; keeping its last good version");
                    self.index.apply(name, vec![read_error(name, message)]);
                    self.hashes.remove(name);
                }
                return !already;
            }
        };
        let hash = content_hash(&bytes);
        if self.hashes.get(name) == Some(&hash) {
            return false;
        }
        let documents = parse_documents(name, &bytes);
        let errors = documents.iter().filter(|d| d.is_invalid()).count();
        if errors > 0 {
            for doc in &documents {
                if let Outcome::Invalid(err) = &doc.outcome {
                    tracing::warn!(error = %err, "invalid config; the file's last good version stays in force");
                }
            }
        } else {
            tracing::info!(
                file = name,
                documents = documents.len(),
                "config file applied"
            );
        }
        self.index.apply(name, documents);
        self.hashes.insert(name.to_string(), hash);
        true
    }

    fn index_error(&self, name: &str) -> Option<&String> {
        self.index.read_error(name)
    }

    /// Polls every `interval` until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => self.poll().await,
            }
        }
    }
}

fn read_error(file: &str, message: String) -> Document {
    let resource = ResourceRef {
        document: 0,
        kind: None,
        namespace: None,
        name: None,
    };
    let err = ConfigError {
        file: file.to_string(),
        resource: resource.clone(),
        field: None,
        message,
    };
    Document {
        resource,
        outcome: Outcome::Invalid(err),
    }
}

fn content_hash(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: stable within the process, which is all a change check needs.
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Config files of a directory: `*.yaml`, `*.yml`, `*.json`, not hidden (editors' swap and
/// temp files start with '.'), not descending into subdirectories, sorted by name.
async fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        if files.len() >= MAX_FILES_PER_DIR {
            tracing::warn!(dir = %dir.display(), "more than {MAX_FILES_PER_DIR} files; the rest are not read");
            break;
        }
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let wanted = !name.starts_with('.')
            && [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext));
        // `metadata` follows symlinks, as Kubernetes ConfigMap volumes need.
        if wanted && tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

async fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let len = tokio::fs::metadata(path).await?.len();
    if len > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "file is {len} bytes, more than the {MAX_FILE_BYTES} a config file may be"
        )));
    }
    tokio::fs::read(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";

    #[tokio::test]
    async fn polls_files_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DirStore::new(vec![dir.path().to_path_buf()]).unwrap();
        let mut rx = store.subscribe();
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(dir.path().join(".a.yaml.swp"), "garbage: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "garbage: [").unwrap();
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        store.poll().await;
        assert!(rx.has_changed().unwrap());
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap.services.len(), 1);
        assert_eq!(
            snap.resources.len(),
            1,
            "hidden, non-YAML and directories are skipped"
        );

        store.poll().await;
        assert!(
            !rx.has_changed().unwrap(),
            "unchanged content publishes nothing"
        );

        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        store.poll().await;
        assert!(rx.borrow_and_update().services.is_empty());
    }

    #[test]
    fn missing_directory_is_named() {
        let err = DirStore::new(vec!["/nonexistent/trellis".into()]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config directory /nonexistent/trellis: "),
            "{err}"
        );
    }
}
