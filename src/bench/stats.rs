//! Latency histograms and the CSV rows the fabric benchmark prints.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The CSV header, exactly as `fabric_pingpong` prints it.
pub const CSV_HEADER: &str = "provider,payload_bytes,iterations,p50_ns,p99_ns,p999_ns";

/// Round-trip (or copy) times of one (mode, size) pair, in nanoseconds, with 3 significant
/// digits from 1 ns to 100 s. Recording never allocates.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Latencies {
        let hist = Histogram::new_with_bounds(1, 100_000_000_000, 3)
            .expect("static histogram bounds are valid");
        Latencies { hist }
    }

    /// Records one sample (clamped to the histogram's range).
    #[inline]
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1) in ns; 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    /// Merges another histogram into this one (never average percentiles: merge histograms).
    pub fn merge(&mut self, other: &Latencies) {
        self.hist
            .add(&other.hist)
            .expect("histograms with equal bounds merge");
    }

    /// The histogram in HDR's V2 wire format, to send it to another process (e.g. gathered
    /// from MPI ranks) and merge it there.
    pub fn to_bytes(&self) -> Vec<u8> {
        use hdrhistogram::serialization::Serializer;
        let mut out = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&self.hist, &mut out)
            .expect("serialising into memory cannot fail");
        out
    }

    /// A histogram from [`Latencies::to_bytes`]; `None` when the bytes are not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Latencies> {
        let hist: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut &bytes[..])
            .ok()?;
        let mut l = Latencies::new();
        l.hist.add(&hist).ok()?;
        Some(l)
    }

    /// The CSV row of these samples.
    pub fn row(&self, provider: &str, payload_bytes: usize) -> Row {
        Row {
            provider: provider.to_string(),
            payload_bytes,
            iterations: self.count(),
            p50_ns: self.quantile_ns(0.50),
            p99_ns: self.quantile_ns(0.99),
            p999_ns: self.quantile_ns(0.999),
        }
    }
}

/// One line of the benchmark's CSV: the fields in [`CSV_HEADER`] order (written with serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// Mode name: `shm`, `tcp`, `verbs`, `shm-raw`, `tcp-raw` or `memcpy`.
    pub provider: String,
    /// Bytes moved each way per round trip (or per copy for `memcpy`).
    pub payload_bytes: usize,
    /// Measured iterations (warm-up excluded).
    pub iterations: u64,
    /// Median in ns.
    pub p50_ns: u64,
    /// 99th percentile in ns.
    pub p99_ns: u64,
    /// 99.9th percentile in ns.
    pub p999_ns: u64,
}

fn find<'a>(rows: &'a [Row], provider: &str, size: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.provider == provider && r.payload_bytes == size && r.iterations > 0)
}

/// The human summary printed after the CSV: ratios measured in this run.
///
/// * `shm / shm-raw`, `tcp / tcp-raw` and `ofi / ofi-raw`: ratio of p50 round trips, per size present in both;
/// * shm bandwidth at the largest size: `2 × payload / p50 round trip` (one copy each way),
///   against `payload / p50 copy time` of `memcpy` at the same size.
pub fn summary(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for (layer, floor) in [("shm", "shm-raw"), ("tcp", "tcp-raw"), ("ofi", "ofi-raw")] {
        let mut sizes: Vec<usize> = rows
            .iter()
            .filter(|r| r.provider == layer)
            .map(|r| r.payload_bytes)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes {
            if let (Some(a), Some(b)) = (find(rows, layer, size), find(rows, floor, size)) {
                out.push(format!(
                    "{layer}/{floor} p50 at {size} B: {:.2}x ({} ns vs {} ns)",
                    ratio(a.p50_ns, b.p50_ns),
                    a.p50_ns,
                    b.p50_ns
                ));
            }
        }
    }
    for mode in ["shm", "shm-raw"] {
        let largest = rows
            .iter()
            .filter(|r| r.provider == mode && find(rows, "memcpy", r.payload_bytes).is_some())
            .map(|r| r.payload_bytes)
            .max();
        if let Some(size) = largest.filter(|&s| s > 0) {
            let (a, m) = (
                find(rows, mode, size).expect("filtered"),
                find(rows, "memcpy", size).expect("filtered"),
            );
            let bw = gbps(2 * size, a.p50_ns);
            let mbw = gbps(size, m.p50_ns);
            out.push(format!(
                "{mode} bandwidth at {size} B: {bw:.1} GB/s (2 x payload / p50 RTT) vs memcpy {mbw:.1} GB/s: {:.2} of memcpy",
                bw / mbw
            ));
        }
    }
    out
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / (b.max(1)) as f64
}

/// Bytes per nanosecond = GB/s.
fn gbps(bytes: usize, ns: u64) -> f64 {
    bytes as f64 / ns.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_csv() {
        let mut l = Latencies::new();
        for i in 1..=1000u64 {
            l.record(Duration::from_nanos(i * 10));
        }
        let r = l.row("shm", 64);
        assert_eq!(r.iterations, 1000);
        assert!((4990..=5010).contains(&r.p50_ns), "{r:?}");
        assert!((9890..=9910).contains(&r.p99_ns), "{r:?}");
        let header: Vec<&str> = CSV_HEADER.split(',').collect();
        let mut w = super::super::csv_rows::RowWriter::new(Vec::new(), &header, "test").unwrap();
        w.row(&r).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert_eq!(line.split(',').count(), header.len());
        assert!(line.starts_with("shm,64,1000,"), "{line}");
    }

    #[test]
    fn histograms_survive_the_wire_and_merge_exactly() {
        let (mut a, mut b) = (Latencies::new(), Latencies::new());
        for i in 1..=500u64 {
            a.record(Duration::from_nanos(i * 100));
            b.record(Duration::from_nanos(100_000 + i));
        }
        let back = Latencies::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(back.count(), 500);
        assert_eq!(back.quantile_ns(0.5), a.quantile_ns(0.5));
        let mut merged = Latencies::from_bytes(&b.to_bytes()).unwrap();
        merged.merge(&back);
        assert_eq!(merged.count(), 1000);
        assert_eq!(merged.quantile_ns(0.25), a.quantile_ns(0.5));
        assert!(Latencies::from_bytes(b"not a histogram").is_none());
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let r = Latencies::new().row("tcp", 1);
        assert_eq!((r.iterations, r.p50_ns, r.p999_ns), (0, 0, 0));
    }

    #[test]
    fn summary_has_ratios_and_bandwidth() {
        let row = |p: &str, s, p50| Row {
            provider: p.into(),
            payload_bytes: s,
            iterations: 10,
            p50_ns: p50,
            p99_ns: p50,
            p999_ns: p50,
        };
        let rows = vec![
            row("shm-raw", 64, 100),
            row("shm", 64, 150),
            row("shm", 1 << 20, 100_000),
            row("memcpy", 1 << 20, 50_000),
            row("tcp-raw", 64, 6000),
            row("tcp", 64, 9000),
        ];
        let s = summary(&rows).join("\n");
        assert!(s.contains("shm/shm-raw p50 at 64 B: 1.50x"), "{s}");
        assert!(s.contains("tcp/tcp-raw p50 at 64 B: 1.50x"), "{s}");
        // 2 MiB / 100 us = 20.97 GB/s, memcpy 1 MiB / 50 us = 20.97 GB/s
        assert!(s.contains("of memcpy"), "{s}");
        assert!(s.contains("1.00 of memcpy"), "{s}");
    }
}
