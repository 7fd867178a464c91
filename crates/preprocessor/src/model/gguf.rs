//! A reader for the metadata section of GGUF files (header and key/value pairs; tensor data is
//! not read). Enough to build the tokenizer, the chat template and the model card.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

use super::ModelError;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            GgufValue::U64(v) => Some(*v),
            GgufValue::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            GgufValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// The metadata of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufMetadata {
    pub version: u32,
    pub tensor_count: u64,
    pub kv: HashMap<String, GgufValue>,
}

impl GgufMetadata {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.get(key)
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(|v| v.as_str())
    }

    /// `{arch}.context_length`.
    pub fn context_length(&self) -> Option<u64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.context_length"))
            .and_then(|v| v.as_u64())
    }

    /// A list of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn strings(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_str())
            .collect()
    }

    /// Read the metadata of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let f = std::fs::File::open(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::read_from(BufReader::with_capacity(1 << 20, f), path)
    }

    /// Read GGUF metadata from `input` (`path` names it in errors). Sizes in the header are
    /// never trusted for allocation: memory grows with the bytes actually read.
    pub fn read_from(input: impl Read, path: &Path) -> Result<Self, ModelError> {
        let mut r = Reader { inner: input };
        let bad = |reason: String| ModelError::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let mut magic = [0u8; 4];
        r.bytes(&mut magic).map_err(bad)?;
        if &magic != b"GGUF" {
            return Err(bad("not a GGUF file (bad magic)".into()));
        }
        let version = r.u32().map_err(bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("unsupported GGUF version {version}")));
        }
        let tensor_count = r.u64().map_err(bad)?;
        let kv_count = r.u64().map_err(bad)?;
        if kv_count > 1_000_000 {
            return Err(bad(format!("implausible metadata count {kv_count}")));
        }
        let mut kv = HashMap::with_capacity(kv_count.min(1024) as usize);
        for _ in 0..kv_count {
            let key = r.string().map_err(bad)?;
            let ty = r.u32().map_err(bad)?;
            let value = r.value(ty, 0).map_err(bad)?;
            kv.insert(key, value);
        }
        Ok(GgufMetadata {
            version,
            tensor_count,
            kv,
        })
    }
}

struct Reader<R> {
    inner: R,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.inner
            .read_exact(buf)
            .map_err(|e| format!("truncated metadata: {e}"))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        if n > (1 << 30) {
            return Err(format!("implausible string length {n}"));
        }
        let mut buf = Vec::new();
        let got = (&mut self.inner)
            .take(n)
            .read_to_end(&mut buf)
            .map_err(|e| format!("truncated metadata: {e}"))?;
        if got as u64 != n {
            return Err(format!(
                "truncated metadata: a string of {n} bytes has {got}"
            ));
        }
        String::from_utf8(buf).map_err(|e| format!("string is not UTF-8: {e}"))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<GgufValue, String> {
        let mut b8 = [0u8; 8];
        Ok(match ty {
            0 | 1 | 7 => {
                let mut b = [0u8; 1];
                self.bytes(&mut b)?;
                match ty {
                    0 => GgufValue::U64(b[0] as u64),
                    1 => GgufValue::I64(b[0] as i8 as i64),
                    _ => GgufValue::Bool(b[0] != 0),
                }
            }
            2 | 3 => {
                let mut b = [0u8; 2];
                self.bytes(&mut b)?;
                if ty == 2 {
                    GgufValue::U64(u16::from_le_bytes(b) as u64)
                } else {
                    GgufValue::I64(i16::from_le_bytes(b) as i64)
                }
            }
            4 => GgufValue::U64(self.u32()? as u64),
            5 => GgufValue::I64(self.u32()? as i32 as i64),
            6 => GgufValue::F64(f32::from_bits(self.u32()?) as f64),
            8 => GgufValue::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err("arrays nested too deep".into());
                }
                let inner = self.u32()?;
                let n = self.u64()?;
                if n > (1 << 28) {
                    return Err(format!("implausible array length {n}"));
                }
                let mut v = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(self.u64()? as i64),
            12 => {
                self.bytes(&mut b8)?;
                GgufValue::F64(f64::from_le_bytes(b8))
            }
            other => return Err(format!("unknown metadata type {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn put_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn reads_a_hand_made_file() {
        let mut buf = b"GGUF".to_vec();
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&0u64.to_le_bytes());
        buf.extend_from_slice(&3u64.to_le_bytes());
        put_str(&mut buf, "general.architecture");
        buf.extend_from_slice(&8u32.to_le_bytes());
        put_str(&mut buf, "llama");
        put_str(&mut buf, "llama.context_length");
        buf.extend_from_slice(&4u32.to_le_bytes());
        buf.extend_from_slice(&2048u32.to_le_bytes());
        put_str(&mut buf, "tokenizer.ggml.tokens");
        buf.extend_from_slice(&9u32.to_le_bytes());
        buf.extend_from_slice(&8u32.to_le_bytes());
        buf.extend_from_slice(&2u64.to_le_bytes());
        put_str(&mut buf, "a");
        put_str(&mut buf, "b");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&buf).unwrap();
        let md = GgufMetadata::read(f.path()).unwrap();
        assert_eq!(md.architecture(), Some("llama"));
        assert_eq!(md.context_length(), Some(2048));
        assert_eq!(md.strings("tokenizer.ggml.tokens").unwrap(), vec!["a", "b"]);

        // Truncation and bad magic are typed errors.
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(&buf[..buf.len() - 3]).unwrap();
        assert!(matches!(
            GgufMetadata::read(t.path()),
            Err(ModelError::Gguf { .. })
        ));
        let mut m = tempfile::NamedTempFile::new().unwrap();
        m.write_all(b"NOPE").unwrap();
        assert!(matches!(
            GgufMetadata::read(m.path()),
            Err(ModelError::Gguf { .. })
        ));
    }
}
