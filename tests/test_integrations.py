"""The framework callbacks record what the Recorder records in a hand-written loop, checked by brute force: the
Lightning callback per optimizer step under gradient accumulation, the transformers callback against the values
``Trainer`` logs itself."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dynamics import open_run
from dynamics.probes.flat_regions import GELU_LOW

pytestmark = pytest.mark.usefixtures("one_thread")
RTOL = 1e-5


def _meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


# ---------------------------------------------------------------- Lightning


def _lightning_module(pl, fail_at: int | None = None):
    class MLP(pl.LightningModule):
        """A 2-layer ReLU MLP that keeps, per micro-batch, what the brute-force comparison needs."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
            self.seen: list[tuple[float, float, int, int]] = []
            """Per training micro-batch: loss, correct predictions, flat ReLU entries (reference forward), entries."""
            self.val_losses: list[float] = []

        def training_step(self, batch, batch_idx):
            if fail_at is not None and len(self.seen) == fail_at:
                raise RuntimeError("boom at batch 5")
            x, y = batch
            out = self.net(x)
            loss = F.cross_entropy(out, y)
            with torch.no_grad():
                hidden = torch.relu(self.net[0](x))
            correct = int((out.argmax(-1) == y).sum())
            self.seen.append((loss.item(), correct, int((hidden == 0).sum()), hidden.numel()))
            return {"loss": loss, "output": out, "target": y}

        def validation_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x)
            loss = F.cross_entropy(out, y)
            if not self.trainer.sanity_checking:
                self.val_losses.append(loss.item())
            self.log("val_loss", loss)
            self.log("val_acc", (out.argmax(-1) == y).float().mean())

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    class Reference(pl.Callback):
        """Gradient norms and learning rate before each optimizer step, parameter norms after it."""

        def __init__(self) -> None:
            self.grads: list[list[float]] = []
            self.lrs: list[float] = []
            self.params: list[list[float]] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # before clipping
            self.grads.append([p.grad.norm().item() for p in pl_module.parameters()])
            self.lrs.append(optimizer.param_groups[0]["lr"])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step > len(self.params):
                self.params.append([p.norm().item() for p in pl_module.parameters()])

    return MLP, Reference


def _lightning_fit(tmp_path: Path, fail_at: int | None = None):
    pl = pytest.importorskip("lightning.pytorch")
    from dynamics.integrations.lightning import DynamicsCallback

    pl.seed_everything(0, verbose=False)
    x, y = torch.randn(24, 8), torch.randint(0, 3, (24,))
    train = DataLoader(TensorDataset(x, y), batch_size=4)  # 6 micro-batches = 3 optimizer steps an epoch
    val = DataLoader(TensorDataset(torch.randn(8, 8), torch.randint(0, 3, (8,))), batch_size=8)
    mlp_class, reference_class = _lightning_module(pl, fail_at)
    module, reference = mlp_class(), reference_class()
    callback = DynamicsCallback(tmp_path / "run")
    trainer = pl.Trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        gradient_clip_val=0.05,  # clips every step: the recorded norms must be those before clipping
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=[callback, reference],
    )
    error = None
    try:
        trainer.fit(module, train, val)
    except RuntimeError as err:
        error = err
    return module, reference, error


def test_lightning_records_each_optimizer_step(tmp_path: Path) -> None:
    module, reference, error = _lightning_fit(tmp_path)
    assert error is None
    run = tmp_path / "run"
    ds = open_run(run)
    steps = 6
    assert ds.step.values.tolist() == list(range(steps))
    assert ds.epoch.values.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(module.seen) == 2 * steps
    pairs = [module.seen[2 * k : 2 * k + 2] for k in range(steps)]
    np.testing.assert_allclose(ds.loss.values, [np.mean([s[0] for s in pair]) for pair in pairs], rtol=RTOL)
    np.testing.assert_allclose(ds.accuracy.values, [sum(s[1] for s in pair) / 8 for pair in pairs], rtol=RTOL)
    expected_flat = [sum(s[2] for s in pair) / sum(s[3] for s in pair) for pair in pairs]
    assert ds.layer.values.tolist() == ["net.1"]
    np.testing.assert_allclose(ds.act_zero_frac.sel(layer="net.1").values, expected_flat, rtol=RTOL)
    names = [name for name, _ in module.named_parameters()]
    assert ds.param.values.tolist() == names
    np.testing.assert_allclose(ds.grad_norm.values, reference.grads, rtol=RTOL)
    assert (np.sqrt((ds.grad_norm.values**2).sum(1)) > 0.05 * 1.5).all()  # really clipped afterwards
    np.testing.assert_allclose(ds.param_norm.values, reference.params, rtol=RTOL)
    np.testing.assert_allclose(ds.lr.values, reference.lrs, rtol=RTOL)  # as applied: 0.5 / (1 + step)
    np.testing.assert_allclose(ds.lr.values, [0.5 / (1 + k) for k in range(steps)], rtol=RTOL)
    assert ds.eval_step.values.tolist() == [2, 5]  # the sanity check is not recorded
    np.testing.assert_allclose(ds.val_loss.values, module.val_losses, rtol=RTOL)
    assert np.isfinite(ds.val_accuracy.values).all()
    meta = _meta(run)
    assert meta["status"] == "finished"
    config = json.loads((run / "config.json").read_text())
    assert config["integration"] == "lightning" and config["trainer"]["accumulate_grad_batches"] == 2


