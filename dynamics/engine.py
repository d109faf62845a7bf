"""The built-in training loop: the whole data set on the device, a Recorder attached, evaluation per epoch.

Used by ``python -m dynamics.collect``, sweeps and notebooks. Each epoch draws a seeded permutation of the
training split and drops the last incomplete batch, so every step sees ``batch_size`` samples and a run
is reproducible from its config. Evaluation on the test split runs at every epoch end and is recorded as
``val_loss``/``val_accuracy`` at the epoch's last step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dynamics.augment import InputPipeline
from dynamics.checkpoint import (
    CheckpointCadence,
    load_checkpoint,
    read_state,
    rng_states,
    save_checkpoint,
    set_rng_states,
    spawn_path,
    write_state,
)
from dynamics.config import RunConfig, lmc_spawn_steps, probe_names
from dynamics.data import Dataset, load_dataset, to_device
from dynamics.distributed import Ranks, join, leave
from dynamics.errors import ConfigError, parameters_as
from dynamics.models import build_model
from dynamics.models.budget import check_model_fits, training_costs
from dynamics.optim import build_optimizer, build_schedule
from dynamics.paths import check_path
from dynamics.probes import (
    FisherTrace,
    GeometricCadence,
    HessianDensity,
    HessianTrace,
    Interference,
    NoiseScale,
    Probe,
    ProbeSet,
    Representation,
    Sharpness,
    Sketch,
    make_probe_set,
)
from dynamics.recorder import Recorder
from dynamics.runinfo import now_iso
from dynamics.snapshots import SnapshotWriter, snapshot_bytes, snapshot_steps
from dynamics.steps import autocast, evaluate_split, prepare_model
from dynamics.store import read_json
from dynamics.strategies import Mixup, StrategyPlan, check_strategies_fit_data, validate_strategies
from dynamics.strategies.plan import MIXUP_KEYS


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports: where it is and its final accuracies on the full splits."""

    run_dir: Path
    steps: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float


@dataclass(frozen=True)
class Branch:
    """A child of a run: its training continued from a saved state with another data order, for ``steps`` steps.

    ``state`` is the file of a spawn state (:func:`dynamics.checkpoint.spawn_path`) or checkpoint of the
    parent: the model, optimizer, learning-rate schedule, strategies and global generators continue from it
    as they are, so the child trains with the parent's hyperparameters at those steps; only the batch order
    (a fresh permutation from ``order_seed``, also for the rest of a spawn's epoch) and the augmentation
    draws (``augment_seed``) are the child's own. Its steps keep the parent's numbering; after the last one
    a checkpoint holds the child's final state and the run ends.
    """

    state: Path
    order_seed: int
    augment_seed: int
    steps: int


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' was asked for but CUDA is not available; use device='cpu' or 'auto'", key="device"
        )
    return torch.device(name)


