//! The applications through a local executor manager (real processes on 127.0.0.1, shm): the
//! thumbnailer (`jobs/thumbnailer`) and the classifier (`jobs/classifier`), good input and bad
//! input. Bad input must come back as an application error status (the first output byte,
//! `rfaas_function::app_status`) and the same executor must go on serving.

#[path = "../jobs/classifier/tests/fixtures/mod.rs"]
mod classifier_fixture;
mod common;

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use common::{Manager, NO_HANG};
use rfaas::bench::batch;
use rfaas::client::{AllocationSpec, ClientOptions, Executor, ManagerClient};
use rfaas::rdma::shm::ShmFabric;
use rfaas_function::app_status::AppErrorCode;
use thumbnailer::generate;

/// The function library `lib<name>.so` of workspace package `package`:
/// `$RFAAS_TEST_APPS_DIR/lib<name>.so`, or [`common::workspace_library`] (slow for the
/// classifier when it has to build it: tract).
fn app_library(package: &str, name: &str) -> Vec<u8> {
    let file = format!("lib{name}.so");
    if let Some(dir) = std::env::var_os("RFAAS_TEST_APPS_DIR") {
        let path = Path::new(&dir).join(&file);
        return fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let crate_dir = format!("jobs/{name}");
    common::workspace_library(
        package,
        &file,
        &[
            &format!("{crate_dir}/src"),
            &format!("{crate_dir}/Cargo.toml"),
            "crates/rfaas-function/src",
        ],
    )
}

fn thumbnailer_library() -> &'static [u8] {
    static LIB: OnceLock<Vec<u8>> = OnceLock::new();
    LIB.get_or_init(|| app_library("rfaas-thumbnailer", "thumbnailer"))
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: NO_HANG,
        spin: std::time::Duration::from_micros(50),
        ..ClientOptions::default()
    }
}

/// Width and height of a JPEG (decoded by the `image` crate, not by the function).
fn jpeg_size(jpeg: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .expect("the thumbnail is a JPEG");
    (img.width(), img.height())
}

#[test]
fn thumbnailer_through_an_executor_manager() {
    let m = Manager::start();
    let client = ManagerClient::new(&m.http, &m.secret);
    let mut spec = AllocationSpec::new(thumbnailer_library().to_vec(), &["thumbnail"]);
    spec.cores = common::cores().len().clamp(1, 2) as u32;
    spec.input_capacity = 256 << 10;
    spec.output_capacity = 128 << 10;
    spec.slots = 2;
    spec.hot_timeout_ms = 0;
    let exec = Executor::allocate(ShmFabric::new().unwrap(), &client, &spec, options()).unwrap();
    let func = exec.function("thumbnail").unwrap();

    // Pictures of known sizes and the boxes they go into; the expected thumbnail sizes are
    // worked out by hand (fit the box, keep the aspect ratio, never enlarge).
    type Case = ((u32, u32), Option<(u16, u16)>, (u32, u32)); // picture, box, thumbnail
    let cases: [Case; 6] = [
        ((800, 600), None, (200, 150)),
        ((600, 800), None, (150, 200)),
        ((640, 480), Some((64, 64)), (64, 48)),
        ((1000, 250), Some((500, 500)), (500, 125)),
        ((120, 90), None, (120, 90)),
        ((300, 300), Some((100, 40)), (40, 40)),
    ];
    let inputs: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, ((w, h), size, _))| {
            let jpeg = generate::encode_jpeg(&generate::picture(i as u64, *w, *h));
            match size {
                Some((bw, bh)) => thumbnailer::with_header(*bw, *bh, &jpeg),
                None => jpeg,
            }
        })
        .collect();
    let run = batch::run_remote(&exec, func, &inputs, 2, spec.output_capacity as usize).unwrap();
    assert_eq!(run.items.len(), cases.len());
    for (item, (_, _, want)) in run.items.iter().zip(&cases) {
        let out = item.output.as_ref().expect("the call succeeds");
        let jpeg = thumbnailer::decode_output(out).expect("a thumbnail");
        assert_eq!(jpeg_size(jpeg), *want, "item {}", item.index);
    }

    // Bad input: an error status each, and the same executor serves the next good call.
    let jpeg = generate::encode_jpeg(&generate::picture(42, 320, 240));
    let bad: Vec<(&str, Vec<u8>, AppErrorCode)> = vec![
        (
            "not an image",
            b"definitely not a picture".to_vec(),
            AppErrorCode::BadInput,
        ),
        (
            "truncated JPEG",
            jpeg[..jpeg.len() / 3].to_vec(),
            AppErrorCode::BadInput,
        ),
        (
            "huge JPEG",
            generate::jpeg_declaring(65_000, 65_000),
            AppErrorCode::TooLarge,
        ),
        (
            "huge PNG",
            generate::png_declaring(1 << 20, 1 << 20),
            AppErrorCode::TooLarge,
        ),
        (
            "bad header",
            thumbnailer::with_header(0, 9, &jpeg),
            AppErrorCode::BadInput,
        ),
    ];
    let mut out = vec![0u8; spec.output_capacity as usize];
    for (what, input, code) in bad {
        for w in 0..exec.workers() {
            let n = exec
                .invoke_on(w, func, &input, &mut out)
                .unwrap_or_else(|e| panic!("{what}: the call itself failed: {e}"));
            let err = thumbnailer::decode_output(&out[..n]).expect_err(what);
            assert_eq!(err.code(), Some(code), "{what}: {err}");
            let n = exec.invoke_on(w, func, &jpeg, &mut out).unwrap();
            let thumb = thumbnailer::decode_output(&out[..n]).unwrap();
            assert_eq!(jpeg_size(thumb), (200, 150), "after {what}");
        }
    }
    exec.deallocate().unwrap();
}

