"""INT8 calibration: the calibration-set builder (dataset.py), ONNX Q/DQ quantisation (quantize.py),
FP16 simulation (fp16.py) and TensorRT's entropy calibrator (trt_calibrator.py); `python -m calibration
--help` for the CLI."""
