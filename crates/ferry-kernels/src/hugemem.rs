//! Zeroed memory for packed weights, in huge pages where the kernel gives them.
//!
//! Decode streams every packed weight once per token (100+ MB for an 8-bit 135M model). In 4 KiB
//! pages that is a TLB miss and a page walk every 4 KiB of the stream, on each core; with 2 MiB
//! pages, 512 times fewer. A two-thread read loop over 1 GiB (`examples/read_bw.rs`) read
//! 1.10-1.31x faster (median 1.18x of 7 pairs) with transparent huge pages than without, on the
//! development machine. Packed matrices are mostly smaller than 2 MiB, so each one alone would
//! never be given a huge page: they are cut from shared chunks (`CHUNK` bytes, 2 MiB aligned,
//! advised `MADV_HUGEPAGE`, which needs only the kernel's default `madvise` mode). A chunk is
//! anonymous memory, zero until written and resident only where touched; it is unmapped when
//! the last matrix cut from it is dropped.
//!
//! `HugeBytes` is the same memory for weights the kernels read in place (the float types, and
//! every type where the CPU has no packed layout): a copy of the file's bytes.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use crate::packed::{lines_bytes, lines_bytes_mut, Line};

/// A copy of some bytes in huge-page memory (see the module), 64-byte aligned.
pub struct HugeBytes {
    lines: Lines,
    len: usize,
}

