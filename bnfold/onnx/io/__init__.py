"""Reading and writing ONNX files: load (memory-mapped weights), validate, atomic save.

``files`` is the entry point (``load_model``, ``save_model``, ``check_output_path``); the
other modules are its parts: ``sniff`` (is this an ONNX file?), ``validate`` (structural
checks with one-line reasons), ``lite`` (a weight-free copy for checker and shape
inference), ``mapped`` and ``wire`` (protobuf wire-level, memory-mapped reading),
``stream_save`` (zero-copy weight writes) and ``outputs`` (temporary files and renames).
"""
