//! Elementwise ops: add and mul (the right operand may repeat over the left's leading dimensions, as
//! a bias does; add may also stack its result several times), GELU (tanh form) and SiLU.

use super::{check_operand, elements, float_dtype, index_u32, launch, shape_error};
use crate::error::{Error, Result};
use crate::kernels::{Constants, ElementwiseParams, Family};
use crate::tensor::Tensor;

/// a (op) b with b repeating over a's leading dimensions, the result stacked `copies` times along
/// the first dimension.
fn binary(op: &'static str, entry: &'static str, a: &Tensor, b: &Tensor, copies: usize) -> Result<Tensor> {
    check_operand(op, a, b)?;
    let trailing = b.shape().len() <= a.shape().len() && a.shape().ends_with(b.shape());
    if !trailing || (b.numel() == 0 && a.numel() != 0) {
        return Err(shape_error(
            op,
            a,
            b,
            "the right operand's shape must equal the trailing dimensions of the left's",
        ));
    }
    let mut shape = a.shape().to_vec();
    if copies != 1 {
        match shape.first_mut() {
            Some(first) if copies > 0 => {
                *first = first.checked_mul(copies).ok_or_else(|| Error::InvalidArgument {
                    op,
                    msg: format!("{copies} copies of a tensor of shape {:?} overflow", a.shape()),
                })?
            }
            _ => {
                return Err(Error::InvalidArgument {
                    op,
                    msg: format!(
                        "{copies} copies of a tensor of shape {:?}: need at least 1 and a dimension",
                        a.shape()
                    ),
                });
            }
        }
    }
    let dtype = float_dtype(op, a)?;
    let out = Tensor::empty(a.device(), &shape, dtype)?;
    let params = ElementwiseParams {
        n: index_u32(op, "elements", out.numel())?,
        rhs_n: b.numel().max(1) as u32,
        lhs_n: a.numel().max(1) as u32,
    };
    launch(
        a,
        Family::Elementwise,
        entry,
        dtype,
        &Constants::new(Family::Elementwise),
        &[a.arg("a"), b.arg("b"), out.arg_mut("out")],
        &params,
        elements(out.numel()),
    )?;
    Ok(out)
}

fn unary(op: &'static str, x: &Tensor) -> Result<Tensor> {
    let dtype = float_dtype(op, x)?;
    let out = Tensor::empty(x.device(), x.shape(), dtype)?;
    let n = index_u32(op, "elements", x.numel())?;
    let params = ElementwiseParams { n, rhs_n: 1, lhs_n: n.max(1) };
    launch(
        x,
        Family::Elementwise,
        op,
        dtype,
        &Constants::new(Family::Elementwise),
        &[x.arg("x"), x.arg("x"), out.arg_mut("out")],
        &params,
        elements(x.numel()),
    )?;
    Ok(out)
}

/// a + b, with b repeating over a's leading dimensions (b's shape = a trailing part of a's).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", "add", a, b, 1)
}

/// a + b (b repeating over a's leading dimensions), stacked `copies` times along the first dimension:
/// `concat([a + b; copies], 0)` in one kernel (VAR's scale input for both CFG halves).
pub fn add_repeat(a: &Tensor, b: &Tensor, copies: usize) -> Result<Tensor> {
    binary("add_repeat", "add", a, b, copies)
}

/// a * b, with b repeating over a's leading dimensions.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", "mul", a, b, 1)
}

/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), PyTorch's `gelu(approximate="tanh")`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    unary("gelu_tanh", x)
}

/// x * sigmoid(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary("silu", x)
}

/// Float64 references.
pub mod reference {
    pub fn add(a: &[f32], b: &[f32]) -> Vec<f64> {
        a.iter().enumerate().map(|(i, &x)| x as f64 + b[i % b.len()] as f64).collect()
    }

    /// concat([a + b; copies], 0).
    pub fn add_repeat(a: &[f32], b: &[f32], copies: usize) -> Vec<f64> {
        add(a, b).repeat(copies)
    }

    pub fn mul(a: &[f32], b: &[f32]) -> Vec<f64> {
        a.iter().enumerate().map(|(i, &x)| x as f64 * b[i % b.len()] as f64).collect()
    }

    pub fn gelu_tanh(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&x| gelu_tanh_f64(x as f64)).collect()
    }

    pub fn gelu_tanh_f64(x: f64) -> f64 {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
    }

    pub fn silu(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&x| x as f64 / (1.0 + (-(x as f64)).exp())).collect()
    }
}
