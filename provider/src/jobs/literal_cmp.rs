//! Filter comparisons of a column with a literal, one vectorized pass per batch.
//!
//! - [`ViewEqLiteral`]: `column = 'literal'` (and `<>`) over a string-view column. DataFusion reads
//!   Parquet strings as string views: 16 bytes per row holding the length and either the whole
//!   string (12 bytes or less, zero-padded) or its first 4 bytes and where the rest lives. Arrow's
//!   kernel takes both sides as arrays and branches per row on lengths, prefixes and buffers; for
//!   `symbol = 'BTC-USD'` over 20M rows that was a tenth of the query (docs/BENCHMARKS.md).
//!   Against an inlined literal the answer is one 128-bit comparison of the row's view with the
//!   literal's view; a longer literal compares length and prefix first and reads the row's bytes
//!   only when they match.
//! - [`FloatCmpLiteral`]: `column <op> literal` over a float column. DataFusion first scans each
//!   batch for `-0.0` (SQL has `-0.0 = 0.0`, Arrow's total order does not), then runs Arrow's
//!   kernel. Against a literal that is neither zero nor NaN the sign of a zero cannot change an
//!   answer, so the scan is skipped and the rows are compared in Arrow's total order directly.
//!
//! Both give exactly the answers of DataFusion's `BinaryExpr` (tested against it).

use std::{
    fmt::{Display, Formatter},
    hash::{Hash, Hasher},
    sync::Arc,
};

use datafusion::{
    arrow::{
        array::BooleanBufferBuilder,
        array::{Array, ArrayRef, AsArray, BooleanArray, builder::make_view},
        buffer::{BooleanBuffer, Buffer},
        datatypes::{DataType, Float32Type, Float64Type, Schema},
        record_batch::RecordBatch,
    },
    common::{DataFusionError, Result, ScalarValue},
    logical_expr::{ColumnarValue, Operator},
    physical_expr::{
        PhysicalExpr,
        expressions::{BinaryExpr, Column, Literal},
    },
};

/// The fast form of a filter conjunct, when it has one.
pub fn fast_form(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Arc<dyn PhysicalExpr>> {
    if let Some(e) = ViewEqLiteral::rewrite(expr, schema) {
        return Some(Arc::new(e));
    }
    FloatCmpLiteral::rewrite(expr, schema).map(|e| Arc::new(e) as Arc<dyn PhysicalExpr>)
}

/// `test` of every value, as a bitmap. Whole words of 64 values at a time, with no bounds
/// checks or iterator state in the loop, so the compiler vectorizes the tests (Arrow's
/// `BooleanBuffer::collect_bool` with an indexing closure did not: the string comparison
/// through it still took 9.5% of filter+sum in the profile).
fn bitmap<T>(values: &[T], test: impl Fn(&T) -> bool) -> BooleanBuffer {
    let mut words = Vec::with_capacity(values.len().div_ceil(64));
    let mut chunks = values.chunks_exact(64);
    for chunk in &mut chunks {
        let mut word = 0u64;
        for (bit, v) in chunk.iter().enumerate() {
            word |= (test(v) as u64) << bit;
        }
        words.push(word);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = 0u64;
        for (bit, v) in rest.iter().enumerate() {
            word |= (test(v) as u64) << bit;
        }
        words.push(word);
    }
    BooleanBuffer::new(Buffer::from_vec(words), 0, values.len())
}

/// The column side of a comparison, compared and hashed as the expression it holds (a derive
/// cannot compare a bare `Arc<dyn PhysicalExpr>`).
#[derive(Debug, Clone)]
struct ColumnExpr(Arc<dyn PhysicalExpr>);

impl PartialEq for ColumnExpr {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref() == other.0.as_ref()
    }
}

impl Eq for ColumnExpr {}

impl Hash for ColumnExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Views hold strings of up to this many bytes inline.
const INLINE: usize = 12;

/// `column = literal`, or `column <> literal` when `negated`, for a `Utf8View` column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewEqLiteral {
    column: ColumnExpr,
    literal: String,
    negated: bool,
}

