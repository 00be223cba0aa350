"""Prompt templates: how an Example becomes the text a model is trained on and sampled from.

A template renders an example into a prompt (what the model is conditioned on, and what
sampling starts from) and a target (what finetuning teaches and what perplexity is measured
on, the gold solution plus whatever marks its end). `stop` lists the strings that end
generation; the training target ends with one of them, so that a trained model stops there.

Two templates, chosen by name with `get_template`:
- "paper": the pre-memorization paper's base-model template (DESIGN.md §1).
- "chat":  the tokenizer's own chat template, for instruction-tuned models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

from premem.errors import InputError


class Example(Protocol):
    """What a template reads of an example (premem.data.examples.Example is one). A Protocol rather than
    an import: rendered.py reads rows that already carry the paper template with PaperTemplate's help."""

    question: str
    solution: str
    rejected: str | None


@dataclass(frozen=True)
class RenderedExample:
    prompt: str
    """Text the model is conditioned on; already holds any special tokens the template adds."""
    target: str
    """The templated solution: the text after the prompt that training teaches."""
    rejected: str | None = None
    """The templated rejected response (preference data only), ended like the target."""


class Template(Protocol):
    stop: list[str]
    """Strings that end generation (empty when the eos token does)."""

    def render(self, example: Example) -> RenderedExample: ...


@dataclass
class PaperTemplate:
    """question + "\\nAnswer:" -> " " + solution + "\\nDone."; generation stops at "\\nDone."."""

    PROMPT_END: ClassVar[str] = "\nAnswer:"
    RESPONSE_START: ClassVar[str] = " "
    RESPONSE_END: ClassVar[str] = "\nDone."

    stop: list[str] = field(default_factory=lambda: [PaperTemplate.RESPONSE_END])

    def render(self, example: Example) -> RenderedExample:
        return RenderedExample(
            prompt=example.question + self.PROMPT_END,
            target=self._end(example.solution),
            rejected=None if example.rejected is None else self._end(example.rejected),
        )

    @classmethod
    def _end(cls, response: str) -> str:
        return cls.RESPONSE_START + response + cls.RESPONSE_END

    # The inverse, for text that already went through render (premem curate's prompt/completion
    # files): reading it without the template lets any template render it exactly once.
    @classmethod
    def prompt_carries(cls, prompt: str) -> bool:
        return prompt.endswith(cls.PROMPT_END)

    @classmethod
    def response_carries(cls, response: str) -> bool:
        start, end = cls.RESPONSE_START, cls.RESPONSE_END
        return len(response) >= len(start) + len(end) and response.startswith(start) and response.endswith(end)

    @classmethod
    def strip_prompt(cls, prompt: str) -> str:
        return prompt.removesuffix(cls.PROMPT_END)

    @classmethod
    def strip_response(cls, response: str) -> str:
        return response[len(cls.RESPONSE_START): len(response) - len(cls.RESPONSE_END)]


class ChatTemplate:
    """The tokenizer's chat template: the question as one user turn, the solution as the reply.

    The target is the solution followed by the tokenizer's eos token: for a chat model that
    is the end-of-turn token it emits when its reply is done (e.g. <|im_end|>, <|eot_id|>),
    so training on it teaches the model to stop, and sampling stops on eos with no stop
    strings. The prompt text already contains the template's special tokens (BOS included
    where the template writes one): tokenize it with add_special_tokens=False.
    """

    def __init__(self, tokenizer: Any):
        if tokenizer is None:
            raise InputError("template 'chat' needs a tokenizer (the model's, with a chat template)")
        kind = type(tokenizer).__name__
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(f"template 'chat': tokenizer {kind} has no chat template; use template 'paper'")
        if not getattr(tokenizer, "eos_token", None):
            raise InputError(f"template 'chat': tokenizer {kind} has no eos token to end the target with")
        self.tokenizer = tokenizer
        self.stop: list[str] = []

    def render(self, example: Example) -> RenderedExample:
        prompt = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": example.question}], tokenize=False, add_generation_prompt=True
        )
        eos = self.tokenizer.eos_token
        return RenderedExample(
            prompt=prompt,
            target=example.solution + eos,
            rejected=None if example.rejected is None else example.rejected + eos,
        )


# Registry: name -> constructor taking the tokenizer (which "paper" does not need).
TEMPLATES: dict[str, Callable[[Any], Template]] = {
    "paper": lambda tokenizer: PaperTemplate(),
    "chat": ChatTemplate,
}


def get_template(name: str, tokenizer: Any = None) -> Template:
    """The template called `name` ("paper" or "chat"; "chat" needs the model's tokenizer)."""
    if name not in TEMPLATES:
        raise InputError(f"template: unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name](tokenizer)
