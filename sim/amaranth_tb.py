"""Stream drivers for Amaranth's own simulator (random valid/ready toggling), used by tests/hw.

Ports of ``always_ready`` streams (free-running stages) are accepted: their ``ready`` is a constant
1, so ``collect`` samples every valid beat and ``drive`` moves one beat per valid cycle."""

from __future__ import annotations

import random

from amaranth.hdl import Const


def _always_ready(port) -> bool:
    return isinstance(port.ready, Const)


async def drive(ctx, port, beats, rng: random.Random, p_valid: float = 1.0, log: list | None = None):
    """Send ``beats`` (const-castable payload values) on ``port``, idling at random (prob 1-p_valid).
    ``log`` (optional) receives the cycle index (counted from the call) of each transfer."""
    cyc = 0
    for b in beats:
        while rng.random() >= p_valid:
            ctx.set(port.valid, 0)
            await ctx.tick()
            cyc += 1
        ctx.set(port.payload, b)
        ctx.set(port.valid, 1)
        if _always_ready(port):
            await ctx.tick()
            cyc += 1
        else:
            while True:
                _, _, ready = await ctx.tick().sample(port.ready)
                cyc += 1
                if ready:
                    break
        if log is not None:
            log.append(cyc - 1)
    ctx.set(port.valid, 0)


async def collect(ctx, port, n: int, out: list, rng: random.Random, p_ready: float = 1.0, timeout: int = 100000,
                  log: list | None = None):
    """Receive ``n`` beats from ``port`` into ``out`` (as data.Const / int), toggling ready at random.
    ``log`` (optional) receives the cycle index (counted from the call) of each transfer."""
    cycles = 0
    fixed = _always_ready(port)
    while len(out) < n:
        ready = True if fixed else rng.random() < p_ready
        if not fixed:
            ctx.set(port.ready, int(ready))
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if valid and ready:
            out.append(payload)
            if log is not None:
                log.append(cycles)
        cycles += 1
        if cycles > timeout:
            raise TimeoutError(f"only {len(out)}/{n} beats after {timeout} cycles")
    if not fixed:
        ctx.set(port.ready, 0)