impl ViewEqLiteral {
    /// The fast form of `expr` when it is a `=` or `<>` between a `Utf8View` column of `schema`
    /// and a non-null `Utf8View` literal (either side; DataFusion coerces literals to the column's
    /// type); `None` otherwise.
    pub fn rewrite(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Self> {
        let binary = expr.downcast_ref::<BinaryExpr>()?;
        let negated = match binary.op() {
            Operator::Eq => false,
            Operator::NotEq => true,
            _ => return None,
        };
        let (column, literal, _) = column_and_literal(binary)?;
        if column.data_type(schema).ok()? != DataType::Utf8View {
            return None;
        }
        let literal = match literal {
            ScalarValue::Utf8View(Some(s)) => s.clone(),
            _ => return None,
        };
        Some(Self { column: ColumnExpr(Arc::clone(column)), literal, negated })
    }
}

impl PhysicalExpr for ViewEqLiteral {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.column.0.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let array = column_array(&self.column.0, batch)?;
        let Some(strings) = array.as_string_view_opt() else {
            return datafusion::common::internal_err!("{} is {}, not Utf8View", self.column.0, array.data_type());
        };
        let views = strings.views();
        let bytes = self.literal.as_bytes();
        let wanted = make_view(bytes, 0, 0);
        let mut equal = if bytes.len() <= INLINE {
            // an inlined view is the length and the zero-padded bytes: equal views, equal strings
            bitmap(views, |v| *v == wanted)
        } else {
            // the low 64 bits are the length and the first 4 bytes
            let candidates = bitmap(views, |v| *v as u64 == wanted as u64);
            let mut equal = BooleanBufferBuilder::new(views.len());
            equal.append_n(views.len(), false);
            for i in candidates.set_indices() {
                equal.set_bit(i, strings.value(i).as_bytes() == bytes);
            }
            equal.finish()
        };
        if self.negated {
            equal = !&equal;
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(equal, strings.nulls().cloned()))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.column.0]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Self {
            column: ColumnExpr(one_child(children)?),
            literal: self.literal.clone(),
            negated: self.negated,
        }))
    }

    fn fmt_sql(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        self.column.0.fmt_sql(f)?;
        write!(f, " {} {}", self.op(), ScalarValue::Utf8View(Some(self.literal.clone())))
    }
}

impl ViewEqLiteral {
    fn op(&self) -> &'static str {
        if self.negated { "!=" } else { "=" }
    }
}

impl Display for ViewEqLiteral {
    fn fmt(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.column.0, self.op(), ScalarValue::Utf8View(Some(self.literal.clone())))
    }
}

/// The column and the literal of `column <op> literal` or `literal <op> column`, and whether the
/// literal is on the left.
fn column_and_literal(binary: &BinaryExpr) -> Option<(&Arc<dyn PhysicalExpr>, &ScalarValue, bool)> {
    let is_column = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Column>().is_some();
    let (l, r) = (binary.left(), binary.right());
    match (r.downcast_ref::<Literal>(), l.downcast_ref::<Literal>()) {
        (Some(lit), _) if is_column(l) => Some((l, lit.value(), false)),
        (_, Some(lit)) if is_column(r) => Some((r, lit.value(), true)),
        _ => None,
    }
}

fn one_child(children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
    let [child] = <[_; 1]>::try_from(children)
        .map_err(|c| DataFusionError::Internal(format!("{} children for a column comparison, not 1", c.len())))?;
    Ok(child)
}

/// The column's batch values as an array.
fn column_array(column: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    column.evaluate(batch)?.into_array(batch.num_rows())
}

/// A comparison in Arrow's total order of floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cmp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl Cmp {
    fn of(op: &Operator) -> Option<Self> {
        Some(match op {
            Operator::Eq => Cmp::Eq,
            Operator::NotEq => Cmp::NotEq,
            Operator::Lt => Cmp::Lt,
            Operator::LtEq => Cmp::LtEq,
            Operator::Gt => Cmp::Gt,
            Operator::GtEq => Cmp::GtEq,
            _ => return None,
        })
    }

    /// `literal <op> column` as `column <op'> literal`.
    fn flipped(self) -> Self {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::LtEq => Cmp::GtEq,
            Cmp::Gt => Cmp::Lt,
            Cmp::GtEq => Cmp::LtEq,
            same => same,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::NotEq => "!=",
            Cmp::Lt => "<",
            Cmp::LtEq => "<=",
            Cmp::Gt => ">",
            Cmp::GtEq => ">=",
        }
    }

    /// Every value's key against `literal`'s, as a bitmap.
    fn bitmap<T>(self, values: &[T], key: impl Fn(T) -> i64, literal: i64) -> BooleanBuffer
    where
        T: Copy,
    {
        match self {
            Cmp::Eq => bitmap(values, |v| key(*v) == literal),
            Cmp::NotEq => bitmap(values, |v| key(*v) != literal),
            Cmp::Lt => bitmap(values, |v| key(*v) < literal),
            Cmp::LtEq => bitmap(values, |v| key(*v) <= literal),
            Cmp::Gt => bitmap(values, |v| key(*v) > literal),
            Cmp::GtEq => bitmap(values, |v| key(*v) >= literal),
        }
    }
}

