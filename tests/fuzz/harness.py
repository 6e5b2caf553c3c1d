"""Fuzzing harness: run one case in a forked child, classify what happened.

The invariant every surface must keep: a ternc error (an exception whose class is defined in a
`ternc.` module, e.g. FrontendError, ModuleFileError, ArtifactError, SpecError) or a correct result;
never another exception, a crash (signal), a hang (timeout) or more than 1 GiB of memory.

Cases run in children forked from a *zygote*: a fresh interpreter (this file run as a script) that
imports `tests/fuzz/fuzz_targets.py` once and then forks one child per case. So a segfault, an abort, a hang
or a runaway allocation is observed from outside instead of taking pytest down, and the pytest process
never imports TVM (the artifact target loads TVM's runtime only, which would leave no compiler for the
other tests of that worker). The child's address space is capped (RLIMIT_AS) a little above the memory
bound, so a huge allocation fails fast inside the child (reported as a non-ternc MemoryError) instead
of pushing the machine into swap. Payloads travel as JSON (bytes base64-encoded): no pickle.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import resource
import select
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MEMORY_BOUND = 1 << 30  # bytes of RSS a case may add on top of the parent's
CASE_TIMEOUT = 60.0  # seconds
CORPUS = Path(__file__).parent / "corpus"
BAD = ("other", "crash", "hang", "memory")


def is_ternc_error(e: BaseException) -> bool:
    return isinstance(e, Exception) and type(e).__module__.split(".")[0] == "ternc"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Outcome:
    kind: str  # ok | ternc | other | crash | hang | memory
    detail: str = ""
    rss_added: int = 0
    seconds: float = 0.0

    @property
    def bad(self) -> bool:
        return self.kind in BAD


def run_isolated(fn: Callable[[Any], Any], payload: Any, timeout: float = CASE_TIMEOUT,
                 memory: int = MEMORY_BOUND) -> Outcome:
    """Run fn(payload) in a forked child. fn returns normally for a correct result, raises a ternc
    error for refused input; anything else is a finding."""
    base_rss = _rss_bytes()
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            start_rss = _rss_bytes()  # the child's own baseline (the parent's RSS at fork can differ)
            cap = _vm_bytes() + memory + (1 << 30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            try:
                fn(payload)
                res = {"kind": "ok"}
            except BaseException as e:  # noqa: BLE001 - classifying is the point
                if is_ternc_error(e):
                    res = {"kind": "ternc", "detail": f"{type(e).__name__}: {str(e)[:200]}"}
                else:
                    tb = traceback.format_exception(type(e), e, e.__traceback__)
                    res = {"kind": "other", "detail": f"{type(e).__module__}.{type(e).__name__}: {str(e)[:300]}\n"
                                                      + "".join(tb[-4:])[-1500:]}
            res["rss_added"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start_rss)
            os.write(w, json.dumps(res).encode())
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    status = rusage = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            os.close(r)
            return Outcome("hang", f"no result after {timeout:.0f} s", seconds=time.perf_counter() - t0)
        ready, _, _ = select.select([r], [], [], min(left, 1.0))
        if ready:
            data = os.read(r, 1 << 16)
            if data:
                chunks.append(data)
                continue
            break  # EOF: the child closed its end (exited)
    os.close(r)
    _, status, rusage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    added = max(0, rusage.ru_maxrss * 1024 - base_rss)
    if os.WIFSIGNALED(status):
        return Outcome("crash", f"signal {signal.Signals(os.WTERMSIG(status)).name}", added, seconds)
    try:
        res = json.loads(b"".join(chunks))
    except ValueError:
        return Outcome("crash", f"child exited with status {os.WEXITSTATUS(status)} without a result", added, seconds)
    added = res.get("rss_added", added)
    out = Outcome(res["kind"], res.get("detail", ""), added, seconds)
    if added > memory and not out.bad:
        out = Outcome("memory", f"RSS grew by {added / 2**30:.2f} GiB ({out.kind})", added, seconds)
    return out


def encode(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"__b64__": base64.b64encode(x).decode()}
    if isinstance(x, dict):
        return {k: encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    return x


def decode(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__b64__"}:
            return base64.b64decode(x["__b64__"])
        return {k: decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [decode(v) for v in x]
    return x


class Zygote:
    """A fresh interpreter that has imported the fuzz targets and forks one child per case."""

    def __init__(self, env: dict | None = None):
        self.env = {**os.environ, **(env or {})}
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=self.env, text=True, bufsize=1)

    def run(self, target: str, payload: Any, timeout: float = CASE_TIMEOUT) -> Outcome:
        for attempt in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(json.dumps({"target": target, "payload": encode(payload),
                                                  "timeout": timeout}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if line:
                return Outcome(**json.loads(line))
            self.close()
        return Outcome("crash", "the zygote died")

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _zygote_main() -> None:
    # run as a script, so this file's folder is sys.path[0] (Python's doing, not an edit)
    import fuzz_targets as targets

    targets.warm_up()
    for line in sys.stdin:
        req = json.loads(line)
        out = run_isolated(getattr(targets, req["target"]), decode(req["payload"]), req["timeout"])
        sys.stdout.write(json.dumps(out.__dict__) + "\n")
        sys.stdout.flush()


class _BudgetSpent(Exception):
    """TERNC_FUZZ_SECONDS ran out: stop generating, report the cases that ran."""


@dataclass
class Tally:
    """Outcome counts of one fuzz run; `findings` keeps the payloads of bad outcomes."""

    surface: str
    counts: Counter = field(default_factory=Counter)
    findings: list = field(default_factory=list)
    max_rss_added: int = 0
    max_seconds: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    stopped: str = ""

    def add(self, outcome: Outcome, payload: Any) -> None:
        self.counts[outcome.kind] += 1
        self.max_rss_added = max(self.max_rss_added, outcome.rss_added)
        self.max_seconds = max(self.max_seconds, outcome.seconds)
        if outcome.bad:
            self.findings.append((outcome, payload))
        if sum(self.counts.values()) % 250 == 0:
            self.report()  # progress for long runs (an interrupted run still leaves its figures)

    def summary(self) -> dict:
        return {"surface": self.surface, "cases": sum(self.counts.values()), "counts": dict(self.counts),
                "bad": sum(self.counts[k] for k in BAD), "max_rss_added_mib": round(self.max_rss_added / 2**20, 1),
                "max_case_seconds": round(self.max_seconds, 2), "seconds": round(time.perf_counter() - self.t0, 1),
                "findings": [f"{o.kind}: {o.detail[:400]}" for o, _ in self.findings[:20]],
                **({"stopped": self.stopped} if self.stopped else {})}

    def report(self, save: Callable[[Any, Path], None] | None = None) -> dict:
        """Write the summary (and the payloads of findings) where TERNC_FUZZ_REPORT points, if set."""
        s = self.summary()
        out = os.environ.get("TERNC_FUZZ_REPORT")
        if out:
            d = Path(out)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{self.surface}.json").write_text(json.dumps(s, indent=1))
            if save is not None:
                for k, (_o, payload) in enumerate(self.findings[:50]):
                    save(payload, d / f"{self.surface}-finding-{k}")
        return s


def examples(short: int) -> int:
    """Cases per surface: `short` in the default run, TERNC_FUZZ_EXAMPLES under the fuzz marker."""
    return int(os.environ.get("TERNC_FUZZ_EXAMPLES", short))


def corpus_files(surface: str) -> list[Path]:
    d = CORPUS / surface
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def fuzz(surface: str, strategy, target: str, n: int, seed: int, zygote: Zygote,
         save: Callable[[Any, Path], None] | None = None) -> dict:
    """Generate `n` payloads with hypothesis (seeded), run each through `target` in the zygote, and
    assert that none broke the invariant. Returns the summary (also written to $TERNC_FUZZ_REPORT)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    tally = Tally(surface)
    budget = float(os.environ.get("TERNC_FUZZ_SECONDS", 0)) or None  # a long run on a shared machine

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(payload):
        if budget is not None and time.perf_counter() - tally.t0 > budget:
            raise _BudgetSpent
        tally.add(zygote.run(target, payload), payload)

    try:
        one()
    except _BudgetSpent:
        tally.stopped = f"time budget of {budget:.0f} s spent after {sum(tally.counts.values())} of {n} cases"
    s = tally.report(save)
    assert s["bad"] == 0, json.dumps(s, indent=1)
    return s


if __name__ == "__main__" and sys.argv[1:] == ["zygote"]:
    _zygote_main()
