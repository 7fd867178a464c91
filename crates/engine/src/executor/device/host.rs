//! [`DeviceOps`] in plain Rust over host vectors: each kernel's contract written as the
//! simplest loop that meets it (f16 weights and KV, f32 arithmetic). It is the reference the
//! device executor's host side is tested with in CI, where there is no GPU, and what a CUDA
//! kernel's results are compared against.

use super::ops::{AttnShape, DeviceOps, StepBufs};
use super::plan::NONE;
use crate::kernels::{f16_to_f32, rms_norm as rms, to_f16};
use crate::model::RopeStyle;

/// Host memory standing in for a device.
#[derive(Debug, Default)]
pub struct HostOps;

impl DeviceOps for HostOps {
    type F32 = Vec<f32>;
    type F16 = Vec<u16>;
    type U32 = Vec<u32>;

    fn describe(&self) -> String {
        "host reference (plain Rust)".into()
    }

    fn f32_zeros(&mut self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }

    fn f32_from(&mut self, x: &[f32]) -> Vec<f32> {
        x.to_vec()
    }

    fn f16_zeros(&mut self, n: usize) -> Vec<u16> {
        vec![0; n]
    }

    fn f16_from(&mut self, x: &[u16]) -> Vec<u16> {
        x.to_vec()
    }

    fn u32_from(&mut self, x: &[u32]) -> Vec<u32> {
        x.to_vec()
    }

    fn u32_write(&mut self, x: &mut Vec<u32>, data: &[u32]) {
        x[..data.len()].copy_from_slice(data);
    }

    fn f32_to_host(&mut self, x: &Vec<f32>, n: usize) -> Vec<f32> {
        x[..n].to_vec()
    }

    fn f16_read(&self, x: &Vec<u16>, offset: usize, out: &mut [u16]) {
        out.copy_from_slice(&x[offset..offset + out.len()]);
    }

    fn f16_write(&mut self, x: &mut Vec<u16>, offset: usize, data: &[u16]) {
        x[offset..offset + data.len()].copy_from_slice(data);
    }

    fn f16_copy_within(&mut self, x: &mut Vec<u16>, src: usize, dst: usize, n: usize) {
        x.copy_within(src..src + n, dst);
    }

    fn embed(
        &mut self,
        table: &Vec<u16>,
        k: usize,
        tokens: &Vec<u32>,
        t: usize,
        out: &mut Vec<f32>,
    ) {
        for (i, &tok) in tokens[..t].iter().enumerate() {
            let row = &table[tok as usize * k..(tok as usize + 1) * k];
            for (o, &h) in out[i * k..(i + 1) * k].iter_mut().zip(row) {
                *o = f16_to_f32(h);
            }
        }
    }

    fn rms_norm(
        &mut self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rows: usize,
        k: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) {
        rms(&x[..rows * k], &w[..k], eps, &mut out[..rows * k]);
    }

