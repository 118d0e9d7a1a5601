"""Chat completions (`POST /v1/chat/completions`): a conversation becomes Mixtral-Instruct's prompt, and the
answer takes the shapes of OpenAI's chat objects. The template is Mistral's first instruct format, the one
mistral-common's `MistralTokenizer.v1()` encodes (tests compare the two): BOS, then `[INST] user [/INST]` per
user turn, each answer followed by EOS; a system message is put before the first user turn's text."""

from __future__ import annotations

ROLES = ("system", "user", "assistant")


class ChatError(ValueError):
    """The messages cannot make an instruct prompt: a 400 with this message."""


def chat_prompt_ids(messages: object, processor) -> list[int]:
    """Token ids of the conversation for `processor` (a SentencePiece model with Mixtral's BOS and EOS)."""
    turns = _turns(messages)
    ids = [processor.bos_id()]
    for user, answer in turns:
        ids += processor.encode(f"[INST] {user} [/INST]")
        if answer is not None:
            ids += processor.encode(answer) + [processor.eos_id()]
    return ids


def _turns(messages: object) -> list[tuple[str, str | None]]:
    """(user text, the assistant's answer or None for the last turn), the system text joined to the first."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("`messages` must be a non-empty list of {\"role\", \"content\"} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ChatError(f"`messages[{i}]` must have a `role` of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ChatError(f"`messages[{i}].content` must be a string")
    system = [m["content"] for m in messages if m["role"] == "system"]
    if system and messages[0]["role"] != "system" or len(system) > 1:
        raise ChatError("only one `system` message, and first, is supported")
    rest = messages[len(system):]
    roles = [m["role"] for m in rest]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2) or roles[-1:] != ["user"]:
        raise ChatError("after the system message, roles must alternate user, assistant, ..., ending with user")
    turns = [(rest[i]["content"], rest[i + 1]["content"] if i + 1 < len(rest) else None)
             for i in range(0, len(rest), 2)]
    if system:
        turns[0] = (f"{system[0]}\n\n{turns[0][0]}", turns[0][1])
    return turns
