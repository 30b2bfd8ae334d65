"""A rich progress bar for training: loss, steps per second and time left.

Training reports metrics every ``log_every`` steps, so the bar moves in those increments. The
bar goes to stderr; the one-line dataset summary to stdout, so that stderr holds nothing but
the bar and, on failure, the one-line error."""

from __future__ import annotations


class TrainProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._task = None

    def start(self, protocol, info, start_step: int) -> None:
        import sys

        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        console = Console(stderr=True)
        if getattr(info, "noise", None):      # stabilised: sigma_n is 1 by construction
            noise = (f"noise {info.noise['name']} stabilised to std 1 (sigma_n = 1; "
                     f"{info.sigma_n_model:.4g} in the network's units)")
        else:
            noise = (f"sigma_n = {info.sigma_n_data:.4g} per real channel in data units "
                     f"({info.sigma_n_model:.4g} in the network's units), {info.noise_method}"
                     + (f" +/- {100 * info.noise_uncertainty:.1f}%" if info.noise_uncertainty else ""))
        what = "patches" if protocol.data.patch_size else "images"
        Console(highlight=False).print(
            f"[bold]{protocol.name}[/]: {len(info.files)} file(s), {info.n_items} "
            f"{'volume' if info.spatial_dims == 3 else 'image'}(s), {info.kind}; trains on {what} of "
            f"{list(info.shape)} x {info.channels} channel(s); {noise}")
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.2f} steps/s"),
            TimeRemainingColumn(), console=console, transient=not sys.stderr.isatty())
        self._task = self._progress.add_task("train", total=protocol.train.steps,
                                             completed=start_step, loss=float("nan"), rate=0.0)
        self._progress.start()

    def update(self, step: int, row: dict) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=row.get("loss", float("nan")),
                                  rate=row.get("steps_per_sec", 0.0))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
