//! The scalewise desktop app: pick a class, press Generate and watch the image appear at 1x1 and
//! sharpen scale by scale. Compute and UI share one wgpu device (eframe's, opened with the optional
//! features scalewise uses); generation runs on a worker thread.

pub mod file_browser;
pub mod worker;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use eframe::egui;
use egui::{Color32, RichText, TextureHandle, TextureOptions, Vec2};
use file_browser::{BrowserAction, FileBrowser, PickTarget};
use scalewise::Device;
use scalewise::demo::DemoModel;
use scalewise::generate::{GenerateOptions, Pipeline, StageTimes};
use scalewise::image::Image;
use worker::{GenerationEvent, GenerationJob, LoadJob, ModelSource};

/// The features the compute backend uses when the adapter has them.
pub fn wanted_features() -> eframe::wgpu::Features {
    Device::wanted_features(&scalewise::DeviceOptions::default())
}

/// eframe's wgpu setup: the adapter the CLI would pick (`Device::best_adapter`: a discrete GPU
/// first, then the backend with the fast paths) among those that can show the window, a device with
/// the adapter's limits and the optional features scalewise uses (f16, subgroups, timestamps) where
/// they exist.
pub fn wgpu_setup() -> egui_wgpu::WgpuSetup {
    let mut setup = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    setup.native_adapter_selector = Some(Arc::new(|adapters, surface| {
        let shown: Vec<eframe::wgpu::Adapter> =
            adapters.iter().filter(|a| surface.is_none_or(|s| a.is_surface_supported(s))).cloned().collect();
        // The CLI's options: WGPU_BACKEND, WGPU_ADAPTER_NAME and SCALEWISE_DISABLE apply here too.
        let options = scalewise::DeviceOptions::from_env().map_err(|e| e.to_string())?;
        Device::best_adapter(&shown, &options).map(|index| shown[index].clone()).ok_or_else(|| {
            format!("none of the {} GPU adapters found both shows this window and matches WGPU_BACKEND and WGPU_ADAPTER_NAME", adapters.len())
        })
    }));
    setup.device_descriptor = Arc::new(|adapter| eframe::wgpu::DeviceDescriptor {
        label: Some("scalewise app device"),
        required_features: adapter.features() & wanted_features(),
        required_limits: adapter.limits(),
        ..Default::default()
    });
    egui_wgpu::WgpuSetup::CreateNew(setup)
}

/// One scale as shown: the decoded image of f_hat after it (the batch as one grid; before the last
/// scale a reduced preview at the scale's own token-map side), its GPU times and its wall clock.
pub struct ScaleFrame {
    pub index: usize,
    pub scales: usize,
    pub side: usize,
    pub times: StageTimes,
    /// The scale's wall clock on the generation thread, its preview included.
    pub wall_ms: f64,
    /// Images in the batch.
    pub batch: usize,
    /// What is shown and saved: the batch in a square grid.
    pub grid: Image,
    texture: TextureHandle,
}

/// What the Generate button produces.
#[derive(Default)]
enum Status {
    #[default]
    Idle,
    Loading,
    Generating,
    Done {
        wall_ms: f64,
    },
    Cancelled,
}

