//! The classifier client: ships an ONNX model (and optionally its labels) with the allocation,
//! classifies images with `classify` (model loaded once per executor by the library's init) and,
//! with `--bench N`, compares its per-call latency with `classify_reload` (the model parsed and
//! optimized from the asset on every call, as rFaaS does), in the same run and allocation.
//!
//! ```sh
//! target/release/rfaas local-cluster start --run-dir /tmp/rfaas
//! cargo build --release -p rfaas-classifier --example classifier
//! target/release/examples/classifier --cluster /tmp/rfaas/cluster.json \
//!     --library target/release/libclassifier.so --model resnet50-v1-7.onnx \
//!     --labels synset.txt cat.jpg dog.png --bench 20 --csv /tmp/classifier.csv
//! ```
//!
//! Prints the top-k classes of every image; with `--bench`, one CSV row per call
//! (`function,call,input_bytes,latency_ns`) and p50/p99 of both functions.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rfaas::bench::csv_rows::RowWriter;
use rfaas::bench::Latencies;
use rfaas::client::{AllocationSpec, ClientOptions, Cluster, Executor, FunctionId};
use rfaas::rdma::{Fabric, FabricUser};
use serde::Serialize;

/// Classify images with an ONNX model through rfaas; compare loading it once with every call.
#[derive(Parser, Debug)]
#[command(name = "classifier")]
struct Args {
    /// Cluster file (default: $RFAAS_CLUSTER).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// The classifier function library.
    #[arg(long, default_value = "target/release/libclassifier.so")]
    library: PathBuf,
    /// ONNX image classifier, input [N, 3, H, W] (shipped as the asset "model").
    #[arg(long)]
    model: PathBuf,
    /// Class names, one per line (shipped as the asset "labels").
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Classes to print per image.
    #[arg(long, default_value_t = 5)]
    top_k: u16,
    /// Calls per function for the latency comparison on the first image (0: none).
    #[arg(long, default_value_t = 0)]
    bench: usize,
    /// Per-call CSV rows of the comparison.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Seconds one call may take.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// JPEG or PNG images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// One call of the comparison.
#[derive(Serialize)]
struct CallRow {
    function: &'static str,
    call: usize,
    input_bytes: usize,
    latency_ns: u64,
}

fn main() -> anyhow::Result<()> {
    rfaas::logging::init("warn");
    let args = Args::parse();
    let cluster = Cluster::open(args.cluster.as_deref())?;
    cluster.provider.run(Client {
        cluster: &cluster,
        args: &args,
    })?
}

struct Client<'a> {
    cluster: &'a Cluster,
    args: &'a Args,
}

impl FabricUser for Client<'_> {
    type Output = anyhow::Result<()>;

    fn run<F: Fabric>(self, fabric: F) -> anyhow::Result<()> {
        let args = self.args;
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let images: Vec<Vec<u8>> = args.images.iter().map(read).collect::<Result<_, _>>()?;
        let inputs: Vec<Vec<u8>> = images
            .iter()
            .map(|img| classifier::with_top_k(args.top_k, img))
            .collect();
        let mut spec = AllocationSpec::new(read(&args.library)?, &["classify", "classify_reload"]);
        let model = read(&args.model)?;
        let model_bytes = model.len();
        spec.add_asset("model", model);
        if let Some(labels) = &args.labels {
            spec.add_asset("labels", read(labels)?);
        }
        spec.input_capacity = inputs.iter().map(Vec::len).max().unwrap_or(1) as u32;
        spec.output_capacity = 64 << 10;
        spec.slots = 1;
        spec.hot_timeout_ms = 0;
        let opts = ClientOptions {
            timeout: Duration::from_secs(args.timeout_s),
            spin: Duration::from_micros(50),
            ..ClientOptions::default()
        };
        let t0 = Instant::now();
        let exec = self
            .cluster
            .allocate(&fabric, &spec, opts, 0)
            .context("allocating the classifier (its init loads the model)")?;
        println!(
            "classifier: allocated with the model ({} bytes) loaded by init in {:.0} ms",
            model_bytes,
            t0.elapsed().as_secs_f64() * 1e3
        );
        let classify = exec.function("classify")?;
        let mut out = vec![0u8; spec.output_capacity as usize];
        for (path, input) in args.images.iter().zip(&inputs) {
            let n = exec.invoke(classify, input, &mut out)?;
            match classifier::decode_output(&out[..n]) {
                Ok(classes) => {
                    let best: Vec<String> = classes
                        .iter()
                        .map(|c| {
                            let name = if c.label.is_empty() {
                                format!("class {}", c.index)
                            } else {
                                c.label.clone()
                            };
                            format!("{name} {:.4}", c.score)
                        })
                        .collect();
                    println!("  {}: {}", path.display(), best.join(", "));
                }
                Err(e) => println!("  {}: {e}", path.display()),
            }
        }
        if args.bench > 0 {
            compare(&exec, args, &inputs[0], &mut out)?;
        }
        exec.deallocate()?;
        Ok(())
    }
}

/// `args.bench` calls of each function on `input`, alternating, one at a time.
fn compare<F: Fabric>(
    exec: &Executor<F>,
    args: &Args,
    input: &[u8],
    out: &mut [u8],
) -> anyhow::Result<()> {
    let funcs: [(&'static str, FunctionId); 2] = [
        ("classify", exec.function("classify")?),
        ("classify_reload", exec.function("classify_reload")?),
    ];
    let mut rows = Vec::new();
    let mut lat = [Latencies::new(), Latencies::new()];
    // One unrecorded call each first.
    for (_, f) in funcs {
        exec.invoke(f, input, out)?;
    }
    for call in 0..args.bench {
        for (k, (name, f)) in funcs.iter().enumerate() {
            let t0 = Instant::now();
            let n = exec.invoke(*f, input, out)?;
            let d = t0.elapsed();
            if let Err(e) = classifier::decode_output(&out[..n]) {
                bail!("{name}: {e}");
            }
            lat[k].record(d);
            rows.push(CallRow {
                function: name,
                call,
                input_bytes: input.len(),
                latency_ns: d.as_nanos() as u64,
            });
        }
    }
    if let Some(path) = &args.csv {
        let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        let mut w = RowWriter::new(
            file,
            &["function", "call", "input_bytes", "latency_ns"],
            &path.display().to_string(),
        )?;
        for r in &rows {
            w.row(r)?;
        }
        w.finish()?;
    }
    let ms = |l: &Latencies, q: f64| l.quantile_ns(q) as f64 / 1e6;
    for (k, (name, _)) in funcs.iter().enumerate() {
        println!(
            "  {name:<16} {} calls: p50 {:9.3} ms  p99 {:9.3} ms",
            args.bench,
            ms(&lat[k], 0.5),
            ms(&lat[k], 0.99)
        );
    }
    println!(
        "  model loaded once vs on every call: {:.1}x faster at p50",
        ms(&lat[1], 0.5) / ms(&lat[0], 0.5).max(1e-9)
    );
    Ok(())
}
