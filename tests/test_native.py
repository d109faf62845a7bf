"""The native CPU kernels against float64 numpy, and the fallback to torch operations where they cannot be built."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dynamics import native
from dynamics.probes.activations import _NativePass, _Scratch
from dynamics.probes.flat_regions import FlatRule

RTOL = 1e-6

pytestmark = pytest.mark.skipif(native.kernels() is None, reason=f"native kernels unavailable: {native.status()}")

RULES = {
    "relu": FlatRule(0.0, None, "output", "y == 0", nonnegative=True),
    "low": FlatRule(-0.25, None, "output", "y <= -0.25"),
    "high": FlatRule(None, 0.5, "output", "y >= 0.5"),
    "both": FlatRule(-0.75, 0.75, "output", "|y| >= 0.75"),
}


@pytest.fixture(params=[1, 2])
def threads(request):
    """The pass on one thread, and split over two of torch's OpenMP threads (when the build has OpenMP)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("rule_name", RULES)
@pytest.mark.parametrize("shape", [(7, 3), (33, 5, 61), (4, 700), (129, 40, 32)])
def test_activation_pass_matches_numpy(rule_name, shape, threads) -> None:
    """Counts and active units exact, sum and centred sum of squares to 1e-6, rows longer than a chunk, and
    batches large enough to split over threads."""
    rule = RULES[rule_name]
    torch.manual_seed(0)
    values = torch.randn(shape) * 2 + 0.3
    if rule_name == "relu":
        values = values.relu()
    values[:, 0] = -5.0  # a unit flat in every sample under the low rules
    values[-1, -1] = 7.0  # a unit active in the last sample only (the last thread's rows)
    active, stats = _NativePass(rule, _Scratch()).run(native.kernels(), values, 0, counts=True, moments=True)
    y = values.double().numpy().reshape(shape[0], -1)
    inside = np.ones_like(y, dtype=bool)
    if rule.low is not None:
        inside &= y > np.float32(rule.low)
    if rule.high is not None:
        inside &= y < np.float32(rule.high)
    assert stats[0].item() == inside.sum()
    assert stats[1].item() == inside.any(axis=0).sum()
    np.testing.assert_array_equal(active.numpy().reshape(-1), inside.any(axis=0).astype(np.float32))
    np.testing.assert_allclose(stats[2].item(), y.sum(), rtol=RTOL)
    np.testing.assert_allclose(stats[3].item(), ((y - y.mean()) ** 2).sum(), rtol=RTOL)


def test_a_build_without_openmp_runs_one_thread_when_asked_for_two(tmp_path, threads) -> None:
    """The portable build (no OpenMP) ignores the thread count: every unit mask it merges is one it wrote."""
    target = tmp_path / "kernels-portable.so"
    native._build(target, variants=((),))
    library = native.open_library(target)
    torch.manual_seed(3)
    values = torch.randn(64, 40, 32).relu()
    values[:, :5] = 0.0  # dead units
    scratch = _Scratch()
    scratch.flat(64 * 40 * 32, slot=2).fill_(1.0)  # stale masks of other threads must not leak in
    active, stats = _NativePass(RULES["relu"], scratch).run(library, values, 0, counts=True, moments=True)
    alive = (values > 0).any(0)
    np.testing.assert_array_equal(active.numpy(), alive.float().numpy())
    assert stats[1].item() == alive.sum().item() and stats[0].item() == (values > 0).sum().item()


def test_moments_do_not_cancel_for_a_large_mean() -> None:
    """A layer whose mean is 10^4 times its spread (sigmoid-like plateaus) keeps its variance to 1e-6."""
    values = (torch.rand(64, 300, dtype=torch.float64) * 1e-3 + 10.0).float()
    _, stats = _NativePass(RULES["low"], _Scratch()).run(native.kernels(), values, 0, counts=False, moments=True,
                                                         stats=torch.zeros(4))
    y = values.double().numpy()
    np.testing.assert_allclose(stats[3].item(), ((y - y.mean()) ** 2).sum(), rtol=RTOL)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kinds", [("norm",), ("dist",), ("update",), ("norm", "dist"), ("norm", "update"),
                                   ("dist", "update"), ("norm", "dist", "update")])
