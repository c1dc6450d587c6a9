//! Elementwise ops: add and mul (the right operand may repeat over the left's leading dimensions, as
//! a bias does), GELU (tanh form) and SiLU.

use super::{check_operand, dispatch_elements, index_u32, shape_error, variant_for};
use crate::device::launch::Kernel;
use crate::error::Result;
use crate::shaders::ELEMENTWISE;
use crate::tensor::Tensor;

fn binary(op: &'static str, entry: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
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
    let variant = variant_for(a, &ELEMENTWISE, op)?;
    let out = Tensor::empty(a.device(), a.shape(), a.dtype())?;
    let n = index_u32(op, "elements", a.numel())?;
    let kernel = Kernel { family: &ELEMENTWISE, entry, variant, constants: &[] };
    dispatch_elements(
        a,
        &kernel,
        &[a.bind("a", false), b.bind("b", false), out.bind("out", true)],
        &[n, b.numel().max(1) as u32],
        a.numel(),
    )?;
    Ok(out)
}

fn unary(op: &'static str, x: &Tensor) -> Result<Tensor> {
    let variant = variant_for(x, &ELEMENTWISE, op)?;
    let out = Tensor::empty(x.device(), x.shape(), x.dtype())?;
    let n = index_u32(op, "elements", x.numel())?;
    let kernel = Kernel { family: &ELEMENTWISE, entry: op, variant, constants: &[] };
    dispatch_elements(
        x,
        &kernel,
        &[x.bind("x", false), x.bind("x", false), out.bind("out", true)],
        &[n, 1],
        x.numel(),
    )?;
    Ok(out)
}

/// a + b, with b repeating over a's leading dimensions (b's shape = a trailing part of a's).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", "add", a, b)
}

/// a * b, with b repeating over a's leading dimensions.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", "mul", a, b)
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

    pub fn mul(a: &[f32], b: &[f32]) -> Vec<f64> {
        a.iter().enumerate().map(|(i, &x)| x as f64 * b[i % b.len()] as f64).collect()
    }

    pub fn gelu_tanh(x: &[f32]) -> Vec<f64> {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        x.iter()
            .map(|&x| {
                let x = x as f64;
                0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
            })
            .collect()
    }

    pub fn silu(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&x| x as f64 / (1.0 + (-(x as f64)).exp())).collect()
    }
}
