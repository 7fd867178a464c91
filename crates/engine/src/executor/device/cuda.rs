//! [`DeviceOps`] on an NVIDIA GPU through cudarc: the driver (`libcuda.so.1`) and NVRTC are
//! opened at run time, the kernels of `kernels.cu` are compiled by NVRTC for the device's
//! compute capability when the executor starts, and every call is a launch (or a copy) on
//! one stream, in order, except staged KV writes (host-tier load-back), which run on a copy
//! stream ordered against it by explicit waits. Buffers are `CudaSlice`s; f16 is carried as 16-bit words. A failing
//! CUDA call after start-up panics with the driver's message: the scheduler thread's panic
//! handler stops the engine visibly (its streams end, `/health` fails).
//!
//! Untested on hardware in this repository's CI (no GPU there); `tests/gpu/run.sh` is the
//! device check.
//!
//! Unsafe code: kernel launches (the driver cannot check arguments against a kernel's
//! signature) and the probes for the shared libraries; each block says why it holds.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::ops::{AttnShape, DeviceOps, StepBufs};
use crate::model::RopeStyle;

const SOURCE: &str = include_str!("kernels.cu");

/// Compiled kernels.
struct Kernels {
    embed: CudaFunction,
    rms_norm: CudaFunction,
    matmul: CudaFunction,
    qkv_prepare: CudaFunction,
    kv_write: CudaFunction,
    attention: CudaFunction,
    silu_mul: CudaFunction,
    add: CudaFunction,
    gather_rows: CudaFunction,
}

/// One GPU, one stream for kernels and a second for staged KV writes (host-tier load-back
/// overlapping the forward pass).
pub struct CudaOps {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Staged writes; the kernel stream waits for it at [`DeviceOps::fence_copies`].
    copy: Arc<CudaStream>,
    /// The copy stream has waited for the kernel stream since the last fence.
    copy_armed: std::cell::Cell<bool>,
    k: Kernels,
    _module: Arc<CudaModule>,
    /// One-element stand-in for an absent optional input (bias, norms).
    dummy: CudaSlice<f32>,
    name: String,
    /// Captured decode graphs by bucket.
    graphs: HashMap<usize, Graph>,
}

/// A captured graph, owned by the executor.
struct Graph(CudaGraph);

// SAFETY: a graph is created and launched only by the executor's owner (the scheduler
// thread), one call at a time; a CUDA graph's handles may be used from any thread that binds
// the context, which cudarc does before each launch. Moving the executor between threads
// moves the graphs with it, never sharing them.
unsafe impl Send for Graph {}

fn fail<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("CUDA: {what}: {e:?}")
}