    fn matmul(
        &mut self,
        x: &Vec<f32>,
        rows: usize,
        k: usize,
        w: &Vec<u16>,
        n: usize,
        out: &mut Vec<f32>,
    ) {
        let mut wrow = vec![0f32; k];
        for j in 0..n {
            for (d, &h) in wrow.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                *d = f16_to_f32(h);
            }
            for r in 0..rows {
                let xr = &x[r * k..(r + 1) * k];
                out[r * n + j] = xr.iter().zip(&wrow).map(|(a, b)| a * b).sum();
            }
        }
    }

    fn qkv_prepare(
        &mut self,
        qkv: &mut Vec<f32>,
        t: usize,
        shape: AttnShape,
        bias: Option<&Vec<f32>>,
        qk_norm: Option<(&Vec<f32>, &Vec<f32>)>,
        eps: f32,
        positions: &Vec<u32>,
        inv_freq: &Vec<f32>,
        style: RopeStyle,
    ) {
        let (n, hd) = (shape.qkv(), shape.head_dim);
        let half = hd / 2;
        let rotated = shape.heads + shape.kv_heads;
        for i in 0..t {
            let row = &mut qkv[i * n..(i + 1) * n];
            if let Some(b) = bias {
                row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
            }
            for (h, head) in row[..rotated * hd].chunks_exact_mut(hd).enumerate() {
                if let Some((qn, kn)) = qk_norm {
                    let x = head.to_vec();
                    rms(&x, if h < shape.heads { qn } else { kn }, eps, head);
                }
                let p = positions[i] as f32;
                for (j, f) in inv_freq[..half].iter().enumerate() {
                    let a = p * f;
                    let (c, s) = (a.cos(), a.sin());
                    let (x, y) = match style {
                        RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                        RopeStyle::Halves => (j, j + half),
                    };
                    let (u, v) = (head[x], head[y]);
                    head[x] = u * c - v * s;
                    head[y] = u * s + v * c;
                }
            }
        }
    }

    fn kv_write(
        &mut self,
        qkv: &Vec<f32>,
        t: usize,
        shape: AttnShape,
        slots: &Vec<u32>,
        k: &mut Vec<u16>,
        v: &mut Vec<u16>,
    ) {
        let (n, kvd, q) = (shape.qkv(), shape.kv(), shape.heads * shape.head_dim);
        for i in 0..t {
            let slot = slots[i];
            if slot == NONE {
                continue;
            }
            let s = slot as usize * kvd;
            let row = &qkv[i * n..(i + 1) * n];
            to_f16(&row[q..q + kvd], &mut k[s..s + kvd]);
            to_f16(&row[q + kvd..q + 2 * kvd], &mut v[s..s + kvd]);
        }
    }

    fn attention(
        &mut self,
        qkv: &Vec<f32>,
        shape: AttnShape,
        step: &StepBufs<Self>,
        k: &Vec<u16>,
        v: &Vec<u16>,
        out: &mut Vec<f32>,
    ) {
        let (n, hd, kvd) = (shape.qkv(), shape.head_dim, shape.kv());
        let g = shape.heads / shape.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = Vec::new();
        for i in 0..step.tokens_n {
            let s = step.token_seq[i] as usize;
            let o = &mut out[i * shape.heads * hd..(i + 1) * shape.heads * hd];
            o.fill(0.0);
            if step.context[s] == 0 {
                continue;
            }
            let ctx = step.positions[i] as usize + 1;
            let table = &step.block_table[s * step.table_width..(s + 1) * step.table_width];
            let slot = |j: usize| table[j / step.page] as usize * step.page + j % step.page;
            for h in 0..shape.heads {
                let kh = h / g;
                let q = &qkv[i * n + h * hd..i * n + (h + 1) * hd];
                scores.clear();
                for j in 0..ctx {
                    let kr = &k[slot(j) * kvd + kh * hd..slot(j) * kvd + (kh + 1) * hd];
                    let d: f32 = q.iter().zip(kr).map(|(a, &b)| a * f16_to_f32(b)).sum();
                    scores.push(d * scale);
                }
                let m = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0.0;
                for x in scores.iter_mut() {
                    *x = (*x - m).exp();
                    sum += *x;
                }
                let oh = &mut o[h * hd..(h + 1) * hd];
                for (j, &p) in scores.iter().enumerate() {
                    let vr = &v[slot(j) * kvd + kh * hd..slot(j) * kvd + (kh + 1) * hd];
                    for (a, &b) in oh.iter_mut().zip(vr) {
                        *a += p / sum * f16_to_f32(b);
                    }
                }
            }
        }
    }

    fn silu_mul(&mut self, gu: &Vec<f32>, rows: usize, inter: usize, out: &mut Vec<f32>) {
        for r in 0..rows {
            let (g, u) = gu[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
            for ((o, g), u) in out[r * inter..(r + 1) * inter].iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
    }

    fn add(&mut self, x: &mut Vec<f32>, y: &Vec<f32>, n: usize) {
        x[..n].iter_mut().zip(&y[..n]).for_each(|(a, b)| *a += b);
    }

    fn gather_rows(
        &mut self,
        x: &Vec<f32>,
        k: usize,
        rows: &Vec<u32>,
        n: usize,
        out: &mut Vec<f32>,
    ) {
        for (i, &r) in rows[..n].iter().enumerate() {
            let r = r as usize;
            out[i * k..(i + 1) * k].copy_from_slice(&x[r * k..(r + 1) * k]);
        }
    }
}
