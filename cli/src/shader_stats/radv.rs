//! A Vulkan compute-pipeline compiler on RADV's null device: Mesa's AMD driver compiles for a forced
//! GPU family (RADV_FORCE_FAMILY) without the hardware, and reports ACO's statistics per pipeline.
//!
//! The statistics are read structurally through VK_KHR_pipeline_executable_properties
//! (vkGetPipelineExecutableStatisticsKHR with VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR): RADV
//! implements it on the null device (Mesa 22.3 and later), it names each value and gives its type,
//! and it needs neither RADV_DEBUG=shaderstats nor redirecting the driver's stderr and parsing its
//! text, whose format changes between Mesa releases. wgpu cannot be used here: it cannot open a
//! device without a GPU behind it, so pipelines are created directly with `ash`.

use std::ffi::{CStr, OsString};
use std::path::PathBuf;

use ash::vk;

/// Why no statistics could be produced. The first two are the "install it" cases.
#[derive(Debug, thiserror::Error)]
pub enum RadvError {
    #[error(
        "RADV (Mesa's AMD Vulkan driver) is not installed: no radeon_icd*.json in {searched}; \
         install it with `apt-get install mesa-vulkan-drivers` (Debian/Ubuntu; it also brings lavapipe)"
    )]
    NotInstalled { searched: String },
    #[error(
        "the Vulkan loader (libvulkan.so.1) could not be loaded; install it with \
         `apt-get install libvulkan1 mesa-vulkan-drivers`"
    )]
    NoLoader(#[source] ash::LoadingError),
    #[error(
        "RADV opened no device for RADV_FORCE_FAMILY={target} (is it a GPU family this Mesa knows, \
         such as gfx1030 or gfx1100?)"
    )]
    NoDevice { target: String },
    #[error(
        "RADV does not know the GPU family {target}: --target takes a name RADV_FORCE_FAMILY accepts \
         (Mesa 22.3: gfx1100..gfx1103 for RDNA3, navi21..navi24 for RDNA2, navi10, vega10, aldebaran, ...)"
    )]
    UnknownTarget { target: String },
    #[error("RADV aborted ({status}):\n{stderr}")]
    Aborted { status: String, stderr: String },
    #[error("RADV does not offer VK_KHR_pipeline_executable_properties; its statistics cannot be read")]
    NoStatistics,
    #[error("{call} failed")]
    Vulkan {
        call: &'static str,
        #[source]
        result: vk::Result,
    },
}

fn vk_err(call: &'static str) -> impl Fn(vk::Result) -> RadvError {
    move |result| RadvError::Vulkan { call, result }
}

/// Where Vulkan ICD manifests are installed (the loader's default search path on Linux).
const ICD_DIRS: &[&str] = &["/usr/share/vulkan/icd.d", "/usr/local/share/vulkan/icd.d", "/etc/vulkan/icd.d"];

/// RADV's ICD manifest: the one for this architecture where several are installed.
pub fn find_icd() -> Result<PathBuf, RadvError> {
    find_icd_in(ICD_DIRS)
}

fn find_icd_in(dirs: &[&str]) -> Result<PathBuf, RadvError> {
    let preferred = format!("radeon_icd.{}.json", std::env::consts::ARCH);
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("radeon_icd") && name.ends_with(".json") {
                found.push((name != preferred, entry.path()));
            }
        }
    }
    found.sort();
    found.into_iter().next().map(|(_, path)| path).ok_or_else(|| RadvError::NotInstalled { searched: dirs.join(", ") })
}

/// The environment that makes the Vulkan loader see RADV alone, as a null device of `target`. Mesa
/// reads it when the instance enumerates devices, so it must be set before Vulkan is loaded.
pub fn environment(icd: &std::path::Path, target: &str) -> Vec<(&'static str, OsString)> {
    vec![
        // Both names: VK_DRIVER_FILES for loaders from 1.3.207, VK_ICD_FILENAMES for older ones. Any
        // other ICD (lavapipe, a real GPU's) stays out of the instance.
        ("VK_DRIVER_FILES", icd.as_os_str().to_owned()),
        ("VK_ICD_FILENAMES", icd.as_os_str().to_owned()),
        ("RADV_FORCE_FAMILY", target.into()),
        // Compile every pipeline afresh: nothing read from, or written to, the user's shader cache.
        ("MESA_SHADER_CACHE_DISABLE", "true".into()),
    ]
}

