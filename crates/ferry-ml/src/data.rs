//! Column-oriented datasets, CSV / JSON Lines parsing and writing, type
//! inference and column profiles.
//!
//! A [`Dataset`] is a list of named [`Column`]s of equal length. A column is
//! numeric (`f64`, missing = NaN), boolean, free text or categorical (the last
//! three with missing as `None`).
//!
//! * [`Dataset::from_csv`] handles a header row (detected or given), the
//!   delimiter (detected among `,` `;` tab `|`, or given), RFC 4180 quoting
//!   (`"a ""quoted"" field"`, embedded delimiters and newlines), CRLF line
//!   ends, a UTF-8 BOM, blank lines and pandas' default missing-value tokens.
//! * [`Dataset::from_jsonl`] reads one flat JSON object per line; keys keep
//!   their first-seen order and absent keys are missing.
//! * [`Dataset::to_csv`] / [`Dataset::to_jsonl`] write them back, so a CSV can
//!   be converted to JSON Lines and vice versa.
//!
//! Types are inferred per column: all booleans (`true`/`false`, any case) →
//! bool, all numbers → numeric, otherwise text; an all-missing column is
//! numeric. [`Dataset::profile`] summarises each column.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{shape, MlError, Result};

/// pandas' default missing-value tokens (`read_csv(na_values=None)`).
pub const DEFAULT_MISSING: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// The delimiters tried by detection, in order of preference on ties.
pub const CANDIDATE_DELIMITERS: &[u8] = b",\t;|";

/// The storage of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "values", rename_all = "snake_case")]
pub enum ColumnData {
    /// Numbers; missing values are NaN.
    Numeric(Vec<f64>),
    /// Booleans.
    Bool(Vec<Option<bool>>),
    /// Free text.
    Text(Vec<Option<String>>),
    /// Categories (`codes` index `categories`).
    Categorical {
        /// The category labels.
        categories: Vec<String>,
        /// One code per row.
        codes: Vec<Option<u32>>,
    },
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// `f64` with NaN for missing.
    Numeric,
    /// Boolean.
    Bool,
    /// Free text.
    Text,
    /// Categorical.
    Categorical,
}

impl std::fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ColumnKind::Numeric => "numeric",
            ColumnKind::Bool => "bool",
            ColumnKind::Text => "text",
            ColumnKind::Categorical => "categorical",
        })
    }
}

impl ColumnData {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            ColumnData::Numeric(v) => v.len(),
            ColumnData::Bool(v) => v.len(),
            ColumnData::Text(v) => v.len(),
            ColumnData::Categorical { codes, .. } => codes.len(),
        }
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The column's type.
    pub fn kind(&self) -> ColumnKind {
        match self {
            ColumnData::Numeric(_) => ColumnKind::Numeric,
            ColumnData::Bool(_) => ColumnKind::Bool,
            ColumnData::Text(_) => ColumnKind::Text,
            ColumnData::Categorical { .. } => ColumnKind::Categorical,
        }
    }

    /// Whether row `i` is missing (false when out of range).
    pub fn is_missing(&self, i: usize) -> bool {
        match self {
            ColumnData::Numeric(v) => v.get(i).is_some_and(|x| x.is_nan()),
            ColumnData::Bool(v) => v.get(i).is_some_and(|x| x.is_none()),
            ColumnData::Text(v) => v.get(i).is_some_and(|x| x.is_none()),
            ColumnData::Categorical { codes, .. } => codes.get(i).is_some_and(|x| x.is_none()),
        }
    }

    /// Row `i` as a [`Cell`] (`Missing` when out of range).
    pub fn cell(&self, i: usize) -> Cell {
        match self {
            ColumnData::Numeric(v) => match v.get(i) {
                Some(x) if !x.is_nan() => Cell::Number(*x),
                _ => Cell::Missing,
            },
            ColumnData::Bool(v) => v
                .get(i)
                .copied()
                .flatten()
                .map_or(Cell::Missing, Cell::Bool),
            ColumnData::Text(v) => v
                .get(i)
                .cloned()
                .flatten()
                .map_or(Cell::Missing, Cell::Text),
            ColumnData::Categorical { categories, codes } => codes
                .get(i)
                .copied()
                .flatten()
                .and_then(|c| categories.get(c as usize))
                .map_or(Cell::Missing, |s| Cell::Text(s.clone())),
        }
    }

    /// Row `i` as text (`None` when missing).
    pub fn text(&self, i: usize) -> Option<String> {
        match self.cell(i) {
            Cell::Missing => None,
            c => Some(c.to_string()),
        }
    }

    /// The rows at `idx`, in that order.
    pub fn take(&self, idx: &[usize]) -> Result<ColumnData> {
        let n = self.len();
        if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
            return Err(shape(format!("row index {bad} out of range ({n} rows)")));
        }
        Ok(match self {
            ColumnData::Numeric(v) => ColumnData::Numeric(idx.iter().map(|&i| v[i]).collect()),
            ColumnData::Bool(v) => ColumnData::Bool(idx.iter().map(|&i| v[i]).collect()),
            ColumnData::Text(v) => ColumnData::Text(idx.iter().map(|&i| v[i].clone()).collect()),
            ColumnData::Categorical { categories, codes } => ColumnData::Categorical {
                categories: categories.clone(),
                codes: idx.iter().map(|&i| codes[i]).collect(),
            },
        })
    }

    /// Number of missing cells.
    pub fn missing_count(&self) -> usize {
        (0..self.len()).filter(|&i| self.is_missing(i)).count()
    }
}

