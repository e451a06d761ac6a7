"""Measure one backbone in this process: train and inference throughput, FLOPs, MFU, memory.

What is timed, per mode, at the batch that fits:

- train: `tlbench.train.step.TrainStep`, the very step `tlbench run` executes per batch (its
  progress display aside), on the recipe's model with the freeze spec applied.
- baseline: a plain hand-written loop doing the same work on the same model (forward, the same
  loss, backward, an optimizer of the same kind and settings), timed in turns with the tlbench
  step so that drift hits both alike; `train_vs_baseline` = tlbench images/s / plain images/s,
  the median over repeats of the ratio within each repeat (1.0: as fast; below 1: slower).
- infer: `model.eval()`, forward under `torch.no_grad()` and autocast.
- data (with `--data`): the packed `BatchLoader` + `BatchTransform(KerasAugment())` alone, and
  the loader + augmentation + train step together, against the same step on synthetic input.
- ddp (with `--nproc N`, first, in other processes): the train step under DistributedDataParallel
  on N ranks against one rank, `scaling_efficiency` (see `ddp.py`).

The input is synthetic and already on the device (`randn`, labels from `randint`). Timing: at
least one untimed step (it allocates gradients and optimizer state, and compiles with
`--compile`), `warmup` in all, then `repeats` runs of `steps` steps; a run is timed with CUDA
events on a GPU (a synchronised wall clock on the CPU, and for the data pipeline everywhere, since
host work is part of it) and the median run is reported. `samples_per_sec = batch / step time`.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on a batch of 2 (matmuls,
convolutions and attention; 2 FLOPs per multiply-add; elementwise ops and the optimizer step are
not counted). A train step's FLOPs are its forward plus its backward, so a frozen prefix, which
does no backward, costs its forward only. Out of memory halves the batch until it fits; the batch
used is reported per mode (`train_batch_size`, `infer_batch_size`, as in timm's CSVs).
"""

from __future__ import annotations

import math
import resource
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor, nn

from tlbench import runtime, speed
from tlbench.bench import BenchOptions
from tlbench.bench.peaks import match_gpu, mfu, peak_flops
from tlbench.bench.reference import PlainState, plain_optimizer, plain_train_step
from tlbench.bench.timing import count_flops, free_memory, halve_on_oom, is_oom, median, time_interleaved
from tlbench.config import get_recipe
from tlbench.errors import DataError
from tlbench.train.step import CompileFallback, TrainStep

NUM_CLASSES = 100  # mini-ImageNet; with --data the data set's class count is used
FLOP_BATCH = 2  # FLOPs are counted on a batch of 2 (BatchNorm in train mode needs > 1 sample)
NOMINAL_TRAIN_IMAGES = 50_000  # sizes the scheduler's epoch, which only matters for cosine schedules
MiB = 2**20

# Every row has every column, in this order (None where a mode was not run or does not apply).
COLUMNS = (
    # what was measured, with which settings
    "model", "status", "freeze", "freeze_index", "recipe", "optimizer", "mode", "nproc", "batch_size",
    "image_size", "device", "device_name", "precision", "amp", "memory_format", "compile", "compiled",
    "amp_why", "compile_error", "warmup", "steps", "repeats",
    "param_count", "params_total", "params_trainable", "params_frozen", "gpu_peak", "peak_tflops",
    # train: tlbench's step, and the plain loop beside it
    "train_samples_per_sec", "train_step_ms", "train_step_time", "train_batch_size", "train_img_size",
    "train_gflops", "train_mfu", "train_peak_mem_mb", "train_step_ms_runs",
    "baseline_samples_per_sec", "baseline_step_ms", "baseline_step_ms_runs", "train_vs_baseline",
    "baseline_error",
    # inference
    "infer_samples_per_sec", "infer_step_ms", "infer_step_time", "infer_batch_size", "infer_img_size",
    "infer_gflops", "infer_gmacs", "infer_mfu", "infer_peak_mem_mb", "infer_step_ms_runs",
    # the real input pipeline (--data)
    "data", "data_placement", "data_batch_size", "data_samples_per_sec", "data_step_ms",
    "pipeline_samples_per_sec", "pipeline_step_ms", "pipeline_vs_step", "bound",
    # scaling (--nproc N): the train step under DDP on N ranks against one rank (ddp.py)
    "ddp_backend", "ddp_batch_size", "ddp_global_batch_size", "ddp_threads_per_rank",
    "ddp_samples_per_sec", "ddp_step_ms", "ddp_step_ms_runs",
    "ddp_single_samples_per_sec", "ddp_single_step_ms", "ddp_single_step_ms_runs", "scaling_efficiency",
    # the machine and the versions
    "max_rss_mb", "cudnn_benchmark", "float32_matmul_precision", "timestamp", "tlbench", "tlbench_commit",
    "python", "torch", "torchvision", "timm", "cuda", "cudnn", "torch_threads", "cpu", "cpu_capability",
)  # fmt: skip