impl HugeBytes {
    pub fn copy_of(b: &[u8]) -> Self {
        let mut lines = Lines::zeroed(b.len().div_ceil(64));
        lines_bytes_mut(&mut lines)[..b.len()].copy_from_slice(b);
        Self {
            lines,
            len: b.len(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &lines_bytes(&self.lines)[..self.len]
    }
}

/// Huge page size on x86-64 and most aarch64 kernels.
const HUGE: usize = 2 << 20;

/// Bytes per shared chunk. A matrix of more than half of it gets a chunk of its own.
const CHUNK: usize = 32 << 20;

/// `n` zeroed cache lines, owned (disjoint from every other `Lines`).
pub(crate) struct Lines {
    ptr: *mut Line,
    len: usize,
    /// Keeps the memory mapped (`None`: `ptr` is a leaked `Box<[Line]>`'s, freed on drop).
    chunk: Option<Arc<Chunk>>,
}

// SAFETY: `Lines` owns its range like a `Vec<Line>` does; the shared chunk is only mapped and
// unmapped through its `Arc`.
unsafe impl Send for Lines {}
// SAFETY: as above; `&Lines` gives only shared access to the bytes.
unsafe impl Sync for Lines {}

impl Lines {
    /// `n` zeroed lines: from a huge-page chunk where the platform maps them, else the heap.
    pub(crate) fn zeroed(n: usize) -> Self {
        if n > 0 {
            if let Some(l) = from_chunk(n) {
                return l;
            }
        }
        let b: Box<[Line]> = vec![Line::ZERO; n].into_boxed_slice();
        Self {
            ptr: Box::into_raw(b) as *mut Line,
            len: n,
            chunk: None,
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if self.chunk.is_none() {
            // SAFETY: `ptr`/`len` came from a `Box<[Line]>` leaked in `zeroed`, not freed since.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
            return;
        }
        // The chunk may outlive this range (other matrices, or the chunk still being filled):
        // give the range's whole pages back now (an unloaded model's weights must not stay
        // resident). They read as zeros if touched again; nothing will, the range is not
        // handed out twice.
        #[cfg(target_os = "linux")]
        {
            let (start, end) = (self.ptr as usize, self.ptr as usize + self.len * 64);
            let (a, b) = (start.next_multiple_of(4096), end / 4096 * 4096);
            if b > a {
                // SAFETY: `a..b` lies inside this range of the still-mapped chunk, owned by
                // `self` alone.
                unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
            }
        }
    }
}

impl Deref for Lines {
    type Target = [Line];
    fn deref(&self) -> &[Line] {
        // SAFETY: `ptr` points at `len` initialized lines owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [Line] {
        // SAFETY: as in `deref`; `&mut self` is the only access to this range.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// An anonymous mapping, 2 MiB aligned at `base`.
struct Chunk {
    map: *mut u8,
    map_len: usize,
    base: *mut Line,
    lines: usize,
}

// SAFETY: the mapping is plain memory; `Lines` hand out disjoint ranges of it.
unsafe impl Send for Chunk {}
// SAFETY: as above.
unsafe impl Sync for Chunk {}

/// The chunk matrices are being cut from, and how many of its lines are taken.
static CURRENT: Mutex<Option<(Arc<Chunk>, usize)>> = Mutex::new(None);

fn from_chunk(n: usize) -> Option<Lines> {
    let bytes = n.checked_mul(64)?;
    if bytes > CHUNK / 2 {
        let c = Arc::new(Chunk::map(bytes)?);
        return Some(Lines {
            ptr: c.base,
            len: n,
            chunk: Some(c),
        });
    }
    let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if cur.as_ref().is_none_or(|(c, used)| c.lines - used < n) {
        *cur = Some((Arc::new(Chunk::map(CHUNK)?), 0));
    }
    let (c, used) = cur.as_mut().expect("set above");
    // SAFETY: lines `used..used + n` lie inside the chunk (checked above) and are handed out
    // once.
    let ptr = unsafe { c.base.add(*used) };
    *used += n;
    Some(Lines {
        ptr,
        len: n,
        chunk: Some(c.clone()),
    })
}

impl Chunk {
    #[cfg(unix)]
    fn map(bytes: usize) -> Option<Self> {
        let len = bytes.next_multiple_of(HUGE);
        let map_len = len.checked_add(HUGE)?;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let map = map as *mut u8;
        let base = map.wrapping_add(map.align_offset(HUGE));
        #[cfg(target_os = "linux")]
        // SAFETY: `base..base + len` lies inside the mapping. Advice only: where the kernel
        // has no transparent huge pages it fails and the pages stay small.
        unsafe {
            libc::madvise(base as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Some(Self {
            map,
            map_len,
            base: base as *mut Line,
            lines: len / 64,
        })
    }

    #[cfg(not(unix))]
    fn map(_bytes: usize) -> Option<Self> {
        None
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: the mapping made in `map`; every `Lines` cut from it held an `Arc` to this
        // chunk, so none is left.
        unsafe {
            libc::munmap(self.map as *mut libc::c_void, self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_zeroed_disjoint_and_outlive_their_chunk_handle() {
        let sizes = [1, 7, 1000, 300_000, 5];
        let mut all: Vec<Lines> = sizes.iter().map(|&n| Lines::zeroed(n)).collect();
        for (i, l) in all.iter_mut().enumerate() {
            let b = lines_bytes_mut(l);
            assert!(b.iter().all(|&b| b == 0), "zeroed");
            b.fill(i as u8 + 1);
        }
        // Dropping one (its whole pages given back) leaves the others' bytes as written
        // (disjoint ranges, chunk kept), also those sharing its first and last pages.
        all.remove(2);
        for (l, want) in all.iter_mut().zip([1u8, 2, 4, 5]) {
            assert!(lines_bytes_mut(l).iter().all(|&b| b == want));
        }
        // A matrix larger than half a chunk gets its own mapping, 2 MiB aligned.
        let big = Lines::zeroed(CHUNK / 64);
        assert_eq!(big.len(), CHUNK / 64);
        #[cfg(unix)]
        assert_eq!(big.as_ptr() as usize % HUGE, 0);
        assert_eq!(Lines::zeroed(0).len(), 0);
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for n in [0, 1, 63, 64, 65, 1000] {
            assert_eq!(HugeBytes::copy_of(&bytes[..n]).as_bytes(), &bytes[..n]);
        }
    }
}
