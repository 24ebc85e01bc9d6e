//! Safetensors reader: a JSON header and a memory-mapped data section.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}`), then the
//! data section; offsets are relative to the start of the data section.
//!
//! Parsing is defensive: the header length is checked against the file size (and a cap) before
//! anything is read, every tensor's byte range must lie inside the data section and equal
//! `dtype size × product(shape)` (overflow-checked), and no two tensors may overlap. A hostile
//! or truncated file gives a `SafetensorsError`, never a panic or a huge allocation. Only F32,
//! F16 and BF16 tensors can be read as floats; other dtypes are checked and listed.

use std::collections::BTreeMap;
use std::path::Path;

/// Largest accepted JSON header (the format's reference implementation uses 100 MB).
const MAX_HEADER: u64 = 100 << 20;
const MAX_DIMS: usize = 8;

/// Why a safetensors file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("truncated safetensors file: {0}")]
    Truncated(String),
    #[error("malformed safetensors header: {0}")]
    Malformed(String),
    #[error("tensor {name}: {why}")]
    BadTensor { name: String, why: String },
    #[error("missing tensor {0}")]
    Missing(String),
}

/// Element types of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "I16" => Self::I16,
            "U16" => Self::U16,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "I32" => Self::I32,
            "U32" => Self::U32,
            "F32" => Self::F32,
            "F64" => Self::F64,
            "I64" => Self::I64,
            "U64" => Self::U64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::BF16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
        }
    }
}

/// One tensor's directory entry, already checked against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
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

/// A parsed safetensors file with its bytes kept mapped.
pub struct SafetensorsFile {
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
    data: Backing,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Map and parse a file.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io = |source| SafetensorsError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; model files are immutable once imported. A file
        // truncated underneath us by another process could still fault, as with any mmap loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map))
    }

    /// Parse a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SafetensorsError> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(data: Backing) -> Result<Self, SafetensorsError> {
        let bytes = data.bytes();
        let malformed = |s: String| SafetensorsError::Malformed(s);
        if bytes.len() < 8 {
            return Err(SafetensorsError::Truncated(format!(
                "{} bytes, need at least 8",
                bytes.len()
            )));
        }
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(&bytes[..8]);
        let n = u64::from_le_bytes(n8);
        if n > MAX_HEADER {
            return Err(malformed(format!("header length {n} exceeds {MAX_HEADER}")));
        }
        if n > (bytes.len() - 8) as u64 {
            return Err(SafetensorsError::Truncated(format!(
                "header length {n} exceeds the {} bytes after it",
                bytes.len() - 8
            )));
        }
        let data_start = 8 + n as usize;
        let data_len = bytes.len() - data_start;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..data_start])
            .map_err(|e| malformed(format!("header is not JSON: {e}")))?;
        let obj = header
            .as_object()
            .ok_or_else(|| malformed("header is not a JSON object".into()))?;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                let m = v
                    .as_object()
                    .ok_or_else(|| malformed("__metadata__ is not an object".into()))?;
                for (k, x) in m {
                    let s = x
                        .as_str()
                        .ok_or_else(|| malformed(format!("__metadata__.{k} is not a string")))?;
                    metadata.insert(k.clone(), s.to_string());
                }
                continue;
            }
            let t = parse_entry(name, v, data_start, data_len)?;
            tensors.insert(name.clone(), t);
        }
        // No two tensors may share bytes.
        let mut ranges: Vec<&TensorInfo> = tensors.values().collect();
        ranges.sort_by_key(|t| (t.start, t.end));
        for w in ranges.windows(2) {
            if w[1].start < w[0].end {
                return Err(malformed(format!(
                    "tensors {} and {} overlap",
                    w[0].name, w[1].name
                )));
            }
        }
        Ok(Self {
            tensors,
            metadata,
            data,
        })
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The `__metadata__` map (string to string).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The raw little-endian bytes of a tensor (checked at parse time).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.data.bytes()[t.start..t.end]
    }

    /// A float tensor (F32, F16 or BF16) converted to `f32`, checked against `shape`.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, SafetensorsError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| SafetensorsError::Missing(name.to_string()))?;
        if t.shape != shape {
            return Err(SafetensorsError::BadTensor {
                name: name.to_string(),
                why: format!("shape {:?}, expected {shape:?}", t.shape),
            });
        }
        let b = self.tensor_bytes(t);
        let out = match t.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            other => {
                return Err(SafetensorsError::BadTensor {
                    name: name.to_string(),
                    why: format!("dtype {other:?} is not a float type (need F32, F16 or BF16)"),
                })
            }
        };
        Ok(out)
    }
}

