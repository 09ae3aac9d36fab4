"""Edge variants of the quickstart model and small PyTorch and Keras MLPs: size, latency, accuracy.

    .venv/bin/python bench/edge.py [--latency-seconds 1.0]

Registers, in a throwaway SHIPYARD_HOME, the quickstart model (a 100-tree
RandomForest on iris, ``shipyard.demo.train_demo_model``) and a 4-64-64-3 MLP
trained on iris (a ``torch.export`` program), and the same 4-64-64-3 MLP in Keras
(registered from the Keras object, served from its SavedModel), then runs
``export_version`` on each with every quantization, pruning and compilation: ONNX
variants for the first two; TFLite (float, dynamic, int8, fp16), XLA and the
tf2onnx ONNX graph for the Keras model. Every variant is checked
on the 150 iris rows plus the stored sample, with the species as the target, so
"accuracy delta" is accuracy against the true labels minus the source's.
Latency is the median of one ``predict`` call on one thread (ONNX Runtime or
OpenVINO or the LiteRT interpreter for the variants, the registered runtime for
the source, torch and TensorFlow limited to one thread too). Prints one
Markdown table; a variant that cannot be made says why in the last column.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.config import Settings
from shipyard.demo import register_demo
from shipyard.export import ExportOptions, ExportReport, export_version, parse_prune
from shipyard.registry import Registry


def _iris() -> tuple[Any, np.ndarray]:
    from sklearn.datasets import load_iris

    from shipyard.demo import FEATURES

    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = FEATURES
    return X, y.to_numpy()


def register_mlp(reg: Registry) -> str:
    """Train a small MLP on iris (standardised inside the model) and register it as an exported program."""
    import torch

    X, y = _iris()
    Xt = torch.from_numpy(X.to_numpy(dtype=np.float32))
    yt = torch.from_numpy(y)
    mean, std = Xt.mean(0), Xt.std(0)

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                torch.nn.Linear(64, 3),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLP()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xt), yt).backward()
            opt.step()
    net.eval()
    sample = X.to_numpy(dtype=np.float32)[[0, 60, 120, 30, 90]]
    program = torch.export.export(net, (torch.from_numpy(sample),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    mv = reg.register(program, "mlp", sample={"x": sample})
    return mv.ref


def register_keras(reg: Registry) -> str:
    """The same MLP in Keras (standardised inside the model by a Normalization layer), registered."""
    import keras

    X, y = _iris()
    Xf = X.to_numpy(dtype=np.float32)
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(Xf)
    model = keras.Sequential([
        keras.Input((4,), name="x"), norm,
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(3),
    ])
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(Xf, y, epochs=200, batch_size=150, verbose=0)
    return reg.register(model, "keras-mlp", sample={"x": Xf[::10]}).ref


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _rows(model: str, report: ExportReport) -> list[list[str]]:
    rows = []
    for v in report.variants:
        t = v.timing
        name = "original" if v.name == "source" else v.name
        note = ""
        if v.error:
            note = "not made: " + v.error.split(":", 1)[0] if v.error.startswith("nothing") else "not made: " + v.error
            note = note[:140]
        elif "sparsity" in v.notes:
            note = f"{v.notes['sparsity']:.0%} of weights zero"
        elif "trees" in v.notes:
            note = f"{v.notes['trees']} of {v.notes['of']} trees (chosen from the accuracy curve)"
        elif v.name == "source":
            note = f"{v.notes.get('flavor')} runtime"
        delta = v.accuracy_delta
        rows.append([
            model, name, _size(v.size_bytes), _size(v.compressed_bytes),
            "-" if t is None else f"{t.batch1_ms:.3f}", "-" if t is None else f"{t.batch1000_ms:.2f}",
            "-" if delta is None else f"{delta * 100:+.2f} pt", note,
        ])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-seconds", type=float, default=1.0, help="timing budget per variant and batch size")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # every path on one thread, as the ONNX Runtime and OpenVINO variants run
    from shipyard.runtime.tensorflow import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    X, y = _iris()
    data = X.copy()
    data["species"] = y
    table: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry.from_settings(Settings(home=Path(tmp) / "home"))
        try:
            demo = register_demo(reg).ref
            mlp = register_mlp(reg)
            common: dict[str, Any] = {
                "quantize": ("dynamic", "static", "fp16"), "compile": ("ort", "openvino"),
                "target": "species", "latency_budget_s": args.latency_seconds,
            }
            demo_report = export_version(reg, demo, Path(tmp) / "demo", ExportOptions(
                prune=(parse_prune("trees"),), check_data=data, **common))
            table += _rows("quickstart RandomForest", demo_report)
            mlp_data = {"x": X.to_numpy(dtype=np.float32), "species": y}
            mlp_report = export_version(reg, mlp, Path(tmp) / "mlp", ExportOptions(
                prune=(parse_prune("magnitude:0.3"), parse_prune("structured:0.1")), check_data=mlp_data,
                **common))
            table += _rows("PyTorch MLP 4-64-64-3", mlp_report)
            keras_mlp = register_keras(reg)
            keras_report = export_version(reg, keras_mlp, Path(tmp) / "keras", ExportOptions(
                to="tflite", quantize=("dynamic", "int8", "fp16"), compile=("xla",), check_data=mlp_data,
                target="species", latency_budget_s=args.latency_seconds))
            table += _rows("Keras MLP 4-64-64-3", keras_report)
            onnx_report = export_version(reg, keras_mlp, Path(tmp) / "keras-onnx", ExportOptions(
                check_data=mlp_data, target="species", latency_budget_s=args.latency_seconds))
            table += [r for r in _rows("Keras MLP 4-64-64-3", onnx_report) if r[1] != "original"]
        finally:
            reg.close()
    header = ["model", "variant", "size", "zipped", "batch 1 ms", "batch 1000 ms", "accuracy Δ", "note"]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i < 2 or i == 7 else "---:" for i in range(len(header))) + " |")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
