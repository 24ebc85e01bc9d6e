//! The SVG figures are well-formed XML, draw what they were given (one
//! point per finite loss, one cell per count), escape user text and are
//! deterministic. Checked with a small strict XML reader (no dependency).

use ferry_ml::plot::{confusion_matrix_svg, loss_curve_svg};

/// One start tag (or empty-element tag) in document order.
#[derive(Debug)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    /// Names of the enclosing elements, outermost first.
    ancestors: Vec<String>,
    /// Unescaped text directly inside the element.
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `&amp; &lt; &gt; &quot; &apos; &#N; &#xN;`; rejects anything else,
/// a bare `&` and a raw `<`.
fn unescape(s: &str, at: usize) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find(['&', '<']) {
        out.push_str(&rest[..p]);
        if rest[p..].starts_with('<') {
            return Err(format!("raw '<' in text near byte {at}"));
        }
        let end = rest[p..]
            .find(';')
            .ok_or_else(|| format!("unterminated entity near byte {at}"))?;
        let ent = &rest[p + 1..p + end];
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ if ent.starts_with("#x") => u32::from_str_radix(&ent[2..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad character reference &{ent};"))?,
            _ if ent.starts_with('#') => ent[1..]
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad character reference &{ent};"))?,
            _ => return Err(format!("unknown entity &{ent}; near byte {at}")),
        };
        out.push(c);
        rest = &rest[p + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | ':' | '.')
}

fn xml_char_ok(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// A strict reader for the subset of XML the figures use: an optional XML
/// declaration, comments, one root element, attributes in double or single
/// quotes, entity and character references. Returns every element.
fn parse_xml(doc: &str) -> Result<Vec<Element>, String> {
    if let Some(c) = doc.chars().find(|c| !xml_char_ok(*c)) {
        return Err(format!("character {c:?} is not allowed in XML 1.0"));
    }
    let mut elements: Vec<Element> = Vec::new();
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut roots = 0;
    let mut i = 0;
    if doc.starts_with("<?xml") {
        i = doc.find("?>").ok_or("unterminated XML declaration")? + 2;
    }
    let b = doc.as_bytes();
    while i < doc.len() {
        let next = doc[i..].find('<').map_or(doc.len(), |p| i + p);
        let text = unescape(&doc[i..next], i)?;
        match stack.last() {
            Some(&(_, idx)) => elements[idx].text.push_str(&text),
            None if !text.trim().is_empty() => {
                return Err(format!("text outside the root element at byte {i}"))
            }
            None => {}
        }
        i = next;
        if i >= doc.len() {
            break;
        }
        if doc[i..].starts_with("<!--") {
            i += doc[i..].find("-->").ok_or("unterminated comment")? + 3;
            continue;
        }
        if doc[i..].starts_with("<?") || doc[i..].starts_with("<!") {
            return Err(format!("unexpected markup at byte {i}"));
        }
        if doc[i..].starts_with("</") {
            let end = i + doc[i..].find('>').ok_or("unterminated end tag")?;
            let name = doc[i + 2..end].trim_end();
            let (open, _) = stack
                .pop()
                .ok_or_else(|| format!("end tag </{name}> with nothing open"))?;
            if open != name {
                return Err(format!("<{open}> closed by </{name}> at byte {i}"));
            }
            i = end + 1;
            continue;
        }
        // Start tag.
        i += 1;
        let start = i;
        while i < doc.len() && is_name_char(doc[i..].chars().next().unwrap()) {
            i += doc[i..].chars().next().unwrap().len_utf8();
        }
        let name = doc[start..i].to_string();
        if name.is_empty() {
            return Err(format!("empty tag name at byte {start}"));
        }
        let mut attrs: Vec<(String, String)> = Vec::new();
        let self_closing;
        loop {
            let ws = i;
            while i < doc.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if doc[i..].starts_with("/>") {
                self_closing = true;
                i += 2;
                break;
            }
            if doc[i..].starts_with('>') {
                self_closing = false;
                i += 1;
                break;
            }
            if i == ws {
                return Err(format!("expected whitespace before attribute at byte {i}"));
            }
            let a = i;
            while i < doc.len() && is_name_char(doc[i..].chars().next().unwrap()) {
                i += doc[i..].chars().next().unwrap().len_utf8();
            }
            let key = doc[a..i].to_string();
            if key.is_empty() || !doc[i..].starts_with('=') {
                return Err(format!("malformed attribute in <{name}> at byte {i}"));
            }
            i += 1;
            let q = doc[i..].chars().next().ok_or("truncated attribute")?;
            if q != '"' && q != '\'' {
                return Err(format!("unquoted attribute {key} at byte {i}"));
            }
            i += 1;
            let end = i + doc[i..].find(q).ok_or("unterminated attribute value")?;
            let value = unescape(&doc[i..end], i)?;
            if attrs.iter().any(|(k, _)| *k == key) {
                return Err(format!("duplicate attribute {key} in <{name}>"));
            }
            attrs.push((key, value));
            i = end + 1;
        }
        if stack.is_empty() {
            roots += 1;
            if roots > 1 {
                return Err("more than one root element".into());
            }
        }
        elements.push(Element {
            name: name.clone(),
            attrs,
            ancestors: stack.iter().map(|(n, _)| n.clone()).collect(),
            text: String::new(),
        });
        if !self_closing {
            stack.push((name, elements.len() - 1));
        }
    }
    if let Some((open, _)) = stack.last() {
        return Err(format!("<{open}> is never closed"));
    }
    if roots != 1 {
        return Err("no root element".into());
    }
    Ok(elements)
}

fn parse(doc: &str) -> Vec<Element> {
    parse_xml(doc).unwrap_or_else(|e| panic!("not well-formed: {e}\n{doc}"))
}

fn count(els: &[Element], name: &str) -> usize {
    els.iter().filter(|e| e.name == name).count()
}

/// The `<svg>` root's size, and a check that every coordinate-like attribute
/// is a finite number inside it.
fn check_geometry(els: &[Element]) {
    let root = &els[0];
    assert_eq!(root.name, "svg");
    assert_eq!(root.attr("xmlns"), Some("http://www.w3.org/2000/svg"));
    let w: f64 = root.attr("width").unwrap().parse().unwrap();
    let h: f64 = root.attr("height").unwrap().parse().unwrap();
    assert_eq!(root.attr("viewBox"), Some(format!("0 0 {w} {h}").as_str()));
    for e in els {
        for (k, v) in &e.attrs {
            let bound = match k.as_str() {
                "x" | "x1" | "x2" | "cx" => w,
                "y" | "y1" | "y2" | "cy" => h,
                "width" => w,
                "height" => h,
                _ => continue,
            };
            let x: f64 = v
                .parse()
                .unwrap_or_else(|_| panic!("<{}> {k}={v:?} is not a number", e.name));
            assert!(
                x.is_finite() && (-1e-9..=bound + 1e-9).contains(&x),
                "<{}> {k}={x} outside 0..{bound}",
                e.name
            );
        }
        if let Some(points) = e.attr("points") {
            for p in points.split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((0.0..=w).contains(&x) && (0.0..=h).contains(&y), "{p}");
            }
        }
    }
}

/// Points drawn for a series: polyline vertices plus isolated dots.
fn series_points(els: &[Element], series: &str) -> (usize, usize, usize) {
    let mut in_series = false;
    let (mut lines, mut vertices, mut dots) = (0, 0, 0);
    for e in els {
        if e.name == "g" {
            in_series = e.attr("class") == Some("series") && e.attr("data-name") == Some(series);
            continue;
        }
        if !in_series || !e.ancestors.iter().any(|a| a == "g") {
            continue;
        }
        match e.name.as_str() {
            "polyline" => {
                lines += 1;
                vertices += e.attr("points").unwrap().split(' ').count();
            }
            "circle" => dots += 1,
            _ => {}
        }
    }
    (lines, vertices, dots)
}

fn texts(els: &[Element]) -> Vec<String> {
    els.iter()
        .filter(|e| e.name == "text" || e.name == "title")
        .map(|e| e.text.clone())
        .collect()
}

#[test]
fn loss_curve_has_one_point_per_epoch_and_a_legend() {
    let train: Vec<f64> = (0..40).map(|e| 1.0 / (1.0 + e as f64)).collect();
    let valid: Vec<f64> = (0..40).map(|e| 1.2 / (1.0 + e as f64) + 0.05).collect();
    let svg = loss_curve_svg(&train, Some(&valid), "MLP on iris");
    let els = parse(&svg);
    check_geometry(&els);
    assert_eq!(series_points(&els, "train"), (1, 40, 0));
    assert_eq!(series_points(&els, "validation"), (1, 40, 0));
    let t = texts(&els);
    for want in ["MLP on iris", "epoch", "loss", "train", "validation"] {
        assert!(t.iter().any(|x| x == want), "missing text {want:?}: {t:?}");
    }
    // Tick labels on both axes: epoch ticks are whole numbers within 1..=40.
    let xticks: Vec<u64> = els
        .iter()
        .filter(|e| e.name == "text" && e.attr("text-anchor") == Some("middle"))
        .filter_map(|e| e.text.parse().ok())
        .collect();
    assert!(xticks.len() >= 3, "{xticks:?}");
    assert!(xticks.iter().all(|&x| (1..=40).contains(&x)));
    let yticks = els
        .iter()
        .filter(|e| e.name == "text" && e.attr("text-anchor") == Some("end"))
        .filter(|e| e.text.parse::<f64>().is_ok())
        .count();
    assert!(yticks >= 3);
    // The lower loss is drawn lower on the page: y grows downwards.
    let pts = |s: &str| -> Vec<(f64, f64)> {
        let mut on = false;
        for e in &els {
            if e.name == "g" {
                on = e.attr("data-name") == Some(s);
            } else if on && e.name == "polyline" {
                return e
                    .attr("points")
                    .unwrap()
                    .split(' ')
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect();
            }
        }
        panic!("no {s} polyline")
    };
    let tp = pts("train");
    assert!(tp.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 >= w[0].1));
}

