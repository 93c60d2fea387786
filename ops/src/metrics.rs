//! Prometheus exposition on the `prometheus` crate, shared by the edge and the control plane.
//!
//! Neither binary keeps `prometheus` metric types where it counts: both count in plain integers
//! and, at scrape time, a custom [`Collector`] turns a snapshot of those numbers into metric
//! families. This module has what such a collector needs:
//!
//! - [`Families`]: the page being built, family by family in the order the page shows them, each
//!   a counter, gauge or histogram with a name, help and label names ([`Family`]) and samples
//!   from plain numbers (a histogram from per-bucket counts, its count and its sum);
//! - [`Families::descs`]: the collector's descriptors (`Collector::desc`), taken from the same
//!   families, so a name or label is written once;
//! - [`render`]: a collector's families in the text format (0.0.4) through the crate's
//!   `TextEncoder`, which also escapes label values and help;
//! - [`check_described`]: for tests, every collected family matches a descriptor.
//!
//! No `Registry`: each page has one collector, and a registry would sort the families by name
//! while the page puts what on-call reads first (capacity watermarks) first.

use std::collections::HashMap;

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric};
use prometheus::TextEncoder;

pub use prometheus::core::{Collector, Desc};
pub use prometheus::proto::{MetricFamily, MetricType};

/// The `Content-Type` of a `/metrics` page: the text format, version 0.0.4, in UTF-8.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being filled: name, type, help, label names and the samples so far.
#[derive(Debug, Clone)]
pub struct Family {
    labels: &'static [&'static str],
    family: MetricFamily,
}

impl Family {
    pub fn new(
        kind: MetricType,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Family { labels, family }
    }

