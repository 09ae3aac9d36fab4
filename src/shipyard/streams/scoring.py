"""Turn a batch of stream messages into result records and dead letters, with one model call.

A message's value is JSON, in one of three shapes:

* one record: ``{"sepal_length": 5.1, ...}`` -> the output has ``"prediction"``;
* the ``/v1`` predict body: ``{"instances": [...]}`` or ``{"inputs": {...}}``;
* a list of records: ``[{...}, {...}]`` -> the output has ``"predictions"`` (one per row).

Fields beside the model's inputs follow the model's ``extra_fields``: under
``refuse`` the message is a dead letter whose reason names the field and the
option, under ``ignore`` they are dropped, under ``passthrough`` the result also
has ``"passthrough"``: the record's extra fields (an object) beside
``"prediction"``, or one object per row beside ``"predictions"``.

Every message is decoded and checked against the signature on its own, so a
bad one becomes a dead letter (original payload + reason) and the rest of the
batch goes on. The good ones are merged into one model call (per input shape);
if that call fails, each message is retried alone so one poison message cannot
take its neighbours down with it.
"""

from __future__ import annotations

import base64
import itertools
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from shipyard.batching.merge import merge, rows, shape_key
from shipyard.errors import InferenceError, InvalidInput, ShipyardError
from shipyard.protocol.json_body import parse_json
from shipyard.protocol.simple import as_tensors, decode_document, predictions
from shipyard.registry import LoadedModel
from shipyard.runtime.base import Arrays
from shipyard.streams.broker import Message, Record

RunModel = Callable[[LoadedModel, Arrays], Awaitable[Arrays]]

INPUT_ID_HEADER = "shipyard-input-id"
MODEL_HEADER = "shipyard-model"


@dataclass
class Scored:
    """What one batch of messages produced: results for the sink, dead letters for the dead-letter topic."""

    results: list[Record]
    dead_letters: list[Record]


@dataclass(slots=True)
class _Decoded:
    message: Message
    arrays: Arrays | None  # None for a row of a float block (see _float_block)
    many: bool  # the message held several rows (a list or a /v1 body), so the output is a list
    rows: int = 1
    passthrough: list[dict[str, Any]] | None = None  # each row's extra fields, under extra_fields=passthrough


def decode_message(message: Message, model: LoadedModel) -> _Decoded:
    """Parse and validate one message; InvalidInput says what is wrong with it."""
    doc = parse_json(message.value, "message", "value")  # the one parser and nesting limit of every transport
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
    columns, passthrough = decode_document(body, signature)
    arrays = signature.validate({t.name: t.data for t in as_tensors(columns, signature)})
    return _Decoded(message, arrays, many, rows(arrays), passthrough)


@dataclass
class _Group:
    """Messages predicted together: their inputs merged along the batch dimension."""

    items: list[_Decoded]
    arrays: Arrays

    def arrays_of(self, index: int) -> Arrays:
        d = self.items[index]
        if d.arrays is not None:
            return d.arrays
        return {k: v[index:index + 1] for k, v in self.arrays.items()}  # a row of the float block


def _float_block(messages: Sequence[Message], model: LoadedModel) -> tuple[_Group | None, list[Message]]:
    """The common case fast: one-record messages of plain numbers with exactly the model's columns.

    They become one float64 block checked once, instead of a decode and a check per
    message; everything else (and the whole block if its check fails) takes the
    per-message path, whose errors name the message and field.
    """
    signature = model.signature
    if not signature.float_columns:
        return None, list(messages)
    if signature.extra_fields != "refuse":
        return _float_block_with_extra(messages, model)
    names = signature.input_names
    keys = set(names)
    whole = _whole_batch(messages, names, keys)
    if whole is not None:  # every message fits: no per-message Python at all
        return _checked_block(model, whole, [_Decoded(m, None, False) for m in messages], [], messages)
    rows_: list[list[Any]] = []
    fast: list[Message] = []
    rest: list[Message] = []
    for m in messages:
        try:
            doc = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            rest.append(m)
            continue
        if type(doc) is dict and doc.keys() == keys:
            row = [doc[k] for k in names]
            if all(type(v) is float or type(v) is int for v in row):
                rows_.append(row)
                fast.append(m)
                continue
        rest.append(m)
    return _checked_block(model, rows_, [_Decoded(m, None, False) for m in fast], rest, messages)


_NUMBERS = frozenset((float, int))


def _whole_batch(messages: Sequence[Message], names: list[str], keys: set[str]) -> list[Any] | None:
    """The rows of ``messages`` when every one is a JSON object of exactly ``keys`` with plain numbers, else None.

    Each message is still decoded on its own (joining them into one JSON array would let
    fragments of neighbouring messages pass as records); the loops run in C (map, set).
    """
    try:
        docs = list(map(orjson.loads, [m.value for m in messages]))
    except orjson.JSONDecodeError:
        return None
    if set(map(type, docs)) != {dict} or not all(map(operator.eq, map(dict.keys, docs), itertools.repeat(keys))):
        return None
    if len(names) == 1:
        rows: list[Any] = [(d[names[0]],) for d in docs]
    else:
        rows = list(map(operator.itemgetter(*names), docs))
    if not _NUMBERS.issuperset(map(type, itertools.chain.from_iterable(rows))):
        return None  # a bool, a string, a null...: the per-message path says which message
    return rows


