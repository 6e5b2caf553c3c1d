"""Stream drivers for Amaranth's own simulator (random valid/ready toggling), used by tests/hw."""

from __future__ import annotations

import random


async def drive(ctx, port, beats, rng: random.Random, p_valid: float = 1.0):
    """Send ``beats`` (const-castable payload values) on ``port``, idling at random (prob 1-p_valid)."""
    for b in beats:
        while rng.random() >= p_valid:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.payload, b)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def collect(ctx, port, n: int, out: list, rng: random.Random, p_ready: float = 1.0, timeout: int = 100000):
    """Receive ``n`` beats from ``port`` into ``out`` (as data.Const / int), toggling ready at random."""
    cycles = 0
    while len(out) < n:
        ready = rng.random() < p_ready
        ctx.set(port.ready, int(ready))
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if valid and ready:
            out.append(payload)
        cycles += 1
        if cycles > timeout:
            raise TimeoutError(f"only {len(out)}/{n} beats after {timeout} cycles")
    ctx.set(port.ready, 0)