def test_norms_distances_updates_and_copy_match_numpy(kinds: tuple[str, ...], threads: int) -> None:
    """Every combination of the one-pass norms, on tensors large enough to be shared out over threads."""
    torch.manual_seed(1)
    x = [torch.randn(5, 7), torch.randn(40000), torch.randn(1), torch.randn(3000)]
    a = [torch.randn_like(t) for t in x]
    b = [torch.randn_like(t) for t in x]
    b_before = [t.clone() for t in b]
    tensors, initial, previous = native.TensorList(x), native.TensorList(a), native.TensorList(b)
    library = native.kernels()
    out = {kind: np.full(len(x), np.nan, dtype=np.float32) for kind in ("norm", "dist", "update")}
    for copy in (False, True):
        library.norms_f32(len(x), tensors.pointers(), tensors.numel_address,
                          out["norm"].ctypes.data if "norm" in kinds else None,
                          initial.pointers() if "dist" in kinds else None, out["dist"].ctypes.data,
                          previous.pointers() if "update" in kinds else None, out["update"].ctypes.data, copy, threads)
        expected = {"norm": [np.linalg.norm(t.double().numpy()) for t in x],
                    "dist": [np.linalg.norm((t.double() - u.double()).numpy()) for t, u in zip(x, a, strict=True)],
                    "update": [np.linalg.norm((t.double() - u.double()).numpy())
                               for t, u in zip(x, b_before, strict=True)]}
        for kind in ("norm", "dist", "update"):
            if kind in kinds:
                np.testing.assert_allclose(out[kind], expected[kind], rtol=RTOL)  # the update measured before the copy
            else:
                assert np.isnan(out[kind]).all()
        copied = copy and "update" in kinds
        assert all(torch.equal(u, t if copied else v) for t, u, v in zip(x, b, b_before, strict=True))
    c = [torch.randn_like(t) for t in x]
    copies = native.TensorList(c)  # kept alive: its pointer array is what the call reads
    library.copy_tensors_f32(len(x), copies.pointers(), tensors.pointers(), tensors.numel_address)
    assert all(torch.equal(t, u) for t, u in zip(x, c, strict=True))


def test_loss_and_accuracy_match_torch_including_ties() -> None:
    torch.manual_seed(2)
    output = torch.randint(0, 3, (50, 4)).float()  # many ties: the first maximum counts, as torch.argmax
    target = torch.randint(0, 4, (50,))
    loss = torch.tensor(1.25)
    out = np.empty(2, dtype=np.float32)
    native.kernels().loss_accuracy_f32(loss.data_ptr(), output.data_ptr(), 50, 4, target.data_ptr(), out.ctypes.data)
    assert out[0] == 1.25
    np.testing.assert_allclose(out[1], (output.argmax(1) == target).double().mean().item(), rtol=RTOL)


def test_activation_finish_turns_counts_into_fractions_and_moments() -> None:
    stats = [torch.tensor([30.0, 4.0, 12.0, 8.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])]
    sizes = np.array([[40, 5], [10, 5]], dtype=np.int64)  # entries of each layer, then units
    out = np.empty(8, dtype=np.float32)
    pointers = native.PointerArray(2)
    native.kernels().activation_finish_f32(2, pointers.fill(stats), sizes.ctypes.data, sizes.ctypes.data + 16,
                                           out.ctypes.data)
    np.testing.assert_allclose(out, [10 / 40, 1.0, 6 / 10, 1.0, 12 / 40, 0.0, np.sqrt(8 / 40), 0.0], rtol=RTOL)


def test_without_a_compiler_the_torch_operations_record_the_same_run(tmp_path) -> None:
    """A machine without a C compiler records with torch operations; ``meta.json`` says which kernels ran."""
    script = (
        "import sys, torch\n"
        "from dynamics import Recorder, native\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
        "with Recorder(model, None, sys.argv[1]) as rec:\n"
        "    out = model(torch.randn(16, 6)); loss = out.logsumexp(1).mean(); loss.backward()\n"
        "    rec.step(loss=loss, output=out, target=torch.randint(0, 3, (16,)))\n"
    )
    runs = {}
    for label, env in (("native", {}), ("none", {"CC": "no-such-compiler", "DYNAMICS_CACHE": str(tmp_path / "c")})):
        run_dir = tmp_path / label
        subprocess.run([sys.executable, "-c", script, str(run_dir)], check=True, env={**os.environ, **env},
                       timeout=120)
        runs[label] = run_dir
    meta = {label: json.loads((run / "meta.json").read_text()) for label, run in runs.items()}
    assert meta["native"]["cpu_kernels"] == "native"
    assert meta["none"]["cpu_kernels"].startswith("torch (no C compiler")
    from dynamics import open_run

    native_run, torch_run = open_run(runs["native"]), open_run(runs["none"])
    for name in ("loss", "accuracy", "grad_norm", "param_norm", "act_zero_frac", "act_mean", "act_std", "traj_proj"):
        np.testing.assert_allclose(native_run[name].values, torch_run[name].values, rtol=1e-5, atol=1e-7,
                                   err_msg=name)
