//! Training-report figures as standalone SVG documents.
//!
//! Two pure functions, no I/O, no dependencies: [`loss_curve_svg`] (loss per
//! epoch for the training and, optionally, the validation set) and
//! [`confusion_matrix_svg`] (a heatmap laid out as scikit-learn's
//! `ConfusionMatrixDisplay`: true labels down the rows, predicted labels
//! across the columns, the count written in each cell).
//!
//! The output is a complete XML document (`<?xml …?>` + one `<svg>` element
//! with `xmlns`, `width`, `height` and `viewBox`) that a browser, an image
//! viewer or an `<img src>` displays as is. It is deterministic: the same
//! input gives the same bytes (numbers are printed with fixed precision, no
//! hashing, no clock). User text (title, class labels) is XML-escaped and
//! characters XML 1.0 forbids are replaced by U+FFFD, so any label yields a
//! well-formed document. Neither function panics: non-finite losses are left
//! out of the curve (and counted in the legend), empty inputs draw empty axes
//! with a note, and a matrix whose shape does not match its labels draws a
//! document that says so.

use std::fmt::Write as _;

/// matplotlib's default colours for the first two series (`tab:blue`, `tab:orange`).
const TRAIN_COLOR: &str = "#1f77b4";
const VALID_COLOR: &str = "#ff7f0e";
const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";

/// Escapes text for XML content and attribute values (`& < > " '`) and
/// replaces characters XML 1.0 does not allow (most C0 controls, lone
/// surrogates cannot occur in `&str`, U+FFFE/U+FFFF) by U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A pixel coordinate with two decimals (deterministic, compact).
fn px(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn svg_open(out: &mut String, width: f64, height: f64, title: &str) {
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" {FONT} font-size=\"12\">",
        w = px(width),
        h = px(height)
    );
    let _ = writeln!(out, "<title>{}</title>", xml_escape(title));
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
        px(width),
        px(height)
    );
}

/// Round, evenly spaced tick values covering `[lo, hi]` (about `target` of
/// them), and the number of decimals that prints them exactly enough.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, usize) {
    let span = hi - lo;
    if !span.is_finite() || span <= 0.0 || !lo.is_finite() || !hi.is_finite() {
        return (vec![lo, hi], 0);
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    } * mag;
    let first = (lo / step).ceil();
    let last = (hi / step).floor();
    let mut ticks = Vec::new();
    if first.is_finite() && last.is_finite() && last >= first && last - first <= 1000.0 {
        let mut k = first;
        while k <= last {
            // Multiply (not accumulate) so ticks stay on the grid; snap -0 to 0.
            let v = k * step;
            ticks.push(if v == 0.0 { 0.0 } else { v });
            k += 1.0;
        }
    }
    if ticks.is_empty() {
        ticks = vec![lo, hi];
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        // 2.5e-3 needs 4 decimals: one more than its magnitude when the
        // normalised step is not a whole number.
        let d = (-step.log10().floor()) as usize;
        if (step / mag - (step / mag).round()).abs() > 1e-9 {
            d + 1
        } else {
            d
        }
    };
    (ticks, decimals)
}

/// A tick label: fixed decimals in a readable range, scientific otherwise.
fn tick_label(v: f64, decimals: usize, scale: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if scale >= 1e6 || (scale > 0.0 && scale < 1e-4) || !scale.is_finite() {
        let s = format!("{v:.2e}");
        // 1.50e3 -> 1.5e3, 1.00e3 -> 1e3.
        match s.split_once('e') {
            Some((m, e)) => {
                let m = if m.contains('.') {
                    m.trim_end_matches('0').trim_end_matches('.')
                } else {
                    m
                };
                format!("{m}e{e}")
            }
            None => s,
        }
    } else {
        format!("{v:.decimals$}")
    }
}

