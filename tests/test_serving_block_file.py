"""``extraction.block_file``: under ``memory://`` storage a block outlives the process. Before, a restart (a rolling key
rotation, a crash, or one the attacker provokes) lifted every block: the attacker's key answered 200 again."""

import asyncio
import json
import os

import httpx
import pytest

from secure_ml.errors import ConfigError
from secure_ml.serving.auth import client_id
from secure_ml.serving.blocklist import FileBlockList
from secure_ml.serving.config_loading import config_from_dict
from tests.helpers.serving import KEY_A, KEY_B, ZEROS, base_config, running

DETECTOR = {"action": "block", "min_distances": 20, "window": 20}  # 20 replays of one image: W = 0, the alarm


def _attack_then_restart(cfg: dict) -> tuple:
    """Key A replays one image until blocked; the service stops; a new one starts on the same config. Status codes of A and B."""
    with running(cfg) as first:
        codes = [httpx.post(first.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_A}).status_code for _ in range(21)]
    assert codes == [200] * 20 + [403], codes  # detected and blocked
    with running(cfg) as second:
        a = httpx.post(second.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_A})
        b = httpx.post(second.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_B})
    return a, b.status_code


def test_a_restart_lifts_a_memory_block(tmp_path):
    """Negative control: what the block file is for."""
    a, b = _attack_then_restart(base_config(tmp_path, extraction=DETECTOR))
    assert a.status_code == 200 and b == 200


def test_a_block_in_the_block_file_survives_a_restart(tmp_path):
    path = tmp_path / "blocks.jsonl"
    a, b = _attack_then_restart(base_config(tmp_path, extraction={**DETECTOR, "block_file": str(path)}))
    assert a.status_code == 403 and a.json()["reason"] == "blocked" and b == 200
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["client"] for r in records] == [client_id(KEY_A)] and KEY_A not in path.read_text()  # key ids, never keys
    assert os.stat(path).st_mode & 0o077 == 0


class Clocks:
    def __init__(self):
        self.mono, self.wall = 100.0, 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def test_blocks_keep_their_expiry_across_restarts_and_the_file_is_compacted(tmp_path):
    path, t = tmp_path / "blocks.jsonl", Clocks()
    blocks = FileBlockList(str(path), lambda: t.mono, lambda: t.wall)
    asyncio.run(blocks.block("short", 10))
    asyncio.run(blocks.block("long", 100))
    asyncio.run(blocks.block("forever", 0))
    t.advance(5)
    t.mono = 7.0  # a new process: its monotonic clock starts elsewhere, the wall clock goes on
    again = FileBlockList(str(path), lambda: t.mono, lambda: t.wall)
    assert all(asyncio.run(again.is_blocked(c)) for c in ("short", "long", "forever")) and not asyncio.run(again.is_blocked("other"))
    t.advance(6)  # 11 s after the block: "short" has expired, in this process and in the next
    assert not asyncio.run(again.is_blocked("short")) and asyncio.run(again.is_blocked("long"))
    third = FileBlockList(str(path), lambda: t.mono, lambda: t.wall)
    assert {json.loads(line)["client"] for line in path.read_text().splitlines()} == {"long", "forever"}  # compacted
    t.advance(1000)
    assert not asyncio.run(third.is_blocked("long")) and asyncio.run(third.is_blocked("forever"))


def test_a_renewed_block_counts_its_latest_line(tmp_path):
    path, t = tmp_path / "blocks.jsonl", Clocks()
    blocks = FileBlockList(str(path), lambda: t.mono, lambda: t.wall)
    asyncio.run(blocks.block("c", 10))
    asyncio.run(blocks.block("c", 1000))
    t.advance(50)
    assert asyncio.run(FileBlockList(str(path), lambda: t.mono, lambda: t.wall).is_blocked("c"))


@pytest.mark.parametrize(
    "text",
    ['{"client": "c", "until": 1}\nnot json\n', '{"client": 1, "until": 1}\n', '{"client": "c"}\n', '{"client": "c", "until": "soon"}\n',
     '{"client": "c", "until": 1}\n{"client": "d", "unt'],
    ids=["not-json", "client-not-text", "no-until", "until-not-a-time", "torn-last-line"],
)  # fmt: skip
def test_a_block_file_it_cannot_read_is_refused_at_start_up_and_kept(tmp_path, text):
    """Skipping a line it cannot parse would lift that block: the service refuses to start instead, and leaves the file."""
    path = tmp_path / "blocks.jsonl"
    path.write_text(text)
    bad_line = 2 if text.count("\n") >= 1 and text.startswith('{"client": "c", "until": 1}\n') else 1
    with pytest.raises(ConfigError, match=rf"^serve.yaml: extraction.block_file: line {bad_line} of .* is not a block record"):
        FileBlockList(str(path))
    assert path.read_text() == text


def test_an_unwritable_block_file_is_refused_at_start_up(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match=r"^serve.yaml: extraction.block_file: cannot read .*IsADirectoryError"):
        FileBlockList(str(tmp_path / "dir"))
    with pytest.raises(ConfigError, match=r"^serve.yaml: extraction.block_file: cannot write .*FileNotFoundError"):
        FileBlockList(str(tmp_path / "missing" / "blocks.jsonl"))


@pytest.mark.parametrize(
    "sections",
    [
        {"extraction": {"action": "flag", "block_file": "b.jsonl"}},
        {"extraction": {"block_file": "b.jsonl"}, "rate_limit": {"storage": "redis://127.0.0.1:6379/0"}},
    ],
    ids=["not-blocking", "redis"],
)
def test_a_block_file_that_would_keep_nothing_is_refused(tmp_path, sections):
    with pytest.raises(ConfigError, match=r"^serve.yaml: extraction.block_file keeps blocks of action block under memory:// storage only"):
        config_from_dict(base_config(tmp_path, **sections))


def test_a_block_whose_line_cannot_be_written_still_holds_and_is_logged(tmp_path, caplog):
    path = tmp_path / "blocks.jsonl"
    blocks = FileBlockList(str(path))
    path.unlink()
    path.mkdir()  # the file is gone and cannot be re-created: the disk, a mount, an operator
    asyncio.run(blocks.block("c", 60))
    assert asyncio.run(blocks.is_blocked("c"))
    assert "extraction.block_file write failed (IsADirectoryError): client c is blocked until a restart only" in caplog.text
