"""What the int8 fidelity gate decides on photo-sized images, under its stated rule (quantize.GateRule).

    .venv/bin/python benchmarks/int8_gate.py [SEEDS]     # SEEDS: collections to generate, default 0,1,2

For each seed, a collection of 300 generated 1024x768 photos drawn with that seed, all of which the default
calibration sample of an ingest takes (240 to calibrate on, 60 held out); random weights (ImageNet weights
cannot be downloaded here). For each collection, the real path an ingest takes: NNCF quantizes the converted
ResNet50, then the gate compares int8 with fp32 on the held-out images and their mirrored, half-size and
re-encoded copies. Recorded: the gate's figures, its decision under the default rule (at most 1 % of the
copies lost, at least 20 held-out images, cosine >= 0.999), and what the rule before it (cosine >= 0.999
and no copy lost, whatever the sample) would have decided on the same figures.
Writes benchmarks/results/int8_gate.json and int8_gate.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PHOTOS, SIZE = 300, (1024, 768)


def main(seeds: list[int]) -> dict:
    from retrieval.analysis.synthetic import write_photos
    from retrieval.config import Settings
    from retrieval.embedding.backbones import spec_for
    from retrieval.embedding.openvino_engine import OpenVinoEmbedder
    from retrieval.embedding.preparation import prepare
    from retrieval.embedding.quantize import DEFAULT_GATE, calibration_sample
    from retrieval.io.system import machine

    spec = spec_for("resnet50")
    result: dict = {"machine": machine(), "photos": PHOTOS, "size": list(SIZE), "rule": vars(DEFAULT_GATE), "runs": []}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "photos"
            write_photos(folder, PHOTOS, seed=10_000 * seed, size=SIZE)
            paths = sorted(p.name for p in folder.iterdir())
            started = time.perf_counter()
            sample = calibration_sample(folder, paths, spec.input_size, Settings().max_pixels)
            model = prepare(spec, "none", seed=0, precision="int8", calibration=sample, gate=DEFAULT_GATE)
            embedder = OpenVinoEmbedder(model)
            gate = embedder.runtime()["int8"]["gate"]
            run = {
                "seed": seed,
                **gate,
                "precision": embedder.runtime()["precision"],
                "passed_with_no_loss_allowed": gate["min_cosine"] >= gate["threshold"]
                and gate["copies_kept"] == gate["copies"],
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(run), flush=True)
            result["runs"].append(run)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_gate.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "int8_gate.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    host, rule = result["machine"], result["rule"]
    lines = [
        f"# int8 gate on {result['photos']} generated {result['size'][0]}x{result['size'][1]} photos",
        "",
        f"{host['cpu']}, {host['cores']} cores, {host['date']}. Rule: cosine >= {rule['min_cosine']}, at most "
        f"{rule['max_lost']:.0%} of the copies lost, at least {rule['min_held_out']} held-out images.",
        "",
        "| collection seed | held out | min cosine | copies fp32 finds | kept by int8 | passes | passed with none lost"
        " | precision used | seconds (quantize + gate) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {r['held_out']} | {r['min_cosine']:.5f} | {r['copies']} | {r['copies_kept']} "
            f"| {r['passed']} | {r['passed_with_no_loss_allowed']} | {r['precision']} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main([int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "0,1,2").split(",")])
