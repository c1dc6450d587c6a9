//! Depthwise causal conv1d with carried state (the short convolution of Mamba blocks).

use super::{check_operand, elements, float_dtype, index_u32, launch, shape_error};
use crate::error::{Error, Result};
use crate::kernels::{Constants, Conv1dParams, Family};
use crate::ops::scan::SequenceLayout;
use crate::tensor::Tensor;

/// Widest kernel supported.
pub const MAX_WIDTH: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct CausalConv1d<'a> {
    /// (B, C, L) or (B, L, C) per `layout`.
    pub x: &'a Tensor,
    /// (C, W) or PyTorch's (C, 1, W).
    pub weight: &'a Tensor,
    /// (C)
    pub bias: Option<&'a Tensor>,
    /// (B, C, W - 1): the previous piece's last inputs; zeros when absent.
    pub state: Option<&'a Tensor>,
    pub silu: bool,
    pub layout: SequenceLayout,
}

pub struct Conv1dOutput {
    pub y: Tensor,
    /// (B, C, W - 1): the state to pass with the next piece.
    pub state: Tensor,
}

pub fn causal_conv1d(args: &CausalConv1d) -> Result<Conv1dOutput> {
    const OP: &str = "causal_conv1d";
    let x = args.x;
    let (batch, channels, length) = match (x.shape(), args.layout) {
        (&[b, c, l], SequenceLayout::ChannelsMajor) => (b, c, l),
        (&[b, l, c], SequenceLayout::TokensMajor) => (b, c, l),
        (other, layout) => {
            return Err(Error::InvalidArgument { op: OP, msg: format!("x must be 3-D ({layout:?}), got {other:?}") });
        }
    };
    let width = match args.weight.shape() {
        &[c, w] | &[c, 1, w] if c == channels => w,
        _ => {
            return Err(shape_error(
                OP,
                x,
                args.weight,
                format!("the weight must be ({channels}, W) or ({channels}, 1, W)"),
            ));
        }
    };
    if width == 0 || width > MAX_WIDTH {
        return Err(Error::InvalidArgument { op: OP, msg: format!("width {width} is outside 1..={MAX_WIDTH}") });
    }
    check_operand(OP, x, args.weight)?;
    if let Some(bias) = args.bias {
        check_operand(OP, x, bias)?;
        if bias.shape() != [channels] {
            return Err(shape_error(OP, x, bias, format!("the bias must have shape [{channels}]")));
        }
    }
    if let Some(state) = args.state {
        check_operand(OP, x, state)?;
        if state.shape() != [batch, channels, width - 1] {
            return Err(shape_error(
                OP,
                x,
                state,
                format!("the state must have shape [{batch}, {channels}, {}]", width - 1),
            ));
        }
    }
    let dtype = float_dtype(OP, x)?;
    let y = Tensor::empty(x.device(), x.shape(), x.dtype())?;
    let state = Tensor::empty(x.device(), &[batch, channels, width - 1], x.dtype())?;
    let strides = match args.layout {
        SequenceLayout::ChannelsMajor => [channels * length, length, 1],
        SequenceLayout::TokensMajor => [length * channels, 1, channels],
    };
    let params = Conv1dParams {
        batch: index_u32(OP, "batch", batch)?,
        channels: channels as u32,
        length: index_u32(OP, "length", length)?,
        batch_stride: index_u32(OP, "a stride", strides[0])?,
        channel_stride: index_u32(OP, "a stride", strides[1])?,
        time_stride: index_u32(OP, "a stride", strides[2])?,
    };
    index_u32(OP, "elements", x.numel())?;
    let constants = Constants::new(Family::Conv1d)
        .set("WIDTH", width as u32)
        .set("HAS_BIAS", args.bias.is_some())
        .set("APPLY_SILU", args.silu)
        .set("HAS_STATE", args.state.is_some());
    let bindings = [
        x.arg("x"),
        args.weight.arg("weight"),
        args.bias.unwrap_or(x).arg("bias"),
        args.state.unwrap_or(x).arg("state_in"),
        y.arg_mut("y"),
        state.arg_mut("state_out"),
    ];
    launch(x, Family::Conv1d, "conv1d", dtype, &constants, &bindings, &params, elements(x.numel()))?;
    if width > 1 {
        let grid = elements(batch * channels * (width - 1));
        launch(x, Family::Conv1d, "conv1d_state", dtype, &constants, &bindings, &params, grid)?;
    }
    Ok(Conv1dOutput { y, state })
}

pub mod reference {
    /// x: (B, C, L), weight (C, W), state (B, C, W - 1) -> (y (B, C, L), new state).
    pub fn causal_conv1d(
        x: &[f32],
        batch: usize,
        channels: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
        state: Option<&[f32]>,
        silu: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let width = weight.len() / channels;
        let length = x.len() / (batch * channels);
        let keep = width - 1;
        let mut y = vec![0.0; x.len()];
        let mut new_state = vec![0.0; batch * channels * keep];
        for b in 0..batch {
            for c in 0..channels {
                // x' = state ++ x
                let mut ext: Vec<f64> = match state {
                    Some(s) => {
                        s[(b * channels + c) * keep..(b * channels + c + 1) * keep].iter().map(|&v| v as f64).collect()
                    }
                    None => vec![0.0; keep],
                };
                ext.extend(x[(b * channels + c) * length..(b * channels + c + 1) * length].iter().map(|&v| v as f64));
                for t in 0..length {
                    let mut acc = bias.map_or(0.0, |bias| bias[c] as f64);
                    for k in 0..width {
                        acc += weight[c * width + k] as f64 * ext[t + k];
                    }
                    if silu {
                        acc /= 1.0 + (-acc).exp();
                    }
                    y[(b * channels + c) * length + t] = acc;
                }
                new_state[(b * channels + c) * keep..(b * channels + c + 1) * keep].copy_from_slice(&ext[length..]);
            }
        }
        (y, new_state)
    }
}
