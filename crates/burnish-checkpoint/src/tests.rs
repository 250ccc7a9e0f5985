use std::cell::Cell;
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

use super::*;

fn info(step: u64) -> ManifestInfo {
    ManifestInfo {
        step,
        epoch: 0,
        run_id: "run".into(),
        parent: None,
        config_hash: "hash".into(),
    }
}

fn save_two(root: &Path, step: u64, storage: &dyn Storage) -> Result<PathBuf, CheckpointError> {
    save(root, &info(step), storage, |w| {
        w.file("weights.bin", |out| {
            for i in 0..64u32 {
                out.write_all(&(i * step as u32).to_le_bytes())?;
            }
            Ok(())
        })?;
        w.file("state.json", |out| write!(out, "{{\"step\": {step}}}"))
    })
}

#[test]
fn saves_verify_and_read_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = save_two(root.path(), 7, &FsStorage).unwrap();
    assert_eq!(dir, root.path().join("checkpoint-7"));
    let c = load(&dir).unwrap();
    assert_eq!(c.manifest().files.len(), 2);
    assert_eq!(c.manifest().format_version, FORMAT_VERSION);
    assert_eq!(c.read("state.json").unwrap(), b"{\"step\": 7}");
    assert!(matches!(
        c.read("other"),
        Err(CheckpointError::Missing { .. })
    ));
    // Saving the same step again replaces it whole.
    save_two(root.path(), 7, &FsStorage).unwrap();
    assert_eq!(list(root.path()).unwrap().len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn damaged_checkpoints_are_refused_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let fresh = || {
        let dir = save_two(root.path(), 1, &FsStorage).unwrap();
        (dir.join("weights.bin"), dir)
    };
    let expect = |dir: &Path, what: &str, file: &str| {
        let err = load(dir).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(file), "{what}: {text}");
        err
    };

    let (weights, dir) = fresh();
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&weights, &bytes).unwrap();
    assert!(matches!(
        expect(&dir, "flipped byte", "weights.bin"),
        CheckpointError::Hash { .. }
    ));

    let (weights, dir) = fresh();
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..100]).unwrap();
    assert!(matches!(
        expect(&dir, "truncated", "weights.bin"),
        CheckpointError::Size { .. }
    ));

    let (weights, dir) = fresh();
    std::fs::remove_file(&weights).unwrap();
    assert!(matches!(
        expect(&dir, "missing", "weights.bin"),
        CheckpointError::Missing { .. }
    ));

    let (_, dir) = fresh();
    let manifest = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"size\": 256", "\"size\": 255")).unwrap();
    assert!(matches!(
        expect(&dir, "edited size", "weights.bin"),
        CheckpointError::Size { .. }
    ));

    let (_, dir) = fresh();
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("\"format_version\": 1", "\"format_version\": 9"),
    )
    .unwrap();
    assert!(matches!(
        expect(&dir, "new format", "manifest.json"),
        CheckpointError::Format { found: 9, .. }
    ));

    let (_, dir) = fresh();
    std::fs::write(&manifest, b"{\"format_version\": 1, \"step\": ").unwrap();
    assert!(matches!(
        expect(&dir, "cut manifest", "manifest.json"),
        CheckpointError::Manifest { .. }
    ));

    let (_, dir) = fresh();
    std::fs::remove_file(&manifest).unwrap();
    assert!(matches!(
        expect(&dir, "no manifest", "manifest.json"),
        CheckpointError::Missing { .. }
    ));
}

#[test]
fn the_latest_valid_checkpoint_skips_broken_ones() {
    let root = tempfile::tempdir().unwrap();
    for step in [10, 20, 30] {
        save_two(root.path(), step, &FsStorage).unwrap();
    }
    std::fs::remove_file(root.path().join("checkpoint-30/state.json")).unwrap();
    // A partial directory never counts, whatever it holds.
    std::fs::create_dir(root.path().join(".checkpoint-40.partial-1")).unwrap();
    let latest = latest_valid(root.path()).unwrap();
    assert_eq!(latest.checkpoint.unwrap().manifest().step, 20);
    assert_eq!(latest.refused.len(), 1);
    assert!(latest.refused[0].to_string().contains("checkpoint-30"));
    assert_eq!(clean_partials(root.path(), &FsStorage).unwrap(), 1);
    let empty = tempfile::tempdir().unwrap();
    assert!(
        latest_valid(&empty.path().join("none"))
            .unwrap()
            .checkpoint
            .is_none()
    );
}

/// Fails the `fail_at`-th operation (file creation, write call, sync, rename, directory
/// operation) with "no space left on device".
struct Faulty {
    fail_at: usize,
    count: Cell<usize>,
}

