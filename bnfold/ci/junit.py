"""JUnit XML for CI systems other than GitHub: one testsuite, one testcase per model.

The layout is the common Jenkins / Ant one (validated in the tests against
tests/fixtures/junit.xsd): ``<testsuites><testsuite><testcase>`` with a ``<failure>``
(not equivalent, still foldable) or ``<error>`` (bad input) carrying the one-line reason.
"""

from __future__ import annotations

import datetime
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from bnfold.ci.cases import CiCase


def junit_xml(cases: Sequence[CiCase], suite: str, classname: str | None = None) -> str:
    """The JUnit document for ``cases`` as text (UTF-8 XML declaration included)."""
    failures = sum(c.status == "failed" for c in cases)
    errors = sum(c.status == "error" for c in cases)
    seconds = sum(c.seconds or 0.0 for c in cases)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", name="bnfold", time=_time(seconds), **counts)
    suite_el = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        skipped="0",
        time=_time(seconds),
        timestamp=datetime.datetime.now().replace(microsecond=0).isoformat(),
        hostname=socket.gethostname() or "localhost",
        **counts,
    )
    for case in cases:
        attrs = {"name": case.name, "classname": classname or suite}
        if case.seconds is not None:
            attrs["time"] = _time(case.seconds)
        el = ET.SubElement(suite_el, "testcase", attrs)
        if case.status == "failed":
            ET.SubElement(el, "failure", message=case.message, type="failure").text = case.message
        elif case.status == "error":
            ET.SubElement(el, "error", message=case.message, type="error").text = case.message
        if case.file != case.name:
            ET.SubElement(el, "system-out").text = f"file: {case.file}"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def _time(seconds: float) -> str:
    return f"{seconds:.3f}"