def test_lightning_failure_marks_the_run_failed(tmp_path: Path) -> None:
    _, _, error = _lightning_fit(tmp_path, fail_at=5)
    assert error is not None and "boom" in str(error)
    meta = _meta(tmp_path / "run")
    assert meta["status"] == "failed" and "RuntimeError: boom at batch 5" in meta["error"]
    assert open_run(tmp_path / "run").step.values.tolist() == [0, 1]  # batches 0-3: two optimizer steps


@pytest.mark.slow  # two Lightning start-ups under DDP: about 2 minutes on a busy 2-core machine
def test_lightning_ddp_records_what_one_process_records(tmp_path: Path) -> None:
    """Under Lightning's DDP strategy (2 CPU processes, gloo) the callback builds the Recorder once the process
    group exists: rank 0 alone writes, and the run holds what one process records with the same global batch."""
    pytest.importorskip("lightning.pytorch")
    worker = Path(__file__).with_name("lightning_ddp_worker.py")
    runs = {}
    for devices in (1, 2):
        run = tmp_path / f"devices-{devices}"
        result = subprocess.run(
            [sys.executable, str(worker), str(run), str(devices)], capture_output=True, text=True, timeout=400
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert _meta(run)["status"] == "finished"
        runs[devices] = open_run(run)
    single, ddp = runs[1], runs[2]
    assert ddp.step.values.tolist() == single.step.values.tolist() == [0, 1, 2, 3]
    for name in ("loss", "accuracy", "grad_norm", "param_norm", "act_zero_frac", "act_dead_frac", "act_mean", "lr"):
        np.testing.assert_allclose(ddp[name].values, single[name].values, rtol=RTOL, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------- transformers


class Tokens(Dataset):
    """Random token sequences with a label that depends on them (one label per sequence)."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, 100, (size, 12), generator=generator)
        self.labels = self.input_ids[:, 0] % 3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_transformers_trainer_records_what_it_logs(tmp_path: Path, accumulation: int) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from dynamics.integrations.hf import DynamicsCallback

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
        initializer_range=0.5,  # wide enough for GELU inputs in the flat tail (x <= -2.35)
    )
    model = BertForSequenceClassification(config)
    activations = [(n, m) for n, m in model.named_modules() if n.endswith("intermediate_act_fn")]
    assert len(activations) == 2 and not isinstance(activations[0][1], nn.GELU)  # GELUActivation

    class Reference(TrainerCallback):
        """Flat GELU entries and correct predictions of each optimizer step's training forward passes."""

        def __init__(self) -> None:
            self.flat = [[0, 0] for _ in activations]
            self.correct = [0, 0]
            self.steps: list[tuple[list[float], float]] = []
            for index, (_, act) in enumerate(activations):
                act.register_forward_pre_hook(self._count(index))
            model.register_forward_hook(self._accuracy, with_kwargs=True)

        def _count(self, index):
            def hook(module, args):
                if module.training and torch.is_grad_enabled():
                    self.flat[index][0] += int((args[0] <= GELU_LOW).sum())
                    self.flat[index][1] += args[0].numel()

            return hook

        def _accuracy(self, module, args, kwargs, output):
            if module.training and torch.is_grad_enabled():
                self.correct[0] += int((output.logits.argmax(-1) == kwargs["labels"]).sum())
                self.correct[1] += len(kwargs["labels"])

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(([f / n for f, n in self.flat], self.correct[0] / self.correct[1]))
            self.flat = [[0, 0] for _ in activations]
            self.correct = [0, 0]

    reference = Reference()
    steps, eval_steps = 4 // accumulation, 2 // accumulation
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=accumulation,
        learning_rate=5e-3,
        warmup_steps=1,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    callback = DynamicsCallback(tmp_path / "run")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(16, seed=1),
        eval_dataset=Tokens(8, seed=2),
        callbacks=[callback, reference],
    )
    trainer.train()

    run = tmp_path / "run"
    ds = open_run(run)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    evaluated = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert ds.step.values.tolist() == list(range(steps)) and len(logged) == steps
    np.testing.assert_allclose(ds.loss.values, [entry["loss"] for entry in logged], rtol=RTOL)
    total_grad = np.sqrt((ds.grad_norm.values.astype(np.float64) ** 2).sum(1))
    np.testing.assert_allclose(total_grad, [entry["grad_norm"] for entry in logged], rtol=1e-4)
    np.testing.assert_allclose(ds.lr.values, [entry["learning_rate"] for entry in logged], rtol=RTOL)
    after = [p.detach().norm().item() for p in model.parameters() if p.requires_grad]
    np.testing.assert_allclose(ds.param_norm.values[-1], after, rtol=RTOL)
    # the two GELUActivation modules (the core rules alone see only the pooler's nn.Tanh)
    gelus = [name for name, _ in activations]
    assert ds.layer.values.tolist() == [*gelus, "bert.pooler.activation"]
    recorded = ds.act_zero_frac.sel(layer=gelus).values
    assert (recorded > 0.05).all()
    np.testing.assert_allclose(recorded, [flat for flat, _ in reference.steps], rtol=RTOL)
    np.testing.assert_allclose(ds.accuracy.values, [accuracy for _, accuracy in reference.steps], rtol=RTOL)
    assert ds.eval_step.values.tolist() == list(range(eval_steps - 1, steps, eval_steps))  # the step it followed
    np.testing.assert_allclose(ds.val_loss.values, [entry["eval_loss"] for entry in evaluated], rtol=RTOL)
    assert _meta(run)["status"] == "finished"
    config = json.loads((run / "config.json").read_text())
    assert config["integration"] == "transformers" and config["training_args"]["hub_token"] == "<HUB_TOKEN>"


def test_hf_flat_rules_are_where_the_slope_flattens() -> None:
    """Each mapped transformers activation class: |f'| <= 0.05 just inside its flat region, > 0.05 just outside."""
    pytest.importorskip("transformers")
    from transformers import activations

    from dynamics.integrations.hf import hf_flat_rule

    modules = [
        activations.GELUActivation(),
        activations.NewGELUActivation(),
        activations.FastGELUActivation(),
        activations.QuickGELUActivation(),
        activations.MishActivation(),
        activations.ClippedGELUActivation(-10, 10),
        activations.ReLUSquaredActivation(),
        activations.LaplaceActivation(),
        nn.Mish(),
    ]
    if hasattr(activations, "SiLUActivation"):
        modules.append(activations.SiLUActivation())
    for module in modules:
        rule = hf_flat_rule(module)
        assert rule is not None, type(module).__name__
        edges = [edge for edge in (rule.low, rule.high) if edge is not None]
        for side, edge in zip((-1, 1), edges, strict=False):
            if rule.space == "output":  # a monotone activation: find x with f(x) at the edge by bisection
                lo, hi = torch.tensor(-20.0, dtype=torch.float64), torch.tensor(20.0, dtype=torch.float64)
                for _ in range(200):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if module(mid) < edge else (lo, mid)
                edge = float(lo)
            if rule.high is not None and edge == rule.high and edge >= 4:
                continue  # a clipped end: slope 0 beyond, 1 before
            inside = torch.tensor(edge + side * 1e-3, dtype=torch.float64, requires_grad=True)
            outside = torch.tensor(edge - side * 1e-3, dtype=torch.float64, requires_grad=True)
            slope_in = torch.autograd.grad(module(inside), inside)[0].abs().item()
            slope_out = torch.autograd.grad(module(outside), outside)[0].abs().item()
            assert slope_in <= 0.05 < slope_out, (type(module).__name__, edge, slope_in, slope_out)


# ---------------------------------------------------------------- packaging


@pytest.mark.parametrize(
    ("module", "package", "extra"), [("lightning", "lightning", "lightning"), ("hf", "transformers", "hf")]
)
def test_a_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch, module: str, package: str, extra: str):
    monkeypatch.delitem(sys.modules, f"dynamics.integrations.{module}", raising=False)
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ImportError, match=rf"pip install 'dynamics\[{extra}\]'$") as raised:
        importlib.import_module(f"dynamics.integrations.{module}")
    assert "\n" not in str(raised.value) and raised.value.__cause__ is None


def test_the_core_imports_no_framework() -> None:
    code = (
        "import sys, dynamics, dynamics.recorder, dynamics.integrations, dynamics.integrations.common; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_skip_is_refused() -> None:
    from dynamics.errors import ConfigError
    from dynamics.integrations.common import refuse_skip

    with pytest.raises(ConfigError, match="callback cannot"):
        refuse_skip("skip")
