//! Background work: generation runs on its own thread, scale by scale, and sends every scale to the
//! UI the moment it exists; model files load on a thread too. The UI thread never waits on the GPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use scalewise::Device;
use scalewise::demo::DemoModel;
use scalewise::generate::{GenerateOptions, Pipeline, StageTimes};
use scalewise::image::Image;

/// What a generation reports, in order: every scale, then `Done`, `Failed` or `Cancelled`.
pub enum GenerationEvent {
    /// `wall_ms`: the scale's wall clock on the generation thread (its preview decode included).
    Scale {
        index: usize,
        scales: usize,
        side: usize,
        times: StageTimes,
        wall_ms: f64,
        images: Vec<Image>,
    },
    Done {
        wall_ms: f64,
    },
    Failed(String),
    Cancelled,
}

/// A generation in flight. Dropping it cancels it and waits for the current scale to finish, so a
/// window closed mid-generation leaves no GPU work behind.
pub struct GenerationJob {
    cancel: Arc<AtomicBool>,
    events: Receiver<GenerationEvent>,
    thread: Option<JoinHandle<()>>,
}

impl GenerationJob {
    /// Starts generating; `wake` is called after every event (the UI's repaint request).
    pub fn spawn(
        pipeline: Arc<Pipeline>,
        options: GenerateOptions,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, events) = channel();
        let flag = Arc::clone(&cancel);
        let thread = std::thread::Builder::new()
            .name("scalewise-generate".into())
            .spawn(move || run_generation(&pipeline, &options, &flag, &tx, &wake))?;
        Ok(Self { cancel, events, thread: Some(thread) })
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Events that arrived since the last call.
    pub fn poll(&self) -> Vec<GenerationEvent> {
        self.events.try_iter().collect()
    }
}

impl Drop for GenerationJob {
    fn drop(&mut self) {
        self.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_generation(
    pipeline: &Pipeline,
    options: &GenerateOptions,
    cancel: &AtomicBool,
    tx: &Sender<GenerationEvent>,
    wake: &dyn Fn(),
) {
    let send = |event| {
        let _ = tx.send(event);
        wake();
    };
    let started = std::time::Instant::now();
    let mut generation = match pipeline.start(options) {
        Ok(generation) => generation,
        Err(e) => return send(GenerationEvent::Failed(e.to_string())),
    };
    while !generation.is_done() {
        if cancel.load(Ordering::Relaxed) {
            return send(GenerationEvent::Cancelled);
        }
        let scale_started = std::time::Instant::now();
        match generation.step() {
            Ok(step) => send(GenerationEvent::Scale {
                index: step.index,
                scales: step.scales,
                side: step.side,
                times: step.times,
                wall_ms: scale_started.elapsed().as_secs_f64() * 1e3,
                images: step.images.unwrap_or_default(),
            }),
            Err(e) => return send(GenerationEvent::Failed(e.to_string())),
        }
    }
    send(GenerationEvent::Done { wall_ms: started.elapsed().as_secs_f64() * 1e3 });
}

/// Which model to load.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// A demo model built into scalewise (VAR or M-VAR).
    Demo(DemoModel),
    Files {
        var: PathBuf,
        vae: PathBuf,
    },
}

impl ModelSource {
    /// The name its pipelines are recorded under (see `Device::prewarm_pipelines`).
    fn workload(&self, device: &Device) -> String {
        let dtype = device.preferred_float();
        match self {
            ModelSource::Demo(model) => model.workload(dtype),
            ModelSource::Files { var, vae } => Pipeline::workload(var, vae, dtype),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ModelSource::Demo(model) => format!("demo {} (built in)", model.family()),
            // Both files: an error names the one that failed, the banner the pair it came from.
            ModelSource::Files { var, vae } => {
                let name = |p: &std::path::Path| {
                    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
                };
                format!("{} + {}", name(var), name(vae))
            }
        }
    }
}

/// Loads a model on a thread (official checkpoints take seconds to read).
pub struct LoadJob {
    pub source: ModelSource,
    result: Receiver<Result<Pipeline, String>>,
}

impl LoadJob {
    pub fn spawn(device: Device, source: ModelSource, wake: impl Fn() + Send + 'static) -> Self {
        let (tx, result) = channel();
        let what = source.clone();
        std::thread::spawn(move || {
            // The pipelines this model used in an earlier session compile on background threads
            // while its weights load.
            let _prewarm = device.prewarm_pipelines(&what.workload(&device));
            let loaded = match &what {
                ModelSource::Demo(model) => model.pipeline(&device, None),
                ModelSource::Files { var, vae } => Pipeline::load(&device, var, vae, None),
            };
            let _ = tx.send(loaded.map_err(|e| e.to_string()));
            wake();
        });
        Self { source, result }
    }

    /// The result once the load has finished.
    pub fn poll(&self) -> Option<Result<Pipeline, String>> {
        self.result.try_recv().ok()
    }
}
