"""Turn a batch of stream messages into result records and dead letters, with one model call.

A message's value is JSON, in one of three shapes:

* one record: ``{"sepal_length": 5.1, ...}`` -> the output has ``"prediction"``;
* the ``/v1`` predict body: ``{"instances": [...]}`` or ``{"inputs": {...}}``;
* a list of records: ``[{...}, {...}]`` -> the output has ``"predictions"`` (one per row).

Every message is decoded and checked against the signature on its own, so a
bad one becomes a dead letter (original payload + reason) and the rest of the
batch goes on. The good ones are merged into one model call (per input shape);
if that call fails, each message is retried alone so one poison message cannot
take its neighbours down with it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from shipyard.batching.merge import merge, rows, shape_key, split
from shipyard.errors import InferenceError, InvalidInput, ShipyardError
from shipyard.jobs.stream.broker import Message, Record
from shipyard.protocol.simple import as_tensors, decode_document, predictions
from shipyard.registry import LoadedModel
from shipyard.runtime.base import Arrays

RunModel = Callable[[LoadedModel, Arrays], Awaitable[Arrays]]

INPUT_ID_HEADER = "shipyard-input-id"
MODEL_HEADER = "shipyard-model"


@dataclass
class Scored:
    """What one batch of messages produced: results for the sink, dead letters for the dead-letter topic."""

    results: list[Record]
    dead_letters: list[Record]


@dataclass
class _Decoded:
    message: Message
    arrays: Arrays
    many: bool  # the message held several rows (a list or a /v1 body), so the output is a list


def decode_message(message: Message, model: LoadedModel) -> _Decoded:
    """Parse and validate one message; InvalidInput says what is wrong with it."""
    try:
        doc = orjson.loads(message.value)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"message is not valid JSON: {exc}", field="value", got="invalid JSON") from None
    signature = model.signature
    many = True
    if isinstance(doc, list):
        body: Any = {"instances": doc}
    elif isinstance(doc, dict) and len(doc) == 1 and ("instances" in doc or "inputs" in doc) and not (
        set(doc) & set(signature.input_names)
    ):
        body = doc
    elif isinstance(doc, dict):
        body, many = {"instances": [doc]}, False
    else:
        raise InvalidInput(
            f"message is a JSON {type(doc).__name__}; expected an object with the fields "
            f"{', '.join(signature.input_names)} (one record), a list of such objects, "
            'or {"instances": [...]}',
            field="value",
            got=type(doc).__name__,
        )
    columns = decode_document(body, signature)
    arrays = signature.validate({t.name: t.data for t in as_tensors(columns, signature)})
    return _Decoded(message, arrays, many)


async def score(
    messages: Sequence[Message],
    model: LoadedModel,
    run: RunModel,
    *,
    source: str,
    received_at: float,
    consumer: str | None = None,
) -> Scored:
    """Results and dead letters for ``messages``, in message order within each list.

    Raises what ``run`` raises when the model cannot be called at all (worker died,
    not ready): nothing of the batch is finished then, and the caller retries it.
    """
    out = Scored([], [])
    decoded: list[_Decoded] = []
    for m in messages:
        try:
            decoded.append(decode_message(m, model))
        except InvalidInput as exc:
            out.dead_letters.append(dead_letter(m, exc, source=source, received_at=received_at, model=model))
    groups: dict[Any, list[_Decoded]] = {}
    for d in decoded:
        groups.setdefault(shape_key(d.arrays), []).append(d)
    done: dict[int, Record] = {}
    for group in groups.values():
        for d, outputs, error in await _predict(group, model, run):
            if error is not None:
                out.dead_letters.append(
                    dead_letter(d.message, error, source=source, received_at=received_at, model=model)
                )
            else:
                done[id(d)] = result(d, outputs, model, received_at=received_at, consumer=consumer)
    out.results = [done[id(d)] for d in decoded if id(d) in done]
    return out


async def _predict(
    group: list[_Decoded], model: LoadedModel, run: RunModel
) -> list[tuple[_Decoded, Arrays, ShipyardError | None]]:
    """One call for the group; on a model error, one call per message to find the poison one(s)."""
    try:
        outputs = await run(model, merge([d.arrays for d in group]))
        parts = split(outputs, [rows(d.arrays) for d in group])
        return [(d, p, None) for d, p in zip(group, parts, strict=True)]
    except (InferenceError, ValueError) as exc:
        if len(group) == 1:
            return [(group[0], {}, exc if isinstance(exc, ShipyardError) else InferenceError(str(exc)))]
    answers: list[tuple[_Decoded, Arrays, ShipyardError | None]] = []
    for d in group:
        try:
            answers.append((d, await run(model, d.arrays), None))
        except InferenceError as exc:
            answers.append((d, {}, exc))
    return answers


def result(
    decoded: _Decoded, outputs: Arrays, model: LoadedModel, *, received_at: float, consumer: str | None = None
) -> Record:
    m = decoded.message
    values = predictions(outputs)
    doc: dict[str, Any] = {
        "id": m.id,
        "key": m.key,
        "model": model.name,
        "version": str(model.version.version),
    }
    if decoded.many:
        doc["predictions"] = values
    else:
        doc["prediction"] = values[0]
    doc.update(_times(m, received_at))
    doc["predicted_at"] = iso(time.time())
    if consumer is not None:
        doc["consumer"] = consumer  # which group member did it: for tracing, and to see the load spread
    return Record(orjson.dumps(doc), key=m.key if m.key is not None else m.id, headers=_headers(m, model))


def dead_letter(
    message: Message, error: ShipyardError, *, source: str, received_at: float, model: LoadedModel | None
) -> Record:
    """The original payload (text, or base64 when it is not UTF-8) with the reason it was refused."""
    doc: dict[str, Any] = {
        "id": message.id,
        "key": message.key,
        "source": source,
        "error": type(error).__name__,
        "reason": str(error),
    }
    if isinstance(error, InvalidInput) and error.field is not None:
        doc["field"] = error.field
    if model is not None:
        doc["model"] = model.name
        doc["version"] = str(model.version.version)
    try:
        doc["payload"] = message.value.decode("utf-8")
    except UnicodeDecodeError:
        doc["payload_base64"] = base64.b64encode(message.value).decode("ascii")
    if message.headers:
        doc["headers"] = message.headers
    doc.update(_times(message, received_at))
    doc["failed_at"] = iso(time.time())
    key = message.key if message.key is not None else message.id
    return Record(orjson.dumps(doc), key=key, headers=_headers(message, model))


def _times(m: Message, received_at: float) -> dict[str, str]:
    times = {"received_at": iso(received_at)}
    if m.timestamp is not None:
        times["source_time"] = iso(m.timestamp)
    return times


def _headers(m: Message, model: LoadedModel | None) -> dict[str, str]:
    headers = {INPUT_ID_HEADER: m.id}
    if model is not None:
        headers[MODEL_HEADER] = model.version.ref
    return headers


def iso(seconds: float) -> str:
    """UTC, millisecond precision, e.g. 2026-11-21T09:30:00.123Z."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
