//! A stable-Rust mutation fuzzer for what reads untrusted files: `StateDict::from_bytes` (safetensors
//! and torch.save zips, through the pickle machine) and the model configuration inference
//! (`VarConfig::infer`, `VqVaeConfig::infer`). No coverage feedback (that needs nightly's
//! sanitizer-coverage); instead the mutations know the formats: besides byte-level flips, splices and
//! interesting integers, a torch zip's `data.pkl` is mutated and re-zipped with valid CRCs, a
//! safetensors header is mutated with its length field kept true, and state dicts that parse are
//! mutated at the level of keys, shapes and metadata before the inference runs.
//!
//! Each execution must end in `Ok` or a typed error: a panic fails the run (the input is saved under
//! `target/fuzz-findings/`), and so does an execution whose peak heap use exceeds
//! [`memory_bound`] (64 times the input plus 32 MiB: a file expanding without limit), measured by the counting allocator below.
//!
//! CI runs it for `SCALEWISE_FUZZ_SECONDS` (default 60 s); for a long local run:
//! `SCALEWISE_FUZZ_SECONDS=3600 cargo test --release --test fuzz -- --nocapture`. The seed corpus is
//! `tests/fuzz_corpus/` (regenerate with `cargo test --test fuzz -- --ignored write_seeds`) plus the
//! committed fixtures and the bad-input corpus. `SCALEWISE_FUZZ_SEED` replays a run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use scalewise::nn::{VarConfig, VqVaeConfig};
use scalewise::weights::StateDict;
use scalewise_support::Rng;

/// Counts live heap bytes and their peak since the last [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // An allocation far beyond any bound is refused outright instead of taking the machine down;
        // the allocation error aborts the run and the log names the input being executed.
        if layout.size() > HARD_LIMIT {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// No single allocation of a loader may come near this.
const HARD_LIMIT: usize = 4 << 30;

/// The most heap one execution may add for an input of `len` bytes: the loaders' own bound (8 times
/// the file plus 1 MiB of f32 tensors), the file's records read once, and the pickle machine's
/// structures, with room to spare.
fn memory_bound(len: usize) -> usize {
    64 * len + (32 << 20)
}

fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seed inputs: the committed seed corpus, the parity fixtures' checkpoints and the bad-input corpus.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for dir in ["tests/fuzz_corpus", "tests/bad_inputs", "tests/fixtures"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else { continue };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            seeds.push((path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()));
        }
    }
    seeds
}

/// Uniform in lo..hi (lo when the range is empty).
fn draw(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + (rng.next_u64() % hi.saturating_sub(lo).max(1) as u64) as usize
}

const INTERESTING: [u64; 12] =
    [0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 32, u64::MAX];

/// Byte-level mutations: flips, interesting bytes and integers, chunk deletion, duplication,
/// insertion and truncation, and splices with another seed.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..draw(rng, 1, 5) {
        let len = data.len();
        match draw(rng, 0, 8) {
            0 if len > 0 => {
                let i = draw(rng, 0, len);
                data[i] ^= 1 << draw(rng, 0, 8);
            }
            1 if len > 0 => {
                let i = draw(rng, 0, len);
                data[i] = INTERESTING[draw(rng, 0, 6)] as u8;
            }
            2 if len >= 8 => {
                let i = draw(rng, 0, len - 7);
                let width = [1usize, 2, 4, 8][draw(rng, 0, 4)];
                let v = INTERESTING[draw(rng, 0, INTERESTING.len())].to_le_bytes();
                data[i..i + width].copy_from_slice(&v[..width]);
            }
            3 if len > 1 => {
                let a = draw(rng, 0, len);
                let b = (a + draw(rng, 1, 64)).min(len);
                data.drain(a..b);
            }
            4 if len > 1 => {
                let a = draw(rng, 0, len);
                let b = (a + draw(rng, 1, 64)).min(len);
                let chunk = data[a..b].to_vec();
                let at = draw(rng, 0, len);
                data.splice(at..at, chunk);
            }
            5 => {
                let at = draw(rng, 0, len + 1);
                let n = draw(rng, 1, 16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                data.splice(at..at, bytes);
            }
            6 if len > 0 => data.truncate(draw(rng, 0, len)),
            7 if !other.is_empty() && len > 0 => {
                let a = draw(rng, 0, other.len());
                let b = (a + draw(rng, 1, 256)).min(other.len());
                let at = draw(rng, 0, len);
                let end = (at + (b - a)).min(len);
                data.splice(at..end, other[a..b].iter().copied());
            }
            _ => {}
        }
    }
}

/// The records of a torch.save zip, or None.
fn zip_records(data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data)).ok()?;
    let mut records = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        records.push((file.name().ok()?.to_string(), bytes));
    }
    Some(records)
}

