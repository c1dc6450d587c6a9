//! Adapter choice: a discrete GPU first, then integrated, virtual, software; among adapters of one kind
//! the one with more of the features the fast kernels use, then Vulkan, Metal, DX12, GL in that order.
//! One GPU is often listed twice: on Windows through Vulkan and DX12, where DX12 without DXC on the
//! PATH has no f16 and no subgroups, and only Vulkan has cooperative matrices and the pipeline cache;
//! GL (llvmpipe, say) has no f16, no subgroups and only 16 storage buffers per stage.

use crate::device::{BackendChoice, DeviceOptions};
use crate::error::{Error, Result};

/// What `scalewise info` shows of an adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub vendor_id: u32,
    pub device_id: u32,
    /// The cooperative-matrix configurations the adapter lists ("16x16x16 f16 -> f32"), whether or
    /// not the device uses them; empty where there are none, on CUDA, and for a device opened
    /// elsewhere ([`crate::Device::from_wgpu`]).
    pub cooperative_matrices: Vec<String>,
}

impl AdapterSummary {
    pub(crate) fn from_info(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor_id: info.vendor,
            device_id: info.device,
            cooperative_matrices: Vec::new(),
        }
    }
}

fn backends_for(choice: BackendChoice) -> wgpu::Backends {
    match choice {
        BackendChoice::Auto | BackendChoice::Cuda | BackendChoice::CudaCpu => wgpu::Backends::all(),
        BackendChoice::Vulkan => wgpu::Backends::VULKAN,
        BackendChoice::Metal => wgpu::Backends::METAL,
        BackendChoice::Dx12 => wgpu::Backends::DX12,
        BackendChoice::Gl => wgpu::Backends::GL,
    }
}

/// The adapter features that put kernels on their fast paths: f16 storage, subgroups (row sums
/// through shuffles, more query rows per thread), cooperative matrices (matmul, attention and conv on
/// the matrix units) and the persistent pipeline cache (the first image without driver compiles).
fn fast_path_features(options: &DeviceOptions) -> wgpu::Features {
    let mut features = super::wanted_features(options) - wgpu::Features::TIMESTAMP_QUERY;
    if options.allow_cooperative_matrix {
        features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    }
    features
}

/// Higher is better: a primary backend before GL (GL is probed only where no primary adapter
/// exists), then the kind of device, then how many of the `fast` features the adapter has, then the
/// backend (no two backends tie, so neither does one GPU listed twice).
fn adapter_rank(
    device_type: wgpu::DeviceType,
    backend: wgpu::Backend,
    features: wgpu::Features,
    fast: wgpu::Features,
) -> (bool, u8, usize, u8) {
    let primary = backend != wgpu::Backend::Gl;
    let device = match device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let backend = match backend {
        wgpu::Backend::Vulkan => 4,
        wgpu::Backend::Metal => 3,
        wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    (primary, device, (features & fast).iter().count(), backend)
}

/// The index of the best-ranked of `ranks`; the first listed among equals (two identical GPUs).
fn best<R: Ord>(ranks: impl IntoIterator<Item = R>) -> Option<usize> {
    ranks.into_iter().enumerate().max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i))).map(|(i, _)| i)
}

/// The index of the best of `adapters` for the kernels under `options` (see the module's docs): among
/// those of the backend and with the name `options` ask for, the first listed among equals; `None`
/// when none is left.
pub(crate) fn best_adapter(adapters: &[wgpu::Adapter], options: &DeviceOptions) -> Option<usize> {
    let fast = fast_path_features(options);
    let wanted_backends = backends_for(options.backend);
    let wanted_name = options.adapter_name.as_ref().map(|n| n.to_lowercase());
    let ranks: Vec<_> = adapters
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let info = a.get_info();
            let named = wanted_name.as_ref().is_none_or(|n| info.name.to_lowercase().contains(n.as_str()));
            (named && wanted_backends.contains(wgpu::Backends::from(info.backend)))
                .then(|| (i, adapter_rank(info.device_type, info.backend, a.features(), fast)))
        })
        .collect();
    best(ranks.iter().map(|&(_, rank)| rank)).map(|k| ranks[k].0)
}

