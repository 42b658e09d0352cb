//! Matchmaking expressions, in CEL (the `cel` crate: no loops, no I/O, no side effects).
//!
//! A request has an optional `require` expression (bool) and named `rank` criteria (each a
//! number); an offer's score is the sum of its criteria, and every criterion's value is returned
//! so the choice can be explained. Expressions see only the offer's attributes (see
//! [`OfferAttrs`]). CEL has no loops, but its macros (`all`, `exists`, `exists_one`, `map`,
//! `filter`) are comprehensions, and nested ones multiply: `[…].all(a, […].all(b, …))` over two
//! 500-element literals is 250,000 steps per offer. So before anything runs, every expression's
//! cost is bounded from its syntax tree ([`cost`]): a comprehension may range over a list or map
//! literal only (offer attributes are scalars; ranging over a number is also what crashed the
//! evaluator), may not nest, and costs its range's length times its body; a request's
//! expressions together may cost [`MAX_REQUEST_COST`] per offer. Scoring stops at a deadline and
//! when the request is dropped, and a panic inside the evaluator is an error, not a crash.

use std::collections::BTreeMap;

use cel::{
    Context, IdedExpr, Program, Value,
    common::ast::{EntryExpr, Expr},
};

/// Longest expression accepted, bytes.
pub const MAX_EXPR_BYTES: usize = 1024;
/// Deepest bracket nesting accepted.
pub const MAX_NESTING: i32 = 64;
/// Most rank criteria in one request.
pub const MAX_CRITERIA: usize = 16;
/// Most evaluation steps (syntax nodes visited, comprehension bodies once per element) all of a
/// request's expressions may take on one offer.
pub const MAX_REQUEST_COST: u64 = 4_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RankError {
    #[error("{what} is {len} bytes long; the limit is {MAX_EXPR_BYTES}")]
    TooLong { what: String, len: usize },
    #[error("{what} does not parse: {reason}")]
    Parse { what: String, reason: String },
    #[error("at most {MAX_CRITERIA} rank criteria")]
    TooMany,
    #[error("{what} failed on offer {offer}: {reason}")]
    Eval { what: String, offer: String, reason: String },
    #[error("{what} must give a {want}, gave {got}")]
    Type { what: String, want: &'static str, got: String },
    #[error("{what} is refused: {reason}")]
    Refused { what: String, reason: &'static str },
    #[error("the expressions cost {cost} steps per offer; the limit is {MAX_REQUEST_COST}")]
    TooCostly { cost: u64 },
    /// Scoring passed its deadline (or the request went away).
    #[error("scoring stopped after {secs} s: narrow the request (a root, fewer or cheaper criteria)")]
    Deadline { secs: u64 },
}

/// An upper bound on the steps evaluating `e` takes, or why it is refused.
pub fn cost(e: &IdedExpr) -> Result<u64, &'static str> {
    cost_in(e, false)
}

fn cost_in(e: &IdedExpr, in_comprehension: bool) -> Result<u64, &'static str> {
    let sum = |es: &mut dyn Iterator<Item = &IdedExpr>| -> Result<u64, &'static str> {
        let mut total = 0u64;
        for e in es {
            total = total.saturating_add(cost_in(e, in_comprehension)?);
        }
        Ok(total)
    };
    Ok(1 + match &e.expr {
        Expr::Unspecified => return Err("an empty expression"),
        Expr::Struct(_) => return Err("message literals are not supported"),
        Expr::Ident(_) | Expr::Literal(_) => 0,
        Expr::Select(s) => cost_in(&s.operand, in_comprehension)?,
        Expr::Call(c) => sum(&mut c.target.iter().map(|t| &**t).chain(c.args.iter()))?,
        Expr::List(l) => sum(&mut l.elements.iter())?,
        Expr::Map(m) => {
            let mut parts = Vec::with_capacity(m.entries.len() * 2);
            for entry in &m.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(me) => parts.extend([&me.key, &me.value]),
                    EntryExpr::StructField(_) => return Err("message literals are not supported"),
                }
            }
            sum(&mut parts.into_iter())?
        }
        Expr::Comprehension(c) => {
            if in_comprehension {
                return Err("comprehensions (all, exists, exists_one, map, filter) may not nest");
            }
            let n = match &c.iter_range.expr {
                Expr::List(l) => l.elements.len() as u64,
                Expr::Map(m) => m.entries.len() as u64,
                _ => {
                    return Err(
                        "a comprehension ranges over a list or map literal only (offer attributes are scalars)",
                    );
                }
            };
            let once = [&c.iter_range, &c.accu_init, &c.result]
                .into_iter()
                .try_fold(0u64, |acc, e| Ok::<_, &'static str>(acc.saturating_add(cost_in(e, true)?)))?;
            let body = cost_in(&c.loop_cond, true)?.saturating_add(cost_in(&c.loop_step, true)?);
            once.saturating_add(n.saturating_mul(body))
        }
    })
}

