//! JSONL read line by line, never whole: each row comes with its line number and the byte
//! offset where it starts, so a file larger than memory can be indexed and revisited.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

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
    buffer: String,
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
            buffer: String::new(),
        })
    }
}

impl Iterator for JsonlRows {
    type Item = Result<Row, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buffer.clear();
            let start = self.offset;
            match self.reader.read_line(&mut self.buffer) {
                Ok(0) => return None,
                Ok(n) => {
                    self.offset += n as u64;
                    self.line += 1;
                }
                Err(source) => {
                    return Some(Err(DataError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
            let text = self.buffer.trim();
            if text.is_empty() {
                continue;
            }
            return Some(Ok(Row {
                line: self.line,
                offset: start,
                value: serde_json::from_str(text).map_err(|e| format!("not JSON: {e}")),
            }));
        }
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
    let mut text = String::new();
    BufReader::new(file).read_line(&mut text).map_err(io)?;
    serde_json::from_str(text.trim()).map_err(|e| {
        DataError::BadRow(crate::BadRow {
            path: path.to_owned(),
            line: line as usize,
            reason: format!("not JSON at byte {offset}: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_lines_and_offsets_that_read_back() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let text = "{\"a\": 1}\n\n  \n{\"a\": \"é\"}\r\nnope\n{\"a\": 3}";
        std::fs::write(f.path(), text).unwrap();
        let rows: Vec<Row> = JsonlRows::open(f.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 4, 5, 6]);
        assert!(rows[2].value.is_err());
        for row in [&rows[0], &rows[1], &rows[3]] {
            let again = read_row_at(f.path(), row.offset, row.line).unwrap();
            assert_eq!(&again, row.value.as_ref().unwrap());
        }
        assert_eq!(rows[1].value.as_ref().unwrap()["a"], "é");
    }
}
