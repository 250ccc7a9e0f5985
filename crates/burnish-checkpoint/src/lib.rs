#![doc = include_str!("../README.md")]

mod atomic;
mod storage;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use atomic::{ReplaceError, replace_dir, staging_path};
pub use storage::{FsStorage, Storage, StorageFile};

/// The manifest format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the manifest inside a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";

/// Why a checkpoint could not be written or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file the manifest lists is not there.
    #[error("{}: missing (listed in the manifest)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file's size differs from the manifest's (a truncated or extended file).
    #[error("{}: {found} bytes, the manifest says {expected}", path.display())]
    Size {
        /// The file.
        path: PathBuf,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// A file's content differs from the manifest's SHA-256.
    #[error("{}: content does not match its SHA-256 in the manifest", path.display())]
    Hash {
        /// The file.
        path: PathBuf,
    },
    /// The manifest is unreadable or inconsistent.
    #[error("{}: {detail}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The manifest is of a format this version does not know.
    #[error("{}: format version {found}; this burnish reads version {FORMAT_VERSION}", path.display())]
    Format {
        /// The manifest.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// A file name is not a plain name inside the checkpoint.
    #[error("checkpoint file name {0:?} must be a plain file name")]
    BadName(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// What the caller says about a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInfo {
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch being trained.
    pub epoch: u64,
    /// Identifies the run (kept across resumes).
    pub run_id: String,
    /// The checkpoint this run resumed from or saved before, if any.
    pub parent: Option<String>,
    /// Hash of the run's configuration.
    pub config_hash: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format of this manifest and layout.
    pub format_version: u32,
    /// Version of burnish that wrote it.
    pub burnish_version: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch being trained.
    pub epoch: u64,
    /// The run.
    pub run_id: String,
    /// Parent checkpoint name.
    pub parent: Option<String>,
    /// Hash of the run's configuration.
    pub config_hash: String,
    /// Every file but the manifest, in write order.
    pub files: Vec<FileEntry>,
}

/// The directory name of the checkpoint at `step`.
pub fn dir_name(step: u64) -> String {
    format!("checkpoint-{step}")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("checkpoint-")?.parse().ok()
}

/// Hashes what goes through it.
struct Hashing<'a> {
    inner: &'a mut dyn Write,
    hash: Sha256,
    size: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the files of a checkpoint being saved.
pub struct CheckpointWriter<'a> {
    dir: PathBuf,
    storage: &'a dyn Storage,
    files: Vec<FileEntry>,
}

impl std::fmt::Debug for CheckpointWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("dir", &self.dir)
            .field("files", &self.files)
            .finish()
    }
}

impl CheckpointWriter<'_> {
    /// Writes the file `name` with `write`, hashing it on the way and syncing it to disk.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] naming the file; [`CheckpointError::BadName`].
    pub fn file(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), CheckpointError> {
        if name.is_empty()
            || name == MANIFEST
            || name.contains(['/', '\\'])
            || name.starts_with('.')
            || self.files.iter().any(|f| f.name == name)
        {
            return Err(CheckpointError::BadName(name.to_owned()));
        }
        let path = self.dir.join(name);
        let mut file = self.storage.create(&path).map_err(io(&path))?;
        let mut hashing = Hashing {
            inner: &mut *file,
            hash: Sha256::new(),
            size: 0,
        };
        write(&mut hashing)
            .and_then(|()| hashing.flush())
            .map_err(io(&path))?;
        let (hash, size) = (hashing.hash.finalize(), hashing.size);
        file.sync().map_err(io(&path))?;
        self.files.push(FileEntry {
            name: name.to_owned(),
            size,
            sha256: hex(&hash),
        });
        Ok(())
    }
}

/// Saves a checkpoint under `root` as `checkpoint-<step>`, atomically (see the crate docs);
/// `fill` writes its files. An existing checkpoint of the same step is replaced.
///
/// # Errors
/// Any error of `fill` or of the file system; the partial directory is removed and the
/// other checkpoints are left as they were.
pub fn save(
    root: &Path,
    info: &ManifestInfo,
    storage: &dyn Storage,
    fill: impl FnOnce(&mut CheckpointWriter<'_>) -> Result<(), CheckpointError>,
) -> Result<PathBuf, CheckpointError> {
    let target = root.join(dir_name(info.step));
    replace_dir(&target, storage, |partial| {
        write_partial(partial, info, storage, fill)
    })
    .map_err(|e| match e {
        ReplaceError::Fill(e) => e,
        ReplaceError::Io { path, source } => CheckpointError::Io { path, source },
    })?;
    Ok(target)
}

fn write_partial(
    partial: &Path,
    info: &ManifestInfo,
    storage: &dyn Storage,
    fill: impl FnOnce(&mut CheckpointWriter<'_>) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let mut writer = CheckpointWriter {
        dir: partial.to_owned(),
        storage,
        files: Vec::new(),
    };
    fill(&mut writer)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        burnish_version: env!("CARGO_PKG_VERSION").to_owned(),
        step: info.step,
        epoch: info.epoch,
        run_id: info.run_id.clone(),
        parent: info.parent.clone(),
        config_hash: info.config_hash.clone(),
        files: writer.files,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Manifest {
        path: partial.join(MANIFEST),
        detail: e.to_string(),
    })?;
    let path = partial.join(MANIFEST);
    let mut file = storage.create(&path).map_err(io(&path))?;
    file.write_all(&text)
        .and_then(|()| file.flush())
        .and_then(|()| file.sync())
        .map_err(io(&path))?;
    storage.sync_dir(partial).map_err(io(partial))
}

