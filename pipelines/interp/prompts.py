"""Every prompt the LLM explainer sends, in one place (issue 13).

The explainer sees what the offline explainer sees: a unit's *training-split* windows (top
and interval examples), each token followed by its activation on Bills et al.'s 0-10 scale
when it is not 0. It answers in JSON, which `pipelines/interp/llm.py` parses:

    {"explanation": "<one sentence>",
     "tokens": ["<token it fires on>", ...],
     "after": ["<token it fires right after>", ...],
     "next": ["<token it predicts next>", ...]}

The lists make the explanation *runnable*: scoring feeds them to the same deterministic
simulator as the offline explainer's patterns (`pipelines/interp/explainer.py`), so both are
scored by one rule on the held-out windows, and no held-out text is ever sent to the LLM.
(An LLM simulator, as in Bills et al., would send held-out windows one prompt per window; it
is not implemented: it costs ~100 prompts per unit.)

Changing any text here changes the prompt hash, so cached answers are not reused for it.
"""

from __future__ import annotations

SYSTEM = (
    "You explain what a unit of a small language model responds to. You are shown text "
    "windows where the unit is active. Each token is written as «token» and, when the unit "
    "is active on it, followed by its activation on a 0-10 scale as «token»=7. Tokens use "
    "display forms: · is a space, ↵ a newline. Answer with JSON only, no prose around it.")

INSTRUCTIONS = (
    "Write one short sentence saying what the unit responds to. Then list the exact tokens "
    "(as displayed, without the «» marks) it fires on, the tokens it fires right after, and "
    "tokens it seems to predict next. At most 5 in each list; leave a list empty when unsure. "
    'Answer as {"explanation": "...", "tokens": [...], "after": [...], "next": [...]}.')

MAX_WINDOWS = 20  # windows per prompt (top first, then one per interval, highest first)


def window_line(tokens: list[str], acts: list[float], max_act: float) -> str:
    """One window as the prompt shows it: «tok» or «tok»=n (n = round(10·act/max), n >= 1)."""
    parts = []
    for tok, act in zip(tokens, acts):
        level = int(round(10 * act / max_act)) if max_act > 0 else 0
        parts.append(f"«{tok}»={level}" if level >= 1 else f"«{tok}»")
    return "".join(parts)


def explain_messages(windows: list[str]) -> list[dict[str, str]]:
    """The chat messages for one unit: the system prompt, then its windows and the task."""
    body = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(windows[:MAX_WINDOWS]))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Windows:\n{body}\n\n{INSTRUCTIONS}"}]
