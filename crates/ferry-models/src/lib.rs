//! Model formats, tokenizers, chat templates and architectures.
//!
//! A model is `Config` (read from file metadata) -> `load` -> `forward`. This crate reads files
//! and does arithmetic through `ferry-kernels`; it knows nothing of requests, HTTP or scheduling.

pub mod bert;
pub mod gguf;
pub mod kv;
pub mod llama;
pub mod safetensors;
pub mod template;
pub mod tokenizer;
pub mod wordpiece;
