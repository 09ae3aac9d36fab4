"""Request and prediction ids: unique across threads and across a fork, 32 hex digits, not a sequence."""

from __future__ import annotations

import os
import threading

from shipyard.context import new_request_id


def test_ids_are_unique_across_threads_and_hex() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_request_id() for _ in range(20_000))  # many refills of the ids made ahead

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in made for i in out]
    assert len(set(ids)) == len(ids) == 80_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # random, not counted: consecutive ids share no long prefix
    assert sum(a[:8] == b[:8] for a, b in zip(ids, ids[1:], strict=False)) == 0


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_request_id()  # the parent has ids made ahead when it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(new_request_id() for _ in range(300)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        text = f.read().decode()
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {new_request_id() for _ in range(300)}
    assert len(child) == 300 and not child & parent
