//! # rfaas-classifier — an ONNX image classifier as an rfaas function
//!
//! After rFaaS's image-recognition application (ResNet-50), with the model loaded **once per
//! executor** by the library's init function instead of on every call. Pure-Rust inference
//! (tract), pure-Rust JPEG/PNG decoding (`image`).
//!
//! The allocation ships the model as the asset `"model"` (ONNX bytes) and, optionally, the
//! class names as `"labels"` (UTF-8, one per line, line `i` naming class `i`). The init function
//! parses, checks and optimizes the model and keeps it for the life of the executor; a model
//! asset that is missing or not an image-classifier ONNX model fails the init, so the client gets
//! "function library init failed: ..." when it allocates.
//!
//! ```text
//! cargo build -p rfaas-classifier --release     # -> target/release/libclassifier.so
//! ```
//!
//! | symbol | input | output |
//! |---|---|---|
//! | `classify` | optional header (`"RFCK"`, u16 LE k), then a JPEG or PNG image | [`app_status`] framed: `0` + top-k ([`request`]), or an error code + message |
//! | `classify_reload` | the same | the same, but the model is parsed and optimized from the asset's bytes on **every call**, as rFaaS's classifier does (for the benchmark) |
//!
//! Preprocessing (resize to the model's input, ImageNet normalization) is documented in
//! [`preprocess`]; the scores are the model's first output as the model computes it.
//!
//! ## Errors
//!
//! Per call, the output starts with a one-byte application status
//! ([`rfaas_function::app_status`]): an image that is not a JPEG or PNG or does not decode is
//! `BadInput`, one declaring more than [`preprocess::MAX_DIMENSION`] pixels a side is `TooLarge`
//! (refused before decoding), a call before init is `NotReady`. Nothing panics; the executor
//! keeps serving.

#![warn(missing_docs)]

mod model;
pub mod preprocess;
pub mod request;

use std::sync::OnceLock;

pub use model::{Model, MAX_MODEL_BYTES};
pub use request::{with_top_k, Class};
use rfaas_function::app_status::{self, AppError, AppErrorCode, DecodeError};
use rfaas_function::init::Assets;

/// What init keeps: the loaded model, the raw model bytes (for `classify_reload`) and the labels.
struct State {
    model: Model,
    onnx: Vec<u8>,
    labels: Vec<String>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// The init function: loads the `"model"` asset (and `"labels"`, if shipped) once.
pub fn init(assets: &Assets<'_>) -> Result<(), String> {
    let onnx = assets
        .get("model")
        .ok_or("the classifier needs an asset named 'model' (ONNX bytes)")?;
    let model = Model::load(onnx)?;
    let labels = match assets.get("labels") {
        None => Vec::new(),
        Some(bytes) => std::str::from_utf8(bytes)
            .map_err(|e| format!("asset 'labels' is not UTF-8: {e}"))?
            .lines()
            .map(|l| l.trim().to_string())
            .collect(),
    };
    STATE
        .set(State {
            model,
            onnx: onnx.to_vec(),
            labels,
        })
        .map_err(|_| "the classifier was initialised twice in one process".to_string())
}

fn state() -> Result<&'static State, AppError> {
    STATE.get().ok_or_else(|| {
        AppError::new(
            AppErrorCode::NotReady,
            "the classifier's init did not run (no 'model' asset loaded)",
        )
    })
}

/// Classifies one input with the loaded model: the top-k classes.
pub fn classify_input(input: &[u8]) -> Result<Vec<Class>, AppError> {
    let state = state()?;
    let (k, image) = request::parse(input)?;
    let scores = state.model.scores(image)?;
    Ok(request::top_k(&scores, k, &state.labels))
}

/// Classifies one input after parsing and optimizing the model from its bytes again (what
/// rFaaS does on every call).
pub fn classify_input_reload(input: &[u8]) -> Result<Vec<Class>, AppError> {
    let state = state()?;
    let (k, image) = request::parse(input)?;
    let model = Model::load(&state.onnx).map_err(|e| AppError::new(AppErrorCode::Internal, e))?;
    let scores = model.scores(image)?;
    Ok(request::top_k(&scores, k, &state.labels))
}

/// `classify`: the exported function ([`classify_input`], output framed).
pub fn classify(input: &[u8], output: &mut [u8]) -> usize {
    app_status::write_result(output, classify_input(input).map(|c| request::encode(&c)))
}

/// `classify_reload`: the exported function ([`classify_input_reload`], output framed).
pub fn classify_reload(input: &[u8], output: &mut [u8]) -> usize {
    app_status::write_result(
        output,
        classify_input_reload(input).map(|c| request::encode(&c)),
    )
}

/// Why a classifier output could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputError {
    /// The function reported an error (or wrote no status).
    Function(DecodeError),
    /// The payload is malformed.
    Malformed(String),
}

impl std::fmt::Display for OutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputError::Function(e) => write!(f, "classifier: {e}"),
            OutputError::Malformed(m) => write!(f, "classifier output: {m}"),
        }
    }
}

impl std::error::Error for OutputError {}

/// Decodes the output of `classify` or `classify_reload` (client side).
pub fn decode_output(output: &[u8]) -> Result<Vec<Class>, OutputError> {
    let payload = app_status::decode(output).map_err(OutputError::Function)?;
    request::decode(payload).map_err(OutputError::Malformed)
}

rfaas_function::export_init!(init);
rfaas_function::export_function!(classify, classify);
rfaas_function::export_function!(classify_reload, classify_reload);