impl CudaOps {
    /// Whether device `index` can be opened (the driver and NVRTC load, the device exists),
    /// without compiling anything.
    pub fn probe(index: usize) -> Result<(), String> {
        // SAFETY: only probes whether the shared libraries can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(
                "--device cuda: no NVIDIA driver found (libcuda.so.1 could not be \
                 loaded); run on a machine with a GPU and its driver, or use --device cpu"
                    .into(),
            );
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(
                "--device cuda: NVRTC (libnvrtc.so) could not be loaded; put the \
                 CUDA 13.0 NVRTC library on LD_LIBRARY_PATH (pip's nvidia-cuda-nvrtc ships it)"
                    .into(),
            );
        }
        let count = CudaContext::device_count().map_err(fail("device count"))?;
        if index >= count.max(0) as usize {
            return Err(format!(
                "--device cuda:{index}: this machine has {count} CUDA device(s)"
            ));
        }
        Ok(())
    }

    /// Open device `index`: load the driver and NVRTC, compile the kernels for its compute
    /// capability. Every failure is an error naming what is missing.
    pub fn open(index: usize) -> Result<Self, String> {
        Self::probe(index)?;
        let ctx = CudaContext::new(index).map_err(fail("context"))?;
        // SAFETY: everything runs on the kernel stream below except staged KV writes on the copy
        // stream, which are ordered by explicit waits both ways (`f16_write_async`,
        // `fence_copies`, called before every pass, export and copy), so cudarc's cross-stream
        // events (which would also be recorded inside a graph capture) are not needed.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(fail("compute capability"))?;
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let ptx = compile_ptx_with_opts(
            SOURCE,
            CompileOptions {
                arch: Some(arch),
                name: Some("dynamo_kernels.cu".into()),
                ..Default::default()
            },
        )
        .map_err(fail("compiling the kernels with NVRTC"))?;
        let module = ctx.load_module(ptx).map_err(fail("loading the kernels"))?;
        let f = |name: &str| module.load_function(name).map_err(fail("kernel"));
        let k = Kernels {
            embed: f("embed")?,
            rms_norm: f("rms_norm")?,
            matmul: f("matmul")?,
            qkv_prepare: f("qkv_prepare")?,
            kv_write: f("kv_write")?,
            attention: f("attention")?,
            silu_mul: f("silu_mul")?,
            add: f("add")?,
            gather_rows: f("gather_rows")?,
        };
        // Not the legacy default stream: a graph cannot be captured on it.
        let stream = ctx.new_stream().map_err(fail("stream"))?;
        let copy = ctx.new_stream().map_err(fail("copy stream"))?;
        let dummy = stream.alloc_zeros::<f32>(1).map_err(fail("alloc"))?;
        let name = format!(
            "cuda:{index} ({}, sm_{major}{minor})",
            ctx.name().unwrap_or_else(|_| "unknown GPU".into())
        );
        Ok(CudaOps {
            ctx,
            stream,
            copy,
            copy_armed: std::cell::Cell::new(false),
            k,
            _module: module,
            dummy,
            name,
            graphs: HashMap::new(),
        })
    }

    /// Bytes of device memory free and in total.
    pub fn memory(&self) -> (usize, usize) {
        self.ctx.mem_get_info().unwrap_or((0, 0))
    }
}

fn grid(x: usize, y: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x.max(1) as u32, y.max(1) as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn flat(n: usize) -> LaunchConfig {
    grid(n.div_ceil(256), 1, 256)
}

macro_rules! launch {
    ($self:ident, $f:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let mut b = $self.stream.launch_builder(&$self.k.$f);
        $( b.arg($arg); )+
        // SAFETY: the arguments match the kernel's signature in kernels.cu, and every buffer
        // is large enough for the sizes passed (the executor sizes them from the same shapes).
        unsafe { b.launch($cfg) }.expect(concat!("CUDA launch of ", stringify!($f)));
    }};
}

impl DeviceOps for CudaOps {
    type F32 = CudaSlice<f32>;
    type F16 = CudaSlice<u16>;
    type U32 = CudaSlice<u32>;

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn f32_zeros(&mut self, n: usize) -> CudaSlice<f32> {
        self.stream.alloc_zeros(n.max(1)).expect("CUDA alloc")
    }

    fn f32_from(&mut self, x: &[f32]) -> CudaSlice<f32> {
        self.stream.clone_htod(x).expect("CUDA upload")
    }

    fn f16_zeros(&mut self, n: usize) -> CudaSlice<u16> {
        self.stream.alloc_zeros(n.max(1)).expect("CUDA alloc")
    }

    fn f16_from(&mut self, x: &[u16]) -> CudaSlice<u16> {
        self.stream.clone_htod(x).expect("CUDA upload")
    }

    fn u32_from(&mut self, x: &[u32]) -> CudaSlice<u32> {
        if x.is_empty() {
            return self.stream.alloc_zeros(1).expect("CUDA alloc");
        }
        self.stream.clone_htod(x).expect("CUDA upload")
    }

    fn u32_write(&mut self, x: &mut CudaSlice<u32>, data: &[u32]) {
        let mut dst = x.slice_mut(..data.len());
        self.stream
            .memcpy_htod(data, &mut dst)
            .expect("CUDA upload");
    }