#[test]
fn loss_curve_without_validation_has_one_series() {
    let svg = loss_curve_svg(&[3.0, 2.0, 1.5], None, "");
    let els = parse(&svg);
    check_geometry(&els);
    assert_eq!(series_points(&els, "train"), (1, 3, 0));
    assert_eq!(series_points(&els, "validation"), (0, 0, 0));
    assert!(!texts(&els).iter().any(|t| t == "validation"));
}

#[test]
fn loss_curve_handles_zero_and_one_point() {
    let els = parse(&loss_curve_svg(&[], None, "empty"));
    check_geometry(&els);
    assert_eq!(count(&els, "polyline"), 0);
    assert_eq!(count(&els, "circle"), 0);
    assert!(texts(&els).iter().any(|t| t == "no epochs"));

    let els = parse(&loss_curve_svg(&[], Some(&[]), "empty"));
    check_geometry(&els);
    assert_eq!(count(&els, "polyline"), 0);

    let els = parse(&loss_curve_svg(&[0.7], Some(&[0.9]), "one"));
    check_geometry(&els);
    assert_eq!(series_points(&els, "train"), (0, 0, 1));
    assert_eq!(series_points(&els, "validation"), (0, 0, 1));
    // Epoch 1 is labelled; no epoch beyond the data.
    let xt: Vec<&str> = els
        .iter()
        .filter(|e| e.name == "text" && e.attr("text-anchor") == Some("middle"))
        .map(|e| e.text.as_str())
        .filter(|t| t.parse::<u64>().is_ok())
        .collect();
    assert_eq!(xt, ["1"]);
}

