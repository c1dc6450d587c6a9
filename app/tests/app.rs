//! The whole app rendered headless on software Vulkan (egui_kittest + wgpu): it starts on the demo
//! model, a generation fills the filmstrip with every scale, a corrupt checkpoint shows the error
//! banner and the app keeps working. Snapshots live in tests/snapshots/ (UPDATE_SNAPSHOTS=1 rewrites
//! them).

use std::io::Write;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use scalewise_app::ScalewiseApp;

fn harness() -> Harness<'static, ScalewiseApp> {
    Harness::builder()
        .with_size(egui::Vec2::new(1100.0, 720.0))
        .wgpu_setup(scalewise_app::wgpu_setup())
        .build_eframe(|cc| ScalewiseApp::new(cc))
}

/// Steps the UI until the app has no work in flight (or fails after `limit`).
fn settle(harness: &mut Harness<'static, ScalewiseApp>, limit: Duration) {
    let start = Instant::now();
    loop {
        harness.step();
        if harness.state().is_idle() {
            harness.run_steps(3);
            return;
        }
        assert!(start.elapsed() < limit, "the app did not finish its work in {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Types `var` and `vae` into the path fields, presses Load files and waits for the load to end;
/// returns the banner it left, if any.
fn load_files(harness: &mut Harness<'static, ScalewiseApp>, var: &str, vae: &str, limit: Duration) -> Option<String> {
    harness.state_mut().set_model_paths(var, vae);
    harness.get_by_label("Load files").click();
    harness.step();
    settle(harness, limit);
    harness.state().banner().map(str::to_string)
}

#[test]
fn generates_on_the_demo_model_and_fills_the_filmstrip() {
    let mut harness = harness();
    settle(&mut harness, Duration::from_secs(60));
    assert!(harness.state().banner().is_none(), "{:?}", harness.state().banner());
    harness.state_mut().set_show_times(false);
    let scales = harness.state().pipeline().expect("the demo model loads").config().patch_nums.clone();
    harness.get_by_label("Generate").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(300));
    let frames = harness.state().frames();
    assert_eq!(frames.len(), scales.len(), "one filmstrip frame per scale");
    // The previews before the last are reduced: f_hat decoded at the scale's own side.
    let size = harness.state().pipeline().unwrap().image_size();
    let up = size / scales.last().unwrap();
    for (frame, side) in frames.iter().zip(&scales) {
        assert_eq!(frame.side, *side);
        assert_eq!(frame.batch, 1);
        let want = if frame.index + 1 == scales.len() { size } else { side * up };
        assert_eq!((frame.grid.width, frame.grid.height), (want, want), "scale {}", frame.index);
        assert!(frame.wall_ms > 0.0);
    }
    harness.snapshot("generated_demo");

    // Save: the final image and every scale, named by the generation's class and seed; a second
    // save keeps the first.
    let dir = std::env::temp_dir().join(format!("scalewise-app-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    harness.state_mut().set_save_dir(&dir.display().to_string());
    let first = harness.state_mut().save().expect("saved");
    assert_eq!(first, dir.join("0_red_disc_seed0.png"));
    let decoded = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()) as usize
    };
    assert_eq!(decoded(&first), harness.state().pipeline().unwrap().image_size());
    let scale_files = std::fs::read_dir(dir.join("0_red_disc_seed0")).unwrap().count();
    assert_eq!(scale_files, scales.len());
    let second = harness.state_mut().save().expect("saved again");
    assert_eq!(second, dir.join("0_red_disc_seed0_2.png"));
    assert!(first.exists() && dir.join("0_red_disc_seed0_2").is_dir());

    // A cancelled generation has no final image: Save refuses instead of writing a reduced preview
    // under the final name (and taking that name from the real result).
    assert_eq!(harness.state().top_k(), 900, "the top-k asked for, not the demo's vocabulary of 512");
    // The cancel lands between scales at a moment that depends on the machine: a few attempts,
    // cancelling later each time, until one stops with some scales but not the last.
    let mut partial = false;
    for attempt in 0..12 {
        harness.get_by_label("Generate").click();
        harness.step();
        std::thread::sleep(Duration::from_millis(25 * attempt));
        harness.state_mut().cancel();
        settle(&mut harness, Duration::from_secs(300));
        if harness.state().result_complete() || harness.state().frames().is_empty() {
            continue;
        }
        partial = true;
        assert!(harness.state_mut().save().is_none(), "a cancelled generation was saved");
        let banner = harness.state().banner().expect("a banner").to_string();
        assert!(banner.contains("stopped before its last scale"), "{banner}");
        assert!(!dir.join("0_red_disc_seed0_3.png").exists() && !dir.join("0_red_disc_seed0_3").exists());
        break;
    }
    if !partial {
        let _ = writeln!(std::io::stderr(), "SKIP the cancelled save: no cancel stopped a generation midway");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_checkpoint_shows_the_banner_and_the_app_keeps_working() {
    let dir = std::env::temp_dir().join(format!("scalewise-app-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt_var.pth");
    std::fs::write(&corrupt, b"PK\x03\x04 this is not a checkpoint").unwrap();
    let mut harness = harness();
    settle(&mut harness, Duration::from_secs(60));
    // Empty fields: what is missing, not "cannot open ''".
    harness.state_mut().set_model_paths("", " ");
    harness.get_by_label("Load files").click();
    harness.step();
    let banner = harness.state().banner().expect("an error banner").to_string();
    assert!(banner.contains("choose a VAR"), "{banner}");
    // The banner shows from the next frame on and moves the controls down.
    harness.run_steps(2);
    let path = corrupt.display().to_string();
    let banner = load_files(&mut harness, &path, &path, Duration::from_secs(60)).expect("an error banner");
    assert!(banner.contains("could not load"), "{banner}");
    #[cfg(unix)]
    {
        // A FIFO (a name ending in .pth) is refused at once: opening it used to block the load, and with
        // it every button, until some other process wrote to it.
        let fifo = dir.join("fifo_var.pth");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()), "mkfifo");
        let fifo_path = fifo.display().to_string();
        let banner =
            load_files(&mut harness, &fifo_path, &fifo_path, Duration::from_secs(20)).expect("an error banner");
        assert!(banner.contains("not a regular file"), "{banner}");
    }
    // The demo model stays loaded and still generates.
    harness.get_by_label("Generate").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(300));
    assert!(!harness.state().frames().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Picks checkpoints with the built-in file browser, loads them (a 1000-class model without names of
/// its own, so ImageNet's), then finds a class by searching its name.
#[test]
fn browse_for_checkpoints_load_them_and_search_imagenet_classes() {
    use scalewise::DType;
    use scalewise_support::synthetic::{tiny_imagenet, vae_state_dict, var_state_dict};
    let dir = std::env::temp_dir().join(format!("scalewise-app-browse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("models/readme.txt"), b"not a checkpoint").unwrap();
    let (shape, vae) = tiny_imagenet();
    var_state_dict(&shape, 1).unwrap().save_safetensors(dir.join("models/var_tiny.safetensors"), DType::F32).unwrap();
    vae_state_dict(&vae, 2).unwrap().save_safetensors(dir.join("models/vae_tiny.safetensors"), DType::F32).unwrap();

    let mut harness = harness();
    settle(&mut harness, Duration::from_secs(60));
    // The VAR field names the folder: the browser opens there and shows the folder, not the files.
    harness.state_mut().set_model_paths(&dir.display().to_string(), "");
    harness.get_by_label("Browse VAR").click();
    harness.run_steps(2);
    let listed = harness.state().browser().expect("the browser is open").listed();
    assert_eq!(listed, ["models/"]);
    harness.get_by_label("models/").click();
    harness.run_steps(2);
    let listed = harness.state().browser().unwrap().listed();
    assert_eq!(listed, ["vae_tiny.safetensors", "var_tiny.safetensors"], "checkpoints only");
    harness.get_by_label("var_tiny.safetensors").click();
    harness.run_steps(2);
    assert!(harness.state().browser().is_none(), "a pick closes the browser");
    // The VAE browser starts beside the VAR file.
    harness.get_by_label("Browse VAE").click();
    harness.run_steps(2);
    harness.get_by_label("vae_tiny.safetensors").click();
    harness.run_steps(2);
    // Compared as files, not as text: the browser shows canonical paths (plain absolute ones on Windows).
    let same_file = |field: &str, name: &str| {
        std::path::Path::new(field).canonicalize().unwrap() == dir.join("models").join(name).canonicalize().unwrap()
    };
    let (var_path, vae_path) = harness.state().model_paths();
    assert!(same_file(var_path, "var_tiny.safetensors"), "{var_path}");
    assert!(same_file(vae_path, "vae_tiny.safetensors"), "{vae_path}");

    harness.get_by_label("Load files").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(60));
    assert!(harness.state().banner().is_none(), "{:?}", harness.state().banner());
    assert_eq!(harness.state().pipeline().unwrap().config().num_classes, 1000);
    harness.get_by_label("search").click();
    harness.run_steps(2);
    harness.get_by_label("search").type_text("golden ret");
    harness.run_steps(2);
    harness.key_press(egui::Key::Enter);
    harness.run_steps(2);
    // Enter in the search field confirms the search; it does not start a generation.
    assert!(harness.state().is_idle() && harness.state().frames().is_empty());
    harness.get_by_label("207: golden retriever").click();
    harness.run_steps(2);
    assert_eq!(harness.state().class(), 207);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An M-VAR checkpoint loads through the same path fields as VAR's; the model panel names it and its
/// attention, and it generates every scale.
#[test]
fn an_mvar_checkpoint_loads_through_the_same_fields_and_is_named() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let (var, vae) = (fixtures.join("mvar/tiny_mvar_cos.pth"), fixtures.join("var/tiny_vae.pth"));
    let mut harness = harness();
    settle(&mut harness, Duration::from_secs(60));
    harness.get_by_label_contains("VAR d");
    let banner =
        load_files(&mut harness, &var.display().to_string(), &vae.display().to_string(), Duration::from_secs(60));
    assert!(banner.is_none(), "{banner:?}");
    let pipeline = harness.state().pipeline().expect("the M-VAR model loads");
    assert_eq!(pipeline.transformer.to_string(), "M-VAR d2, cosine attention");
    let scales = pipeline.config().patch_nums.len();
    harness.get_by_label_contains("M-VAR d2, cosine attention · width 64");
    harness.get_by_label("Generate").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(300));
    assert!(harness.state().banner().is_none(), "{:?}", harness.state().banner());
    assert_eq!(harness.state().frames().len(), scales, "one filmstrip frame per scale");
    assert!(harness.state().frames().iter().all(|f| f.times.mamba_ms > 0.0), "the Mamba layers are timed");
    // The Mamba column shows where the GPU times can be trusted; a CPU adapter (lavapipe) shows the
    // wall clock per scale and says why.
    if harness.state().device().is_some_and(|d| d.info().caps.is_cpu || !d.info().caps.timestamps) {
        harness.get_by_label_contains("GPU stage times not shown");
    } else {
        harness.get_by_label("mamba");
    }
}

#[test]
fn the_demo_selector_switches_between_the_built_in_var_and_mvar() {
    let mut harness = harness();
    settle(&mut harness, Duration::from_secs(60));
    assert_eq!(harness.state().pipeline().expect("the VAR demo loads").transformer.to_string(), "VAR d4");
    harness.get_by_label("demo VAR (built in)");
    harness.get_by_label("Demo M-VAR").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(60));
    assert!(harness.state().banner().is_none(), "{:?}", harness.state().banner());
    let pipeline = harness.state().pipeline().expect("the M-VAR demo loads");
    assert_eq!(pipeline.transformer.to_string(), "M-VAR d4, cosine attention");
    harness.get_by_label("demo M-VAR (built in)");
    harness.get_by_label_contains("M-VAR d4, cosine attention · width 256");
    harness.get_by_label("Demo VAR").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(60));
    assert_eq!(harness.state().pipeline().unwrap().transformer.to_string(), "VAR d4");
}

#[test]
fn the_app_opens_the_adapter_the_cli_would() {
    let egui_wgpu::WgpuSetup::CreateNew(setup) = scalewise_app::wgpu_setup() else {
        panic!("the app creates its own wgpu device");
    };
    let select = setup.native_adapter_selector.expect("the app picks its adapter itself");
    let mut descriptor = eframe::wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = eframe::wgpu::Backends::PRIMARY;
    let instance = eframe::wgpu::Instance::new(descriptor);
    let adapters = pollster::block_on(instance.enumerate_adapters(eframe::wgpu::Backends::PRIMARY));
    let chosen = select(&adapters, None).expect("an adapter").get_info();
    let device = scalewise::Device::from_env().unwrap();
    let cli = &device.info().adapter;
    assert_eq!((chosen.name.as_str(), format!("{:?}", chosen.backend)), (cli.name.as_str(), cli.backend.clone()));
    assert!(select(&[], None).is_err(), "no adapter is an error for eframe to report, not a panic");
}
