//! Random state_dicts with the official VAR, M-VAR and VQVAE key names and shapes, for benchmarks (timing
//! needs the real shapes, not trained values) and loader tests. Values are scaled like a trained
//! model's (weights ~ N(0, 1/fan_in), unit norm weights), so activations stay finite at any depth.

use scalewise::Result;
use scalewise::weights::StateDict;

use crate::Rng;

/// A VAR transformer shape; [`VarShape::official`] gives var_d{depth}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarShape {
    pub depth: usize,
    pub width: usize,
    pub heads: usize,
    pub num_classes: usize,
    pub vocab: usize,
    pub cvae: usize,
    pub patch_nums: Vec<usize>,
    pub shared_adaln: bool,
}

impl VarShape {
    /// var_d{depth} at 256px: width 64 * depth, heads = depth.
    pub fn official(depth: usize) -> Self {
        Self {
            depth,
            width: 64 * depth,
            heads: depth,
            num_classes: 1000,
            vocab: 4096,
            cvae: 32,
            patch_nums: scalewise::nn::var::PATCH_NUMS_256.to_vec(),
            shared_adaln: false,
        }
    }
}

/// A VAR and VQVAE pair with ImageNet's 1000 classes (and no names in the file) at a tiny width:
/// depth 1, width 32, 2 heads, codebook 16 x 4, scales 1 and 2, a 32-channel two-level decoder.
/// Fast enough to load and generate in tests of the ImageNet class names.
pub fn tiny_imagenet() -> (VarShape, VaeShape) {
    let var = VarShape {
        depth: 1,
        width: 32,
        heads: 2,
        num_classes: 1000,
        vocab: 16,
        cvae: 4,
        patch_nums: vec![1, 2],
        shared_adaln: false,
    };
    let vae = VaeShape { ch: 32, ch_mult: vec![1, 1], blocks_per_level: 1, vocab: 16, cvae: 4, phi_convs: 1 };
    (var, vae)
}

/// A VQVAE decoder shape; [`VaeShape::official`] is vae_ch160v4096z32's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeShape {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    /// Decoder ResBlocks per level (num_res_blocks + 1 officially).
    pub blocks_per_level: usize,
    pub vocab: usize,
    pub cvae: usize,
    pub phi_convs: usize,
}

impl VaeShape {
    pub fn official() -> Self {
        Self { ch: 160, ch_mult: vec![1, 1, 2, 2, 4], blocks_per_level: 3, vocab: 4096, cvae: 32, phi_convs: 4 }
    }
}

struct Builder {
    sd: StateDict,
    rng: Rng,
    /// Count the random tensors' elements instead of drawing them (see [`var_parameters`]).
    dry: bool,
    /// Elements of the random tensors so far.
    elements: u64,
}

impl Builder {
    fn new(seed: u64, dry: bool) -> Self {
        Self { sd: StateDict::new(), rng: Rng::new(seed), dry, elements: 0 }
    }

