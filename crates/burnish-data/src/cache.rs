//! Tokenized data on disk: a JSONL file is streamed once through the tokenizer into a
//! cache directory, then every epoch reads batches from it without re-tokenizing and
//! without holding the data in memory.
//!
//! Layout of a cache directory (little-endian):
//! - `records.bin`: 40 bytes per example: token start `u64`, source byte offset `u64`,
//!   token count `u32`, source line `u32`, class label (or answer start) `i32`, first
//!   token of the second segment `u32`, answer end `i32`, 4 bytes zero;
//! - `tokens.bin`: token ids, `u32` each;
//! - `labels.bin`: per-token labels, `i32` each (empty for per-example labels);
//! - `targets.bin`: float targets, `f32` each, `targets` per example (empty without);
//! - `meta.json`: what was cached (written last: a directory without it is incomplete).
//!
//! Reads are positioned reads served by the OS page cache. They are not memory-mapped on
//! purpose: a cache file truncated under a running job is then a typed error instead of a
//! SIGBUS, and the workspace keeps `unsafe_code = "forbid"`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burnish_loader::Encoded;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jsonl::JsonlRows;
use crate::task::{LabelLayout, RowFormat};
use crate::{BadRow, BadRows, DataError, IGNORE_INDEX};

const FORMAT: u32 = 4;
const RECORD: usize = 40;
/// Rows tokenized together (one parallel `encode_batch`); bounds memory while caching.
const CHUNK_ROWS: usize = 4096;
/// Bad rows listed in `meta.json` (all are counted).
const LISTED_BAD_ROWS: usize = 100;

/// What a cache holds, stored in `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    /// Cache format version.
    pub format: u32,
    /// Hex SHA-256 that finds the cache again: the source's identity (path, size,
    /// modification time), the tokenizer and the settings.
    pub fingerprint: String,
    /// Hex SHA-256 of what the cache holds: the source's bytes, the tokenizer and the
    /// settings, not where the file is or when it was touched. A resumed run compares it.
    pub content: String,
    /// The JSONL file.
    pub source: PathBuf,
    /// The kind of rows ([`RowFormat::kind`]).
    pub kind: String,
    /// How labels are laid out and counted.
    pub layout: LabelLayout,
    /// Float targets per example.
    pub targets: usize,
    /// Whether the examples are text pairs (every one is, or none).
    #[serde(default)]
    pub pairs: bool,
    /// Examples cached.
    pub examples: u64,
    /// Tokens cached.
    pub tokens: u64,
    /// Rows skipped (with [`BadRows::Skip`]).
    pub skipped: u64,
    /// The first skipped rows, as `file:line: reason`.
    pub skipped_rows: Vec<String>,
}

/// One cached example's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Index of its first token in `tokens.bin`.
    pub token_start: u64,
    /// Byte offset of its row in the source file.
    pub offset: u64,
    /// Token count.
    pub len: u32,
    /// 1-based line of its row in the source file.
    pub line: u32,
    /// Class label (sequence classification) or answer start (span), −100 otherwise.
    pub label: i32,
    /// First token of the second segment (token type id 1); 0 when there is one.
    pub segment: u32,
    /// Answer end (span), −100 otherwise.
    pub end_label: i32,
}

impl Record {
    fn to_bytes(self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0..8].copy_from_slice(&self.token_start.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.line.to_le_bytes());
        b[24..28].copy_from_slice(&self.label.to_le_bytes());
        b[28..32].copy_from_slice(&self.segment.to_le_bytes());
        b[32..36].copy_from_slice(&self.end_label.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        Record {
            token_start: u64_at(0),
            offset: u64_at(8),
            len: u32_at(16),
            line: u32_at(20),
            label: u32_at(24) as i32,
            segment: u32_at(28),
            end_label: u32_at(32) as i32,
        }
    }
}

/// A tokenized batch read from a cache, right-padded to its longest example.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Ids, attention mask and segment ids `[batch, seq]`.
    pub encoded: Encoded,
    /// Class ids (sequence classification, one per example), answer start and end
    /// (span layout, two per example) or per-token labels `[batch, seq]` row-major with
    /// −100 on padding.
    pub labels: Vec<i64>,
    /// Float targets `[batch, targets]` row-major (empty when the rows have none).
    pub targets: Vec<f32>,
    /// Label items the loss counts: examples, tagged tokens, or predicted tokens after
    /// the causal shift. Accumulation normalizes by the cycle's total.
    pub items: u64,
    /// The cache indices of the examples, in batch order.
    pub indices: Vec<usize>,
    /// Position ids `[batch, seq]` row-major, restarting at 0 for each example of a packed
    /// row ([`TokenCache::packed_batch`]); empty when each row is one example at positions
    /// `0..seq`.
    pub position_ids: Vec<i64>,
}

