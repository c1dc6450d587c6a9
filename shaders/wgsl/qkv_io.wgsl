// What the qkv_heads family (qkv_heads, and qkv_attention on scalar cores) and the
// qkv_attention_coop family (qkv_attention on matrix units) share: the fused projection qkv
// (R, 3, H, D) of R = B * T new tokens, the per-head temperatures, the output, the KV caches
// (B, cap, H, D) that receive the new keys and values at token `start`, and the params.
//
// With L2_NORM (every official VAR checkpoint), q and k are L2-normalised per head (F.normalize, eps
// 1e-12) and q is multiplied by the head's temperature exp(min(scale_mul, ln 100)) (computed on the
// host): cosine attention run with softmax scale 1.
override L2_NORM: bool = true;

struct QkvParams {
    rows: u32,
    tokens: u32,
    heads: u32,
    dim: u32,
    cap: u32,
    start: u32,
    // qkv_attention: the softmax scale (1 for cosine attention).
    scale: f32,
}

@group(0) @binding(0) var<storage, read> qkv: array<store_t>;
@group(0) @binding(1) var<storage, read> head_scale: array<f32>;
// q (qkv_heads) or the attention output (qkv_attention), (R, H, D).
@group(0) @binding(2) var<storage, read_write> q: array<store_t>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<store_t>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<store_t>;
@group(0) @binding(5) var<uniform> p: QkvParams;