pub struct ScalewiseApp {
    device: Option<Device>,
    device_error: Option<String>,
    pipeline: Option<Arc<Pipeline>>,
    model: Option<ModelSource>,
    load: Option<LoadJob>,
    job: Option<GenerationJob>,
    status: Status,
    /// Shown in red at the top until dismissed.
    banner: Option<String>,
    notice: Option<String>,
    // Controls.
    class: usize,
    class_filter: String,
    /// The classes the search shows, recomputed when the search or the model changes (not per
    /// frame: ImageNet has 1000 names).
    class_ids: Vec<usize>,
    seed: u64,
    cfg: f32,
    /// The top-k asked for (900 until the slider moves), kept whatever model is loaded: each
    /// generation and the slider clamp a copy to the model's vocabulary, so a small model loaded in
    /// between does not leave a larger one sampling with its vocabulary as the top-k.
    top_k: usize,
    top_p: f32,
    smooth: bool,
    batch: usize,
    var_path: String,
    vae_path: String,
    /// The open file picker, if any.
    browser: Option<FileBrowser>,
    save_dir: String,
    // Results.
    /// File name stem for saving the frames: class and seed of the generation that made them
    /// (not of the controls, which may have changed since).
    result_stem: String,
    frames: Vec<ScaleFrame>,
    /// Whether `frames` reached the generation's last scale (its exact image): Save writes only
    /// such a result, never a cancelled or failed run's reduced preview as the "final PNG".
    frames_complete: bool,
    /// The banner a failed save raised, cleared by the next save that succeeds.
    save_error: Option<String>,
    selected: Option<usize>,
    /// Measured times vary run to run and the adapter machine to machine; snapshot tests turn both
    /// off.
    show_times: bool,
    /// How long this app's own per-frame work took (CPU, excluding egui's tessellation and the
    /// GPU's rendering), to show that generation never stalls the UI thread.
    ui_times: UiFrameTimes,
}

/// The app's per-frame CPU time while a load or generation runs.
#[derive(Debug, Clone, Default)]
pub struct UiFrameTimes {
    /// Milliseconds per busy frame (the last 4096).
    pub busy_ms: VecDeque<f64>,
    /// (median, max) of `busy_ms`, taken when the last load or generation ended (the panel shows
    /// this rather than sorting the samples every frame).
    pub last_summary: Option<(f64, f64)>,
}

impl UiFrameTimes {
    const KEEP: usize = 4096;

    fn record(&mut self, ms: f64) {
        if self.busy_ms.len() == Self::KEEP {
            self.busy_ms.pop_front();
        }
        self.busy_ms.push_back(ms);
    }

    fn end_of_work(&mut self) {
        self.last_summary = Self::summary(&self.busy_ms);
    }

    /// (median, max) of `times` in ms, or None when empty.
    pub fn summary(times: &VecDeque<f64>) -> Option<(f64, f64)> {
        let mut sorted: Vec<f64> = times.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some((*sorted.get(sorted.len() / 2)?, *sorted.last()?))
    }
}