pub use bdc_market_api::OfferAttrs;

/// Reads one attribute of an offer as a CEL value.
type Getter = fn(&OfferAttrs) -> Value;

/// The attributes expressions can use: the fields of [`OfferAttrs`], by name.
pub const ATTRS: [(&str, Getter); 8] = [
    ("price_gib", |o| o.price_gib.into()),
    ("capacity_mibps", |o| o.capacity_mibps.into()),
    ("reputation", |o| o.reputation.into()),
    ("deals_completed", |o| o.deals_completed.into()),
    ("region", |o| o.region.clone().into()),
    ("window_mib", |o| o.window_mib.into()),
    ("size_gib", |o| o.size_gib.into()),
    ("throughput_mibps", |o| o.throughput_mibps.into()),
];

/// An offer's total score and each criterion's value.
pub type Scored = (f64, BTreeMap<String, f64>);

/// A compiled request.
pub struct Matcher {
    require: Option<Program>,
    criteria: Vec<(String, Program)>,
    /// Which attributes (in [`ATTRS`] order) any expression names; only these are put in an
    /// offer's scope (half the cost of scoring was filling a scope with unused ones)
    used: [bool; ATTRS.len()],
    /// CEL's built-in functions, registered once; each offer gets a child scope of this with its
    /// attributes (building a default context per offer was most of the cost of a match)
    root: Context<'static>,
}

fn compile(what: &str, src: &str) -> Result<Program, RankError> {
    if src.len() > MAX_EXPR_BYTES {
        return Err(RankError::TooLong { what: what.into(), len: src.len() });
    }
    // the parser recurses: refuse pathological nesting before it sees it
    let (mut depth, mut deepest) = (0i32, 0i32);
    for c in src.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        return Err(RankError::Parse { what: what.into(), reason: "nested too deeply".into() });
    }
    Program::compile(src).map_err(|e| RankError::Parse { what: what.into(), reason: e.to_string() })
}

impl Matcher {
    pub fn new(require: Option<&str>, rank: &BTreeMap<String, String>) -> Result<Self, RankError> {
        if rank.len() > MAX_CRITERIA {
            return Err(RankError::TooMany);
        }
        let require = require.map(|r| compile("require", r)).transpose()?;
        let criteria: Vec<(String, Program)> = rank
            .iter()
            .map(|(name, src)| Ok((name.clone(), compile(&format!("rank.{name}"), src)?)))
            .collect::<Result<_, RankError>>()?;
        let mut total = 0u64;
        let named = require.iter().map(|p| ("require".to_string(), p));
        for (what, p) in named.chain(criteria.iter().map(|(n, p)| (format!("rank.{n}"), p))) {
            total = total.saturating_add(cost(p.expression()).map_err(|reason| RankError::Refused { what, reason })?);
        }
        if total > MAX_REQUEST_COST {
            return Err(RankError::TooCostly { cost: total });
        }
        let mut used = [false; ATTRS.len()];
        for p in require.iter().chain(criteria.iter().map(|(_, p)| p)) {
            let refs = p.references();
            for (u, (name, _)) in used.iter_mut().zip(ATTRS) {
                *u |= refs.has_variable(name);
            }
        }
        Ok(Self { require, criteria, used, root: Context::default() })
    }

    fn context<'a>(&'a self, o: &OfferAttrs) -> Context<'a> {
        let mut ctx = self.root.new_inner_scope();
        for ((name, get), _) in ATTRS.iter().zip(self.used).filter(|(_, used)| *used) {
            ctx.add_variable_from_value(*name, get(o));
        }
        ctx
    }

    /// None if the offer fails `require`; else each criterion's value and their sum. `id` names
    /// the offer in an error.
    pub fn score(&self, id: impl Fn() -> String, o: &OfferAttrs) -> Result<Option<Scored>, RankError> {
        Ok(self.values(id, o)?.map(|(total, values)| (total, self.explain(&values))))
    }

    /// [`Self::score`] without naming the criteria: their values in the rank map's key order
    /// (what a scan keeps per offer; the winners' are named afterwards).
    pub fn values(&self, id: impl Fn() -> String, o: &OfferAttrs) -> Result<Option<(f64, Vec<f64>)>, RankError> {
        let ctx = self.context(o);
        if let Some(req) = &self.require {
            match execute(req, &ctx) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => return Ok(None),
                Ok(v) => return Err(RankError::Type { what: "require".into(), want: "bool", got: format!("{v:?}") }),
                Err(e) => {
                    return Err(RankError::Eval { what: "require".into(), offer: id(), reason: e.to_string() });
                }
            }
        }
        let mut values = Vec::with_capacity(self.criteria.len());
        let mut total = 0.0;
        for (name, p) in &self.criteria {
            let what = || format!("rank.{name}");
            let v = match execute(p, &ctx) {
                Ok(Value::Float(f)) => f,
                Ok(Value::Int(i)) => i as f64,
                Ok(Value::UInt(u)) => u as f64,
                Ok(Value::Bool(b)) => f64::from(u8::from(b)),
                Ok(v) => return Err(RankError::Type { what: what(), want: "number", got: format!("{v:?}") }),
                Err(e) => return Err(RankError::Eval { what: what(), offer: id(), reason: e.to_string() }),
            };
            if !v.is_finite() {
                return Err(RankError::Eval { what: what(), offer: id(), reason: format!("not a finite number: {v}") });
            }
            total += v;
            values.push(v);
        }
        Ok(Some((total, values)))
    }

    /// Names the values [`Self::values`] gave (the criteria are in the rank map's key order).
    fn explain(&self, values: &[f64]) -> BTreeMap<String, f64> {
        self.criteria.iter().zip(values).map(|((name, _), v)| (name.clone(), *v)).collect()
    }
}