/// A named column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Column name (unique within a dataset).
    pub name: String,
    /// Values.
    pub data: ColumnData,
}

impl Column {
    /// A numeric column.
    pub fn numeric(name: impl Into<String>, values: Vec<f64>) -> Self {
        Column {
            name: name.into(),
            data: ColumnData::Numeric(values),
        }
    }

    /// A text column.
    pub fn text<S: Into<String>>(name: impl Into<String>, values: Vec<Option<S>>) -> Self {
        Column {
            name: name.into(),
            data: ColumnData::Text(values.into_iter().map(|v| v.map(Into::into)).collect()),
        }
    }

    /// A boolean column.
    pub fn boolean(name: impl Into<String>, values: Vec<Option<bool>>) -> Self {
        Column {
            name: name.into(),
            data: ColumnData::Bool(values),
        }
    }
}

/// One value, as found in a record (JSON-friendly: deserializes from
/// `null`, booleans, numbers and strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(untagged)]
pub enum Cell {
    /// Missing (`null`).
    #[default]
    Missing,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    Text(String),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Missing => Ok(()),
            Cell::Bool(b) => write!(f, "{b}"),
            Cell::Number(x) => f.write_str(&format_number(*x)),
            Cell::Text(s) => f.write_str(s),
        }
    }
}

/// Shortest text that parses back to the same `f64`: integers without a
/// fraction (`3`), others like `0.1` or `1e-300`.
pub fn format_number(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x}")
    } else {
        format!("{x:?}")
    }
}

/// A raw record: column name → value (used at prediction time).
pub type Record = BTreeMap<String, Cell>;

/// CSV parsing options. `None` means "detect".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsvOptions {
    /// Field delimiter; detected among `,` tab `;` `|` when `None`.
    pub delimiter: Option<u8>,
    /// Whether the first row is a header; detected when `None`.
    pub has_header: Option<bool>,
    /// Tokens read as missing (default: pandas' list, see [`DEFAULT_MISSING`]).
    pub missing_values: Vec<String>,
    /// Infer numeric / bool columns (otherwise every column is text).
    pub infer_types: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: None,
            has_header: None,
            missing_values: DEFAULT_MISSING.iter().map(|s| s.to_string()).collect(),
            infer_types: true,
        }
    }
}

/// The summary of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// Column name.
    pub name: String,
    /// Stored / inferred type.
    pub kind: ColumnKind,
    /// Number of rows.
    pub count: usize,
    /// Missing cells.
    pub missing: usize,
    /// Distinct non-missing values.
    pub distinct: usize,
    /// Minimum (numeric columns).
    pub min: Option<f64>,
    /// Maximum (numeric columns).
    pub max: Option<f64>,
    /// Mean (numeric columns).
    pub mean: Option<f64>,
    /// Most frequent value (ties → smallest), for non-numeric columns.
    pub most_frequent: Option<String>,
}

/// A column-oriented table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Dataset {
    columns: Vec<Column>,
    n_rows: usize,
}

