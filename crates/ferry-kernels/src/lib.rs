//! CPU compute for Ferry: GGML block formats, quantized matrix products, and the small fused
//! ops a transformer step needs (RMS norm, rotary embeddings, softmax, SwiGLU).
//!
//! This crate owns arithmetic only. It knows nothing about files, models or requests: callers
//! hand it byte slices that they have already checked against their source, and shapes.
//!
//! Every kernel has a scalar reference (`quant::*_ref`) that the fast paths are tested against.
//! Reductions are done in a fixed order per output element, independent of how many rows of
//! activations are multiplied at once; this is what makes batched decoding batch-invariant.

pub mod attn;
pub mod dot;
pub mod gemm;
pub mod ggml_attn;
mod hugemem;
pub mod igemm;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod pool;
pub mod quant;
mod quant_k;
pub mod vmath;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dot::{backend_name, quantize_row_act_fast, vec_dot};
pub use hugemem::HugeBytes;
pub use matmul::{matmul, matmul_multi, MatmulScratch, Matrix};
pub use packed::PackedMatrix;
pub use pool::ThreadPool;
pub use quant::{GgmlType, Order};

/// Errors a caller can cause by handing the kernels inconsistent shapes or types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("tensor type {0} is not supported")]
    UnsupportedType(String),
    #[error("row length {cols} is not a multiple of the block size {block} of {ty}")]
    RaggedRow {
        ty: &'static str,
        cols: usize,
        block: usize,
    },
    #[error("tensor data is {got} bytes but its shape needs {want}")]
    SizeMismatch { got: usize, want: usize },
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod testutil {
    /// A deterministic uniform value in [-0.5, 0.5) (a 64-bit LCG) for the kernel tests.
    pub fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }
}
