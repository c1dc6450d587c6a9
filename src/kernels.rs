//! The kernel contract between ops and backends: which kernel families exist, the uniform parameters
//! each family takes (one `#[repr(C)]` struct per family, passed to the backend as bytes), the
//! specialisation constants it accepts (typed), and the block sizes the host and the kernels share.
//!
//! Everything here is written once: the `families!` table generates the `Family` enum and its list,
//! `params!` generates each struct with its field layout (checked against the WGSL structs by
//! `tests/kernels.rs` through naga's reflection), and the block sizes are emitted into every WGSL
//! module as constants by the wgpu backend, so a tile size is never written on both sides.

use crate::dtype::DType;

/// Block sizes shared by the host (grid arithmetic) and the kernels (workgroup sizes and workgroup
/// arrays). The wgpu backend prepends them to every module as `const NAME: u32 = V;`.
pub mod size {
    /// Threads of the one-thread-per-element kernels.
    pub const THREADS_1D: u32 = 256;
    /// Threads of the one-workgroup-per-row reductions (softmax, norms, the sampler).
    pub const REDUCE_WG: u32 = 256;
    /// The tiled matmul: a TILE_M x TILE_N output block per workgroup of MATMUL_SIDE x MATMUL_SIDE
    /// threads, K in steps of TILE_K; the naive kernel computes one MATMUL_SIDE square per workgroup.
    pub const TILE_M: u32 = 64;
    pub const TILE_N: u32 = 64;
    pub const TILE_K: u32 = 16;
    pub const MATMUL_SIDE: u32 = 16;
    /// The wide matmul: a WIDE_TILE square of C per workgroup of MATMUL_SIDE x MATMUL_SIDE threads
    /// (8 x 8 outputs each), K in steps of WIDE_K through two stages of workgroup memory, each stage
    /// one vec4 per thread.
    pub const WIDE_TILE: u32 = 128;
    pub const WIDE_K: u32 = 8;
    /// The skinny matmul: at most SKINNY_ROWS rows of A, SKINNY_COLS columns of C per workgroup of
    /// SKINNY_LANES x SKINNY_COLS threads, A staged SKINNY_CHUNK k at a time.
    pub const SKINNY_ROWS: u32 = 8;
    pub const SKINNY_COLS: u32 = 8;
    pub const SKINNY_LANES: u32 = 32;
    pub const SKINNY_CHUNK: u32 = 256;
    /// The matrix-unit matmul (16 x 16 x 16 f16 -> f32 products: cooperative matrices on wgpu, tensor
    /// cores on CUDA): a COOP_TILE square of C per workgroup, K in steps of COOP_K through workgroup
    /// memory. On wgpu the workgroup is COOP_THREADS invocations, whatever the subgroup size: the
    /// block's four 32 x 32 quarters are shared out among its one, two or four subgroups.
    pub const COOP_TILE: u32 = 64;
    pub const COOP_K: u32 = 32;
    pub const COOP_THREADS: u32 = 128;
    /// The matrix-unit attention's padding of its f32 (product) and f16 (weight) stage rows: 16 bytes,
    /// the least a matrix load or store allows, which moves each row 4 banks further on.
    pub const COOP_PAD_F32: u32 = 4;
    pub const COOP_PAD_F16: u32 = 8;
    /// The tiled conv2d: TILE_W x TILE_H pixels x COUT_BLOCK output channels per workgroup.
    pub const CONV_TILE_W: u32 = 16;
    pub const CONV_TILE_H: u32 = 8;
    pub const CONV_COUT_BLOCK: u32 = 32;
    pub const CONV_THREADS: u32 = 128;
    /// Workgroup floats of the conv2d input patch and weight tiles.
    pub const CONV_PATCH_CAP: u32 = 1536;
    pub const CONV_WEIGHT_CAP: u32 = 2560;
    /// Threads per workgroup of the chunked selective scan, its carry pass and the SSD cumsum.
    pub const SCAN_WG: u32 = 64;
    /// Largest SSM state (N) the scans hold in registers and workgroup memory.
    pub const MAX_STATE: u32 = 64;
    /// The teams that split K in matmul_tiled and SSD's chunk kernels, each thread an 8 x 8 register
    /// block of the same outputs, added up at the end (block_exchange.wgsl / .cuh).
    pub const BLOCK_TEAMS: u32 = 4;
    /// SSD's chunked matrix form: ssd_chunk_states' workgroup of BLOCK_TEAMS teams of 64 threads,
    /// which stages SSD_STAGE steps of B and of the weighted x (64 columns) at a time.
    pub const SSD_STAGE: u32 = 32;
    pub const SSD_MAX_HEAD_DIM: u32 = 256;
    /// ssd_chunk_outputs: SSD_OUT_ROWS time steps x 64 columns per workgroup of SSD_OUT_THREADS, keys
    /// in tiles of SSD_OUT_KEYS, and a stage of SSD_OUT_STAGE words that holds a tile of B (N x keys),
    /// a slice of the carried-in states (states x 64 columns, rows 65 words apart) or dt x (keys x 64).
    pub const SSD_OUT_ROWS: u32 = 32;
    pub const SSD_OUT_KEYS: u32 = 32;
    pub const SSD_OUT_THREADS: u32 = 128;
    pub const SSD_OUT_STAGE: u32 = 2048;
    /// The most query rows and keys per tile of the WGSL attention machineries: the size of their
    /// token tables in workgroup memory (ops::attention's tiles stay within them).
    pub const ATTENTION_MAX_BLOCK_Q: u32 = 64;
    pub const ATTENTION_MAX_BLOCK_KV: u32 = 32;

