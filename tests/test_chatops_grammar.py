"""The chat-ops grammar, authorization levels and reply helpers: pure functions, no I/O."""

from __future__ import annotations

import pytest

from bot.chatops import (
    SPECS,
    Command,
    UnknownCommand,
    addressed,
    allowed,
    parse_command,
    suggest,
    truncate,
)
from bot.errors import CommandError


@pytest.mark.parametrize("body, expected", [
    ("/repotune help", Command("help")),
    ("/repotune", Command("help")),
    ("/repotune --help", Command("help")),
    ("/repotune help promote", Command("help", {"topic": "promote"})),
    ("/repotune status", Command("status")),
    ("/repotune STATUS", Command("status")),
    ("/repotune retrain", Command("retrain", {"full": False})),
    ("/repotune retrain --full", Command("retrain", {"full": True})),
    ("/repotune eval", Command("eval", {"run_id": None})),
    ("/repotune eval --run 20250101-120000-ab12", Command("eval", {"run_id": "20250101-120000-ab12"})),
    ("/repotune eval --run=r_7", Command("eval", {"run_id": "r_7"})),
    ("/repotune promote 20250101-abc", Command("promote", {"run_id": "20250101-abc"})),
    ("/repotune promote '20250101-abc'", Command("promote", {"run_id": "20250101-abc"})),
    ("/repotune rollback", Command("rollback", {"version": None})),
    ("/repotune rollback 3", Command("rollback", {"version": 3})),
    ("/repotune rollback v12", Command("rollback", {"version": 12})),
    ("/repotune pause", Command("pause")),
    ("  /repotune   resume  ", Command("resume")),
    ("@repotune status", Command("status")),
    ("@RepoTune: status", Command("status")),
    ("@repotune[bot] pause", Command("pause")),
    ("/repotune status\r\nplease, and also /repotune promote x", Command("status")),
])
def test_valid_commands(body, expected):
    assert parse_command(body) == expected


@pytest.mark.parametrize("body", [
    "please /repotune status",          # not at the start of the line
    "/repotunes status",                # a different word
    "looks good\n/repotune promote 1",  # only the first line counts
    "@repotuner status",                # another user
    "@someone /repotune status",
    "",
    "   \n  ",
    "```\n/repotune status\n```",
])
def test_not_addressed(body):
    assert not addressed(body)
    assert parse_command(body) is None


@pytest.mark.parametrize("body, message", [
    ("/repotune promote ../../etc; rm -rf", "needs exactly one run id"),
    ("/repotune promote ../../etc", "is not a run id"),
    ("/repotune promote '$(reboot)'", "is not a run id"),
    ("/repotune promote a;b", "is not a run id"),
    ("/repotune promote", "needs exactly one run id"),
    ("/repotune eval --run /etc/passwd", "is not a run id"),
    ("/repotune eval --run", "does not understand"),
    ("/repotune eval --bogus", "does not understand"),
    ("/repotune retrain --fulll", "does not understand"),
    ("/repotune retrain now", "does not understand"),
    ("/repotune rollback -1", "is not a model version"),
    ("/repotune rollback 0", "is not a model version"),
    ("/repotune rollback 1 2", "is not a model version"),
    ("/repotune rollback `id`", "is not a model version"),
    ("/repotune status everything", "takes no arguments"),
    ("/repotune pause 'unclosed", "Cannot read the command line"),
])
def test_bad_arguments(body, message):
    with pytest.raises(CommandError, match=message):
        parse_command(body)


def test_unknown_command_suggests_the_closest():
    with pytest.raises(UnknownCommand) as info:
        parse_command("/repotune retrian --full")
    assert info.value.suggestion == "retrain"
    assert "Did you mean `retrain`?" in str(info.value)
    with pytest.raises(UnknownCommand) as info:
        parse_command("/repotune xyzzy")
    assert info.value.suggestion is None
    assert suggest("promot") == "promote"
    assert suggest("stauts") == "status"
    # A hostile word is quoted back without markdown/HTML that could break the reply.
    with pytest.raises(UnknownCommand) as info:
        parse_command("/repotune <img src=x>`")
    assert "<" not in str(info.value) and "`" not in info.value.word


def test_configurable_prefix_and_username():
    assert parse_command("!rt retrain --full", prefix="!rt", bot_username="mlbot") == \
        Command("retrain", {"full": True})
    assert parse_command("@mlbot status", prefix="!rt", bot_username="mlbot") == Command("status")
    assert parse_command("/repotune status", prefix="!rt", bot_username="mlbot") is None


def test_levels():
    assert allowed("github", "write", "write")
    assert allowed("github", "admin", "maintain")
    assert not allowed("github", "write", "maintain")
    assert not allowed("github", "triage", "write")
    assert not allowed("github", "none", "read")
    assert not allowed("github", "write", "nonsense-level")  # unknown need: deny
    assert allowed("gitlab", 30, 30) and allowed("gitlab", 50, 40)
    assert not allowed("gitlab", 30, 40) and not allowed("gitlab", 0, 10)


def test_every_command_has_a_parser_and_handler():
    from bot.chatops import _HANDLERS, _PARSERS

    assert set(SPECS) == set(_PARSERS) == set(_HANDLERS) == {
        "help", "status", "retrain", "eval", "promote", "rollback", "canary", "pause", "resume"}


def test_truncate_is_polite_and_closes_fences():
    short = "| a |\n|---|\n| 1 |"
    assert truncate(short) == short
    long = "```\n" + "\n".join(f"line {i}" for i in range(20_000))
    cut = truncate(long, limit=5_000, more_url="http://status")
    assert len(cut) <= 5_000
    assert cut.count("```") % 2 == 0
    assert "more lines were cut" in cut and "(http://status)" in cut
    assert cut.splitlines()[1] == "line 0"
