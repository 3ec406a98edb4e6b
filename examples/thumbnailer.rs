//! The thumbnailer client: thumbnails of a directory of JPEG/PNG images made by rfaas workers
//! (`jobs/thumbnailer`, function `thumbnail`), several calls in flight per worker, against the
//! same work done locally with rayon on the client's cores, in the same run.
//!
//! ```sh
//! target/release/rfaas local-cluster start --run-dir /tmp/rfaas
//! cargo build --release -p rfaas-thumbnailer --example thumbnailer
//! target/release/examples/thumbnailer --cluster /tmp/rfaas/cluster.json \
//!     --library target/release/libthumbnailer.so --input /tmp/photos --generate 40 --size-kb 100 \
//!     --output /tmp/thumbs --workers 2 --in-flight 2 --csv /tmp/thumbs.csv
//! ```
//!
//! Writes `<output>/<name>.thumb.jpg` per image, one CSV row per image and run
//! ([`rfaas::bench::batch::BatchRow`]: mode remote/local, latency_ns, ...), and prints images
//! per second for both runs and the per-image overhead (p50 remote − p50 local). The batch logic
//! is [`rfaas::bench::batch`]; the thumbnail and the generated pictures are the thumbnailer
//! crate's ([`thumbnailer::make_thumbnail`], [`thumbnailer::generate`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use rfaas::bench::batch::{self, BatchRun, BATCH_CSV_HEADER};
use rfaas::bench::csv_rows::RowWriter;
use rfaas::client::{AllocationSpec, ClientOptions, Cluster};
use rfaas::rdma::{Fabric, FabricUser};

/// Thumbnails of a directory of images through rfaas, against rayon on the client's cores.
#[derive(Parser, Debug)]
#[command(name = "thumbnailer")]
struct Args {
    /// Cluster file (default: $RFAAS_CLUSTER).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// The thumbnailer function library.
    #[arg(long, default_value = "target/release/libthumbnailer.so")]
    library: PathBuf,
    /// Directory of JPEG/PNG images (every *.jpg, *.jpeg, *.png in it).
    #[arg(long)]
    input: PathBuf,
    /// First write this many synthetic photo-like JPEGs into --input (gen-<i>.jpg).
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Approximate size of each generated JPEG, KB.
    #[arg(long, default_value_t = 100)]
    size_kb: usize,
    /// Where the thumbnails go (created).
    #[arg(long)]
    output: PathBuf,
    /// Thumbnail box (the aspect ratio is kept).
    #[arg(long, default_value_t = 200)]
    width: u16,
    /// Thumbnail box (the aspect ratio is kept).
    #[arg(long, default_value_t = 200)]
    height: u16,
    /// Workers (cores) of the allocation; also the local rayon threads.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Calls in flight per worker.
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// Per-image CSV rows (remote and local runs).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Seconds one call may take.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

fn main() -> anyhow::Result<()> {
    rfaas::logging::init("warn");
    let args = Args::parse();
    if args.generate > 0 {
        std::fs::create_dir_all(&args.input)
            .with_context(|| format!("creating {}", args.input.display()))?;
        for i in 0..args.generate {
            let jpeg = thumbnailer::generate::jpeg_of_size(i as u64, args.size_kb * 1000);
            std::fs::write(args.input.join(format!("gen-{i:04}.jpg")), jpeg)?;
        }
    }
    let (names, images) = read_images(&args.input)?;
    if images.is_empty() {
        bail!(
            "no *.jpg, *.jpeg or *.png in {} (try --generate N)",
            args.input.display()
        );
    }
    let inputs: Vec<Vec<u8>> = images
        .iter()
        .map(|img| thumbnailer::with_header(args.width, args.height, img))
        .collect();
    let cluster = Cluster::open(args.cluster.as_deref())?;
    let remote = cluster.provider.run(Remote {
        cluster: &cluster,
        args: &args,
        inputs: &inputs,
    })??;
    let local = batch::run_local(&inputs, args.workers as usize, |input| {
        thumbnailer::make_thumbnail(input).map_err(|e| e.to_string())
    })
    .map_err(anyhow::Error::msg)?;

    std::fs::create_dir_all(&args.output)?;
    let (mut written, mut same, mut app_errors) = (0, 0, Vec::new());
    for ((item, name), local_item) in remote.items.iter().zip(&names).zip(&local.items) {
        let out = item
            .output
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        match thumbnailer::decode_output(out) {
            Ok(jpeg) => {
                std::fs::write(args.output.join(format!("{name}.thumb.jpg")), jpeg)?;
                written += 1;
                same += usize::from(local_item.output.as_deref() == Ok(jpeg));
            }
            Err(e) => app_errors.push(format!("{name}: {e}")),
        }
    }
    if let Some(path) = &args.csv {
        let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        let mut w = RowWriter::new(file, &BATCH_CSV_HEADER, &path.display().to_string())?;
        let workers = args.workers as usize;
        for row in remote
            .rows("remote", workers, args.in_flight, &inputs)
            .into_iter()
            .chain(local.rows("local", workers, 1, &inputs))
        {
            w.row(&row)?;
        }
        w.finish()?;
    }
    let avg_kb = images.iter().map(Vec::len).sum::<usize>() as f64 / images.len() as f64 / 1e3;
    let (r, l) = (remote.latencies(), local.latencies());
    println!(
        "thumbnailer: {} images (average {avg_kb:.0} KB) -> {} thumbnails in {} ({same} identical to the local ones)",
        images.len(),
        written,
        args.output.display()
    );
    let line = |what: &str, run: &BatchRun, lat: &rfaas::bench::Latencies| {
        println!(
            "  {what:<36} {:7.1} images/s  p50 {:8.2} ms  p99 {:8.2} ms",
            run.per_second(),
            lat.quantile_ns(0.5) as f64 / 1e6,
            lat.quantile_ns(0.99) as f64 / 1e6
        );
    };
    line(
        &format!(
            "rfaas, {} workers x {} in flight:",
            args.workers, args.in_flight
        ),
        &remote,
        &r,
    );
    line(
        &format!("local, {} rayon threads:", args.workers),
        &local,
        &l,
    );
    println!(
        "  per-image overhead (p50 remote - p50 local): {:.2} ms",
        (r.quantile_ns(0.5) as f64 - l.quantile_ns(0.5) as f64) / 1e6
    );
    for e in &app_errors {
        eprintln!("  error: {e}");
    }
    if !app_errors.is_empty() {
        bail!("{} images failed", app_errors.len());
    }
    Ok(())
}

/// The files of `dir` ending in .jpg, .jpeg or .png, sorted by name: names and bytes.
fn read_images(dir: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<u8>>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    paths.sort();
    let names = paths
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let bytes = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    Ok((names, bytes))
}

/// The remote run, over whatever provider the cluster speaks.
struct Remote<'a> {
    cluster: &'a Cluster,
    args: &'a Args,
    inputs: &'a [Vec<u8>],
}

