"""Helpers shared by the test suite, imported as ``support`` (pytest's ``pythonpath`` names tests/).

- ``graphs``: the one ONNX graph builder (``GraphBuilder``) and random BN parameters.
- ``onnx_checks``: ORT_DISABLE_ALL runs, numeric comparison, graph inspection, report checks.
- ``fold_checks``: fold-and-check shortcuts, op counts over subgraphs, legacy torch export.
- ``prop_graphs`` / ``prop_profiles``: hypothesis strategies and profiles for property tests.
- ``torch_helpers``: folding torch modules with checks.
- ``verify_models`` / ``verify_inject`` / ``verify_nets``: models and injected bugs for the
  equivalence tests.
- ``robust_corpus``: broken model files and checks that a refusal is clean.
"""
