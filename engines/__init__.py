"""Inference: runners, MTCNN cascade, alignment, embedder, model cards and the committed models."""
