"""One training run, in the order the recipe reads: set up, restore, fit, finish.

    trainer = Trainer(cfg)        # a RunConfig: recipe, backbone, freeze, data, device, ...
    trainer.set_up()              # device, run directory, data, model, inputs, the train step
    trainer.restore()             # a resumed run's checkpoint, or the epoch-0 checkpoint
    status = trainer.fit()        # the epoch loop: train, validate, log, checkpoint
    run_dir = trainer.finish(status)  # per-class accuracy, curves, exported model, summary.json

`train(cfg)` does all four. Per epoch, every random stream (order, augmentation, dropout) is
reseeded from (seed, epoch), so a run resumed at an epoch boundary replays the numbers of one that
never stopped. The run directory is complete when `summary.json` exists; it is written last.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tlbench import runtime, speed
from tlbench._console import say
from tlbench._util import derive_seed
from tlbench.config import RunConfig
from tlbench.errors import ConfigError, Diverged, Interrupted
from tlbench.rundir import EpochMetrics, Resolved, RunDir, RunFile, Status, Summary
from tlbench.train import checkpoint, distributed
from tlbench.train.checkpoint import StopOnSignal
from tlbench.train.evaluate import Evaluation, combine, evaluate
from tlbench.train.progress import Ticker
from tlbench.train.setup import (
    build_run_model,
    choose_speed,
    claim_run_dir,
    load_run_data,
    record_world_change,
)
from tlbench.train.step import TrainStep
from tlbench.train.summary import best_epoch, run_summary
from tlbench.train.trackers import Trackers, make_trackers

CHECK_EVERY = 25
"""Batches between two reads of the running training loss for NaN/inf (a read waits for the device)."""


class _TimeUp(Exception):
    """`--max-time` ran out inside an epoch."""


class Trainer:
    """Trains one `RunConfig` into one run directory (see the module docstring for the steps).

    Args:
        cfg: The run's configuration.
        resume: The unfinished run directory to continue, or None for a new run.
        progress: Show live progress (a rich display in a terminal, a line per epoch otherwise).
    """

    def __init__(self, cfg: RunConfig, resume: Path | None = None, progress: bool = True) -> None:
        self.cfg, self.recipe = cfg, cfg.recipe
        self.resume = Path(resume) if resume is not None else None
        self.progress = progress
        self.wall_start = time.perf_counter()
        self.history: list[EpochMetrics] = []
        self.start_epoch = 0
        self.last_eval: Evaluation | None = None
        self.cached: Any = None  # the feature cache of a linear probe, when used
        self.stop = StopOnSignal()
        self.trackers = Trackers()  # tensorboard / mlflow (`--log`), once set up
        self.stop_reason: str | None = None  # why its sweep asked it to stop (`RunDir.request_stop`)
        self._stop_read = 0.0

    def release(self) -> None:
        """Give up the run directory's claim (at the end of `train`, however it ends)."""
        if hasattr(self, "run_dir"):
            self.run_dir.release()
        if hasattr(self, "threads_before"):  # `train()` leaves the process's thread count as it was
            torch.set_num_threads(self.threads_before)
        distributed.stop()

    def lost_peer(self, exc: BaseException) -> Exception | None:
        """The one-line `PeerLost` error when `exc` is a collective that failed because a rank of
        the job was killed or stopped (None otherwise), with how to go on."""
        group, run_dir = getattr(self, "group", None), getattr(self, "run_dir", None)
        if group is None:
            return None
        if run_dir is not None and run_dir.path.is_dir() and (run_dir.has_checkpoint or not group.is_main):
            hint = f"resume with: tlbench run --resume {run_dir.path}"
        else:
            hint = "nothing was kept: run it again"
        return distributed.lost_peer(group, exc, distributed.collective_timeout(), hint)

    def discard_unstarted(self) -> None:
        """A new run that failed or stopped before its first checkpoint leaves nothing behind: its
        folder was claimed empty, and a half-written run directory would only block a retry."""
        run_dir = getattr(self, "run_dir", None)
        main = getattr(self, "group", None) is None or self.group.is_main
        if (
            main
            and self.resume is None
            and run_dir is not None
            and not run_dir.has_checkpoint
            and not run_dir.finished
        ):
            run_dir.discard()

    # -- set up -----------------------------------------------------------------------------------

    def set_up(self) -> None:
        """Join the job's processes, resolve the device, claim the run directory (rank 0), load the
        data, build the model, the inputs and the step. A failure on any rank stops every rank."""
        cfg = self.cfg
        self.group, self.device = distributed.start(
            cfg.dist_backend, runtime.resolve_device(cfg.device), sync_bn=cfg.sync_bn
        )
        if self.recipe.batch_size % self.group.world:
            raise ConfigError(
                "batch_size",
                f"{self.recipe.batch_size} does not divide among {self.group.world} processes",
                f"use a multiple of {self.group.world}: --batch-size is the global batch",
            )
        self.progress = self.progress and self.group.is_main
        self.amp_dtype, self.amp_why = runtime.choose_amp(cfg.amp, self.device)
        run_dir = None
        with self.group.together(self.device):
            run_dir = claim_run_dir(cfg, self.resume) if self.group.is_main else None
        self.run_dir = run_dir or RunDir(self.group.broadcast(None))
        if self.group.is_main:
            self.group.broadcast(str(self.run_dir.path))
        with self.group.together(self.device):
            self._build()
        runtime.reset_peak_memory(self.device)  # the peak of training, not of the data upload
        self.energy = runtime.EnergyMeter(self.device)
        self.setup_seconds = time.perf_counter() - self.wall_start

    def _build(self) -> None:
        from tlbench.train import artifacts
        from tlbench.train.env import environment
        from tlbench.train.inputs import build_inputs

        cfg, group = self.cfg, self.group
        self.data = load_run_data(cfg, self.run_dir if self.resume else None, self.progress)
        self.model = build_run_model(cfg, self.data.num_classes, self.device, group)
        self.amp_dtype, self.amp_why = runtime.guard_bf16(
            self.amp_dtype, self.amp_why, cfg.amp, self.device, self.model, self.recipe.image_size
        )
        steps = self.recipe.epochs * math.ceil(len(self.data.train) / self.recipe.batch_size)
        self.speed = choose_speed(cfg, self.model, self.device, steps, self.amp_why)
        self.threads_before = speed.apply_threads(self.speed)
        self.resolved = self._resolved()
        if self.resume is None and group.is_main:
            self.run_dir.write_config(RunFile(kind="run", config=cfg, resolved=self.resolved))
            self.run_dir.write_env(environment(self.device) | (self.resolved.distributed or {}))
            self.run_dir.write_structure(artifacts.structure(self.model, self.recipe.image_size, self.device))
        self.trackers = Trackers(make_trackers(cfg.log) if group.is_main else [])  # rank 0 only
        self.trackers.start(self.run_dir.path, cfg.to_dict(), asdict(self.resolved))
        self.inputs = build_inputs(
            cfg, self.data, self.model, self.device, self.amp_dtype, group, self.speed.channels_last
        )
        self.cached = self.inputs.cached
        if self.cached is not None:
            say(f"linear probe: features cached in {self.cached.seconds:.1f} s; training the head alone")
        module = self.model.head if self.cached is not None else self.model
        if group.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        compile = self.speed.compile and self.cached is None
        steps = len(self.inputs.train)
        self.step = TrainStep(
            self.model,
            self.recipe,
            self.device,
            self.amp_dtype,
            steps,
            compile=compile,
            forward=module,
        )

    def _resolved(self) -> Resolved:
        from tlbench.train.inputs import normalization

        mean, std = normalization(self.recipe.normalize, self.model.data_config)
        return Resolved(
            data_info=self.data.info,
            classes=self.data.classes,
            weights_source=self.model.weights_source,
            device=str(self.device),
            amp=amp_name(self.amp_dtype),
            params=self.model.param_counts(),
            preprocessing={"mode": self.recipe.normalize, "mean": mean, "std": std},
            freeze_index=self.model.freeze_index,
            model=self.model.model_config(),
            distributed=self.group.record(self.recipe.batch_size // self.group.world),
            speed=self.speed.record(),
            selection=self.data.selection,
        )

    # -- restore ----------------------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the checkpoint when resuming; otherwise write the epoch-0 checkpoint, so a
        run stopped or crashed in its first epoch can be resumed too."""
        if self.resume is None:
            self._checkpoint(0)
            return
        self.start_epoch, self.history = checkpoint.restore(self.run_dir, self.model, self.step, self.device)
        if self.group.is_main:
            say(f"resuming {self.run_dir.path} after epoch {self.start_epoch}")
            self.resolved = record_world_change(self.run_dir, self.resolved, self.start_epoch)

    def _checkpoint(self, epoch: int) -> None:
        """Rank 0 writes the checkpoint; every rank waits until it is complete."""
        if self.group.is_main:
            checkpoint.save(self.run_dir, epoch, self.model, self.step, self.history, self.cfg.to_dict())
        self.group.barrier()

    # -- fit --------------------------------------------------------------------------------------

    def fit(self) -> Status:
        """Train the remaining epochs; `max_time` when `--max-time` runs out.

        Raises:
            Interrupted: Ctrl-C or SIGTERM (after the current batch); the last checkpoint stays.
            Diverged: The training loss became NaN or infinite (the summary says `diverged`).
        """
        resume_hint = f"resume with: tlbench run --resume {self.run_dir.path}"
        self.stop.immediate = False  # from here a signal lets the current batch finish
        with Ticker(self.progress, self.recipe.epochs, len(self.inputs.train)) as ticker:
            for epoch in range(self.start_epoch, self.recipe.epochs):
                if self._out_of_time():
                    return "max_time"
                if self.group.any([self._asked_to_stop(force=True)], self.device)[0]:
                    return "stopped_early"
                try:
                    train = self._train_epoch(epoch, ticker)
                except _TimeUp:
                    self._back_to_last_epoch(epoch)
                    return "stopped_early" if self.stop_reason else "max_time"
                if train is None:
                    where = f"stopped during epoch {epoch + 1}; the last checkpoint is after epoch {epoch}"
                    raise Interrupted(where, resume_hint)
                ev = self.last_eval = self._evaluate(self.step.forward, self.inputs.val, self.inputs.val_tf)
                self._check_finite(ev.loss, epoch, "validation loss")
                sel = self._evaluate_selection()
                row = EpochMetrics(
                    epoch=epoch + 1,
                    **train,
                    val_loss=ev.loss,
                    val_top1=ev.top1,
                    val_top5=ev.top5,
                    lr=self.step.lr,
                    epoch_seconds=train["train_seconds"] + ev.seconds + (sel.seconds if sel else 0.0),
                    select_loss=sel.loss if sel else None,
                    select_top1=sel.top1 if sel else None,
                )
                self.history.append(row)
                if self.group.is_main:
                    self.run_dir.write_metrics(self.history)
                    if sel is not None:  # what a sweep's race compares, image by image
                        self.run_dir.write_select_predictions(sel.prediction_rows())
                if len(self.history) == 1 and self.group.is_main:
                    self._say_projection()
                self._checkpoint(epoch + 1)
                self.trackers.log_epoch(row)  # after the run's own files: a guest cannot split them
                ticker.epoch_done(row)
                if self.group.any([self.stop.requested], self.device)[0]:
                    raise Interrupted(f"stopped after epoch {epoch + 1} (checkpoint saved)", resume_hint)
        return "finished"

    def full_epochs(self) -> int:
        """The epochs of the recipe's own schedule (what `--epochs` may have shortened)."""
        from tlbench.config import RECIPES

        registered = RECIPES.get(self.recipe.name)
        return registered.epochs if registered is not None else self.recipe.epochs

    def projected_seconds(self) -> float | None:
        """Wall time of the full schedule on this device: the set-up plus that many mean epochs."""
        if not self.history:
            return None
        mean_epoch = sum(r.epoch_seconds for r in self.history) / len(self.history)
        return self.setup_seconds + self.full_epochs() * mean_epoch

    def _say_projection(self) -> None:
        seconds = self.projected_seconds() or 0.0
        hours = seconds / 3600
        say(
            f"projected: the recipe's full {self.full_epochs()} epochs would take {hours:,.1f} h "
            f"({hours * self.group.world:,.1f} device-hours) on {self.device} at this epoch's speed"
        )

    def _back_to_last_epoch(self, epoch: int) -> None:
        """`--max-time` ran out inside an epoch: back to the model of the last whole epoch, so the
        exported model is the one the metrics describe."""
        checkpoint.restore(self.run_dir, self.model, self.step, self.device)
        if self.group.is_main:
            why = (
                f"stopped by its sweep ({self.stop_reason})"
                if self.stop_reason
                else f"--max-time {self.cfg.max_time:g}s"
            )
            say(f"{why}: stopped during epoch {epoch + 1}; keeping the model after epoch {epoch}")

    def _check_finite(self, value: float, epoch: int, what: str) -> None:
        """Stop the run, with status `diverged`, when `value` is NaN or infinite."""
        if math.isfinite(value):
            return
        summary = self._summary("diverged", None)  # on every rank: it reduces across them
        if self.group.is_main:
            self._write_diverged(summary)
        raise Diverged(
            f"the {what} became {value} in epoch {epoch + 1} (lr {self.recipe.lr:g}); "
            f"the run stopped with status diverged ({self.run_dir.path})",
            "lower --lr, or check the data and the recipe",
        )

    def _out_of_time(self) -> bool:
        """Would one more epoch overrun `--max-time`? Wall time since the start (data, model and
        checkpoints included) plus one mean epoch, with 10 % for the end (plots, model export)."""
        limit = self.cfg.max_time
        if limit is None or not self.history:
            return False
        mean_epoch = sum(r.epoch_seconds for r in self.history) / len(self.history)
        over = time.perf_counter() - self.wall_start + 1.1 * mean_epoch > limit
        if not self.group.any([over], self.device)[0]:
            return False
        if self.group.is_main:
            say(f"--max-time {limit:g}s: stopping after {len(self.history)} epoch(s)")
        return True

    def _train_epoch(self, epoch: int, ticker: Ticker) -> dict[str, Any] | None:
        """One pass over the training split; None when a signal (on any rank) stopped it midway.

        Raises:
            _TimeUp: `--max-time` ran out (checked before the first batch and after each one).
            Diverged: The running training loss is NaN or infinite (read every `CHECK_EVERY` batches:
                each read waits for the device).
        """
        from tlbench import _timeline

        group, device, batches = self.group, self.device, self.inputs.train
        # Every random stream is reseeded from (seed, epoch), and from the rank in a job of several.
        stream = (epoch,) if not group.enabled else (epoch, group.rank)
        torch.manual_seed(derive_seed(self.cfg.seed, "dropout", *stream))
        aug_gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "augment", *stream))
        batches.set_epoch(epoch)
        self.step.forward.train()
        self.step.reset_totals()
        if group.any([self._past_limit()], device)[0]:
            raise _TimeUp
        data_seconds = 0.0
        runtime.sync(device)
        start = tick = time.perf_counter()
        for i, (x, y) in enumerate(batches):
            x = self.inputs.train_tf(x, aug_gen)
            data_seconds += time.perf_counter() - tick
            if i == 0 and epoch == self.start_epoch:
                _timeline.mark("first_batch")  # TLBENCH_TIMELINE: what a process costs before training
            loss = self.step(x, y, weight=batches.weight)
            ticker.batch_done(i + 1, epoch + 1, loss, self.step.correct, self.step.seen)
            stop, time_up = group.any([self.stop.requested, self._past_limit()], device)
            if stop:
                return None
            if time_up:
                raise _TimeUp
            if (i + 1) % CHECK_EVERY == 0:
                self._check_finite(group.sum([float(self.step.loss_sum)], device)[0], epoch, "training loss")
            tick = time.perf_counter()
        runtime.sync(device)
        if epoch == self.recipe.epochs - 1:
            _timeline.mark("last_batch")  # ... and after it
        seconds = group.max(time.perf_counter() - start, device)
        loss_sum, correct, seen = group.sum(
            [float(self.step.loss_sum), float(self.step.correct), self.step.seen], device
        )
        self._check_finite(loss_sum, epoch, "training loss")
        return {
            "train_loss": loss_sum / max(1, seen),
            "train_top1": correct / max(1, seen),
            "train_seconds": seconds,
            "data_seconds": group.max(data_seconds, device),
            "train_images_per_sec": seen / seconds if seconds else None,
        }

    def _past_limit(self) -> bool:
        """`--max-time` has run out, or the run's sweep asked it to stop (`_asked_to_stop`)."""
        limit = self.cfg.max_time
        return (limit is not None and time.perf_counter() - self.wall_start > limit) or self._asked_to_stop()

    def _asked_to_stop(self, force: bool = False) -> bool:
        """The run's sweep asked it to stop (`RunDir.request_stop`); the file is read once a second."""
        now = time.perf_counter()
        if self.stop_reason is None and (force or now - self._stop_read > 1.0):
            self._stop_read = now
            self.stop_reason = self.run_dir.stop_requested()
        return self.stop_reason is not None

    def _evaluate(self, forward: Any, batches: Any, transform: Any) -> Evaluation:
        """Evaluate this rank's share, then combine every rank's (exact: counts and sums in float64)."""
        ev = evaluate(forward, batches, transform, self.device, self.amp_dtype, self.data.num_classes)
        return combine(ev, self.group, self.device)

    def _evaluate_selection(self) -> Evaluation | None:
        """The selection split, evaluated as validation is (None without one)."""
        if self.inputs.select is None:
            return None
        return self._evaluate(self.step.forward, self.inputs.select, self.inputs.val_tf)

    def best_epoch(self) -> EpochMetrics | None:
        """The epoch the run reports as its best (`summary.best_epoch`)."""
        return best_epoch(self.history, self.resolved.selection is not None)

    # -- finish -----------------------------------------------------------------------------------

    def finish(self, status: Status) -> Path:
        """Final evaluation, per-class accuracy, curves, the exported model, and summary.json last."""
        from tlbench.models import save_model
        from tlbench.train import artifacts

        cfg, recipe, run_dir = self.cfg, self.recipe, self.run_dir
        final = self.last_eval
        if self.cached is not None or final is None:
            # the full model on the images: the accuracy the exported model has, and its real speed
            final = self._evaluate(self.model, self.inputs.image_val, self.inputs.image_val_tf)
        summary = self._summary(status, final)
        if not self.group.is_main:
            self.group.barrier()  # rank 0 writes the files below
            return run_dir.path
        run_dir.write_per_class(final.class_rows(self.data.classes))
        run_dir.write_predictions(final.prediction_rows())
        artifacts.curves(run_dir, self.history, f"{cfg.backbone} / {recipe.name} / freeze {cfg.freeze}")
        preprocessing = {
            "image_size": recipe.image_size,
            "interpolation": recipe.interpolation,
            "rescale": 1 / 255,
            "mean": self.inputs.mean,
            "std": self.inputs.std,
            "input": "RGB uint8 NHWC -> float NCHW",
        }
        extra = {"classes": self.data.classes, "preprocessing": preprocessing, "recipe": recipe.name}
        save_model(self.model, run_dir.model_dir, extra=extra)
        run_dir.write_summary(summary)
        run_dir.drop_checkpoint()
        self.trackers.finish(summary, run_dir.model_dir)
        self.group.barrier()
        return run_dir.path

    def _write_diverged(self, summary: Summary) -> None:
        """The end of a diverged run: its curves so far and a summary with status `diverged` (no
        final evaluation, no exported model); the checkpoint goes (there is nothing to resume)."""
        from tlbench.train import artifacts

        if self.history:
            title = f"{self.cfg.backbone} / {self.recipe.name} / freeze {self.cfg.freeze} (diverged)"
            artifacts.curves(self.run_dir, self.history, title)
        self.run_dir.write_summary(summary)
        self.run_dir.drop_checkpoint()
        self.trackers.finish(summary, None)

    def _summary(self, status: Status, final: Evaluation | None) -> Summary:
        return run_summary(self, status, final)

    def energy_joules(self) -> float | None:
        """Joules all the job's GPUs drew (None unless every rank could read its counter)."""
        joules = self.energy.joules() if hasattr(self, "energy") else None
        total, known = self.group.sum([joules or 0.0, float(joules is not None)], self.device)
        return round(total, 1) if known == self.group.world else None


def amp_name(dtype: torch.dtype | None) -> str:
    """A run's recorded autocast precision: `bf16`, `fp16`, or `off` (fp32)."""
    return "off" if dtype is None else runtime.precision_name(dtype)


def train(cfg: RunConfig, resume: Path | None = None, progress: bool = True) -> Path:
    """Run (or resume) one training run; return its directory.

    Raises:
        TlbenchError: A user mistake (data, model, weights, device, output) or an interruption.
    """
    trainer = Trainer(cfg, resume, progress)
    with trainer.stop:  # SIGINT/SIGTERM stop cleanly at every stage, not only in the epoch loop
        try:
            trainer.set_up()
            trainer.restore()
            status = trainer.fit()
            return trainer.finish(status)
        except BaseException as exc:
            trainer.discard_unstarted()
            lost = trainer.lost_peer(exc)
            if lost is not None:
                raise lost from None
            raise
        finally:
            trainer.release()
