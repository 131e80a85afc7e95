"""Using a trained model: its metrics on a split with the confusion matrix (evaluate), classifying your own images
(predict), and handing it to another runtime, checked against PyTorch (export: ONNX, TorchScript, a Hub folder).

It may import everything but hw3.experiments and hw3.cli.
"""
