// The CUDA kernels of the device executor, compiled at run time by NVRTC (no toolkit headers:
// f16 conversions are single PTX instructions). Each kernel implements the contract stated on
// the matching method of `DeviceOps` (ops.rs); `HostOps` (host.rs) is the same contract in
// plain Rust. Activations are f32, weights and the KV cache f16 (as raw 16-bit words).

#define NONE 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Sum over a block of `blockDim.x` (a multiple of 32, at most 1024) threads.
__device__ float block_sum(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    float s = 0.f;
    for (int i = 0; i < warps; i++) s += shared[i];
    return s;
}

__device__ float block_max(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    float m = NEG_INF;
    for (int i = 0; i < warps; i++) m = fmaxf(m, shared[i]);
    return m;
}

// grid: t; out[i] = table[tokens[i]]
extern "C" __global__ void embed(const unsigned short* table, int k, const unsigned* tokens,
                                 int t, float* out) {
    int i = blockIdx.x;
    if (i >= t) return;
    const unsigned short* row = table + (size_t)tokens[i] * k;
    for (int j = threadIdx.x; j < k; j += blockDim.x) out[(size_t)i * k + j] = h2f(row[j]);
}

// grid: rows; out = x / sqrt(mean(x^2) + eps) * w
extern "C" __global__ void rms_norm(const float* x, const float* w, int rows, int k, float eps,
                                    float* out) {
    __shared__ float shared[32];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * k;
    float s = 0.f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) s += xr[j] * xr[j];
    s = block_sum(s, shared);
    float inv = rsqrtf(s / k + eps);
    for (int j = threadIdx.x; j < k; j += blockDim.x) out[(size_t)r * k + j] = xr[j] * inv * w[j];
}

// out[rows x n] = x[rows x k] . w^T, w: n x k f16. grid: (ceil(n / 8), ceil(rows / ROWS)),
// block: 256 = 8 warps; warp `w` of block (bx, by) computes column bx*8+w for rows
// by*ROWS .. +ROWS, reading that weight row once for all of them.
#define ROWS 8
extern "C" __global__ void matmul(const float* x, int rows, int k, const unsigned short* w,
                                  int n, float* out) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int col = blockIdx.x * 8 + warp;
    int r0 = blockIdx.y * ROWS;
    if (col >= n) return;
    float acc[ROWS];
    for (int i = 0; i < ROWS; i++) acc[i] = 0.f;
    const unsigned short* wr = w + (size_t)col * k;
    int nr = min(ROWS, rows - r0);
    for (int j = lane; j < k; j += 32) {
        float wv = h2f(wr[j]);
        for (int i = 0; i < nr; i++) acc[i] += wv * x[(size_t)(r0 + i) * k + j];
    }
    for (int i = 0; i < nr; i++) {
        float v = acc[i];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
        if (lane == 0) out[(size_t)(r0 + i) * n + col] = v;
    }
}

// grid: (t, heads + 2 * kv_heads), block: 128. On each head of each stacked QKV row: bias (all
// heads, when has_bias), then for Q and K heads the per-head RMSNorm (when has_norm) and RoPE
// (style 0: pairs (2j, 2j+1); style 1: pairs (j, j + hd/2)).
extern "C" __global__ void qkv_prepare(float* qkv, int t, int heads, int kv_heads, int hd,
                                       int has_bias, const float* bias, int has_norm,
                                       const float* qn, const float* kn, float eps,
                                       const unsigned* positions, const float* inv_freq,
                                       int style) {
    __shared__ float shared[32];
    int i = blockIdx.x, h = blockIdx.y;
    if (i >= t) return;
    int width = (heads + 2 * kv_heads) * hd;
    float* x = qkv + (size_t)i * width + (size_t)h * hd;
    if (has_bias)
        for (int j = threadIdx.x; j < hd; j += blockDim.x) x[j] += bias[h * hd + j];
    if (h >= heads + kv_heads) return;
    __syncthreads();
    if (has_norm) {
        const float* nw = h < heads ? qn : kn;
        float s = 0.f;
        for (int j = threadIdx.x; j < hd; j += blockDim.x) s += x[j] * x[j];
        s = block_sum(s, shared);
        float inv = rsqrtf(s / hd + eps);
        for (int j = threadIdx.x; j < hd; j += blockDim.x) x[j] = x[j] * inv * nw[j];
        __syncthreads();
    }
    int half = hd / 2;
    float p = (float)positions[i];
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float s, c;
        sincosf(p * inv_freq[j], &s, &c);
        int a = style == 0 ? 2 * j : j, b = style == 0 ? 2 * j + 1 : j + half;
        float u = x[a], v = x[b];
        x[a] = u * c - v * s;
        x[b] = u * s + v * c;
    }
}

