//! The scalewise desktop app (`cargo run --release` at the repository root).

use eframe::egui;

fn main() -> anyhow::Result<()> {
    let mut options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_title("scalewise").with_inner_size([1200.0, 780.0]),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    options.wgpu_options.wgpu_setup = scalewise_app::wgpu_setup();
    eframe::run_native("scalewise", options, Box::new(|cc| Ok(Box::new(scalewise_app::ScalewiseApp::new(cc)))))
        .map_err(|err| anyhow::anyhow!("scalewise window failed: {err}"))
}