fn rezip(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in records {
        w.start_file(name.as_str(), options).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Format-aware mutation: the pickle inside a torch zip (re-zipped with valid CRCs), or a safetensors
/// header (its length field kept true); plain byte mutation otherwise.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    if draw(rng, 0, 3) == 0 {
        mutate_bytes(rng, &mut data, other);
        return data;
    }
    if seed.starts_with(b"PK")
        && let Some(mut records) = zip_records(seed)
        && !records.is_empty()
    {
        let pick = records.iter().position(|(n, _)| n.ends_with("data.pkl")).filter(|_| draw(rng, 0, 4) != 0);
        let i = pick.unwrap_or_else(|| draw(rng, 0, records.len()));
        let donor = records[draw(rng, 0, records.len())].1.clone();
        mutate_bytes(rng, &mut records[i].1, &donor);
        return rezip(&records);
    }
    if seed.len() >= 8 {
        let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
        if n > 0 && 8 + n <= seed.len() {
            let mut header = seed[8..8 + n].to_vec();
            if draw(rng, 0, 2) == 0 {
                mutate_json_numbers(rng, &mut header);
            } else {
                mutate_bytes(rng, &mut header, other);
            }
            let mut out = (header.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend_from_slice(&seed[8 + n..]);
            return out;
        }
    }
    mutate_bytes(rng, &mut data, other);
    data
}

/// Replaces one number of a JSON text by an interesting one.
fn mutate_json_numbers(rng: &mut Rng, text: &mut Vec<u8>) {
    let starts: Vec<usize> =
        (0..text.len()).filter(|&i| text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_digit())).collect();
    if starts.is_empty() {
        return;
    }
    let start = starts[draw(rng, 0, starts.len())];
    let end = (start..text.len()).find(|&i| !text[i].is_ascii_digit()).unwrap_or(text.len());
    let value = match draw(rng, 0, 3) {
        0 => INTERESTING[draw(rng, 0, INTERESTING.len())].to_string(),
        1 => draw(rng, 0, 100_000).to_string(),
        _ => "18446744073709551616".to_string(),
    };
    text.splice(start..end, value.into_bytes());
}

/// State-dict-level mutations that reach the inference with shapes and metadata no well-formed file
/// of the right size would carry: keys removed or renumbered, tensors of another rank or size
/// (bounded so the test stays fast), schedules and class names in the metadata.
fn mutate_state_dict(rng: &mut Rng, sd: &mut StateDict) {
    let keys: Vec<String> = sd.keys().map(str::to_string).collect();
    for _ in 0..draw(rng, 1, 4) {
        match draw(rng, 0, 5) {
            0 if !keys.is_empty() => {
                sd.remove(&keys[draw(rng, 0, keys.len())]);
            }
            1 if !keys.is_empty() => {
                let key = &keys[draw(rng, 0, keys.len())];
                let rank = draw(rng, 0, 5);
                let dims = [0usize, 1, 2, 3, 5, 9, 64, 1000];
                let shape: Vec<usize> = (0..rank).map(|_| dims[draw(rng, 0, dims.len())]).collect();
                let n: usize = shape.iter().product();
                if n <= 1 << 16 {
                    sd.remove(key);
                    sd.insert(key.clone(), &shape, vec![0.5; n]).unwrap();
                }
            }
            2 if !keys.is_empty() => {
                let key = &keys[draw(rng, 0, keys.len())];
                if let Some(t) = sd.remove(key) {
                    let renamed = key.replacen(|c: char| c.is_ascii_digit(), &draw(rng, 0, 40).to_string(), 1);
                    sd.insert(renamed, &t.shape, t.data).unwrap();
                }
            }
            3 => {
                let sides: Vec<String> =
                    (0..draw(rng, 0, 12)).map(|_| INTERESTING[draw(rng, 0, INTERESTING.len())].to_string()).collect();
                sd.metadata.insert("patch_nums".into(), format!("[{}]", sides.join(",")));
            }
            _ => {
                let names: Vec<String> = (0..draw(rng, 0, 12)).map(|i| format!("c{i}\u{1b}\n")).collect();
                sd.metadata.insert("class_names".into(), serde_json::to_string(&names).unwrap());
            }
        }
    }
}

/// One execution: parse, infer both configurations, and for parsed inputs a state-dict-level mutant.
/// Whether the input parsed.
fn execute(rng: &mut Rng, input: &[u8]) -> bool {
    let Ok(mut sd) = StateDict::from_bytes(input) else { return false };
    let _ = VarConfig::infer(&sd);
    let _ = VqVaeConfig::infer(&sd);
    mutate_state_dict(rng, &mut sd);
    let _ = VarConfig::infer(&sd);
    let _ = VqVaeConfig::infer(&sd);
    true
}

