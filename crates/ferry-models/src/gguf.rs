//! GGUF reader: metadata, tensor directory, and memory-mapped tensor data.
//!
//! Parsing is defensive: every count, length and offset is checked against the bytes that
//! remain before anything is allocated or read, so a truncated or hostile file gives a
//! `GgufError`, never a panic or a huge allocation. This module reads files; it does not
//! interpret metadata (that is the architectures' and the tokenizer's job).

use std::collections::BTreeMap;
use std::path::Path;

use ferry_kernels::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_DIMS: usize = 4;
const MAX_ARRAY_DEPTH: usize = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    #[error("GGUF version {0} is not supported (need 2 or 3)")]
    Version(u32),
    #[error("truncated GGUF file: {0}")]
    Truncated(String),
    #[error("malformed GGUF file: {0}")]
    Malformed(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any non-negative integer as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer as `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// Any number as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One entry of the tensor directory, already validated against the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the length of a row.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of data.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// (rows, cols) of the tensor seen as a matrix of `dims[0]`-long rows.
    pub fn matrix_shape(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        let rows = self.dims.iter().skip(1).product::<u64>() as usize;
        (rows, cols)
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file with its bytes kept mapped.
pub struct GgufFile {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: BTreeMap<String, usize>,
    data: Backing,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Map and parse a file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; Ferry's model files are immutable, content-addressed
        // blobs. A file truncated underneath us by another process could still fault, as with
        // any mmap-based loader (llama.cpp has the same contract).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map))
    }

    /// Parse a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(data: Backing) -> Result<Self, GgufError> {
        let bytes = data.bytes();
        let mut r = Reader { b: bytes, pos: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err(GgufError::BadMagic);
        }
        let version = r.u32()?;
        if version != 2 && version != 3 {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Each kv needs at least a key length (8), a type (4) and one byte; each tensor at
        // least 8 + 4 + 4 + 8 bytes. Reject counts that cannot fit before allocating.
        if n_kv > (r.remaining() / 13) as u64 {
            return Err(GgufError::Malformed(format!(
                "{n_kv} metadata entries cannot fit in the file"
            )));
        }
        if n_tensors > (r.remaining() / 24) as u64 {
            return Err(GgufError::Malformed(format!(
                "{n_tensors} tensors cannot fit in the file"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(GgufError::Malformed(format!(
                    "duplicate metadata key {key:?}"
                )));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Malformed(
                        "general.alignment must be a power of two".into(),
                    ))
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Malformed(format!(
                    "tensor {name:?} has {n_dims} dimensions"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let ty_id = r.u32()?;
            let offset = r.u64()?;
            raw.push((name, dims, ty_id, offset));
        }
        let data_start = align_up(r.pos as u64, alignment)
            .ok_or_else(|| GgufError::Malformed("data offset overflows".into()))?;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut index = BTreeMap::new();
        for (name, dims, ty_id, offset) in raw {
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                GgufError::Malformed(format!("tensor {name:?} has unsupported type id {ty_id}"))
            })?;
            let mut n_el: u64 = 1;
            for &d in &dims {
                if d == 0 {
                    return Err(GgufError::Malformed(format!(
                        "tensor {name:?} has a zero dimension"
                    )));
                }
                n_el = n_el.checked_mul(d).ok_or_else(|| {
                    GgufError::Malformed(format!("tensor {name:?} element count overflows"))
                })?;
            }
            let row = dims[0];
            let row_bytes = usize::try_from(row)
                .ok()
                .and_then(|c| ty.row_bytes(c))
                .ok_or_else(|| {
                    GgufError::Malformed(format!(
                        "tensor {name:?}: row of {row} is not a multiple of {}'s block of {}",
                        ty.name(),
                        ty.block_size()
                    ))
                })? as u64;
            let n_bytes = row_bytes
                .checked_mul(n_el / row)
                .ok_or_else(|| GgufError::Malformed(format!("tensor {name:?} size overflows")))?;
            if offset % alignment != 0 {
                return Err(GgufError::Malformed(format!(
                    "tensor {name:?} offset {offset} is not aligned"
                )));
            }
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| GgufError::Malformed(format!("tensor {name:?} offset overflows")))?;
            let end = start
                .checked_add(n_bytes)
                .ok_or_else(|| GgufError::Malformed(format!("tensor {name:?} end overflows")))?;
            if end > file_len {
                return Err(GgufError::Truncated(format!(
                    "tensor {name:?} needs bytes {start}..{end} but the file has {file_len}"
                )));
            }
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Malformed(format!(
                    "duplicate tensor name {name:?}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: start as usize,
                n_bytes: n_bytes as usize,
            });
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            index,
            data,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
    /// The bytes of a tensor of this file (bounds were checked when parsing).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.data.bytes()[t.offset..t.offset + t.n_bytes]
    }
    /// All bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }
    /// Size of the file in bytes.
    pub fn file_size(&self) -> usize {
        self.data.bytes().len()
    }
    /// Tell the kernel that bytes `offset..offset + len` of a mapped file will not be read
    /// soon (the whole pages inside the range leave this process's resident set; a later read
    /// maps them again from the page cache or the file, with the same bytes). For a tensor
    /// whose weights were copied into another layout. Nothing for an in-memory file.
    pub fn release(&self, offset: usize, len: usize) {
        let Backing::Mmap(m) = &self.data else {
            return;
        };
        let page = 4096;
        let (start, end) = (
            offset.next_multiple_of(page),
            (offset + len).min(m.len()) / page * page,
        );
        if end > start {
            // SAFETY: the map is a read-only private mapping of a file that Ferry never writes
            // through: `MADV_DONTNEED` only unmaps its pages, which fault back in with the same
            // file contents, so every `&[u8]` into it keeps reading the same bytes.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated(format!(
                "{what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let s = self.take(N, "a number")?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| {
                GgufError::Truncated(format!("string of {n} bytes at offset {}", self.pos))
            })?;
        let s = self.take(n, "a string")?;
        String::from_utf8(s.to_vec()).map_err(|_| {
            GgufError::Malformed(format!("string at offset {} is not UTF-8", self.pos - n))
        })
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.arr()?)),
            1 => Value::I8(i8::from_le_bytes(self.arr()?)),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(u32::from_le_bytes(self.arr()?)),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::Malformed(format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed("arrays nested too deeply".into()));
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                let min = min_value_size(ety)
                    .ok_or_else(|| GgufError::Malformed(format!("array element type {ety}")))?;
                if n > (self.remaining() / min) as u64 {
                    return Err(GgufError::Truncated(format!(
                        "array of {n} elements at offset {}",
                        self.pos
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(u64::from_le_bytes(self.arr()?)),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            t => return Err(GgufError::Malformed(format!("metadata value type {t}"))),
        })
    }
}

fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10 | 11 | 12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Builds GGUF files in memory; used by tests (here and in other crates) to make small
/// well-formed and malformed models.
pub mod writer {
    use super::Value;
    use ferry_kernels::GgmlType;

    /// Serialize metadata and tensors (name, dims, type, raw bytes) as GGUF v3.
    pub fn write(
        metadata: &[(&str, Value)],
        tensors: &[(&str, Vec<u64>, GgmlType, Vec<u8>)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        let base = out.len();
        for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_str(out, s),
            Value::Array(a) => {
                let et = a.first().map(type_id).unwrap_or(4);
                out.extend_from_slice(&et.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    put_value(out, x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        writer::write(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
                ),
            ],
            &[
                ("w", vec![32, 2], GgmlType::Q8_0, vec![7u8; 68]),
                ("n", vec![4], GgmlType::F32, vec![0u8; 16]),
            ],
        )
    }

    #[test]
    fn parses_a_well_formed_file() {
        let g = GgufFile::from_bytes(sample()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(
            g.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(g.get("llama.block_count").unwrap().as_u64(), Some(2));
        let w = g.tensor("w").unwrap();
        assert_eq!(w.matrix_shape(), (2, 32));
        assert_eq!(g.tensor_data(w), &[7u8; 68][..]);
        assert_eq!(g.tensor_data(g.tensor("n").unwrap()).len(), 16);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample();
        for cut in 0..full.len() {
            assert!(
                GgufFile::from_bytes(full[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let full = sample();
        let mut seed = 1u64;
        for _ in 0..3000 {
            let mut b = full.clone();
            for _ in 0..3 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (seed >> 33) as usize % b.len();
                b[i] = (seed >> 13) as u8;
            }
            let _ = GgufFile::from_bytes(b);
        }
    }

    #[test]
    fn hostile_counts_are_rejected_before_allocation() {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::Malformed(_))
        ));
        // A string claiming 2^60 bytes.
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        b.extend_from_slice(&[0u8; 16]);
        assert!(GgufFile::from_bytes(b).is_err());
    }

    #[test]
    fn rejects_bad_magic_version_and_out_of_file_tensors() {
        let mut b = sample();
        b[0] = b'X';
        assert!(matches!(GgufFile::from_bytes(b), Err(GgufError::BadMagic)));
        let mut b = sample();
        b[4] = 1;
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::Version(1))
        ));
        let t = writer::write(&[], &[("w", vec![32, 1000], GgmlType::Q8_0, vec![0u8; 34])]);
        assert!(matches!(
            GgufFile::from_bytes(t),
            Err(GgufError::Truncated(_))
        ));
        let t = writer::write(&[], &[("w", vec![33, 1], GgmlType::Q8_0, vec![0u8; 34])]);
        assert!(matches!(
            GgufFile::from_bytes(t),
            Err(GgufError::Malformed(_))
        ));
    }
}