impl ScalewiseApp {
    /// The app on eframe's wgpu device (or a device of its own when eframe renders otherwise),
    /// loading the demo model.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let (device, device_error) = match cc.wgpu_render_state.as_ref() {
            Some(rs) => {
                (Some(Device::from_wgpu(&rs.adapter.get_info(), rs.device.clone(), rs.queue.clone(), false)), None)
            }
            None => match Device::from_env() {
                Ok(device) => (Some(device), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let mut app = Self {
            device,
            banner: device_error.clone(),
            device_error,
            pipeline: None,
            model: None,
            load: None,
            job: None,
            status: Status::Idle,
            notice: None,
            class: 0,
            class_filter: String::new(),
            class_ids: Vec::new(),
            seed: 0,
            cfg: 4.0,
            top_k: 900,
            top_p: 0.95,
            smooth: false,
            batch: 1,
            var_path: String::new(),
            vae_path: String::new(),
            browser: None,
            save_dir: "scalewise-output".into(),
            result_stem: String::new(),
            frames: Vec::new(),
            frames_complete: false,
            save_error: None,
            selected: None,
            show_times: true,
            ui_times: UiFrameTimes::default(),
        };
        app.load_model(&cc.egui_ctx, ModelSource::Demo(DemoModel::Var));
        app
    }

    /// True when no model load or generation is in flight.
    pub fn is_idle(&self) -> bool {
        self.load.is_none() && self.job.is_none()
    }

    /// The scales shown so far (the filmstrip).
    pub fn frames(&self) -> &[ScaleFrame] {
        &self.frames
    }

    /// Whether the filmstrip holds a whole generation (its last scale, the exact image): what Save
    /// needs.
    pub fn result_complete(&self) -> bool {
        self.frames_complete
    }

    /// The top-k asked for, before each model clamps it to its vocabulary.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// The error banner, if one is shown.
    pub fn banner(&self) -> Option<&str> {
        self.banner.as_deref()
    }

    pub fn pipeline(&self) -> Option<&Pipeline> {
        self.pipeline.as_deref()
    }

    /// The app's per-frame CPU times so far.
    pub fn ui_frame_times(&self) -> &UiFrameTimes {
        &self.ui_times
    }

    /// Forgets the per-frame times measured so far.
    pub fn reset_ui_frame_times(&mut self) {
        self.ui_times = UiFrameTimes::default();
    }

    /// Show measured times and the adapter (on by default; reproducible screenshots turn them off).
    pub fn set_show_times(&mut self, show: bool) {
        self.show_times = show;
    }

    pub fn set_model_paths(&mut self, var: &str, vae: &str) {
        self.var_path = var.into();
        self.vae_path = vae.into();
    }

    /// The VAR and VAE path fields.
    pub fn model_paths(&self) -> (&str, &str) {
        (&self.var_path, &self.vae_path)
    }

    /// The compute device (eframe's), if one opened.
    pub fn device(&self) -> Option<&Device> {
        self.device.as_ref()
    }

    /// Images per generation (shown as a grid).
    pub fn set_batch(&mut self, batch: usize) {
        self.batch = batch.max(1);
    }

    /// The class the next generation uses.
    pub fn class(&self) -> usize {
        self.class
    }

    /// The open file picker, if any.
    pub fn browser(&self) -> Option<&FileBrowser> {
        self.browser.as_ref()
    }

    /// Loads a model on a worker thread (nothing while a generation runs: the controls that call
    /// this are disabled then, and replacing the job would block the UI until its scale finished).
    pub fn load_model(&mut self, ctx: &egui::Context, source: ModelSource) {
        let Some(device) = self.device.clone() else { return };
        if self.job.is_some() {
            return;
        }
        let ctx = ctx.clone();
        self.load = Some(LoadJob::spawn(device, source, move || ctx.request_repaint()));
        self.status = Status::Loading;
    }

    /// Starts a generation with the current controls (nothing while one is in flight: Cancel first).
    pub fn generate(&mut self, ctx: &egui::Context) {
        let Some(pipeline) = self.pipeline.clone() else { return };
        if self.job.is_some() {
            return;
        }
        let config = pipeline.config();
        let options = GenerateOptions {
            labels: vec![self.class.min(config.num_classes - 1); self.batch.max(1)],
            seed: self.seed,
            cfg: self.cfg,
            top_k: self.top_k.min(config.vocab),
            top_p: self.top_p,
            smooth: self.smooth,
            preview_every_scale: true,
            // The filmstrip shows every scale as it comes: the small ones at their own resolution
            // (a fraction of a full decode each), the last one exact.
            preview_reduced: true,
            ..GenerateOptions::default()
        };
        if let Err(e) = pipeline.validate(&options) {
            self.banner = Some(e.to_string());
            return;
        }
        self.frames.clear();
        self.frames_complete = false;
        self.selected = None;
        let class = options.labels[0] as usize;
        self.result_stem = format!("{class}_{}_seed{}", file_name_part(&config.class_name(class)), self.seed);
        let wake_ctx = ctx.clone();
        match GenerationJob::spawn(pipeline, options, move || wake_ctx.request_repaint()) {
            Ok(job) => {
                self.job = Some(job);
                self.status = Status::Generating;
            }
            Err(e) => self.banner = Some(format!("cannot start the generation thread: {e}")),
        }
    }

    pub fn cancel(&mut self) {
        if let Some(job) = &self.job {
            job.cancel();
        }
    }

    /// The folder Save writes into.
    pub fn set_save_dir(&mut self, dir: &str) {
        self.save_dir = dir.into();
    }

    /// Writes the final image as `{class}_{name}_seed{seed}.png` and every scale into the folder of
    /// that name, inside the save folder. Earlier saves are kept: a taken name gets a `_2`, `_3`...
    /// suffix. Returns the final image's path.
    pub fn save(&mut self) -> Option<PathBuf> {
        let Some(last) = self.frames.last() else {
            self.banner = Some("nothing to save yet: generate an image first".into());
            return None;
        };
        if !self.frames_complete {
            self.banner = Some(if self.job.is_some() {
                "the generation is still running: save once its last scale is shown".into()
            } else {
                "this generation stopped before its last scale, so it has no final image to save".into()
            });
            return None;
        }
        let dir = PathBuf::from(&self.save_dir);
        let taken = |stem: &str| dir.join(stem).exists() || dir.join(format!("{stem}.png")).exists();
        let base = &self.result_stem;
        let Some(stem) =
            std::iter::once(base.clone()).chain((2..10_000).map(|i| format!("{base}_{i}"))).find(|s| !taken(s))
        else {
            self.banner = Some(format!("{} holds too many saves named {base}", dir.display()));
            return None;
        };
        let final_path = dir.join(format!("{stem}.png"));
        let result = (|| -> Result<PathBuf, String> {
            std::fs::create_dir_all(dir.join(&stem)).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            last.grid.save_png(&final_path).map_err(|e| e.to_string())?;
            for frame in &self.frames {
                let path = dir.join(&stem).join(format!("scale_{:02}_{}x{}.png", frame.index, frame.side, frame.side));
                frame.grid.save_png(&path).map_err(|e| e.to_string())?;
            }
            Ok(final_path.clone())
        })();
        match result {
            Ok(path) => {
                self.notice = Some(format!("saved {} and {} scales", path.display(), self.frames.len()));
                if self.banner.is_some() && self.banner == self.save_error.take() {
                    self.banner = None;
                }
                Some(path)
            }
            Err(e) => {
                // Both names were free (`taken`), so what exists now is this save's partial work: it
                // goes, or the next save would have to take the `_2` name.
                let _ = std::fs::remove_dir_all(dir.join(&stem));
                let _ = std::fs::remove_file(&final_path);
                self.save_error = Some(e.clone());
                self.banner = Some(e);
                None
            }
        }
    }

    fn poll_workers(&mut self, ctx: &egui::Context) {
        if let Some(result) = self.load.as_ref().and_then(LoadJob::poll) {
            let source = self.load.take().map(|l| l.source).expect("a load job");
            match result {
                Ok(pipeline) => {
                    let config = pipeline.config();
                    self.class = self.class.min(config.num_classes - 1);
                    self.class_ids = scalewise::labels::search(
                        config.class_names.as_deref().unwrap_or(&[]),
                        config.num_classes,
                        &self.class_filter,
                    );
                    self.pipeline = Some(Arc::new(pipeline));
                    self.model = Some(source);
                    self.banner = None;
                }
                Err(e) => self.banner = Some(format!("could not load {}: {e}", source.describe())),
            }
            self.status = Status::Idle;
        }
        let events = self.job.as_ref().map(GenerationJob::poll).unwrap_or_default();
        for event in events {
            match event {
                GenerationEvent::Scale { index, scales, side, times, wall_ms, images } => {
                    let grid = match Image::square_grid(&images) {
                        Ok(grid) => grid,
                        Err(e) => {
                            self.banner = Some(format!("scale {index} cannot be shown: {e}"));
                            continue;
                        }
                    };
                    let color = egui::ColorImage::from_rgb([grid.width, grid.height], &grid.rgb);
                    let texture = ctx.load_texture(format!("scale-{index}"), color, TextureOptions::NEAREST);
                    let batch = images.len();
                    self.frames.push(ScaleFrame { index, scales, side, times, wall_ms, batch, grid, texture });
                }
                GenerationEvent::Done { wall_ms } => {
                    self.status = Status::Done { wall_ms };
                    self.frames_complete = true;
                    self.job = None;
                }
                GenerationEvent::Failed(e) => {
                    self.banner = Some(format!("generation failed: {e}"));
                    self.status = Status::Idle;
                    self.job = None;
                }
                GenerationEvent::Cancelled => {
                    self.status = Status::Cancelled;
                    self.job = None;
                }
            }
        }
    }

    fn handle_input(&mut self, ctx: &egui::Context) {
        // Enter in a text field (the class search, a path, the seed) confirms that field only.
        let typing = ctx.egui_wants_keyboard_input() || self.browser.is_some();
        let (enter, save, dropped) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::Enter),
                i.modifiers.command && i.key_pressed(egui::Key::S),
                i.raw
                    .dropped_files
                    .iter()
                    .map(|f| f.path().to_path_buf())
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect::<Vec<_>>(),
            )
        });
        if enter && !typing && self.job.is_none() && self.load.is_none() {
            self.generate(ctx);
        }
        if save {
            self.save();
        }
        for path in dropped {
            // A dropped checkpoint fills the VAE field when its name says so, else the VAR field.
            let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            let target = if name.contains("vae") { PickTarget::Vae } else { PickTarget::Var };
            self.set_path_field(target, &path);
        }
    }

    /// Puts a picked or dropped file into its path field. The fields are text, so a path that is
    /// not valid Unicode would be changed by the conversion and then not found: say so instead.
    fn set_path_field(&mut self, target: PickTarget, path: &std::path::Path) {
        let Some(text) = path.to_str() else {
            self.banner =
                Some(format!("{} is not valid Unicode; rename it (or a parent folder) to load it", path.display()));
            return;
        };
        match target {
            PickTarget::Var => self.var_path = text.to_string(),
            PickTarget::Vae => self.vae_path = text.to_string(),
        }
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        ui.heading("Model");
        ui.label(self.model.as_ref().map_or("loading…".into(), ModelSource::describe));
        if let Some(pipeline) = &self.pipeline {
            let c = pipeline.config();
            // "VAR d16" or "M-VAR d24, cosine attention": the same files and fields load either.
            ui.label(
                RichText::new(format!(
                    "{} · width {} · {} heads · {} classes\n{}px · {} scales · codebook {} · {}",
                    pipeline.transformer,
                    c.width,
                    c.heads,
                    c.num_classes,
                    pipeline.image_size(),
                    c.patch_nums.len(),
                    c.vocab,
                    pipeline.transformer.dtype()
                ))
                .small(),
            );
        }
        ui.horizontal(|ui| {
            let label = ui.label("VAR");
            ui.add(egui::TextEdit::singleline(&mut self.var_path).hint_text("var_d16.pth").desired_width(150.0))
                .labelled_by(label.id)
                .on_hover_text("a VAR or an M-VAR transformer checkpoint (told apart by its keys)");
            if ui.button("Browse VAR").clicked() {
                self.browser = Some(FileBrowser::open(PickTarget::Var, &self.var_path));
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("VAE");
            ui.add(
                egui::TextEdit::singleline(&mut self.vae_path).hint_text("vae_ch160v4096z32.pth").desired_width(150.0),
            )
            .labelled_by(label.id);
            if ui.button("Browse VAE").clicked() {
                // Start beside the VAR file when the VAE field is still empty: they usually sit together.
                let start = if self.vae_path.trim().is_empty() { &self.var_path } else { &self.vae_path };
                self.browser = Some(FileBrowser::open(PickTarget::Vae, start));
            }
        });
        ui.horizontal(|ui| {
            let busy = !self.is_idle();
            if ui.add_enabled(!busy, egui::Button::new("Load files")).clicked() {
                let (var, vae) = (self.var_path.trim(), self.vae_path.trim());
                if var.is_empty() || vae.is_empty() {
                    // Not "cannot open ''": say what is missing.
                    self.banner = Some(
                        "choose a VAR (or M-VAR) checkpoint and a VAE first: Browse VAR, Browse VAE, or \
                                        type or drop their paths"
                            .into(),
                    );
                } else {
                    self.load_model(&ctx, ModelSource::Files { var: var.into(), vae: vae.into() });
                }
            }
            for model in DemoModel::ALL {
                let current = self.model.as_ref() == Some(&ModelSource::Demo(model)) && self.pipeline.is_some();
                let button = egui::Button::new(format!("Demo {}", model.family())).selected(current);
                let hover = match model {
                    DemoModel::Var => "the built-in VAR: attention over every earlier scale (KV cache)",
                    DemoModel::Mvar => "the built-in M-VAR: attention inside each scale, Mamba-2 across scales",
                };
                if ui.add_enabled(!busy, button).on_hover_text(hover).clicked() {
                    self.load_model(&ctx, ModelSource::Demo(model));
                }
            }
        });
        ui.label(RichText::new("or drop .pth / .safetensors files on the window").small().weak());
        ui.separator();

        let Some(pipeline) = self.pipeline.clone() else { return };
        let config = pipeline.config();
        ui.heading("Class");
        ui.label(RichText::new(format!("{}: {}", self.class, config.class_name(self.class))).strong());
        let search = ui.horizontal(|ui| {
            let label = ui.label("search");
            ui.add(egui::TextEdit::singleline(&mut self.class_filter).hint_text("name or number"))
                .labelled_by(label.id)
                .changed()
        });
        let names = config.class_names.as_deref().unwrap_or(&[]);
        if search.inner {
            self.class_ids = scalewise::labels::search(names, config.num_classes, &self.class_filter);
        }
        let ids = &self.class_ids;
        if ids.is_empty() {
            ui.label(RichText::new("no class matches").weak());
        }
        // Only the visible rows are laid out: ImageNet has 1000.
        let row_height = ui.spacing().interact_size.y;
        egui::ScrollArea::vertical().id_salt("classes").max_height(160.0).show_rows(
            ui,
            row_height,
            ids.len(),
            |ui, rows| {
                for &id in &ids[rows] {
                    let label = if names.is_empty() { format!("class {id}") } else { format!("{id}: {}", names[id]) };
                    if ui.selectable_label(self.class == id, label).clicked() {
                        self.class = id;
                    }
                }
            },
        );
        ui.separator();
        ui.heading("Sampling");
        ui.horizontal(|ui| {
            let label = ui.label("seed");
            ui.add(egui::DragValue::new(&mut self.seed)).labelled_by(label.id);
            if ui.button("random").clicked() {
                self.seed = random_seed();
            }
        });
        ui.add(egui::Slider::new(&mut self.cfg, 0.0..=10.0).text("cfg"));
        let mut top_k = self.top_k.min(config.vocab);
        if ui.add(egui::Slider::new(&mut top_k, 0..=config.vocab).text("top-k")).changed() {
            self.top_k = top_k;
        }
        ui.add(egui::Slider::new(&mut self.top_p, 0.0..=1.0).text("top-p"));
        ui.checkbox(&mut self.smooth, "smooth (Gumbel) mode");
        ui.add(egui::Slider::new(&mut self.batch, 1..=16).text("batch"));
        ui.separator();
        ui.horizontal(|ui| {
            if self.job.is_some() {
                if ui.button("Cancel").clicked() {
                    self.cancel();
                }
            } else if ui.add_enabled(self.load.is_none(), egui::Button::new("Generate")).clicked() {
                self.generate(&ctx);
            }
            ui.label(RichText::new("Enter").small().weak());
        });
        ui.separator();
        ui.heading("Save");
        ui.horizontal(|ui| {
            let label = ui.label("folder");
            ui.add(egui::TextEdit::singleline(&mut self.save_dir).desired_width(130.0)).labelled_by(label.id);
            if ui.add_enabled(self.frames_complete, egui::Button::new("Save")).clicked() {
                self.save();
            }
        });
        ui.label(RichText::new("Ctrl+S: the final PNG and every scale").small().weak());
    }

    fn performance(&self, ui: &mut egui::Ui) {
        ui.heading("Performance");
        if !self.show_times {
            ui.label(RichText::new("adapter and times hidden\n(reproducible snapshot)").weak());
        }
        if let Some(device) = self.device.as_ref().filter(|_| self.show_times) {
            let info = device.info();
            let f = info.caps;
            ui.label(format!("{} ({})", info.adapter.name, info.adapter.backend));
            ui.label(
                RichText::new(format!(
                    "f16 {} · subgroups {} · timestamps {}",
                    yes_no(f.f16),
                    yes_no(f.subgroups),
                    yes_no(f.timestamps)
                ))
                .small(),
            );
        } else if let Some(e) = &self.device_error {
            ui.colored_label(Color32::RED, e);
        }
        if self.frames.is_empty() || !self.show_times {
            return;
        }
        ui.separator();
        let gpu_total: f64 = self.frames.iter().map(|f| f.times.total_ms()).sum();
        let wall_total: f64 = self.frames.iter().map(|f| f.wall_ms).sum();
        // GPU timestamps stop counting once the UI renders on a CPU adapter's shared queue, and an
        // adapter without them times nothing: then only the wall clock is honest.
        let caps = self.device.as_ref().map(|d| d.info().caps);
        let distrust = match caps {
            Some(c) if !c.timestamps => Some("this adapter has no GPU timestamps"),
            Some(c) if c.is_cpu => Some("a CPU adapter's timestamps miss work while the UI draws"),
            _ if gpu_total < 0.1 * wall_total => Some("the GPU times add up to under a tenth of the wall clock"),
            _ => None,
        };
        // M-VAR's Mamba-2 layers get a column of their own; VAR has none.
        let mamba = distrust.is_none() && self.frames.iter().any(|f| f.times.mamba_ms > 0.0);
        egui::Grid::new("times").striped(true).show(ui, |ui| {
            let headers: &[&str] = match (distrust, mamba) {
                (Some(_), _) => &["scale", "wall"],
                (None, true) => &["scale", "attn/FFN", "mamba", "sampling", "preview", "wall"],
                (None, false) => &["scale", "transformer", "sampling", "preview", "wall"],
            };
            for header in headers {
                ui.label(RichText::new(*header).strong());
            }
            ui.end_row();
            for f in &self.frames {
                ui.label(format!("{} ({}²)", f.index + 1, f.side));
                if distrust.is_none() {
                    ui.label(format!("{:.1} ms", f.times.transformer_ms));
                    if mamba {
                        ui.label(format!("{:.1} ms", f.times.mamba_ms));
                    }
                    ui.label(format!("{:.1} ms", f.times.sampling_ms));
                    ui.label(format!("{:.1} ms", f.times.accumulate_ms + f.times.decode_ms));
                }
                ui.label(format!("{:.1} ms", f.wall_ms));
                ui.end_row();
            }
        });
        match distrust {
            Some(why) => {
                ui.label(format!("wall clock per scale, {wall_total:.0} ms in all"));
                ui.label(RichText::new(format!("GPU stage times not shown: {why}")).small().weak());
            }
            None => {
                ui.label(format!("GPU total {gpu_total:.1} ms of {wall_total:.0} ms wall clock over the scales"));
            }
        }
        if let Status::Done { wall_ms } = self.status {
            ui.label(format!("wall clock {wall_ms:.0} ms (start-up and the scales)"));
        }
        if let Some((median, max)) = self.ui_times.last_summary {
            ui.label(
                RichText::new(format!("UI thread per frame while busy: median {median:.2} ms, max {max:.1} ms"))
                    .small(),
            )
            .on_hover_text("the app's own work each frame (not egui's drawing): generation runs on a worker thread");
        }
    }

    fn viewer(&mut self, ui: &mut egui::Ui) {
        let status = match &self.status {
            Status::Idle if self.pipeline.is_none() => "no model loaded".to_string(),
            Status::Idle => "press Generate (or Enter)".to_string(),
            Status::Loading => "loading the model…".to_string(),
            Status::Generating => format!("generating… {} scales so far", self.frames.len()),
            Status::Done { wall_ms } if self.show_times => format!("done in {wall_ms:.0} ms"),
            Status::Done { .. } => "done".to_string(),
            Status::Cancelled => "cancelled".to_string(),
        };
        ui.label(status);
        let shown = self.selected.or(self.frames.len().checked_sub(1));
        let strip_height = 96.0;
        if let Some(frame) = shown.and_then(|i| self.frames.get(i)) {
            let time = if self.show_times { format!(", {:.1} ms", frame.wall_ms) } else { String::new() };
            ui.label(
                RichText::new(format!(
                    "scale {}/{}, {} x {} tokens{time}",
                    frame.index + 1,
                    frame.scales,
                    frame.side,
                    frame.side
                ))
                .strong(),
            );
            let room = ui.available_size() - Vec2::new(0.0, strip_height + 24.0);
            let size = frame.texture.size_vec2();
            let scale = (room.x / size.x).min(room.y / size.y).max(0.1);
            ui.add(egui::Image::new((frame.texture.id(), size * scale)));
        }
        if !self.frames.is_empty() {
            ui.separator();
            egui::ScrollArea::horizontal().id_salt("filmstrip").show(ui, |ui| {
                ui.horizontal(|ui| {
                    for (i, frame) in self.frames.iter().enumerate() {
                        let size = frame.texture.size_vec2();
                        let thumb = size * (strip_height / size.y.max(1.0));
                        let button = egui::Button::image(egui::Image::new((frame.texture.id(), thumb)))
                            .selected(shown == Some(i));
                        if ui
                            .add(button)
                            .on_hover_text(format!("scale {} ({}x{})", i + 1, frame.side, frame.side))
                            .clicked()
                        {
                            self.selected = Some(i);
                        }
                    }
                });
            });
        }
    }
}

