//! Small server-rendered SVG charts: a step line (a cumulative amount over time) and bars (a
//! count per day). No script, no library: the page stays one request and prints as it shows.

use maud::{Markup, html};

/// Plot area inside the SVG, in user units (the SVG scales to the page width).
const W: f64 = 640.0;
const H: f64 = 200.0;
/// Margins: left for y labels, bottom for x labels.
const ML: f64 = 90.0;
const MB: f64 = 28.0;
const MT: f64 = 10.0;
const MR: f64 = 16.0;

/// One series: points `(x, y)`, sorted by x.
pub struct Series<'a> {
    pub points: &'a [(f64, f64)],
    /// Formats an x value for the axis (e.g. a unix time as a date).
    pub x_label: &'a dyn Fn(f64) -> String,
    /// Formats a y value for the axis (e.g. an amount in BDC).
    pub y_label: &'a dyn Fn(f64) -> String,
}

/// `v` with about `digits` significant digits, trailing zeros dropped (`0.000066`, `1250`).
pub fn sig(v: f64, digits: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".to_string();
    }
    let decimals = (digits - 1 - v.abs().log10().floor() as i32).clamp(0, 18) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

fn scale(v: f64, lo: f64, hi: f64, out_lo: f64, out_hi: f64) -> f64 {
    if hi <= lo { (out_lo + out_hi) / 2.0 } else { out_lo + (v - lo) / (hi - lo) * (out_hi - out_lo) }
}

/// Axes, four y gridlines with labels, and the first and last x labels.
fn frame(x: (f64, f64), y_hi: f64, s: &Series<'_>) -> Markup {
    html! {
        @for i in 0..=4 {
            @let v = y_hi * f64::from(i) / 4.0;
            @let py = scale(v, 0.0, y_hi, H - MB, MT);
            line x1=(ML) x2=(W - MR) y1=(py) y2=(py) stroke="#ddd" {}
            text x=(ML - 6.0) y=(py + 4.0) text-anchor="end" font-size="11" fill="#555" { ((s.y_label)(v)) }
        }
        line x1=(ML) x2=(ML) y1=(MT) y2=(H - MB) stroke="#888" {}
        text x=(ML) y=(H - 8.0) font-size="11" fill="#555" { ((s.x_label)(x.0)) }
        text x=(W - MR) y=(H - 8.0) text-anchor="end" font-size="11" fill="#555" { ((s.x_label)(x.1)) }
    }
}

/// A cumulative amount as a step line from zero: each point holds until the next.
pub fn step_line(id: &str, title: &str, s: &Series<'_>) -> Markup {
    let Some((&(x0, _), &(x1, _))) = s.points.first().zip(s.points.last()) else {
        return html! { p.empty { "Nothing to chart yet." } };
    };
    let y_hi = s.points.iter().map(|p| p.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let (lo, hi) = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x0 + 1.0) };
    let px = |x: f64| scale(x, lo, hi, ML, W - MR);
    let py = |y: f64| scale(y, 0.0, y_hi, H - MB, MT);
    let mut d = format!("M{:.1},{:.1}", px(lo), py(0.0));
    let mut last = 0.0;
    for &(x, y) in s.points {
        d.push_str(&format!(" L{:.1},{:.1} L{:.1},{:.1}", px(x), py(last), px(x), py(y)));
        last = y;
    }
    d.push_str(&format!(" L{:.1},{:.1}", px(hi), py(last)));
    html! {
        figure.chart {
            svg id=(id) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                (frame((lo, hi), y_hi, s))
                path d=(d) fill="none" stroke="#1f6feb" stroke-width="2" {}
                @for &(x, y) in s.points {
                    circle cx=(format!("{:.1}", px(x))) cy=(format!("{:.1}", py(y))) r="3" fill="#1f6feb" {
                        title { ((s.x_label)(x)) ": " ((s.y_label)(y)) }
                    }
                }
            }
            figcaption { (title) }
        }
    }
}

