//! Matchmaking expressions, in CEL (the `cel` crate: no loops, no I/O, no side effects).
//!
//! A request has an optional `require` expression (bool) and named `rank` criteria (each a
//! number); an offer's score is the sum of its criteria, and every criterion's value is returned
//! so the choice can be explained. Expressions see only the offer's attributes (see
//! [`OfferAttrs`]). They are bounded in size, and CEL itself has no unbounded loops, so an
//! expression cannot run away; a per-request timeout backs this up.

use std::collections::BTreeMap;

use cel::{Context, Program, Value};
use serde::Serialize;

/// Longest expression accepted, bytes.
pub const MAX_EXPR_BYTES: usize = 1024;
/// Deepest bracket nesting accepted.
pub const MAX_NESTING: i32 = 64;
/// Most rank criteria in one request.
pub const MAX_CRITERIA: usize = 16;

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
}

/// What an expression can see of an offer.
#[derive(Debug, Clone, Serialize)]
pub struct OfferAttrs {
    /// Price, BDC per GiB.
    pub price_gib: f64,
    /// Declared serving capacity, MiB/s.
    pub capacity_mibps: f64,
    /// Reputation score in [0, 1] from on-chain outcomes.
    pub reputation: f64,
    /// Deals the provider completed.
    pub deals_completed: i64,
    pub region: String,
    /// Window, MiB (what the provider risks per deal).
    pub window_mib: f64,
    /// Dataset size, GiB.
    pub size_gib: f64,
    /// Median throughput buyers reported for the provider, MiB/s (0 with no reports).
    pub throughput_mibps: f64,
}

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
            match req.execute(&ctx) {
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
            let v = match p.execute(&ctx) {
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
}