/// `name` as part of a file name: letters and digits kept (lowercased), runs of anything else
/// turned into one '_' ("Labrador retriever" -> "labrador_retriever").
fn file_name_part(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

fn yes_no(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.finish() % 1_000_000
}

impl eframe::App for ScalewiseApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let frame_start = std::time::Instant::now();
        let busy = !self.is_idle();
        let ctx = ui.ctx().clone();
        self.poll_workers(&ctx);
        self.handle_input(&ctx);
        egui::Panel::top("banner").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong("scalewise");
                ui.label("next-scale generation on any GPU");
                if let Some(notice) = &self.notice {
                    ui.label(RichText::new(notice).small());
                }
            });
            if let Some(banner) = self.banner.clone() {
                ui.horizontal(|ui| {
                    ui.colored_label(Color32::from_rgb(220, 50, 50), format!("Error: {banner}"));
                    if ui.small_button("dismiss").clicked() {
                        self.banner = None;
                    }
                });
            }
        });
        egui::Panel::left("controls").default_size(280.0).show(ui, |ui| {
            egui::ScrollArea::vertical().id_salt("controls-scroll").show(ui, |ui| self.controls(ui));
        });
        egui::Panel::right("performance").default_size(250.0).show(ui, |ui| self.performance(ui));
        egui::CentralPanel::default().show(ui, |ui| self.viewer(ui));
        if let Some(browser) = &mut self.browser {
            match browser.show(&ctx) {
                BrowserAction::None => {}
                BrowserAction::Closed => self.browser = None,
                BrowserAction::Picked(target, path) => {
                    self.set_path_field(target, &path);
                    self.browser = None;
                }
            }
        }
        if !self.is_idle() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
        if busy {
            self.ui_times.record(frame_start.elapsed().as_secs_f64() * 1e3);
            if self.is_idle() {
                self.ui_times.end_of_work();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::file_name_part;

    #[test]
    fn class_names_become_file_name_parts() {
        assert_eq!(file_name_part("Labrador retriever"), "labrador_retriever");
        assert_eq!(file_name_part("jack-o'-lantern"), "jack_o_lantern");
        assert_eq!(file_name_part("red_disc"), "red_disc");
        assert_eq!(file_name_part("../etc/passwd"), "etc_passwd");
        assert_eq!(file_name_part("207"), "207");
    }
}
