"""onnxruntime sessions for verification: no graph optimisation, an explicit provider."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bnfold.equivalence.signature import TensorSpec, spec_from_node_arg
from bnfold.equivalence.source import ModelSource
from bnfold.errors import ModelLoadError, VerificationError
from bnfold.ort_quiet import quiet_run_options, quiet_session_options

PROVIDERS = ("cpu", "cuda")
_CUDA_MISSING = (
    "CUDA provider not available: install onnxruntime-gpu and run on a machine with a GPU"
)


def provider_list(provider: str) -> list[Any]:
    """onnxruntime providers for ``cpu`` or ``cuda``; never falls back silently."""
    import onnxruntime as ort

    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise VerificationError(_CUDA_MISSING)
        # TF32 would add ~1e-3 relative noise to every convolution and hide real bugs.
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    raise VerificationError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")


class ModelRunner:
    """One onnxruntime session with ORT_DISABLE_ALL, plus the model's input/output specs.

    ``threads``: onnxruntime intra-op threads (None: its default, every core). Safe to
    run from several threads at once.
    """

    def __init__(self, source: ModelSource, provider: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = quiet_session_options()
        # ORT's own Conv+BN fusion (ENABLE_BASIC and up) would hide folding bugs.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        # onnxruntime reads these arrays in place: they must outlive the session.
        self._arrays = _add_initializers(options, source)
        providers = provider_list(provider)
        try:
            self.session = ort.InferenceSession(source.payload, options, providers=providers)
        except Exception as err:
            raise ModelLoadError(f"onnxruntime cannot load {source.label}: {_brief(err)}") from err
        if provider == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise VerificationError(_CUDA_MISSING)
        self.label = source.label
        self.inputs: list[TensorSpec] = [
            spec_from_node_arg(a, "input") for a in self.session.get_inputs()
        ]
        self.outputs: list[TensorSpec] = [
            spec_from_node_arg(a, "output") for a in self.session.get_outputs()
        ]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; every output comes back as a numpy array keyed by name."""
        names = [o.name for o in self.outputs]
        try:
            values = self.session.run(names, dict(feeds), quiet_run_options())
        except Exception as err:
            raise VerificationError(
                f"onnxruntime failed to run {self.label}: {_brief(err)}"
            ) from err
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def _add_initializers(options: Any, source: ModelSource) -> list[Any]:
    """Hand a skeleton's large initializers to onnxruntime (kept alive by the caller)."""
    import onnxruntime as ort

    arrays = source.initializers or {}
    if not arrays:
        return []
    names = list(arrays)
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arrays[n])) for n in names]
    options.add_external_initializers(names, values)
    return values


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."
