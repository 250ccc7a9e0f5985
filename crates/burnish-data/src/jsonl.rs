//! JSONL read line by line, never whole: each row comes with its line number and the byte
//! offset where it starts, so a file larger than memory can be indexed and revisited.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::DataError;

/// One non-blank line of a JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of the line's first byte.
    pub offset: u64,
    /// The parsed JSON, or why it is not JSON.
    pub value: Result<Value, String>,
}

/// Iterator over the rows of a JSONL file.
#[derive(Debug)]
pub struct JsonlRows {
    reader: BufReader<File>,
    path: PathBuf,
    line: u64,
    offset: u64,
    buffer: Vec<u8>,
    hasher: Option<Sha256>,
}

impl JsonlRows {
    /// Opens `path`.
    ///
    /// # Errors
    /// [`DataError::Io`] naming the file.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(JsonlRows {
            reader: BufReader::with_capacity(1 << 20, file),
            path: path.to_owned(),
            line: 0,
            offset: 0,
            buffer: Vec::new(),
            hasher: None,
        })
    }

    /// Feeds every byte read from here on to `hasher`, so the file is digested in the
    /// same pass that reads its rows.
    #[must_use]
    pub fn hashing(mut self, hasher: Sha256) -> Self {
        self.hasher = Some(hasher);
        self
    }

    /// The hasher given to [`hashing`](Self::hashing), having seen every byte read.
    pub fn into_hasher(self) -> Option<Sha256> {
        self.hasher
    }
}

impl Iterator for JsonlRows {
    type Item = Result<Row, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buffer.clear();
            let start = self.offset;
            match self.reader.read_until(b'\n', &mut self.buffer) {
                Ok(0) => return None,
                Ok(n) => {
                    self.offset += n as u64;
                    self.line += 1;
                    if let Some(h) = &mut self.hasher {
                        h.update(&self.buffer);
                    }
                }
                Err(source) => {
                    return Some(Err(DataError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
            let Some(value) = line_value(&self.buffer, start) else {
                continue;
            };
            return Some(Ok(Row {
                line: self.line,
                offset: start,
                value,
            }));
        }
    }
}

/// The UTF-8 byte-order mark, accepted at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The value of the line whose bytes are `bytes` and which starts at byte `offset` of its
/// file, or why it is not one; `None` for a blank line. One function for reading in order
/// and reading at an offset, so both see the same row.
fn line_value(bytes: &[u8], offset: u64) -> Option<Result<Value, String>> {
    let bytes = match offset {
        // Editors on Windows start files with a byte-order mark.
        0 => bytes.strip_prefix(BOM).unwrap_or(bytes),
        _ => bytes,
    };
    match std::str::from_utf8(bytes) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(serde_json::from_str(text.trim()).map_err(|e| format!("not JSON: {e}"))),
        Err(e) => Some(Err(format!(
            "not UTF-8 text (byte {} of the line)",
            e.valid_up_to() + 1
        ))),
    }
}

/// Reads the row that starts at byte `offset` of `path` (an offset from [`Row::offset`]).
///
/// # Errors
/// [`DataError::Io`]; [`DataError::BadRow`] when the bytes there are not a JSON line.
pub fn read_row_at(path: &Path, offset: u64, line: u64) -> Result<Value, DataError> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut bytes = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut bytes)
        .map_err(io)?;
    let value = line_value(&bytes, offset).unwrap_or_else(|| Err("a blank line".to_owned()));
    value.map_err(|reason| {
        DataError::BadRow(crate::BadRow {
            path: path.to_owned(),
            line: line as usize,
            reason: format!("at byte {offset}: {reason}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_lines_and_offsets_that_read_back() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let text = "\u{feff}{\"a\": 1}\n\n  \n{\"a\": \"é\"}\r\nnope\n0\u{b}\n";
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(b"\"\xff\"");
        std::fs::write(f.path(), bytes).unwrap();
        let rows: Vec<Row> = JsonlRows::open(f.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 4, 5, 6, 7]);
        assert!(rows[2].value.is_err());
        let not_utf8 = rows[4].value.as_ref().unwrap_err();
        assert_eq!(not_utf8, "not UTF-8 text (byte 2 of the line)");
        for row in [&rows[0], &rows[1], &rows[3]] {
            let again = read_row_at(f.path(), row.offset, row.line).unwrap();
            assert_eq!(&again, row.value.as_ref().unwrap());
        }
        assert_eq!(rows[1].value.as_ref().unwrap()["a"], "é");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any bytes read as rows: each a value or a reason, with increasing lines, and
        /// each offset reading back the same row.
        #[test]
        fn any_bytes_are_rows_or_reasons(bytes in proptest::collection::vec(
            proptest::prop_oneof![proptest::prelude::any::<u8>(), proptest::strategy::Just(b'\n'), proptest::strategy::Just(b'{')],
            0..400,
        )) {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), &bytes).unwrap();
            let mut last = 0;
            for row in JsonlRows::open(f.path()).unwrap() {
                let row = row.unwrap();
                proptest::prop_assert!(row.line > last);
                last = row.line;
                if let Ok(value) = &row.value {
                    let again = read_row_at(f.path(), row.offset, row.line).unwrap();
                    proptest::prop_assert_eq!(&again, value);
                }
            }
        }
    }
}