/// A tokenized dataset on disk.
#[derive(Debug)]
pub struct TokenCache {
    dir: PathBuf,
    meta: CacheMeta,
    records: File,
    tokens: File,
    labels: File,
    targets: File,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// The [`CacheMeta::fingerprint`]: settings and the source's identity (path, size,
/// modification time), cheap to compute before every run.
fn fingerprint(
    source: &Path,
    encoder: &dyn RowFormat,
    bad_rows: BadRows,
) -> Result<String, DataError> {
    let meta = std::fs::metadata(source).map_err(io(source))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = settings_hash(encoder, bad_rows)?;
    let identity = serde_json::json!({
        "source": std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned()),
        "size": meta.len(),
        "modified": modified.to_string(),
    });
    h.update(identity.to_string().as_bytes());
    Ok(hex(h))
}

fn hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 state over the tokenizer file and every setting that changes the tokens.
fn settings_hash(encoder: &dyn RowFormat, bad_rows: BadRows) -> Result<Sha256, DataError> {
    let tokenizer_path = encoder.tokenizer().path();
    let tokenizer = std::fs::read(tokenizer_path).map_err(io(tokenizer_path))?;
    let mut h = Sha256::new();
    let settings = serde_json::json!({
        "format": FORMAT,
        "tokenizer": encoder.tokenizer().config(),
        "kind": encoder.kind(),
        "layout": encoder.layout(),
        "targets": encoder.targets(),
        "settings": encoder.settings(),
        "skip_bad_rows": bad_rows == BadRows::Skip,
    });
    h.update(settings.to_string().as_bytes());
    h.update(&tokenizer);
    Ok(h)
}

struct Writers {
    records: BufWriter<File>,
    tokens: BufWriter<File>,
    labels: BufWriter<File>,
    targets: BufWriter<File>,
    /// Line of the first example (whose pair-ness every other example must share).
    first_line: Option<u64>,
}

impl TokenCache {
    /// Opens the cache of `source` under `root`, building it first when there is none
    /// for this exact source, tokenizer and settings. Returns whether it was built.
    ///
    /// # Errors
    /// [`DataError::Io`]; [`DataError::BadRow`] with [`BadRows::Fail`];
    /// [`DataError::Empty`] when no row is usable; [`DataError::Tokenizer`].
    pub fn open_or_build(
        source: &Path,
        encoder: &dyn RowFormat,
        bad_rows: BadRows,
        root: &Path,
    ) -> Result<(Self, bool), DataError> {
        let print = fingerprint(source, encoder, bad_rows)?;
        let dir = root.join(&print[..16]);
        if let Ok(cache) = Self::open(&dir)
            && cache.meta.fingerprint == print
        {
            return Ok((cache, false));
        }
        // Builds a crash interrupted leave behind; never mistaken for a cache (no rename).
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && (name.contains(".partial-") || name.contains(".old-")) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Self::build(source, encoder, bad_rows, &dir, print)?;
        Ok((Self::open(&dir)?, true))
    }

    fn build(
        source: &Path,
        encoder: &dyn RowFormat,
        bad_rows: BadRows,
        dir: &Path,
        fingerprint: String,
    ) -> Result<(), DataError> {
        // Built beside its final place and renamed in: an interrupted build never looks
        // like a cache.
        burnish_checkpoint::replace_dir(dir, &burnish_checkpoint::FsStorage, |staging| {
            Self::write_files(source, encoder, bad_rows, staging, fingerprint)
        })
        .map_err(|e| match e {
            burnish_checkpoint::ReplaceError::Fill(e) => e,
            burnish_checkpoint::ReplaceError::Io { path, source } => DataError::Io { path, source },
        })
    }

    /// Tokenizes `source` into the cache files under `tmp`, `meta.json` last.
    fn write_files(
        source: &Path,
        encoder: &dyn RowFormat,
        bad_rows: BadRows,
        tmp: &Path,
        fingerprint: String,
    ) -> Result<(), DataError> {
        let create = |name: &str| -> Result<BufWriter<File>, DataError> {
            let path = tmp.join(name);
            Ok(BufWriter::with_capacity(
                1 << 20,
                File::create(&path).map_err(io(&path))?,
            ))
        };
        let mut out = Writers {
            records: create("records.bin")?,
            tokens: create("tokens.bin")?,
            labels: create("labels.bin")?,
            targets: create("targets.bin")?,
            first_line: None,
        };
        let mut meta = CacheMeta {
            format: FORMAT,
            fingerprint,
            // Settings and the source's bytes, digested while the rows are read.
            content: String::new(),
            source: source.to_owned(),
            kind: encoder.kind(),
            layout: encoder.layout(),
            targets: encoder.targets(),
            pairs: false,
            examples: 0,
            tokens: 0,
            skipped: 0,
            skipped_rows: Vec::new(),
        };
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        let mut rows = JsonlRows::open(source)?.hashing(settings_hash(encoder, bad_rows)?);
        loop {
            let row = rows.next().transpose()?;
            let end = row.is_none();
            chunk.extend(row);
            if end || chunk.len() == CHUNK_ROWS {
                Self::write_chunk(&chunk, encoder, bad_rows, source, &mut out, &mut meta, tmp)?;
                chunk.clear();
            }
            if end {
                break;
            }
        }
        meta.content = rows.into_hasher().map(hex).unwrap_or_default();
        if meta.examples == 0 {
            return Err(DataError::Empty {
                path: source.to_owned(),
            });
        }
        for (name, w) in [
            ("records.bin", out.records),
            ("tokens.bin", out.tokens),
            ("labels.bin", out.labels),
            ("targets.bin", out.targets),
        ] {
            let path = tmp.join(name);
            w.into_inner().map_err(|e| io(&path)(e.into_error()))?;
        }
        let meta_path = tmp.join("meta.json");
        let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
        std::fs::write(&meta_path, text).map_err(io(&meta_path))
    }