/// `f64::total_cmp` as an integer: ordering the keys orders the floats in Arrow's total order.
fn key64(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

fn key32(x: f32) -> i64 {
    let bits = x.to_bits() as i32;
    (bits ^ ((((bits >> 31) as u32) >> 1) as i32)) as i64
}

/// `column <op> literal` for a `Float64` or `Float32` column and a literal that is neither zero
/// nor NaN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FloatCmpLiteral {
    column: ColumnExpr,
    cmp: Cmp,
    /// The literal's key ([`key64`] or [`key32`] by the column's type).
    key: i64,
    /// The literal as written back in plans.
    literal: ScalarValue,
}

impl FloatCmpLiteral {
    /// The fast form of `expr` when it compares a float column of `schema` with a literal of
    /// the same type that is neither zero nor NaN (either side); `None` otherwise.
    pub fn rewrite(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Self> {
        let binary = expr.downcast_ref::<BinaryExpr>()?;
        let (column, literal, flipped) = column_and_literal(binary)?;
        let cmp = Cmp::of(binary.op())?;
        let cmp = if flipped { cmp.flipped() } else { cmp };
        let key = match (column.data_type(schema).ok()?, literal) {
            (DataType::Float64, ScalarValue::Float64(Some(v))) if *v != 0.0 && !v.is_nan() => key64(*v),
            (DataType::Float32, ScalarValue::Float32(Some(v))) if *v != 0.0 && !v.is_nan() => key32(*v),
            _ => return None,
        };
        Some(Self { column: ColumnExpr(Arc::clone(column)), cmp, key, literal: literal.clone() })
    }
}

impl PhysicalExpr for FloatCmpLiteral {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.column.0.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let array = column_array(&self.column.0, batch)?;
        let (bits, nulls) = match array.data_type() {
            DataType::Float64 => {
                let v = array.as_primitive::<Float64Type>();
                (self.cmp.bitmap(v.values(), key64, self.key), v.nulls())
            }
            DataType::Float32 => {
                let v = array.as_primitive::<Float32Type>();
                (self.cmp.bitmap(v.values(), key32, self.key), v.nulls())
            }
            other => return datafusion::common::internal_err!("{} is {other}, not a float", self.column.0),
        };
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(bits, nulls.cloned()))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.column.0]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Self { column: ColumnExpr(one_child(children)?), ..(*self).clone() }))
    }

    fn fmt_sql(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        self.column.0.fmt_sql(f)?;
        write!(f, " {} {}", self.cmp.sql(), self.literal)
    }
}

impl Display for FloatCmpLiteral {
    fn fmt(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.column.0, self.cmp.sql(), self.literal)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::{
        arrow::{
            array::{Float32Array, Float64Array, StringViewArray},
            datatypes::{Field, Schema},
        },
        physical_expr::expressions::{col, lit},
    };

    use super::*;

    /// Strings around the inline limit, sharing lengths and prefixes, empty, and null.
    fn batch() -> RecordBatch {
        let values = [
            Some("BTC-USD"),
            Some("BTC-USDT"),
            Some("ETH-USD"),
            None,
            Some(""),
            Some("exactly12byt"),
            Some("exactly12byX"),
            Some("thirteen byte"),
            Some("thirteen bytX"),
            Some("a much longer symbol name"),
            Some("a much longer symbol nam"),
            Some("BTC-USD"),
        ];
        let strings: StringViewArray = values.iter().cycle().take(values.len() * 700).copied().collect();
        let schema = Schema::new(vec![Field::new("s", DataType::Utf8View, true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(strings)]).unwrap()
    }

    #[test]
    fn agrees_with_the_kernel() {
        let batch = batch();
        let schema = batch.schema();
        let mut literals: Vec<&str> = vec!["BTC-USD", "", "exactly12byt", "thirteen byte", "a much longer symbol name"];
        literals.push("nowhere in the batch");
        for text in literals {
            for op in [Operator::Eq, Operator::NotEq] {
                for (l, r) in [
                    (col("s", &schema).unwrap(), lit(ScalarValue::Utf8View(Some(text.into())))),
                    (lit(ScalarValue::Utf8View(Some(text.into()))), col("s", &schema).unwrap()),
                ] {
                    let stock: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(l, op, r));
                    let fast = ViewEqLiteral::rewrite(&stock, &schema).expect("rewritten");
                    let eval = |e: &dyn PhysicalExpr| e.evaluate(&batch).unwrap().into_array(batch.num_rows()).unwrap();
                    let (ours, theirs) = (eval(&fast), eval(stock.as_ref()));
                    assert_eq!(ours.as_boolean(), theirs.as_boolean(), "{stock}");
                    assert_eq!(ours.null_count(), 700, "{stock}: the null rows stay null");
                }
            }
        }
    }