impl Dataset {
    /// Builds a dataset; columns must have equal lengths and unique names.
    pub fn new(columns: Vec<Column>) -> Result<Self> {
        let n_rows = columns.first().map_or(0, |c| c.data.len());
        let mut seen = HashSet::new();
        for c in &columns {
            if c.data.len() != n_rows {
                return Err(shape(format!(
                    "column {:?} has {} rows, expected {n_rows}",
                    c.name,
                    c.data.len()
                )));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(MlError::InvalidData(format!(
                    "duplicate column name {:?}",
                    c.name
                )));
            }
        }
        Ok(Dataset { columns, n_rows })
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of columns.
    pub fn n_cols(&self) -> usize {
        self.columns.len()
    }

    /// The columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Column names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Position of a column.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| MlError::MissingColumn(name.to_string()))
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Result<&Column> {
        Ok(&self.columns[self.index_of(name)?])
    }

    /// Replaces (same name) or appends a column.
    pub fn set_column(&mut self, column: Column) -> Result<()> {
        if !self.columns.is_empty() && column.data.len() != self.n_rows {
            return Err(shape(format!(
                "column {:?} has {} rows, expected {}",
                column.name,
                column.data.len(),
                self.n_rows
            )));
        }
        if self.columns.is_empty() {
            self.n_rows = column.data.len();
        }
        match self.columns.iter_mut().find(|c| c.name == column.name) {
            Some(c) => *c = column,
            None => self.columns.push(column),
        }
        Ok(())
    }

    /// Removes a column, returning it.
    pub fn remove_column(&mut self, name: &str) -> Result<Column> {
        let i = self.index_of(name)?;
        Ok(self.columns.remove(i))
    }

    /// A dataset with only the named columns, in the given order.
    pub fn select(&self, names: &[&str]) -> Result<Dataset> {
        let cols = names
            .iter()
            .map(|n| self.column(n).cloned())
            .collect::<Result<Vec<_>>>()?;
        if cols.is_empty() {
            return Ok(Dataset::default());
        }
        Dataset::new(cols)
    }

    /// The rows at `idx`, in that order.
    pub fn take_rows(&self, idx: &[usize]) -> Result<Dataset> {
        let columns = self
            .columns
            .iter()
            .map(|c| {
                Ok(Column {
                    name: c.name.clone(),
                    data: c.data.take(idx)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset {
            columns,
            n_rows: idx.len(),
        })
    }

    /// Row `i` as a [`Record`].
    pub fn record(&self, i: usize) -> Record {
        self.columns
            .iter()
            .map(|c| (c.name.clone(), c.data.cell(i)))
            .collect()
    }

    /// Builds a dataset from records; columns appear in first-seen key order
    /// and types are inferred as for JSON Lines.
    pub fn from_records(records: &[Vec<(String, Cell)>]) -> Result<Dataset> {
        let mut order: Vec<String> = Vec::new();
        let mut pos: HashMap<String, usize> = HashMap::new();
        let mut cols: Vec<Vec<Cell>> = Vec::new();
        for (row, rec) in records.iter().enumerate() {
            for (k, v) in rec {
                let j = match pos.get(k) {
                    Some(&j) => j,
                    None => {
                        pos.insert(k.clone(), order.len());
                        order.push(k.clone());
                        cols.push(vec![Cell::Missing; row]);
                        order.len() - 1
                    }
                };
                if cols[j].len() > row {
                    return Err(MlError::Parse {
                        line: row + 1,
                        row,
                        column: k.clone(),
                        message: "duplicate key".into(),
                    });
                }
                cols[j].push(v.clone());
            }
            for c in cols.iter_mut() {
                if c.len() == row {
                    c.push(Cell::Missing);
                }
            }
        }
        let columns = order
            .into_iter()
            .zip(cols)
            .map(|(name, cells)| Column {
                name,
                data: infer_from_cells(cells),
            })
            .collect();
        Dataset::new(columns)
    }

    /// Parses CSV text.
    pub fn from_csv(text: &str, opts: &CsvOptions) -> Result<Dataset> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let delimiter = match opts.delimiter {
            Some(d) => d,
            None => detect_delimiter(text),
        };
        if delimiter == b'"' || delimiter == b'\n' || delimiter == b'\r' || !delimiter.is_ascii() {
            return Err(crate::error::invalid(
                "delimiter must be an ASCII character other than quote or newline",
            ));
        }
        let records = tokenize_csv(text, delimiter, usize::MAX)?;
        if records.is_empty() {
            return Ok(Dataset::default());
        }
        let missing: HashSet<&str> = opts.missing_values.iter().map(|s| s.as_str()).collect();
        let has_header = match opts.has_header {
            Some(h) => h,
            None => detect_header(&records, &missing),
        };
        let width = records[0].fields.len();
        let (names, body) = if has_header {
            (dedupe_names(&records[0].fields), &records[1..])
        } else {
            (
                (0..width).map(|i| format!("column_{i}")).collect(),
                &records[..],
            )
        };
        let mut cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(body.len()); width];
        for (row, rec) in body.iter().enumerate() {
            if rec.fields.len() != width {
                return Err(MlError::Parse {
                    line: rec.line,
                    row,
                    column: names
                        .get(rec.fields.len().min(width))
                        .cloned()
                        .unwrap_or_default(),
                    message: format!("expected {width} fields, found {}", rec.fields.len()),
                });
            }
            for (j, f) in rec.fields.iter().enumerate() {
                cols[j].push(if missing.contains(f.as_str()) {
                    None
                } else {
                    Some(f.clone())
                });
            }
        }
        let columns = names
            .into_iter()
            .zip(cols)
            .map(|(name, cells)| Column {
                name,
                data: if opts.infer_types {
                    infer_from_text(cells)
                } else {
                    ColumnData::Text(cells)
                },
            })
            .collect();
        Dataset::new(columns)
    }

    /// Parses CSV bytes (must be UTF-8; a BOM is skipped).
    pub fn from_csv_bytes(bytes: &[u8], opts: &CsvOptions) -> Result<Dataset> {
        Dataset::from_csv(utf8(bytes)?, opts)
    }

    /// Parses JSON Lines: one flat object per non-blank line.
    pub fn from_jsonl(text: &str) -> Result<Dataset> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut records = Vec::new();
        for (ln, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row = records.len();
            let obj: OrderedObject = serde_json::from_str(line).map_err(|e| MlError::Parse {
                line: ln + 1,
                row,
                column: String::new(),
                message: e.to_string(),
            })?;
            let mut rec = Vec::with_capacity(obj.0.len());
            for (k, v) in obj.0 {
                let cell = match v {
                    serde_json::Value::Null => Cell::Missing,
                    serde_json::Value::Bool(b) => Cell::Bool(b),
                    serde_json::Value::Number(n) => Cell::Number(n.as_f64().unwrap_or(f64::NAN)),
                    serde_json::Value::String(s) => Cell::Text(s),
                    _ => {
                        return Err(MlError::Parse {
                            line: ln + 1,
                            row,
                            column: k,
                            message: "nested arrays/objects are not supported".into(),
                        })
                    }
                };
                rec.push((k, cell));
            }
            records.push(rec);
        }
        Dataset::from_records(&records).map_err(|e| match e {
            MlError::Parse {
                row,
                column,
                message,
                ..
            } => MlError::Parse {
                line: row + 1,
                row,
                column,
                message,
            },
            e => e,
        })
    }

    /// Parses JSON Lines bytes (UTF-8).
    pub fn from_jsonl_bytes(bytes: &[u8]) -> Result<Dataset> {
        Dataset::from_jsonl(utf8(bytes)?)
    }

    /// Writes CSV with a header row (`\n` line ends, RFC 4180 quoting).
    pub fn to_csv(&self, delimiter: u8) -> String {
        let d = delimiter as char;
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|c| quote_csv(&c.name, d)).collect();
        out.push_str(&header.join(&d.to_string()));
        out.push('\n');
        for i in 0..self.n_rows {
            for (j, c) in self.columns.iter().enumerate() {
                if j > 0 {
                    out.push(d);
                }
                match c.data.cell(i) {
                    Cell::Missing => {}
                    Cell::Text(s) => out.push_str(&quote_csv(&s, d)),
                    cell => out.push_str(&cell.to_string()),
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes JSON Lines (missing → `null`).
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for i in 0..self.n_rows {
            out.push('{');
            for (j, c) in self.columns.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&c.name).unwrap_or_default());
                out.push(':');
                let v = match c.data.cell(i) {
                    Cell::Missing => "null".to_string(),
                    Cell::Bool(b) => b.to_string(),
                    Cell::Number(x) if x.is_finite() => {
                        serde_json::to_string(&x).unwrap_or_else(|_| "null".into())
                    }
                    Cell::Number(_) => "null".to_string(),
                    Cell::Text(s) => serde_json::to_string(&s).unwrap_or_default(),
                };
                out.push_str(&v);
            }
            out.push_str("}\n");
        }
        out
    }