def _float_block_with_extra(messages: Sequence[Message], model: LoadedModel) -> tuple[_Group | None, list[Message]]:
    """``_float_block`` for ignore/passthrough models: a record may carry fields beside the numbers."""
    signature = model.signature
    names = signature.input_names
    keys = set(names)
    width = len(names)
    keep = signature.extra_fields == "passthrough"
    rows_: list[list[Any]] = []
    fast: list[_Decoded] = []
    rest: list[Message] = []
    for m in messages:
        try:
            doc = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            rest.append(m)
            continue
        if type(doc) is dict and doc.keys() >= keys:
            row = [doc[k] for k in names]
            if all(type(v) is float or type(v) is int for v in row):
                rows_.append(row)
                extra = None
                if keep:
                    extra = [{k: v for k, v in doc.items() if k not in keys} if len(doc) > width else {}]
                fast.append(_Decoded(m, None, False, passthrough=extra))
                continue
        rest.append(m)
    return _checked_block(model, rows_, fast, rest, messages)


def _checked_block(
    model: LoadedModel, rows_: list[list[Any]], fast: list[_Decoded], rest: list[Message], messages: Sequence[Message]
) -> tuple[_Group | None, list[Message]]:
    if not fast:
        return None, rest
    names = model.signature.input_names
    block = np.array(rows_, dtype=np.float64)
    try:
        arrays = model.signature.validate({name: block[:, i] for i, name in enumerate(names)})
    except InvalidInput:
        return None, list(messages)  # e.g. a NaN: let the per-message path say which message
    return _Group(fast, arrays), rest


async def score(
    messages: Sequence[Message],
    model: LoadedModel,
    run: RunModel,
    *,
    source: str,
    received_at: float,
    consumer: str | None = None,
) -> Scored:
    """Results and dead letters for ``messages``, results in message order.

    Raises what ``run`` raises when the model cannot be called at all (worker died,
    not ready): nothing of the batch is finished then, and the caller retries it.
    """
    out = Scored([], [])
    stamp = _Stamp(model, received_at, consumer)
    block, rest = _float_block(messages, model)
    groups: list[_Group] = [block] if block is not None else []
    by_shape: dict[Any, list[_Decoded]] = {}
    for m in rest:
        try:
            d = decode_message(m, model)
        except InvalidInput as exc:
            out.dead_letters.append(dead_letter(m, exc, source=source, received_at=received_at, model=model))
            continue
        assert d.arrays is not None
        by_shape.setdefault(shape_key(d.arrays), []).append(d)
    groups += [_Group(items, merge([d.arrays for d in items if d.arrays is not None])) for items in by_shape.values()]
    done: dict[int, Record] = {}
    for group in groups:
        answers = await _predict(group, model, run)
        stamp.predicted_at = iso(time.time())
        for d, values, error in answers:
            if error is not None:
                out.dead_letters.append(
                    dead_letter(d.message, error, source=source, received_at=received_at, model=model)
                )
            else:
                done[id(d.message)] = stamp.result(d, values)
    if len(done) == len(messages) and len(groups) == 1:
        out.results = list(done.values())  # one group of every message: already in message order
    else:
        out.results = [done[id(m)] for m in messages if id(m) in done]
    return out


async def _predict(
    group: _Group, model: LoadedModel, run: RunModel
) -> list[tuple[_Decoded, list[Any], ShipyardError | None]]:
    """One call for the group (prediction values per message); on a model error, one call per message."""
    items = group.items
    try:
        outputs = await run(model, group.arrays)
        values = predictions(outputs)
        total = sum(d.rows for d in items)
        if len(values) != total:
            raise ValueError(f"the model returned {len(values)} rows for {total}")
        answers: list[tuple[_Decoded, list[Any], ShipyardError | None]] = []
        at = 0
        for d in items:
            answers.append((d, values[at:at + d.rows], None))
            at += d.rows
        return answers
    except (InferenceError, ValueError) as exc:
        if len(items) == 1:
            return [(items[0], [], exc if isinstance(exc, ShipyardError) else InferenceError(str(exc)))]
    answers = []
    for i, d in enumerate(items):
        try:
            answers.append((d, predictions(await run(model, group.arrays_of(i))), None))
        except InferenceError as exc:
            answers.append((d, [], exc))
    return answers


class _Stamp:
    """What every result of one batch shares, formatted once."""

    def __init__(self, model: LoadedModel, received_at: float, consumer: str | None) -> None:
        self.model = model.name
        self.version = str(model.version.version)
        self.ref = model.version.ref
        self.received_at = iso(received_at)
        self.predicted_at = self.received_at
        self.consumer = consumer

    def result(self, decoded: _Decoded, values: list[Any]) -> Record:
        m = decoded.message
        doc: dict[str, Any] = {"id": m.id, "key": m.key, "model": self.model, "version": self.version}
        if decoded.many:
            doc["predictions"] = values
            if decoded.passthrough is not None:
                doc["passthrough"] = decoded.passthrough
        else:
            doc["prediction"] = values[0]
            if decoded.passthrough is not None:
                doc["passthrough"] = decoded.passthrough[0]
        doc["received_at"] = self.received_at
        if m.timestamp is not None:
            doc["source_time"] = iso(m.timestamp)
        doc["predicted_at"] = self.predicted_at
        if self.consumer is not None:
            doc["consumer"] = self.consumer  # which group member did it: for tracing, and to see the load spread
        headers = {INPUT_ID_HEADER: m.id, MODEL_HEADER: self.ref}
        return Record(orjson.dumps(doc), key=m.key if m.key is not None else m.id, headers=headers)


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
    whole = int(seconds)
    second = _SECONDS.get(whole)
    if second is None:
        second = _iso_second(whole)
    return f"{second}.{int((seconds - whole) * 1000):03d}Z"


_SECONDS: dict[int, str] = {}
"""Formatted seconds (formatting a datetime per message was a visible share of a batch; seconds repeat a lot)."""


def _iso_second(whole: int) -> str:
    if len(_SECONDS) >= 4096:
        _SECONDS.clear()
    text = _SECONDS[whole] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text
