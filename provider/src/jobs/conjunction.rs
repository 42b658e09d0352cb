//! A filter's `a AND b AND …`, evaluated conjunct by conjunct over whole batches.
//!
//! DataFusion's `AND` evaluates its right side on the left side's selected rows only when the
//! left side keeps at most a fifth of the batch, and then rebuilds the full-length mask one run
//! of selected rows at a time. Market data interleaves its symbols, so `symbol = 'BTC-USD'` keeps
//! every fifth row: runs of one row, a slice and a builder call per row, then the filter over
//! again. That path took a third of `SELECT sum(qty) FROM trades WHERE symbol = 'BTC-USD' AND
//! price > 400` (docs/BENCHMARKS.md). Here each conjunct runs over the whole batch and the
//! masks are combined with a vectorized Kleene `AND`; the pre-selection is kept for the case it
//! is built for: a sparse mask in long runs. The rule swaps only filter predicates, where a
//! null and a false row are both dropped.

use std::{
    fmt::{Display, Formatter},
    hash::Hash,
    sync::Arc,
};

use datafusion::{
    arrow::{
        array::{Array, AsArray, BooleanArray},
        compute::{SlicesIterator, kernels::boolean::and_kleene},
        datatypes::{DataType, Schema},
        record_batch::RecordBatch,
    },
    common::{
        Result,
        config::ConfigOptions,
        tree_node::{Transformed, TransformedResult, TreeNode},
    },
    logical_expr::ColumnarValue,
    physical_expr::{PhysicalExpr, split_conjunction},
    physical_optimizer::PhysicalOptimizerRule,
    physical_plan::{
        ExecutionPlan,
        filter::{FilterExec, FilterExecBuilder},
    },
};

use super::literal_cmp::fast_form;

/// A mask keeping at most this share of rows may pre-select the next conjunct's input...
const SPARSE: f64 = 0.2;
/// ...when its selected rows come in runs of at least this many rows on average.
const LONG_RUN: usize = 16;

/// `AND` over two or more boolean conjuncts, for a filter predicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Conjunction {
    conjuncts: Vec<Arc<dyn PhysicalExpr>>,
}

impl Conjunction {
    pub fn new(conjuncts: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        Self { conjuncts }
    }
}

/// Whether evaluating the next conjunct on `mask`'s rows only (copy them out, evaluate, scatter
/// back) beats evaluating it on every row: few rows kept, in long runs.
fn preselect(mask: &BooleanArray) -> bool {
    let kept = mask.true_count();
    if kept == 0 || kept as f64 > SPARSE * mask.len() as f64 {
        return false;
    }
    // long enough on average means at most this many runs; stop counting past it
    let most = kept / LONG_RUN;
    SlicesIterator::new(mask).take(most + 1).count() <= most
}

impl PhysicalExpr for Conjunction {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        for c in &self.conjuncts {
            if c.nullable(input_schema)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let rows = batch.num_rows();
        let mut acc: Option<BooleanArray> = None;
        for c in &self.conjuncts {
            let value = match &acc {
                // rows the mask drops stay dropped whatever this conjunct says of them (a null
                // from the scatter there only meets a false or a null)
                Some(mask) if preselect(mask) => c.evaluate_selection(batch, mask)?,
                _ => c.evaluate(batch)?,
            };
            let array = value.into_array(rows)?;
            let Some(b) = array.as_boolean_opt() else {
                return datafusion::common::internal_err!("filter conjunct {c} is {}, not Boolean", array.data_type());
            };
            let next = match acc {
                None => b.clone(),
                Some(a) => and_kleene(&a, b)?,
            };
            // nothing left to keep: the remaining conjuncts cannot bring a row back
            if next.true_count() == 0 {
                return Ok(ColumnarValue::Array(Arc::new(next)));
            }
            acc = Some(next);
        }
        match acc {
            Some(a) => Ok(ColumnarValue::Array(Arc::new(a))),
            None => Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![true; rows])))),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.conjuncts.iter().collect()
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Conjunction::new(children)))
    }

    fn fmt_sql(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.conjuncts.iter().enumerate() {
            if i > 0 {
                write!(f, " AND ")?;
            }
            c.fmt_sql(f)?;
        }
        Ok(())
    }
}