    /// A profile of every column.
    pub fn profile(&self) -> Vec<ColumnProfile> {
        self.columns.iter().map(profile_column).collect()
    }
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let upto = &bytes[..e.valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        MlError::Parse {
            line,
            row: line.saturating_sub(2),
            column: String::new(),
            message: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        }
    })
}

/// A JSON object that keeps its keys' order.
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn quote_csv(s: &str, d: char) -> String {
    let needs = s.contains(d)
        || s.contains('"')
        || s.contains('\n')
        || s.contains('\r')
        || s.starts_with(' ')
        || s.ends_with(' ')
        || DEFAULT_MISSING.contains(&s);
    if needs && !s.is_empty() {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn dedupe_names(fields: &[String]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut used: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let base = if f.trim().is_empty() {
            format!("column_{i}")
        } else {
            f.clone()
        };
        let mut name = base.clone();
        while used.contains(&name) {
            let k = seen.entry(base.clone()).or_insert(0);
            *k += 1;
            name = format!("{base}.{k}");
        }
        used.insert(name.clone());
        out.push(name);
    }
    out
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub(crate) fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    if lower.contains("nan") {
        return None;
    }
    t.parse::<f64>().ok()
}

fn infer_from_text(cells: Vec<Option<String>>) -> ColumnData {
    let present = || cells.iter().flatten();
    if present().next().is_none() {
        return ColumnData::Numeric(vec![f64::NAN; cells.len()]);
    }
    if present().all(|s| parse_bool(s).is_some()) {
        return ColumnData::Bool(
            cells
                .iter()
                .map(|c| c.as_deref().and_then(parse_bool))
                .collect(),
        );
    }
    if present().all(|s| parse_number(s).is_some()) {
        return ColumnData::Numeric(
            cells
                .iter()
                .map(|c| c.as_deref().and_then(parse_number).unwrap_or(f64::NAN))
                .collect(),
        );
    }
    ColumnData::Text(cells)
}

fn infer_from_cells(cells: Vec<Cell>) -> ColumnData {
    let present = || cells.iter().filter(|c| !matches!(c, Cell::Missing));
    if present().all(|c| matches!(c, Cell::Number(_))) {
        ColumnData::Numeric(
            cells
                .iter()
                .map(|c| {
                    if let Cell::Number(x) = c {
                        *x
                    } else {
                        f64::NAN
                    }
                })
                .collect(),
        )
    } else if present().all(|c| matches!(c, Cell::Bool(_))) {
        ColumnData::Bool(
            cells
                .iter()
                .map(|c| {
                    if let Cell::Bool(b) = c {
                        Some(*b)
                    } else {
                        None
                    }
                })
                .collect(),
        )
    } else {
        ColumnData::Text(
            cells
                .into_iter()
                .map(|c| match c {
                    Cell::Missing => None,
                    c => Some(c.to_string()),
                })
                .collect(),
        )
    }
}

struct RawRecord {
    line: usize,
    fields: Vec<String>,
}

/// RFC 4180 tokenizer. Stops after `limit` records. Blank lines are skipped.
fn tokenize_csv(text: &str, delim: u8, limit: usize) -> Result<Vec<RawRecord>> {
    let bytes = text.as_bytes();
    let mut records = Vec::new();
    let mut i = 0usize;
    let mut line = 1usize;
    let n = bytes.len();
    while i < n && records.len() < limit {
        let start_line = line;
        let mut fields: Vec<String> = Vec::new();
        let mut field: Vec<u8> = Vec::new();
        let mut blank = true;
        loop {
            // start of a field
            if i < n && bytes[i] == b'"' {
                blank = false;
                i += 1;
                loop {
                    if i >= n {
                        return Err(MlError::Parse {
                            line: start_line,
                            row: records.len(),
                            column: format!("#{}", fields.len()),
                            message: "unterminated quoted field".into(),
                        });
                    }
                    let b = bytes[i];
                    if b == b'"' {
                        if i + 1 < n && bytes[i + 1] == b'"' {
                            field.push(b'"');
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        if b == b'\n' {
                            line += 1;
                        }
                        field.push(b);
                        i += 1;
                    }
                }
                if i < n && bytes[i] != delim && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    return Err(MlError::Parse {
                        line,
                        row: records.len(),
                        column: format!("#{}", fields.len()),
                        message: format!("unexpected {:?} after closing quote", bytes[i] as char),
                    });
                }
            } else {
                while i < n && bytes[i] != delim && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    field.push(bytes[i]);
                    i += 1;
                }
            }
            if !field.is_empty() {
                blank = false;
            }
            fields.push(String::from_utf8_lossy(&field).into_owned());
            field.clear();
            if i < n && bytes[i] == delim {
                blank = false;
                i += 1;
                continue;
            }
            // end of record
            if i < n && bytes[i] == b'\r' {
                i += 1;
            }
            if i < n && bytes[i] == b'\n' {
                i += 1;
            }
            line += 1;
            break;
        }
        if !blank {
            records.push(RawRecord {
                line: start_line,
                fields,
            });
        }
    }
    Ok(records)
}

