"""Export and serving: ONNX, onnxruntime, TensorRT; installed as fastwsss.export."""