/// A verified checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    manifest: Manifest,
}

impl Checkpoint {
    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Path of one of its files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The bytes of one of its files, checked again against the manifest (a file changed
    /// since [`load`] is refused).
    ///
    /// # Errors
    /// [`CheckpointError::Missing`] for a name the manifest does not list; the errors of
    /// [`load`].
    pub fn read(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.dir.join(name);
        let entry = self
            .manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| CheckpointError::Missing { path: path.clone() })?;
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CheckpointError::Missing { path: path.clone() },
            _ => io(&path)(e),
        })?;
        check(&path, entry, &bytes)?;
        Ok(bytes)
    }
}

fn check(path: &Path, entry: &FileEntry, bytes: &[u8]) -> Result<(), CheckpointError> {
    if bytes.len() as u64 != entry.size {
        return Err(CheckpointError::Size {
            path: path.to_owned(),
            expected: entry.size,
            found: bytes.len() as u64,
        });
    }
    if hex(&Sha256::digest(bytes)) != entry.sha256 {
        return Err(CheckpointError::Hash {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Opens and verifies the checkpoint in `dir` (see the crate docs).
///
/// # Errors
/// [`CheckpointError::Manifest`], [`CheckpointError::Format`], [`CheckpointError::Missing`],
/// [`CheckpointError::Size`], [`CheckpointError::Hash`], naming the file.
pub fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::Missing { path: path.clone() },
        _ => io(&path)(e),
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| CheckpointError::Manifest {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    // The version is read first, so a newer format is named as such rather than as a
    // manifest that fails to parse.
    let version = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| CheckpointError::Manifest {
            path: path.clone(),
            detail: "no format_version".into(),
        })?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(CheckpointError::Format {
            path,
            found: u32::try_from(version).unwrap_or(u32::MAX),
        });
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| CheckpointError::Manifest {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    for entry in &manifest.files {
        if entry.name.contains(['/', '\\']) || entry.name.starts_with('.') {
            return Err(CheckpointError::Manifest {
                path: path.clone(),
                detail: format!("file name {:?} leaves the checkpoint", entry.name),
            });
        }
        let file = dir.join(&entry.name);
        let meta = std::fs::metadata(&file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CheckpointError::Missing { path: file.clone() },
            _ => io(&file)(e),
        })?;
        if meta.len() != entry.size {
            return Err(CheckpointError::Size {
                path: file,
                expected: entry.size,
                found: meta.len(),
            });
        }
        let mut hash = Sha256::new();
        let mut reader = std::fs::File::open(&file).map_err(io(&file))?;
        std::io::copy(&mut reader, &mut hash).map_err(io(&file))?;
        if hex(&hash.finalize()) != entry.sha256 {
            return Err(CheckpointError::Hash { path: file });
        }
    }
    Ok(Checkpoint {
        dir: dir.to_owned(),
        manifest,
    })
}

/// The `checkpoint-<step>` directories under `root`, oldest step first (unverified).
///
/// # Errors
/// [`CheckpointError::Io`] when `root` exists but cannot be listed.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root)(e)),
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((step_of(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    out.sort();
    Ok(out)
}

/// The newest checkpoint that verifies, and why newer ones did not.
#[derive(Debug)]
pub struct Latest {
    /// The checkpoint, if any verifies.
    pub checkpoint: Option<Checkpoint>,
    /// Newer checkpoints that were refused, with the reason.
    pub refused: Vec<CheckpointError>,
}

/// Finds the newest valid checkpoint under `root`, skipping (and reporting) broken ones.
///
/// # Errors
/// [`CheckpointError::Io`] when `root` cannot be listed.
pub fn latest_valid(root: &Path) -> Result<Latest, CheckpointError> {
    let mut refused = Vec::new();
    for (_, dir) in list(root)?.into_iter().rev() {
        match load(&dir) {
            Ok(checkpoint) => {
                return Ok(Latest {
                    checkpoint: Some(checkpoint),
                    refused,
                });
            }
            Err(e) => refused.push(e),
        }
    }
    Ok(Latest {
        checkpoint: None,
        refused,
    })
}

/// Deletes all but the newest `keep_last` checkpoints, never one whose step is in
/// `protect` (the best). Returns the deleted directories.
///
/// # Errors
/// [`CheckpointError::Io`].
pub fn rotate(
    root: &Path,
    keep_last: usize,
    protect: &[u64],
    storage: &dyn Storage,
) -> Result<Vec<PathBuf>, CheckpointError> {
    let all = list(root)?;
    let cut = all.len().saturating_sub(keep_last);
    let mut deleted = Vec::new();
    for (step, dir) in all.into_iter().take(cut) {
        if protect.contains(&step) {
            continue;
        }
        // Renamed out of the `checkpoint-` namespace first: a crash mid-delete leaves a
        // partial directory, never a broken checkpoint.
        let doomed = root.join(format!(".{}.deleting", dir_name(step)));
        storage.rename(&dir, &doomed).map_err(io(&dir))?;
        storage.remove_dir_all(&doomed).map_err(io(&doomed))?;
        deleted.push(dir);
    }
    Ok(deleted)
}

/// Removes what interrupted saves and deletions left under `root` (`.checkpoint-*`
/// directories). Returns how many were removed.
///
/// # Errors
/// [`CheckpointError::Io`].
pub fn clean_partials(root: &Path, storage: &dyn Storage) -> Result<usize, CheckpointError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(root)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".checkpoint-")
        {
            let path = entry.path();
            storage.remove_dir_all(&path).map_err(io(&path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
