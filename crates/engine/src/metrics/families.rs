//! Registering `sglang:` families: every handle is created with the family's name prefixed,
//! its constant labels, and registered on the engine's registry in one call.

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// The engine's registry, for creating and registering families.
#[derive(Clone, Copy)]
pub(crate) struct Families<'a>(pub(crate) &'a Registry);

type Labels<'l> = &'l [(&'l str, &'l str)];

impl Families<'_> {
    /// `sglang:{name}` with constant `labels`.
    pub(crate) fn opts(&self, name: &str, help: &str, labels: Labels<'_>) -> Opts {
        let mut o = Opts::new(format!("sglang:{name}"), help);
        for (k, v) in labels {
            o = o.const_label(*k, *v);
        }
        o
    }

    pub(crate) fn register<C: Collector + Clone + 'static>(&self, c: C) -> Result<C, String> {
        self.0
            .register(Box::new(c.clone()))
            .map_err(|e| e.to_string())?;
        Ok(c)
    }

    pub(crate) fn counter(
        &self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
    ) -> Result<IntCounter, String> {
        self.register(
            IntCounter::with_opts(self.opts(name, help, labels)).map_err(|e| e.to_string())?,
        )
    }

    pub(crate) fn igauge(
        &self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
    ) -> Result<IntGauge, String> {
        self.register(
            IntGauge::with_opts(self.opts(name, help, labels)).map_err(|e| e.to_string())?,
        )
    }

    pub(crate) fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
    ) -> Result<Gauge, String> {
        self.register(Gauge::with_opts(self.opts(name, help, labels)).map_err(|e| e.to_string())?)
    }

    pub(crate) fn hist(
        &self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        buckets: &[f64],
    ) -> Result<Histogram, String> {
        let o = HistogramOpts::from(self.opts(name, help, labels)).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(o).map_err(|e| e.to_string())?)
    }

    pub(crate) fn hist_vec(
        &self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        buckets: Vec<f64>,
        label: &str,
    ) -> Result<HistogramVec, String> {
        let o = HistogramOpts::from(self.opts(name, help, labels)).buckets(buckets);
        self.register(HistogramVec::new(o, &[label]).map_err(|e| e.to_string())?)
    }

    /// A counter with one variable label, its series for `values` created at 0.
    pub(crate) fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        label: &str,
        values: &[&str],
    ) -> Result<IntCounterVec, String> {
        let c = IntCounterVec::new(self.opts(name, help, labels), &[label])
            .map_err(|e| e.to_string())?;
        for v in values {
            c.with_label_values(&[v]);
        }
        self.register(c)
    }
}