    // The relations the matmul kernels are written for: each thread of the wide kernel holds 8 x 8
    // outputs and fetches one vec4 per stage of A and of B; the skinny kernel keeps its rows in two
    // vec4 accumulators, and its A chunk has room for the lanes' partial sums.
    const _: () = assert!(WIDE_TILE == 8 * MATMUL_SIDE && WIDE_K * WIDE_TILE / 4 == MATMUL_SIDE * MATMUL_SIDE);
    const _: () = assert!(SKINNY_ROWS == 8 && SKINNY_CHUNK >= SKINNY_COLS * SKINNY_LANES);
    // ssd_chunk_outputs' threads are four teams of 32, each thread 8 rows x 8 columns of a 32 x 64
    // block, and compute 4 rows x 2 keys of a score tile; its stage holds a tile of B, a tile of dt x
    // and at least one state's row (65 words).
    const _: () = assert!(SSD_OUT_THREADS == BLOCK_TEAMS * 32 && SSD_OUT_ROWS == 32 && SSD_OUT_KEYS == 2 * 16);
    const _: () = assert!(SSD_OUT_STAGE >= MAX_STATE * SSD_OUT_KEYS && SSD_OUT_STAGE >= SSD_OUT_KEYS * 64);
    // The teams' exchange owns a quarter of each thread's block per team: it is written for four.
    // ssd_chunk_states' 64 threads of a team each hold 8 x 8 of a 64-state x 64-column block; its
    // stage (B and x, 64 words a step each) holds the exchange's 16 slots of 64 quads at the end.
    const _: () = assert!(BLOCK_TEAMS == 4 && TILE_K.is_multiple_of(BLOCK_TEAMS));
    const _: () = assert!(SSD_MAX_HEAD_DIM.is_multiple_of(64) && MAX_STATE == 64 && 2 * SSD_STAGE >= MAX_STATE);
    // The CUDA tensor-core kernel and the WGSL cooperative one cover the same block, so both share
    // the 64 x 64 matmul's grid; the WGSL one is written for four 32 x 32 quarters and 16-deep steps.
    const _: () = assert!(COOP_TILE == TILE_M && COOP_TILE == TILE_N && COOP_TILE == 64 && COOP_K.is_multiple_of(16));

