"""CAMEGrad under DistributedDataParallel: two CPU processes (gloo), each holding half the batch,
must take exactly the steps of one process on the whole batch, for every aggregator, with
gradient accumulation and with a GradScaler (including a step only one rank finds non-finite).

One spawn runs every case (tests/ddp_helpers.py); the tests below compare its results with
one-process runs. Float64 models, so the only differences are summation orders (~1e-16).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ddp_helpers import AGGREGATORS, SCENARIOS, STEPS, run, worker

torch.set_num_threads(1)
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    if not torch.distributed.is_available():
        pytest.fail("torch.distributed is not available in this build")
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.spawn(worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 180  # a collective that never completes must fail, not hang
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 180 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_params_close(got, want, atol=1e-10):
    for p, q in zip(got, want, strict=False):
        torch.testing.assert_close(p, q, rtol=0, atol=atol)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", AGGREGATORS)
def test_ddp_steps_equal_one_process_on_the_whole_batch(ddp_results, name, scenario):
    ref = run(name, "scaler" if scenario == "scaler" else "plain")  # accumulation: same target
    for rank in range(WORLD):
        got = ddp_results[rank][(name, scenario)]
        _assert_params_close(got["params"], ref["params"])
        assert got["skipped"] == ref["skipped"]
        for a, b in zip(got["inner"], ref["inner"], strict=False):  # the diagnostics are the whole batch's too
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-6)  # kept as float32
        assert got["scale"] == ref["scale"]
        # from the second step on, the gradients live in the flat buffer and one collective
        # carries them all (the first step also exchanges the reach pattern: two)
        assert got["flat_buffer"]
        assert got["allreduce"][0] == 2 and got["allreduce"][1:] == [1] * (STEPS - 1)


def test_nonfinite_on_one_rank_skips_on_every_rank(ddp_results):
    for name in AGGREGATORS:
        a, b = (ddp_results[r][(name, "scaler")] for r in range(WORLD))
        assert a["skipped"] == b["skipped"] == [False, True, False, False]
        assert a["scale"] == b["scale"] == 2.0**9  # both scalers backed off once
        _assert_params_close(a["params"], b["params"], atol=0)


def test_distributed_false_leaves_ranks_on_their_own_half(ddp_results):
    # the control: without the all-reduce each rank follows its own half of the data
    a, b = (ddp_results[r][("came", "off")] for r in range(WORLD))
    assert all(n == 0 for n in a["allreduce"])
    assert max(float((p - q).abs().max()) for p, q in zip(a["params"], b["params"], strict=False)) > 1e-3


def test_find_unused_parameters_ddp_is_also_exact(ddp_results):
    # DDP's graph search for unused parameters runs in every forward; it must neither complain
    # nor change the result ("Expected to have finished reduction" would stop the worker)
    ref = run("came", "plain")
    for rank in range(WORLD):
        _assert_params_close(ddp_results[rank][("came", "find_unused")]["params"], ref["params"])