    fn normal(&mut self, key: String, shape: &[usize], std: f32, mean: f32) -> Result<()> {
        let n: usize = shape.iter().product();
        self.elements += n as u64;
        if self.dry {
            return Ok(());
        }
        let data = self.rng.normal_vec(n, std, mean);
        self.sd.insert(key, shape, data)
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> Result<()> {
        self.normal(format!("{prefix}.weight"), &[out, inp], (inp as f32).powf(-0.5), 0.0)?;
        self.normal(format!("{prefix}.bias"), &[out], 0.02, 0.0)
    }

    fn conv(&mut self, prefix: &str, out: usize, inp: usize, k: usize) -> Result<()> {
        self.normal(format!("{prefix}.weight"), &[out, inp, k, k], ((inp * k * k) as f32).powf(-0.5), 0.0)?;
        self.normal(format!("{prefix}.bias"), &[out], 0.02, 0.0)
    }

    fn norm(&mut self, prefix: &str, c: usize) -> Result<()> {
        self.normal(format!("{prefix}.weight"), &[c], 0.05, 1.0)?;
        self.normal(format!("{prefix}.bias"), &[c], 0.05, 0.0)
    }
}

/// A random VAR checkpoint of `shape`; the schedule goes into the metadata.
pub fn var_state_dict(shape: &VarShape, seed: u64) -> Result<StateDict> {
    build_var(shape, Builder::new(seed, false)).map(|b| b.sd)
}

/// The parameters [`var_state_dict`] would draw for `shape` (4 bytes each), counted without
/// allocating them: what a caller checks against the memory it has before building a large model.
pub fn var_parameters(shape: &VarShape) -> Result<u64> {
    build_var(shape, Builder::new(0, true)).map(|b| b.elements)
}

fn build_var(shape: &VarShape, mut b: Builder) -> Result<Builder> {
    let c = shape.width;
    let l: usize = shape.patch_nums.iter().map(|p| p * p).sum();
    b.normal("pos_start".into(), &[1, 1, c], 0.02, 0.0)?;
    b.normal("pos_1LC".into(), &[1, l, c], 0.02, 0.0)?;
    b.normal("class_emb.weight".into(), &[shape.num_classes + 1, c], 0.5, 0.0)?;
    b.normal("lvl_embed.weight".into(), &[shape.patch_nums.len(), c], 0.02, 0.0)?;
    b.linear("word_embed", c, shape.cvae)?;
    if shape.shared_adaln {
        b.linear("shared_ada_lin.1", 6 * c, c)?;
    }
    for i in 0..shape.depth {
        let p = format!("blocks.{i}");
        b.normal(format!("{p}.attn.scale_mul_1H11"), &[1, shape.heads, 1, 1], 0.3, 2.5)?;
        b.normal(format!("{p}.attn.q_bias"), &[c], 0.02, 0.0)?;
        b.normal(format!("{p}.attn.v_bias"), &[c], 0.02, 0.0)?;
        b.normal(format!("{p}.attn.mat_qkv.weight"), &[3 * c, c], (c as f32).powf(-0.5), 0.0)?;
        b.linear(&format!("{p}.attn.proj"), c, c)?;
        b.linear(&format!("{p}.ffn.fc1"), 4 * c, c)?;
        b.linear(&format!("{p}.ffn.fc2"), c, 4 * c)?;
        if shape.shared_adaln {
            b.normal(format!("{p}.ada_gss"), &[1, 1, 6, c], 0.02, 0.0)?;
        } else {
            b.normal(format!("{p}.ada_lin.1.weight"), &[6 * c, c], 0.1 * (c as f32).powf(-0.5), 0.0)?;
            b.normal(format!("{p}.ada_lin.1.bias"), &[6 * c], 0.02, 0.0)?;
        }
    }
    b.normal("head_nm.ada_lin.1.weight".into(), &[2 * c, c], 0.1 * (c as f32).powf(-0.5), 0.0)?;
    b.normal("head_nm.ada_lin.1.bias".into(), &[2 * c], 0.02, 0.0)?;
    b.linear("head", shape.vocab, c)?;
    b.sd.metadata
        .insert(scalewise::nn::var::META_PATCH_NUMS.into(), serde_json::to_string(&shape.patch_nums).expect("list"));
    Ok(b)
}

/// An M-VAR transformer shape (heads = width / 64; Mamba-2 with d_state 64, headdim 64, expand 2,
/// ngroups 1); [`MvarShape::official`] gives M-VAR d{depth}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MvarShape {
    pub depth: usize,
    pub width: usize,
    pub num_classes: usize,
    pub vocab: usize,
    pub cvae: usize,
    pub patch_nums: Vec<usize>,
    /// scale_mul_1H11 present (d24, d32): cosine attention.
    pub cosine_attention: bool,
}

impl MvarShape {
    /// M-VAR d{depth} at 256px: width 64 * depth; cosine attention from depth 24 on.
    pub fn official(depth: usize) -> Self {
        Self {
            depth,
            width: 64 * depth,
            num_classes: 1000,
            vocab: 4096,
            cvae: 32,
            patch_nums: scalewise::nn::var::PATCH_NUMS_256.to_vec(),
            cosine_attention: depth >= 24,
        }
    }
}

