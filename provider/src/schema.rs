//! The schema of a tabular file, read at publish into the manifest (`FileEntry::columns`): the
//! market indexes the column names for search and shows the types, and SQL jobs see the same
//! tables. Parquet gives its schema in the footer; CSV (with a header) and JSON lines are
//! inferred from their first 1,000 records, as DataFusion does.

use std::{fs::File, io::BufReader, path::Path};

use bdc_core::{jobs::table_kind, manifest::Column};
use datafusion::{
    arrow::{csv::reader::Format, datatypes::Schema, json::reader::infer_json_schema},
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder,
};

/// Records read to infer a CSV or JSON-lines schema.
const INFER_RECORDS: usize = 1000;

/// Columns of the file at `path` (named `name` in the dataset), or none when it is not tabular
/// or its schema cannot be read: a file that is not what its extension says is still published,
/// only without columns (and a warning in the log).
pub fn file_columns(path: &Path, name: &str) -> Vec<Column> {
    let Some(kind) = table_kind(name) else { return Vec::new() };
    match read_schema(path, kind) {
        Ok(schema) => schema
            .fields()
            .iter()
            .map(|f| Column { name: f.name().clone(), data_type: f.data_type().to_string() })
            .collect(),
        Err(e) => {
            tracing::warn!(file = name, "no schema in the manifest: cannot read it as {kind}: {e}");
            Vec::new()
        }
    }
}

/// Why a tabular file (Parquet, CSV, JSON lines) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

fn read_schema(path: &Path, kind: &str) -> Result<Schema, TableReadError> {
    let file = File::open(path)?;
    Ok(match kind {
        "parquet" => ParquetRecordBatchReaderBuilder::try_new(file)?.schema().as_ref().clone(),
        "csv" => Format::default().with_header(true).infer_schema(file, Some(INFER_RECORDS))?.0,
        _ => infer_json_schema(BufReader::new(file), Some(INFER_RECORDS))?.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_lines_columns_are_inferred_and_other_files_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "ts,symbol,price\n1,BTC,1.5\n2,ETH,2.5\n").unwrap();
        let cols = file_columns(&csv, "t.csv");
        let got: Vec<(&str, &str)> = cols.iter().map(|c| (c.name.as_str(), c.data_type.as_str())).collect();
        assert_eq!(got, vec![("ts", "Int64"), ("symbol", "Utf8"), ("price", "Float64")]);
        let jl = dir.path().join("q.jsonl");
        std::fs::write(&jl, "{\"bid\": 1.0, \"venue\": \"x\"}\n").unwrap();
        let names: Vec<String> = file_columns(&jl, "q.jsonl").into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["bid", "venue"]);
        assert!(file_columns(&csv, "t.bin").is_empty(), "not tabular by name");
        let bad = dir.path().join("x.parquet");
        std::fs::write(&bad, "not parquet").unwrap();
        assert!(file_columns(&bad, "x.parquet").is_empty(), "unreadable: published without columns");
    }
}