/// Why evaluating one expression on one offer failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalFailure {
    #[error(transparent)]
    Cel(#[from] cel::ExecutionError),
    /// The evaluator panicked (the `cel` crate has `todo!()`s for forms [`cost`] should already
    /// refuse).
    #[error("the expression evaluator cannot evaluate this form")]
    Panicked,
}

/// Runs a program; a panic inside the evaluator becomes [`EvalFailure::Panicked`].
fn execute(p: &Program, ctx: &Context) -> Result<Value, EvalFailure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.execute(ctx))) {
        Ok(r) => Ok(r?),
        Err(_) => Err(EvalFailure::Panicked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(price: f64, region: &str) -> OfferAttrs {
        OfferAttrs {
            price_gib: price,
            capacity_mibps: 100.0,
            reputation: 0.5,
            deals_completed: 3,
            region: region.into(),
            window_mib: 8.0,
            size_gib: 1.0,
            throughput_mibps: 0.0,
        }
    }

    #[test]
    fn scores_are_the_sum_of_named_criteria() {
        let rank = BTreeMap::from([
            ("cheap".to_string(), "-2.0 * price_gib".to_string()),
            ("rep".into(), "reputation".into()),
        ]);
        let m = Matcher::new(Some("region == 'eu'"), &rank).unwrap();
        let (total, parts) = m.score(|| "a".into(), &offer(1.5, "eu")).unwrap().unwrap();
        assert_eq!(parts["cheap"], -3.0);
        assert_eq!(parts["rep"], 0.5);
        assert_eq!(total, -2.5);
        assert!(m.score(|| "b".into(), &offer(1.5, "us")).unwrap().is_none(), "require filters");
    }

    #[test]
    fn every_attribute_is_visible_under_its_field_name() {
        let o = OfferAttrs { deals_completed: 7, window_mib: 16.0, throughput_mibps: 42.5, ..offer(2.0, "asia") };
        let fields = serde_json::to_value(&o).unwrap();
        assert_eq!(fields.as_object().unwrap().len(), ATTRS.len(), "ATTRS lists every field");
        for (name, _) in ATTRS {
            let src =
                if name == "region" { "region == 'asia' ? 1.0 : 0.0".to_string() } else { format!("{name} + 0.0") };
            let want = match &fields[name] {
                serde_json::Value::String(_) => 1.0,
                v => v.as_f64().unwrap(),
            };
            let src = if name == "deals_completed" { "double(deals_completed)".to_string() } else { src };
            let m = Matcher::new(None, &BTreeMap::from([("x".to_string(), src)])).unwrap();
            let (total, _) = m.score(String::new, &o).unwrap().unwrap();
            assert_eq!(total, want, "{name}");
        }
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        let rank = BTreeMap::from([("x".to_string(), "price_gib +".to_string())]);
        assert!(matches!(Matcher::new(None, &rank), Err(RankError::Parse { .. })));
        let long = "1 + ".repeat(400) + "1";
        let rank = BTreeMap::from([("x".to_string(), long)]);
        assert!(matches!(Matcher::new(None, &rank), Err(RankError::TooLong { .. })));
        let deep = "(".repeat(100) + "1" + &")".repeat(100);
        let rank = BTreeMap::from([("x".to_string(), deep)]);
        assert!(matches!(Matcher::new(None, &rank), Err(RankError::Parse { .. })));
        let flat = "(1.0) + ".repeat(70) + "1.0";
        let rank = BTreeMap::from([("x".to_string(), flat)]);
        assert!(Matcher::new(None, &rank).is_ok(), "many brackets side by side are not nesting");
        let rank = BTreeMap::from([("x".to_string(), "region".to_string())]);
        let m = Matcher::new(None, &rank).unwrap();
        assert!(matches!(m.score(|| "a".into(), &offer(1.0, "eu")), Err(RankError::Type { .. })));
        let rank = BTreeMap::from([("x".to_string(), "no_such_attr * 2".to_string())]);
        let m = Matcher::new(None, &rank).unwrap();
        assert!(matches!(m.score(|| "a".into(), &offer(1.0, "eu")), Err(RankError::Eval { .. })));
    }

    fn refused(require: &str) -> RankError {
        Matcher::new(Some(require), &BTreeMap::new()).err().unwrap_or_else(|| panic!("{require} was accepted"))
    }

    #[test]
    fn runaway_and_crashing_expressions_are_refused_before_they_run() {
        let list: Vec<String> = (0..120).map(|i| i.to_string()).collect();
        let list = format!("[{}]", list.join(","));
        // nested comprehensions: 14,400 steps per offer (and 10^9 with longer lists)
        let nested = format!("{list}.all(a, {list}.all(b, a + b >= 0))");
        assert!(nested.len() <= MAX_EXPR_BYTES);
        assert!(matches!(refused(&nested), RankError::Refused { reason, .. } if reason.contains("may not nest")));
        // a comprehension over a number made the cel crate hit a todo!()
        for src in ["price_gib.all(x, x > 0.0)", "1.exists(x, true)", "region.all(c, true)"] {
            assert!(matches!(refused(src), RankError::Refused { reason, .. } if reason.contains("literal")), "{src}");
        }
        assert!(matches!(refused("Foo{a: 1} == 1"), RankError::Refused { .. } | RankError::Parse { .. }));
        // one comprehension is fine while it is cheap, refused past the per-offer budget
        let cheap = Matcher::new(Some(r#"["eu", "us"].exists(r, r == region)"#), &BTreeMap::new()).unwrap();
        assert!(cheap.values(|| "o".into(), &offer(1.0, "eu")).unwrap().is_some());
        assert!(cheap.values(|| "o".into(), &offer(1.0, "ap")).unwrap().is_none());
        let long: Vec<String> = (0..250).map(|i| i.to_string()).collect();
        let costly = format!("[{}].all(a, a * a * a * a * a * a >= 0)", long.join(","));
        let err = Matcher::new(Some(&costly), &BTreeMap::new()).err().expect("over budget");
        assert!(matches!(err, RankError::TooCostly { cost } if cost > MAX_REQUEST_COST), "{err}");
    }

    /// CEL-like text from a small grammar: attributes, literals, operators, macros, nesting.
    fn expr() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::{prelude::*, sample::select};
        let atom = prop_oneof![
            Just("price_gib".to_string()),
            Just("region".to_string()),
            Just("deals_completed".to_string()),
            Just("x".to_string()),
            (-1000i64..1000).prop_map(|n| n.to_string()),
            (-1e6f64..1e6).prop_map(|f| format!("{f:.3}")),
            "[a-z]{0,6}".prop_map(|s| format!("'{s}'")),
            proptest::collection::vec(0i64..100, 0..40)
                .prop_map(|v| format!("[{}]", v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","))),
        ];
        atom.prop_recursive(5, 64, 4, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    select(vec!["+", "-", "*", "/", "%", "==", "<", ">=", "&&", "||", "in"]),
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                inner.clone().prop_map(|a| format!("!{a}")),
                (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
                (inner.clone(), select(vec!["all", "exists", "exists_one", "map", "filter"]), inner.clone())
                    .prop_map(|(r, m, b)| format!("{r}.{m}(x, {b})")),
                inner.clone().prop_map(|a| format!("size({a})")),
                inner.clone().prop_map(|a| format!("{{'k': {a}}}")),
                inner.prop_map(|a| format!("has({a}.f)")),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a client sends is parsed, cost-checked and (when accepted) evaluated to a
        /// value or an error, never a panic or a runaway.
        #[test]
        fn arbitrary_expressions_never_panic_or_run_away(e in expr(), junk in "\\PC{0,200}") {
            let o = offer(1.5, "eu");
            for src in [e.as_str(), junk.as_str()] {
                let rank = BTreeMap::from([("r".to_string(), src.to_string())]);
                let accepted = [Matcher::new(Some(src), &BTreeMap::new()), Matcher::new(None, &rank)];
                for m in accepted.into_iter().flatten() {
                    let t = std::time::Instant::now();
                    let _ = m.values(|| "o".into(), &o);
                    proptest::prop_assert!(t.elapsed() < std::time::Duration::from_secs(1), "{src} ran {:?}", t.elapsed());
                }
            }
        }
    }
}