    fn graph(&mut self, key: usize, body: &mut dyn FnMut(&mut Self)) -> bool {
        if !self.graphs.contains_key(&key) {
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .expect("CUDA graph capture");
            body(self);
            let g = self
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .expect("CUDA graph capture")
                .expect("the capture recorded launches");
            self.graphs.insert(key, Graph(g));
        }
        self.graphs[&key].0.launch().expect("CUDA graph launch");
        true
    }

    fn f32_to_host(&mut self, x: &CudaSlice<f32>, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        self.stream
            .memcpy_dtoh(&x.slice(..n), &mut out)
            .expect("CUDA download");
        // cudarc issues the copy asynchronously; the host reads `out` next.
        self.stream.synchronize().expect("CUDA synchronize");
        out
    }

    fn f16_read(&self, x: &CudaSlice<u16>, offset: usize, out: &mut [u16]) {
        self.stream
            .memcpy_dtoh(&x.slice(offset..offset + out.len()), out)
            .expect("CUDA download");
        self.stream.synchronize().expect("CUDA synchronize");
    }

    fn f16_write(&mut self, x: &mut CudaSlice<u16>, offset: usize, data: &[u16]) {
        let mut dst = x.slice_mut(offset..offset + data.len());
        self.stream
            .memcpy_htod(data, &mut dst)
            .expect("CUDA upload");
    }

    fn f16_write_async(&mut self, x: &mut CudaSlice<u16>, offset: usize, data: &[u16]) {
        // The copy stream first waits for the kernels already queued (the block's previous
        // owner may still be written by them), once per batch of staged writes.
        if !self.copy_armed.get() {
            self.copy.join(&self.stream).expect("CUDA stream wait");
            self.copy_armed.set(true);
        }
        let mut dst = x.slice_mut(offset..offset + data.len());
        // From pageable memory: returns once `data` is staged, so it may be reused; the
        // transfer itself overlaps the kernel stream.
        self.copy
            .memcpy_htod(data, &mut dst)
            .expect("CUDA staged upload");
    }

    fn fence_copies(&self) {
        if self.copy_armed.replace(false) {
            self.stream.join(&self.copy).expect("CUDA stream wait");
        }
    }

    fn f16_copy_within(&mut self, x: &mut CudaSlice<u16>, src: usize, dst: usize, n: usize) {
        // The ranges do not overlap: split the buffer between them and copy device to device,
        // without a temporary buffer.
        let (mut lo, mut hi) = x.split_at_mut(src.max(dst));
        let (from, mut to) = if src < dst {
            (lo.slice(src..src + n), hi.slice_mut(..n))
        } else {
            (hi.slice(..n), lo.slice_mut(dst..dst + n))
        };
        self.stream.memcpy_dtod(&from, &mut to).expect("CUDA copy");
    }

    fn embed(
        &mut self,
        table: &CudaSlice<u16>,
        k: usize,
        tokens: &CudaSlice<u32>,
        t: usize,
        out: &mut CudaSlice<f32>,
    ) {
        let (k, t) = (k as i32, t as i32);
        launch!(
            self,
            embed,
            grid(t as usize, 1, 256),
            table,
            &k,
            tokens,
            &t,
            out
        );
    }

    fn rms_norm(
        &mut self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        k: usize,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) {
        let (r, k) = (rows as i32, k as i32);
        launch!(self, rms_norm, grid(rows, 1, 256), x, w, &r, &k, &eps, out);
    }

    fn matmul(
        &mut self,
        x: &CudaSlice<f32>,
        rows: usize,
        k: usize,
        w: &CudaSlice<u16>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) {
        let cfg = grid(n.div_ceil(8), rows.div_ceil(8), 256);
        let (r, k, n) = (rows as i32, k as i32, n as i32);
        launch!(self, matmul, cfg, x, &r, &k, w, &n, out);
    }

