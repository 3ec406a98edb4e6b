//! An ONNX image classifier, parsed and optimized by tract.

use rfaas_function::app_status::{AppError, AppErrorCode};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::preprocess;

/// The most bytes a model asset may have (the executor manager limits assets too).
pub const MAX_MODEL_BYTES: usize = 1 << 30;

/// A loaded classifier: the optimized plan and its input size.
#[derive(Debug)]
pub struct Model {
    plan: TypedRunnableModel<TypedModel>,
    height: u32,
    width: u32,
}

impl Model {
    /// Parses an ONNX model whose first input is an image `[N, 3, H, W]` (N may be symbolic; H
    /// and W must be fixed), fixes the batch to 1, and optimizes it. The error says why the bytes
    /// are not such a model.
    pub fn load(onnx: &[u8]) -> Result<Model, String> {
        if onnx.len() > MAX_MODEL_BYTES {
            return Err(format!(
                "model of {} bytes: at most {MAX_MODEL_BYTES}",
                onnx.len()
            ));
        }
        let model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(|e| format!("not an ONNX model ({} bytes): {e:#}", onnx.len()))?;
        let fact = model
            .input_fact(0)
            .map_err(|e| format!("the model has no input: {e}"))?;
        let dims: Vec<Option<usize>> = fact
            .shape
            .dims()
            .map(|d| {
                d.concretize()
                    .and_then(|d| d.to_i64().ok().and_then(|v| usize::try_from(v).ok()))
            })
            .collect();
        let (height, width) = match dims[..] {
            [_, Some(3) | None, Some(h), Some(w)] if h > 0 && w > 0 => (h, w),
            _ => {
                return Err(format!(
                    "the model's input is {dims:?}; an image classifier takes [N, 3, H, W] with fixed H and W"
                ))
            }
        };
        let plan = model
            .with_input_fact(0, f32::fact([1usize, 3, height, width]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("the ONNX model does not compile: {e:#}"))?;
        Ok(Model {
            plan,
            height: height as u32,
            width: width as u32,
        })
    }

    /// The model's input height and width.
    pub fn input_size(&self) -> (u32, u32) {
        (self.height, self.width)
    }

    /// Runs the model on an encoded image ([`preprocess`]): its first output, flattened.
    pub fn scores(&self, image: &[u8]) -> Result<Vec<f32>, AppError> {
        let rgb = preprocess::decode(image)?;
        let data = preprocess::to_tensor_data(&rgb, self.height, self.width);
        let internal = |e: TractError| AppError::new(AppErrorCode::Internal, format!("{e:#}"));
        let shape = [1, 3, self.height as usize, self.width as usize];
        let input = Tensor::from_shape(&shape, &data).map_err(internal)?;
        let outputs = self.plan.run(tvec!(input.into())).map_err(internal)?;
        let first = outputs
            .first()
            .ok_or_else(|| AppError::new(AppErrorCode::Internal, "the model has no output"))?;
        let view = first.to_array_view::<f32>().map_err(internal)?;
        Ok(view.iter().copied().collect())
    }
}
