"""A model version's configuration in the layout of Triton's model configuration extension.

Served as ``GET /v2/models/NAME[/versions/V]/config`` and gRPC ``ModelConfig``,
for tools that read a model's configuration before they send anything
(tritonclient's ``get_model_config``, perf_analyzer, model analyzer). It is
derived from the version's signature, nothing else:

* ``max_batch_size``: when every input and output has a leading batch dimension
  (shape ``[-1, ...]``, which every signature inferred from a sample has),
  ``MAX_BATCH_SIZE`` (shipyard sets no row limit of its own; ``--max-body-bytes``
  bounds a request) and ``dims`` leave that dimension out, as Triton's do;
  otherwise 0 and ``dims`` are the whole shape;
* a plain column (shape ``[-1]``) is ``dims: [1]`` with ``reshape: {shape: []}``:
  clients send ``[rows, 1]`` (or ``[rows]``), the model sees ``[rows]``;
* ``data_type`` is ``TYPE_`` + the protocol datatype (BYTES is ``TYPE_STRING``);
* ``version_policy`` names the one version the request resolved to;
* ``dynamic_batching`` is there when the server batches the model;
* ``parameters`` carry the model metadata's parameters (signature_format,
  digest, created_at) as ``string_value``.

Pure: plain data in, a JSON-ready dict (Triton's field names) out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shipyard.batching.policy import BatchPolicy
from shipyard.signature import Signature, TensorSpec

#: ``max_batch_size`` of a model that batches along its first dimension: Triton's field is an int32.
MAX_BATCH_SIZE = 2**31 - 1
BACKEND = "shipyard"


def data_type(datatype: str) -> str:
    """The model-configuration name of a protocol datatype."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def batches_first(signature: Signature) -> bool:
    """Every input and output has a leading batch dimension of any size."""
    specs = (*signature.inputs, *signature.outputs)
    return bool(specs) and all(s.shape and s.shape[0] == -1 for s in specs)


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    out: dict[str, Any] = {"name": spec.name, "data_type": data_type(spec.datatype)}
    if dims:
        out["dims"] = dims
    else:  # one value per row (or a scalar): Triton has no empty dims, it reshapes [1] away
        out["dims"] = [1]
        out["reshape"] = {"shape": []}
    return out


def model_config(
    name: str,
    version: int,
    platform: str,
    signature: Signature,
    parameters: Mapping[str, Any],
    batching: BatchPolicy | None = None,
) -> dict[str, Any]:
    """The ``$model_configuration_response`` of one version.

    Args:
        name: the model name as the request gave it (as model metadata answers).
        version: the version the request resolved to.
        platform: as in model metadata (``shipyard_<flavor>``).
        signature: the version's signature.
        parameters: model metadata's parameters.
        batching: the server's batch policy for this model, if it batches it.
    """
    batched = batches_first(signature)
    config: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "backend": BACKEND,
        "version_policy": {"specific": {"versions": [version]}},
        "max_batch_size": MAX_BATCH_SIZE if batched else 0,
        "input": [_tensor(s, batched) for s in signature.inputs],
        "output": [_tensor(s, batched) for s in signature.outputs],
        "parameters": {k: {"string_value": str(v)} for k, v in parameters.items()},
    }
    if batching is not None:
        config["dynamic_batching"] = {
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": round(batching.max_wait_ms * 1000),
        }
    return config
