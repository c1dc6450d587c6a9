//! Desktop preview of coarse-to-fine generation with scalewise.
//!
//! For now this is only the shell: an eframe window (wgpu renderer) that reports which adapter
//! eframe picked. The progressive generator view arrives with the VAR issue.

use eframe::egui;

/// What the window shows about the GPU that eframe renders with.
struct AdapterLine {
    name: String,
    backend: String,
    device_type: String,
    driver: String,
}

struct ScalewiseApp {
    /// `None` when eframe started without a wgpu render state (should not happen with
    /// `Renderer::Wgpu`, but the UI says so rather than panicking).
    adapter: Option<AdapterLine>,
}

impl ScalewiseApp {
    fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let adapter = cc.wgpu_render_state.as_ref().map(|render_state| {
            let info = render_state.adapter.get_info();
            let driver = if info.driver_info.is_empty() {
                info.driver.clone()
            } else {
                format!("{} ({})", info.driver, info.driver_info)
            };
            AdapterLine {
                name: info.name.clone(),
                backend: info.backend.to_string(),
                device_type: format!("{:?}", info.device_type),
                driver,
            }
        });
        Self { adapter }
    }
}

impl eframe::App for ScalewiseApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::CentralPanel::default().show(ui, |ui| {
            ui.heading("scalewise");
            ui.label("Cross-vendor GPU compute backend (WGSL on wgpu) for next-scale image generators.");
            ui.separator();
            match &self.adapter {
                Some(adapter) => {
                    ui.label(format!("Adapter: {}", adapter.name));
                    ui.label(format!("Backend: {}", adapter.backend));
                    ui.label(format!("Device type: {}", adapter.device_type));
                    if !adapter.driver.is_empty() {
                        ui.label(format!("Driver: {}", adapter.driver));
                    }
                }
                None => {
                    ui.label("No wgpu render state: eframe is not rendering through wgpu.");
                }
            }
            ui.separator();
            ui.label("The progressive (coarse-to-fine) generator arrives with the VAR issue.");
        });
    }
}

fn main() -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_title("scalewise").with_inner_size([640.0, 360.0]),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native("scalewise", options, Box::new(|cc| Ok(Box::new(ScalewiseApp::new(cc)))))
        .map_err(|err| anyhow::anyhow!("scalewise window failed: {err}"))
}
