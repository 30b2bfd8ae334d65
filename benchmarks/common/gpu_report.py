"""The report of the speed benchmark (``gpu.py``): the Markdown table of its JSON result, and the
3D memory at 128^3 projected from a CPU run."""

from __future__ import annotations

import math

from ambient_med.diffusion.networks import EDMDenoiser, count_parameters

from .gpu_setup import KNEE_SET_SLICES, OBJECTIVES, VOL, network_config


def fmt(r: dict) -> str:
    """A timing row in a few words (or its error, or why it was skipped)."""
    if "error" in r or "skipped" in r:
        return r.get("error") or r["skipped"]
    mem = f", {r['peak_memory_mb']:.0f} MB" if r.get("peak_memory_mb") else ""
    return f"{r['images_per_sec']:.2f} img/s, {r['step_ms']:.0f} ms{mem}"


def markdown(res: dict) -> str:
    """The Markdown report of a result of ``gpu.py`` (also ``--render``)."""
    dev = res["device"]
    head = (f"# {res['label']}\n\n"
            f"Device: {dev.get('gpu', dev['cpu'])} ({dev['device']}), torch {dev['torch']}, "
            f"MONAI {dev['monai']}, {dev['torch_threads']} torch threads, "
            f"load average {dev['load_average_1min']:.1f} at the start. "
            f"Command: `{res['command']}`.\n")
    lines = [head]
    if dev["device"] == "cpu":
        lines.append(f"Each time is {res['timed_steps']} step(s) after as many warm-up steps on a "
                     "shared CPU: identical runs differ by 20% or more here, so these figures show "
                     "that every path runs and how the pieces compare, not speeds to quote. Peak "
                     "memory on a CPU is the peak of tensors created during one step "
                     "(`speed.TensorMemory`).\n")
    for key, tr in res.get("training", {}).items():
        lines += [f"\n## Training, {key}: {tr['image']} images, batch {tr['batch']}, "
                  f"{tr['parameters'] / 1e6:.1f} M parameters\n",
                  "Bare vs package loss on identical draws (relative difference): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in tr["bare_vs_package_loss"].items()) + "\n",
                  "| objective | package img/s | package step ms | bare img/s | bare step ms | "
                  "package / bare | peak MB (package / bare) |",
                  "|---|---|---|---|---|---|---|"]
        for o in OBJECTIVES:
            p, b = tr["package"][o], tr["bare"][o]
            if "step_ms" in p and "step_ms" in b:
                mem = (f"{p['peak_memory_mb']:.0f} / {b['peak_memory_mb']:.0f}"
                       if p.get("peak_memory_mb") else "n/a (CPU)")
                lines.append(f"| {o} | {p['images_per_sec']:.2f} | {p['step_ms']:.0f} | "
                             f"{b['images_per_sec']:.2f} | {b['step_ms']:.0f} | "
                             f"{p['step_ms'] / b['step_ms']:.2f} | {mem} |")
            else:
                lines.append(f"| {o} | {fmt(p)} | | {fmt(b)} | | | |")
        if "consistency_vs_clean" in tr:
            # files written before the variant was recorded name none
            variant = f"{tr['protocol_variant']}, the protocol's" if "protocol_variant" in tr else "the protocol's"
            lines.append(f"\n`ambient+consistency` ({variant}) / "
                         f"`clean` step: {tr['consistency_vs_clean']:.2f}; with the pair term: "
                         f"{tr.get('pair_vs_clean', float('nan')):.2f}; "
                         f"`clean` package / bare: {tr['clean_vs_bare']:.2f}.")
    for key, opts in res.get("options", {}).items():
        lines += [f"\n## Speed options, {key} (`ambient+consistency` step, each option alone)\n",
                  "| option | img/s | step ms | vs base | peak MB |", "|---|---|---|---|---|"]
        base = opts.get("base", {}).get("step_ms")
        for name, r in opts.items():
            if "step_ms" not in r:
                lines.append(f"| {name} | {fmt(r)} | | | |")
                continue
            mem = r.get("peak_memory_mb") or r.get("activation_peak_mb")
            mem = f"{mem:.0f}" + ("" if r.get("peak_memory_mb") else " (tensors of one step, CPU)") \
                if mem else ""
            lines.append(f"| {name} | {r['images_per_sec']:.2f} | {r['step_ms']:.0f} | "
                         f"{base / r['step_ms']:.2f}x | {mem} |")
    m = res.get("memory_projection")
    if m:
        lines += ["\n## 3D memory at 128^3, batch 2 (projected from the CPU run)\n",
                  f"{m['note']}\n", "| | GB |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in m.items() if k != "note"]
    s = res.get("sampling")
    if s:
        lines += [f"\n## Sampling: {s['image']} slices, {s['steps']} Heun steps "
                  f"({s['network_calls']} network calls), batch {s['batch']}\n",
                  "| precision | s per slice | peak MB |", "|---|---|---|"]
        for k in ("fp32", "bf16_autocast"):
            if k in s:
                pm = s[k]["peak_memory_mb"]
                lines.append(f"| {k} | {s[k]['seconds_per_slice']:.3f} | "
                             f"{f'{pm:.0f}' if pm else 'n/a (CPU)'} |")
    r = res.get("recon")
    if r:
        lines += [f"\n## Reconstruction: data-consistency sampler, R = {r['acceleration']:.1f}, "
                  f"{r['coils']} coils, {r['n_samples']} samples x {r['steps']} steps "
                  f"({r['network_calls']} network calls for {r['slices']} slices)\n",
                  f"{r['seconds_per_slice']:.2f} s per slice."]
    d = res.get("data")
    if d:
        p, t = d["preprocessing"], d["training"]
        lines += [f"\n## Data: {d['slices']} fastMRI-format phantom slices, {d['coils']} coils, "
                  f"{d['image'][0]}x{d['image'][1]}\n",
                  f"Preprocessing into the cache: {p['slices_per_second']:.2f} slices/s on "
                  f"{p['workers']} workers ({p['seconds_per_slice_per_worker']:.2f} s per slice per "
                  f"worker); {KNEE_SET_SLICES} slices "
                  + (f"projected at {p['projected_hours_35000_slices']:.2f} h.\n" if not res["quick"]
                     else f"of this reduced size would take {p['projected_hours_35000_slices']:.2f} h "
                          "(not a projection for knee-size slices).\n"),
                  f"Training the knee protocol from the cache ({t['patch'][0]}x{t['patch'][1]} "
                  f"patches, batch {t['batch']}, {t['loader_workers']} loader workers): waiting for "
                  f"data {100 * t['data_share']:.1f}% of step time ({t['step_ms']:.0f} ms steps)."]
    tg = res.get("targets")
    if tg:
        lines += ["\n## Targets\n", "| target | met |", "|---|---|"]
        lines += [f"| {k} | {'n/a (reduced sizes)' if v is None else ('yes' if v else 'NO')} |"
                  for k, v in tg.items()]
    return "\n".join(lines) + "\n"


def memory_projection(o: dict, vshape, vbatch: int) -> dict:
    """GB of a 3D ``ambient+consistency`` step at 128^3, batch 2, from the CPU run's tensor peaks
    (``o``: its speed options) at ``vshape``, ``vbatch``."""
    scale = math.prod((128, 128, 128)) / math.prod(vshape) * 2 / vbatch
    cfg = network_config(VOL, 3, 1)
    state = 4 * count_parameters(EDMDenoiser(cfg)) * 4 / 2**30  # weights, grads, 2 Adam moments
    ema = count_parameters(EDMDenoiser(cfg)) * 4 / 2**30
    return {
        "note": ("fp32 tensors of one ambient+consistency step at 32^3, scaled by the voxel "
                 "count (x64) and to batch 2, plus weights, gradients, Adam moments and EMA; "
                 "bf16 autocast on a GPU roughly halves the activations; the GPU run "
                 "measures it (torch.cuda.max_memory_allocated)"),
        "without checkpointing": o["base"]["activation_peak_mb"] * scale / 1024 + state + ema,
        "with grad_checkpointing": o["grad_checkpointing"]["activation_peak_mb"] * scale / 1024
        + state + ema}
