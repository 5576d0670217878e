"""Turning decoded images into vectors: what a backbone is (backbones.py: ResNet50 and VGG16, their
weights, fingerprint and preprocessing), the two engines that run one (tensorflow_engine.py, openvino_engine.py),
preparing what OpenVINO runs, int8 included (preparation.py, quantize.py), and the `Embedder` factory that
picks among them from settings (embedders.py).

It imports `config`, `io` and `errors`, and never the index: an import contract in pyproject.toml forbids it
`index`, `ann`, the ingest's checkpoints and FAISS.
"""
