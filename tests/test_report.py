"""`ternc report`: one HTML page per artifact or module file."""

from __future__ import annotations

from html.parser import HTMLParser

import ternc
from ternc.report import write_report


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_report_of_a_reference_module_lists_passes_and_ops(onnx_export, tmp_path):
    m = ternc.load(onnx_export("tiny-bitnet", False))
    out = tmp_path / "m.ternc"
    ternc.compile(m, target="reference", passes="fold,raise-ternary,pack-ternary{format=i2}", out=out)
    page = write_report(out).read_text()
    parsed = _Collect()
    parsed.feed(page)
    text = " ".join(parsed.text)
    assert parsed.tags.count("table") >= 3 and "script" not in parsed.tags
    assert "pack-ternary{format=i2}" in text and "TernaryLinear×42" in text and "@prefill" in text
