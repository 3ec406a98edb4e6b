#!/usr/bin/env python3
"""Builds the classifier tests' fixtures: a small convolutional ONNX image classifier with fixed
seeds (the `onnx` package), a few PNG images already at the model's input size, and reference
scores for them from an independent runtime (`onnxruntime`).

    make_model.py OUT_DIR

writes OUT_DIR/model.onnx, OUT_DIR/image<i>.png and OUT_DIR/reference.json:
{"height": H, "width": W, "classes": C, "images": [{"file": "image0.png", "scores": [...]}, ...]}.

The preprocessing is the classifier's documented one (jobs/classifier/src/preprocess.rs),
written here again with numpy: RGB / 255, minus the ImageNet mean, over its standard deviation,
NCHW float32. The images are at the model's input size, so no resize is involved.
"""

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HEIGHT, WIDTH, CLASSES, IMAGES = 24, 32, 10, 4
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def build_model(rng: np.random.Generator) -> onnx.ModelProto:
    def weight(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        weight("w1", (8, 3, 3, 3), 0.3),
        weight("b1", (8,), 0.1),
        weight("w2", (16, 8, 3, 3), 0.2),
        weight("b2", (16,), 0.1),
        weight("w3", (CLASSES, 16), 0.5),
        weight("b3", (CLASSES,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "rfaas-test-classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, HEIGHT, WIDTH])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG, filter type 0 on every row."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def preprocess(rgb: np.ndarray) -> np.ndarray:
    x = (rgb.astype(np.float32) / np.float32(255.0) - MEAN) / STD  # HWC
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None, ...], dtype=np.float32)  # NCHW


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261206)
    model = build_model(rng)
    (out / "model.onnx").write_bytes(model.SerializeToString())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = []
    for i in range(IMAGES):
        # Smooth random colour fields plus noise: different images, different classes.
        base = rng.integers(0, 256, size=(1, 1, 3)).astype(np.float32)
        ramp = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :, None] * rng.integers(-120, 120, size=3)
        noise = rng.normal(0, 40, size=(HEIGHT, WIDTH, 3))
        rgb = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
        name = f"image{i}.png"
        write_png(out / name, rgb)
        (scores,) = session.run(["scores"], {"image": preprocess(rgb)})
        images.append({"file": name, "scores": [float(s) for s in scores[0]]})
    meta = {"height": HEIGHT, "width": WIDTH, "classes": CLASSES, "images": images}
    (out / "reference.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
