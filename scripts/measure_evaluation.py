"""Measure the Shapes evaluation: bias floor, evaluation-seed SD per sample count, interval coverage, step count.

What `docs/evaluation.md` reports and what the Shapes protocol is chosen from. One command, re-run whenever the data,
the Shapes CLIP or the metrics change (generated features are cached per checkpoint, seed, count and steps, so a
re-run after a metric change only recomputes the numbers):

    OMP_NUM_THREADS=1 python scripts/measure_evaluation.py \\
        --config leaderboards/shapes/dit.yaml --checkpoint A.ckpt [--checkpoint B.ckpt] \\
        --seeds 20 --n 1000 --output docs/evaluation-measurements.json

- **Real images**: Shapes val images against the protocol's train reference, in disjoint sets of each size
  (``--real-sizes``): the bias floor (mean) and the spread (SD) of every metric, with the Shapes CLIP's own class
  accuracy.
- **Checkpoints**: ``--seeds`` evaluation seeds of ``--n`` guided samples each (the protocol's sampler, steps, scale
  and labels); the set of ``n' < n`` samples of a seed is its first ``n'`` samples (sample ``i`` does not depend on
  the count), so one pool gives the evaluation-seed SD at every size. The generated images are cached under
  ``--cache`` per checkpoint, seed, count and steps: a retrained CLIP or a changed metric re-measures without sampling.
- **Coverage**: at each size, how often the 95 % interval of one evaluation (value ± 1.96 bootstrap SD) covers the
  mean over the seeds.
- **Pairing** (two checkpoints): SD over seeds of the difference between the two, against the unpaired SD.
- **Steps**: seed 0 at ``--fewer-steps`` against the protocol's steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.evaluation import metrics as M  # noqa: E402
from benchmark.evaluation.protocol import EvalProtocol  # noqa: E402
from benchmark.evaluation.stats import z_of  # noqa: E402

PROTOCOL = Path(__file__).resolve().parents[1] / "leaderboards" / "shapes" / "protocol.yaml"


def metric_set(ref_stats, ref_feats, reps: int) -> dict[str, M.FeatureMetric]:
    return {
        "fd_shapes": M.FrechetDistance(ref_stats, name="fd_shapes", bootstrap_reps=reps),
        "fd_shapes_inf": M.FrechetDistanceInfinity(ref_stats, name="fd_shapes_inf", bootstrap_reps=0),
        "kd_shapes": M.KernelDistance(ref_feats, name="kd_shapes", bootstrap_reps=0),
        "class_accuracy": M.ClassAccuracy(bootstrap_reps=reps),
    }


def measure(pool: dict[str, np.ndarray], metrics: dict[str, M.FeatureMetric]) -> dict[str, float]:
    """Every metric (and its bootstrap SD where computed) on one set."""
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        metric.reset()
        if name == "class_accuracy":
            metric.update(torch.from_numpy(pool["class"]), torch.from_numpy(pool["labels"]))
        else:
            metric.update(torch.from_numpy(pool["pool"]), torch.from_numpy(pool["labels"]))
        metric.replicates = {}
        out.update(metric.compute())
        out.update({f"{k}_boot": v for k, v in metric.replicates.items()})  # kept in memory for the pairing check
    return out


def summary(rows: list[dict[str, float]], keys: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows])
        out[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "sets": len(v)}
        if f"{k}_sd" in rows[0]:
            boot = np.array([r[f"{k}_sd"] for r in rows])
            z = z_of(0.95)
            out[k]["bootstrap_sd"] = float(np.sqrt(np.mean(boot**2)))
            out[k]["coverage"] = float(np.mean(np.abs(v - v.mean()) <= z * boot))
    return out


def clip_outputs(clip, images: torch.Tensor) -> dict[str, np.ndarray]:
    out = clip.image_outputs(images)
    return {"pool": out["pool"].double().numpy(), "class": out["class"].double().numpy()}


def real_part(clip, ref_stats, ref_feats, sizes: list[int], max_sets: int, reps: int) -> dict:
    from benchmark.evaluation.generate import to_uint8
    from data.shapes import Shapes

    total = max(max(sizes) * 4, max(sizes[:-1] or sizes) * max_sets if len(sizes) > 1 else 0)
    total = min(total, 20000)
    val = Shapes("val", resolution=32, length=total)
    images, labels = [], []
    for lo in range(0, total, 500):
        items = [val[i] for i in range(lo, min(lo + 500, total))]
        images.append(to_uint8(torch.stack([it["image"] for it in items])))
        labels += [int(it["class_label"]) for it in items]
    feats = clip_outputs(clip, torch.cat(images))
    feats["labels"] = np.array(labels)
    metrics = metric_set(ref_stats, ref_feats, reps)
    out = {"val_images": total}
    for n in sizes:
        sets = min(max_sets, total // n)
        rows = [measure({k: v[i * n : (i + 1) * n] for k, v in feats.items()}, metrics) for i in range(sets)]
        out[str(n)] = summary(rows, list(metrics))
        print(f"real n={n} ({sets} disjoint sets): " + fmt(out[str(n)]), flush=True)
    return out


def fmt(s: dict) -> str:
    return ", ".join(f"{k} {v['mean']:.4g} ± {v['sd']:.3g}" for k, v in s.items())


def load_entry(config: str, ckpt: str):
    import warnings

    from benchmark.cli import CLI_KWARGS, _DescribeCLI
    from benchmark.evaluation.command import load_weights

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=["--config", config], run=False)
    module = cli.model
    load_weights(module, ckpt)
    return module.eval()


def generated_pool(module, protocol: EvalProtocol, seed: int, n: int, clip, cache: Path, ckpt_id: str) -> dict:
    """CLIP outputs of the first ``n`` samples of evaluation seed ``seed``; the images are cached (uint8), so a
    retrained CLIP or a new metric re-measures without sampling again."""
    from benchmark.evaluation.generate import generate

    steps = protocol.flow_steps, protocol.ddpm_steps
    stem = f"img-{ckpt_id}-s{seed}-n*-steps{steps[0]}_{steps[1]}-g{protocol.guidance_scale:g}.npz"
    pool = None
    for found in sorted(cache.glob(stem)):  # sample i does not depend on the count: a larger pool's first n
        with np.load(found) as f:
            stored = dict(f)
        full = len(stored["labels"])
        if full >= n:
            pool = {
                "images": stored["images"][:n],
                "labels": stored["labels"][:n],
                "seconds": stored["seconds"] * n / full,
            }
            break
    if pool is None:
        start = time.perf_counter()
        gen = generate(module, protocol.replace(seed=seed, num_samples=n), protocol.guidance_scale)
        pool = {
            "images": gen.images.numpy(),
            "labels": gen.labels.numpy(),
            "seconds": np.array(time.perf_counter() - start),
        }
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / stem.replace("*", str(n)), **pool)
        print(f"  seed {seed}: {n} samples in {float(pool['seconds']):.1f} s", flush=True)
    out = clip_outputs(clip, torch.from_numpy(pool["images"]))
    out.update(labels=pool["labels"], seconds=pool["seconds"])
    return out


def checkpoint_part(args, ckpt: str, clip, ref_stats, ref_feats, protocol: EvalProtocol) -> tuple[dict, dict]:
    module = load_entry(args.config, ckpt)
    ckpt_id = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()[:12]
    cache = Path(args.cache)
    pools = [generated_pool(module, protocol, s, args.n, clip, cache, ckpt_id) for s in range(args.seeds)]
    metrics = metric_set(ref_stats, ref_feats, args.reps)
    out: dict = {
        "checkpoint": ckpt,
        "sha256": ckpt_id,
        "guided_images_per_s": float(args.n * len(pools) / sum(float(p["seconds"]) for p in pools)),
    }
    per_seed: dict[int, list[dict]] = {}
    for n in [s for s in args.sizes if s <= args.n]:
        rows = [measure({k: v[:n] for k, v in p.items() if k != "seconds"}, metrics) for p in pools]
        per_seed[n] = rows
        out[str(n)] = summary(rows, list(metrics))
        print(f"{Path(ckpt).name} n={n} ({len(rows)} seeds): " + fmt(out[str(n)]), flush=True)
    if args.fewer_steps:
        fewer = protocol.replace(flow_steps=args.fewer_steps, ddpm_steps=max(args.fewer_steps, 2))
        p_few = generated_pool(module, fewer, 0, args.n, clip, cache, ckpt_id)
        few = measure({k: v for k, v in p_few.items() if k != "seconds"}, metrics)
        full = per_seed[args.n][0]
        out["steps"] = {
            "fewer": args.fewer_steps,
            "protocol": protocol.flow_steps,
            "n": args.n,
            "fewer_values": {k: few[k] for k in metrics},
            "protocol_values": {k: full[k] for k in metrics},
            "fewer_images_per_s": float(args.n / float(p_few["seconds"])),
        }
        print(f"steps {args.fewer_steps} vs {protocol.flow_steps}: {out['steps']}", flush=True)
    return out, per_seed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="leaderboards/shapes/dit.yaml")
    parser.add_argument("--checkpoint", action="append", default=[])
    parser.add_argument("--protocol", default=str(PROTOCOL))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--n", type=int, default=1000, help="samples per evaluation seed (the largest size)")
    parser.add_argument("--sizes", default="200,500,1000,2000")
    parser.add_argument("--real-sizes", default="200,1000,2000,5000")
    parser.add_argument("--real-sets", type=int, default=20)
    parser.add_argument("--reps", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--fewer-steps", type=int, default=10)
    parser.add_argument("--cache", default="runs/measure-evaluation")
    parser.add_argument("--output", default=None, help="JSON of every figure")
    parser.add_argument("--doc", default=None, help="rewrite the tables between the 'measured' markers of this page")
    parser.add_argument("--block", default="main", help="which marked block of --doc this run rewrites")
    parser.add_argument("--render", default=None, help="measure nothing: write this earlier --output JSON into --doc")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        text = markdown(result)
        if args.doc:
            write_doc(Path(args.doc), text, args.block)
        print(text)
        return result
    args.sizes = [int(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    from benchmark.evaluation.evaluate import reference_stats, shapes_reference_dataset
    from benchmark.evaluation.generate import to_uint8
    from benchmark.evaluation.shapes_clip import ShapesCLIP

    protocol = EvalProtocol.from_yaml(args.protocol)
    clip = ShapesCLIP.load()
    start = time.perf_counter()
    ref_stats = reference_stats(protocol, 32, None, extractor=clip)
    ref_ds = shapes_reference_dataset(protocol.reference, 32, None, protocol.reference_samples)
    ref_feats = torch.cat(
        [
            clip.features(to_uint8(torch.stack([ref_ds[i]["image"] for i in range(lo, min(lo + 500, len(ref_ds)))])))
            for lo in range(0, len(ref_ds), 500)
        ]
    ).double()
    result: dict = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _git_head(),
        "cpu": platform.processor() or _cpu_name(),
        "threads": torch.get_num_threads(),
        "protocol": protocol.to_dict(),
        "reference_images": protocol.reference_samples,
    }
    result["real"] = real_part(clip, ref_stats, ref_feats, [int(s) for s in args.real_sizes.split(",")],
                               args.real_sets, args.reps)  # fmt: skip
    per_ckpt = []
    result["checkpoints"] = []
    for ckpt in args.checkpoint:
        out, per_seed = checkpoint_part(args, ckpt, clip, ref_stats, ref_feats, protocol)
        result["checkpoints"].append(out)
        per_ckpt.append(per_seed)
    if len(per_ckpt) == 2:
        result["pairing"] = {}
        for n in per_ckpt[0]:
            pair = {}
            for k in ("fd_shapes", "class_accuracy"):
                a = np.array([r[k] for r in per_ckpt[0][n]])
                b = np.array([r[k] for r in per_ckpt[1][n]])
                # The paired bootstrap of one evaluation (what the leaderboard uses): replicate r of both
                # checkpoints resamples the same samples; RMS over the seeds of the SD of replicate differences.
                paired_boot = [
                    float(np.std(ra[f"{k}_boot"] - rb[f"{k}_boot"], ddof=1))
                    for ra, rb in zip(per_ckpt[0][n], per_ckpt[1][n], strict=True)
                    if f"{k}_boot" in ra and f"{k}_boot" in rb
                ]
                pair[k] = {
                    "paired_bootstrap_sd": float(np.sqrt(np.mean(np.square(paired_boot)))) if paired_boot else None,
                    "sd_of_difference": float((a - b).std(ddof=1)),
                    "unpaired_sd": float(np.hypot(a.std(ddof=1), b.std(ddof=1))),
                    "correlation": float(np.corrcoef(a, b)[0, 1]),
                    "mean_difference": float((a - b).mean()),
                }
            result["pairing"][str(n)] = pair
            print(f"pairing n={n}: {pair}", flush=True)
    result["seconds"] = time.perf_counter() - start
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {args.output}")
    text = markdown(result)
    print(text)
    if args.doc:
        write_doc(Path(args.doc), text, args.block)
    return result


def write_doc(path: Path, text: str, block: str = "main") -> None:
    """Replace the block between the markers named ``block`` of ``path`` (append it when the page has none)."""
    BEGIN = f"<!-- measured:{block} begin (scripts/measure_evaluation.py --doc --block {block}) -->"
    END = f"<!-- measured:{block} end -->"
    page = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in page and END in page:
        page = page[: page.index(BEGIN)] + block + page[page.index(END) + len(END) :]
    else:
        page = page.rstrip() + "\n\n" + block + "\n"
    path.write_text(page)
    print(f"tables written into {path}")


def _cell(s: dict, key: str, scale: float = 1.0) -> str:
    v = s.get(key)
    if v is None:
        return ""
    sd = v["sd"] * scale
    return f"{v['mean'] * scale:.3g} (SD {sd:.2g})" if np.isfinite(sd) else f"{v['mean'] * scale:.3g}"


def markdown(result: dict) -> str:
    """The tables of docs/evaluation.md from one run's figures."""
    keys = ["fd_shapes", "fd_shapes_inf", "kd_shapes", "class_accuracy"]
    heads = ["n", "sets", "fd_shapes", "FD∞", "KD (unbiased MMD²)", "class acc. (%)"]
    lines = [
        f"Measured {result['date']} at commit {result['commit']} on {result['cpu']} ({result['threads']} thread(s)):",
        "",
        f"    {result['command']}",
        "",
        f"**Real Shapes val images** against the protocol's reference ({result['reference_images']} train images): "
        "the bias floor (mean) and the spread over disjoint sets (SD).",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(heads),
    ]
    for n, s in result["real"].items():
        if n == "val_images":
            continue
        sets = s["fd_shapes"]["sets"]
        lines.append(
            f"| {n} | {sets} | " + " | ".join(_cell(s, k, 100 if k == "class_accuracy" else 1) for k in keys) + " |"
        )
    for ck in result["checkpoints"]:
        lines += [
            "",
            f"**Checkpoint `{ck['checkpoint']}`** (sha256 {ck['sha256']}), guided, one evaluation seed per set "
            f"({ck['guided_images_per_s']:.0f} guided images/s): mean and evaluation-seed SD; bootstrap SD (RMS over "
            "the seeds) and how often value ± 1.96 bootstrap SD covers the mean of the seeds.",
            "",
            "| n | seeds | fd_shapes | bootstrap SD | coverage | FD∞ | KD | class acc. (%) | bootstrap SD | coverage |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n, s in ck.items():
            if not n.isdigit():
                continue
            fd, acc = s["fd_shapes"], s["class_accuracy"]
            lines.append(
                f"| {n} | {fd['sets']} | {_cell(s, 'fd_shapes')} | {fd['bootstrap_sd']:.2g} | {fd['coverage']:.0%} | "
                f"{_cell(s, 'fd_shapes_inf')} | {_cell(s, 'kd_shapes')} | {_cell(s, 'class_accuracy', 100)} | "
                f"{acc['bootstrap_sd'] * 100:.2g} | {acc['coverage']:.0%} |"
            )
        if "steps" in ck:
            st = ck["steps"]
            lines += [
                "",
                f"Steps: seed 0, n = {st['n']}: {st['fewer']} steps give fd_shapes "
                f"{st['fewer_values']['fd_shapes']:.3g}"
                f" and class accuracy {100 * st['fewer_values']['class_accuracy']:.1f} %, against "
                f"{st['protocol_values']['fd_shapes']:.3g} and {100 * st['protocol_values']['class_accuracy']:.1f} % "
                f"at {st['protocol']} steps ({st['fewer_images_per_s']:.0f} guided images/s at {st['fewer']} steps).",
            ]
    if result.get("pairing"):
        lines += [
            "",
            "**Pairing** (the two checkpoints on the same noise and labels, per evaluation seed): SD of the difference "
            "over the seeds, the paired bootstrap's estimate of it from one evaluation (RMS over the seeds), and "
            "the SD "
            "the difference would have if the two evaluations were independent.",
            "",
            "| n | metric | mean difference | SD of difference | paired bootstrap SD | unpaired SD | correlation |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, pair in result["pairing"].items():
            for k, v in pair.items():
                scale = 100 if k == "class_accuracy" else 1
                boot = v.get("paired_bootstrap_sd")
                boot_text = "" if boot is None else f"{boot * scale:.2g}"
                lines.append(
                    f"| {n} | {k} | {v['mean_difference'] * scale:.3g} | {v['sd_of_difference'] * scale:.2g} | "
                    f"{boot_text} | {v['unpaired_sd'] * scale:.2g} | {v['correlation']:.2f} |"
                )
    return "\n".join(lines)


def _git_head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