    /// Every block size by name, as each backend emits them into its kernel sources.
    pub const ALL: &[(&str, u32)] = &[
        ("THREADS_1D", THREADS_1D),
        ("ATTENTION_MAX_BLOCK_Q", ATTENTION_MAX_BLOCK_Q),
        ("ATTENTION_MAX_BLOCK_KV", ATTENTION_MAX_BLOCK_KV),
        ("REDUCE_WG", REDUCE_WG),
        ("TILE_M", TILE_M),
        ("TILE_N", TILE_N),
        ("TILE_K", TILE_K),
        ("MATMUL_SIDE", MATMUL_SIDE),
        ("WIDE_TILE", WIDE_TILE),
        ("WIDE_K", WIDE_K),
        ("SKINNY_ROWS", SKINNY_ROWS),
        ("SKINNY_COLS", SKINNY_COLS),
        ("SKINNY_LANES", SKINNY_LANES),
        ("SKINNY_CHUNK", SKINNY_CHUNK),
        ("COOP_TILE", COOP_TILE),
        ("COOP_K", COOP_K),
        ("COOP_THREADS", COOP_THREADS),
        ("COOP_PAD_F32", COOP_PAD_F32),
        ("COOP_PAD_F16", COOP_PAD_F16),
        ("CONV_TILE_W", CONV_TILE_W),
        ("CONV_TILE_H", CONV_TILE_H),
        ("CONV_COUT_BLOCK", CONV_COUT_BLOCK),
        ("CONV_THREADS", CONV_THREADS),
        ("CONV_PATCH_CAP", CONV_PATCH_CAP),
        ("CONV_WEIGHT_CAP", CONV_WEIGHT_CAP),
        ("SCAN_WG", SCAN_WG),
        ("MAX_STATE", MAX_STATE),
        ("BLOCK_TEAMS", BLOCK_TEAMS),
        ("SSD_STAGE", SSD_STAGE),
        ("SSD_MAX_HEAD_DIM", SSD_MAX_HEAD_DIM),
        ("SSD_OUT_ROWS", SSD_OUT_ROWS),
        ("SSD_OUT_KEYS", SSD_OUT_KEYS),
        ("SSD_OUT_THREADS", SSD_OUT_THREADS),
        ("SSD_OUT_STAGE", SSD_OUT_STAGE),
    ];
}

/// The type of a specialisation constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstType {
    Bool,
    U32,
}

/// A specialisation constant's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConstValue {
    Bool(bool),
    U32(u32),
}

impl ConstValue {
    pub fn ty(self) -> ConstType {
        match self {
            ConstValue::Bool(_) => ConstType::Bool,
            ConstValue::U32(_) => ConstType::U32,
        }
    }

    /// The value as a pipeline-constant number (WGSL overrides take f64).
    pub fn as_f64(self) -> f64 {
        match self {
            ConstValue::Bool(b) => b as u32 as f64,
            ConstValue::U32(v) => v as f64,
        }
    }
}

impl From<bool> for ConstValue {
    fn from(value: bool) -> Self {
        ConstValue::Bool(value)
    }
}

impl From<u32> for ConstValue {
    fn from(value: u32) -> Self {
        ConstValue::U32(value)
    }
}

/// The specialisation constants of one launch: names from the family's declared set, each with the
/// declared type ([`Family::constants`]); checked when set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constants {
    family: Family,
    values: Vec<(&'static str, ConstValue)>,
}

impl Constants {
    pub fn new(family: Family) -> Self {
        Self { family, values: Vec::new() }
    }

    /// Sets `name`. A name the family does not declare, or a value of another type, is a programming
    /// error of the op that sets it: it panics in debug builds and is refused by the backend at launch.
    pub fn set(mut self, name: &'static str, value: impl Into<ConstValue>) -> Self {
        let value = value.into();
        debug_assert!(
            self.family.constants().iter().any(|&(n, t)| n == name && t == value.ty()),
            "{} declares no constant {name}: {:?}",
            self.family.name(),
            value.ty()
        );
        match self.values.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.values.push((name, value)),
        }
        self
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn values(&self) -> &[(&'static str, ConstValue)] {
        &self.values
    }

    /// Every value is declared by the family with its type.
    pub fn check(&self) -> Result<(), String> {
        for &(name, value) in &self.values {
            if !self.family.constants().iter().any(|&(n, t)| n == name && t == value.ty()) {
                return Err(format!("{} declares no {:?} constant {name}", self.family.name(), value.ty()));
            }
        }
        Ok(())
    }
}

/// A params struct's layout: its WGSL struct name and (field, byte offset) in declaration order.
#[derive(Debug)]
pub struct ParamsLayout {
    pub struct_name: &'static str,
    pub fields: &'static [(&'static str, usize)],
    /// Each field's Rust type as written (`u32`, `f32`, `[u32; 4]`), for backends that declare the
    /// struct in their own language (the CUDA composer).
    pub field_types: &'static [&'static str],
    pub size: usize,
}