fn classifier_library() -> &'static [u8] {
    static LIB: OnceLock<Vec<u8>> = OnceLock::new();
    LIB.get_or_init(|| app_library("rfaas-classifier", "classifier"))
}

/// The classifier's fixtures (`jobs/classifier/tests/make_model.py`: a small ONNX model, PNG
/// images at its input size and onnxruntime's scores for them) in a temporary directory; `None`
/// when Python lacks numpy, onnx or onnxruntime (a failure under `CI=true`).
fn classifier_fixtures() -> Option<tempfile::TempDir> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/classifier/tests/make_model.py");
    match classifier_fixture::make(&script) {
        Ok(dir) => Some(dir),
        Err(why) => {
            common::skip_unless_ci(&why);
            None
        }
    }
}

fn classifier_spec(model: Option<&[u8]>, labels: Option<&[u8]>) -> AllocationSpec {
    let mut spec = AllocationSpec::new(
        classifier_library().to_vec(),
        &["classify", "classify_reload"],
    );
    if let Some(m) = model {
        spec.add_asset("model", m.to_vec());
    }
    if let Some(l) = labels {
        spec.add_asset("labels", l.to_vec());
    }
    spec.input_capacity = 64 << 10;
    spec.output_capacity = 16 << 10;
    spec.slots = 1;
    spec.hot_timeout_ms = 0;
    spec
}

#[test]
fn classifier_through_an_executor_manager() {
    let Some(dir) = classifier_fixtures() else {
        return;
    };
    let read = |name: &str| fs::read(dir.path().join(name)).unwrap();
    let model = read("model.onnx");
    let reference = classifier_fixture::Reference::read(dir.path());
    let classes = reference.classes;
    let labels: String = (0..classes).map(|i| format!("label {i}\n")).collect();
    let m = Manager::start();
    let client = ManagerClient::new(&m.http, &m.secret);
    let fabric = ShmFabric::new().unwrap();

    // A model asset that is not a model, and no model at all: the allocation fails with the
    // init function's message; the manager serves the next allocation.
    let refused = [
        (
            Some(&b"GIF89a: not an ONNX model"[..]),
            "not an ONNX model (25 bytes)",
        ),
        (Some(&model[..model.len() / 2]), "not an ONNX model"),
        (None, "the classifier needs an asset named 'model'"),
    ];
    for (asset, want) in refused {
        let spec = classifier_spec(asset, None);
        let err = match Executor::allocate(fabric.clone(), &client, &spec, options()) {
            Ok(_) => panic!("allocated with model asset {asset:?}"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(
            text.starts_with("function library init failed: ") && text.contains(want),
            "{text}"
        );
    }

    let spec = classifier_spec(Some(&model), Some(labels.as_bytes()));
    let exec = Executor::allocate(fabric, &client, &spec, options()).unwrap();
    let funcs = [
        exec.function("classify").unwrap(),
        exec.function("classify_reload").unwrap(),
    ];
    let mut out = vec![0u8; spec.output_capacity as usize];
    for image in &reference.images {
        let want = &image.scores;
        let png = read(&image.file);
        let input = classifier::with_top_k(classes as u16, &png);
        for f in funcs {
            let n = exec.invoke(f, &input, &mut out).unwrap();
            let got = classifier::decode_output(&out[..n]).unwrap();
            image.check_scores(&got, |i| format!("label {i}"), "through rfaas");
            let best = (0..classes)
                .max_by(|&a, &b| want[a].total_cmp(&want[b]))
                .unwrap();
            assert_eq!(got[0].index as usize, best);
        }
    }

    // Bad input: an error status each, and the executor keeps serving.
    let png = read("image0.png");
    let jpeg = generate::encode_jpeg(&generate::picture(3, 64, 48));
    let bad: Vec<(&str, Vec<u8>, AppErrorCode)> = vec![
        (
            "not an image",
            b"%PDF-1.7 not an image".to_vec(),
            AppErrorCode::BadInput,
        ),
        (
            "truncated PNG",
            png[..png.len() / 2].to_vec(),
            AppErrorCode::BadInput,
        ),
        (
            "truncated JPEG",
            jpeg[..jpeg.len() * 2 / 3].to_vec(),
            AppErrorCode::BadInput,
        ),
        (
            "huge JPEG",
            generate::jpeg_declaring(65_000, 40_000),
            AppErrorCode::TooLarge,
        ),
        (
            "huge PNG",
            generate::png_declaring(300_000, 300_000),
            AppErrorCode::TooLarge,
        ),
    ];
    for (what, input, code) in bad {
        for f in funcs {
            let n = exec
                .invoke(f, &input, &mut out)
                .unwrap_or_else(|e| panic!("{what}: the call itself failed: {e}"));
            match classifier::decode_output(&out[..n]) {
                Err(classifier::OutputError::Function(e)) => {
                    assert_eq!(e.code(), Some(code), "{what}: {e}")
                }
                other => panic!("{what}: {other:?}"),
            }
            let n = exec.invoke(f, &png, &mut out).unwrap();
            let top = classifier::decode_output(&out[..n]).unwrap();
            assert_eq!(top.len(), classifier::request::DEFAULT_K, "after {what}");
        }
    }
    exec.deallocate().unwrap();
}
