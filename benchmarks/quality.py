"""Label-free retrieval quality for every model x pooling (and bf16 beside fp32), on real photographs.

    .venv/bin/pip install -e '.[bench]'; .venv/bin/python benchmarks/quality.py     # about 5 minutes on 2 cores

The photographs are the ones that ship inside packages the bench extra installs (scikit-image's sample data,
scikit-learn's two sample images, matplotlib's portrait), each cut into 4 overlapping crops (the top-left,
top-right, bottom-left and bottom-right 70 % x 70 %), among 300 generated photo-like distractors. Every
configuration ingests the same folder and runs `retrieval eval`'s label-free evaluation on changed copies of
every real crop (seed 0): is the crop found first (recall@1), and in the top 10?

The weights are random (`weights: none`): ImageNet weights cannot be downloaded here. The figures therefore
say which pooling keeps a picture's own random-feature signature through each change, not which one ranks
similar content best with trained weights; run it with `--weights imagenet` where the weights are cached.
Writes benchmarks/results/quality.json and quality.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from retrieval import Settings, ingest
from retrieval.analysis.quality import evaluate_augmented
from retrieval.analysis.synthetic import write_photos
from retrieval.embedding.embedders import create_embedder
from retrieval.io.changes import CHANGES
from retrieval.io.system import machine
from retrieval.search.searcher import Searcher

RESULTS = Path(__file__).parent / "results"
CONFIGURATIONS = [  # (model, pooling, precision)
    ("resnet50", "avg", "fp32"),
    ("resnet50", "avg", "bf16"),
    ("resnet50", "max", "fp32"),
    ("resnet50", "gem", "fp32"),
    ("vgg16", "avg", "fp32"),  # fc1: no pooling to choose
]
DISTRACTORS = 300
# not photographs (a colour chart, a test phantom), or a second view of another (a stereo pair's right half)
NOT_USED = {"color", "phantom", "motorcycle_right"}


def shipped_photographs() -> list[Path]:
    """Real photographs inside installed packages: colour ones of at least 256 px a side."""
    found = []
    places = (("skimage", "data"), ("sklearn", "datasets/images"), ("matplotlib", "mpl-data/sample_data"))
    for package, folder in places:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{package} is not installed: pip install -e '.[bench]'")
        for path in sorted((Path(spec.origin).parent / folder).glob("*")):
            if path.suffix.lower() not in (".jpg", ".png") or path.stem in NOT_USED:
                continue
            with Image.open(path) as im:
                if im.mode == "RGB" and min(im.size) >= 256:
                    found.append(path)
    return found


def write_crops(photos: list[Path], folder: Path) -> list[str]:
    """Four overlapping 70 % crops of each photograph, as JPEGs; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n, path in enumerate(photos):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        w, h = rgb.size
        cw, ch = int(w * 0.7), int(h * 0.7)
        for i, (x, y) in enumerate([(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]):
            name = f"real-{n:02d}-{path.stem}-{i}.jpg"
            rgb.crop((x, y, x + cw, y + ch)).save(folder / name, quality=92)
            names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="none")
    weights = parser.parse_args().weights
    photos = shipped_photographs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        crops = write_crops(photos, folder)
        write_photos(folder, DISTRACTORS, seed=50_000)
        for model, pooling, precision in CONFIGURATIONS:
            settings = Settings(
                index=Path(tmp) / f"index-{model}-{pooling}-{precision}",
                model=model,
                pooling=pooling,
                precision=precision,
                weights=weights,
            )
            started = time.perf_counter()
            ingest(folder, settings, embedder=create_embedder(settings))
            searcher = Searcher(settings)
            real = [row for row, entry in enumerate(searcher.store.entries()) if entry.path.startswith("real-")]
            report = evaluate_augmented(searcher, sample=len(real), k=10, seed=0, among=real)
            one, ten = report.overall
            rows.append(
                {
                    "model": model,
                    "pooling": "fc1" if model == "vgg16" else pooling,
                    "precision": precision,
                    "recall_at_1": report.recall_at_1,
                    "recall_at_10": report.recall_at_k,
                    "mean_recall_at_1": one,
                    "mean_recall_at_10": ten,
                    "seconds": time.perf_counter() - started,
                }
            )
            print(f"{model} {pooling} {precision}: mean recall@1 {one:.3f}, recall@10 {ten:.3f}", flush=True)
    result = {
        "machine": machine(),
        "weights": weights,
        "photographs": [p.name for p in photos],
        "crops": len(crops),
        "distractors": DISTRACTORS,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "quality.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    host = result["machine"]
    names = list(CHANGES)
    lines = [
        "# Label-free retrieval quality",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; run {host['date']}. Weights: {result['weights']}.",
        f"{len(result['photographs'])} shipped photographs x 4 crops = {result['crops']} queries' originals, among "
        f"{result['distractors']} generated distractors. Recall@1 per change (recall@10 in the JSON).",
        "",
        "| model | pooling | precision | " + " | ".join(names) + " | mean @1 | mean @10 |",
        "|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for r in result["rows"]:
        cells = " | ".join(f"{r['recall_at_1'][n]:.3f}" for n in names)
        lines.append(
            f"| {r['model']} | {r['pooling']} | {r['precision']} | {cells} | {r['mean_recall_at_1']:.3f} "
            f"| {r['mean_recall_at_10']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
