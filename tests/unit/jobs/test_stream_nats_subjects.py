"""The NATS source reads a message's stream sequence and time from its JetStream ack subject."""

from __future__ import annotations

import pytest

pytest.importorskip("nats")

from nats.aio.msg import Msg  # noqa: E402

from shipyard.streams.nats import _position  # noqa: E402


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.ORDERS_IN.scorers.1.12345.12340.1796664727450123456.100",  # before domains
        "$JS.ACK._.ACCHASH.ORDERS_IN.scorers.1.12345.12340.1796664727450123456.100",  # domain + account hash
        "$JS.ACK.hub.ACCHASH.ORDERS_IN.scorers.1.12345.12340.1796664727450123456.100.tok",  # and a token
    ],
)
def test_the_sequence_and_time_match_what_the_client_parses(reply: str) -> None:
    msg = Msg(None, subject="orders.in", reply=reply, data=b"{}")  # type: ignore[arg-type]
    seq, at = _position(msg)
    meta = msg.metadata
    assert seq == meta.sequence.stream == 12345
    assert at == pytest.approx(meta.timestamp.timestamp(), abs=1e-3)


def test_a_message_that_is_not_from_jetstream_is_refused_by_the_client() -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 (nats-py's own error type)
        _position(Msg(None, subject="orders.in", reply="_INBOX.x", data=b"{}"))  # type: ignore[arg-type]
