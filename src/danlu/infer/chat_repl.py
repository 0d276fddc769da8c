"""The terminal loop of `danlu chat`: a line is a user turn, streamed back; /commands act on the session."""

from __future__ import annotations

import sys
from typing import Any

from danlu.errors import ConfigError, DanluError

CHAT_HELP = """commands: /reset (forget the conversation), /system TEXT (set the system prompt, or clear it
with /system alone), /save FILE (the conversation as JSON), /help; an empty line or Ctrl-D quits"""


def chat_loop(session: Any, name: str) -> None:
    """Read lines until an empty one or end of input; reply to each, or run it as a /command."""
    print(f"danlu chat: {name} ({session.mode} mode). /help for commands; an empty line quits.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        if not line:
            return
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            try:
                print(chat_command(session, command, rest.strip()))
            except DanluError as e:  # a bad command costs the line, not the conversation
                print(f"error: {e}")
            continue
        sys.stdout.write("bot> ")
        for piece in session.reply(line):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


def chat_command(session: Any, command: str, rest: str) -> str:
    if command == "/reset":
        session.reset()
        return "(conversation cleared)"
    if command == "/system":
        session.system = rest or None
        session.reset()
        return "(system prompt set; conversation cleared)" if rest else "(system prompt cleared)"
    if command == "/save":
        if not rest:
            raise ConfigError("/save needs a file name: /save chat.json")
        return f"(saved to {session.save(rest)})"
    if command == "/help":
        return CHAT_HELP
    raise ConfigError(f"unknown command {command}; /help lists them")