/// The loss per epoch as a line chart: epochs (1-based) on x, loss on y,
/// the training series and, when given, the validation series, with axes,
/// ticks, labels, grid lines and a legend.
///
/// Each run of consecutive finite values is one `<polyline>` (one point per
/// epoch); a finite value with no finite neighbour is drawn as a dot. NaN and
/// infinite losses are left out — the line breaks there — and the legend says
/// how many were skipped. With no finite value at all the axes are drawn
/// with a "no finite loss values" note.
pub fn loss_curve_svg(train: &[f64], valid: Option<&[f64]>, title: &str) -> String {
    let (width, height) = (640.0, 400.0);
    let (left, right, top, bottom) = (72.0, 24.0, 40.0, 52.0);
    let (pw, ph) = (width - left - right, height - top - bottom);

    let mut series: Vec<(&str, &str, &[f64])> = vec![("train", TRAIN_COLOR, train)];
    if let Some(v) = valid {
        series.push(("validation", VALID_COLOR, v));
    }
    let n_epochs = series.iter().map(|s| s.2.len()).max().unwrap_or(0);
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.2.iter().copied())
            .filter(|v| v.is_finite())
    };
    let (mut ylo, mut yhi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let any_finite = ylo <= yhi;
    if !any_finite {
        (ylo, yhi) = (0.0, 1.0);
    } else if ylo == yhi {
        let pad = if ylo == 0.0 { 1.0 } else { ylo.abs() * 0.1 };
        (ylo, yhi) = (ylo - pad, yhi + pad);
    } else {
        let pad = (yhi - ylo) * 0.05;
        if pad.is_finite() {
            (ylo, yhi) = (ylo - pad, yhi + pad);
        }
        // Losses are non-negative: do not pad a curve that reaches zero below it.
        if ylo < 0.0 && finite().all(|v| v >= 0.0) {
            ylo = 0.0;
        }
    }
    let (yticks, ydec) = nice_ticks(ylo, yhi, 6);
    let (xlo, xhi) = if n_epochs <= 1 {
        (0.0, 2.0)
    } else {
        (1.0, n_epochs as f64)
    };
    let (mut xticks, _) = nice_ticks(xlo, xhi, 8);
    xticks.retain(|t| t.fract() == 0.0 && *t >= 1.0 && *t <= n_epochs.max(1) as f64);
    if xticks.is_empty() && n_epochs >= 1 {
        xticks.push(1.0);
    }

    let yspan = yhi - ylo;
    let xmap = |x: f64| left + (x - xlo) / (xhi - xlo) * pw;
    let ymap = |y: f64| {
        let t = if yspan.is_finite() && yspan > 0.0 {
            (yhi - y) / yspan
        } else {
            // Only reachable with values near f64::MAX: place by halves.
            (yhi / 2.0 - y / 2.0) / (yhi / 2.0 - ylo / 2.0)
        };
        top + t.clamp(0.0, 1.0) * ph
    };

    let mut out = String::new();
    let doc_title = if title.is_empty() {
        "Loss curve"
    } else {
        title
    };
    svg_open(&mut out, width, height, doc_title);
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        px(left + pw / 2.0),
        xml_escape(title)
    );

    // Grid and ticks.
    out.push_str("<g class=\"grid\" stroke=\"#e0e0e0\" stroke-width=\"1\">\n");
    for &t in &yticks {
        let y = px(ymap(t));
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
            px(left),
            px(left + pw)
        );
    }
    for &t in &xticks {
        let x = px(xmap(t));
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>",
            px(top),
            px(top + ph)
        );
    }
    out.push_str("</g>\n");

    out.push_str("<g class=\"axes\" stroke=\"#333333\" stroke-width=\"1\" fill=\"none\">\n");
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>",
        px(left),
        px(top),
        px(pw),
        px(ph)
    );
    for &t in &yticks {
        let y = px(ymap(t));
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
            px(left - 5.0),
            px(left)
        );
    }
    for &t in &xticks {
        let x = px(xmap(t));
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>",
            px(top + ph),
            px(top + ph + 5.0)
        );
    }
    out.push_str("</g>\n");

    let yscale = yticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    out.push_str("<g class=\"tick-labels\" fill=\"#333333\">\n");
    for &t in &yticks {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>",
            px(left - 8.0),
            px(ymap(t)),
            tick_label(t, ydec, yscale)
        );
    }
    for &t in &xticks {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(xmap(t)),
            px(top + ph + 18.0),
            t as u64
        );
    }
    out.push_str("</g>\n");
    let _ = writeln!(
        out,
        "<text class=\"xlabel\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\">epoch</text>",
        px(left + pw / 2.0),
        px(height - 12.0)
    );
    let _ = writeln!(
        out,
        "<text class=\"ylabel\" x=\"18\" y=\"{y}\" text-anchor=\"middle\" font-size=\"13\" transform=\"rotate(-90 18 {y})\">loss</text>",
        y = px(top + ph / 2.0)
    );

    // Series.
    for (name, color, values) in &series {
        let _ = writeln!(
            out,
            "<g class=\"series\" data-name=\"{name}\" stroke=\"{color}\" fill=\"{color}\">"
        );
        let mut i = 0;
        while i < values.len() {
            if !values[i].is_finite() {
                i += 1;
                continue;
            }
            let start = i;
            while i < values.len() && values[i].is_finite() {
                i += 1;
            }
            if i - start == 1 {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3\" stroke=\"none\"/>",
                    px(xmap((start + 1) as f64)),
                    px(ymap(values[start]))
                );
            } else {
                out.push_str("<polyline fill=\"none\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"");
                for (k, v) in values[start..i].iter().enumerate() {
                    if k > 0 {
                        out.push(' ');
                    }
                    let _ = write!(out, "{},{}", px(xmap((start + k + 1) as f64)), px(ymap(*v)));
                }
                out.push_str("\"/>\n");
            }
        }
        out.push_str("</g>\n");
    }

    if !any_finite {
        let _ = writeln!(
            out,
            "<text class=\"note\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#777777\">{}</text>",
            px(left + pw / 2.0),
            px(top + ph / 2.0),
            if n_epochs == 0 {
                "no epochs"
            } else {
                "no finite loss values"
            }
        );
    }

    // Legend, top right inside the plot area.
    let labels: Vec<(String, &str)> = series
        .iter()
        .map(|(name, color, values)| {
            let skipped = values.iter().filter(|v| !v.is_finite()).count();
            let label = if skipped > 0 {
                format!("{name} ({skipped} non-finite skipped)")
            } else {
                (*name).to_string()
            };
            (label, *color)
        })
        .collect();
    let longest = labels
        .iter()
        .map(|l| l.0.chars().count())
        .max()
        .unwrap_or(0);
    let lw = 40.0 + longest as f64 * 7.0;
    let lh = 8.0 + 18.0 * labels.len() as f64;
    let lx = left + pw - lw - 8.0;
    let ly = top + 8.0;
    out.push_str("<g class=\"legend\">\n");
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffffff\" fill-opacity=\"0.85\" stroke=\"#cccccc\"/>",
        px(lx),
        px(ly),
        px(lw),
        px(lh)
    );
    for (k, (label, color)) in labels.iter().enumerate() {
        let y = ly + 13.0 + 18.0 * k as f64;
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2\"/>",
            px(lx + 8.0),
            px(lx + 30.0),
            y = px(y)
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" dominant-baseline=\"middle\">{}</text>",
            px(lx + 36.0),
            px(y),
            xml_escape(label)
        );
    }
    out.push_str("</g>\n</svg>\n");
    out
}