/// Picks the delimiter giving the most consistent field count (> 1) over the
/// first records; ties go to the earlier of `, \t ; |`.
pub fn detect_delimiter(text: &str) -> u8 {
    let mut best = (b',', 0usize, 0usize); // (delim, consistent rows, fields)
    for &d in CANDIDATE_DELIMITERS {
        let Ok(recs) = tokenize_csv(text, d, 50) else {
            continue;
        };
        if recs.is_empty() {
            continue;
        }
        let mut freq: HashMap<usize, usize> = HashMap::new();
        for r in &recs {
            *freq.entry(r.fields.len()).or_insert(0) += 1;
        }
        let (&width, &rows) = freq
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .unwrap_or((&1, &0));
        if width > 1 && (rows > best.1 || (rows == best.1 && width > best.2)) {
            best = (d, rows, width);
        }
    }
    best.0
}

fn detect_header(records: &[RawRecord], missing: &HashSet<&str>) -> bool {
    let first = &records[0].fields;
    let body = &records[1..];
    if body.is_empty() {
        return first
            .iter()
            .all(|f| parse_number(f).is_none() && parse_bool(f).is_none());
    }
    let mut votes: i64 = 0;
    for (j, h) in first.iter().enumerate() {
        let vals: Vec<&str> = body
            .iter()
            .filter_map(|r| r.fields.get(j).map(|s| s.as_str()))
            .filter(|s| !missing.contains(s))
            .collect();
        if vals.is_empty() {
            continue;
        }
        let h_missing = missing.contains(h.as_str());
        if vals.iter().all(|v| parse_bool(v).is_some()) {
            votes += if h_missing || parse_bool(h).is_some() {
                -1
            } else {
                1
            };
        } else if vals.iter().all(|v| parse_number(v).is_some()) {
            votes += if h_missing || parse_number(h).is_some() {
                -1
            } else {
                1
            };
        } else if vals.contains(&h.as_str()) {
            votes -= 1;
        }
    }
    if votes != 0 {
        return votes > 0;
    }
    // All-text columns: a header has distinct, non-empty names.
    let mut seen = HashSet::new();
    first
        .iter()
        .all(|f| !f.trim().is_empty() && seen.insert(f.as_str()))
}

