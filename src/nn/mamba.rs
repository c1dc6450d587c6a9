//! Mamba-1 (mamba_simple.Mamba) and Mamba-2 (Mamba2) blocks for inference, with the mamba_ssm
//! state_dict key names. Hyperparameters come from the tensor shapes. Both carry their conv and SSM
//! state, so a sequence processed in pieces (one scale at a time, as M-VAR does) gives the same
//! output as processed whole.

use super::Loader;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::conv1d::{CausalConv1d, Conv1dOutput, causal_conv1d};
use crate::ops::scan::{
    SelectiveScan, SequenceLayout, SsdForm, SsdScan, check_finite_host_a, selective_scan_checked, ssd_scan_checked,
};
use crate::ops::{GatedResidual, gated_rms_norm, linear, linear_gated_residual, mul};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// What a block carries from one piece of a sequence to the next.
#[derive(Debug, Clone)]
pub struct MambaState {
    /// (B, conv channels, d_conv - 1): the last inputs of the short convolution.
    pub conv: Tensor,
    /// (B, d_inner, d_state) f32.
    pub ssm: Tensor,
}

fn dims<const N: usize>(sd: &dyn Weights, prefix: &str, name: &str) -> Result<[usize; N]> {
    let shape = sd.require_shape(prefix, name)?;
    <[usize; N]>::try_from(shape).map_err(|_| Error::InvalidArgument {
        op: "Mamba checkpoint",
        msg: format!("{prefix}{name} has shape {:?}: expected {N} dimensions", shape),
    })
}

/// A = -exp(A_log) (uploaded as f32, and checked finite once the keys are known to be right).
fn a_from_log(a_log: &[f32]) -> Vec<f32> {
    a_log.iter().map(|v| -v.exp()).collect()
}

fn check_input(x: &Tensor, d_model: usize, dtype: DType, op: &'static str) -> Result<(usize, usize)> {
    match x.shape() {
        &[b, l, c] if c == d_model && x.dtype() == dtype => Ok((b, l)),
        other => Err(Error::InvalidArgument {
            op,
            msg: format!("input must be ({{batch}}, {{length}}, {d_model}) {dtype}, got {other:?} {}", x.dtype()),
        }),
    }
}

/// Splits the last dimension of `x` into pieces of the given widths.
fn split_last<const N: usize>(x: &Tensor, widths: [usize; N]) -> Result<[Tensor; N]> {
    x.split(x.shape().len() - 1, widths)
}

/// The blocks' short convolution over tokens-major activations: causal, SiLU, state carried.
fn short_conv(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, state: Option<&MambaState>) -> Result<Conv1dOutput> {
    causal_conv1d(&CausalConv1d {
        x,
        weight,
        bias,
        state: state.map(|s| &s.conv),
        silu: true,
        layout: SequenceLayout::TokensMajor,
    })
}

pub struct Mamba1Block {
    pub d_model: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub dt_rank: usize,
    pub d_conv: usize,
    dtype: DType,
    in_proj: Tensor,
    in_proj_bias: Option<Tensor>,
    conv_weight: Tensor,
    conv_bias: Option<Tensor>,
    x_proj: Tensor,
    dt_proj: Tensor,
    dt_bias: Tensor,
    a: Tensor,
    d_skip: Tensor,
    out_proj: Tensor,
    out_proj_bias: Option<Tensor>,
}

impl Mamba1Block {
    /// Keys (under `prefix`): in_proj.weight, conv1d.weight, conv1d.bias, x_proj.weight,
    /// dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight (and the optional in/out biases).
    pub fn from_state_dict(device: &Device, sd: &dyn Weights, prefix: &str, dtype: DType) -> Result<Self> {
        let [_, d_model] = dims(sd, prefix, "in_proj.weight")?;
        let [d_inner, d_state] = dims(sd, prefix, "A_log")?;
        let [_, dt_rank] = dims(sd, prefix, "dt_proj.weight")?;
        let [_, _, d_conv] = dims(sd, prefix, "conv1d.weight")?;
        let lp = Loader::new_with_prefix(device, sd, prefix, dtype);
        let lp32 = lp.with_dtype(DType::F32);
        let a = a_from_log(&lp.host("A_log", &[d_inner, d_state])?);
        let block = Self {
            d_model,
            d_inner,
            d_state,
            dt_rank,
            d_conv,
            dtype,
            in_proj: lp.tensor("in_proj.weight", &[2 * d_inner, d_model])?,
            in_proj_bias: lp.optional("in_proj.bias", &[2 * d_inner])?,
            conv_weight: lp.tensor_as("conv1d.weight", &[d_inner, 1, d_conv], &[d_inner, d_conv])?,
            conv_bias: lp.optional("conv1d.bias", &[d_inner])?,
            x_proj: lp.tensor("x_proj.weight", &[dt_rank + 2 * d_state, d_inner])?,
            dt_proj: lp.tensor("dt_proj.weight", &[d_inner, dt_rank])?,
            dt_bias: lp32.tensor("dt_proj.bias", &[d_inner])?,
            a: lp32.upload(&[d_inner, d_state], &a)?,
            d_skip: lp32.tensor("D", &[d_inner])?,
            out_proj: lp.tensor("out_proj.weight", &[d_model, d_inner])?,
            out_proj_bias: lp.optional("out_proj.bias", &[d_model])?,
        };
        lp.finish()?;
        check_finite_host_a(&a, &[d_inner, d_state])?;
        Ok(block)
    }