pub(crate) async fn select_adapter(options: &DeviceOptions) -> Result<wgpu::Adapter> {
    let backends = backends_for(options.backend);
    // Auto probes the primary backends first and GL only when none of them has a matching adapter:
    // GL's probe on a headless Linux machine (EGL through Wayland) prints "error: XDG_RUNTIME_DIR is
    // invalid" to stderr, and a machine with Vulkan never needs it.
    let passes = if backends == wgpu::Backends::all() {
        vec![wgpu::Backends::PRIMARY, wgpu::Backends::all() - wgpu::Backends::PRIMARY]
    } else {
        vec![backends]
    };
    let mut seen = Vec::new();
    for pass in passes {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = pass;
        let instance = wgpu::Instance::new(descriptor);
        let adapters = instance.enumerate_adapters(pass).await;
        seen.extend(adapters.iter().map(|a| {
            let info = a.get_info();
            format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
        }));
        let mut adapters = adapters;
        if let Some(index) = best_adapter(&adapters, options) {
            return Ok(adapters.swap_remove(index));
        }
    }
    let found = if seen.is_empty() { "none".to_string() } else { seen.join(", ") };
    let mut filter = String::new();
    if options.backend != BackendChoice::Auto {
        filter.push_str(&format!(" for backend {:?}", options.backend));
    }
    if let Some(name) = &options.adapter_name {
        filter.push_str(&format!(" whose name contains {name:?}"));
    }
    Err(Error::NoAdapter { filter, found })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::{Backend, DeviceType, Features};

    fn fast() -> Features {
        fast_path_features(&DeviceOptions::default())
    }

    #[test]
    fn one_gpu_listed_twice_runs_on_the_backend_with_the_fast_paths() {
        // Windows: the GPU through Vulkan (f16, subgroups, cooperative matrices, pipeline cache) and
        // through DX12 with FXC (none of them). wgpu lists Vulkan first; `max_by_key` took the last.
        let vulkan = adapter_rank(DeviceType::DiscreteGpu, Backend::Vulkan, fast(), fast());
        let dx12 = adapter_rank(DeviceType::DiscreteGpu, Backend::Dx12, Features::empty(), fast());
        assert_eq!(best([vulkan, dx12]), Some(0));
        assert_eq!(best([dx12, vulkan]), Some(1));
        // DX12 with DXC has f16 and subgroups, still fewer than Vulkan's.
        let dx12_dxc =
            adapter_rank(DeviceType::DiscreteGpu, Backend::Dx12, Features::SHADER_F16 | Features::SUBGROUP, fast());
        assert_eq!(best([vulkan, dx12_dxc]), Some(0));
        // Where Vulkan lacks them, the backend with more fast paths wins.
        let bare_vulkan = adapter_rank(DeviceType::DiscreteGpu, Backend::Vulkan, Features::SUBGROUP, fast());
        assert_eq!(best([bare_vulkan, dx12_dxc]), Some(1));
        // With equal features, the backend decides: Vulkan, Metal, DX12, GL.
        let same = Features::SHADER_F16 | Features::SUBGROUP;
        let ranks = [Backend::Gl, Backend::Dx12, Backend::Metal, Backend::Vulkan]
            .map(|b| adapter_rank(DeviceType::DiscreteGpu, b, same, fast()));
        assert_eq!(best(ranks), Some(3));
    }

    #[test]
    fn the_kind_of_device_comes_before_its_features() {
        let discrete = adapter_rank(DeviceType::DiscreteGpu, Backend::Dx12, Features::empty(), fast());
        let integrated = adapter_rank(DeviceType::IntegratedGpu, Backend::Vulkan, fast(), fast());
        let cpu = adapter_rank(DeviceType::Cpu, Backend::Vulkan, fast(), fast());
        assert_eq!(best([cpu, integrated, discrete]), Some(2));
        assert_eq!(best([cpu, integrated]), Some(1));
        assert_eq!(best(Vec::<(bool, u8, usize, u8)>::new()), None);
        // GL only where no primary backend has an adapter: a discrete GPU through GL does not win
        // over a software Vulkan adapter, as the CLI's passes decide.
        let gl_discrete = adapter_rank(DeviceType::DiscreteGpu, Backend::Gl, fast(), fast());
        assert_eq!(best([gl_discrete, cpu]), Some(1));
        // Two identical GPUs: the first listed.
        assert_eq!(best([discrete, discrete]), Some(0));
    }

    #[test]
    fn features_turned_off_do_not_count() {
        let options = DeviceOptions { allow_f16: false, allow_cooperative_matrix: false, ..Default::default() };
        let fast = fast_path_features(&options);
        assert!(!fast.contains(Features::SHADER_F16) && !fast.contains(Features::EXPERIMENTAL_COOPERATIVE_MATRIX));
        assert!(fast.contains(Features::SUBGROUP | Features::PIPELINE_CACHE));
        assert!(!fast.contains(Features::TIMESTAMP_QUERY), "profiling is not a fast path");
        // Vulkan with f16 only against DX12 with subgroups: f16 no longer counts, so DX12 wins.
        let vulkan = adapter_rank(DeviceType::DiscreteGpu, Backend::Vulkan, Features::SHADER_F16, fast);
        let dx12 = adapter_rank(DeviceType::DiscreteGpu, Backend::Dx12, Features::SUBGROUP, fast);
        assert_eq!(best([vulkan, dx12]), Some(1));
    }
}