/// Values as dots (e.g. throughput reports over time), no line between them.
pub fn dots(id: &str, title: &str, s: &Series<'_>) -> Markup {
    let Some((&(x0, _), &(x1, _))) = s.points.first().zip(s.points.last()) else {
        return html! { p.empty { "Nothing to chart yet." } };
    };
    let y_hi = s.points.iter().map(|p| p.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let (lo, hi) = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x0 + 1.0) };
    html! {
        figure.chart {
            svg id=(id) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                (frame((lo, hi), y_hi, s))
                @for &(x, y) in s.points {
                    circle cx=(format!("{:.1}", scale(x, lo, hi, ML, W - MR))) cy=(format!("{:.1}", scale(y, 0.0, y_hi, H - MB, MT)))
                        r="4" fill="#2da44e" {
                        title { ((s.x_label)(x)) ": " ((s.y_label)(y)) }
                    }
                }
            }
            figcaption { (title) }
        }
    }
}

/// One bar per point (e.g. deals opened per day).
pub fn bars(id: &str, title: &str, s: &Series<'_>) -> Markup {
    if s.points.is_empty() {
        return html! { p.empty { "Nothing to chart yet." } };
    }
    let y_hi = s.points.iter().map(|p| p.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let n = s.points.len() as f64;
    let slot = (W - ML - MR) / n;
    let bar = (slot * 0.7).max(1.0);
    let first = s.points[0].0;
    let last = s.points[s.points.len() - 1].0;
    html! {
        figure.chart {
            svg id=(id) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                (frame((first, last), y_hi, s))
                @for (i, &(x, y)) in s.points.iter().enumerate() {
                    @let top = scale(y, 0.0, y_hi, H - MB, MT);
                    rect x=(format!("{:.1}", ML + slot * i as f64 + (slot - bar) / 2.0)) y=(format!("{top:.1}"))
                        width=(format!("{bar:.1}")) height=(format!("{:.1}", (H - MB - top).max(0.0))) fill="#8250df" {
                        title { ((s.x_label)(x)) ": " ((s.y_label)(y)) }
                    }
                }
            }
            figcaption { (title) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(f64, f64)]) -> String {
        let x = |v: f64| format!("x{v}");
        let y = |v: f64| format!("y{v}");
        step_line("c", "t", &Series { points, x_label: &x, y_label: &y }).into_string()
    }

    #[test]
    fn a_step_line_starts_at_zero_and_ends_at_the_last_value() {
        let svg = series(&[(10.0, 5.0), (20.0, 10.0)]);
        // from (left, bottom) up to the first value at its x, then to the last value
        assert!(svg.contains(&format!("M{ML:.1},{:.1}", H - MB)), "{svg}");
        assert!(svg.contains(&format!("L{:.1},{MT:.1}", W - MR)), "ends at the top right: {svg}");
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("<title>x20: y10</title>"), "each point names its values: {svg}");
        assert!(svg.contains(">x10<") && svg.contains(">y10<"), "the axes are labelled: {svg}");
    }

    #[test]
    fn axis_numbers_keep_their_significant_digits() {
        assert_eq!(sig(0.000066, 3), "0.000066");
        assert_eq!(sig(0.0000165, 3), "0.0000165");
        assert_eq!(sig(1250.0, 3), "1250");
        assert_eq!(sig(2.5, 3), "2.5");
        assert_eq!(sig(0.0, 3), "0");
    }

    #[test]
    fn labels_are_escaped_and_empty_series_say_so() {
        let x = |_: f64| "<script>".to_string();
        let svg = bars("b", "a <title>", &Series { points: &[(1.0, 1.0)], x_label: &x, y_label: &x }).into_string();
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"), "{svg}");
        assert!(series(&[]).contains("Nothing to chart yet."));
        // one point, or all at one x, still draws inside the frame
        let one = series(&[(5.0, 1.0)]);
        assert!(!one.contains("NaN") && !one.contains("inf"), "{one}");
    }
}
