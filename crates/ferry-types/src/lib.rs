//! Wire types shared by the server, the CLI and tests: OpenAI's request and response shapes,
//! Ferry's extensions, and the one table that gives every error its HTTP status, type and code.
//!
//! Nothing here does I/O or knows about models; it is data and validation of data.

pub mod error;
pub mod openai;

pub use error::{ApiError, ErrorCode};
