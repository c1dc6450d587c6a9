//! Adapter choice: a discrete GPU first, then integrated, virtual, software; Vulkan/Metal/DX12 before
//! GL at equal rank (GL llvmpipe has no f16, no subgroups and only 16 storage buffers per stage).

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

/// Higher is better.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    (device, backend)
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
    let wanted_name = options.adapter_name.as_ref().map(|n| n.to_lowercase());
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
        let best = adapters
            .into_iter()
            .filter(|a| match &wanted_name {
                Some(name) => a.get_info().name.to_lowercase().contains(name.as_str()),
                None => true,
            })
            .max_by_key(|a| adapter_rank(&a.get_info()));
        if let Some(best) = best {
            return Ok(best);
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