impl FabricUser for Remote<'_> {
    type Output = anyhow::Result<BatchRun>;

    fn run<F: Fabric>(self, fabric: F) -> anyhow::Result<BatchRun> {
        let library = std::fs::read(&self.args.library)
            .with_context(|| format!("reading {}", self.args.library.display()))?;
        let largest = self.inputs.iter().map(Vec::len).max().unwrap_or(0);
        let mut spec = AllocationSpec::new(library, &["thumbnail"]);
        spec.cores = self.args.workers;
        spec.input_capacity = u32::try_from(largest).context("an image above 4 GiB")?;
        // A thumbnail is far smaller than its box at 3 bytes a pixel; an error message is short.
        let box_bytes = 3 * usize::from(self.args.width) * usize::from(self.args.height);
        spec.output_capacity = (box_bytes + 4096) as u32;
        spec.slots = self.args.in_flight.clamp(1, 256) as u32;
        // Always warm: workers sleep between calls rather than spin on cores the client shares.
        spec.hot_timeout_ms = 0;
        let opts = ClientOptions {
            timeout: Duration::from_secs(self.args.timeout_s),
            spin: Duration::from_micros(50),
            ..ClientOptions::default()
        };
        let exec = self.cluster.allocate(&fabric, &spec, opts, 0)?;
        let func = exec.function("thumbnail")?;
        // Warm-up: one call per worker (page faults, the decoder's first allocations).
        for w in 0..exec.workers() {
            let mut out = vec![0u8; spec.output_capacity as usize];
            exec.invoke_on(w, func, &self.inputs[w % self.inputs.len()], &mut out)?;
        }
        let run = batch::run_remote(
            &exec,
            func,
            self.inputs,
            self.args.in_flight,
            spec.output_capacity as usize,
        )?;
        exec.deallocate()?;
        Ok(run)
    }
}
