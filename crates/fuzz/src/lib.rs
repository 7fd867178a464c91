//! Fuzz targets live in `tests/targets.rs`: one bolero target per reader of untrusted bytes.
//! This library is empty; the crate exists so the targets share one build.
