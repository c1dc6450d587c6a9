//! The built-in demo model end to end (every kernel of the pipeline on the way): for every class,
//! images generated with fixed seeds must be recognised by a small classifier trained on the same
//! procedural data (assets/demo/classifier.safetensors, made by scripts/train_demo.py), so a wrong
//! kernel anywhere shows up as unrecognisable images. Also: the same seed gives the same image,
//! different seeds give different images.

use crate::common::{WGPU_FULL, full_device};
use scalewise::generate::{GenerateOptions, Pipeline};
use scalewise::weights::StateDict;
use scalewise::{DType, Device};

/// Seeds generated per class.
const SEEDS: [u64; 3] = [0, 1, 2];

struct Classifier {
    hidden: Option<(Vec<f32>, Vec<f32>, usize)>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    classes: usize,
}

impl Classifier {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/classifier.safetensors");
        let sd = StateDict::load(path).expect("the demo classifier loads");
        let get = |k: &str| sd.get(k).unwrap_or_else(|| panic!("classifier lacks {k}")).clone();
        let hidden = sd.get("hidden.weight").map(|w| (w.data.clone(), get("hidden.bias").data, w.shape[0]));
        let weight = get("weight");
        Classifier { hidden, classes: weight.shape[0], weight: weight.data, bias: get("bias").data }
    }

    /// Class scores of an image (3, H, W) in [0, 1]: area-averaged to 16 x 16, channel-major.
    fn scores(&self, image: &[f32], size: usize) -> Vec<f32> {
        let cell = size / 16;
        let mut x = vec![0f32; 3 * 16 * 16];
        for c in 0..3 {
            for y in 0..16 {
                for xx in 0..16 {
                    let mut sum = 0.0;
                    for dy in 0..cell {
                        for dx in 0..cell {
                            sum += image[(c * size + y * cell + dy) * size + xx * cell + dx];
                        }
                    }
                    x[(c * 16 + y) * 16 + xx] = sum / (cell * cell) as f32;
                }
            }
        }
        let layer = |w: &[f32], b: &[f32], input: &[f32], out: usize| -> Vec<f32> {
            (0..out)
                .map(|o| {
                    b[o] + w[o * input.len()..(o + 1) * input.len()].iter().zip(input).map(|(a, b)| a * b).sum::<f32>()
                })
                .collect()
        };
        let features = match &self.hidden {
            Some((w, b, n)) => layer(w, b, &x, *n).into_iter().map(|v| v.max(0.0)).collect(),
            None => x,
        };
        layer(&self.weight, &self.bias, &features, self.classes)
    }

    fn predict(&self, image: &[f32], size: usize) -> usize {
        let s = self.scores(image, size);
        (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap_or(0)
    }
}

/// Images (B, 3, H, W) in [0, 1] for `labels` with one seed.
fn generate(pipeline: &Pipeline, labels: Vec<usize>, seed: u64) -> Vec<f32> {
    let options = GenerateOptions { labels, seed, cfg: 3.5, top_k: 100, top_p: 0.9, ..Default::default() };
    let mut generation = pipeline.start(&options).unwrap();
    for step in generation.by_ref() {
        step.unwrap();
    }
    let raw = generation.decode_raw().unwrap().to_dtype(DType::F32).unwrap().to_vec_f32().unwrap();
    raw.iter().map(|v| (v.clamp(-1.0, 1.0) + 1.0) * 0.5).collect()
}

fn demo(device: &Device) -> Pipeline {
    scalewise::demo::pipeline(device, Some(DType::F32)).expect("the demo model loads")
}

#[test]
fn the_demo_model_carries_its_names_and_schedule() {
    let device = full_device();
    let pipeline = demo(device);
    let config = pipeline.config();
    let names = config.class_names.as_ref().expect("class names in the metadata");
    assert!(names.len() >= 10 && names.len() == config.num_classes);
    assert!(config.patch_nums.len() >= 8, "{:?}", config.patch_nums);
    assert!(pipeline.image_size() >= 64);
    for (id, name) in names.iter().enumerate() {
        assert_eq!(config.resolve_class(name).unwrap(), id);
    }
}

#[test]
fn every_class_is_recognised_in_generated_images() {
    let classifier = Classifier::load();
    // One device: the kernels' portable variants are covered by the parity tests, and this test is
    // about the model as a whole.
    let (device_name, device) = (WGPU_FULL, full_device());
    let pipeline = demo(device);
    let config = pipeline.config();
    assert_eq!(classifier.classes, config.num_classes);
    let size = pipeline.image_size();
    let plane = 3 * size * size;
    let classes: Vec<usize> = (0..config.num_classes).collect();
    let mut correct = vec![0usize; config.num_classes];
    for seed in SEEDS {
        let images = generate(&pipeline, classes.clone(), seed);
        for (class, image) in images.chunks_exact(plane).enumerate() {
            correct[class] += (classifier.predict(image, size) == class) as usize;
        }
    }
    let report: Vec<String> =
        classes.iter().map(|&c| format!("{}: {}/{}", config.class_name(c), correct[c], SEEDS.len())).collect();
    let report = report.join(", ");
    eprintln!("{device_name}: recognised {report}");
    // A broken kernel anywhere gives unrecognisable images (chance is 1 in 10); the trained model's
    // own samples are recognised about 9 times in 10 (see BENCHMARKS.md).
    let total: usize = correct.iter().sum();
    let images = SEEDS.len() * classes.len();
    assert!(total * 10 >= images * 8, "{device_name}: only {total} of {images} generated images recognised ({report})");
    for &c in &classes {
        // Checkerboard is the demo model's weak class: 14 of 32 PyTorch samples are recognised
        // (BENCHMARKS.md), so three seeds miss it entirely about one time in six on another
        // device's rounding; only the total counts it.
        if config.class_name(c) != "checkerboard" {
            assert!(correct[c] > 0, "{device_name}: class {} never recognised ({report})", config.class_name(c));
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_image_and_other_seeds_differ() {
    let device = full_device();
    let pipeline = demo(device);
    let a = generate(&pipeline, vec![1], 42);
    let b = generate(&pipeline, vec![1], 42);
    let c = generate(&pipeline, vec![1], 43);
    assert_eq!(a, b, "same seed, same image");
    let differing = a.iter().zip(&c).filter(|(x, y)| (*x - *y).abs() > 1e-3).count();
    assert!(
        differing > a.len() / 20,
        "different seeds should give different images ({differing} of {} values differ)",
        a.len()
    );
}