    #[allow(clippy::too_many_arguments)]
    fn write_chunk(
        rows: &[crate::jsonl::Row],
        encoder: &dyn RowFormat,
        bad_rows: BadRows,
        source: &Path,
        out: &mut Writers,
        meta: &mut CacheMeta,
        tmp: &Path,
    ) -> Result<(), DataError> {
        let values: Vec<&serde_json::Value> =
            rows.iter().filter_map(|r| r.value.as_ref().ok()).collect();
        let mut encoded = encoder.encode(&values)?.into_iter();
        for row in rows {
            let result = match &row.value {
                Ok(_) => encoded.next().unwrap_or_else(|| Err("not encoded".into())),
                Err(reason) => Err(reason.clone()),
            };
            let result = result.and_then(|examples| {
                match (
                    out.first_line,
                    examples.iter().find(|e| e.pair != meta.pairs),
                ) {
                    (Some(first), Some(_)) if meta.pairs => Err(format!(
                        "no `text_pair`, but line {first} has one: a sentence-pair set needs it \
                         in every row"
                    )),
                    (Some(first), Some(_)) => Err(format!(
                        "a `text_pair`, but line {first} has none: give every row one text or \
                         every row two"
                    )),
                    _ => Ok(examples),
                }
            });
            match result {
                Ok(examples) => {
                    for example in examples {
                        Self::write_example(&example, row, source, out, meta, tmp)?;
                    }
                }
                Err(reason) => {
                    let bad = BadRow {
                        path: source.to_owned(),
                        line: row.line as usize,
                        reason,
                    };
                    if bad_rows == BadRows::Fail {
                        return Err(DataError::BadRow(bad));
                    }
                    meta.skipped += 1;
                    if meta.skipped_rows.len() < LISTED_BAD_ROWS {
                        meta.skipped_rows.push(bad.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends one example of `row` to the cache files.
    fn write_example(
        example: &crate::TokenizedExample,
        row: &crate::jsonl::Row,
        source: &Path,
        out: &mut Writers,
        meta: &mut CacheMeta,
        tmp: &Path,
    ) -> Result<(), DataError> {
        let line = u32::try_from(row.line).map_err(|_| DataError::Cache {
            path: source.to_owned(),
            detail: format!("line {} is past the 2^32 lines a cache indexes", row.line),
        })?;
        let record = Record {
            token_start: meta.tokens,
            offset: row.offset,
            len: example.ids.len() as u32,
            line,
            label: example.label as i32,
            segment: example.segment,
            end_label: example.end_label as i32,
        };
        if out.first_line.is_none() {
            out.first_line = Some(row.line);
            meta.pairs = example.pair;
        }
        let write = |w: &mut BufWriter<File>, bytes: &[u8], name: &str| {
            w.write_all(bytes).map_err(io(&tmp.join(name)))
        };
        write(&mut out.records, &record.to_bytes(), "records.bin")?;
        let ids: Vec<u8> = example.ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        write(&mut out.tokens, &ids, "tokens.bin")?;
        let labels: Vec<u8> = example
            .token_labels
            .iter()
            .flat_map(|l| l.to_le_bytes())
            .collect();
        write(&mut out.labels, &labels, "labels.bin")?;
        if example.targets.len() != meta.targets {
            return Err(DataError::Cache {
                path: tmp.join("targets.bin"),
                detail: format!(
                    "line {}: {} targets, the row format declares {}",
                    row.line,
                    example.targets.len(),
                    meta.targets
                ),
            });
        }
        let targets: Vec<u8> = example
            .targets
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        write(&mut out.targets, &targets, "targets.bin")?;
        meta.examples += 1;
        meta.tokens += example.ids.len() as u64;
        Ok(())
    }

    /// Opens a complete cache directory.
    ///
    /// # Errors
    /// [`DataError::Io`] for missing files; [`DataError::Cache`] when `meta.json` is
    /// unreadable, of another format, or the files' sizes disagree with it.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path).map_err(io(&meta_path))?;
        let meta: CacheMeta = serde_json::from_str(&text).map_err(|e| DataError::Cache {
            path: meta_path.clone(),
            detail: e.to_string(),
        })?;
        if meta.format != FORMAT {
            return Err(DataError::Cache {
                path: meta_path,
                detail: format!("format {} (this burnish reads {FORMAT})", meta.format),
            });
        }
        let open = |name: &str, expected: u64| -> Result<File, DataError> {
            let path = dir.join(name);
            let file = File::open(&path).map_err(io(&path))?;
            let len = file.metadata().map_err(io(&path))?.len();
            if len != expected {
                return Err(DataError::Cache {
                    path,
                    detail: format!("{len} bytes, meta.json implies {expected}"),
                });
            }
            Ok(file)
        };
        let label_bytes = match meta.layout {
            LabelLayout::Example | LabelLayout::Span => 0,
            LabelLayout::Token | LabelLayout::ShiftedToken => meta.tokens * 4,
        };
        Ok(TokenCache {
            records: open("records.bin", meta.examples * RECORD as u64)?,
            tokens: open("tokens.bin", meta.tokens * 4)?,
            labels: open("labels.bin", label_bytes)?,
            targets: open("targets.bin", meta.examples * meta.targets as u64 * 4)?,
            dir: dir.to_owned(),
            meta,
        })
    }

    /// What the cache holds.
    pub fn meta(&self) -> &CacheMeta {
        &self.meta
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.meta.examples as usize
    }

    /// Whether the cache has no example (never true for a built cache).
    pub fn is_empty(&self) -> bool {
        self.meta.examples == 0
    }

    /// The record of example `i`.
    ///
    /// # Errors
    /// [`DataError::Cache`] when `i` is out of range; [`DataError::Io`].
    pub fn record(&self, i: usize) -> Result<Record, DataError> {
        if i >= self.len() {
            return Err(DataError::Cache {
                path: self.dir.join("records.bin"),
                detail: format!("example {i} of {}", self.len()),
            });
        }
        let mut b = [0u8; RECORD];
        let path = self.dir.join("records.bin");
        read_at(&self.records, &mut b, (i * RECORD) as u64).map_err(io(&path))?;
        Ok(Record::from_bytes(&b))
    }

    /// Token counts of all examples (for length-grouped batching).
    ///
    /// # Errors
    /// [`DataError::Io`].
    pub fn lengths(&self) -> Result<Vec<u32>, DataError> {
        let path = self.dir.join("records.bin");
        let mut out = Vec::with_capacity(self.len());
        let mut buf = vec![0u8; RECORD * 8192];
        let mut done = 0;
        while done < self.len() {
            let n = (self.len() - done).min(8192);
            read_at(
                &self.records,
                &mut buf[..n * RECORD],
                (done * RECORD) as u64,
            )
            .map_err(io(&path))?;
            out.extend(
                buf[..n * RECORD]
                    .chunks(RECORD)
                    .map(|b| Record::from_bytes(b).len),
            );
            done += n;
        }
        Ok(out)
    }

    fn read_u32s(
        &self,
        file: &File,
        name: &str,
        start: u64,
        len: u32,
    ) -> Result<Vec<u32>, DataError> {
        let mut b = vec![0u8; len as usize * 4];
        read_at(file, &mut b, start * 4).map_err(io(&self.dir.join(name)))?;
        Ok(b.chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The token ids of example `i`.
    ///
    /// # Errors
    /// As [`record`](Self::record).
    pub fn ids(&self, i: usize) -> Result<Vec<u32>, DataError> {
        let r = self.record(i)?;
        self.read_u32s(&self.tokens, "tokens.bin", r.token_start, r.len)
    }

    /// Examples `indices` as one right-padded batch.
    ///
    /// # Errors
    /// As [`record`](Self::record).
    pub fn batch(&self, indices: &[usize], pad_id: u32) -> Result<Batch, DataError> {
        let records = indices
            .iter()
            .map(|&i| self.record(i))
            .collect::<Result<Vec<_>, _>>()?;
        let seq = records.iter().map(|r| r.len as usize).max().unwrap_or(0);
        let n = records.len();
        let mut encoded = Encoded {
            shape: [n, seq],
            input_ids: Vec::with_capacity(n * seq),
            attention_mask: Vec::with_capacity(n * seq),
            token_type_ids: vec![0; n * seq],
        };
        let per_token = matches!(
            self.meta.layout,
            LabelLayout::Token | LabelLayout::ShiftedToken
        );
        let k = self.meta.targets;
        let mut targets = Vec::with_capacity(n * k);
        let mut labels = Vec::with_capacity(if per_token { n * seq } else { 2 * n });
        let mut items = 0u64;
        for (row, r) in records.iter().enumerate() {
            let pad = seq - r.len as usize;
            let ids = self.read_u32s(&self.tokens, "tokens.bin", r.token_start, r.len)?;
            encoded.input_ids.extend(ids.iter().map(|&i| i64::from(i)));
            encoded
                .input_ids
                .extend(std::iter::repeat_n(i64::from(pad_id), pad));
            encoded
                .attention_mask
                .extend(std::iter::repeat_n(1, r.len as usize));
            encoded.attention_mask.extend(std::iter::repeat_n(0, pad));
            if r.segment > 0 {
                // Padding stays segment 0, as transformers pads token_type_ids.
                let row = &mut encoded.token_type_ids[row * seq..row * seq + r.len as usize];
                if let Some(second) = row.get_mut(r.segment as usize..) {
                    second.fill(1);
                }
            }
            if per_token {
                let row = self.read_u32s(&self.labels, "labels.bin", r.token_start, r.len)?;
                let skip = usize::from(self.meta.layout == LabelLayout::ShiftedToken);
                items += row.iter().skip(skip).filter(|&&l| l as i32 >= 0).count() as u64;
                labels.extend(row.iter().map(|&l| i64::from(l as i32)));
                labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
            } else if self.meta.layout == LabelLayout::Span {
                items += 1;
                labels.extend([i64::from(r.label), i64::from(r.end_label)]);
            } else {
                items += u64::from(r.label >= 0 || k > 0);
                labels.push(i64::from(r.label));
            }
        }
        for &i in indices.iter().filter(|_| k > 0) {
            let mut b = vec![0u8; k * 4];
            read_at(&self.targets, &mut b, (i * k * 4) as u64)
                .map_err(io(&self.dir.join("targets.bin")))?;
            targets.extend(
                b.chunks(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Ok(Batch {
            encoded,
            labels,
            targets,
            items,
            indices: indices.to_vec(),
            position_ids: Vec::new(),
        })
    }

    /// Examples `indices` of a causal-LM cache packed into as few rows of at most
    /// `max_length` tokens as first fit finds (longest example first, ties in batch order),
    /// right-padded with `pad_id` to the fullest row.
    ///
    /// The attention mask numbers the examples of a row 1, 2, … (0 on padding), the
    /// position ids restart at 0 for each, and the first label of each example is −100:
    /// a model that keeps examples of a row apart (burnish's Llama family does) computes
    /// for each example what the unpacked [`batch`](Self::batch) gives, and the loss counts
    /// the same [`items`](Batch::items). An example longer than `max_length` gets a row of
    /// its own.
    ///
    /// # Errors
    /// [`DataError::NotPackable`] for a cache whose labels are not shifted tokens; as
    /// [`record`](Self::record).
    pub fn packed_batch(
        &self,
        indices: &[usize],
        pad_id: u32,
        max_length: usize,
    ) -> Result<Batch, DataError> {
        if self.meta.layout != LabelLayout::ShiftedToken {
            return Err(DataError::NotPackable {
                path: self.dir.clone(),
                kind: self.meta.kind.clone(),
            });
        }
        let records = indices
            .iter()
            .map(|&i| self.record(i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut longest_first: Vec<usize> = (0..records.len()).collect();
        longest_first.sort_by_key(|&k| std::cmp::Reverse(records[k].len));
        // Rows as (tokens filled, examples in the order they were placed).
        let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
        for k in longest_first {
            let len = records[k].len as usize;
            match rows
                .iter_mut()
                .find(|(filled, _)| filled + len <= max_length)
            {
                Some((filled, members)) => {
                    *filled += len;
                    members.push(k);
                }
                None => rows.push((len, vec![k])),
            }
        }
        let seq = rows.iter().map(|(filled, _)| *filled).max().unwrap_or(0);
        let cells = rows.len() * seq;
        let mut encoded = Encoded {
            shape: [rows.len(), seq],
            input_ids: Vec::with_capacity(cells),
            attention_mask: Vec::with_capacity(cells),
            token_type_ids: vec![0; cells],
        };
        let mut labels = Vec::with_capacity(cells);
        let mut position_ids = Vec::with_capacity(cells);
        let mut items = 0u64;
        for (filled, members) in &rows {
            for (segment, &k) in (1i64..).zip(members) {
                let r = &records[k];
                let ids = self.read_u32s(&self.tokens, "tokens.bin", r.token_start, r.len)?;
                let row = self.read_u32s(&self.labels, "labels.bin", r.token_start, r.len)?;
                encoded.input_ids.extend(ids.iter().map(|&i| i64::from(i)));
                encoded
                    .attention_mask
                    .extend(std::iter::repeat_n(segment, ids.len()));
                position_ids.extend(0..ids.len() as i64);
                items += row.iter().skip(1).filter(|&&l| l as i32 >= 0).count() as u64;
                // Nothing predicts an example's first token: the token before it belongs to
                // the previous example.
                labels.extend(row.iter().enumerate().map(|(t, &l)| {
                    if t == 0 {
                        IGNORE_INDEX
                    } else {
                        i64::from(l as i32)
                    }
                }));
            }
            let pad = seq - filled;
            encoded
                .input_ids
                .extend(std::iter::repeat_n(i64::from(pad_id), pad));
            encoded.attention_mask.extend(std::iter::repeat_n(0, pad));
            position_ids.extend(std::iter::repeat_n(0, pad));
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        }
        Ok(Batch {
            encoded,
            labels,
            targets: Vec::new(),
            items,
            indices: indices.to_vec(),
            position_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use burnish_loader::{HfModelDir, HfTokenizer, TokenizerConfig};

    use super::*;
    use crate::{RowEncoder, Task};

    /// An encoder of labeled rows without chat template or EOS.
    fn labeled<'a>(task: Task, tokenizer: &'a HfTokenizer, labels: &'a [String]) -> RowEncoder<'a> {
        RowEncoder {
            task,
            problem: crate::ProblemType::default(),
            tokenizer,
            labels,
            chat_template: None,
            eos_id: None,
            require_labels: true,
            doc_stride: crate::DEFAULT_DOC_STRIDE,
        }
    }

    fn assets(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/assets")
            .join(name)
    }

    #[test]
    fn builds_once_and_batches_with_padding_and_item_counts() {
        let model = HfModelDir::open(&assets("toy-bert")).unwrap();
        let tokenizer = model.tokenizer(TokenizerConfig::default()).unwrap();
        let labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"].map(String::from);
        let encoder = labeled(Task::TokenClassification, &tokenizer, &labels);
        let root = tempfile::tempdir().unwrap();
        let source = assets("data/toy-ner/train.jsonl");
        let (cache, built) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, root.path()).unwrap();
        assert!(built);
        assert_eq!(cache.len(), 256);
        let (again, built) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, root.path()).unwrap();
        assert!(!built);
        assert_eq!(again.dir(), cache.dir());
        let batch = cache.batch(&[3, 0, 255], tokenizer.pad_id()).unwrap();
        let [n, seq] = batch.encoded.shape;
        assert_eq!(n, 3);
        // Six words plus [CLS]/[SEP], one id per word in this word-level vocabulary.
        assert_eq!(seq, 8);
        assert_eq!(batch.items, 18);
        assert_eq!(batch.labels[0], IGNORE_INDEX);
        assert_eq!(batch.labels[1], 1);
        let first = cache.record(0).unwrap();
        let row = crate::jsonl::read_row_at(&source, first.offset, u64::from(first.line)).unwrap();
        assert_eq!(row["tokens"].as_array().unwrap().len(), 6);
        assert_eq!(cache.lengths().unwrap(), vec![8; 256]);

        // A different max_length is a different cache.
        let short = model
            .tokenizer(TokenizerConfig {
                max_length: 5,
                ..TokenizerConfig::default()
            })
            .unwrap();
        let encoder = RowEncoder {
            tokenizer: &short,
            ..encoder
        };
        let (cut, built) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, root.path()).unwrap();
        assert!(built);
        assert_ne!(cut.dir(), cache.dir());
        assert_eq!(cut.lengths().unwrap(), vec![5; 256]);
    }

    #[test]
    fn packed_rows_hold_the_batch_examples_with_their_own_positions_and_items() {
        let model = HfModelDir::open(&assets("toy-llama")).unwrap();
        let tokenizer = model.tokenizer(TokenizerConfig::default()).unwrap();
        let encoder = labeled(Task::CausalLm, &tokenizer, &[]);
        let root = tempfile::tempdir().unwrap();
        let source = root.path().join("sft.jsonl");
        let rows = [
            r#"{"prompt": "what is", "response": "blue"}"#,
            r#"{"text": "the sky is blue and the grass is green"}"#,
            r#"{"prompt": "the color of snow is", "response": "white"}"#,
            r#"{"text": "snow is white"}"#,
        ];
        std::fs::write(&source, rows.join("\n")).unwrap();
        let (cache, _) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, root.path()).unwrap();
        let lengths = cache.lengths().unwrap();
        let pad = tokenizer.pad_id();
        let plain = cache.batch(&[0, 1, 2, 3], pad).unwrap();
        // Room for the longest example and one more of the others: first fit, longest first.
        let max_length = (lengths[1] + lengths[2]) as usize;
        let packed = cache.packed_batch(&[0, 1, 2, 3], pad, max_length).unwrap();
        let [rows_packed, seq] = packed.encoded.shape;
        assert!(
            rows_packed < 4 && seq <= max_length,
            "{:?}",
            packed.encoded.shape
        );
        assert_eq!(packed.items, plain.items);
        assert_eq!(packed.indices, plain.indices);
        let cells = rows_packed * seq;
        assert_eq!(packed.position_ids.len(), cells);
        assert_eq!(packed.labels.len(), cells);

        // Every example appears once, whole, as a segment with positions 0.., its labels
        // those of the unpacked batch except the first.
        let plain_seq = plain.encoded.shape[1];
        let mut found = Vec::new();
        for r in 0..rows_packed {
            let at = |v: &[i64], t: usize| v[r * seq + t];
            let mut t = 0;
            while t < seq && at(&packed.encoded.attention_mask, t) != 0 {
                let segment = at(&packed.encoded.attention_mask, t);
                let start = t;
                while t < seq && at(&packed.encoded.attention_mask, t) == segment {
                    assert_eq!(at(&packed.position_ids, t), (t - start) as i64);
                    t += 1;
                }
                let ids: Vec<i64> = (start..t)
                    .map(|t| at(&packed.encoded.input_ids, t))
                    .collect();
                let example = (0..4)
                    .find(|&e| {
                        let row = &plain.encoded.input_ids[e * plain_seq..];
                        lengths[e] as usize == ids.len() && row[..ids.len()] == ids[..]
                    })
                    .unwrap();
                assert_eq!(at(&packed.labels, start), IGNORE_INDEX);
                for k in 1..ids.len() {
                    assert_eq!(
                        at(&packed.labels, start + k),
                        plain.labels[example * plain_seq + k]
                    );
                }
                found.push(example);
            }
            assert!((t..seq).all(|t| at(&packed.labels, t) == IGNORE_INDEX));
        }
        found.sort_unstable();
        assert_eq!(found, [0, 1, 2, 3]);

        // Too short for any two: one example per row, as unpacked.
        let alone = cache.packed_batch(&[0, 1, 2, 3], pad, 1).unwrap();
        assert_eq!(alone.encoded.shape, [4, lengths[1] as usize]);
        assert_eq!(alone.items, plain.items);

        let labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"].map(String::from);
        let tagger = labeled(Task::TokenClassification, &tokenizer, &labels);
        let tags = root.path().join("tags.jsonl");
        std::fs::write(&tags, r#"{"tokens": ["snow"], "tags": ["O"]}"#).unwrap();
        let (tagged, _) =
            TokenCache::open_or_build(&tags, &tagger, BadRows::Fail, root.path()).unwrap();
        let err = tagged.packed_batch(&[0], pad, 8).unwrap_err().to_string();
        assert!(err.contains("only causal-LM rows"), "{err}");
    }

    #[test]
    fn pairs_batch_with_segment_ids_and_may_not_mix_with_single_texts() {
        let model = HfModelDir::open(&assets("toy-bert")).unwrap();
        let tokenizer = model.tokenizer(TokenizerConfig::default()).unwrap();
        let labels = ["no", "yes"].map(String::from);
        let encoder = labeled(Task::SequenceClassification, &tokenizer, &labels);
        let root = tempfile::tempdir().unwrap();
        let source = root.path().join("pairs.jsonl");
        let rows = [
            r#"{"text": "good film", "text_pair": "bad", "label": 0}"#,
            r#"{"text": "a good film", "text_pair": "bad plot", "label": 1}"#,
        ];
        std::fs::write(&source, rows.join("\n")).unwrap();
        let (cache, _) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, root.path()).unwrap();
        assert!(cache.meta().pairs);
        let batch = cache.batch(&[0, 1], tokenizer.pad_id()).unwrap();
        assert_eq!(batch.encoded.shape, [2, 8]);
        // [CLS] good film [SEP] | bad [SEP] | padding (segment 0, as transformers pads).
        assert_eq!(batch.encoded.token_type_ids[..8], [0, 0, 0, 0, 1, 1, 0, 0]);
        assert_eq!(batch.encoded.token_type_ids[8..], [0, 0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(batch.labels, [0, 1]);

        let mixed = root.path().join("mixed.jsonl");
        std::fs::write(
            &mixed,
            [rows[0], r#"{"text": "good", "label": 1}"#].join("\n"),
        )
        .unwrap();
        let err = TokenCache::open_or_build(&mixed, &encoder, BadRows::Fail, root.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mixed.jsonl:2"), "{err}");
        assert!(err.contains("no `text_pair`, but line 1 has one"), "{err}");
    }

    #[test]
    fn damaged_caches_are_refused_and_rebuilt() {
        let model = HfModelDir::open(&assets("toy-bert")).unwrap();
        let tokenizer = model.tokenizer(TokenizerConfig::default()).unwrap();
        let labels = ["negative", "positive"].map(String::from);
        let encoder = labeled(Task::SequenceClassification, &tokenizer, &labels);
        let root = tempfile::tempdir().unwrap();
        let source = assets("data/toy-sentiment/validation.jsonl");
        let (cache, _) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, root.path()).unwrap();
        let batch = cache.batch(&[0, 1], tokenizer.pad_id()).unwrap();
        assert_eq!(batch.labels.len(), 2);
        assert_eq!(batch.items, 2);
        let dir = cache.dir().to_owned();
        drop(cache);
        let tokens = dir.join("tokens.bin");
        let len = std::fs::metadata(&tokens).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tokens)
            .unwrap()
            .set_len(len - 4)
            .unwrap();
        let err = TokenCache::open(&dir).unwrap_err();
        assert!(err.to_string().contains("tokens.bin"), "{err}");
        std::fs::create_dir(root.path().join(".0123.partial-1")).unwrap();
        let (fixed, built) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, root.path()).unwrap();
        assert!(built);
        assert_eq!(fixed.batch(&[0, 1], tokenizer.pad_id()).unwrap(), batch);
        assert!(!root.path().join(".0123.partial-1").exists());
    }

    #[test]
    fn bad_rows_fail_with_their_line_or_are_counted() {
        let model = HfModelDir::open(&assets("toy-bert")).unwrap();
        let tokenizer = model.tokenizer(TokenizerConfig::default()).unwrap();
        let labels = ["negative", "positive"].map(String::from);
        let encoder = labeled(Task::SequenceClassification, &tokenizer, &labels);
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("d.jsonl");
        std::fs::write(
            &source,
            "{\"text\": \"good\", \"label\": 1}\n{\"text\": \"bad\", \"label\": \"meh\"}\n{\"text\": \"bad\", \"label\": 0}\n",
        )
        .unwrap();
        let err =
            TokenCache::open_or_build(&source, &encoder, BadRows::Fail, dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("d.jsonl:2: unknown label \"meh\""),
            "{err}"
        );
        let (cache, _) =
            TokenCache::open_or_build(&source, &encoder, BadRows::Skip, dir.path()).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.meta().skipped, 1);
        assert_eq!(cache.record(1).unwrap().line, 3);
    }

    /// A row kind of its own: `{"text", "score"}` with a float target, which the built-in
    /// encoder knows nothing of.
    struct Scores<'a>(&'a HfTokenizer);

    impl RowFormat for Scores<'_> {
        fn kind(&self) -> String {
            "scores".into()
        }

        fn layout(&self) -> LabelLayout {
            LabelLayout::Example
        }

        fn targets(&self) -> usize {
            2
        }

        fn tokenizer(&self) -> &HfTokenizer {
            self.0
        }

        fn settings(&self) -> serde_json::Value {
            serde_json::json!({"scaled": true})
        }

        fn encode(
            &self,
            rows: &[&serde_json::Value],
        ) -> Result<Vec<crate::RowExamples>, DataError> {
            let texts: Vec<&str> = rows
                .iter()
                .map(|r| r["text"].as_str().unwrap_or(""))
                .collect();
            let ids = self.0.encode_unpadded(&texts, true)?;
            Ok(rows
                .iter()
                .zip(ids)
                .map(|(row, ids)| {
                    let score = row["score"].as_f64().ok_or("missing `score`")? as f32;
                    Ok(vec![crate::TokenizedExample {
                        ids,
                        targets: vec![score, 1.0 - score],
                        ..Default::default()
                    }])
                })
                .collect())
        }
    }

    #[test]
    fn a_row_format_of_its_own_caches_float_targets() {
        let model = HfModelDir::open(&assets("toy-bert")).unwrap();
        let tokenizer = model.tokenizer(TokenizerConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("s.jsonl");
        std::fs::write(
            &source,
            "{\"text\": \"good\", \"score\": 0.75}\n{\"text\": \"bad\"}\n{\"text\": \"bad bad\", \"score\": 0.25}\n",
        )
        .unwrap();
        let format = Scores(&tokenizer);
        let (cache, _) =
            TokenCache::open_or_build(&source, &format, BadRows::Skip, dir.path()).unwrap();
        assert_eq!(
            (cache.meta().kind.as_str(), cache.meta().targets),
            ("scores", 2)
        );
        assert_eq!(cache.meta().skipped_rows.len(), 1);
        let batch = cache.batch(&[1, 0], tokenizer.pad_id()).unwrap();
        assert_eq!(batch.targets, [0.25, 0.75, 0.75, 0.25]);
        assert_eq!(batch.items, 2, "every example with targets counts");
        let reopened = TokenCache::open(cache.dir()).unwrap();
        assert_eq!(reopened.batch(&[1, 0], tokenizer.pad_id()).unwrap(), batch);
    }
}