/// A family's uniform parameters: plain old data whose layout matches the WGSL struct of the same
/// name member for member.
pub trait KernelParams: bytemuck::Pod {
    const LAYOUT: ParamsLayout;
}

macro_rules! params {
    ($( $(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)? } )*) => {
        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
            pub struct $name { $( $(#[$fdoc])* pub $field: $ty ),* }

            impl KernelParams for $name {
                const LAYOUT: ParamsLayout = ParamsLayout {
                    struct_name: stringify!($name),
                    fields: &[$( (stringify!($field), std::mem::offset_of!($name, $field)) ),*],
                    field_types: &[$( stringify!($ty) ),*],
                    size: std::mem::size_of::<$name>(),
                };
            }
        )*
    };
}

macro_rules! families {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal {
            params: $params:ident,
            reductions: $reductions:literal,
            dtypes: $dtypes:expr,
            constants: [$($cname:ident : $ctype:ident),* $(,)?] $(,)?
        }
    )*) => {
        /// A kernel family: one source file per backend (`shaders/wgsl/<name>.wgsl`), one params struct,
        /// several entry points.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Family { $( $(#[$doc])* $variant ),* }

        impl Family {
            /// Every family, in declaration order.
            pub const ALL: &'static [Family] = &[$(Family::$variant),*];

            /// The source file stem and the label in profiles and errors.
            pub fn name(self) -> &'static str {
                match self { $(Family::$variant => $name),* }
            }

            /// Whether the family's kernels use the row-reduction helpers (and so have a subgroup
            /// variant where the backend has subgroups).
            pub fn uses_reductions(self) -> bool {
                match self { $(Family::$variant => $reductions),* }
            }

            /// Whether the family runs the scalar attention machinery (attention_tile.wgsl), whose rows'
            /// partial scores may meet through subgroup shuffles: a subgroup variant where the
            /// backend has subgroups.
            pub fn uses_attention_lanes(self) -> bool {
                matches!(self, Family::Attention | Family::QkvHeads)
            }

            /// Whether the family multiplies on 16 x 16 f16 matrix units (wgpu: cooperative matrices,
            /// or their emulation), so that its "subgroups" variant is the cooperative-matrix one.
            pub fn uses_matrix_units(self) -> bool {
                matches!(
                    self,
                    Family::MatmulCoop | Family::Conv2dCoop | Family::AttentionCoop | Family::QkvAttentionCoop
                )
            }

            /// The storage types the family is compiled for.
            pub fn dtypes(self) -> &'static [DType] {
                match self { $(Family::$variant => $dtypes),* }
            }

            /// The specialisation constants the family declares.
            pub fn constants(self) -> &'static [(&'static str, ConstType)] {
                match self { $(Family::$variant => &[$((stringify!($cname), ConstType::$ctype)),*]),* }
            }

            /// The layout of the family's params struct.
            pub fn params_layout(self) -> &'static ParamsLayout {
                match self { $(Family::$variant => &<$params as KernelParams>::LAYOUT),* }
            }
        }
    };
}

const FLOATS: &[DType] = &[DType::F32, DType::F16];

