//! The crate's error type.
//!
//! Every fallible operation returns [`MlError`]; nothing in this crate panics
//! on user data. Errors about a particular cell carry its 0-based data row
//! index (header excluded) and its column name, and parse errors also carry the
//! 1-based line number in the source text.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = MlError> = std::result::Result<T, E>;

/// Everything that can go wrong in `ferry-ml`.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MlError {
    /// The input text could not be parsed (CSV / JSON Lines).
    #[error("parse error at line {line} (row {row}, column {column}): {message}")]
    Parse {
        /// 1-based line number in the source text.
        line: usize,
        /// 0-based data row (header excluded).
        row: usize,
        /// Column name (or `#index` when unknown).
        column: String,
        /// What went wrong.
        message: String,
    },
    /// A cell could not be converted to the requested type.
    #[error("row {row}, column {column:?}: cannot convert {value:?} to {target}")]
    Conversion {
        /// 0-based data row.
        row: usize,
        /// Column name.
        column: String,
        /// The offending cell, as text.
        value: String,
        /// Target type name.
        target: String,
    },
    /// A column named in a request does not exist.
    #[error("no column named {0:?}")]
    MissingColumn(String),
    /// A column has the wrong type for the requested operation.
    #[error("column {column:?} is {actual}, expected {expected}")]
    ColumnType {
        /// Column name.
        column: String,
        /// What the operation needs.
        expected: String,
        /// What the column is.
        actual: String,
    },
    /// A value was missing where none is allowed.
    #[error("row {row}, column {column:?}: missing value")]
    MissingValue {
        /// 0-based row.
        row: usize,
        /// Column name.
        column: String,
    },
    /// A category not seen during `fit`, with `handle_unknown = error`.
    #[error("row {row}, column {column:?}: unknown category {value:?}")]
    UnknownCategory {
        /// 0-based row.
        row: usize,
        /// Column name.
        column: String,
        /// The unseen value.
        value: String,
    },
    /// Array shapes / lengths do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A parameter is out of range or inconsistent.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// The data cannot support the request (e.g. too few members of a class).
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// Training was cancelled through the observer.
    #[error("training cancelled")]
    Cancelled,
    /// Training diverged (non-finite loss).
    #[error("training diverged at epoch {epoch}: loss is {loss}")]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// The non-finite loss.
        loss: f64,
    },
}

pub(crate) fn invalid(msg: impl Into<String>) -> MlError {
    MlError::InvalidParameter(msg.into())
}

pub(crate) fn shape(msg: impl Into<String>) -> MlError {
    MlError::Shape(msg.into())
}