/// A random M-VAR checkpoint of `shape`; the schedule goes into the metadata. The Mamba-2 layers
/// follow mamba_ssm's initialisation (dt in [0.001, 0.1], A in [1, 16], D and the norm weight 1).
pub fn mvar_state_dict(shape: &MvarShape, seed: u64) -> Result<StateDict> {
    build_mvar(shape, Builder::new(seed, false)).map(|b| b.sd)
}

/// The parameters [`mvar_state_dict`] would draw for `shape`, as [`var_parameters`] (its few
/// per-head vectors of constants aside).
pub fn mvar_parameters(shape: &MvarShape) -> Result<u64> {
    build_mvar(shape, Builder::new(0, true)).map(|b| b.elements)
}

fn build_mvar(shape: &MvarShape, mut b: Builder) -> Result<Builder> {
    let c = shape.width;
    let heads = c / 64;
    let (d_inner, d_state) = (2 * c, 64);
    let m_heads = d_inner / 64;
    let channels = d_inner + 2 * d_state;
    let l: usize = shape.patch_nums.iter().map(|p| p * p).sum();
    b.normal("pos_start".into(), &[1, 1, c], 0.02, 0.0)?;
    b.normal("pos_1LC".into(), &[1, l, c], 0.02, 0.0)?;
    b.normal("class_emb.weight".into(), &[shape.num_classes + 1, c], 0.5, 0.0)?;
    b.normal("lvl_embed.weight".into(), &[shape.patch_nums.len(), c], 0.02, 0.0)?;
    b.linear("word_embed", c, shape.cvae)?;
    for i in 0..shape.depth {
        let p = format!("blocks.{i}");
        if shape.cosine_attention {
            b.normal(format!("{p}.attn.scale_mul_1H11"), &[1, heads, 1, 1], 0.3, 2.5)?;
        }
        b.normal(format!("{p}.attn.q_bias"), &[c], 0.02, 0.0)?;
        b.normal(format!("{p}.attn.v_bias"), &[c], 0.02, 0.0)?;
        b.normal(format!("{p}.attn.mat_qkv.weight"), &[3 * c, c], (c as f32).powf(-0.5), 0.0)?;
        b.linear(&format!("{p}.attn.proj"), c, c)?;
        let m = format!("{p}.mamba");
        b.normal(format!("{m}.in_proj.weight"), &[2 * d_inner + 2 * d_state + m_heads, c], (c as f32).powf(-0.5), 0.0)?;
        b.normal(format!("{m}.conv1d.weight"), &[channels, 1, 4], 0.5, 0.0)?;
        b.normal(format!("{m}.conv1d.bias"), &[channels], 0.02, 0.0)?;
        let dt_bias: Vec<f32> = (0..m_heads)
            .map(|_| {
                let dt = (0.001f32.ln() + b.rng.unit() * (0.1f32 / 0.001).ln()).exp();
                dt + (-(-dt).exp_m1()).ln() // softplus^-1(dt)
            })
            .collect();
        b.sd.insert(format!("{m}.dt_bias"), &[m_heads], dt_bias)?;
        let a_log: Vec<f32> = (0..m_heads).map(|_| (1.0 + 15.0 * b.rng.unit()).ln()).collect();
        b.sd.insert(format!("{m}.A_log"), &[m_heads], a_log)?;
        b.sd.insert(format!("{m}.D"), &[m_heads], vec![1.0; m_heads])?;
        b.sd.insert(format!("{m}.norm.weight"), &[d_inner], vec![1.0; d_inner])?;
        b.normal(format!("{m}.out_proj.weight"), &[c, d_inner], (d_inner as f32).powf(-0.5), 0.0)?;
        b.linear(&format!("{p}.ffn.fc1"), 4 * c, c)?;
        b.linear(&format!("{p}.ffn.fc2"), c, 4 * c)?;
        b.normal(format!("{p}.ada_lin.1.weight"), &[9 * c, c], 0.1 * (c as f32).powf(-0.5), 0.0)?;
        b.normal(format!("{p}.ada_lin.1.bias"), &[9 * c], 0.02, 0.0)?;
    }
    b.normal("head_nm.ada_lin.1.weight".into(), &[2 * c, c], 0.1 * (c as f32).powf(-0.5), 0.0)?;
    b.normal("head_nm.ada_lin.1.bias".into(), &[2 * c], 0.02, 0.0)?;
    b.linear("head", shape.vocab, c)?;
    b.sd.metadata
        .insert(scalewise::nn::var::META_PATCH_NUMS.into(), serde_json::to_string(&shape.patch_nums).expect("list"));
    Ok(b)
}