// grid: t; each row's K and V into its slot (NONE: nothing).
extern "C" __global__ void kv_write(const float* qkv, int t, int heads, int kv_heads, int hd,
                                    const unsigned* slots, unsigned short* kc,
                                    unsigned short* vc) {
    int i = blockIdx.x;
    if (i >= t || slots[i] == NONE) return;
    int kvd = kv_heads * hd, width = (heads + 2 * kv_heads) * hd;
    const float* row = qkv + (size_t)i * width + (size_t)heads * hd;
    size_t s = (size_t)slots[i] * kvd;
    for (int j = threadIdx.x; j < kvd; j += blockDim.x) {
        kc[s + j] = f2h(row[j]);
        vc[s + j] = f2h(row[kvd + j]);
    }
}

// grid: (t, heads), block: 128, hd <= 256. Causal attention of one query head of one token
// over its sequence's pages, in chunks of CHUNK positions with an online softmax: threads
// score positions, then each thread accumulates its output dimensions.
#define CHUNK 1024
extern "C" __global__ void attention(const float* qkv, int heads, int kv_heads, int hd,
                                     const unsigned* token_seq, const unsigned* positions,
                                     const unsigned* context, const unsigned* block_table,
                                     int table_width, int page, const unsigned short* kc,
                                     const unsigned short* vc, float* out) {
    __shared__ float scores[CHUNK];
    __shared__ float shared[32];
    int i = blockIdx.x, h = blockIdx.y;
    int width = (heads + 2 * kv_heads) * hd, kvd = kv_heads * hd;
    int g = heads / kv_heads, kh = h / g;
    unsigned s = token_seq[i];
    float* o = out + (size_t)i * heads * hd + (size_t)h * hd;
    if (context[s] == 0) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) o[d] = 0.f;
        return;
    }
    const float* q = qkv + (size_t)i * width + (size_t)h * hd;
    const unsigned* table = block_table + (size_t)s * table_width;
    int ctx = positions[i] + 1;
    float scale = rsqrtf((float)hd);
    float m = NEG_INF, l = 0.f, acc[2] = {0.f, 0.f};
    for (int c0 = 0; c0 < ctx; c0 += CHUNK) {
        int n = min(CHUNK, ctx - c0);
        float cm = NEG_INF;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            int pos = c0 + j;
            size_t slot = (size_t)table[pos / page] * page + pos % page;
            const unsigned short* kr = kc + slot * kvd + (size_t)kh * hd;
            float d = 0.f;
            for (int e = 0; e < hd; e++) d += q[e] * h2f(kr[e]);
            d *= scale;
            scores[j] = d;
            cm = fmaxf(cm, d);
        }
        cm = block_max(cm, shared);
        float nm = fmaxf(m, cm);
        float rescale = __expf(m - nm);
        float part = 0.f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float p = __expf(scores[j] - nm);
            scores[j] = p;
            part += p;
        }
        part = block_sum(part, shared);
        l = l * rescale + part;
        for (int a = 0; a < 2; a++) {
            int d = threadIdx.x + a * blockDim.x;
            if (d >= hd) break;
            float v = acc[a] * rescale;
            for (int j = 0; j < n; j++) {
                int pos = c0 + j;
                size_t slot = (size_t)table[pos / page] * page + pos % page;
                v += scores[j] * h2f(vc[slot * kvd + (size_t)kh * hd + d]);
            }
            acc[a] = v;
        }
        m = nm;
        __syncthreads();
    }
    for (int a = 0; a < 2; a++) {
        int d = threadIdx.x + a * blockDim.x;
        if (d < hd) o[d] = acc[a] / l;
    }
}

// out[r][j] = silu(gu[r][j]) * gu[r][inter + j]
extern "C" __global__ void silu_mul(const float* gu, int rows, int inter, float* out) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * inter) return;
    size_t r = idx / inter, j = idx % inter;
    float g = gu[r * 2 * inter + j], u = gu[r * 2 * inter + inter + j];
    out[idx] = g / (1.f + __expf(-g)) * u;
}

// x[..n] += y[..n]
extern "C" __global__ void add(float* x, const float* y, int n) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n) x[idx] += y[idx];
}

// grid: n; out[i] = x[rows[i]]
extern "C" __global__ void gather_rows(const float* x, int k, const unsigned* rows, int n,
                                       float* out) {
    int i = blockIdx.x;
    if (i >= n) return;
    for (int j = threadIdx.x; j < k; j += blockDim.x)
        out[(size_t)i * k + j] = x[(size_t)rows[i] * k + j];
}
