//! `cargo bench -p scalewise-app --bench ui_frames`: the app rendered headless (egui_kittest on the
//! default adapter) while it generates on the demo model. Reports the app's own CPU time per frame
//! while the worker thread generates (what could drop frames), each egui frame's CPU time (the
//! app plus egui's layout; kittest does not draw every frame), and the generation's wall clock.
//! Frames run back to back, as when a user keeps moving the mouse.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use scalewise_app::{ScalewiseApp, UiFrameTimes};

fn percentile(times: &[f64], q: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let mut harness = Harness::builder()
        .with_size(egui::Vec2::new(1100.0, 720.0))
        .wgpu_setup(scalewise_app::wgpu_setup())
        .build_eframe(|cc| ScalewiseApp::new(cc));
    let wait = |harness: &mut Harness<'static, ScalewiseApp>, limit: Duration| {
        let start = Instant::now();
        let mut frame_ms = Vec::new();
        while !harness.state().is_idle() {
            let frame = Instant::now();
            harness.step();
            frame_ms.push(frame.elapsed().as_secs_f64() * 1e3);
            assert!(start.elapsed() < limit, "no result within {limit:?}");
        }
        (start.elapsed().as_secs_f64() * 1e3, frame_ms)
    };
    wait(&mut harness, Duration::from_secs(120));
    assert!(harness.state().pipeline().is_some(), "the demo model loads: {:?}", harness.state().banner());
    let adapter = harness.state().device().map(|d| d.info().adapter.name.clone()).unwrap_or_default();
    println!("app frames during demo generation on {adapter}");
    for batch in [1usize, 4] {
        harness.state_mut().set_batch(batch);
        harness.state_mut().reset_ui_frame_times();
        harness.get_by_label("Generate").click();
        harness.step();
        let (wall_ms, frame_ms) = wait(&mut harness, Duration::from_secs(600));
        let busy = &harness.state().ui_frame_times().busy_ms;
        let busy_list: Vec<f64> = busy.iter().copied().collect();
        let (median, max) = UiFrameTimes::summary(busy).expect("frames while generating");
        println!(
            "  batch {batch}: generation {wall_ms:.0} ms over {} frames; app work per frame median {median:.2} ms, \
             p99 {:.2} ms, max {max:.2} ms; kittest step (app plus egui layout and kittest's own work) median {:.1} ms, p95 {:.1} ms",
            frame_ms.len(),
            percentile(&busy_list, 0.99),
            percentile(&frame_ms, 0.5),
            percentile(&frame_ms, 0.95),
        );
    }
}
