"""The prototype `retrieval` grew out of, as its README describes it: the ingest baseline of benchmarks/ingest.py.

One image at a time through `model.predict`, Keras' own image loader, numpy normalization, every feature
kept in memory and saved to an .npz. Kept only to be measured against; nothing in `retrieval` uses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class FeatureExtractor:
    def __init__(self) -> None:
        import keras
        from keras.applications.resnet50 import ResNet50, preprocess_input

        keras.utils.set_random_seed(0)  # the prototype used weights="imagenet"; offline we cannot
        self.model = ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3))
        self.preprocess_input = preprocess_input
        self.image = keras.utils

    def extract(self, img_path: Path) -> np.ndarray:
        img = self.image.load_img(img_path, target_size=(224, 224))
        x = self.image.img_to_array(img)
        x = np.expand_dims(x, axis=0)
        x = self.preprocess_input(x)
        feature = self.model.predict(x, verbose=0)[0]
        return feature / np.linalg.norm(feature)


def index_folder(extractor: FeatureExtractor, paths: list[Path], out: Path) -> int:
    features, names = [], []
    for path in paths:
        try:
            features.append(extractor.extract(path))
            names.append(str(path))
        except Exception as e:  # noqa: BLE001 - as the prototype did: print and go on
            print(f"skipping {path}: {e}")
    np.savez(out, features=np.array(features), paths=np.array(names))
    return len(features)
