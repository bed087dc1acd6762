"""Inference backends behind one interface (PyTorch, ONNX Runtime, TensorRT), plus the model store."""
