//! File system operations of a save, behind a trait so tests can make any of them fail.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// A file being written that can be flushed to stable storage.
pub trait StorageFile: Write {
    /// Flushes buffers and syncs the file's data to disk (`fsync`).
    fn sync(&mut self) -> std::io::Result<()>;
}

/// The file system operations a checkpoint save performs.
pub trait Storage {
    /// Creates (truncates) a file for writing.
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile + '_>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()>;
    /// Renames a file or directory (atomic on one file system).
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Removes a directory tree; a missing one is not an error.
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()>;
    /// Syncs a directory, making renames and creations inside it durable.
    fn sync_dir(&self, path: &Path) -> std::io::Result<()>;
    /// Syncs a file written earlier (by any means) to disk.
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

struct FsFile(BufWriter<File>);

impl Write for FsFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl StorageFile for FsFile {
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.0.get_ref().sync_all()
    }
}

impl Storage for FsStorage {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile + '_>> {
        Ok(Box::new(FsFile(BufWriter::with_capacity(
            1 << 20,
            File::create(path)?,
        ))))
    }

    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        // Directories can be opened and fsynced on Unix; elsewhere renames are durable by
        // the file system's own rules.
        #[cfg(unix)]
        File::open(path)?.sync_all()?;
        #[cfg(not(unix))]
        let _ = path;
        Ok(())
    }
}