/// The message of the last panic caught.
static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn save_finding(kind: &str, input: &[u8]) -> PathBuf {
    let dir = root().join("target/fuzz-findings");
    std::fs::create_dir_all(&dir).unwrap();
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let path = dir.join(format!("{kind}-{hash:016x}.bin"));
    std::fs::write(&path, input).unwrap();
    path
}

#[test]
fn fuzz_loaders_and_config_inference() {
    let seconds: f64 = std::env::var("SCALEWISE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let seed: u64 = std::env::var("SCALEWISE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5CA1E);
    let seeds = seeds();
    assert!(seeds.len() >= 8, "the seed corpus is missing: {} seeds", seeds.len());
    eprintln!("fuzz: {} seeds, {seconds} s, SCALEWISE_FUZZ_SEED={seed}", seeds.len());
    // Panics are caught, saved and reported once per place, with their message.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        *LAST_PANIC.lock().unwrap() = info.to_string();
    }));
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let (mut executions, mut parsed, mut findings) = (0u64, 0u64, Vec::new());
    // Every seed once, unmutated, then mutants.
    let mut queue: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
    while started.elapsed() < budget || !queue.is_empty() {
        let input = queue.pop().unwrap_or_else(|| {
            let a = &seeds[draw(&mut rng, 0, seeds.len())].1;
            let b = &seeds[draw(&mut rng, 0, seeds.len())].1;
            mutate(&mut rng, a, b)
        });
        let mut exec_rng = Rng::new(rng.next_u64());
        let before = reset_peak();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(&mut exec_rng, &input)));
        let grown = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        executions += 1;
        parsed += u64::from(matches!(outcome, Ok(true)));
        if outcome.is_err() {
            let message = LAST_PANIC.lock().unwrap().clone();
            if !findings.iter().any(|f: &String| f.contains(&message)) {
                findings.push(format!("{message} (input: {})", save_finding("panic", &input).display()));
            }
        } else if grown > memory_bound(input.len()) {
            let path = save_finding("memory", &input);
            findings.push(format!("{grown} bytes for a {}-byte input: {}", input.len(), path.display()));
        }
        if findings.len() >= 10 {
            break;
        }
    }
    std::panic::set_hook(hook);
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz: {executions} executions in {elapsed:.1} s ({:.0}/s), {parsed} parsed as weights, {} findings",
        executions as f64 / elapsed,
        findings.len()
    );
    assert!(findings.is_empty(), "fuzz findings:\n{}", findings.join("\n"));
}

/// Writes the small seeds of `tests/fuzz_corpus/`: a tiny VAR and VQVAE of the official key names,
/// as safetensors (with metadata) and as torch.save files.
#[test]
#[ignore = "writes tests/fuzz_corpus/; run by hand"]
fn write_seeds() {
    use scalewise_support::synthetic::{VaeShape, VarShape, vae_state_dict, var_state_dict};
    use scalewise_support::torch_file::{self as p, torch_archive};
    let dir = root().join("tests/fuzz_corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let var = VarShape {
        depth: 2,
        width: 8,
        heads: 2,
        num_classes: 3,
        vocab: 4,
        cvae: 2,
        patch_nums: vec![1, 2],
        shared_adaln: false,
    };
    let vae = VaeShape { ch: 32, ch_mult: vec![1], blocks_per_level: 1, vocab: 4, cvae: 2, phi_convs: 1 };
    let var_sd = var_state_dict(&var, 1).unwrap();
    let mut vae_sd = vae_state_dict(&vae, 2).unwrap();
    // Shrink the VQVAE's data (the inference reads shapes only): keep the keys, drop to f16 below.
    vae_sd.metadata.clear();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();
    write("var.safetensors", var_sd.to_safetensors_bytes(scalewise::DType::F32).unwrap());
    write("vae.safetensors", vae_sd.to_safetensors_bytes(scalewise::DType::F16).unwrap());
    let as_pth = |sd: &StateDict, class: &str| {
        let mut entries = Vec::new();
        let mut storages = Vec::new();
        for (i, (key, t)) in sd.iter().enumerate() {
            let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
            let mut stride = vec![1i32; shape.len()];
            for d in (0..shape.len().saturating_sub(1)).rev() {
                stride[d] = stride[d + 1] * shape[d + 1];
            }
            let storage = i.to_string();
            entries.push((key.to_string(), p::tensor(class, &storage, t.data.len() as i32, 0, &shape, &stride)));
            let bytes: Vec<u8> = if class == "HalfStorage" {
                t.data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
            } else {
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            storages.push((storage, bytes));
        }
        let entries: Vec<(&str, Vec<u8>)> = entries.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let storages: Vec<(&str, Vec<u8>)> = storages.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        torch_archive(&p::dict(&entries), &storages)
    };
    write("var.pth", as_pth(&var_sd, "FloatStorage"));
    write("vae_f16.pth", as_pth(&vae_sd, "HalfStorage"));
}