    /// Every float edge: both zeros, both NaNs, infinities, neighbours of the literal, null.
    fn floats() -> RecordBatch {
        let neg_nan = f64::from_bits(f64::NAN.to_bits() | (1 << 63));
        let values = [
            Some(400.0),
            Some(399.99),
            Some(400.0f64.next_up()),
            Some(-0.0),
            Some(0.0),
            Some(f64::NAN),
            Some(neg_nan),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            Some(-400.0),
            None,
            Some(f64::MIN_POSITIVE),
        ];
        let f64s: Float64Array = values.iter().cycle().take(values.len() * 700).copied().collect();
        let f32s: Float32Array = f64s.iter().map(|v| v.map(|v| v as f32)).collect();
        let schema =
            Schema::new(vec![Field::new("d", DataType::Float64, true), Field::new("f", DataType::Float32, true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(f64s), Arc::new(f32s)]).unwrap()
    }

    #[test]
    fn floats_agree_with_datafusion() {
        let batch = floats();
        let schema = batch.schema();
        let ops = [Operator::Eq, Operator::NotEq, Operator::Lt, Operator::LtEq, Operator::Gt, Operator::GtEq];
        for v in [400.0, -400.0, 399.99, f64::INFINITY, f64::NEG_INFINITY, 1e-30, -1e-30] {
            for (column, literal) in [("d", ScalarValue::Float64(Some(v))), ("f", ScalarValue::Float32(Some(v as f32)))]
            {
                for op in ops {
                    for (l, r) in [
                        (col(column, &schema).unwrap(), lit(literal.clone())),
                        (lit(literal.clone()), col(column, &schema).unwrap()),
                    ] {
                        let stock: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(l, op, r));
                        let fast = FloatCmpLiteral::rewrite(&stock, &schema).expect("rewritten");
                        let eval =
                            |e: &dyn PhysicalExpr| e.evaluate(&batch).unwrap().into_array(batch.num_rows()).unwrap();
                        let (ours, theirs) = (eval(&fast), eval(stock.as_ref()));
                        assert_eq!(ours.as_boolean(), theirs.as_boolean(), "{stock}");
                        assert_eq!(ours.null_count(), 700, "{stock}");
                    }
                }
            }
        }
    }

    #[test]
    fn leaves_other_comparisons_alone() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8View, true),
            Field::new("u", DataType::Utf8, true),
            Field::new("t", DataType::Utf8View, true),
        ]);
        let cmp = |l, op, r| -> Arc<dyn PhysicalExpr> { Arc::new(BinaryExpr::new(l, op, r)) };
        let s = || col("s", &schema).unwrap();
        let views = |v: &str| lit(ScalarValue::Utf8View(Some(v.into())));
        for (name, e) in [
            ("less than", cmp(s(), Operator::Lt, views("x"))),
            ("two columns", cmp(s(), Operator::Eq, col("t", &schema).unwrap())),
            ("a Utf8 column", cmp(col("u", &schema).unwrap(), Operator::Eq, lit("x"))),
            ("a null literal", cmp(s(), Operator::Eq, lit(ScalarValue::Utf8View(None)))),
            ("a Utf8 literal", cmp(s(), Operator::Eq, lit("x"))),
        ] {
            assert!(ViewEqLiteral::rewrite(&e, &schema).is_none(), "{name}");
        }
        // zero and NaN literals: the sign of a zero decides, DataFusion's scan stays
        let schema = floats().schema();
        let d = || col("d", &schema).unwrap();
        for (name, e) in [
            ("zero", cmp(d(), Operator::Gt, lit(0.0f64))),
            ("minus zero", cmp(d(), Operator::Eq, lit(-0.0f64))),
            ("NaN", cmp(d(), Operator::Lt, lit(f64::NAN))),
            ("a null literal", cmp(d(), Operator::Lt, lit(ScalarValue::Float64(None)))),
            ("an integer literal", cmp(d(), Operator::Lt, lit(400i64))),
            ("plus", cmp(d(), Operator::Plus, lit(400.0f64))),
        ] {
            assert!(FloatCmpLiteral::rewrite(&e, &schema).is_none(), "{name}");
        }
    }
}
