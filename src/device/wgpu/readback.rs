//! Staging readback: a copy into a MAP_READ buffer, mapped asynchronously.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::WgpuDevice;
use crate::device::poisoned;
use crate::error::{Error, Result};

/// A download in flight.
pub(crate) struct Readback {
    device: wgpu::Device,
    staging: wgpu::Buffer,
    /// The submission that carries the copy, and its serial number (see [`WgpuDevice::submit`]).
    submission: wgpu::SubmissionIndex,
    serial: u64,
    mapped: Arc<AtomicBool>,
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
    /// The device's lost flag: a wait on a lost device fails instead of hanging.
    lost: Arc<Mutex<Option<String>>>,
    counters: Arc<super::Counters>,
}

impl Readback {
    /// Copies the first `bytes` of `src` (a multiple of 4) into a fresh staging buffer, recorded
    /// after the pending dispatches and submitted with them, and starts mapping it.
    pub fn start(ctx: &WgpuDevice, src: &wgpu::Buffer, bytes: u64) -> Result<Self> {
        let bytes = bytes.div_ceil(4).max(1) * 4;
        let (staging, (submission, serial)) = ctx.checked("starting a readback", || {
            let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let submitted =
                ctx.submit_pending_with(|encoder| encoder.copy_buffer_to_buffer(src, 0, &staging, 0, bytes))?;
            Ok((staging, submitted))
        })?;
        let mapped = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Mutex::new(None));
        let (flag, slot) = (Arc::clone(&mapped), Arc::clone(&outcome));
        staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(result.map_err(|e| e.to_string()));
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Self {
            device: ctx.device.clone(),
            staging,
            submission,
            serial,
            mapped,
            outcome,
            lost: Arc::clone(&ctx.lost),
            counters: Arc::clone(&ctx.counters),
        })
    }

    /// Non-blocking: has the copy arrived?
    pub fn is_ready(&self) -> bool {
        let _ = self.device.poll(wgpu::PollType::Poll);
        self.mapped.load(Ordering::Acquire)
    }

    /// Waits for the copy's submission only (not for work submitted after it), so a readback started
    /// a scale earlier does not idle the GPU.
    pub fn wait(self) -> Result<Vec<u8>> {
        if !self.mapped.load(Ordering::Acquire) {
            let queued_behind = self.counters.submits.load(Ordering::Relaxed) > self.serial;
            let counter = if queued_behind { &self.counters.overlapped_waits } else { &self.counters.drains };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        while !self.mapped.load(Ordering::Acquire) {
            let lost = || self.lost.lock().ok().and_then(|reason| reason.clone());
            if let Some(reason) = lost() {
                return Err(Error::DeviceLost(reason));
            }
            let until = wgpu::PollType::Wait { submission_index: Some(self.submission.clone()), timeout: None };
            self.device.poll(until).map_err(|e| match lost() {
                Some(reason) => Error::DeviceLost(reason),
                None => Error::Readback(e.to_string()),
            })?;
        }
        if let Some(Err(e)) = self.outcome.lock().map_err(poisoned)?.take() {
            return Err(Error::Readback(e));
        }
        let bytes = {
            let view = self.staging.slice(..).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
            view.to_vec()
        };
        self.staging.unmap();
        Ok(bytes)
    }
}

/// Maps a MAP_READ buffer that already holds the data and copies `bytes` of it out.
pub(crate) fn map_and_read(ctx: &WgpuDevice, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    staging.slice(..bytes).map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    ctx.wait_idle()?;
    receiver.recv().map_err(|e| Error::Readback(e.to_string()))?.map_err(|e| Error::Readback(e.to_string()))?;
    let data = staging.slice(..bytes).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?.to_vec();
    staging.unmap();
    Ok(data)
}