/// A random VQVAE (codebook, Phi, post_quant_conv and decoder) of `shape`.
pub fn vae_state_dict(shape: &VaeShape, seed: u64) -> Result<StateDict> {
    let mut b = Builder::new(seed, false);
    let z = shape.cvae;
    b.normal("quantize.embedding.weight".into(), &[shape.vocab, z], 0.5, 0.0)?;
    for k in 0..shape.phi_convs {
        b.conv(&format!("quantize.quant_resi.qresi_ls.{k}"), z, z, 3)?;
    }
    b.conv("post_quant_conv", z, z, 3)?;
    let widths: Vec<usize> = shape.ch_mult.iter().map(|m| m * shape.ch).collect();
    let top = *widths.last().expect("at least one level");
    b.conv("decoder.conv_in", top, z, 3)?;
    let res = |b: &mut Builder, p: &str, cin: usize, cout: usize| -> Result<()> {
        b.norm(&format!("{p}.norm1"), cin)?;
        b.conv(&format!("{p}.conv1"), cout, cin, 3)?;
        b.norm(&format!("{p}.norm2"), cout)?;
        b.conv(&format!("{p}.conv2"), cout, cout, 3)?;
        if cin != cout {
            b.conv(&format!("{p}.nin_shortcut"), cout, cin, 1)?;
        }
        Ok(())
    };
    let attn = |b: &mut Builder, p: &str, c: usize| -> Result<()> {
        b.norm(&format!("{p}.norm"), c)?;
        b.conv(&format!("{p}.qkv"), 3 * c, c, 1)?;
        b.conv(&format!("{p}.proj_out"), c, c, 1)
    };
    res(&mut b, "decoder.mid.block_1", top, top)?;
    attn(&mut b, "decoder.mid.attn_1", top)?;
    res(&mut b, "decoder.mid.block_2", top, top)?;
    let mut cin = top;
    let last = widths.len() - 1;
    for i in (0..widths.len()).rev() {
        for j in 0..shape.blocks_per_level {
            res(&mut b, &format!("decoder.up.{i}.block.{j}"), cin, widths[i])?;
            cin = widths[i];
            if i == last {
                attn(&mut b, &format!("decoder.up.{i}.attn.{j}"), cin)?;
            }
        }
        if i != 0 {
            b.conv(&format!("decoder.up.{i}.upsample.conv"), cin, cin, 3)?;
        }
    }
    b.norm("decoder.norm_out", cin)?;
    b.conv("decoder.conv_out", 3, cin, 3)?;
    Ok(b.sd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(sd: &StateDict) -> u64 {
        sd.iter().map(|(_, t)| t.data.len() as u64).sum()
    }

    #[test]
    fn parameter_counts_match_the_models_built() {
        for depth in [1, 3] {
            let var = VarShape { depth, ..VarShape::official(2) };
            assert_eq!(var_parameters(&var).unwrap(), elements(&var_state_dict(&var, 5).unwrap()), "VAR depth {depth}");
            // M-VAR's constant per-head vectors (dt_bias, A_log, D, the norm weight) are not drawn.
            let mvar = MvarShape { depth, ..MvarShape::official(2) };
            let (m_heads, d_inner) = (2 * mvar.width / 64, 2 * mvar.width);
            let constants = (depth * (3 * m_heads + d_inner)) as u64;
            assert_eq!(
                mvar_parameters(&mvar).unwrap() + constants,
                elements(&mvar_state_dict(&mvar, 5).unwrap()),
                "M-VAR depth {depth}"
            );
        }
        // VAR d64 (width 4096): about 19 billion parameters, counted without allocating them.
        let d64 = var_parameters(&VarShape::official(64)).unwrap();
        assert!((18_000_000_000..21_000_000_000).contains(&d64), "{d64}");
    }
}
