"""The compare_tools report's Targets section: fold-time floor and the A/A noise control."""

from __future__ import annotations

import render
from compare_tools import Row


def rows(control: float, vs_best: float) -> list[Row]:
    original = Row("m", "legacy", "original", floor_s=0.006)
    bnfold = Row("m", "legacy", "bnfold", fold_s=0.015)
    bnfold.vs_best = {"disable": ("onnxslim", vs_best)}
    bnfold.control = {"disable": control}
    return [original, bnfold, Row("m", "legacy", "ort-basic", fold_s=0.004)]


def test_targets_show_the_onnx_ir_floor_next_to_ort_basic():
    lines = render._targets(rows(control=0.99, vs_best=1.0), ["disable"])
    text = "\n".join(lines)
    assert "Fold time ≤ onnxruntime's offline BASIC pass: 0/1 models" in text
    assert "6.0 ms (median) and is already slower than ort-basic's whole pass on 1/1" in text


def test_a_miss_inside_the_a_a_noise_says_so():
    text = "\n".join(render._targets(rows(control=0.96, vs_best=0.965), ["disable"]))
    assert "noise reaches ±4.0%" in text
    assert "0.965 vs onnxslim (within the A/A noise)" in text


def test_a_miss_beyond_the_a_a_noise_says_so():
    text = "\n".join(render._targets(rows(control=0.995, vs_best=0.9), ["disable"]))
    assert "0.900 vs onnxslim (beyond the A/A noise)" in text
