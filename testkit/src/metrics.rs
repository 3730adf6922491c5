//! Reading the Prometheus text exposition of a service's `/metrics` (the names and labels
//! are in runtime/src/telemetry.rs).

use std::collections::BTreeSet;

/// The value of one series, written as it is exposed (`name{label="value"}` or `name`);
/// `None` when it is not exposed.
pub fn series(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

/// Sum of the samples of counter `name` whose labels include every `labels` pair.
pub fn counter_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Base names of the series (`_bucket`, `_sum`, `_count` folded into their family). Only
/// samples count: a `# HELP` without a sample is no series for a rule or a panel to use.
pub fn metric_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if !base.is_empty() {
            names.insert(base.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP wxpay_a_total A.\n# TYPE wxpay_a_total counter\n\
        wxpay_a_total{route=\"v3\"} 3\nwxpay_a_total{route=\"v2_pay\"} 4\n\
        # HELP wxpay_described_only Never recorded.\n\
        wxpay_h_seconds_bucket{le=\"0.1\"} 1\nwxpay_h_seconds_sum 0.05\nwxpay_h_seconds_count 1\n\
        wxpay_s_seconds{quantile=\"0.5\"} 0.01\nwxpay_s_seconds_count 2\nwxpay_g 1\n\n";

    #[test]
    fn metric_names_fold_histogram_and_summary_series_and_ignore_bare_help() {
        let names: Vec<String> = metric_names(TEXT).into_iter().collect();
        assert_eq!(
            names,
            [
                "wxpay_a_total",
                "wxpay_g",
                "wxpay_h_seconds",
                "wxpay_s_seconds"
            ]
        );
    }

    #[test]
    fn a_series_is_read_whole_and_a_counter_summed_over_its_labels() {
        assert_eq!(series(TEXT, "wxpay_a_total{route=\"v3\"}"), Some(3.0));
        assert_eq!(series(TEXT, "wxpay_g"), Some(1.0));
        assert_eq!(series(TEXT, "wxpay_a_total"), None, "a whole series only");
        assert_eq!(series(TEXT, "wxpay_described_only"), None);
        assert_eq!(counter_sum(TEXT, "wxpay_a_total", &[]), 7.0);
        assert_eq!(counter_sum(TEXT, "wxpay_a_total", &[("route", "v3")]), 3.0);
        assert_eq!(counter_sum(TEXT, "wxpay_a", &[]), 0.0, "not a prefix");
    }
}