/// One statistic of a compiled pipeline executable, as RADV names it ("VGPRs", "Spilled SGPRs", ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Statistic {
    pub name: String,
    pub value: Value,
}

/// A statistic's value in the type the driver gave it (hashes need all 64 bits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Bool(b) => f64::from(u8::from(b)),
            Value::Int(v) => v as f64,
            Value::UInt(v) => v as f64,
            Value::Float(v) => v,
        }
    }
}

/// A compiled pipeline's statistics (RADV reports one executable for a compute pipeline).
#[derive(Debug, Clone)]
pub struct PipelineStats {
    pub subgroup_size: u32,
    pub statistics: Vec<Statistic>,
}

/// A binding the pipeline layout must declare.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub set: u32,
    pub binding: u32,
    pub uniform: bool,
}

pub struct Radv {
    // Kept alive: the loader library must outlive the instance and device.
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    executables: ash::khr::pipeline_executable_properties::Device,
    /// The device name ("AMD RADV GFX1100"), the driver's name and version ("Mesa 22.3.6").
    pub device_name: String,
    pub driver: String,
    /// The SPIR-V version the device accepts (by its Vulkan version, as wgpu chooses it).
    pub spirv_version: (u8, u8),
    /// VK_KHR_cooperative_matrix is enabled (with the Vulkan memory model at device scope, which
    /// wgpu requires for it): RADV has it for RDNA3 from Mesa 24.1, so matmul_coop's native flavour
    /// compiles there and is skipped on older drivers.
    pub cooperative_matrix: bool,
}

