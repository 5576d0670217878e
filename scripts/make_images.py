"""Write a small set of seeded, photo-like images, and near-duplicate copies of one of them to query with.

    python scripts/make_images.py OUT_FOLDER [--count N]

OUT_FOLDER/images/ gets the collection; OUT_FOLDER/queries/ a resized, a mirrored and a re-encoded copy
of image 7, which are not in the collection and must each find photo-0007.jpg first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval.analysis.synthetic import near_duplicates, photo, write_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    write_photos(args.out / "images", args.count)
    queries = args.out / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    for name, copy in near_duplicates(photo(7)).items():
        copy.convert("RGB").save(queries / f"photo-0007-{name}.jpg", quality=95)
    print(f"wrote {args.count} images to {args.out / 'images'} and 3 query copies to {queries}")


if __name__ == "__main__":
    main()
