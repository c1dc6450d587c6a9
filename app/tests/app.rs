//! The whole app rendered headless on software Vulkan (egui_kittest + wgpu): it starts on the demo
//! model, a generation fills the filmstrip with every scale, a corrupt checkpoint shows the error
//! banner and the app keeps working. Snapshots live in tests/snapshots/ (UPDATE_SNAPSHOTS=1 rewrites
//! them).

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

#[test]
fn generates_on_the_demo_model_and_fills_the_filmstrip() {
    let mut harness = harness();
    settle(&mut harness, Duration::from_secs(60));
    assert!(harness.state().banner().is_none(), "{:?}", harness.state().banner());
    harness.state_mut().set_show_times(false);
    let scales = harness.state().pipeline().expect("the demo model loads").var.config.patch_nums.clone();
    harness.get_by_label("Generate").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(300));
    let frames = harness.state().frames();
    assert_eq!(frames.len(), scales.len(), "one filmstrip frame per scale");
    for (frame, side) in frames.iter().zip(&scales) {
        assert_eq!(frame.side, *side);
        assert_eq!(frame.images.len(), 1);
    }
    harness.snapshot("generated_demo");
}

#[test]
fn a_corrupt_checkpoint_shows_the_banner_and_the_app_keeps_working() {
    let dir = std::env::temp_dir().join(format!("scalewise-app-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt_var.pth");
    std::fs::write(&corrupt, b"PK\x03\x04 this is not a checkpoint").unwrap();
    let mut harness = harness();
    settle(&mut harness, Duration::from_secs(60));
    let path = corrupt.display().to_string();
    harness.state_mut().set_model_paths(&path, &path);
    harness.get_by_label("Load files").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(60));
    let banner = harness.state().banner().expect("an error banner").to_string();
    assert!(banner.contains("could not load"), "{banner}");
    // The demo model stays loaded and still generates.
    harness.get_by_label("Generate").click();
    harness.step();
    settle(&mut harness, Duration::from_secs(300));
    assert!(!harness.state().frames().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
