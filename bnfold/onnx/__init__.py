"""The ONNX side of bnfold: load, normalise, fold to a fixpoint, save (built on onnx-ir)."""
