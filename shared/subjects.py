"""Every NATS subject and stream name, in one place. Subjects are an API.

Aggregate ids (context, session) are subject tokens, so per-room reads and optimistic
concurrency with ``Nats-Expected-Last-Subject-Sequence`` work. Ids that are not plain
``[A-Za-z0-9_-]`` are encoded reversibly (``~`` + base64url) because ``.``, ``*``, ``>`` and
whitespace are not allowed inside a token.
"""

from __future__ import annotations

import base64
import re

__all__ = [
    "EVENTS_STREAM",
    "COMMANDS_STREAM",
    "COLLAB_COMMANDS_STREAM",
    "token",
    "untoken",
]

EVENTS_STREAM = "AG_EVENTS"
COMMANDS_STREAM = "AG_CMDS"  # chat commands (the name it had when it held every command)
COLLAB_COMMANDS_STREAM = "AG_CMDS_COLLAB"
EVENTS_ALL = "ag.evt.>"
COMMANDS_ALL = "ag.cmd.>"

_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def token(value: str) -> str:
    if _PLAIN.fullmatch(value):
        return value
    return "~" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def untoken(tok: str) -> str:
    if not tok.startswith("~"):
        return tok
    raw = tok[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


# --- event log (JetStream, AG_EVENTS) -------------------------------------------------------
def chat_messages(context_id: str) -> str:
    return f"ag.evt.chat.{token(context_id)}.message"


def chat_presence(context_id: str) -> str:
    return f"ag.evt.chat.{token(context_id)}.presence"


def chat_room_of(subject: str) -> str | None:
    """The context id of a chat message subject (``chat_messages``), else None."""
    parts = subject.split(".")
    if len(parts) == 5 and parts[:3] == ["ag", "evt", "chat"] and parts[4] == "message":
        return untoken(parts[3])
    return None


CHAT_EVENTS_ALL = "ag.evt.chat.>"
CHAT_MESSAGES_ALL = "ag.evt.chat.*.message"
CHAT_PRESENCE_ALL = "ag.evt.chat.*.presence"


def collab_edits(context_id: str, session_id: str) -> str:
    return f"ag.evt.collab.{token(context_id)}.{token(session_id)}.edit"


def collab_presence(context_id: str, session_id: str) -> str:
    return f"ag.evt.collab.{token(context_id)}.{token(session_id)}.presence"


def collab_snapshots(context_id: str, session_id: str) -> str:
    return f"ag.evt.collab.{token(context_id)}.{token(session_id)}.snapshot"


def collab_connections(context_id: str) -> str:
    """Users with a collaboration socket open in the context (in a session or not)."""
    return f"ag.evt.collab.{token(context_id)}.connections"


COLLAB_EVENTS_ALL = "ag.evt.collab.>"
COLLAB_PRESENCE_ALL = "ag.evt.collab.*.*.presence"
COLLAB_CONNECTIONS_ALL = "ag.evt.collab.*.connections"


def learning(context_id: str, kind: str) -> str:
    return f"ag.evt.learning.{token(context_id)}.{kind}"


LEARNING_ALL = "ag.evt.learning.>"


# --- commands (JetStream work queues, AG_CMDS and AG_CMDS_COLLAB) -----------------------------
# Gateways submit to the aggregate's subject; the stream's transform stores it under its
# partition (``shared/partitions.py``), where the partition's owner consumes it.
def chat_commands(context_id: str) -> str:
    return f"ag.cmd.chat.{token(context_id)}"


CHAT_COMMANDS_ALL = "ag.cmd.chat.>"
CHAT_COMMANDS_TRANSFORM = (
    "ag.cmd.chat.*",
    "ag.cmd.chat.{{{{partition({n},1)}}}}.{{{{wildcard(1)}}}}",
)


def chat_commands_partition(p: int) -> str:
    return f"ag.cmd.chat.{p}.*"


def collab_commands(context_id: str, session_id: str) -> str:
    return f"ag.cmd.collab.{token(context_id)}.{token(session_id)}"


COLLAB_COMMANDS_ALL = "ag.cmd.collab.>"
COLLAB_COMMANDS_TRANSFORM = (
    "ag.cmd.collab.*.*",
    "ag.cmd.collab.{{{{partition({n},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
)


def collab_commands_partition(p: int) -> str:
    return f"ag.cmd.collab.{p}.*.*"


def command_stream(subject_filter: str) -> str:
    """The work-queue stream that holds the commands a filter selects."""
    return (
        COLLAB_COMMANDS_STREAM if subject_filter.startswith("ag.cmd.collab.") else COMMANDS_STREAM
    )


# --- partition leases (a JetStream KV bucket, ``shared/ownership.py``) -------------------------
LEASES_BUCKET = "AG_LEASES"
# Projection snapshots (presence so far, and the log sequence it is up to): a cache of the log,
# so a service starts from the last one instead of every presence event ever logged.
SNAPSHOTS_BUCKET = "AG_SNAPSHOTS"


# --- live fan-out (core NATS, not stored) -----------------------------------------------------
def chat_live(context_id: str) -> str:
    return f"ag.live.chat.{token(context_id)}"


def collab_live(context_id: str, session_id: str) -> str:
    return f"ag.live.collab.{token(context_id)}.{token(session_id)}"


def metrics_live(context_id: str) -> str:
    return f"ag.live.metrics.{token(context_id)}"


METRICS_LIVE_ALL = "ag.live.metrics.>"


def gateway_replies(gateway_id: str) -> str:
    """Where services send command results for the sockets of one gateway."""
    return f"ag.reply.{token(gateway_id)}"


# --- request/reply (core NATS) ---------------------------------------------------------------
RPC_CHAT_HISTORY = "ag.rpc.chat.history"
RPC_CHAT_PRESENCE = "ag.rpc.chat.presence"
RPC_COLLAB = "ag.rpc.collab"
RPC_METRICS_CURRENT = "ag.rpc.metrics.current"
RPC_ANALYTICS_QUERY = "ag.rpc.analytics.query"  # read-only ad-hoc SQL on the aggregator
GATEWAY_HEARTBEAT = "ag.gw.heartbeat"
CHAT_READY = "ag.ctl.chat.ready"  # a chat service (re)started: gateways re-check their rooms
COLLAB_HEARTBEAT = "ag.gw.collab.heartbeat"  # each gateway's collaboration session members
ANALYTICS_WATCH = "ag.gw.analytics.watch"  # each gateway's contexts with analytics sockets


# --- headers on live frames -------------------------------------------------------------------
HDR_EXCEPT_USER = "AG-Except-User"  # do not deliver to this user's sockets
HDR_DROPPABLE = "AG-Droppable"  # ephemeral frame: drop rather than close a slow socket
# May wait a little to share a socket write with others (presence); droppable frames may too
HDR_LAZY = "AG-Lazy"
HDR_SEQ = "AG-Seq"  # chat message seq, so a recovering socket skips what it replayed
HDR_LOG_SEQ = "AG-Log-Seq"  # chat message: its stream sequence (where a gap fill reads from)
# (collaboration: the document version of an `edit` frame)
HDR_EXCEPT_CONN = "AG-Except-Conn"  # do not deliver to this one connection (the edit's sender)
HDR_METRIC = "AG-Metric"  # metric_update frames: which metric, so gateways filter
HDR_VERSION = "AG-Version"  # metric_update frames: increasing computation version
