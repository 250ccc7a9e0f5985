//! Writing a whole directory so that it appears complete or not at all: the one
//! implementation behind checkpoints, Hugging Face exports (`best/`, `final/`) and the
//! token cache.

use std::path::{Path, PathBuf};

use crate::Storage;

/// Why [`replace_dir`] failed: the caller's `fill`, or a file system operation around it.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError<E> {
    /// `fill` failed; nothing was renamed.
    #[error(transparent)]
    Fill(E),
    /// A file system operation failed (named by its path); the previous directory, if
    /// any, is in place.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io<E>(path: &Path) -> impl Fn(std::io::Error) -> ReplaceError<E> + '_ {
    move |source| ReplaceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The hidden sibling `target` is staged in: `.<name>.partial-<pid>` (the names
/// [`clean_partials`](crate::clean_partials) and the token cache remove after a crash).
pub fn staging_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "dir".into(), |n| n.to_string_lossy().into_owned());
    parent_of(target).join(format!(".{name}.partial-{}", std::process::id()))
}

fn parent_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Creates the directory `target` atomically: `fill` writes its contents into a hidden
/// sibling ([`staging_path`]); every file in it is then synced to disk, the directory
/// too, and it is renamed to `target`. An existing `target` is moved aside first and
/// removed only after the new one is in place; if that rename fails, the old one is put
/// back. At every instant `target` is absent, the old directory, or the complete new
/// one.
///
/// ```
/// use burnish_checkpoint::{FsStorage, replace_dir};
/// let root = tempfile::tempdir()?;
/// let best = root.path().join("best");
/// for round in ["first", "second"] {
///     replace_dir(&best, &FsStorage, |dir| std::fs::write(dir.join("model.txt"), round))?;
/// }
/// assert_eq!(std::fs::read_to_string(best.join("model.txt"))?, "second");
/// assert_eq!(std::fs::read_dir(root.path())?.count(), 1, "no staging left behind");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ReplaceError::Fill`] with `fill`'s error, [`ReplaceError::Io`] for the file system;
/// either way the staging directory is removed and `target` is as it was.
pub fn replace_dir<E>(
    target: &Path,
    storage: &dyn Storage,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), ReplaceError<E>> {
    let parent = parent_of(target);
    let staging = staging_path(target);
    storage.create_dir_all(&parent).map_err(io(&parent))?;
    storage.remove_dir_all(&staging).map_err(io(&staging))?;
    storage.create_dir_all(&staging).map_err(io(&staging))?;
    let result = fill(&staging)
        .map_err(ReplaceError::Fill)
        .and_then(|()| sync_tree(&staging, storage))
        .and_then(|()| swap_in(&staging, target, &parent, storage));
    if result.is_err() {
        let _ = storage.remove_dir_all(&staging);
    }
    result
}

/// Syncs every file under `dir`, then the directories themselves.
fn sync_tree<E>(dir: &Path, storage: &dyn Storage) -> Result<(), ReplaceError<E>> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io(&path))?.is_dir() {
            sync_tree(&path, storage)?;
        } else {
            storage.sync_file(&path).map_err(io(&path))?;
        }
    }
    storage.sync_dir(dir).map_err(io(dir))
}

fn swap_in<E>(
    staging: &Path,
    target: &Path,
    parent: &Path,
    storage: &dyn Storage,
) -> Result<(), ReplaceError<E>> {
    if target.exists() {
        let old = parent_of(target).join(format!(
            ".{}.old-{}",
            target
                .file_name()
                .map_or_else(|| "dir".into(), |n| n.to_string_lossy().into_owned()),
            std::process::id()
        ));
        storage.remove_dir_all(&old).map_err(io(&old))?;
        storage.rename(target, &old).map_err(io(target))?;
        if let Err(e) = storage.rename(staging, target) {
            // Put the previous directory back: a failed replacement changes nothing.
            let _ = storage.rename(&old, target);
            return Err(io(target)(e));
        }
        storage.sync_dir(parent).map_err(io(parent))?;
        storage.remove_dir_all(&old).map_err(io(&old))?;
    } else {
        storage.rename(staging, target).map_err(io(target))?;
    }
    storage.sync_dir(parent).map_err(io(parent))
}