#[test]
fn loss_curve_skips_non_finite_values() {
    let train = [1.0, f64::NAN, 0.5, 0.4, f64::INFINITY, 0.3, 0.2];
    let valid = [f64::NEG_INFINITY, 0.9, 0.8, 0.7, 0.6, 0.5, f64::NAN];
    let svg = loss_curve_svg(&train, Some(&valid), "diverged");
    let els = parse(&svg);
    check_geometry(&els);
    // [1.0] alone is a dot; [0.5, 0.4] and [0.3, 0.2] are two lines.
    assert_eq!(series_points(&els, "train"), (2, 4, 1));
    assert_eq!(series_points(&els, "validation"), (1, 5, 0));
    let t = texts(&els);
    assert!(
        t.iter().any(|x| x == "train (2 non-finite skipped)"),
        "{t:?}"
    );
    assert!(t.iter().any(|x| x == "validation (2 non-finite skipped)"));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));

    let els = parse(&loss_curve_svg(&[f64::NAN, f64::INFINITY], None, "nan"));
    check_geometry(&els);
    assert_eq!(series_points(&els, "train"), (0, 0, 0));
    assert!(texts(&els).iter().any(|t| t == "no finite loss values"));
}

#[test]
fn loss_curve_survives_extreme_and_flat_values() {
    for values in [
        vec![2.0; 5],
        vec![0.0; 5],
        vec![f64::MAX, 1.0, -f64::MAX],
        vec![1e-300, 2e-300, 3e-300],
        vec![1e9, 5e8, 1e8],
        vec![-1.0, -2.0],
    ] {
        let svg = loss_curve_svg(&values, Some(&values), "x");
        let els = parse(&svg);
        check_geometry(&els);
        let (_, v, d) = series_points(&els, "train");
        assert_eq!(v + d, values.len(), "{values:?}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{values:?}");
    }
    // A long run: one vertex per epoch.
    let long: Vec<f64> = (0..1500).map(|e| (-(e as f64) / 300.0).exp()).collect();
    let els = parse(&loss_curve_svg(&long, None, "long"));
    check_geometry(&els);
    assert_eq!(series_points(&els, "train"), (1, 1500, 0));
}

