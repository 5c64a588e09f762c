"""Export of trained models for serving: ONNX graphs (`irt4.export.onnx`), read by the engine builders.

`onnx` is imported by `export_onnx` itself, so `import irt4.export` works without the `ort` extra.
"""

from irt4.export.onnx import DEFAULT_OPSET, GraphSpec, TensorSpec, export_onnx, graph_specs

__all__ = ["DEFAULT_OPSET", "GraphSpec", "TensorSpec", "export_onnx", "graph_specs"]