families! {
    Matmul = "matmul" {
        params: MatmulParams, reductions: false, dtypes: FLOATS,
        constants: [B_TRANSPOSED: Bool, HAS_BIAS: Bool, GELU: Bool, GATED_RESIDUAL: Bool],
    }
    /// The matmul on 16 x 16 x 16 f16 matrix units: cooperative matrices on wgpu (`matmul_coop.wgsl`,
    /// its own module because it needs `enable wgpu_cooperative_matrix`), the tensor-core kernel on
    /// CUDA. f16 storage only: the units multiply f16, so an f32 matmul would lose precision.
    MatmulCoop = "matmul_coop" {
        params: MatmulParams, reductions: false, dtypes: &[DType::F16],
        constants: [B_TRANSPOSED: Bool, HAS_BIAS: Bool, GELU: Bool, GATED_RESIDUAL: Bool],
    }
    Norm = "norm" {
        params: NormParams, reductions: true, dtypes: FLOATS,
        constants: [HAS_WEIGHT: Bool, HAS_BIAS: Bool, MODULATE: Bool],
    }
    /// Dense and GRAT attention; each query row's max and sum stay in its own threads' registers, so
    /// no row reduction; its subgroup variant sums a row's partial scores through shuffles
    /// (`uses_attention_lanes`).
    Attention = "attention" {
        params: AttentionParams, reductions: false, dtypes: FLOATS,
        constants: [HEAD_DIM: U32, BLOCK_Q: U32, BLOCK_KV: U32, THREADS: U32, Q_TILE_VECS: U32,
                    KV_TILE_VECS: U32, KV_SPLIT: U32, ROWS: U32, SUBGROUP_EXCHANGE: Bool,
                    STAGED_SCORES: Bool, Q_STAGE_VECS: U32, SCORE_TILE_VECS: U32, GROUP_MAJOR: Bool,
                    TO_GROUP_MAJOR: Bool],
    }
    /// Dense and GRAT attention on 16 x 16 x 16 f16 matrix units (`attention_coop.wgsl` under
    /// attention.wgsl's entries; its own module because it needs `enable wgpu_cooperative_matrix`).
    /// f16 storage only. CUDA runs these calls on the attention family, whose f16 kernel already
    /// uses the tensor cores.
    AttentionCoop = "attention_coop" {
        params: AttentionParams, reductions: false, dtypes: &[DType::F16],
        constants: [HEAD_DIM: U32, BLOCK_Q: U32, BLOCK_KV: U32, THREADS: U32, COOP_DIM: U32, COOP_Q_WORDS: U32,
                    COOP_KV_WORDS: U32, COOP_P_WORDS: U32, COOP_PRODUCT_WORDS: U32, GROUP_MAJOR: Bool,
                    TO_GROUP_MAJOR: Bool],
    }
    /// The chunked selective scan (Mamba-1) and the recurrent SSD (Mamba-2).
    Scan = "scan" {
        params: ScanParams, reductions: false, dtypes: FLOATS,
        constants: [N_STATE: U32, CHANNELS_PER_HEAD: U32, A_PER_HEAD: Bool, HAS_Z: Bool, HAS_D_SKIP: Bool,
                    HAS_DELTA_BIAS: Bool, DELTA_SOFTPLUS: Bool, HAS_INITIAL_STATE: Bool, REVERSE: Bool],
    }
    /// SSD in the chunked matrix form.
    Ssd = "ssd" {
        params: SsdParams, reductions: false, dtypes: FLOATS,
        constants: [N_STATE: U32, HAS_D_SKIP: Bool, HAS_DT_BIAS: Bool, DT_SOFTPLUS: Bool, REVERSE: Bool],
    }
    /// The serial carry pass of the chunked scan (states are always f32).
    ScanCarry = "scan_carry" {
        params: CarryParams, reductions: false, dtypes: &[DType::F32],
        constants: [],
    }
    Conv1d = "conv1d" {
        params: Conv1dParams, reductions: false, dtypes: FLOATS,
        constants: [WIDTH: U32, HAS_BIAS: Bool, APPLY_SILU: Bool, HAS_STATE: Bool],
    }
    Elementwise = "elementwise" {
        params: ElementwiseParams, reductions: false, dtypes: FLOATS,
        constants: [],
    }
    Embedding = "embedding" {
        params: EmbeddingParams, reductions: false, dtypes: FLOATS,
        constants: [],
    }
    Copy = "copy" {
        params: CopyParams, reductions: false, dtypes: &[DType::F32, DType::F16, DType::U32],
        constants: [],
    }
    /// The two directions of the f32 <-> f16 conversion are two modules because their bindings differ.
    CastToF16 = "cast_to_f16" {
        params: CastParams, reductions: false, dtypes: &[DType::F16],
        constants: [],
    }
    CastToF32 = "cast_to_f32" {
        params: CastParams, reductions: false, dtypes: &[DType::F16],
        constants: [],
    }
    /// Bicubic, area and nearest x2 resampling of NCHW planes (the multi-scale VQVAE).
    Resample = "resample" {
        params: ResampleParams, reductions: false, dtypes: FLOATS,
        constants: [],
    }
    /// 2-D convolution, stride 1, same padding (the VQVAE decoder).
    Conv2d = "conv2d" {
        params: Conv2dParams, reductions: false, dtypes: FLOATS,
        constants: [KSIZE: U32, HAS_BIAS: Bool, CIN_CHUNK: U32],
    }
    /// conv2d as an implicit GEMM on 16 x 16 x 16 f16 matrix units: matmul_coop.wgsl's block with
    /// conv2d's operands (weight @ im2col(x), `conv2d_coop.wgsl`; its own module because it needs
    /// `enable wgpu_cooperative_matrix`), on CUDA conv2d.cu's entry on the tensor-core block
    /// (gemm_tc.cuh). f16 storage only.
    Conv2dCoop = "conv2d_coop" {
        params: Conv2dParams, reductions: false, dtypes: &[DType::F16],
        constants: [KSIZE: U32, HAS_BIAS: Bool],
    }
    /// The VAR sampler step: CFG, top-k, top-p and the Philox multinomial draw (logits are f32).
    Sample = "sample" {
        params: SampleParams, reductions: true, dtypes: &[DType::F32],
        constants: [CFG: Bool, KEEP_FILTERED: Bool],
    }
    /// VAR attention input: split the fused qkv into heads, cosine-normalise, append K/V to the caches;
    /// `qkv_attention` also attends the new tokens over the cache, on the attention family's tiles.
    QkvHeads = "qkv_heads" {
        params: QkvParams, reductions: true, dtypes: FLOATS,
        constants: [L2_NORM: Bool, HEAD_DIM: U32, BLOCK_Q: U32, BLOCK_KV: U32, THREADS: U32, Q_TILE_VECS: U32,
                    KV_TILE_VECS: U32, KV_SPLIT: U32, ROWS: U32, SUBGROUP_EXCHANGE: Bool, STAGED_SCORES: Bool,
                    Q_STAGE_VECS: U32, SCORE_TILE_VECS: U32],
    }
    /// `qkv_attention` on 16 x 16 x 16 f16 matrix units: qkv_attention.wgsl's entry on the
    /// attention_coop machinery (its own module because it needs `enable wgpu_cooperative_matrix`).
    /// f16 storage only. CUDA runs `qkv_attention` as qkv_heads then attention, so it never launches
    /// this family.
    QkvAttentionCoop = "qkv_attention_coop" {
        params: QkvParams, reductions: false, dtypes: &[DType::F16],
        constants: [L2_NORM: Bool, HEAD_DIM: U32, BLOCK_Q: U32, BLOCK_KV: U32, THREADS: U32, COOP_DIM: U32,
                    COOP_Q_WORDS: U32, COOP_KV_WORDS: U32, COOP_P_WORDS: U32, COOP_PRODUCT_WORDS: U32],
    }
    /// The AdaLN-gated residual add of a VAR block.
    Residual = "residual" {
        params: ResidualParams, reductions: false, dtypes: FLOATS,
        constants: [],
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

params! {
    /// `C[b] = A[b] @ op(B[b]) (+ bias)`; A: M x K, C: M x N.
    MatmulParams {
        m: u32,
        n: u32,
        k: u32,
        a_batch_stride: u32,
        b_batch_stride: u32,
        c_batch_stride: u32,
        /// GATED_RESIDUAL: output row r (counted across the batch) uses gate row r / gate_rows.
        gate_rows: u32,
    }

    NormParams {
        rows: u32,
        cols: u32,
        /// weight/bias row used by row r: r / rows_per_affine.
        rows_per_affine: u32,
        eps: f32,
        /// group_norm: channels per group and spatial size; softmax: the scale applied to the inputs.
        channels_per_group: u32,
        spatial: u32,
        scale: f32,
    }

    AttentionParams {
        heads: u32,
        q_batch_stride: u32,
        q_head_stride: u32,
        q_token_stride: u32,
        kv_batch_stride: u32,
        kv_head_stride: u32,
        kv_token_stride: u32,
        o_batch_stride: u32,
        o_head_stride: u32,
        o_token_stride: u32,
        /// Dense: queries [q_start, q_start + q_count) attend keys [0, kv_len).
        q_start: u32,
        q_count: u32,
        kv_len: u32,
        scale: f32,
        /// Grouped: the token grid (t, h, w), the group shape, the number of groups per axis.
        grid_t: u32,
        grid_h: u32,
        grid_w: u32,
        group_t: u32,
        group_h: u32,
        group_w: u32,
        groups_t: u32,
        groups_h: u32,
        groups_w: u32,
        pattern: u32,
        radius: u32,
        axes: u32,
        text_start: u32,
        text_valid: u32,
        blocks_per_group: u32,
    }

    /// Element strides (batch, channel, time) of u, z and y; of delta; (batch, group, state, time) of B and C.
    ScanParams {
        batch: u32,
        channels: u32,
        length: u32,
        groups: u32,
        chunk_len: u32,
        chunks: u32,
        x_batch: u32,
        x_channel: u32,
        x_time: u32,
        dt_batch: u32,
        dt_channel: u32,
        dt_time: u32,
        bc_batch: u32,
        bc_group: u32,
        bc_state: u32,
        bc_time: u32,
    }

    SsdParams {
        batch: u32,
        heads: u32,
        head_dim: u32,
        length: u32,
        groups: u32,
        chunk_len: u32,
        chunks: u32,
        x_batch: u32,
        x_channel: u32,
        x_time: u32,
        dt_batch: u32,
        dt_channel: u32,
        dt_time: u32,
        bc_batch: u32,
        bc_group: u32,
        bc_state: u32,
        bc_time: u32,
    }

    CarryParams {
        /// batch * channels * N
        states: u32,
        chunks: u32,
        n_state: u32,
        has_initial: u32,
    }

    Conv1dParams { batch: u32, channels: u32, length: u32, batch_stride: u32, channel_stride: u32, time_stride: u32 }

    ElementwiseParams {
        n: u32,
        /// Binary ops: b has rhs_n elements and repeats over the output.
        rhs_n: u32,
        /// a has lhs_n elements and repeats over the output (n for all but `add_repeat`).
        lhs_n: u32,
    }

    EmbeddingParams {
        n: u32,
        dim: u32,
        vocab: u32,
        /// embedding_channels_first: ids per batch entry.
        tokens: u32,
    }

    CopyParams { total: u32, count: u32, inner: u32, src_len: u32, src_start: u32, dst_len: u32, dst_start: u32 }

    /// Shared by both cast directions.
    CastParams { n: u32 }

    ResampleParams {
        planes: u32,
        in_h: u32,
        in_w: u32,
        out_h: u32,
        out_w: u32,
        /// f32 scale factors (bicubic only).
        scale_h: f32,
        scale_w: f32,
    }

    Conv2dParams {
        batch: u32,
        cin: u32,
        cout: u32,
        height: u32,
        width: u32,
        tiles_x: u32,
        /// tiles_x * tiles_y
        tiles: u32,
        cout_blocks: u32,
        /// The direct kernel's first output channel: its 32-channel blocks cover [cout_start, cout)
        /// (0, or the rows past an implicit GEMM's full tiles).
        cout_start: u32,
    }

    SampleParams {
        /// philox_words only: the first counter.
        counter_base: [u32; 4],
        /// Output rows B * T, tokens T per batch row, vocabulary V.
        rows: u32,
        tokens: u32,
        vocab: u32,
        /// 0: no top-k.
        top_k: u32,
        /// 0: no top-p.
        top_p: f32,
        /// CFG: guided = (1 + t) * cond - t * uncond.
        cfg_t: f32,
        /// Philox key of this (seed, step).
        key0: u32,
        key1: u32,
        /// Element offset of the unconditional half (B * T * V).
        uncond_offset: u32,
    }

    QkvParams {
        rows: u32,
        tokens: u32,
        heads: u32,
        dim: u32,
        cap: u32,
        start: u32,
        /// qkv_attention: the softmax scale (1 for cosine attention).
        scale: f32,
    }

    ResidualParams {
        n: u32,
        /// Elements per batch entry (T * C) and channels C.
        per_batch: u32,
        channels: u32,
    }
}