fn c_str(bytes: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = bytes.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Radv {
    /// Opens RADV's null device. The process runs with [`environment`] already.
    pub fn open(target: &str) -> Result<Self, RadvError> {
        // SAFETY: loading the system's Vulkan loader; its initialisation runs no code of ours.
        let entry = unsafe { ash::Entry::load() }.map_err(RadvError::NoLoader)?;
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_2);
        // SAFETY: a valid create-info; the instance is destroyed in Drop after everything made from it.
        let instance =
            unsafe { entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None) }
                .map_err(vk_err("vkCreateInstance"))?;
        match Self::open_device(entry.clone(), instance.clone(), target) {
            Ok(radv) => Ok(radv),
            Err(e) => {
                // SAFETY: nothing created from the instance survives the failed open.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    fn open_device(entry: ash::Entry, instance: ash::Instance, target: &str) -> Result<Self, RadvError> {
        // SAFETY (this function's calls): valid handles from the instance above, structures built here.
        let physical = unsafe { instance.enumerate_physical_devices() }
            .map_err(vk_err("vkEnumeratePhysicalDevices"))?
            .into_iter()
            .next()
            .ok_or_else(|| RadvError::NoDevice { target: target.to_string() })?;
        let mut driver_props = vk::PhysicalDeviceDriverProperties::default();
        let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut driver_props);
        unsafe { instance.get_physical_device_properties2(physical, &mut props) };
        let device_name = c_str(&props.properties.device_name);
        let api = props.properties.api_version;
        let driver = format!("{} {}", c_str(&driver_props.driver_name), c_str(&driver_props.driver_info));

        let extensions = unsafe { instance.enumerate_device_extension_properties(physical) }
            .map_err(vk_err("vkEnumerateDeviceExtensionProperties"))?;
        let has = |name: &CStr| extensions.iter().any(|e| e.extension_name_as_c_str() == Ok(name));
        if !has(ash::khr::pipeline_executable_properties::NAME) {
            return Err(RadvError::NoStatistics);
        }
        let mut enabled = vec![ash::khr::pipeline_executable_properties::NAME.as_ptr()];

        // The features wgpu enables for these kernels: f16 arithmetic and storage, and robust buffer
        // access 2 (so the SPIR-V carries no buffer bounds checks of its own, as wgpu emits it there).
        let mut has_f16 = vk::PhysicalDeviceVulkan11Features::default();
        let mut has_12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut has_robust = vk::PhysicalDeviceRobustness2FeaturesEXT::default();
        let mut query = vk::PhysicalDeviceFeatures2::default().push_next(&mut has_f16).push_next(&mut has_12);
        let robust2 = has(ash::ext::robustness2::NAME);
        if robust2 {
            query = query.push_next(&mut has_robust);
        }
        let coop_extension = has(ash::khr::cooperative_matrix::NAME);
        let mut has_coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
        if coop_extension {
            query = query.push_next(&mut has_coop);
        }
        unsafe { instance.get_physical_device_features2(physical, &mut query) };
        let robust_buffer_access = query.features.robust_buffer_access;
        let cooperative_matrix = coop_extension
            && has_coop.cooperative_matrix == vk::TRUE
            && has_12.vulkan_memory_model == vk::TRUE
            && has_12.vulkan_memory_model_device_scope == vk::TRUE;
        let mut f11 = vk::PhysicalDeviceVulkan11Features::default()
            .storage_buffer16_bit_access(has_f16.storage_buffer16_bit_access == vk::TRUE)
            .uniform_and_storage_buffer16_bit_access(has_f16.uniform_and_storage_buffer16_bit_access == vk::TRUE);
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default()
            .shader_float16(has_12.shader_float16 == vk::TRUE)
            .vulkan_memory_model(cooperative_matrix)
            .vulkan_memory_model_device_scope(cooperative_matrix);
        let mut coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default().cooperative_matrix(true);
        let mut executable =
            vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default().pipeline_executable_info(true);
        let mut robust = vk::PhysicalDeviceRobustness2FeaturesEXT::default()
            .robust_buffer_access2(robust2 && has_robust.robust_buffer_access2 == vk::TRUE);
        let base = vk::PhysicalDeviceFeatures::default().robust_buffer_access(robust_buffer_access == vk::TRUE);
        let mut features = vk::PhysicalDeviceFeatures2::default()
            .features(base)
            .push_next(&mut f11)
            .push_next(&mut f12)
            .push_next(&mut executable);
        if robust2 {
            enabled.push(ash::ext::robustness2::NAME.as_ptr());
            features = features.push_next(&mut robust);
        }
        if cooperative_matrix {
            enabled.push(ash::khr::cooperative_matrix::NAME.as_ptr());
            features = features.push_next(&mut coop);
        }
        let priorities = [1.0];
        let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(0).queue_priorities(&priorities)];
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&enabled)
            .push_next(&mut features);
        let device = unsafe { instance.create_device(physical, &info, None) }.map_err(vk_err("vkCreateDevice"))?;
        let executables = ash::khr::pipeline_executable_properties::Device::new(&instance, &device);
        let spirv_version = if api >= vk::API_VERSION_1_3 {
            (1, 6)
        } else if api >= vk::API_VERSION_1_2 {
            (1, 5)
        } else {
            (1, 3)
        };
        Ok(Self {
            _entry: entry,
            instance,
            device,
            executables,
            device_name,
            driver,
            spirv_version,
            cooperative_matrix,
        })
    }

    /// Creates the compute pipeline of `spirv`'s entry point `entry` (with a layout declaring
    /// `bindings`) and reads its statistics.
    pub fn compile(&self, spirv: &[u32], entry: &str, bindings: &[Binding]) -> Result<PipelineStats, RadvError> {
        let d = &self.device;
        let mut made = Made::default();
        let result = self.compile_into(spirv, entry, bindings, &mut made);
        // SAFETY: the objects were created on this device and no pipeline is in use (nothing runs).
        unsafe {
            if made.pipeline != vk::Pipeline::null() {
                d.destroy_pipeline(made.pipeline, None);
            }
            if made.layout != vk::PipelineLayout::null() {
                d.destroy_pipeline_layout(made.layout, None);
            }
            for set in made.sets {
                d.destroy_descriptor_set_layout(set, None);
            }
            if made.module != vk::ShaderModule::null() {
                d.destroy_shader_module(made.module, None);
            }
        }
        result
    }

    fn compile_into(
        &self,
        spirv: &[u32],
        entry: &str,
        bindings: &[Binding],
        made: &mut Made,
    ) -> Result<PipelineStats, RadvError> {
        let d = &self.device;
        // SAFETY (this function's calls): create-infos built here from live data; every handle made is
        // recorded in `made` and destroyed by the caller.
        made.module = unsafe { d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(spirv), None) }
            .map_err(vk_err("vkCreateShaderModule"))?;
        let sets = bindings.iter().map(|b| b.set + 1).max().unwrap_or(0);
        for set in 0..sets {
            let layout_bindings: Vec<vk::DescriptorSetLayoutBinding> = bindings
                .iter()
                .filter(|b| b.set == set)
                .map(|b| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(b.binding)
                        .descriptor_type(if b.uniform {
                            vk::DescriptorType::UNIFORM_BUFFER
                        } else {
                            vk::DescriptorType::STORAGE_BUFFER
                        })
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&layout_bindings);
            made.sets.push(
                unsafe { d.create_descriptor_set_layout(&info, None) }
                    .map_err(vk_err("vkCreateDescriptorSetLayout"))?,
            );
        }
        made.layout =
            unsafe { d.create_pipeline_layout(&vk::PipelineLayoutCreateInfo::default().set_layouts(&made.sets), None) }
                .map_err(vk_err("vkCreatePipelineLayout"))?;
        let name = std::ffi::CString::new(entry).expect("naga entry point names have no NUL");
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(made.module)
            .name(&name);
        let info = vk::ComputePipelineCreateInfo::default()
            .flags(vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR)
            .stage(stage)
            .layout(made.layout);
        made.pipeline = unsafe { d.create_compute_pipelines(vk::PipelineCache::null(), &[info], None) }
            .map_err(|(_, result)| RadvError::Vulkan { call: "vkCreateComputePipelines", result })?[0];

        let pipeline_info = vk::PipelineInfoKHR::default().pipeline(made.pipeline);
        let executables = unsafe { self.executables.get_pipeline_executable_properties(&pipeline_info) }
            .map_err(vk_err("vkGetPipelineExecutablePropertiesKHR"))?;
        let Some(props) = executables.first() else {
            return Err(RadvError::Vulkan {
                call: "vkGetPipelineExecutablePropertiesKHR",
                result: vk::Result::INCOMPLETE,
            });
        };
        let executable = vk::PipelineExecutableInfoKHR::default().pipeline(made.pipeline).executable_index(0);
        let raw = unsafe { self.executables.get_pipeline_executable_statistics(&executable) }
            .map_err(vk_err("vkGetPipelineExecutableStatisticsKHR"))?;
        let statistics = raw
            .iter()
            .map(|s| {
                // SAFETY: the union member read is the one `format` names.
                let value = unsafe {
                    match s.format {
                        vk::PipelineExecutableStatisticFormatKHR::BOOL32 => Value::Bool(s.value.b32 != vk::FALSE),
                        vk::PipelineExecutableStatisticFormatKHR::INT64 => Value::Int(s.value.i64),
                        vk::PipelineExecutableStatisticFormatKHR::UINT64 => Value::UInt(s.value.u64),
                        _ => Value::Float(s.value.f64),
                    }
                };
                Statistic { name: c_str(&s.name), value }
            })
            .collect();
        Ok(PipelineStats { subgroup_size: props.subgroup_size, statistics })
    }
}

#[derive(Default)]
struct Made {
    module: vk::ShaderModule,
    sets: Vec<vk::DescriptorSetLayout>,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
}

impl Drop for Radv {
    fn drop(&mut self) {
        // SAFETY: every object made from the device was destroyed after its pipeline was read.
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_radv_says_how_to_install_it() {
        let empty = std::env::temp_dir().join(format!("scalewise-no-icd-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = find_icd_in(&[empty.to_str().unwrap()]).unwrap_err();
        let _ = std::fs::remove_dir(&empty);
        assert!(matches!(err, RadvError::NotInstalled { .. }));
        assert!(err.to_string().contains("apt-get install mesa-vulkan-drivers"), "{err}");
    }
}
