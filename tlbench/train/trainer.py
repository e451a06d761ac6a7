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
from pathlib import Path
from typing import Any

import torch

from tlbench import runtime
from tlbench._console import say
from tlbench._util import derive_seed
from tlbench.errors import DataError, Diverged, Interrupted, OutputError
from tlbench.rundir import EpochMetrics, Resolved, RunDir, RunFile, Status, Summary
from tlbench.train import checkpoint
from tlbench.train.checkpoint import StopOnSignal
from tlbench.train.config import RunConfig
from tlbench.train.evaluate import Evaluation, evaluate
from tlbench.train.progress import Ticker
from tlbench.train.step import TrainStep

RESUME_KEYS = ("class_list_hash", "counts", "split_rule", "source_fingerprint")
"""What must not have changed in the data for `--resume` to continue a run (the fingerprint covers
every source file's path, size and modification time)."""


CHECK_EVERY = 25
"""Batches between two reads of the running training loss for NaN/inf (a read waits for the device)."""


class _TimeUp(Exception):
    """`--max-time` ran out inside an epoch."""


def _identity(x: torch.Tensor, generator: Any = None) -> torch.Tensor:
    return x


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

    def release(self) -> None:
        """Give up the run directory's claim (at the end of `train`, however it ends)."""
        if hasattr(self, "run_dir"):
            self.run_dir.release()

    def discard_unstarted(self) -> None:
        """A new run that failed or stopped before its first checkpoint leaves nothing behind: its
        folder was claimed empty, and a half-written run directory would only block a retry."""
        run_dir = getattr(self, "run_dir", None)
        if (
            self.resume is None
            and run_dir is not None
            and not run_dir.has_checkpoint
            and not run_dir.finished
        ):
            run_dir.discard()

    # -- set up -----------------------------------------------------------------------------------

    def set_up(self) -> None:
        """Resolve the device, claim the run directory, load the data, build the model and the step."""
        from tlbench.train import artifacts
        from tlbench.train.env import environment

        cfg = self.cfg
        self.device = runtime.resolve_device(cfg.device)
        self.amp_dtype = runtime.resolve_amp(cfg.amp, self.device)
        self.run_dir = self._claim_dir()
        self.data = self._load_data()
        self.model = self._build_model()
        self.resolved = self._resolved()
        if self.resume is None:
            self.run_dir.write_config(RunFile(kind="run", config=cfg, resolved=self.resolved))
            self.run_dir.write_env(environment(self.device))
            self.run_dir.write_structure(artifacts.structure(self.model, self.recipe.image_size, self.device))
        self._build_inputs()
        steps = len(self.train_batches)
        if self.cached is not None:  # the head alone, on the cached features
            self.step = TrainStep(
                self.model, self.recipe, self.device, self.amp_dtype, steps, forward=self.model.head
            )
        else:
            self.step = TrainStep(
                self.model, self.recipe, self.device, self.amp_dtype, steps, compile=cfg.compile
            )
        runtime.reset_peak_memory(self.device)  # the peak of training, not of the data upload

    def _claim_dir(self) -> RunDir:
        if self.resume is None:
            return RunDir.create(self.cfg.out or self.cfg.default_out())
        run_dir = RunDir(self.resume)
        if not run_dir.is_run_dir:
            raise OutputError(
                f"{run_dir.path} is not a tlbench run directory (no config.json)", "pass a run folder"
            )
        if run_dir.finished:
            raise OutputError(
                f"{run_dir.path} is already finished (summary.json exists)", "start a new run instead"
            )
        if not run_dir.has_checkpoint:
            raise OutputError(
                f"{run_dir.path} has no checkpoint.pt to resume from", "start a new run instead"
            )
        return run_dir.claim()  # refused while another process trains in it

    def _load_data(self) -> Any:
        from tlbench.data.dataset import load_data

        cfg = self.cfg
        data = load_data(
            cfg.data,
            self.recipe.image_size,
            self.recipe.interpolation,
            data_format=cfg.data_format,
            split_seed=cfg.split_seed,
            skip_corrupt=cfg.skip_corrupt,
            progress=self.progress,
        )
        if self.resume is not None:
            saved = self.run_dir.read_config().resolved.data_info
            for key in RESUME_KEYS:
                if saved.get(key) != data.info.get(key):
                    change = f"{key}: {saved.get(key)} -> {data.info.get(key)}"
                    if key == "source_fingerprint":
                        change = "the same classes and counts, but files were replaced or edited"
                    raise DataError(
                        f"the data changed since {self.run_dir.path} started ({change})",
                        "resume with the same data, or start a new run",
                    )
        return data

    def _build_model(self) -> Any:
        from tlbench.models import build_model

        cfg, recipe = self.cfg, self.recipe
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.backbone,
            self.data.num_classes,
            pool=recipe.pool,
            freeze=cfg.freeze,
            pretrained=cfg.pretrained and cfg.weights is None,
            weights=cfg.weights,
            image_size=recipe.image_size,
            hidden=recipe.hidden,
            dropout=recipe.dropout,
            l2=recipe.head_l2,
        )
        if not cfg.pretrained and cfg.weights is None:
            say(f"{cfg.backbone}: training from scratch (random initialisation)", style="yellow")
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        return model.to(self.device).to(memory_format=memory_format)

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
        )

    def _build_inputs(self) -> None:
        """Loaders and transforms; a linear probe without augmentation swaps in cached features."""
        from tlbench.data.loader import BatchLoader
        from tlbench.train.features import cache_features
        from tlbench.train.inputs import transforms

        cfg, recipe, data = self.cfg, self.recipe, self.data
        tfs = transforms(recipe, self.model.data_config, cfg.channels_last)
        self.mean, self.std = tfs.mean, tfs.std
        # A last training batch of one image breaks BatchNorm in train mode (one value per channel on
        # small feature maps): drop that single image per epoch (a different one each epoch, shuffled).
        drop_last = len(data.train) % recipe.batch_size == 1
        place = cfg.data_on_device

        def loader(split: Any, shuffle: bool, **kw: Any) -> BatchLoader:
            return BatchLoader.from_split(
                split, recipe.batch_size, self.device, shuffle=shuffle, placement=place, **kw
            )

        self.val_batches: Any = loader(data.val, False)
        self.image_val, self.image_val_tf = self.val_batches, tfs.val
        self.train_tf: Any = tfs.train
        self.val_tf: Any = tfs.val
        frozen = not any(p.requires_grad for p in self.model.backbone.parameters())
        if cfg.feature_cache and frozen and not tfs.augmented:
            self.cached = cache_features(
                self.model, loader(data.train, False), self.val_batches, tfs.val,
                self.device, self.amp_dtype, recipe.batch_size, cfg.seed,
            )  # fmt: skip
            self.train_batches, self.val_batches = self.cached.train, self.cached.val
            self.train_tf = self.val_tf = _identity
            say(f"linear probe: features cached in {self.cached.seconds:.1f} s; training the head alone")
        else:
            self.train_batches = loader(data.train, True, seed=cfg.seed, drop_last=drop_last)

    # -- restore ----------------------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the checkpoint when resuming; otherwise write the epoch-0 checkpoint, so a
        run stopped or crashed in its first epoch can be resumed too."""
        if self.resume is None:
            self._checkpoint(0)
            return
        self.start_epoch, self.history = checkpoint.restore(self.run_dir, self.model, self.step, self.device)
        say(f"resuming {self.run_dir.path} after epoch {self.start_epoch}")

    def _checkpoint(self, epoch: int) -> None:
        checkpoint.save(self.run_dir, epoch, self.model, self.step, self.history, self.cfg.to_dict())

    # -- fit --------------------------------------------------------------------------------------

    def fit(self) -> Status:
        """Train the remaining epochs; `max_time` when `--max-time` runs out.

        Raises:
            Interrupted: Ctrl-C or SIGTERM (after the current batch); the last checkpoint stays.
            Diverged: The training loss became NaN or infinite (the summary says `diverged`).
        """
        resume_hint = f"resume with: tlbench run --resume {self.run_dir.path}"
        self.stop.immediate = False  # from here a signal lets the current batch finish
        with Ticker(self.progress, self.recipe.epochs, len(self.train_batches)) as ticker:
            for epoch in range(self.start_epoch, self.recipe.epochs):
                if self._out_of_time():
                    return "max_time"
                try:
                    train = self._train_epoch(epoch, ticker)
                except _TimeUp:
                    self._back_to_last_epoch(epoch)
                    return "max_time"
                if train is None:
                    where = f"stopped during epoch {epoch + 1}; the last checkpoint is after epoch {epoch}"
                    raise Interrupted(where, resume_hint)
                ev = self.last_eval = self._evaluate(self.step.forward, self.val_batches, self.val_tf)
                self._check_finite(ev.loss, epoch, "validation loss")
                row = EpochMetrics(
                    epoch=epoch + 1,
                    **train,
                    val_loss=ev.loss,
                    val_top1=ev.top1,
                    val_top5=ev.top5,
                    lr=self.step.lr,
                    epoch_seconds=train["train_seconds"] + ev.seconds,
                )
                self.history.append(row)
                self.run_dir.write_metrics(self.history)
                self._checkpoint(epoch + 1)
                ticker.epoch_done(row)
                if self.stop.requested:
                    raise Interrupted(f"stopped after epoch {epoch + 1} (checkpoint saved)", resume_hint)
        return "finished"

    def _back_to_last_epoch(self, epoch: int) -> None:
        """`--max-time` ran out inside an epoch: back to the model of the last whole epoch, so the
        exported model is the one the metrics describe."""
        checkpoint.restore(self.run_dir, self.model, self.step, self.device)
        say(
            f"--max-time {self.cfg.max_time:g}s: stopped during epoch {epoch + 1}; "
            f"keeping the model after epoch {epoch}"
        )

    def _check_finite(self, value: float, epoch: int, what: str) -> None:
        """Stop the run, with status `diverged`, when `value` is NaN or infinite."""
        if math.isfinite(value):
            return
        self._write_diverged()
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
        if time.perf_counter() - self.wall_start + 1.1 * mean_epoch <= limit:
            return False
        say(f"--max-time {limit:g}s: stopping after {len(self.history)} epoch(s)")
        return True

    def _train_epoch(self, epoch: int, ticker: Ticker) -> dict[str, Any] | None:
        """One pass over the training split; None when a signal stopped it midway.

        Raises:
            _TimeUp: `--max-time` ran out before a batch.
            Diverged: The running training loss is NaN or infinite (read every `CHECK_EVERY` batches:
                each read waits for the device).
        """
        limit = self.cfg.max_time
        seed = self.cfg.seed
        torch.manual_seed(derive_seed(seed, "dropout", epoch))
        aug_gen = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch))
        self.train_batches.set_epoch(epoch)
        self.step.forward.train()
        self.step.reset_totals()
        data_seconds = 0.0
        runtime.sync(self.device)
        start = tick = time.perf_counter()
        for i, (x, y) in enumerate(self.train_batches):
            if limit is not None and time.perf_counter() - self.wall_start > limit:
                raise _TimeUp
            x = self.train_tf(x, aug_gen)
            data_seconds += time.perf_counter() - tick
            loss = self.step(x, y)
            ticker.batch_done(i + 1, epoch + 1, loss, self.step.correct, self.step.seen)
            if self.stop.requested:
                return None
            if (i + 1) % CHECK_EVERY == 0:
                self._check_finite(float(self.step.loss_sum), epoch, "training loss")
            tick = time.perf_counter()
        runtime.sync(self.device)
        seconds = time.perf_counter() - start
        loss_mean, top1 = self.step.totals()
        self._check_finite(loss_mean, epoch, "training loss")
        return {
            "train_loss": loss_mean,
            "train_top1": top1,
            "train_seconds": seconds,
            "data_seconds": data_seconds,
            "train_images_per_sec": self.step.seen / seconds if seconds else None,
        }

    def _evaluate(self, forward: Any, batches: Any, transform: Any) -> Evaluation:
        return evaluate(forward, batches, transform, self.device, self.amp_dtype, self.data.num_classes)

    # -- finish -----------------------------------------------------------------------------------

    def finish(self, status: Status) -> Path:
        """Final evaluation, per-class accuracy, curves, the exported model, and summary.json last."""
        from tlbench.models import save_model
        from tlbench.train import artifacts

        cfg, recipe, run_dir = self.cfg, self.recipe, self.run_dir
        final = self.last_eval
        if self.cached is not None or final is None:
            # the full model on the images: the accuracy the exported model has, and its real speed
            final = self._evaluate(self.model, self.image_val, self.image_val_tf)
        run_dir.write_per_class(final.class_rows(self.data.classes))
        run_dir.write_predictions(final.prediction_rows())
        artifacts.curves(run_dir, self.history, f"{cfg.backbone} / {recipe.name} / freeze {cfg.freeze}")
        preprocessing = {
            "image_size": recipe.image_size,
            "interpolation": recipe.interpolation,
            "rescale": 1 / 255,
            "mean": self.mean,
            "std": self.std,
            "input": "RGB uint8 NHWC -> float NCHW",
        }
        extra = {"classes": self.data.classes, "preprocessing": preprocessing, "recipe": recipe.name}
        save_model(self.model, run_dir.model_dir, extra=extra)
        run_dir.write_summary(self._summary(status, final))
        run_dir.drop_checkpoint()
        return run_dir.path

    def _write_diverged(self) -> None:
        """The end of a diverged run: its curves so far and a summary with status `diverged` (no
        final evaluation, no exported model); the checkpoint goes (there is nothing to resume)."""
        from tlbench.train import artifacts

        if self.history:
            title = f"{self.cfg.backbone} / {self.recipe.name} / freeze {self.cfg.freeze} (diverged)"
            artifacts.curves(self.run_dir, self.history, title)
        self.run_dir.write_summary(self._summary("diverged", None))
        self.run_dir.drop_checkpoint()

    def _summary(self, status: Status, final: Evaluation | None) -> Summary:
        import statistics

        best = max(self.history, key=lambda r: r.val_top1, default=None)
        speeds = [r.train_images_per_sec for r in self.history if r.train_images_per_sec]
        params = self.resolved.params
        return Summary(
            kind="run",
            status=status,
            best_val_top1=best.val_top1 if best else (final.top1 if final else None),
            best_epoch=best.epoch if best else None,
            final_val_top1=final.top1 if final else None,
            final_val_top5=final.top5 if final else None,
            final_val_loss=final.loss if final else None,
            val_images=final.images if final else 0,
            epochs=len(self.history),
            params_total=params["total"],
            params_trainable=params["trainable"],
            params_frozen=params["frozen"],
            wall_seconds=round(time.perf_counter() - self.wall_start, 3),
            train_images_per_sec=float(statistics.median(speeds)) if speeds else None,
            infer_images_per_sec=final.images_per_sec if final else None,
            peak_memory_bytes=runtime.peak_memory_bytes(self.device),
            device=str(self.device),
            amp=self.resolved.amp,
            weights_source=self.model.weights_source,
            feature_cache=self.cached.record() if self.cached is not None else {"used": False},
        )


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
        except BaseException:
            trainer.discard_unstarted()
            raise
        finally:
            trainer.release()