fn profile_column(c: &Column) -> ColumnProfile {
    let count = c.data.len();
    let missing = c.data.missing_count();
    let mut p = ColumnProfile {
        name: c.name.clone(),
        kind: c.data.kind(),
        count,
        missing,
        distinct: 0,
        min: None,
        max: None,
        mean: None,
        most_frequent: None,
    };
    match &c.data {
        ColumnData::Numeric(v) => {
            let vals: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
            let distinct: HashSet<u64> = vals.iter().map(|x| (x + 0.0).to_bits()).collect();
            p.distinct = distinct.len();
            if !vals.is_empty() {
                p.min = vals.iter().copied().reduce(f64::min);
                p.max = vals.iter().copied().reduce(f64::max);
                p.mean = Some(vals.iter().sum::<f64>() / vals.len() as f64);
            }
        }
        _ => {
            let mut freq: BTreeMap<String, usize> = BTreeMap::new();
            for i in 0..count {
                if let Some(t) = c.data.text(i) {
                    *freq.entry(t).or_insert(0) += 1;
                }
            }
            p.distinct = freq.len();
            let mut best: Option<(&String, usize)> = None;
            for (k, &n) in &freq {
                if best.is_none_or(|(_, b)| n > b) {
                    best = Some((k, n));
                }
            }
            p.most_frequent = best.map(|(k, _)| k.clone());
        }
    }
    p
}
