"""hw/ctl_util.WordFifo re-packs words at any alignment: random counts in, random takes out, random
valid/ready; the words that come out are the words that went in, in order, and words past ``take`` are 0."""

import random

import pytest
from amaranth.sim import Simulator

from ternc.hw.ctl_util import WordFifo


@pytest.mark.parametrize("i,o", [(4, 2), (2, 4), (4, 4), (8, 1), (1, 4)])
def test_word_fifo_repacks_in_order(i, o):
    rng = random.Random(i * 10 + o)
    words = [rng.randrange(1 << 16) for _ in range(150)]
    chunks, k = [], 0
    while k < len(words):
        c = min(rng.randint(1, i), len(words) - k)
        chunks.append(words[k:k + c])
        k += c
    takes, k = [], 0
    while k < len(words):
        t = min(rng.randint(1, o), len(words) - k)
        takes.append(t)
        k += t
    dut = WordFifo(i, o, width=16)
    got = []

    async def src(ctx):
        for ch in chunks:
            while rng.random() < 0.3:
                ctx.set(dut.inp.valid, 0)
                await ctx.tick()
            ctx.set(dut.inp.payload.data, ch + [0] * (i - len(ch)))
            ctx.set(dut.inp.payload.count, len(ch))
            ctx.set(dut.inp.valid, 1)
            while True:
                _, _, rdy = await ctx.tick().sample(dut.inp.ready)
                if rdy:
                    break
        ctx.set(dut.inp.valid, 0)

    async def snk(ctx):
        for t in takes:
            ctx.set(dut.take, t)
            while True:
                r = rng.random() < 0.7
                ctx.set(dut.out.ready, r)
                _, _, v, pay = await ctx.tick().sample(dut.out.valid, dut.out.payload)
                if v and r:
                    d = [int(pay.data[j]) for j in range(o)]
                    assert d[t:] == [0] * (o - t)
                    got.extend(d[:t])
                    break
        ctx.set(dut.out.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(src, background=True)
    sim.add_testbench(snk)
    sim.run()
    assert got == words