    fn qkv_prepare(
        &mut self,
        qkv: &mut CudaSlice<f32>,
        t: usize,
        shape: AttnShape,
        bias: Option<&CudaSlice<f32>>,
        qk_norm: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
        eps: f32,
        positions: &CudaSlice<u32>,
        inv_freq: &CudaSlice<f32>,
        style: RopeStyle,
    ) {
        let cfg = grid(t, shape.heads + 2 * shape.kv_heads, 128);
        let (ti, h, kvh, hd) = (
            t as i32,
            shape.heads as i32,
            shape.kv_heads as i32,
            shape.head_dim as i32,
        );
        let has_bias = i32::from(bias.is_some());
        let has_norm = i32::from(qk_norm.is_some());
        let style = match style {
            RopeStyle::Interleaved => 0i32,
            RopeStyle::Halves => 1,
        };
        let dummy = &self.dummy;
        let b = bias.unwrap_or(dummy);
        let (qn, kn) = qk_norm.unwrap_or((dummy, dummy));
        let mut l = self.stream.launch_builder(&self.k.qkv_prepare);
        l.arg(qkv)
            .arg(&ti)
            .arg(&h)
            .arg(&kvh)
            .arg(&hd)
            .arg(&has_bias)
            .arg(b)
            .arg(&has_norm);
        l.arg(qn)
            .arg(kn)
            .arg(&eps)
            .arg(positions)
            .arg(inv_freq)
            .arg(&style);
        // SAFETY: as in `launch!`.
        unsafe { l.launch(cfg) }.expect("CUDA launch of qkv_prepare");
    }

    fn kv_write(
        &mut self,
        qkv: &CudaSlice<f32>,
        t: usize,
        shape: AttnShape,
        slots: &CudaSlice<u32>,
        k: &mut CudaSlice<u16>,
        v: &mut CudaSlice<u16>,
    ) {
        let (ti, h, kvh, hd) = (
            t as i32,
            shape.heads as i32,
            shape.kv_heads as i32,
            shape.head_dim as i32,
        );
        launch!(
            self,
            kv_write,
            grid(t, 1, 128),
            qkv,
            &ti,
            &h,
            &kvh,
            &hd,
            slots,
            k,
            v
        );
    }

    fn attention(
        &mut self,
        qkv: &CudaSlice<f32>,
        shape: AttnShape,
        step: &StepBufs<Self>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
    ) {
        assert!(
            shape.head_dim <= 256,
            "the attention kernel holds up to 256 dims per head"
        );
        let cfg = grid(step.tokens_n, shape.heads, 128);
        let (h, kvh, hd) = (
            shape.heads as i32,
            shape.kv_heads as i32,
            shape.head_dim as i32,
        );
        let (tw, page) = (step.table_width as i32, step.page as i32);
        let mut l = self.stream.launch_builder(&self.k.attention);
        l.arg(qkv)
            .arg(&h)
            .arg(&kvh)
            .arg(&hd)
            .arg(&step.token_seq)
            .arg(&step.positions);
        l.arg(&step.context)
            .arg(&step.block_table)
            .arg(&tw)
            .arg(&page)
            .arg(k)
            .arg(v)
            .arg(out);
        // SAFETY: as in `launch!`.
        unsafe { l.launch(cfg) }.expect("CUDA launch of attention");
    }

    fn silu_mul(
        &mut self,
        gu: &CudaSlice<f32>,
        rows: usize,
        inter: usize,
        out: &mut CudaSlice<f32>,
    ) {
        let (r, i) = (rows as i32, inter as i32);
        launch!(self, silu_mul, flat(rows * inter), gu, &r, &i, out);
    }

    fn add(&mut self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) {
        let ni = n as i32;
        launch!(self, add, flat(n), x, y, &ni);
    }

    fn gather_rows(
        &mut self,
        x: &CudaSlice<f32>,
        k: usize,
        rows: &CudaSlice<u32>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) {
        let (k, ni) = (k as i32, n as i32);
        launch!(self, gather_rows, grid(n, 1, 256), x, &k, rows, &ni, out);
    }
}
