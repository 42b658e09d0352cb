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

/// An offer's total score and each criterion's value.
pub type Scored = (f64, BTreeMap<String, f64>);

/// A compiled request.
pub struct Matcher {
    require: Option<Program>,
    criteria: Vec<(String, Program)>,
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
        let criteria = rank
            .iter()
            .map(|(name, src)| Ok((name.clone(), compile(&format!("rank.{name}"), src)?)))
            .collect::<Result<_, RankError>>()?;
        Ok(Self { require, criteria, root: Context::default() })
    }

    fn context<'a>(&'a self, o: &OfferAttrs) -> Context<'a> {
        let mut ctx = self.root.new_inner_scope();
        ctx.add_variable_from_value("price_gib", o.price_gib);
        ctx.add_variable_from_value("capacity_mibps", o.capacity_mibps);
        ctx.add_variable_from_value("reputation", o.reputation);
        ctx.add_variable_from_value("deals_completed", o.deals_completed);
        ctx.add_variable_from_value("region", o.region.clone());
        ctx.add_variable_from_value("window_mib", o.window_mib);
        ctx.add_variable_from_value("size_gib", o.size_gib);
        ctx.add_variable_from_value("throughput_mibps", o.throughput_mibps);
        ctx
    }

    /// None if the offer fails `require`; else each criterion's value and their sum.
    pub fn score(&self, id: &str, o: &OfferAttrs) -> Result<Option<Scored>, RankError> {
        let ctx = self.context(o);
        if let Some(req) = &self.require {
            match req.execute(&ctx) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => return Ok(None),
                Ok(v) => return Err(RankError::Type { what: "require".into(), want: "bool", got: format!("{v:?}") }),
                Err(e) => {
                    return Err(RankError::Eval { what: "require".into(), offer: id.into(), reason: e.to_string() });
                }
            }
        }
        let mut parts = BTreeMap::new();
        let mut total = 0.0;
        for (name, p) in &self.criteria {
            let what = format!("rank.{name}");
            let v = match p.execute(&ctx) {
                Ok(Value::Float(f)) => f,
                Ok(Value::Int(i)) => i as f64,
                Ok(Value::UInt(u)) => u as f64,
                Ok(Value::Bool(b)) => f64::from(u8::from(b)),
                Ok(v) => return Err(RankError::Type { what, want: "number", got: format!("{v:?}") }),
                Err(e) => return Err(RankError::Eval { what, offer: id.into(), reason: e.to_string() }),
            };
            if !v.is_finite() {
                return Err(RankError::Eval { what, offer: id.into(), reason: format!("not a finite number: {v}") });
            }
            total += v;
            parts.insert(name.clone(), v);
        }
        Ok(Some((total, parts)))
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
        let (total, parts) = m.score("a", &offer(1.5, "eu")).unwrap().unwrap();
        assert_eq!(parts["cheap"], -3.0);
        assert_eq!(parts["rep"], 0.5);
        assert_eq!(total, -2.5);
        assert!(m.score("b", &offer(1.5, "us")).unwrap().is_none(), "require filters");
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
        assert!(matches!(m.score("a", &offer(1.0, "eu")), Err(RankError::Type { .. })));
        let rank = BTreeMap::from([("x".to_string(), "no_such_attr * 2".to_string())]);
        let m = Matcher::new(None, &rank).unwrap();
        assert!(matches!(m.score("a", &offer(1.0, "eu")), Err(RankError::Eval { .. })));
    }
}