    /// One counter or gauge sample; `values` are the label values in the order of the family's
    /// label names.
    pub fn sample(&mut self, values: &[&str], value: f64) -> &mut Family {
        let mut metric = self.metric(values);
        match self.family.get_field_type() {
            MetricType::COUNTER => {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            MetricType::GAUGE => {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
            other => panic!("{}: a {other:?} takes no plain sample", self.family.name()),
        }
        self.family.mut_metric().push(metric);
        self
    }

    /// One histogram from plain numbers: `buckets[i]` observations at most `bounds[i]` and above
    /// `bounds[i - 1]` (not cumulative; the exposition makes them so), `count` observations in all
    /// (those above the last bound land only in `+Inf`) and their `sum`.
    pub fn histogram(
        &mut self,
        values: &[&str],
        bounds: &[f64],
        buckets: &[u64],
        count: u64,
        sum: f64,
    ) -> &mut Family {
        assert_eq!(
            self.family.get_field_type(),
            MetricType::HISTOGRAM,
            "{} is not a histogram",
            self.family.name()
        );
        assert_eq!(bounds.len(), buckets.len(), "{}", self.family.name());
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(buckets)
            .map(|(&bound, &n)| {
                cumulative += n;
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(count);
        histogram.set_sample_sum(sum);
        let mut metric = self.metric(values);
        metric.set_histogram(histogram);
        self.family.mut_metric().push(metric);
        self
    }

    fn metric(&self, values: &[&str]) -> Metric {
        assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label values {values:?} for label names {:?}",
            self.family.name(),
            self.labels
        );
        let pairs = self
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        Metric::from_label(pairs)
    }

    /// The descriptor: name, help and label names (checked to be valid Prometheus names).
    pub fn desc(&self) -> prometheus::Result<Desc> {
        Desc::new(
            self.family.name().to_owned(),
            self.family.help().to_owned(),
            self.labels.iter().map(|l| (*l).to_owned()).collect(),
            HashMap::new(),
        )
    }
}

/// The families of one page, in the order they are added.
#[derive(Debug, Default, Clone)]
pub struct Families(Vec<Family>);

impl Families {
    pub fn new() -> Families {
        Families::default()
    }

    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> &mut Family {
        self.push(Family::new(MetricType::COUNTER, name, help, labels))
    }

    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> &mut Family {
        self.push(Family::new(MetricType::GAUGE, name, help, labels))
    }

    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> &mut Family {
        self.push(Family::new(MetricType::HISTOGRAM, name, help, labels))
    }

    fn push(&mut self, family: Family) -> &mut Family {
        self.0.push(family);
        self.0.last_mut().expect("just pushed")
    }

    /// One descriptor per family (also those without samples), for `Collector::desc`.
    ///
    /// # Panics
    /// When a name or label name is not a valid Prometheus name: they are constants in the
    /// code, so that is a bug the collector's unit tests catch.
    pub fn descs(&self) -> Vec<Desc> {
        self.0
            .iter()
            .map(|f| {
                f.desc().unwrap_or_else(|e| {
                    panic!("metric family {:?}: {e}", f.family.name());
                })
            })
            .collect()
    }

    /// Every family, also those without samples (for `Collector::collect`).
    pub fn into_families(self) -> Vec<MetricFamily> {
        self.0.into_iter().map(|f| f.family).collect()
    }
}

/// What `collector` collects, in the text format. Families without samples are left out (the
/// format has no use for them, and the encoder refuses them).
pub fn render(collector: &dyn Collector) -> String {
    let families: Vec<MetricFamily> = collector
        .collect()
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    let mut out = String::with_capacity(16 * 1024);
    if let Err(error) = TextEncoder::new().encode_utf8(&families, &mut out) {
        // Only a family without a name or samples fails, and neither gets here.
        tracing::error!(%error, "cannot encode the metrics page");
    }
    out
}

/// Checks that every family `collector` collects has a descriptor with its name and help, and
/// that every sample carries exactly the descriptor's label names; and that no two descriptors
/// share a name. For collectors' unit tests.
pub fn check_described(collector: &dyn Collector) -> Result<(), String> {
    let descs = collector.desc();
    let mut names: Vec<&str> = descs.iter().map(|d| d.fq_name.as_str()).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("two descriptors named {}", twice[0]));
    }
    for family in collector.collect() {
        let name = family.name();
        let desc = descs
            .iter()
            .find(|d| d.fq_name == name)
            .ok_or_else(|| format!("{name} is collected but not described"))?;
        if desc.help != family.help() {
            return Err(format!("{name}: help differs from its descriptor"));
        }
        for metric in family.get_metric() {
            let labels: Vec<&str> = metric.get_label().iter().map(|l| l.name()).collect();
            if labels != desc.variable_labels {
                return Err(format!(
                    "{name}: sample labels {labels:?}, described {:?}",
                    desc.variable_labels
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector over a fixed page.
    struct Fixed(Families, Vec<Desc>);

    impl Fixed {
        fn new(families: Families) -> Fixed {
            let descs = families.descs();
            Fixed(families, descs)
        }
    }

    impl Collector for Fixed {
        fn desc(&self) -> Vec<&Desc> {
            self.1.iter().collect()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            self.0.clone().into_families()
        }
    }

    fn page(families: Families) -> String {
        let collector = Fixed::new(families);
        check_described(&collector).unwrap();
        render(&collector)
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_inf_sum_and_count() {
        let mut families = Families::new();
        // Observations 1, 2, 3, 100, 5000 against bounds 1, 4, 128.
        families.histogram("x", "help", &[]).histogram(
            &[],
            &[1.0, 4.0, 128.0],
            &[1, 2, 1],
            5,
            5106.0,
        );
        assert_eq!(
            page(families),
            "# HELP x help\n# TYPE x histogram\n\
             x_bucket{le=\"1\"} 1\nx_bucket{le=\"4\"} 3\nx_bucket{le=\"128\"} 4\n\
             x_bucket{le=\"+Inf\"} 5\nx_sum 5106\nx_count 5\n"
        );
    }

    #[test]
    fn histogram_bounds_keep_their_decimals_and_labels_come_first() {
        let mut families = Families::new();
        families.histogram("lat_seconds", "h", &["core"]).histogram(
            &["0"],
            &[0.0005, 0.25],
            &[2, 0],
            2,
            0.0008,
        );
        let text = page(families);
        assert!(
            text.contains("lat_seconds_bucket{core=\"0\",le=\"0.0005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{core=\"0\",le=\"0.25\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_sum{core=\"0\"} 0.0008\n"),
            "{text}"
        );
    }

    #[test]
    fn labels_are_escaped_and_values_formatted() {
        let mut families = Families::new();
        families
            .gauge("m", "h", &["a"])
            .sample(&["q\"\\\n"], 0.25)
            .sample(&["plain"], 3.0);
        families.counter("c_total", "counted", &[]).sample(&[], 7.0);
        assert_eq!(
            page(families),
            "# HELP m h\n# TYPE m gauge\nm{a=\"q\\\"\\\\\\n\"} 0.25\nm{a=\"plain\"} 3\n\
             # HELP c_total counted\n# TYPE c_total counter\nc_total 7\n"
        );
    }

    #[test]
    fn families_without_samples_are_left_out_but_described() {
        let mut families = Families::new();
        families.gauge("empty", "nothing yet", &["level"]);
        families.gauge("one", "h", &[]).sample(&[], 1.0);
        let collector = Fixed::new(families);
        assert_eq!(collector.desc().len(), 2);
        assert_eq!(
            render(&collector),
            "# HELP one h\n# TYPE one gauge\none 1\n"
        );
    }

    #[test]
    fn a_sample_with_other_labels_than_described_is_caught() {
        struct Liar(Vec<Desc>);
        impl Collector for Liar {
            fn desc(&self) -> Vec<&Desc> {
                self.0.iter().collect()
            }
            fn collect(&self) -> Vec<MetricFamily> {
                let mut families = Families::new();
                families.gauge("g", "h", &["b"]).sample(&["1"], 1.0);
                families.into_families()
            }
        }
        let mut described = Families::new();
        described.gauge("g", "h", &["a"]);
        let err = check_described(&Liar(described.descs())).unwrap_err();
        assert!(err.contains("labels"), "{err}");
    }

    #[test]
    #[should_panic(expected = "not a valid metric name")]
    fn an_invalid_name_is_refused() {
        let mut families = Families::new();
        families.gauge("bad-name", "h", &[]);
        families.descs();
    }

    #[test]
    fn the_content_type_is_the_text_format() {
        assert!(CONTENT_TYPE.starts_with(prometheus::TEXT_FORMAT));
    }
}