/// matplotlib's `Blues` colour map, sampled at 9 points.
const BLUES: [(u8, u8, u8); 9] = [
    (0xf7, 0xfb, 0xff),
    (0xde, 0xeb, 0xf7),
    (0xc6, 0xdb, 0xef),
    (0x9e, 0xca, 0xe1),
    (0x6b, 0xae, 0xd6),
    (0x42, 0x92, 0xc6),
    (0x21, 0x71, 0xb5),
    (0x08, 0x51, 0x9c),
    (0x08, 0x30, 0x6b),
];

/// The `Blues` colour at `t ∈ [0, 1]`, linearly interpolated.
fn blues(t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = t * (BLUES.len() - 1) as f64;
    let i = (pos.floor() as usize).min(BLUES.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

/// Shortens a label for display (the full label stays in a `<title>`).
fn short_label(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A confusion matrix as a heatmap, laid out as scikit-learn's
/// `ConfusionMatrixDisplay`: row `i` is the true label `labels[i]`, column
/// `j` the predicted label `labels[j]`, and cell `(i, j)` shows
/// `matrix[i][j]` (the count of samples of true class `i` predicted as `j`),
/// shaded from white (0) to dark blue (the largest count) with a colour bar.
/// Counts are written in dark text on light cells and white text on dark
/// ones (those past the middle of the colour scale).
///
/// `matrix` must be `labels.len()` rows of `labels.len()` counts; otherwise
/// the document only states the mismatch. Labels longer than 20 characters
/// are shortened on the axes; every label appears in full in the cell
/// tooltips (`<title>`).
pub fn confusion_matrix_svg(labels: &[String], matrix: &[Vec<u64>]) -> String {
    let n = labels.len();
    let mut out = String::new();
    let bad = if n == 0 {
        Some("no labels".to_string())
    } else if matrix.len() != n {
        Some(format!("{n} labels but {} rows", matrix.len()))
    } else {
        matrix
            .iter()
            .position(|r| r.len() != n)
            .map(|i| format!("{n} labels but row {i} has {} counts", matrix[i].len()))
    };
    if let Some(msg) = bad {
        svg_open(&mut out, 480.0, 80.0, "Confusion matrix");
        let _ = writeln!(
            out,
            "<text class=\"note\" x=\"240\" y=\"44\" text-anchor=\"middle\" fill=\"#aa0000\">invalid confusion matrix: {}</text>\n</svg>",
            xml_escape(&msg)
        );
        return out;
    }

    const MAX_LABEL: usize = 20;
    let shown: Vec<String> = labels.iter().map(|l| short_label(l, MAX_LABEL)).collect();
    let longest = shown.iter().map(|l| l.chars().count()).max().unwrap_or(1) as f64;
    let cell = (560.0 / n as f64).clamp(28.0, 72.0);
    let max = matrix.iter().flatten().copied().max().unwrap_or(0);
    let digits = max.to_string().len() as f64;
    let font = (cell * 0.32)
        .min(cell * 1.5 / digits.max(1.0))
        .clamp(7.0, 16.0);
    // Column labels are turned 45° when they do not fit across a cell.
    let char_w = 7.0;
    let rotate = longest * char_w > cell - 4.0;
    let col_label_h = if rotate {
        longest * char_w * 0.72 + 16.0
    } else {
        20.0
    };
    let left = 44.0 + longest * char_w + 10.0;
    let top = 44.0;
    let grid = cell * n as f64;
    let bar_x = left + grid + 20.0;
    let bar_w = 16.0;
    let width = bar_x + bar_w + 14.0 + (max.to_string().len() as f64) * char_w + 16.0;
    let height = top + grid + col_label_h + 40.0;

    svg_open(&mut out, width, height, "Confusion matrix");
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"26\" text-anchor=\"middle\" font-size=\"15\">Confusion matrix</text>",
        px(left + grid / 2.0)
    );
    out.push_str("<defs><linearGradient id=\"cm-bar\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">");
    for k in 0..BLUES.len() {
        let t = k as f64 / (BLUES.len() - 1) as f64;
        let _ = write!(
            out,
            "<stop offset=\"{}\" stop-color=\"{}\"/>",
            px(t),
            blues(t)
        );
    }
    out.push_str("</linearGradient></defs>\n");

    out.push_str("<g class=\"cells\">\n");
    for (i, row) in matrix.iter().enumerate() {
        for (j, &count) in row.iter().enumerate() {
            let t = if max == 0 {
                0.0
            } else {
                count as f64 / max as f64
            };
            let (x, y) = (left + j as f64 * cell, top + i as f64 * cell);
            let text_color = if t > 0.5 { "#ffffff" } else { "#1a1a1a" };
            let _ = writeln!(
                out,
                "<g class=\"cell\"><title>true {}, predicted {}: {count}</title><rect x=\"{}\" y=\"{}\" width=\"{c}\" height=\"{c}\" fill=\"{}\" stroke=\"#ffffff\" stroke-width=\"1\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" dominant-baseline=\"central\" font-size=\"{}\" fill=\"{text_color}\">{count}</text></g>",
                xml_escape(&labels[i]),
                xml_escape(&labels[j]),
                px(x),
                px(y),
                blues(t),
                px(x + cell / 2.0),
                px(y + cell / 2.0),
                px(font),
                c = px(cell),
            );
        }
    }
    out.push_str("</g>\n");

    // Row (true) labels on the left, column (predicted) labels below.
    // A shortened label carries the full one as a tooltip.
    let tip = |k: usize| {
        if shown[k] == labels[k] {
            String::new()
        } else {
            format!("<title>{}</title>", xml_escape(&labels[k]))
        }
    };
    out.push_str("<g class=\"row-labels\" fill=\"#333333\">\n");
    for (i, l) in shown.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" dominant-baseline=\"central\">{}{}</text>",
            px(left - 6.0),
            px(top + (i as f64 + 0.5) * cell),
            tip(i),
            xml_escape(l)
        );
    }
    out.push_str("</g>\n<g class=\"col-labels\" fill=\"#333333\">\n");
    for (j, l) in shown.iter().enumerate() {
        let x = px(left + (j as f64 + 0.5) * cell);
        let y = px(top + grid + 16.0);
        if rotate {
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{y}\" text-anchor=\"end\" transform=\"rotate(-45 {x} {y})\">{}{}</text>",
                tip(j),
                xml_escape(l)
            );
        } else {
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\">{}{}</text>",
                tip(j),
                xml_escape(l)
            );
        }
    }
    out.push_str("</g>\n");
    let _ = writeln!(
        out,
        "<text class=\"xlabel\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\">Predicted label</text>",
        px(left + grid / 2.0),
        px(top + grid + col_label_h + 22.0)
    );
    let _ = writeln!(
        out,
        "<text class=\"ylabel\" x=\"18\" y=\"{y}\" text-anchor=\"middle\" font-size=\"13\" transform=\"rotate(-90 18 {y})\">True label</text>",
        y = px(top + grid / 2.0)
    );

    // Colour bar with its range.
    out.push_str("<g class=\"colorbar\">\n");
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"url(#cm-bar)\" stroke=\"#999999\"/>",
        px(bar_x),
        px(top),
        px(bar_w),
        px(grid)
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" dominant-baseline=\"central\">{max}</text>",
        px(bar_x + bar_w + 6.0),
        px(top + 6.0)
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" dominant-baseline=\"central\">0</text>",
        px(bar_x + bar_w + 6.0),
        px(top + grid - 6.0)
    );
    out.push_str("</g>\n</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        let (t, d) = nice_ticks(0.0, 1.0, 5);
        assert_eq!(t, vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(d, 1);
        let (t, d) = nice_ticks(1.0, 300.0, 8);
        assert_eq!(t.first(), Some(&50.0));
        assert_eq!(d, 0);
        let (_, d) = nice_ticks(0.0, 0.01, 4);
        assert_eq!(d, 4); // step 0.0025
    }

    #[test]
    fn labels_and_pixels_print_compactly() {
        assert_eq!(px(12.0), "12");
        assert_eq!(px(12.5), "12.5");
        assert_eq!(px(-0.001), "0");
        assert_eq!(tick_label(0.6000000000000001, 1, 1.0), "0.6");
        assert_eq!(tick_label(1500000.0, 0, 2e6), "1.5e6");
        assert_eq!(tick_label(0.00002, 5, 2e-5), "2e-5");
    }

    #[test]
    fn escapes_markup_and_forbidden_characters() {
        assert_eq!(
            xml_escape("a<b & \"c\" 'd'>\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;\u{FFFD}"
        );
    }

    #[test]
    fn colour_map_ends() {
        assert_eq!(blues(0.0), "#f7fbff");
        assert_eq!(blues(1.0), "#08306b");
        assert_eq!(blues(f64::NAN), "#f7fbff");
    }
}
