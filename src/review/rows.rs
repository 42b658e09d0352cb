//! Result files as rows an arbiter can compare: typed, with nulls kept apart from empty values,
//! and floating-point values rounded to 12 significant digits (the last bits of a float sum
//! depend on how the work was split).
//!
//! Files are read directly (Parquet's reader, Arrow's CSV reader over one file), never through
//! a listing-table path, so a file name with glob characters reads that file and no other. A
//! CSV result is read with every column as text: no type inference, which could fail or fold
//! `007` into `7`.

use std::{fs::File, io::BufReader, path::Path, sync::Arc};

use bdc_core::jobs::ResultFormat;
use datafusion::{
    arrow::{
        array::{Array, Float32Array, Float64Array},
        csv::{ReaderBuilder, reader::Format},
        datatypes::{DataType, Field, Schema},
        record_batch::RecordBatch,
        util::display::{ArrayFormatter, FormatOptions},
    },
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder,
};

/// One cell: None is null.
pub type Cell = Option<String>;

/// A result as read: its columns (name and type) and its rows, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Cell>>,
}

/// How two results compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    SameOrder,
    OtherOrder,
    OtherColumns {
        signed: Vec<(String, String)>,
        rerun: Vec<(String, String)>,
    },
    /// Rows only in the first (signed) and only in the second (re-run), counting repeats.
    OtherRows {
        extra: Vec<Vec<Cell>>,
        missing: Vec<Vec<Cell>>,
    },
}

/// Compares the signed result with the re-run.
pub fn compare(signed: &Rows, rerun: &Rows) -> Comparison {
    if signed.columns != rerun.columns {
        return Comparison::OtherColumns { signed: signed.columns.clone(), rerun: rerun.columns.clone() };
    }
    if signed.rows == rerun.rows {
        return Comparison::SameOrder;
    }
    let (mut a, mut b) = (signed.rows.clone(), rerun.rows.clone());
    a.sort();
    b.sort();
    if a == b {
        return Comparison::OtherOrder;
    }
    let (extra, missing) = multiset_difference(&a, &b);
    Comparison::OtherRows { extra, missing }
}

/// Rows of `a` not in `b` and rows of `b` not in `a`, counting repeats (both sorted).
pub fn multiset_difference<T: Ord + Clone>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(x.clone());
                i += 1;
            }
            (Some(_), Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x.clone());
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

/// Why a result file does not read as its format (the provider's error for tabular files).
pub use bdc_provider::schema::TableReadError as ReadError;

/// Reads a result file in `format`. An error says why it is not a readable file of that format.
pub fn read(path: &Path, format: ResultFormat) -> Result<Rows, ReadError> {
    let file = File::open(path)?;
    let batches: Vec<RecordBatch> = match format {
        ResultFormat::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)?.build()?.collect::<Result<_, _>>()?,
        ResultFormat::Csv => {
            // the header's names, every column as text
            let (inferred, _) =
                Format::default().with_header(true).infer_schema(BufReader::new(File::open(path)?), Some(1))?;
            let schema = Arc::new(Schema::new(
                inferred.fields().iter().map(|f| Field::new(f.name(), DataType::Utf8, true)).collect::<Vec<_>>(),
            ));
            ReaderBuilder::new(schema).with_header(true).build(BufReader::new(file))?.collect::<Result<_, _>>()?
        }
    };
    let columns = match batches.first() {
        Some(b) => b.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect(),
        None if format == ResultFormat::Parquet => ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect(),
        None => Vec::new(),
    };
    let opts = FormatOptions::default();
    let mut rows = Vec::new();
    for b in &batches {
        let cols: Vec<Box<dyn Fn(usize) -> Cell + '_>> =
            b.columns().iter().map(|c| cell_reader(c.as_ref(), &opts)).collect::<Result<_, _>>()?;
        for i in 0..b.num_rows() {
            rows.push(cols.iter().map(|f| f(i)).collect());
        }
    }
    Ok(Rows { columns, rows })
}

/// A float as compared: 12 significant digits.
fn float(v: f64) -> String {
    if v.is_finite() { format!("{v:.11e}") } else { v.to_string() }
}

