//! `ferry-ml`: data preprocessing, training and evaluation for Ferry.
//!
//! A pure library (no I/O, no HTTP, no threads) covering the model
//! lifecycle, with scikit-learn parity where scikit-learn defines the
//! behaviour:
//!
//! * [`data`]: a column-oriented [`Dataset`], CSV / JSON Lines parsing and
//!   writing, type inference and per-column profiles.
//! * [`preprocess`]: cleaning (drop / impute missing, type conversion,
//!   de-duplication), scalers and encoders, and a serializable [`Pipeline`]
//!   that is fit on the training split only.
//! * [`split`]: numpy's legacy `RandomState` bit for bit, and
//!   `train_test_split`, k-fold, stratified k-fold, leave-one-out and
//!   bootstrap that select exactly scikit-learn's rows.
//! * [`model`]: linear, logistic, softmax regression and an MLP trained by
//!   seeded, deterministic gradient methods (GD, SGD, momentum, Nesterov,
//!   Adam, AdamW) or L-BFGS (scikit-learn's default solver), with early
//!   stopping, progress callbacks and cancellation; the dense products run in
//!   register-blocked kernels whose results do not depend on the CPU path.
//! * [`plot`]: loss curves and confusion matrices as standalone SVG.
//! * [`metrics`]: classification and regression metrics with scikit-learn's
//!   zero-division rules, `classification_report`, cross-validation and
//!   bootstrap confidence intervals.
//!
//! Every fallible call returns [`MlError`]; nothing panics on user data.

pub mod data;
pub mod error;
mod lbfgs;
mod linalg;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod preprocess;
pub mod split;

pub use data::{Cell, Column, ColumnData, ColumnKind, ColumnProfile, CsvOptions, Dataset};
pub use error::{MlError, Result};
pub use matrix::Matrix;
pub use preprocess::{Pipeline, PipelineSpec};
pub use split::RandomState;