impl Display for Conjunction {
    fn fmt(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.conjuncts.iter().enumerate() {
            if i > 0 {
                write!(f, " AND ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Rewrites every `FilterExec` whose predicate is a conjunction to evaluate it as a
/// [`Conjunction`], and each of its column-to-literal comparisons that has a fast form
/// (`super::literal_cmp`) as that.
/// Runs last, after the plan's other rules have placed and pushed the filters.
#[derive(Debug, Default)]
pub struct WholeBatchConjunctions;

impl PhysicalOptimizerRule for WholeBatchConjunctions {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let schema = filter.input().schema();
            let mut changed = false;
            let mut conjuncts: Vec<_> = split_conjunction(filter.predicate())
                .into_iter()
                .map(|c| match fast_form(c, &schema) {
                    Some(fast) => {
                        changed = true;
                        fast
                    }
                    None => Arc::clone(c),
                })
                .collect();
            let predicate = match conjuncts.len() {
                0 => return Ok(Transformed::no(node)),
                1 if !changed => return Ok(Transformed::no(node)),
                1 => conjuncts.remove(0),
                _ => Arc::new(Conjunction::new(conjuncts)),
            };
            let rewritten = FilterExecBuilder::from(filter).with_predicate(predicate).build()?;
            Ok(Transformed::yes(Arc::new(rewritten) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "whole_batch_conjunctions"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use datafusion::{
        arrow::{
            array::Int64Array,
            compute::prep_null_mask_filter,
            datatypes::{Field, Schema},
        },
        logical_expr::Operator,
        physical_expr::expressions::{BinaryExpr, col, lit},
    };

    use super::*;

    /// Column `a`'s value at a row.
    type Column = fn(i64) -> Option<i64>;

    fn batch(a: Column, rows: i64) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("b", DataType::Int64, false)]);
        let a: Int64Array = (0..rows).map(a).collect();
        let b: Int64Array = (0..rows).map(|i| Some(i % 7)).collect();
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(a), Arc::new(b)]).unwrap()
    }

    /// `a = k AND b > 2 AND a < b` both ways; the rows a filter keeps (null counts as false).
    fn kept(batch: &RecordBatch, k: i64) -> (BooleanArray, BooleanArray) {
        let s = batch.schema();
        let cmp = |l: &str, op, r: Arc<dyn PhysicalExpr>| -> Arc<dyn PhysicalExpr> {
            Arc::new(BinaryExpr::new(col(l, &s).unwrap(), op, r))
        };
        let parts = vec![
            cmp("a", Operator::Eq, lit(k)),
            cmp("b", Operator::Gt, lit(2i64)),
            cmp("a", Operator::Lt, col("b", &s).unwrap()),
        ];
        let nested: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(BinaryExpr::new(parts[0].clone(), Operator::And, parts[1].clone())),
            Operator::And,
            parts[2].clone(),
        ));
        let eval = |e: &dyn PhysicalExpr| {
            let v = e.evaluate(batch).unwrap().into_array(batch.num_rows()).unwrap();
            let b = v.as_boolean();
            if b.null_count() > 0 { prep_null_mask_filter(b) } else { b.clone() }
        };
        (eval(&Conjunction::new(parts)), eval(nested.as_ref()))
    }

    #[test]
    fn keeps_the_rows_and_keeps_them_alike() {
        let rows = 10_000;
        let cases: [(&str, Column, i64); 4] = [
            // every fifth row: the interleaved case, evaluated over whole batches
            ("interleaved", |i| Some(i % 5), 1),
            // runs of 1000 rows: the clustered case, pre-selected
            ("clustered", |i| Some(i / 1000), 1),
            ("with nulls", |i| if i % 3 == 0 { None } else { Some(i % 5) }, 1),
            ("nothing kept", |i| Some(i % 5), 9),
        ];
        for (name, a, k) in cases {
            let b = batch(a, rows);
            let (ours, theirs) = kept(&b, k);
            assert_eq!(ours, theirs, "{name}");
            if k < 5 {
                assert!(ours.true_count() > 0, "{name}: the case keeps rows");
            }
        }
    }

    #[test]
    fn preselects_only_sparse_masks_in_long_runs() {
        let mask = |f: &dyn Fn(usize) -> bool| BooleanArray::from((0..10_000).map(f).collect::<Vec<_>>());
        assert!(!preselect(&mask(&|i| i % 5 == 0)), "every fifth row");
        assert!(preselect(&mask(&|i| i / 1000 == 3)), "one run of 1000");
        assert!(!preselect(&mask(&|i| i / 1000 % 2 == 0)), "half the rows");
        assert!(!preselect(&mask(&|_| false)), "nothing");
    }
}