    /// x: (B, L, d_model) -> (B, L, d_model), continuing from `state` (a fresh sequence when None).
    pub fn forward(&self, x: &Tensor, state: Option<&MambaState>) -> Result<(Tensor, MambaState)> {
        let (batch, length) = check_input(x, self.d_model, self.dtype, "Mamba1Block::forward")?;
        let xz = linear(x, &self.in_proj, self.in_proj_bias.as_ref())?;
        let [xs, z] = split_last(&xz, [self.d_inner, self.d_inner])?;
        let conv = short_conv(&xs, &self.conv_weight, self.conv_bias.as_ref(), state)?;
        let dbc = linear(&conv.y, &self.x_proj, None)?;
        let [dt, b, c] = split_last(&dbc, [self.dt_rank, self.d_state, self.d_state])?;
        let delta = linear(&dt, &self.dt_proj, None)?;
        let bc_shape = [batch, length, 1, self.d_state];
        let scan = selective_scan_checked(
            &SelectiveScan {
                u: &conv.y,
                delta: &delta,
                a: &self.a,
                b: &b.reshape(&bc_shape)?,
                c: &c.reshape(&bc_shape)?,
                d_skip: Some(&self.d_skip),
                z: Some(&z),
                delta_bias: Some(&self.dt_bias),
                delta_softplus: true,
                initial_state: state.map(|s| &s.ssm),
                reverse: false,
                layout: SequenceLayout::TokensMajor,
                chunk_len: None,
            },
            false,
        )?;
        let out = linear(&scan.y, &self.out_proj, self.out_proj_bias.as_ref())?;
        Ok((out, MambaState { conv: conv.state, ssm: scan.final_state }))
    }
}

/// The hyperparameters of a Mamba-2 layer (what its weight shapes say, given ngroups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mamba2Dims {
    pub d_model: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub n_heads: usize,
    pub n_groups: usize,
    pub d_conv: usize,
}

impl Mamba2Dims {
    /// Channels of the short convolution: x, B and C.
    pub fn conv_channels(&self) -> usize {
        self.d_inner + 2 * self.n_groups * self.d_state
    }

    /// Rows of in_proj: z, xBC and dt.
    pub fn in_proj_rows(&self) -> usize {
        self.d_inner + self.conv_channels() + self.n_heads
    }

    pub fn head_dim(&self) -> usize {
        self.d_inner / self.n_heads
    }
}

/// Mamba-2 with the gated RMSNorm (norm after the gate, eps 1e-5).
pub struct Mamba2Block {
    pub d_model: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub n_groups: usize,
    pub d_conv: usize,
    dtype: DType,
    in_proj: Tensor,
    conv_weight: Tensor,
    conv_bias: Option<Tensor>,
    dt_bias: Tensor,
    a: Tensor,
    d_skip: Tensor,
    norm_weight: Tensor,
    out_proj: Tensor,
}

impl Mamba2Block {
    /// Keys: in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log, D, norm.weight,
    /// out_proj.weight. The shapes give everything but how d_state splits from ngroups, which is
    /// `n_groups` (1 in M-VAR).
    pub fn from_state_dict(
        device: &Device,
        sd: &dyn Weights,
        prefix: &str,
        n_groups: usize,
        dtype: DType,
    ) -> Result<Self> {
        let [d_model, d_inner] = dims(sd, prefix, "out_proj.weight")?;
        let [n_heads] = dims(sd, prefix, "A_log")?;
        let [conv_channels, _, d_conv] = dims(sd, prefix, "conv1d.weight")?;
        let invalid = |msg: String| Error::InvalidArgument { op: "Mamba2Block", msg };
        if n_heads == 0 || !d_inner.is_multiple_of(n_heads) {
            return Err(invalid(format!("d_inner {d_inner} is not a multiple of nheads {n_heads}")));
        }
        let group_states = conv_channels.checked_sub(d_inner).map(|v| v / 2).unwrap_or(0);
        if n_groups == 0 || group_states == 0 || !group_states.is_multiple_of(n_groups) {
            return Err(invalid(format!(
                "conv1d has {conv_channels} channels: not d_inner ({d_inner}) + 2 * ngroups ({n_groups}) * d_state"
            )));
        }
        let d_state = group_states / n_groups;
        let lp = Loader::new_with_prefix(device, sd, prefix, dtype);
        let (block, a) = Self::load(&lp, Mamba2Dims { d_model, d_inner, d_state, n_heads, n_groups, d_conv })?;
        lp.finish()?;
        check_finite_host_a(&a, &[n_heads])?;
        Ok(block)
    }

