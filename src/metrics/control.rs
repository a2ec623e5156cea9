//! Histograms observed on the control plane (Redis presence batches),
//! rendered with every bucket from the start like the cores' histograms.

use std::sync::Mutex;

use super::histogram::{Histogram, PRESENCE_BATCH_BUCKETS, PRESENCE_BATCH_SECONDS_BUCKETS};
use super::{PRESENCE_BATCH, PRESENCE_BATCH_SECONDS};

static BATCH: Mutex<Option<Histogram>> = Mutex::new(None);
static BATCH_SECONDS: Mutex<Option<Histogram>> = Mutex::new(None);

fn observe(h: &Mutex<Option<Histogram>>, bounds: &'static [f64], v: f64) {
    h.lock()
        .unwrap()
        .get_or_insert_with(|| Histogram::new(bounds))
        .record(v);
}

/// One presence batch written to Redis: its size and how long it took.
pub fn presence_batch(size: usize, seconds: f64) {
    observe(&BATCH, PRESENCE_BATCH_BUCKETS, size as f64);
    observe(&BATCH_SECONDS, PRESENCE_BATCH_SECONDS_BUCKETS, seconds);
}

/// Appends the presence histograms (only with Redis presence).
pub fn render(out: &mut String) {
    let batch = BATCH.lock().unwrap().clone();
    batch
        .unwrap_or_else(|| Histogram::new(PRESENCE_BATCH_BUCKETS))
        .render(
            PRESENCE_BATCH,
            "Presence changes per pipelined Redis batch.",
            out,
        );
    let secs = BATCH_SECONDS.lock().unwrap().clone();
    secs.unwrap_or_else(|| Histogram::new(PRESENCE_BATCH_SECONDS_BUCKETS))
        .render(
            PRESENCE_BATCH_SECONDS,
            "Time to write one presence batch to Redis.",
            out,
        );
}
