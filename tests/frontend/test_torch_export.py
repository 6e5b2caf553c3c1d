"""ternc.frontend.from_torch: export a torch module with the dynamo exporter and import it."""

from __future__ import annotations

import numpy as np
import torch

import ternc
from ternc.ir import Op


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(12, 24)
        self.down = torch.nn.Linear(24, 12, bias=False)
        self.norm = torch.nn.LayerNorm(12)

    def forward(self, x):
        return self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))


def test_from_torch_matches_torch():
    torch.manual_seed(0)
    mod = Block().eval()
    x = torch.randn(3, 12)
    m = ternc.frontend.from_torch(mod, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert sum(n.op == Op.Linear for n in m.func("main").nodes) == 2
    name = m.func("main").params[0].name
    for batch in (1, 5):
        xb = torch.randn(batch, 12)
        want = mod(xb).detach().numpy()
        got = next(iter(ternc.interpret(m, {name: xb.numpy()}).values()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