    /// Reads the layer's keys through `lp` (its prefix ends in the layer's name and '.') without
    /// finishing it, so a model reports the problems of all its layers in one error. Returns A with
    /// the block: check it with `check_finite_host_a` once the loader has finished (a missing A_log
    /// reads as zeros).
    pub(crate) fn load(lp: &Loader, dims: Mamba2Dims) -> Result<(Self, Vec<f32>)> {
        let Mamba2Dims { d_model, d_inner, d_state, n_heads, n_groups, d_conv } = dims;
        let conv_channels = dims.conv_channels();
        let lp32 = lp.with_dtype(DType::F32);
        let a = a_from_log(&lp.host("A_log", &[n_heads])?);
        let block = Self {
            d_model,
            d_inner,
            d_state,
            n_heads,
            head_dim: dims.head_dim(),
            n_groups,
            d_conv,
            dtype: lp.dtype(),
            in_proj: lp.tensor("in_proj.weight", &[dims.in_proj_rows(), d_model])?,
            conv_weight: lp.tensor_as("conv1d.weight", &[conv_channels, 1, d_conv], &[conv_channels, d_conv])?,
            conv_bias: lp.optional("conv1d.bias", &[conv_channels])?,
            dt_bias: lp32.tensor("dt_bias", &[n_heads])?,
            a: lp32.upload(&[n_heads], &a)?,
            d_skip: lp32.tensor("D", &[n_heads])?,
            norm_weight: lp.tensor("norm.weight", &[d_inner])?,
            out_proj: lp.tensor("out_proj.weight", &[d_model, d_inner])?,
        };
        Ok((block, a))
    }

    pub fn forward(&self, x: &Tensor, state: Option<&MambaState>) -> Result<(Tensor, MambaState)> {
        self.forward_with(x, state, None)
    }

    /// [`Mamba2Block::forward`] whose output projection also adds a gated residual (x + gate\[b\] *
    /// out) in the same kernel, as a block around the layer would next.
    pub fn forward_with(
        &self,
        x: &Tensor,
        state: Option<&MambaState>,
        residual: Option<GatedResidual>,
    ) -> Result<(Tensor, MambaState)> {
        let (batch, length) = check_input(x, self.d_model, self.dtype, "Mamba2Block::forward")?;
        let gn = self.n_groups * self.d_state;
        let zxbcdt = linear(x, &self.in_proj, None)?;
        let [z, xbc, dt] = split_last(&zxbcdt, [self.d_inner, self.d_inner + 2 * gn, self.n_heads])?;
        let conv = short_conv(&xbc, &self.conv_weight, self.conv_bias.as_ref(), state)?;
        let [xs, b, c] = split_last(&conv.y, [self.d_inner, gn, gn])?;
        let bc_shape = [batch, length, self.n_groups, self.d_state];
        let scan = ssd_scan_checked(
            &SsdScan {
                x: &xs,
                dt: &dt,
                a: &self.a,
                b: &b.reshape(&bc_shape)?,
                c: &c.reshape(&bc_shape)?,
                d_skip: Some(&self.d_skip),
                dt_bias: Some(&self.dt_bias),
                dt_softplus: true,
                initial_state: state.map(|s| &s.ssm),
                reverse: false,
                layout: SequenceLayout::TokensMajor,
                chunk_len: None,
                form: SsdForm::Auto,
            },
            false,
        )?;
        // Gated RMSNorm (y * silu(z) inside the norm kernel), normalised per group of
        // d_inner / ngroups channels, then the weight. With one group the weight spans the
        // normalised dimension, so the norm applies it itself.
        let weighted = if self.n_groups == 1 {
            gated_rms_norm(&scan.y, &z, Some(&self.norm_weight), 1e-5)?
        } else {
            let per_group = [batch, length, self.n_groups, self.d_inner / self.n_groups];
            let normed = gated_rms_norm(&scan.y.reshape(&per_group)?, &z.reshape(&per_group)?, None, 1e-5)?;
            mul(&normed.reshape(&[batch, length, self.d_inner])?, &self.norm_weight)?
        };
        let out = match residual {
            Some(GatedResidual { x, gate }) => linear_gated_residual(&weighted, &self.out_proj, None, x, gate)?,
            None => linear(&weighted, &self.out_proj, None)?,
        };
        Ok((out, MambaState { conv: conv.state, ssm: scan.final_state }))
    }
}
