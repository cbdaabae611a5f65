"""The ``.pt2`` branch of ``bnfold.workflow.fold_file``: load, fold, verify, write.

Same outcome object, report and exit codes as for ONNX files; the original archive is
never modified unless ``in_place``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnfold.errors import EXIT_NOT_EQUIVALENT, NotEquivalentError, OutputError

PT2_SUFFIX = ".pt2"


def is_pt2(path: Path) -> bool:
    return path.suffix.lower() == PT2_SUFFIX


def fold_pt2_file(src: Path, options: Any, outcome: Any, stage: Any) -> None:
    """Fold ``src`` into ``options.output`` (default ``<stem>.folded.pt2``); fill ``outcome``."""
    from bnfold.export.api import fold_program
    from bnfold.export.archive import load_program
    from bnfold.export.verify import user_input_nodes
    from bnfold.workflow import given_inputs

    out = src if options.in_place else (options.output or src.with_name(f"{src.stem}.folded.pt2"))
    if not options.in_place and out.resolve() == src.resolve():
        raise OutputError(f"{out}: output path equals the input; use --in-place to overwrite it")
    stage("load")
    ep = load_program(src, trust_pickle=getattr(options, "trust_pickle", False))
    stage("fold")
    shapes, arrays = given_inputs(options, lambda: {n.name for n in user_input_nodes(ep)})
    result = fold_program(
        ep,
        assume_eval=options.assume_eval,
        verify=options.verify,
        seeds=options.seeds,
        keep=options.keep,
        keep_dropout=options.keep_dropout,
        inputs=arrays,
        shapes=shapes,
    )
    outcome.report = result.report
    outcome.verification = result.verification
    outcome.output = str(out)
    if result.verification is not None and not result.verification:
        outcome.exit_code = EXIT_NOT_EQUIVALENT
        if not options.force:
            raise NotEquivalentError(
                "folded program is not equivalent to the original; nothing written "
                "(--force writes anyway)"
            )
    stage("write")
    if getattr(options, "create_output_dir", False):
        out.parent.mkdir(parents=True, exist_ok=True)
    input_bytes = src.stat().st_size
    result.save(out)
    outcome.written = True
    outcome.sizes = {"input_bytes": input_bytes, "output_bytes": out.stat().st_size}
    if options.bench:
        stage("bench")
        from bnfold.export.bench import bench_programs
        from bnfold.export.verify import input_sets

        inputs = input_sets(ep, 1, arrays or (), shapes)[0]
        outcome.bench = bench_programs(ep, result.program, inputs, (src.name, out.name))