def default_run_dir(config: RunConfig, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<UTC timestamp>-<dataset>-<model>-s<seed>``."""
    stamp = now_iso().replace(":", "").replace("-", "").split(".")[0].replace("+0000", "")
    return Path(root) / f"{stamp}-{config.dataset}-{config.model}-s{config.seed}"


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    prepare: InputPipeline | None = None,
    precision: str = "fp32",
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split (per target position), in eval mode, unrecorded.

    The host-side view of :func:`dynamics.steps.evaluate_split`; ``prepare`` turns stored batches into
    model inputs (normalised images).
    """
    loss, accuracy = evaluate_split(model, x, y, batch_size, prepare=prepare, precision=precision)
    return float(loss), float(accuracy)


def model_options(config: RunConfig, data: Dataset) -> dict[str, Any]:
    """The keyword arguments of :func:`dynamics.models.build_model` for ``config``'s model on ``data``."""
    return {
        "input_shape": data.input_shape,
        "num_classes": data.num_classes,
        "width": config.width,
        "depth": config.depth,
        "activation": config.activation,
        "width_mult": config.width_mult,
        "patch_size": config.patch_size,
        "kind": data.kind,
    }


def load_data(config: RunConfig, device: torch.device) -> Dataset:
    """The configured data set, moved to ``device`` whole."""
    try:
        with parameters_as({"name": "dataset", "seed": "data_seed"}):
            data = load_dataset(
                config.dataset,
                num_samples=config.num_samples,
                train_size=config.train_size,
                seed=config.data_seed,
                data_dir=config.data_dir,
                image_size=config.image_size,
                seq_len=config.seq_len,
            )
    except OSError as err:
        if config.data_dir is None:  # not the user's files (a cache, say): no setting to fix
            raise
        where = err.filename or config.data_dir
        raise ConfigError(
            f"{config.dataset}: reading {where} failed ({err.strerror or err}); check data_dir", key="data_dir"
        ) from None
    if len(data.x_train) < config.batch_size:
        raise ConfigError(
            f"batch_size {config.batch_size} exceeds the {len(data.x_train)} training samples; "
            "lower batch_size or raise train_size",
            key=("batch_size", "train_size"),
        )
    return to_device(data, device)


def interference_mixer(config: RunConfig, num_classes: int) -> Mixup:
    """The interference probe's own mixer: the run's Mixup/CutMix mixing every batch, else Mixup(interference_alpha).

    Its seed differs from the run's mixer, and its generator is its own, so the run's draws are unchanged.
    """
    seed = config.seed + 104729
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        with parameters_as(MIXUP_KEYS):
            return Mixup(
                num_classes,
                config.mixup_alpha,
                config.cutmix_alpha,
                1.0,
                config.switch_prob,
                config.mix_mode,
                config.label_smoothing,
                seed=seed,
            )
    with parameters_as({**MIXUP_KEYS, "mixup_alpha": "interference_alpha"}):
        return Mixup(
            num_classes,
            config.interference_alpha,
            mode=config.mix_mode,
            label_smoothing=config.label_smoothing,
            seed=seed,
        )


def phase_probes(config: RunConfig, data: Dataset, pipeline: InputPipeline, run_dir: Path) -> list[Probe]:
    """The representation, Fisher, interference and curvature probes ``config`` asks for, on a probe set seeded by
    data_seed."""
    curvature = config.sharpness or config.hessian_trace or config.hessian_density or config.noise_scale
    if not (config.representation or config.fisher or config.interference or curvature):
        return []
    with parameters_as({"samples": "probe_samples", "seed": "data_seed"}):
        probe_set = make_probe_set(data, config.probe_samples, config.data_seed, prepare=lambda x: pipeline(x, False))
    with parameters_as({"growth": "probe_growth", "max_interval": "probe_max_interval"}):
        cadence = GeometricCadence(config.probe_growth, config.probe_max_interval)
    probes: list[Probe] = []
    if config.representation:
        probes.append(
            Representation(
                probe_set,
                cadence=cadence,
                every=config.every,
                features_dir=run_dir / "features" if config.store_features else None,
            )
        )
    if config.fisher:
        probes.append(FisherTrace(probe_set, cadence=cadence, every=config.every, seed=config.seed))
    if config.interference:
        with parameters_as({"interval": "interference_every", "sample_alignment": "interference_samples"}):
            probes.append(
                Interference(
                    interference_mixer(config, data.num_classes),
                    interval=config.interference_every,
                    every=config.every,
                    probe_set=probe_set,
                    sample_alignment=config.interference_samples,
                )
            )
    return probes + curvature_probes(config, probe_set, cadence)


def curvature_probes(config: RunConfig, probe_set: ProbeSet, cadence: GeometricCadence) -> list[Probe]:
    """The sharpness, Hessian trace and density, and noise scale probes ``config`` asks for, on ``probe_set``."""
    probes: list[Probe] = []
    every, seed = config.every, config.seed
    with parameters_as({"k": "sharpness_k", "steps": "lanczos_steps", "samples": "hessian_samples"}):
        if config.sharpness:
            k, steps = config.sharpness_k, config.lanczos_steps
            probes.append(Sharpness(probe_set, cadence=cadence, every=every, k=k, steps=steps, seed=seed))
        if config.hessian_trace:
            samples = config.hessian_samples
            probes.append(HessianTrace(probe_set, cadence=cadence, every=every, samples=samples, seed=seed))
    if config.hessian_density:
        names = {"growth": "hessian_density_growth", "vectors": "hessian_density_vectors", "steps": "lanczos_steps"}
        with parameters_as({**names, "max_interval": "probe_max_interval"}):
            sparse = GeometricCadence(config.hessian_density_growth, config.probe_max_interval)
            vectors, steps = config.hessian_density_vectors, config.lanczos_steps
            probes.append(
                HessianDensity(probe_set, cadence=sparse, every=every, vectors=vectors, steps=steps, seed=seed)
            )
    if config.noise_scale:
        probes.append(NoiseScale(probe_set, cadence=cadence, every=every))
    return probes


def set_deterministic() -> None:
    """Make this process use deterministic kernels only: ``torch.use_deterministic_algorithms(True)``,
    cuDNN without autotuning, and the cuBLAS workspace setting that deterministic CUDA matmuls need.

    An operation without a deterministic implementation then raises instead of running; it is
    process-wide, as is the cuBLAS setting (read when CUDA starts).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def train(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    branch: Branch | None = None,
) -> RunResult:
    """Train ``config`` and record it into ``run_dir``; raises NonFiniteLossError if the loss diverges.

    Checkpoints are written before the first step, at the configured cadence and after the last epoch
    (:mod:`dynamics.checkpoint`). ``resume`` continues the run in ``run_dir`` from its newest checkpoint
    (``config`` must be the run's own): the store is cut to the steps before it and the run goes on as
    if it had never stopped. ``branch`` trains a child of another run into the new run ``run_dir`` instead
    (:class:`Branch`; ``config`` holds the parent's hyperparameters). With ``config.lmc_spawn`` the state
    before each spawn step is kept for the children (:func:`dynamics.checkpoint.spawn_path`), leaving the
    run itself unchanged. ``config.threads`` (when set) is applied with ``torch.set_num_threads`` first.
    """
    if branch is not None and resume:
        raise ConfigError("a branch starts a new run; pass branch or resume, not both", key=("branch", "resume"))
    validate_strategies(config)
    check_path(run_dir, "run_dir")
    if config.deterministic:
        set_deterministic()
    ranks, device = join(resolve_device(config.device), config.batch_size)
    try:
        return _train(
            config, run_dir, device, ranks, overwrite=overwrite, progress=progress, resume=resume, branch=branch
        )
    finally:
        leave()


def _train(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    device: torch.device,
    ranks: Ranks,
    *,
    overwrite: bool,
    progress: bool,
    resume: bool,
    branch: Branch | None,
) -> RunResult:
    """:func:`train` on ``device``, as rank ``ranks.rank`` of ``ranks.world`` processes."""
    if resume and read_json(Path(run_dir) / "meta.json").get("status") == "finished":
        raise ConfigError(f"the run in {run_dir} is finished; there is nothing to resume")
    if config.threads is not None:  # process-wide, like the deterministic setting above
        torch.set_num_threads(config.threads)
    if branch is not None:
        checkpoint: dict[str, Any] | None = read_state(branch.state, device)
    else:
        checkpoint = load_checkpoint(Path(run_dir), device) if resume else None
    data = load_data(config, device)
    torch.manual_seed(config.seed)
    with parameters_as({"name": "model", "input_shape": "dataset", "kind": "dataset"}):
        options = model_options(config, data)
        lanczos = config.lanczos_steps if config.sharpness or config.hessian_density else 0
        costs = training_costs(
            config.optimizer,
            config.momentum,
            probe_names(config.probes),
            config.sketch_dim,
            config.sketch_mode,
            lanczos_steps=lanczos,
        )
        check_model_fits(config.model, **options, costs=costs, device=device)  # before anything is allocated
        model = build_model(config.model, **options).to(device)
    model = prepare_model(model, channels_last=config.channels_last, compile=config.compile)
    pipeline = InputPipeline(data, device, augment=config.augment, channels_last=config.channels_last, seed=config.seed)
    with parameters_as({"name": "optimizer"}):
        optimizer = build_optimizer(
            config.optimizer,
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    check_strategies_fit_data(config, data.input_shape, len(data.x_train))
    plan = StrategyPlan(config, model, optimizer, data.num_classes, config.seed)
    plan.attach_clean_probe(data.x_train, data.y_train, prepare=pipeline, precision=config.precision)
    steps_per_epoch = [len(data.x_train) // plan.batch_size(epoch) for epoch in range(config.epochs)]
    total_steps = sum(steps_per_epoch)
    spawns = lmc_spawn_steps(config.lmc_spawn) if branch is None else ()
    if spawns and spawns[-1] + config.lmc_steps > total_steps:
        raise ConfigError(
            f"lmc_spawn step {spawns[-1]} + lmc_steps {config.lmc_steps} exceeds the run's {total_steps} steps "
            "(its children would train past the run's end); spawn earlier or lower lmc_steps",
            key=("lmc_spawn", "lmc_steps"),
        )
    stop = total_steps if branch is None else checkpoint["step"] + branch.steps
    if stop > total_steps:
        raise ConfigError(
            f"lmc_steps {stop - checkpoint['step']} from step {checkpoint['step']} exceeds the run's "
            f"{total_steps} steps; lower lmc_steps",
            key="lmc_steps",
        )
    with parameters_as({"name": "schedule"}):
        schedule = build_schedule(optimizer, config.schedule, total_steps=total_steps, warmup_steps=config.warmup_steps)
    order = torch.Generator(device="cpu").manual_seed(config.seed)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        plan.load_state_dict(checkpoint["plan"])
        order.set_state(checkpoint["order"].cpu())
        pipeline.generator.set_state(checkpoint["augment"].cpu())
    if branch is not None:  # the child's own data order and augmentation draws
        order.manual_seed(branch.order_seed)
        pipeline.generator.manual_seed(branch.augment_seed)
    with parameters_as({"k": "sketch_dim", "seed": "sketch_seed", "mode": "sketch_mode"}):
        sketch = Sketch(k=config.sketch_dim, seed=config.sketch_seed, mode=config.sketch_mode)
    probes = [
        *(sketch if name == "sketch" else name for name in probe_names(config.probes)),
        *phase_probes(config, data, pipeline, Path(run_dir)),
    ]
    with parameters_as({"budget_bytes": "snapshot_budget_mb"}):
        snap_steps = (
            snapshot_steps(
                total_steps,
                [end - 1 for end in accumulate(steps_per_epoch)],
                snapshot_bytes=snapshot_bytes(list(model.parameters())),
                budget_bytes=config.snapshot_budget_mb * 2**20,
            )
            if config.snapshots
            else []
        )
    trained = ranks.wrap(model, device)  # after a checkpoint's weights are loaded: DDP starts from rank 0's
    recorder = Recorder(
        trained,
        optimizer,
        run_dir,
        every=config.every,
        probes=probes,
        config=config.to_dict(),
        seed=config.seed,
        flush_seconds=config.flush_seconds,
        on_nonfinite=config.on_nonfinite,
        overwrite=overwrite,
        resume=None if checkpoint is None or branch is not None else checkpoint["recorder"],
        first_step=0 if branch is None else checkpoint["step"],
    )
    recorder.note(num_classes=data.num_classes)
    snapshots = SnapshotWriter(  # the ranks hold the same parameters: the one that writes the run keeps them
        model,
        run_dir,
        snap_steps if recorder.writes else [],
        flush_seconds=config.flush_seconds,
        resume_step=None if checkpoint is None or not recorder.writes else checkpoint["step"],
    )
    cadence = CheckpointCadence(config.checkpoint_steps, config.checkpoint_seconds)

    def state(epoch: int, batch: int, permutation: torch.Tensor | None) -> dict[str, Any]:
        """The training state before step ``recorder.steps_done``: batch ``batch`` of ``epoch`` comes next."""
        return {
            "step": recorder.steps_done,
            "epoch": epoch,
            "batch": batch,
            "permutation": None if batch == 0 or permutation is None else permutation.cpu(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "plan": plan.state_dict(),
            "order": order.get_state(),
            "augment": pipeline.generator.get_state(),
            "rng": rng_states(),
            "recorder": recorder.state_dict(),  # flushes the store first
            "config": config.to_dict(),
        }

    def save(epoch: int, batch: int, permutation: torch.Tensor | None) -> None:
        """Checkpoint before step ``recorder.steps_done``: batch ``batch`` of ``epoch`` comes next."""
        current = state(epoch, batch, permutation)
        snapshots.flush()
        cadence.mark()
        if recorder.writes:  # the other ranks of a distributed run hold the same state
            save_checkpoint(Path(run_dir), current, config.checkpoint_keep)

    def spawn(epoch: int, batch: int, permutation: torch.Tensor) -> None:
        """Keep the state before this step for the LMC children; reads the run's state, changes nothing in it.

        At an epoch's first batch the order generator has drawn the epoch's permutation already: the children
        reseed it, so the state is one to branch from, not one to resume the run from.
        """
        current = state(epoch, batch, permutation)
        if recorder.writes:
            write_state(spawn_path(Path(run_dir), recorder.steps_done), current)

    start_epoch, start_batch = (0, 0) if checkpoint is None else (checkpoint["epoch"], checkpoint["batch"])
    val_loss: torch.Tensor | float | None = None
    bar = tqdm(
        total=stop,
        initial=recorder.steps_done,
        desc="training",
        unit="step",
        disable=not progress or not recorder.writes,
        dynamic_ncols=True,
    )
    with recorder, snapshots, bar:
        model.train()
        if checkpoint is None:
            save(0, 0, None)
        else:
            set_rng_states(checkpoint["rng"])
        for epoch in range(start_epoch, config.epochs):
            recorder.epoch = epoch
            plan.start_epoch(epoch, recorder.steps_done)
            batch_size = plan.batch_size(epoch)
            first = start_batch if epoch == start_epoch else 0
            if first and branch is None:
                permutation = checkpoint["permutation"].to(device)
            else:  # a branch draws its own order for the rest of its first epoch too
                permutation = torch.randperm(len(data.x_train), generator=order).to(device)
            end = min(steps_per_epoch[epoch], first + stop - recorder.steps_done)
            for batch in range(first, end):
                if recorder.steps_done in spawns:
                    spawn(epoch, batch, permutation)
                index = ranks.shard(permutation[batch * batch_size : (batch + 1) * batch_size])
                x, y = data.x_train[index], data.y_train[index]
                optimizer.zero_grad(set_to_none=True)
                clean = pipeline(x, True)
                inputs, target = plan.prepare(clean, y)
                with autocast(device, config.precision):
                    out = trained(inputs)
                    loss = plan.loss(out, target)
                loss.backward()
                skipped = config.on_nonfinite == "skip" and recorder.skip_nonfinite(loss)
                if not skipped:
                    plan.after_backward()
                    optimizer.step()
                last = batch == steps_per_epoch[epoch] - 1
                plan.after_step(recorder.steps_done, out, y, epoch_end=last, skipped=skipped)
                snapshots.observe(recorder.steps_done, epoch)
                recorder.step(loss=loss, output=out, target=y, inputs=clean, **plan.scalars())
                schedule.step()
                bar.update()
                if not last and cadence.due(recorder.steps_done):
                    save(epoch, batch + 1, permutation)
            if end < steps_per_epoch[epoch]:  # a branch's last step, inside an epoch
                save(epoch, end, permutation)
                val_loss = None
                break
            val_loss, val_accuracy = evaluate_split(
                model, data.x_test, data.y_test, config.eval_batch_size, prepare=pipeline, precision=config.precision
            )
            recorder.record_eval(val_loss=val_loss, val_accuracy=val_accuracy)  # device tensors: no sync here
            if progress:
                bar.set_postfix(epoch=epoch + 1, val_acc=f"{float(val_accuracy):.3f}")
            if epoch == config.epochs - 1 or recorder.steps_done == stop or cadence.due(recorder.steps_done):
                save(epoch + 1, 0, None)
            if recorder.steps_done == stop:  # a branch's last step, at an epoch's end
                break
        if val_loss is None:  # resumed from the checkpoint after the last epoch, or a branch ended inside one
            val_loss, val_accuracy = evaluate_split(
                model, data.x_test, data.y_test, config.eval_batch_size, prepare=pipeline, precision=config.precision
            )
        train_loss, train_accuracy = evaluate(
            model, data.x_train, data.y_train, config.eval_batch_size, prepare=pipeline, precision=config.precision
        )
        val_loss, val_accuracy = float(val_loss), float(val_accuracy)
        recorder.note(
            final_train_loss=train_loss,
            final_train_accuracy=train_accuracy,
            final_test_loss=val_loss,
            final_test_accuracy=val_accuracy,
        )
    return RunResult(Path(run_dir), stop, train_loss, train_accuracy, val_loss, val_accuracy)
