//! Named host tensors (a state_dict) and strict key/shape validation for the model builders.

use std::collections::BTreeMap;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A tensor in host memory, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Parameters by their PyTorch state_dict names.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    tensors: BTreeMap<String, HostTensor>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, shape: &[usize], data: Vec<f32>) -> Result<()> {
        let key = key.into();
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::ShapeMismatch {
                op: "StateDict::insert",
                lhs: shape.to_vec(),
                rhs: vec![data.len()],
                detail: format!("{key}: the shape and the number of values disagree"),
            });
        }
        self.tensors.insert(key, HostTensor { shape: shape.to_vec(), data });
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Checks that the keys under `prefix` are exactly `expected` (name relative to the prefix, shape;
    /// `None` for an optional key) and reports every problem at once.
    pub fn check(&self, prefix: &str, expected: &[(&str, Vec<usize>, bool)]) -> Result<()> {
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        for (name, shape, required) in expected {
            let key = format!("{prefix}{name}");
            match self.tensors.get(&key) {
                None if *required => missing.push(key),
                None => {}
                Some(t) if &t.shape != shape => misshaped.push((key, shape.clone(), t.shape.clone())),
                Some(_) => {}
            }
        }
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .filter(|k| !expected.iter().any(|(name, _, _)| **k == format!("{prefix}{name}")))
            .cloned()
            .collect();
        if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
            return Ok(());
        }
        Err(Error::Weights { prefix: prefix.to_string(), missing, unexpected, misshaped })
    }

    /// The tensor under `key`, or a Weights error naming it.
    pub fn require(&self, prefix: &str, name: &str) -> Result<&HostTensor> {
        let key = format!("{prefix}{name}");
        self.tensors.get(&key).ok_or_else(|| Error::Weights {
            prefix: prefix.to_string(),
            missing: vec![key],
            unexpected: Vec::new(),
            misshaped: Vec::new(),
        })
    }

    /// Uploads `prefix + name` as `dtype`, reshaped to `shape` (same element count).
    pub fn upload(&self, device: &Device, prefix: &str, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.require(prefix, name)?;
        Tensor::from_f32(device, shape, &t.data, dtype)
    }
}

pub(crate) fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    misshaped: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut text = String::new();
    if !missing.is_empty() {
        text.push_str(&format!(" missing {}.", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        text.push_str(&format!(" unexpected {}.", unexpected.join(", ")));
    }
    for (key, want, got) in misshaped {
        text.push_str(&format!(" {key} has shape {got:?}, expected {want:?}."));
    }
    text
}
