//! CSV files of benchmark rows, through `csv` and serde: every CSV the benchmarks write goes
//! through [`RowWriter`]; [`read_rows`] reads one back as typed rows (the Slurm test does).
//!
//! A row type is a `serde` struct whose fields are the columns in order; a trailing `Vec` field
//! becomes as many extra columns (the phases of a cold start). The header is written first and
//! explicitly, so that a file with no rows still names its columns, and a row whose number of
//! fields differs from the header's is an error (the file is then incomplete: the benchmark
//! fails rather than leave a ragged CSV that looks whole). Reading maps columns by header name
//! (extra columns are ignored) and a malformed row is an error that names the file and the line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Writing or reading a CSV of rows failed.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The underlying file or stream failed, or a row could not be written (for example it has
    /// a different number of fields than the header).
    #[error("{what}: {source}")]
    Write {
        /// What was being written.
        what: String,
        /// The CSV library's error.
        #[source]
        source: csv::Error,
    },
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The header line is missing or unreadable.
    #[error("{source_name}: unreadable header: {source}")]
    Header {
        /// The file (or stream) name.
        source_name: String,
        /// The CSV library's error.
        #[source]
        source: csv::Error,
    },
    /// A row could not be read as the expected columns.
    #[error("{source_name} line {line}: {message}")]
    Row {
        /// The file (or stream) name.
        source_name: String,
        /// The 1-based line number of the row (the header is line 1).
        line: u64,
        /// What is wrong with it.
        message: String,
    },
}

/// Writes rows of one type as CSV: the header first, then one line per [`RowWriter::row`].
pub struct RowWriter<W: Write> {
    out: csv::Writer<W>,
    what: String,
}

impl<W: Write> RowWriter<W> {
    /// Starts a CSV on `out` with these column names; `what` names the destination in errors.
    pub fn new<S: AsRef<str>>(out: W, header: &[S], what: &str) -> Result<Self, CsvError> {
        let mut out = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(out);
        let what = what.to_string();
        out.write_record(header.iter().map(AsRef::as_ref))
            .map_err(|source| CsvError::Write {
                what: what.clone(),
                source,
            })?;
        Ok(RowWriter { out, what })
    }

    /// Writes one row (its fields in column order).
    pub fn row<T: Serialize>(&mut self, row: &T) -> Result<(), CsvError> {
        self.out.serialize(row).map_err(|source| CsvError::Write {
            what: self.what.clone(),
            source,
        })
    }

    /// Flushes what was written so far to the underlying writer.
    pub fn flush(&mut self) -> Result<(), CsvError> {
        self.out.flush().map_err(|e| CsvError::Write {
            what: self.what.clone(),
            source: e.into(),
        })
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(self) -> Result<W, CsvError> {
        let what = self.what;
        self.out.into_inner().map_err(|e| CsvError::Write {
            what,
            source: e.into_error().into(),
        })
    }
}

/// Reads every row of the CSV file at `path` as `T`, mapping columns by their header names.
pub fn read_rows<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, CsvError> {
    let file = std::fs::File::open(path).map_err(|source| CsvError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    read_rows_from(file, &path.display().to_string())
}

/// Reads every row of a CSV stream as `T`; `source_name` names it in errors.
pub fn read_rows_from<T: DeserializeOwned, R: Read>(
    input: R,
    source_name: &str,
) -> Result<Vec<T>, CsvError> {
    let mut reader = csv::ReaderBuilder::new().from_reader(input);
    let header = reader
        .headers()
        .map_err(|source| CsvError::Header {
            source_name: source_name.to_string(),
            source,
        })?
        .clone();
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(CsvError::Row {
                    source_name: source_name.to_string(),
                    line: e.position().map_or(line, |p| p.line()),
                    message: e.to_string(),
                })
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        let row = record
            .deserialize(Some(&header))
            .map_err(|e| CsvError::Row {
                source_name: source_name.to_string(),
                line,
                message: e.to_string(),
            })?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        bytes: u64,
    }

    #[derive(Debug, PartialEq, Serialize)]
    struct WithPhases {
        name: String,
        bytes: u64,
        phases: Vec<u64>,
    }

    #[test]
    fn writes_header_then_rows_quoting_commas() {
        let mut w = RowWriter::new(Vec::new(), &["name", "bytes"], "test").unwrap();
        w.row(&Sample {
            name: "a,b".into(),
            bytes: 3,
        })
        .unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(text, "name,bytes\n\"a,b\",3\n");
        let back: Vec<Sample> = read_rows_from(text.as_bytes(), "test").unwrap();
        assert_eq!(
            back,
            [Sample {
                name: "a,b".into(),
                bytes: 3
            }]
        );
    }

    #[test]
    fn a_trailing_vector_becomes_columns_and_must_match_the_header() {
        let header = ["name", "bytes", "p1", "p2"];
        let mut w = RowWriter::new(Vec::new(), &header, "test").unwrap();
        w.row(&WithPhases {
            name: "x".into(),
            bytes: 1,
            phases: vec![7, 8],
        })
        .unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(text, "name,bytes,p1,p2\nx,1,7,8\n");
        let mut w = RowWriter::new(Vec::new(), &header, "short.csv").unwrap();
        let short = WithPhases {
            name: "y".into(),
            bytes: 2,
            phases: vec![],
        };
        let err = w.row(&short).unwrap_err();
        assert!(err.to_string().starts_with("short.csv:"), "{err}");
        // Readers take the columns they name and ignore the rest.
        let back: Vec<Sample> = read_rows_from(text.as_bytes(), "test").unwrap();
        assert_eq!(back[0].bytes, 1);
    }

    #[test]
    fn a_malformed_row_names_its_line() {
        let text = "name,bytes\na,1\nb,2\nc,not-a-number\nd,4\n";
        let err = read_rows_from::<Sample, _>(text.as_bytes(), "results.csv").unwrap_err();
        match &err {
            CsvError::Row { line, .. } => assert_eq!(*line, 4),
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().starts_with("results.csv line 4:"), "{err}");
        let ragged = "name,bytes\na,1\nb\n";
        let err = read_rows_from::<Sample, _>(ragged.as_bytes(), "r.csv").unwrap_err();
        assert!(err.to_string().starts_with("r.csv line 3:"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = read_rows::<Sample>(Path::new("/nonexistent/rows.csv")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rows.csv"), "{err}");
    }
}
