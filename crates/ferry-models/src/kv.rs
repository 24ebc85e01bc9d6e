//! Paged key/value cache storage.
//!
//! The cache is preallocated once: `n_blocks` blocks of `block_size` token slots, per layer, for
//! keys and values. A sequence owns a list of block ids (its block table); position `p` of the
//! sequence lives in slot `p % block_size` of block `table[p / block_size]`. Which sequence gets
//! which blocks is the engine's business (see `BlockAllocator`); this module only stores.
//!
//! Keys and values are stored as f16 bits, as llama.cpp's cache holds them (the model rounds
//! them to f16 on the way in anyway, so nothing is lost): half the bytes of f32 storage, and
//! half the bytes attention reads.

/// Key/value storage for every layer.
pub struct KvCache {
    pub(crate) n_layer: usize,
    pub(crate) kv_dim: usize,
    pub(crate) block_size: usize,
    pub(crate) n_blocks: usize,
    /// Keys, f16 bits.
    pub(crate) k: Vec<u16>,
    /// Values, f16 bits.
    pub(crate) v: Vec<u16>,
}

impl KvCache {
    /// Allocate a cache for `n_tokens` token slots (rounded up to whole blocks).
    pub fn new(n_layer: usize, kv_dim: usize, block_size: usize, n_tokens: usize) -> Self {
        let n_blocks = n_tokens.div_ceil(block_size).max(1);
        let len = n_layer * n_blocks * block_size * kv_dim;
        Self {
            n_layer,
            kv_dim,
            block_size,
            n_blocks,
            k: vec![0; len],
            v: vec![0; len],
        }
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }
    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<u16>()
    }

    #[inline]
    pub(crate) fn offset(&self, layer: usize, table: &[u32], pos: usize) -> usize {
        let block = table[pos / self.block_size] as usize;
        debug_assert!(block < self.n_blocks);
        ((layer * self.n_blocks + block) * self.block_size + pos % self.block_size) * self.kv_dim
    }
}

/// A free list of cache blocks.
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(n_blocks: usize) -> Self {
        Self {
            free: (0..n_blocks as u32).rev().collect(),
            total: n_blocks,
        }
    }
    /// Take `n` blocks, or none if fewer are free.
    pub fn alloc(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        Some(self.free.split_off(self.free.len() - n))
    }
    pub fn release(&mut self, blocks: Vec<u32>) {
        self.free.extend(blocks);
    }
    pub fn n_free(&self) -> usize {
        self.free.len()
    }
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_never_hands_out_a_block_twice() {
        let mut a = BlockAllocator::new(10);
        let x = a.alloc(4).unwrap();
        let y = a.alloc(6).unwrap();
        assert!(a.alloc(1).is_none());
        let mut all: Vec<u32> = x.iter().chain(&y).copied().collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        a.release(x);
        assert_eq!(a.n_free(), 4);
    }
}
