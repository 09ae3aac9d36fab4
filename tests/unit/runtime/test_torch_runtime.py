"""The torch runtime: TorchScript and exported programs in, plain nn.Modules refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris

from shipyard.errors import MissingDependency, ModelFormatError
from shipyard.registry import Registry
from shipyard.runtime.loader import runtime_for_object
from shipyard.runtime.torch import TorchRuntime

# torch 2.13 deprecates TorchScript; these tests exercise it on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
]


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class TwoHeads(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(dim=1), x * 2


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def mlp(iris: tuple[np.ndarray, np.ndarray]) -> MLP:
    X, y = iris
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLP()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xt), yt).backward()
            opt.step()
    return net.eval()


def reference(fn: object, X: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return fn(torch.from_numpy(X)).numpy()  # type: ignore[operator,no-any-return]


def exported(net: torch.nn.Module, X: np.ndarray) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch")
    return torch.export.export(net, (torch.from_numpy(X[:5]),), dynamic_shapes={"x": {0: batch}})


def test_torchscript_module_round_trip(registry: Registry, iris: tuple[np.ndarray, np.ndarray], mlp: MLP) -> None:
    X, _ = iris
    scripted = torch.jit.script(mlp)
    assert runtime_for_object(scripted) is TorchRuntime
    mv = registry.register(scripted, "iris-ts", sample=X[:5])

    assert mv.flavor == "torch"
    assert mv.flavor_meta == {"file": "model.pt", "kind": "torchscript"}
    assert mv.signature.format == "tensors"
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.inputs] == [("input", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.outputs] == [("predict", "FP32", (-1, 3))]

    got = registry.load("iris-ts").predict_arrays({"input": X})
    np.testing.assert_allclose(got["predict"], reference(scripted, X), rtol=1e-6)


def test_exported_program_declares_its_own_signature(
    registry: Registry, iris: tuple[np.ndarray, np.ndarray], mlp: MLP
) -> None:
    X, _ = iris
    program = exported(mlp, X)
    assert runtime_for_object(program) is TorchRuntime
    mv = registry.register(program, "iris-export")  # no sample needed

    assert mv.flavor_meta == {"file": "model.pt2", "kind": "export"}
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.inputs] == [("x", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.outputs] == [("predict", "FP32", (-1, 3))]

    loaded = registry.load("iris-export")
    got = loaded.predict_arrays({"x": X})
    np.testing.assert_allclose(got["predict"], reference(program.module(), X), rtol=1e-6)
    # float64 in is cast to the dtype the program was exported with
    got64 = loaded.runtime.predict({"x": X.astype(np.float64)})
    np.testing.assert_allclose(got64["predict"], reference(program.module(), X), rtol=1e-6)


def test_read_only_input_arrays_are_accepted(iris: tuple[np.ndarray, np.ndarray], mlp: MLP) -> None:
    X, _ = iris
    frozen = X.copy()
    frozen.flags.writeable = False  # as decoded from a request buffer
    runtime = TorchRuntime(torch.jit.script(mlp))
    np.testing.assert_allclose(runtime.predict({"input": frozen})["predict"], reference(mlp, X), rtol=1e-6)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_torch_file_import(
    registry: Registry, tmp_path: Path, iris: tuple[np.ndarray, np.ndarray], mlp: MLP, kind: str
) -> None:
    X, _ = iris
    if kind == "torchscript":
        path = tmp_path / "mlp.pt"
        torch.jit.save(torch.jit.script(mlp), str(path))
    else:
        path = tmp_path / "mlp.pt2"
        torch.export.save(exported(mlp, X), str(path))

    mv = registry.register(path, "iris-file", sample=X[:5])
    assert mv.flavor == "torch"
    assert mv.flavor_meta["kind"] == kind
    name = mv.signature.input_names[0]
    got = registry.load("iris-file").predict_arrays({name: X})
    np.testing.assert_allclose(got["predict"], reference(mlp, X), rtol=1e-6)


def test_tuple_outputs_are_numbered(registry: Registry, iris: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = iris
    registry.register(torch.jit.script(TwoHeads()), "heads", sample=X[:3])
    got = registry.load("heads").predict_arrays({"input": X})
    assert list(got) == ["output_0", "output_1"]
    np.testing.assert_allclose(got["output_0"], X.sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(got["output_1"], X * 2)


def test_plain_nn_module_is_refused_with_what_to_do(
    registry: Registry, iris: tuple[np.ndarray, np.ndarray], mlp: MLP
) -> None:
    with pytest.raises(ModelFormatError, match=r"plain torch\.nn\.Module \(MLP\)") as info:
        registry.register(mlp, "iris-plain", sample=iris[0][:5])
    assert "torch.export.export(model" in str(info.value)
    assert "torch.jit.script(model)" in str(info.value)


def test_torch_save_pickle_file_is_refused(registry: Registry, tmp_path: Path, mlp: MLP) -> None:
    path = tmp_path / "weights.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(ModelFormatError, match=r"torch\.save\(\) pickle"):
        registry.register(path, "weights")


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependency, match=r"pip install 'shipyard\[torch\]'"):
        TorchRuntime.load(tmp_path, {"file": "model.pt", "kind": "torchscript"})