#[test]
fn loss_curve_escapes_the_title() {
    let title = "a<b & \"c\" 'd' </svg> \u{1}";
    let svg = loss_curve_svg(&[1.0, 0.5], None, title);
    assert!(!svg.contains("a<b") && !svg.contains("</svg> "));
    assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
    let els = parse(&svg);
    let shown = "a<b & \"c\" 'd' </svg> \u{FFFD}";
    assert!(texts(&els).iter().any(|t| t == shown));
    assert_eq!(els.iter().find(|e| e.name == "title").unwrap().text, shown);
}

#[test]
fn loss_curve_is_deterministic() {
    let train: Vec<f64> = (0..25).map(|e| 0.9f64.powi(e)).collect();
    let a = loss_curve_svg(&train, Some(&train[3..]), "run");
    let copy = train.clone();
    let b = loss_curve_svg(&copy, Some(&copy[3..]), "run");
    assert_eq!(a, b);
    assert_ne!(a, loss_curve_svg(&train[1..], Some(&train[3..]), "run"));
}

fn labels(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn confusion_matrix_has_one_cell_per_count_in_sklearn_layout() {
    let names = labels(&["setosa", "versicolor", "virginica"]);
    let m = vec![vec![13, 0, 0], vec![0, 15, 1], vec![0, 2, 7]];
    let svg = confusion_matrix_svg(&names, &m);
    let els = parse(&svg);
    check_geometry(&els);
    let cells: Vec<&Element> = els
        .iter()
        .filter(|e| e.name == "rect" && e.ancestors.iter().any(|a| a == "g"))
        .filter(|e| e.attr("fill").is_some_and(|f| f.starts_with('#')))
        .filter(|e| e.attr("stroke") == Some("#ffffff"))
        .collect();
    assert_eq!(cells.len(), 9);
    // Cells in row-major order: row i (true) goes down, column j (predicted) across.
    let pos: Vec<(f64, f64)> = cells
        .iter()
        .map(|e| {
            (
                e.attr("x").unwrap().parse().unwrap(),
                e.attr("y").unwrap().parse().unwrap(),
            )
        })
        .collect();
    for i in 0..3 {
        for j in 0..3 {
            let (x, y) = pos[i * 3 + j];
            assert_eq!(x, pos[j].0, "column {j} aligned");
            assert_eq!(y, pos[i * 3].1, "row {i} aligned");
            if j > 0 {
                assert!(x > pos[i * 3 + j - 1].0);
            }
            if i > 0 {
                assert!(y > pos[(i - 1) * 3 + j].1);
            }
        }
    }
    // The largest count is the darkest cell, a zero is the lightest.
    assert_eq!(cells[4].attr("fill"), Some("#08306b"));
    assert_eq!(cells[1].attr("fill"), Some("#f7fbff"));
    // Counts written in the cells, in order, and tooltips name both labels.
    let counts: Vec<String> = els
        .iter()
        .filter(|e| e.name == "text" && e.ancestors.last().map(String::as_str) == Some("g"))
        .filter(|e| e.attr("dominant-baseline") == Some("central") && e.attr("font-size").is_some())
        .map(|e| e.text.clone())
        .collect();
    let want: Vec<String> = m.iter().flatten().map(|c| c.to_string()).collect();
    assert_eq!(counts, want);
    let t = texts(&els);
    assert!(t
        .iter()
        .any(|x| x == "true virginica, predicted versicolor: 2"));
    assert!(t.iter().any(|x| x == "True label"));
    assert!(t.iter().any(|x| x == "Predicted label"));
}

#[test]
fn confusion_matrix_escapes_labels() {
    let names = labels(&["<script>", "a & b", "\"quoted\" 'x'", "ctl\u{7}"]);
    let m = vec![
        vec![1, 0, 0, 0],
        vec![0, 2, 0, 0],
        vec![0, 0, 3, 0],
        vec![0, 0, 0, 4],
    ];
    let svg = confusion_matrix_svg(&names, &m);
    assert!(!svg.contains("<script>"));
    assert!(svg.contains("&lt;script&gt;") && svg.contains("a &amp; b"));
    assert!(svg.contains("&quot;quoted&quot;"));
    let els = parse(&svg);
    check_geometry(&els);
    let t = texts(&els);
    for l in ["<script>", "a & b", "\"quoted\" 'x'", "ctl\u{FFFD}"] {
        // Once as a row label and once as a column label.
        assert_eq!(t.iter().filter(|x| *x == l).count(), 2, "{l:?} in {t:?}");
    }
}

#[test]
fn confusion_matrix_long_labels_and_many_classes() {
    let names: Vec<String> = (0..10).map(|d| format!("digit {d}")).collect();
    let m: Vec<Vec<u64>> = (0..10)
        .map(|i| {
            (0..10)
                .map(|j| if i == j { 40 + i } else { (i * j) % 3 })
                .collect()
        })
        .collect();
    let els = parse(&confusion_matrix_svg(&names, &m));
    check_geometry(&els);
    assert_eq!(
        els.iter()
            .filter(|e| e.attr("class") == Some("cell"))
            .count(),
        100
    );
    let long = labels(&["a label that is much longer than twenty characters", "b"]);
    let svg = confusion_matrix_svg(&long, &[vec![5, 1], vec![0, 3]]);
    let els = parse(&svg);
    check_geometry(&els);
    let t = texts(&els);
    assert!(t.iter().any(|x| x == "a label that is muc…"), "{t:?}");
    assert!(t
        .iter()
        .any(|x| x == "a label that is much longer than twenty characters"));
}

#[test]
fn confusion_matrix_of_all_zeros_and_bad_shapes() {
    let els = parse(&confusion_matrix_svg(
        &labels(&["a", "b"]),
        &[vec![0, 0], vec![0, 0]],
    ));
    check_geometry(&els);
    assert_eq!(
        els.iter()
            .filter(|e| e.attr("class") == Some("cell"))
            .count(),
        4
    );
    for (names, m, msg) in [
        (labels(&[]), vec![], "no labels"),
        (labels(&["a", "b"]), vec![vec![1, 2]], "2 labels but 1 rows"),
        (
            labels(&["a", "b"]),
            vec![vec![1, 2], vec![3]],
            "2 labels but row 1 has 1 counts",
        ),
    ] {
        let els = parse(&confusion_matrix_svg(&names, &m));
        check_geometry(&els);
        assert!(
            texts(&els)
                .iter()
                .any(|t| *t == format!("invalid confusion matrix: {msg}")),
            "{msg}"
        );
    }
}

#[test]
fn confusion_matrix_counts_stay_readable() {
    // Equal counts: every cell is the darkest colour, so the text is white.
    let els = parse(&confusion_matrix_svg(
        &labels(&["a", "b"]),
        &[vec![5, 5], vec![5, 5]],
    ));
    let fills: Vec<&str> = els
        .iter()
        .filter(|e| e.name == "text" && e.attr("font-size").is_some())
        .filter(|e| e.ancestors.last().map(String::as_str) == Some("g"))
        .map(|e| e.attr("fill").unwrap())
        .collect();
    assert_eq!(fills, ["#ffffff"; 4]);
    // Light cells get dark text.
    let els = parse(&confusion_matrix_svg(
        &labels(&["a", "b"]),
        &[vec![9, 1], vec![0, 9]],
    ));
    let fills: Vec<&str> = els
        .iter()
        .filter(|e| e.name == "text" && e.attr("font-size").is_some())
        .filter(|e| e.ancestors.last().map(String::as_str) == Some("g"))
        .map(|e| e.attr("fill").unwrap())
        .collect();
    assert_eq!(fills, ["#ffffff", "#1a1a1a", "#1a1a1a", "#ffffff"]);
}

#[test]
fn confusion_matrix_is_deterministic() {
    let names = labels(&["x", "y", "z"]);
    let m = vec![vec![5, 1, 0], vec![2, 9, 1], vec![0, 0, 4]];
    let a = confusion_matrix_svg(&names, &m);
    assert_eq!(a, confusion_matrix_svg(&names.clone(), &m.clone()));
    let mut m2 = m.clone();
    m2[0][0] = 6;
    assert_ne!(a, confusion_matrix_svg(&names, &m2));
}

#[test]
fn the_reader_rejects_malformed_documents() {
    for bad in [
        "<svg><g></svg>",
        "<svg a=\"1\" a=\"2\"/>",
        "<svg>a & b</svg>",
        "<svg>a < b</svg>",
        "<svg x=1/>",
        "<svg/><svg/>",
        "<svg><text>&bogus;</text></svg>",
        "<svg>\u{1}</svg>",
        "text<svg/>",
    ] {
        assert!(parse_xml(bad).is_err(), "{bad:?} accepted");
    }
    assert!(
        parse_xml("<?xml version=\"1.0\"?>\n<svg a='&lt;&#65;'><!-- c --><g/></svg>\n").is_ok()
    );
}
