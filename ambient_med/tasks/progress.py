"""The progress bars of the commands (rich, on stderr): :class:`Bar` for a counted job
(``recon``, ``denoise``: done / total and the time left) and :class:`TrainProgress` for
training (loss, steps per second and the time left).

Training reports metrics every ``log_every`` steps, so its bar moves in those increments. Bars
go to stderr, results to stdout, so that stderr holds nothing but the bar and, on failure, the
one-line error. Off a terminal the bar is transient (a log file does not keep its frames)."""

from __future__ import annotations

import sys


def _progress(label: str, *extra):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), *extra, TimeRemainingColumn(),
                    console=Console(stderr=True), transient=not sys.stderr.isatty())


class Bar:
    """``with Bar("recon", enabled) as bar: bar.total(n); bar.advance(k)``: a bar of ``n`` units
    of work; ``total`` may be called once the work is counted. Disabled: does nothing."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled = label, enabled
        self._progress = self._task = None

    def __enter__(self) -> "Bar":
        return self

    def total(self, n: int) -> None:
        """Add ``n`` units of work (called once per file when a job has several)."""
        if not self.enabled:
            return
        if self._progress is None:
            self._progress = _progress(self.label)
            self._task = self._progress.add_task(self.label, total=n)
            self._progress.start()
        else:
            self._progress.update(self._task, total=self._progress.tasks[0].total + n)

    def advance(self, k: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, k)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class TrainProgress:
    """The training bar; ``start`` also prints the one-line summary of the data and noise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._task = None

    def start(self, protocol, info, start_step: int) -> None:
        from rich.console import Console

        if getattr(info, "noise", None):      # stabilised: sigma_n is 1 by construction
            how = "stabilised and equalised per pixel" if info.noise.get("equalise") else "stabilised"
            noise = (f"noise {info.noise['name']} {how} to std 1 (sigma_n = 1; "
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
        from rich.progress import TextColumn

        self._progress = _progress("train", TextColumn("loss {task.fields[loss]:.4f}"),
                                   TextColumn("{task.fields[rate]:.2f} steps/s"))
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