# -- the inference step -------------------------------------------------------------------------


def infer_step(
    runner: Callable[[Tensor], Tensor], x: Tensor, device: torch.device, amp_dtype: torch.dtype | None
) -> None:
    """One inference batch: forward under `no_grad` and autocast (the model is in eval mode)."""
    with torch.no_grad(), runtime.autocast(device, amp_dtype):
        runner(x)


def device_peak(device: torch.device, device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a known GPU at `precision` (see `peaks.py`); None on a CPU or unknown GPU."""
    return peak_flops(device_name, precision) if device.type == "cuda" else None


def _endless(loader: Any) -> Iterator[tuple[Tensor, Tensor]]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# -- one backbone ---------------------------------------------------------------------------------


class BackboneBench:
    """The model, device and settings of one backbone's measurement; `run()` returns the row.

    Args:
        backbone: timm name.
        options: The benchmark settings.
        wrap: Wraps the model into the module that runs the forward (e.g. DistributedDataParallel),
            before `--compile` compiles it; None runs the model itself.
        threads: Intra-op threads (a DDP rank's share of the cores); None: as `tlbench run` decides.
    """

    def __init__(
        self,
        backbone: str,
        options: BenchOptions,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        threads: int | None = None,
    ) -> None:
        from tlbench.models import build_model

        self.backbone = backbone
        self.options = options.validate()
        self.recipe = get_recipe(options.recipe)
        self.device = runtime.resolve_device(options.device)
        self.amp_dtype, self.amp_why = runtime.choose_amp(options.amp, self.device)
        self.data: Any = None
        num_classes = NUM_CLASSES
        if options.data is not None:
            from tlbench.data.dataset import load_data

            self.data = load_data(options.data, options.image_size, self.recipe.interpolation, progress=False)
            num_classes = self.data.num_classes
        self.num_classes = num_classes
        torch.manual_seed(0)
        self.model = build_model(
            backbone,
            num_classes,
            pool=self.recipe.pool,
            freeze=options.freeze,
            pretrained=False,
            image_size=options.image_size,
            hidden=self.recipe.hidden,
            dropout=self.recipe.dropout,
            l2=self.recipe.head_l2,
        )
        self.model.to(self.device)
        self.amp_dtype, self.amp_why = runtime.guard_bf16(
            self.amp_dtype, self.amp_why, options.amp, self.device, self.model, options.image_size
        )
        # The layout, compile and threads `tlbench run` would pick for a long run (`tlbench.speed`).
        self.speed = speed.choose(
            self.model,
            self.device.type,
            channels_last=options.channels_last,
            compile=options.compile,
            threads=threads,
            amp_why=self.amp_why,
        )
        speed.apply_threads(self.speed)
        self.memory_format = speed.memory_format(self.speed)
        self.model.to(memory_format=self.memory_format)
        # One forward for every mode (compiled once), shared by tlbench's step and the plain loop.
        forward = wrap(self.model) if wrap is not None else self.model
        self.runner: nn.Module = CompileFallback(forward) if self.speed.compile else forward

    # -- pieces -----------------------------------------------------------------------------------

    def inputs(self, batch: int) -> tuple[Tensor, Tensor]:
        """A synthetic batch on the device: float32 images (NCHW or channels_last) and labels."""
        size = self.options.image_size
        x = torch.randn(batch, 3, size, size, device=self.device).contiguous(memory_format=self.memory_format)
        y = torch.randint(0, self.num_classes, (batch,), device=self.device)
        return x, y

    def warm(self, step: Callable[[], object], n: int) -> None:
        """Run `n` (at least 1) untimed steps; a compile failure falls back to eager and retries."""
        for _ in range(max(1, n)):
            try:
                step()
            except Exception as exc:
                if not self.compiled or is_oom(exc):
                    raise
                self.runner.fall_back(exc)  # type: ignore[operator]  # a CompileFallback
                step()
        runtime.sync(self.device)

    @property
    def compiled(self) -> bool:
        return isinstance(self.runner, CompileFallback) and self.runner.compiled

    def train_step(self, batch: int) -> TrainStep:
        """tlbench's train step, as `tlbench run` builds it, on the shared forward."""
        steps_per_epoch = max(1, NOMINAL_TRAIN_IMAGES // batch)
        return TrainStep(
            self.model,
            self.recipe,
            self.device,
            self.amp_dtype,
            steps_per_epoch,
            forward=self.runner,
        )

    def plain_state(self) -> PlainState:
        fp16 = self.amp_dtype == torch.float16
        fc1: nn.Linear = self.model.head.fc1  # type: ignore[assignment]  # torch types it as Tensor | Module
        return PlainState(
            runner=self.runner,
            optimizer=plain_optimizer(self.model, self.recipe),
            scaler=torch.amp.GradScaler(self.device.type) if fp16 else None,
            device=self.device,
            amp_dtype=self.amp_dtype,
            l2_weight=fc1.weight,
            l2=self.model.l2,
            label_smoothing=self.recipe.label_smoothing,
        )

    def warm_plain_step(self, x: Tensor, y: Tensor) -> Callable[[], object]:
        """The plain loop's step on `x`, `y`, warmed up (its optimizer state allocated)."""
        plain = self.plain_state()
        self.warm(lambda: plain_train_step(plain, x, y), self.options.warmup)
        return lambda: plain_train_step(plain, x, y)

    def drop_grads(self) -> None:
        self.model.zero_grad(set_to_none=True)
        free_memory()

    def _peak_mb(self) -> float | None:
        """The device's peak since the last reset (CUDA only: the CPU's RSS peak never resets)."""
        return runtime.peak_memory_bytes(self.device) / MiB if self.device.type == "cuda" else None

    # -- measurements -----------------------------------------------------------------------------

    def measure_train(self, batch: int) -> dict[str, Any]:
        """tlbench's train step (and the plain loop's) at `batch`: ms per step of each repeat."""
        opts = self.options
        self.model.train()
        x, y = self.inputs(batch)
        step = self.train_step(batch)
        runtime.reset_peak_memory(self.device)
        self.warm(lambda: step(x, y), opts.warmup)
        peak = self._peak_mb()  # after warm-up: gradients and optimizer state are allocated
        fns: dict[str, Callable[[], object]] = {"train": lambda: step(x, y)}
        baseline_error = None
        if opts.baseline_loop:
            try:
                fns["baseline"] = self.warm_plain_step(x, y)
            except RuntimeError as exc:
                if not is_oom(exc):
                    raise
                baseline_error = "out of memory (the plain loop's own optimizer state does not fit beside)"
            if baseline_error:
                free_memory()  # the failed call's plain state went with its traceback
                warnings.warn(f"baseline loop skipped at batch {batch}: {baseline_error}", stacklevel=2)
        times = time_interleaved(fns, opts.steps, opts.repeats, self.device)
        return {"times": times, "peak_mb": peak, "baseline_error": baseline_error}

    def measure_infer(self, batch: int) -> dict[str, Any]:
        """Inference at `batch`: ms per step of each repeat."""
        opts = self.options
        self.drop_grads()  # the train measurement's gradients would only add to the peak
        x, _ = self.inputs(batch)
        self.model.eval()
        try:
            runtime.reset_peak_memory(self.device)
            self.warm(lambda: infer_step(self.runner, x, self.device, self.amp_dtype), opts.warmup)
            peak = self._peak_mb()
            times = time_interleaved(
                {"infer": lambda: infer_step(self.runner, x, self.device, self.amp_dtype)},
                opts.steps,
                opts.repeats,
                self.device,
            )
        finally:
            self.model.train()
        return {"times": times, "peak_mb": peak}

    def measure_data(self, batch: int) -> dict[str, Any]:
        """The real input pipeline at `batch`: loader + augmentation alone, and with the train step."""
        from tlbench.data.loader import BatchLoader
        from tlbench.train.inputs import transforms

        split = self.data.train
        loader = BatchLoader(
            split.packed.images,
            split.packed.labels,
            split.indices,
            batch,
            self.device,
            shuffle=True,
            seed=0,
            drop_last=True,
        )
        if len(loader) == 0:
            raise DataError(
                f"the training split holds {len(split)} images, less than one batch of {batch}",
                "use a smaller --batch-size",
            )
        transform = transforms(self.recipe, self.model.data_config, self.speed.channels_last).train
        batches = _endless(loader)
        step = self.train_step(batch)
        self.model.train()

        def data_only() -> None:
            x, _y = next(batches)
            transform(x)

        def pipeline() -> None:
            x, y = next(batches)
            step(transform(x), y)

        self.warm(pipeline, self.options.warmup)
        times = time_interleaved(
            {"data": data_only, "pipeline": pipeline},
            self.options.steps,
            self.options.repeats,
            self.device,
            wall=True,
        )
        return {"times": times, "placement": loader.placement}

    # -- the row ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Measure every asked-for mode and return the result row (see the module docstring)."""
        from tlbench.train.env import cpu_name

        opts, device = self.options, self.device
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
        precision = runtime.precision_name(self.amp_dtype)
        peak = device_peak(device, device_name, precision)
        row: dict[str, Any] = dict.fromkeys(COLUMNS) | self._settings(device_name, precision, peak)
        flop_x, flop_y = self.inputs(FLOP_BATCH)
        if opts.mode in ("train", "both"):
            flops = count_flops(self.model, flop_x, flop_y, train=True) / FLOP_BATCH
            row |= self._train_columns(flops, peak)
        if opts.mode in ("infer", "both"):
            flops = count_flops(self.model, flop_x, flop_y, train=False) / FLOP_BATCH
            row |= self._infer_columns(flops, peak)
        if self.data is not None:
            row |= self._data_columns(
                row.get("train_batch_size") or opts.batch_size, row["train_samples_per_sec"]
            )
        return clean_row(row | self._machine_columns())

    def _settings(self, device_name: str, precision: str, peak: float | None) -> dict[str, Any]:
        """What was measured, with which settings."""
        opts, counts = self.options, self.model.param_counts()
        return {
            "model": self.backbone,
            "status": "ok",
            "freeze": opts.freeze,
            "freeze_index": self.model.freeze_index,
            "recipe": self.recipe.name,
            "optimizer": self.recipe.optimizer,
            "mode": opts.mode,
            "nproc": opts.nproc,
            "batch_size": opts.batch_size,
            "image_size": opts.image_size,
            "device": str(self.device),
            "device_name": device_name,
            "precision": precision,
            "amp": opts.amp,
            "memory_format": "channels_last" if self.speed.channels_last else "contiguous",
            "compile": self.speed.compile,
            "amp_why": self.amp_why,
            "warmup": opts.warmup,
            "steps": opts.steps,
            "repeats": opts.repeats,
            "param_count": round(counts["total"] / 1e6, 2),  # millions, as timm's CSVs
            "params_total": counts["total"],
            "params_trainable": counts["trainable"],
            "params_frozen": counts["frozen"],
            "gpu_peak": match_gpu(device_name) if self.device.type == "cuda" else None,
            "peak_tflops": peak / 1e12 if peak else None,
        }

    def _train_columns(self, flops: float, peak: float | None) -> dict[str, Any]:
        """tlbench's step and the plain loop's, at the batch that fits."""
        result, batch = halve_on_oom(
            self.measure_train, self.options.batch_size, f"{self.backbone} train", self.drop_grads
        )
        times, base = result["times"]["train"], result["times"].get("baseline")
        base_ms = median(base) if base else None
        return self._mode_columns("train", times, batch, flops, peak, result["peak_mb"]) | {
            "baseline_samples_per_sec": batch / (base_ms / 1000) if base_ms else None,
            "baseline_step_ms": base_ms,
            "baseline_step_ms_runs": base,
            # Paired: each repeat times both back to back, so the ratio within a repeat is free of
            # the drift between repeats (shared machines); the median of those ratios.
            "train_vs_baseline": median([b / t for b, t in zip(base, times, strict=True)]) if base else None,
            "baseline_error": result["baseline_error"],
        }

    def _infer_columns(self, flops: float, peak: float | None) -> dict[str, Any]:
        result, batch = halve_on_oom(
            self.measure_infer, self.options.batch_size, f"{self.backbone} infer", self.drop_grads
        )
        columns = self._mode_columns("infer", result["times"]["infer"], batch, flops, peak, result["peak_mb"])
        return columns | {"infer_gmacs": flops / 2e9}  # timm's column: multiply-adds

    def _mode_columns(
        self,
        mode: str,
        times: list[float],
        batch: int,
        flops: float,
        peak: float | None,
        peak_mb: float | None,
    ) -> dict[str, Any]:
        """`<mode>_samples_per_sec`, step time (median of the repeats), batch, FLOPs, MFU, memory."""
        step_ms = median(times)
        sps = batch / (step_ms / 1000)
        return {
            f"{mode}_samples_per_sec": sps,
            f"{mode}_step_ms": step_ms,
            f"{mode}_step_time": step_ms,  # timm's name; milliseconds
            f"{mode}_batch_size": batch,
            f"{mode}_img_size": self.options.image_size,
            f"{mode}_gflops": flops / 1e9,
            f"{mode}_mfu": mfu(flops, sps, peak),
            f"{mode}_peak_mem_mb": peak_mb,
            f"{mode}_step_ms_runs": times,
        }

    def _data_columns(self, start_batch: int, step_sps: float | None) -> dict[str, Any]:
        """The input pipeline alone and with the step; `bound` says which one limits training."""
        result, batch = halve_on_oom(self.measure_data, start_batch, f"{self.backbone} data", self.drop_grads)
        data_ms, pipe_ms = median(result["times"]["data"]), median(result["times"]["pipeline"])
        data_sps, pipe_sps = batch / (data_ms / 1000), batch / (pipe_ms / 1000)
        return {
            "data": self.options.data,
            "data_placement": result["placement"],
            "data_batch_size": batch,
            "data_samples_per_sec": data_sps,
            "data_step_ms": data_ms,
            "pipeline_samples_per_sec": pipe_sps,
            "pipeline_step_ms": pipe_ms,
            "pipeline_vs_step": pipe_sps / step_sps if step_sps else None,
            "bound": "data" if step_sps and data_sps < step_sps else "step",
        }

    def _machine_columns(self) -> dict[str, Any]:
        """How it ran (compiled or not), the process's memory, and the versions."""
        from tlbench.train.env import environment

        env = environment(self.device)
        versions = ("tlbench", "tlbench_commit", "python", "torch", "torchvision", "timm", "cuda", "cudnn")
        return {
            "compiled": self.compiled,
            "compile_error": getattr(self.runner, "compile_error", None),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            **{key: env.get(key) for key in versions},
            "torch_threads": env["torch_threads"],
            "cpu": env["cpu"],
            "cpu_capability": env["cpu_capability"],
        }


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """Turn non-finite floats into None, so the row is valid JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
