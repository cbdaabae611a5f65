"""fold_file: the whole job for one model file — fold, verify, write, optionally bench.

The CLI calls this (in worker processes for many models); pipelines can too. An optional
``progress(stage)`` callback hears each stage start: load, fold, verify, write, bench.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnfold.errors import (
    EXIT_BAD_INPUT,
    EXIT_NOT_EQUIVALENT,
    EXIT_OK,
    BnfoldError,
    NotEquivalentError,
)


@dataclasses.dataclass
class FoldFileOptions:
    """What to do for each model file."""

    output: Path | None = None  # default: <stem>.folded.onnx beside the input
    verify: bool = True
    force: bool = False  # write even when verification fails
    bench: bool = False
    in_place: bool = False
    assume_eval: bool = False
    rewrite_standalone: bool = False
    allow_graph_input_params: bool = False
    requantize: bool = False  # fold BN between Q/DQ pairs; judged in output quantization steps
    quantize_bias: bool = False
    seeds: int = 3
    measure_floor: bool = False  # the noise floor even when no verdict needs it
    provider: str = "cpu"
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    inputs: list[str] = dataclasses.field(default_factory=list)  # .npz files, one set each
    # Batch mode: shapes and arrays apply to the models that have an input of that name.
    only_matching_inputs: bool = False
    keep: tuple[str, ...] = ()  # fnmatch globs on BN/Dropout node names left as they are
    keep_dropout: bool = False
    # Batch mode: the output's folder is created only when this model is written.
    create_output_dir: bool = False
    # .pt2 archives: load even when torch.export.load would unpickle something.
    trust_pickle: bool = False


Stage = Callable[[str], None]  # progress(stage): "load" | "fold" | "verify" | "write" | "bench"


@dataclasses.dataclass
class FoldFileOutcome:
    """Everything that happened to one model, JSON-ready via ``to_dict()``."""

    model: str
    output: str | None = None
    written: bool = False
    exit_code: int = EXIT_OK
    error: str | None = None
    report: Any = None  # FoldReport
    verification: Any = None  # VerifyResult
    bench: Any = None  # BenchResult
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float | None = None  # wall time of fold_file

    @property
    def status(self) -> str:
        if self.error is not None and self.exit_code == EXIT_BAD_INPUT:
            return "error"
        if self.exit_code == EXIT_NOT_EQUIVALENT:
            return "not-equivalent"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "status": self.status,
            "exit_code": self.exit_code,
            "output": self.output,
            "written": self.written,
        }
        if self.error:
            out["error"] = self.error
        if self.report is not None:
            out["report"] = self.report.to_dict()
        if self.verification is not None:
            out["verification"] = self.verification.to_dict()
        if self.bench is not None:
            out["bench"] = self.bench.to_dict()
        if self.sizes:
            out["sizes"] = self.sizes
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 3)
        return out


def default_output(path: Path) -> Path:
    """``model.onnx`` → ``model.folded.onnx`` beside it."""
    return path.with_name(f"{path.stem}.folded{path.suffix or '.onnx'}")


def fold_file(
    path: str | os.PathLike[str],
    options: FoldFileOptions | None = None,
    progress: Stage | None = None,
) -> FoldFileOutcome:
    """Fold one model file end to end; never raises for a bad model (see ``error``).

    ``progress(stage)`` is called as each stage starts (for a progress display).
    """
    options = options or FoldFileOptions()
    src = Path(path)
    outcome = FoldFileOutcome(model=str(src))
    start = time.perf_counter()
    try:
        _run(src, options, outcome, progress or _no_stage)
    except BnfoldError as err:
        outcome.error = str(err)
        outcome.exit_code = err.exit_code
        outcome.written = False
    outcome.seconds = time.perf_counter() - start
    return outcome


def _no_stage(stage: str) -> None:
    """The default stage callback: nothing."""


def _run(src: Path, options: FoldFileOptions, outcome: FoldFileOutcome, stage: Stage) -> None:
    if src.suffix.lower() == ".pt2":  # a torch.export archive: bnfold.export
        from bnfold.export.workflow import fold_pt2_file

        fold_pt2_file(src, options, outcome, stage)
        return
    from bnfold.errors import OutputError
    from bnfold.onnx.io.files import check_output_path, same_file

    out = src if options.in_place else (options.output or default_output(src))
    if not options.in_place and same_file(src, out):
        raise OutputError(f"{out}: output path equals the input; use --in-place to overwrite it")
    folder = out.parent if str(out.parent) else Path(".")
    if options.create_output_dir and not folder.exists():
        check_creatable_folder(folder)  # fail before work; created only when writing
    else:
        check_output_path(out, folder)  # fail before work
    # The reference half of verification needs no folded model: it runs beside the fold.
    with _start_verification(src, options) as pending:
        _fold_and_save(src, out, folder, options, outcome, stage, pending)


def _fold_and_save(
    src: Path,
    out: Path,
    folder: Path,
    options: FoldFileOptions,
    outcome: FoldFileOutcome,
    stage: Stage,
    pending: Any,
) -> None:
    from bnfold.onnx.api import fold_onnx

    result = fold_onnx(
        src,
        assume_eval=options.assume_eval,
        rewrite_standalone=options.rewrite_standalone,
        allow_graph_input_params=options.allow_graph_input_params,
        keep=options.keep,
        keep_dropout=options.keep_dropout,
        progress=stage,
        requantize=options.requantize,
        quantize_bias=options.quantize_bias,
    )
    outcome.report = result.report
    outcome.output = str(out)
    input_bytes = model_file_bytes(src)  # before an in-place save replaces it
    bench_error: list[BaseException] = []

    def check_before_commit(tmp_model: Path) -> None:
        """Verify, then bench while the original is still on disk (--in-place replaces it)."""
        if options.verify:
            stage("verify")
            _verify(src, tmp_model, result.ir_model, options, outcome, pending)
        if options.bench:
            stage("bench")
            try:
                outcome.bench = _bench(src, tmp_model, out, result.ir_model, options, outcome)
            except Exception as err:  # the folded model is still written, as without --bench
                bench_error.append(err)
        stage("write")  # the commit

    stage("write")
    if options.create_output_dir:
        make_folder(folder)
    result.save(out, overwrite_input=options.in_place, before_commit=check_before_commit)
    outcome.written = True
    if outcome.verification is not None:
        outcome.verification.candidate = str(out)  # it was checked as a temporary file
    if outcome.verification is not None and not outcome.verification:
        outcome.exit_code = EXIT_NOT_EQUIVALENT
    outcome.sizes = {"input_bytes": input_bytes, "output_bytes": model_file_bytes(out)}
    if bench_error:
        raise bench_error[0]


def make_folder(folder: Path) -> None:
    """Create the output folder (and parents); an OS error becomes an OutputError."""
    from bnfold.errors import OutputError
    from bnfold.onnx.io.outputs import os_reason

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{folder}: cannot create the output folder ({os_reason(err)})") from err


def check_creatable_folder(folder: Path) -> None:
    """Refuse an output folder that exists as a file or whose nearest existing parent
    cannot be written; the folder itself may not exist yet."""
    from bnfold.errors import OutputError

    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{existing}: is a file, so the output folder {folder} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: cannot create the output folder (permission denied)")


def _start_verification(src: Path, options: FoldFileOptions) -> Any:
    """The reference side of verification, started now in a background thread (a
    context manager; a null one when there is nothing to start)."""
    import contextlib

    if not options.verify or options.assume_eval or options.requantize:
        return contextlib.nullcontext()
    from bnfold.equivalence.pending import PendingVerification

    return PendingVerification(
        src,
        seeds=options.seeds,
        measure_floor=options.measure_floor,
        provider=options.provider,
        shapes=options.shapes or None,
        inputs=list(options.inputs) or None,
        only_matching_inputs=options.only_matching_inputs,
    )


def _verify(
    src: Path,
    tmp_model: Path,
    model: Any,
    options: FoldFileOptions,
    outcome: FoldFileOutcome,
    pending: Any = None,
) -> None:
    """Compare the folded temporary file with the original; raise to cancel the write."""
    if options.requantize:  # one rounding step fewer: exact vs the bypassed pairs, drift bounded
        from bnfold.equivalence.requantized import verify_requantized

        shapes, inputs = _inputs_for(model, options)
        outcome.verification = verify_requantized(
            src,
            tmp_model,
            outcome.report.dropped_roundings,
            seeds=options.seeds,
            provider=options.provider,
            shapes=shapes,
            inputs=inputs,
        )
    elif pending is not None:  # the reference side already started (same inputs and runs)
        outcome.verification = pending.verify(tmp_model)
    else:
        from bnfold.equivalence.api import verify

        reference: Any = src
        if options.assume_eval:  # compare with the original read with inference semantics
            from bnfold.onnx.eval_mode import inference_reference

            reference = inference_reference(src)
        shapes, inputs = _inputs_for(model, options)
        outcome.verification = verify(
            reference,
            tmp_model,
            seeds=options.seeds,
            measure_floor=options.measure_floor,
            provider=options.provider,
            shapes=shapes,
            inputs=inputs,
        )
    if not outcome.verification and not options.force:
        raise NotEquivalentError(
            "folded model is not equivalent to the original; nothing written "
            "(--force writes anyway)"
        )


def _bench(
    src: Path,
    tmp_model: Path,
    out: Path,
    model: Any,
    options: FoldFileOptions,
    outcome: FoldFileOutcome,
) -> Any:
    """Time the original against the folded temporary file, labelled as their final names."""
    from bnfold.latency.api import bench

    label, vs_label = src.name, out.name
    if label == vs_label:
        label, vs_label = f"{label} (original)", f"{vs_label} (folded)"
    return bench(
        src,
        vs=tmp_model,
        provider=options.provider,
        levels=("disable", "all"),
        shapes=_verified_shapes(outcome.verification) or _inputs_for(model, options)[0],
        label=label,
        vs_label=vs_label,
    )


def _inputs_for(
    model: Any, options: FoldFileOptions
) -> tuple[dict[str, tuple[int, ...]] | None, list[dict[str, Any]] | None]:
    """The user's shapes and input arrays, limited to this model's inputs in batch mode."""
    return given_inputs(options, lambda: {v.name for v in model.graph.inputs})


def given_inputs(
    options: Any, input_names: Callable[[], set[str]]
) -> tuple[dict[str, tuple[int, ...]] | None, list[dict[str, Any]] | None]:
    """--shape sizes and --inputs arrays (``.npz`` files read); in batch mode
    (``only_matching_inputs``) only those naming one of ``input_names()``."""
    from bnfold.equivalence.inputs import load_npz

    sets = [load_npz(p) for p in options.inputs]
    shapes = dict(options.shapes)
    if options.only_matching_inputs:
        names = input_names()
        shapes = {k: v for k, v in shapes.items() if k in names}
        sets = [{k: v for k, v in s.items() if k in names} for s in sets]
        sets = [s for s in sets if s]
    return shapes or None, sets or None


def _verified_shapes(verification: Any) -> dict[str, tuple[int, ...]] | None:
    """The input shapes verification ran (found by search or given), for --bench."""
    if verification is None:
        return None
    return dict(verification.input_shapes) or None


def model_file_bytes(path: Path) -> int:
    """Bytes of a model file plus every external data file its tensors name."""
    from bnfold.onnx.io.outputs import referenced_data_files

    data = referenced_data_files(path)
    return path.stat().st_size + sum(p.stat().st_size for p in data if p.is_file())
