"""What the GPU benchmarks share (``bench/gpu_speed.py``, ``bench/gpu_head.py``): the
variants, how each one runs and is timed, the run's deadline, the parity of top-10 lists.

Imports only torch, numpy and the standard library: the lent GPU machine has nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.inference_common import timed


@dataclass(frozen=True)
class Variant:
    on_cpu: bool = False
    dtype: torch.dtype = torch.float32
    tf32: bool = False
    mode: str = "eager"  # eager | graph (CUDA graph replay) | compile (torch.compile)

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "tf32" if self.tf32 else "fp32"


VARIANTS = {
    "cpu fp32": Variant(on_cpu=True),
    "eager fp32": Variant(),
    "eager tf32": Variant(tf32=True),
    "eager bf16": Variant(dtype=torch.bfloat16),
    "graph fp32": Variant(mode="graph"),
    "graph bf16": Variant(dtype=torch.bfloat16, mode="graph"),
    "compile fp32": Variant(mode="compile"),
    "compile bf16": Variant(dtype=torch.bfloat16, mode="compile"),
}
BASELINE = "cpu fp32"


class Clock:
    """The run's deadline: rows not started by then are left out (and the report says so),
    so a run cut short by the device's time limit still writes what it measured. It also
    keeps the graph and compiled variants that failed, which cost a row, not the run."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []
        self.failed: list[str] = []

    def allows(self, what: str) -> bool:
        if time.perf_counter() < self.end:
            return True
        self.skipped.append(what)
        return False


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def runnable(fn: Callable[[], object], mode: str) -> Callable[[], object]:
    """``fn`` as the variant runs it. A CUDA graph replays the kernels of one captured call
    on the same input buffers: no Python and no launch cost per kernel."""
    if mode == "compile":
        return torch.compile(fn, dynamic=False)
    if mode != "graph":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the graph, as capture requires
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn()

    def replay() -> object:
        graph.replay()
        return captured

    return replay


def time_variant(
    fn: Callable[[], object],
    variant: Variant,
    device: torch.device,
    budget_s: float,
    clock: Clock,
    what: str,
) -> tuple[float, object] | None:
    """(seconds per call, the call's output); None where a graph or compiled variant failed
    (the error goes to ``clock.failed``)."""
    torch.backends.cuda.matmul.allow_tf32 = variant.tf32
    torch.backends.cudnn.allow_tf32 = variant.tf32
    try:
        with torch.inference_mode():
            call = runnable(fn, variant.mode)
            output = call()
            seconds = timed(call, 3, budget_s, _sync(device))
    except Exception as error:  # noqa: BLE001 - eager runs have no handler: they must work
        if variant.mode == "eager":
            raise
        clock.failed.append(f"{what}: {error!r}"[:300])
        return None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return seconds, output


def device_of(variant: Variant, device: str) -> torch.device:
    return torch.device("cpu" if variant.on_cpu else device)


def usable(name: str, device: str, compile_here: bool) -> bool:
    """Graphs need CUDA; compiled variants run only at the shapes chosen for them (each
    compilation costs tens of seconds of device time)."""
    variant = VARIANTS[name]
    if variant.mode == "graph" and device == "cpu":
        return False
    return variant.mode != "compile" or compile_here


def list_parity(
    reference: tuple[torch.Tensor, torch.Tensor],
    found: torch.Tensor,
    catalog: torch.Tensor,
    tie: float = 1e-5,
) -> dict:
    """Top-10 lists against the reference's: the share of items in common, and the share of
    lists that are the same up to ties (position by position, the reference model's scores of
    the two lists' items within ``tie``; see ``serving.model_server.scoring.same_ranking``)."""
    users, expected = reference
    overlap = np.mean(
        [len(set(f.tolist()) & set(e.tolist())) / e.numel() for f, e in zip(found, expected)]
    )

    def scores(lists: torch.Tensor) -> torch.Tensor:  # the reference's score of each item
        return torch.einsum("bd,bkd->bk", users, catalog[lists].float())

    same = ((scores(found) - scores(expected)).abs() <= tie).all(dim=1)
    return {"top10_overlap": float(overlap), "top10_same_up_to_ties": float(same.float().mean())}


@dataclass(frozen=True)
class ListPart:
    """A part that ranks the catalog for a batch of users (the head, the scoring stand-in):
    what ``bench_lists`` needs to know of it."""

    name: str
    catalog: Callable[[int], torch.Tensor]
    """items -> the fp32 catalog matrix on the CPU (also what parity rescores with)."""
    recommend: Callable[[torch.Tensor, int, Variant, torch.device], Callable[[], tuple]]
    """(catalog, batch, variant, device) -> a call giving (user vectors, scores, top ids)."""
    figures: Callable[[torch.Tensor, int, float, Variant], dict]
    """(catalog, batch, seconds, variant) -> the part's own figures (TFLOP/s, ...)."""
    compile_items: int
    """Compiled variants run at this catalog size only."""


def bench_lists(
    part: ListPart,
    device: str,
    sizes: list[int],
    batches: list[int],
    variants: list[str],
    clock: Clock,
    budget_s: float = 0.3,
    compile_batch: int = 256,
) -> list[dict]:
    """One row per catalog size, batch and variant: users/s and the top-10's parity with
    the first variant of its batch (the CPU's, by default)."""
    rows_out = []
    for size in sizes:
        catalog = part.catalog(size)
        for batch in batches:
            reference = None
            for name in variants:
                if not usable(name, device, (size, batch) == (part.compile_items, compile_batch)):
                    continue
                what = f"{part.name} {size} {batch} {name}"
                if not clock.allows(what):
                    return rows_out
                variant = VARIANTS[name]
                dev = device_of(variant, device)
                call = part.recommend(catalog, batch, variant, dev)
                timing = time_variant(call, variant, dev, budget_s, clock, what)
                if timing is None:
                    continue
                seconds, (users, _, top) = timing
                found = top[:, :10].cpu()
                if reference is None:
                    reference = (users.float().cpu(), found)
                rows_out.append(
                    {
                        "part": part.name, "items": size, "batch": batch, "variant": name,
                        "users_per_s": batch / seconds, "ms": 1000 * seconds,
                        "precision": variant.precision,
                        **part.figures(catalog, batch, seconds, variant),
                        **list_parity(reference, found, catalog),
                    }
                )  # fmt: skip
                print(rows_out[-1], flush=True)
                del call
        del catalog
    return rows_out
