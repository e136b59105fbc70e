"""What ``rats estimate`` prints: the per-rank table, the markdown table, the one line ``rats validate``
shows, and the command.
"""

from __future__ import annotations

import json
import os

import torch

from rats_core.config import RatsConfig
from rats_core.estimate.memory import ACTIVATIONS_METHOD, CARDS_GB, HEADROOM, POLICY, Estimate, GiB, estimate

# ----------------------------------------------------------------------------- output


def format_table(est: Estimate) -> str:
    stages = sorted(est.parts)
    # small models (the toy and digits runs) in MiB, so their figures are not all 0.0
    unit, scale = ("GiB", GiB) if max(est.per_rank(s) for s in stages) >= GiB else ("MiB", 1024**2)

    def _gb(x: float) -> str:
        return f"{x / scale:.1f}"

    names = [p.name for p in est.parts[est.stage]]
    for s in stages:
        names += [p.name for p in est.parts[s] if p.name not in names]
    head = f"{'per rank, ' + unit:<28}" + "".join(f"{'ZeRO-' + str(s) + ('*' if s == est.stage else ''):>9}" for s in stages)
    lines = [
        f"{est.config}: backbone {est.backbone} ({est.architecture}), {est.ranks} rank(s); "
        f"denoiser {est.params['denoiser'] / 1e6:,.1f} M params, trainable {est.params['trainable'] / 1e6:,.2f} M",
        head,
    ]
    for n in names:
        row = f"{n:<28}"
        for s in stages:
            part = next((p for p in est.parts[s] if p.name == n), None)
            row += f"{'-' if part is None else _gb(part.bytes) + ('c' if part.where == 'cpu' else ''):>9}"
        lines.append(row)
    lines.append(f"{'TOTAL on the GPU':<28}" + "".join(f"{_gb(est.per_rank(s)):>9}" for s in stages))
    for gb in CARDS_GB:
        lines.append(f"{'fits ' + str(gb) + ' GB':<28}" + "".join(
            f"{'yes' if est.fits(s)[f'{gb}GB'] else 'no':>9}" for s in stages))
    lines.append("* the config's stage; c: offloaded to CPU memory (not in the GPU total); "
                 f"fits: the total within {HEADROOM:.0%} of the card (the rest for the CUDA context)")
    for k, v in est.published.items():
        lines.append(f"{k}: {est.params[k]:,} params; published {v['params']:,.0f} ({v['source']}); "
                     f"ratio {v['ratio']}")
    lines.append(f"policy: {POLICY}")
    lines.append(f"activations: {ACTIVATIONS_METHOD}")
    lines.extend(f"note: {n}" for n in est.notes)
    return "\n".join(lines)


def markdown(est: Estimate, ranks: tuple[int, ...] = (1, 2, 8)) -> str:
    """The "will it fit" table of docs/backbones.md: GiB per GPU for each ZeRO stage and rank count, with
    the smallest of the 24/40/80 GB cards it fits (— for none)."""
    stages = sorted(est.parts)
    lines = ["| GPUs | " + " | ".join(f"ZeRO-{s}" + (" (config)" if s == est.stage else "") for s in stages) + " |",
             "|---" * (len(stages) + 1) + "|"]
    for n in ranks:
        e = est.with_ranks(n)
        cells = []
        for s in stages:
            fits = [gb for gb in CARDS_GB if e.fits(s)[f"{gb}GB"]]
            cells.append(f"{e.per_rank(s) / GiB:.1f} GiB → {fits[0]} GB" if fits else f"{e.per_rank(s) / GiB:.1f} GiB → —")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validate_line(cfg: RatsConfig, source: str) -> str:
    """``rats validate``'s one line; never fails the validation (weights it would have to build may be
    missing, a third-party backbone may not build off its device)."""
    try:
        return one_line(estimate(cfg, source=source))
    except Exception as exc:  # noqa: BLE001 - an estimate is a hint; validation already passed
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return f"estimate: not available for this config ({reason})"


def one_line(est: Estimate) -> str:
    """What ``rats validate`` prints for a GPU config."""
    total = est.per_rank(est.stage)
    fits = [f"{gb} GB" for gb in CARDS_GB if est.fits(est.stage)[f"{gb}GB"]]
    where = f"fits a {fits[0]} card" if fits else f"needs more than {CARDS_GB[-1]} GB"
    return (f"estimate: ~{total / GiB:.0f} GiB per GPU at ZeRO-{est.stage} on {est.ranks} rank(s), {where} "
            f"(rats estimate {est.config} for the table)")


# ----------------------------------------------------------------------------- the command


def gpu_config(cfg: RatsConfig) -> bool:
    """Whether a config will train on a GPU: ``train.device`` names one, or is unset where one is present."""
    device = cfg.train.device
    if device is None:
        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def cmd_estimate(args) -> int:
    from rats_core.config import load_config

    cfg = load_config(args.config, args.overrides)
    ranks = default_ranks(args.ranks)
    est = estimate(cfg, ranks=ranks[0], source=args.config)
    if args.json:
        print(json.dumps(est.to_dict(), indent=2))
    elif args.markdown:
        print(markdown(est))
    else:
        print("\n\n".join(format_table(est.with_ranks(n) if n != ranks[0] else est) for n in ranks))
    return 0


def default_ranks(given: int | None) -> tuple[int, ...]:
    """``--ranks`` when given, else the launcher's ``WORLD_SIZE`` (torchrun, deepspeed), else 1 and 8: on one
    rank ZeRO-3 looks the worst choice (its teacher copy is not divided), which it is not on several."""
    if given is not None:
        return (given,)
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) >= 1:
        return (int(world),)
    return (1, 8)