impl Faulty {
    fn tick(&self) -> std::io::Result<()> {
        let n = self.count.get();
        self.count.set(n + 1);
        if n == self.fail_at {
            Err(std::io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }
}

struct FaultyFile<'a> {
    inner: Box<dyn StorageFile + 'a>,
    storage: &'a Faulty,
}

impl Write for FaultyFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.storage.tick()?;
        // Short writes too: half the buffer at a time.
        self.inner.write(&buf[..buf.len().div_ceil(2)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl StorageFile for FaultyFile<'_> {
    fn sync(&mut self) -> std::io::Result<()> {
        self.storage.tick()?;
        self.inner.sync()
    }
}

impl Storage for Faulty {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile + '_>> {
        self.tick()?;
        Ok(Box::new(FaultyFile {
            inner: FsStorage.create(path)?,
            storage: self,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.tick()?;
        FsStorage.create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.tick()?;
        FsStorage.rename(from, to)
    }

    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        FsStorage.remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.tick()?;
        FsStorage.sync_dir(path)
    }
}

#[test]
fn a_failure_at_any_write_leaves_the_previous_checkpoint_intact() {
    let root = tempfile::tempdir().unwrap();
    save_two(root.path(), 1, &FsStorage).unwrap();
    let before = std::fs::read(root.path().join("checkpoint-1/weights.bin")).unwrap();
    let mut failures = 0;
    for fail_at in 0.. {
        let storage = Faulty {
            fail_at,
            count: Cell::new(0),
        };
        let result = save_two(root.path(), 2, &storage);
        if storage.count.get() <= fail_at {
            // Every operation of a save has been failed once.
            assert!(result.is_ok());
            break;
        }
        failures += 1;
        let err = result.unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        let previous = load(&root.path().join("checkpoint-1")).unwrap();
        assert_eq!(previous.read("weights.bin").unwrap(), before);
        // The new checkpoint is either absent or complete (the final directory sync can
        // fail after the rename), never partial.
        let new = root.path().join("checkpoint-2");
        if new.exists() {
            load(&new).unwrap();
            std::fs::remove_dir_all(&new).unwrap();
        }
        assert_eq!(
            clean_partials(root.path(), &FsStorage).unwrap(),
            0,
            "fail_at {fail_at}"
        );
    }
    assert!(failures > 20, "{failures} failure points");
}

#[test]
fn a_failure_while_replacing_the_same_step_keeps_a_complete_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    save_two(root.path(), 1, &FsStorage).unwrap();
    for fail_at in 0.. {
        let storage = Faulty {
            fail_at,
            count: Cell::new(0),
        };
        let result = save_two(root.path(), 1, &storage);
        if storage.count.get() <= fail_at {
            assert!(result.is_ok());
            break;
        }
        assert!(result.is_err(), "fail_at {fail_at}");
        // Old or new, `checkpoint-1` is always there and complete.
        load(&root.path().join("checkpoint-1")).unwrap();
        clean_partials(root.path(), &FsStorage).unwrap();
        load(&root.path().join("checkpoint-1")).unwrap();
    }
}

proptest! {
    #[test]
    fn rotation_keeps_the_newest_and_the_best(steps in proptest::collection::btree_set(1u64..200, 1..12), keep in 0usize..5, best_pick in any::<prop::sample::Index>()) {
        let root = tempfile::tempdir().unwrap();
        let steps: Vec<u64> = steps.into_iter().collect();
        for &s in &steps {
            std::fs::create_dir(root.path().join(dir_name(s))).unwrap();
        }
        let best = steps[best_pick.index(steps.len())];
        rotate(root.path(), keep, &[best], &FsStorage).unwrap();
        let left: Vec<u64> = list(root.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        let mut expected: Vec<u64> = steps[steps.len().saturating_sub(keep)..].to_vec();
        if !expected.contains(&best) {
            expected.insert(0, best);
        }
        expected.sort_unstable();
        prop_assert_eq!(left, expected);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// A manifest with any bytes overwritten, cut or replaced by random bytes: `load` gives
    /// a checkpoint or a typed error, never a panic; a checkpoint that loads is the saved one.
    #[test]
    fn any_manifest_loads_or_is_refused(
        pokes in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
        cut in proptest::option::of(proptest::prelude::any::<usize>()),
        random in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = save(root.path(), &info(3), &FsStorage, |w| {
            w.file("state.json", |out| write!(out, "{{\"step\": 3}}"))
        })
        .unwrap();
        let manifest = dir.join("manifest.json");
        let mut bytes = random.unwrap_or_else(|| std::fs::read(&manifest).unwrap());
        for (at, b) in pokes {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = b;
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        std::fs::write(&manifest, &bytes).unwrap();
        if let Ok(checkpoint) = load(&dir) {
            proptest::prop_assert_eq!(checkpoint.read("state.json").unwrap(), b"{\"step\": 3}".to_vec());
        }
    }
}