/// Reads cell `i` of a column: null as None, floats rounded, text that is a decimal number with
/// a fraction or exponent (a float in a CSV result) rounded the same way.
fn cell_reader<'a>(
    col: &'a dyn Array,
    opts: &'a FormatOptions<'a>,
) -> Result<Box<dyn Fn(usize) -> Cell + 'a>, datafusion::arrow::error::ArrowError> {
    if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
        return Ok(Box::new(move |i| (!a.is_null(i)).then(|| float(a.value(i)))));
    }
    if let Some(a) = col.as_any().downcast_ref::<Float32Array>() {
        return Ok(Box::new(move |i| (!a.is_null(i)).then(|| float(a.value(i) as f64))));
    }
    let text = col.data_type() == &DataType::Utf8;
    let f = ArrayFormatter::try_new(col, opts)?;
    Ok(Box::new(move |i| {
        if col.is_null(i) {
            return None;
        }
        let s = f.value(i).to_string();
        if text
            && s.contains(['.', 'e', 'E'])
            && let Ok(v) = s.parse::<f64>()
        {
            return Some(float(v));
        }
        Some(s)
    }))
}

/// A row for a finding: cells joined by `, `, text quoted, null as `NULL`.
pub fn show(row: &[Cell]) -> String {
    let cells: Vec<String> =
        row.iter().map(|c| c.as_ref().map(|s| format!("{s:?}")).unwrap_or("NULL".into())).collect();
    format!("({})", cells.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r[1].csv");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn rows(text: &str) -> Rows {
        let (_d, p) = csv(text);
        read(&p, ResultFormat::Csv).unwrap()
    }

    #[test]
    fn csv_results_compare_by_typed_cells() {
        let a = rows("side,n\nbuy,500\nsell,500\n");
        assert_eq!(
            a.rows,
            vec![vec![Some("buy".into()), Some("500".into())], vec![Some("sell".into()), Some("500".into())]]
        );
        assert_eq!(compare(&a, &a), Comparison::SameOrder);
        assert_eq!(compare(&rows("side,n\nsell,500\nbuy,500\n"), &a), Comparison::OtherOrder);
        // cells are not joined: "a|b","c" is not "a","b|c"
        assert_ne!(compare(&rows("x,y\n\"a|b\",c\n"), &rows("x,y\na,\"b|c\"\n")), Comparison::SameOrder);
        // no inference: 007 is not 7; a null is not an empty text
        assert!(matches!(compare(&rows("n\n007\n"), &rows("n\n7\n")), Comparison::OtherRows { .. }));
        // a header is not a row
        assert!(matches!(compare(&rows("a,b\n1,2\n"), &rows("1,2\na,b\n")), Comparison::OtherColumns { .. }));
        // float sums that differ in the last bits are the same value
        assert_eq!(compare(&rows("s\n0.30000000000000004\n"), &rows("s\n0.3\n")), Comparison::SameOrder);
        assert!(matches!(compare(&rows("s\n0.31\n"), &rows("s\n0.3\n")), Comparison::OtherRows { .. }));
        // quoted newlines are one value
        assert_eq!(rows("t\n\"a\nb\"\n").rows.len(), 1);
        match compare(&rows("side,n\nbuy,499\nsell,501\n"), &a) {
            Comparison::OtherRows { extra, missing } => {
                assert_eq!(
                    extra.iter().map(|r| show(r)).collect::<Vec<_>>(),
                    ["(\"buy\", \"499\")", "(\"sell\", \"501\")"]
                );
                assert_eq!(missing.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_not_its_format_does_not_read() {
        let (_d, p) = csv("side,n\nbuy,500\n");
        assert!(read(&p, ResultFormat::Parquet).is_err());
        let (_d, p) = csv("a,b\n1,2,3\n");
        assert!(read(&p, ResultFormat::Csv).is_err(), "a ragged row");
    }

    #[test]
    fn multiset_difference_counts_repeats() {
        let (a, b) = (["a", "b", "b", "d"], ["a", "b", "c", "d", "d"]);
        let (only_a, only_b) = multiset_difference(&a, &b);
        assert_eq!(only_a, vec!["b"]);
        assert_eq!(only_b, vec!["c", "d"]);
        assert_eq!(multiset_difference(&a, &a), (vec![], vec![]));
    }
}
