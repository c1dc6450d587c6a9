//! Per-dispatch timing. With TIMESTAMP_QUERY every dispatch's compute pass writes a begin and an end
//! timestamp; without it each dispatch is bracketed by waits and timed on the host clock (which
//! includes submission overhead, and says so in [`TimingSource`]).

use std::time::Duration;

use super::WgpuDevice;
use crate::error::{Error, Result};

/// How many dispatches fit in the query set before it is read back and reused.
const DISPATCHES_PER_BATCH: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingSource {
    GpuTimestamps,
    WallClock,
}

#[derive(Debug, Clone)]
pub struct DispatchTiming {
    /// `family[variant]::entry`.
    pub label: String,
    pub nanoseconds: f64,
    pub source: TimingSource,
}

struct TimestampQueries {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    pending_labels: Vec<String>,
    period_ns: f64,
}

pub(crate) struct Profiler {
    timestamps: Option<TimestampQueries>,
    done: Vec<DispatchTiming>,
}

impl Profiler {
    pub fn new(ctx: &WgpuDevice) -> Result<Self> {
        let timestamps = if ctx.info.caps.timestamps {
            let bytes = DISPATCHES_PER_BATCH as u64 * 2 * 8;
            Some(ctx.checked("creating the timestamp query set", || {
                Ok(TimestampQueries {
                    query_set: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("dispatch timestamps"),
                        ty: wgpu::QueryType::Timestamp,
                        count: DISPATCHES_PER_BATCH * 2,
                    }),
                    resolve: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("timestamp resolve"),
                        size: bytes,
                        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    }),
                    staging: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("timestamp readback"),
                        size: bytes,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    }),
                    pending_labels: Vec::new(),
                    period_ns: ctx.queue.get_timestamp_period() as f64,
                })
            })?)
        } else {
            None
        };
        Ok(Self { timestamps, done: Vec::new() })
    }

    /// Reserves the begin/end query pair for the next dispatch; `None` means wall-clock timing.
    pub fn timestamp_slot(&mut self, ctx: &WgpuDevice, label: &str) -> Result<Option<u32>> {
        let Some(queries) = self.timestamps.as_mut() else {
            return Ok(None);
        };
        if queries.pending_labels.len() as u32 == DISPATCHES_PER_BATCH {
            let batch = read_batch(ctx, queries)?;
            self.done.extend(batch);
        }
        let queries = self.timestamps.as_mut().expect("checked above");
        queries.pending_labels.push(label.to_string());
        Ok(Some(queries.pending_labels.len() as u32 - 1))
    }

    pub fn timestamp_writes(&self, slot: u32) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        self.timestamps.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
            query_set: &q.query_set,
            beginning_of_pass_write_index: Some(slot * 2),
            end_of_pass_write_index: Some(slot * 2 + 1),
        })
    }

    /// Dispatches recorded so far (timed or still waiting for their timestamps).
    pub fn recorded(&self) -> usize {
        self.done.len() + self.timestamps.as_ref().map_or(0, |q| q.pending_labels.len())
    }

    pub fn record_wall_clock(&mut self, label: &str, elapsed: Duration) {
        self.done.push(DispatchTiming {
            label: label.to_string(),
            nanoseconds: elapsed.as_secs_f64() * 1e9,
            source: TimingSource::WallClock,
        });
    }

    pub fn finish(mut self, ctx: &WgpuDevice) -> Result<Vec<DispatchTiming>> {
        if let Some(queries) = self.timestamps.as_mut() {
            let batch = read_batch(ctx, queries)?;
            self.done.extend(batch);
        }
        Ok(self.done)
    }
}

fn read_batch(ctx: &WgpuDevice, queries: &mut TimestampQueries) -> Result<Vec<DispatchTiming>> {
    let count = queries.pending_labels.len() as u32;
    if count == 0 {
        return Ok(Vec::new());
    }
    let bytes = count as u64 * 16;
    ctx.flush_pending()?;
    ctx.checked("resolving timestamps", || {
        let mut encoder =
            ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("timestamps") });
        encoder.resolve_query_set(&queries.query_set, 0..count * 2, &queries.resolve, 0);
        encoder.copy_buffer_to_buffer(&queries.resolve, 0, &queries.staging, 0, bytes);
        ctx.submit(encoder.finish());
        Ok(())
    })?;
    let raw = super::readback::map_and_read(ctx, &queries.staging, bytes)?;
    let ticks: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect();
    if ticks.len() < 2 * count as usize {
        return Err(Error::Readback(format!("{} timestamps came back for {count} dispatches", ticks.len())));
    }
    let timings = queries
        .pending_labels
        .drain(..)
        .enumerate()
        .map(|(i, label)| DispatchTiming {
            label,
            nanoseconds: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * queries.period_ns,
            source: TimingSource::GpuTimestamps,
        })
        .collect();
    Ok(timings)
}
