//! The classifier against an independent runtime: `make_model.py` builds a small convolutional
//! ONNX model with fixed seeds and scores a few images with onnxruntime; the function, loaded
//! through its init with the model as an asset, must give the same scores within [`fixtures::TOLERANCE`]
//! and the same ranking. In process (the rlib); tests/apps.rs runs it through a local cluster.
//!
//! Needs Python with numpy, onnx and onnxruntime (`scripts/setup.sh` installs them into
//! `.venv`; `PYTHON` overrides the interpreter). Without them the test is skipped, except under
//! `CI=true` where it fails.

mod fixtures;

use std::path::Path;

use classifier::{decode_output, request, with_top_k};
use rfaas_function::app_status::AppErrorCode;
use rfaas_function::init::Assets;

fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"))
}

/// The fixtures in a temporary directory; `None` (skipped) when Python or its packages are
/// missing outside CI.
fn fixtures() -> Option<tempfile::TempDir> {
    match fixtures::make(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make_model.py")) {
        Ok(dir) => Some(dir),
        Err(why) => {
            assert!(
                !in_ci(),
                "{why}; under CI=true a missing tool fails the test"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

#[test]
fn scores_match_onnxruntime_and_bad_input_is_an_error_status() {
    let Some(dir) = fixtures() else { return };
    let model = std::fs::read(dir.path().join("model.onnx")).unwrap();
    let reference = fixtures::Reference::read(dir.path());
    let classes = reference.classes;
    let labels: String = (0..classes).map(|i| format!("class-{i}\n")).collect();

    // Before init: a clear "not ready" status, not a panic.
    let mut out = vec![0u8; 1 << 16];
    let n = classifier::classify(b"\x89PNG", &mut out);
    assert_eq!(
        decode_output(&out[..n]).unwrap_err().to_string(),
        "classifier: function not ready: the classifier's init did not run (no 'model' asset loaded)"
    );

    // Init refuses a missing model and a model asset that is not a model.
    let err = classifier::init(&Assets::new(vec![])).unwrap_err();
    assert!(err.contains("asset named 'model'"), "{err}");
    for junk in [
        &b"this is not an ONNX model"[..],
        &[],
        &model[..model.len() / 2],
    ] {
        let err = classifier::init(&Assets::new(vec![("model", junk)])).unwrap_err();
        assert!(!err.is_empty());
    }
    let err = classifier::init(&Assets::new(vec![("model", b"not a model")])).unwrap_err();
    assert!(err.starts_with("not an ONNX model (11 bytes)"), "{err}");

    classifier::init(&Assets::new(vec![
        ("model", &model),
        ("labels", labels.as_bytes()),
    ]))
    .unwrap();

    for image in &reference.images {
        let want = &image.scores;
        let png = std::fs::read(dir.path().join(&image.file)).unwrap();
        // Every class, so that every score is compared.
        let input = with_top_k(classes as u16, &png);
        let n = classifier::classify(&input, &mut out);
        let got = decode_output(&out[..n]).unwrap();
        image.check_scores(&got, |i| format!("class-{i}"), "by tract");
        // The ranking is onnxruntime's (its scores here differ by far more than the tolerance).
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
        let got_order: Vec<usize> = got.iter().map(|c| c.index as usize).collect();
        assert_eq!(got_order[..3], order[..3], "{}", image.file);

        // Default k is 5; the reload variant computes the same.
        let n = classifier::classify(&png, &mut out);
        let top5 = decode_output(&out[..n]).unwrap();
        assert_eq!(top5.len(), request::DEFAULT_K);
        let n = classifier::classify_reload(&png, &mut out);
        assert_eq!(decode_output(&out[..n]).unwrap(), top5);
    }

    // Bad input: an error status each, and the function keeps working afterwards.
    let png = std::fs::read(dir.path().join("image0.png")).unwrap();
    let cases: Vec<(&str, Vec<u8>, AppErrorCode)> = vec![
        (
            "not an image",
            b"GIF89a, or rather, not an image".to_vec(),
            AppErrorCode::BadInput,
        ),
        (
            "truncated PNG",
            png[..png.len() / 2].to_vec(),
            AppErrorCode::BadInput,
        ),
        (
            "huge PNG",
            png_declaring(&png, 200_000, 200_000),
            AppErrorCode::TooLarge,
        ),
        ("k of 0", with_top_k(0, &png), AppErrorCode::BadInput),
    ];
    for (what, input, code) in cases {
        for f in [classifier::classify, classifier::classify_reload] {
            let n = f(&input, &mut out);
            match decode_output(&out[..n]).unwrap_err() {
                classifier::OutputError::Function(e) => {
                    assert_eq!(e.code(), Some(code), "{what}: {e}")
                }
                other => panic!("{what}: {other}"),
            }
        }
    }
    let n = classifier::classify(&png, &mut out);
    assert_eq!(decode_output(&out[..n]).unwrap().len(), request::DEFAULT_K);
    // A second init in the same process is refused, the loaded model stays.
    assert!(classifier::init(&Assets::new(vec![("model", &model)])).is_err());
}

/// `png` with its IHDR patched to declare `w`×`h` (and its CRC fixed).
fn png_declaring(png: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut p = png.to_vec();
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}