fn parse_entry(
    name: &str,
    v: &serde_json::Value,
    data_start: usize,
    data_len: usize,
) -> Result<TensorInfo, SafetensorsError> {
    let bad = |why: String| SafetensorsError::BadTensor {
        name: name.to_string(),
        why,
    };
    let o = v
        .as_object()
        .ok_or_else(|| bad("entry is not an object".into()))?;
    let dtype_s = o
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("missing dtype".into()))?;
    let dtype = Dtype::parse(dtype_s).ok_or_else(|| bad(format!("unknown dtype {dtype_s:?}")))?;
    let shape_v = o
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("missing shape".into()))?;
    if shape_v.len() > MAX_DIMS {
        return Err(bad(format!("{} dimensions", shape_v.len())));
    }
    let mut shape = Vec::with_capacity(shape_v.len());
    for d in shape_v {
        let d = d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| bad(format!("bad dimension {d}")))?;
        shape.push(d);
    }
    let offs = o
        .get("data_offsets")
        .and_then(|s| s.as_array())
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("data_offsets must be [begin, end]".into()))?;
    let off = |i: usize| {
        offs[i]
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| bad(format!("bad offset {}", offs[i])))
    };
    let (begin, end) = (off(0)?, off(1)?);
    if begin > end || end > data_len {
        return Err(bad(format!(
            "bytes {begin}..{end} are outside the data section of {data_len} bytes"
        )));
    }
    let want = shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if end - begin != want {
        return Err(bad(format!(
            "{} bytes, but {dtype:?} {shape:?} needs {want}",
            end - begin
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        start: data_start + begin,
        end: data_start + end,
    })
}

/// Serialize tensors as a safetensors file (for tests and tools). `tensors` are (name, dtype,
/// shape, bytes); offsets follow in the given order.
pub fn write(tensors: &[(&str, Dtype, &[usize], &[u8])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, dtype, shape, bytes) in tensors {
        let d = match dtype {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        };
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": d, "shape": shape, "data_offsets": [off, off + bytes.len()]}),
        );
        off += bytes.len();
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_f32_f16_bf16_and_lists_other_dtypes() {
        let a = f32_bytes(&[1.0, -2.5, 3.25, 0.0, 5.0, 6.0]);
        let h: Vec<u8> = [1.5f32, -0.25]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let b: Vec<u8> = [2.0f32, -8.0]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let ids: Vec<u8> = [0i64, 1].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bytes = write(&[
            ("a", Dtype::F32, &[2, 3], &a),
            ("h", Dtype::F16, &[2], &h),
            ("b", Dtype::BF16, &[2], &b),
            ("ids", Dtype::I64, &[1, 2], &ids),
        ]);
        let f = SafetensorsFile::from_bytes(bytes).unwrap();
        assert_eq!(f.tensors().count(), 4);
        assert_eq!(
            f.read_f32("a", &[2, 3]).unwrap(),
            vec![1.0, -2.5, 3.25, 0.0, 5.0, 6.0]
        );
        assert_eq!(f.read_f32("h", &[2]).unwrap(), vec![1.5, -0.25]);
        assert_eq!(f.read_f32("b", &[2]).unwrap(), vec![2.0, -8.0]);
        assert!(f.read_f32("a", &[3, 2]).is_err(), "shape checked");
        assert!(f.read_f32("ids", &[1, 2]).is_err(), "not a float");
        assert!(matches!(
            f.read_f32("nope", &[1]),
            Err(SafetensorsError::Missing(_))
        ));
        assert_eq!(f.tensor("ids").unwrap().dtype, Dtype::I64);
    }

    #[test]
    fn metadata_and_empty_tensors() {
        let bytes = raw(
            r#"{"__metadata__":{"format":"pt"},"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]}}"#,
            &[],
        );
        let f = SafetensorsFile::from_bytes(bytes).unwrap();
        assert_eq!(f.metadata().get("format").map(|s| s.as_str()), Some("pt"));
        assert_eq!(f.read_f32("e", &[0, 4]).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let four = f32_bytes(&[1.0]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short length", vec![1, 0, 0]),
            ("header past end", {
                let mut v = 1000u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            }),
            ("huge header", u64::MAX.to_le_bytes().to_vec()),
            ("not json", raw("{nope", &[])),
            ("not object", raw("[1,2]", &[])),
            ("bad metadata", raw(r#"{"__metadata__":{"a":1}}"#, &[])),
            (
                "unknown dtype",
                raw(
                    r#"{"x":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}}"#,
                    &[0],
                ),
            ),
            (
                "missing shape",
                raw(r#"{"x":{"dtype":"F32","data_offsets":[0,4]}}"#, &four),
            ),
            (
                "negative dim",
                raw(
                    r#"{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                    &four,
                ),
            ),
            (
                "offsets past data",
                raw(
                    r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                    &four,
                ),
            ),
            (
                "reversed offsets",
                raw(
                    r#"{"x":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}"#,
                    &four,
                ),
            ),
            (
                "size disagrees with shape",
                raw(
                    r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                    &f32_bytes(&[1.0, 2.0]),
                ),
            ),
            (
                "shape overflows",
                raw(
                    r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                    &four,
                ),
            ),
            (
                "overlap",
                raw(
                    r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                    &f32_bytes(&[1.0, 2.0]),
                ),
            ),
            (
                "three offsets",
                raw(
                    r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#,
                    &four,
                ),
            ),
        ];
        for (what, bytes) in cases {
            assert!(SafetensorsFile::from_bytes(bytes).is_err(), "{what}");
        }
        // Every truncation of a valid file fails cleanly.
        let good = write(&[("a", Dtype::F32, &[2], &f32_bytes(&[1.0, 2.0]))]);
        assert!(SafetensorsFile::from_bytes(good.clone()).is_ok());
        for cut in 0..good.len() {
            assert!(
                SafetensorsFile::from_bytes(good[..cut].to_vec()).is_err(),
                "cut {cut}"
            );
        }
    }
}
