"""Prompt templates: the paper's template, a real chat template, and the registry."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from premem.data.examples import Example
from premem.data.templates import ChatTemplate, PaperTemplate, RenderedExample, get_template
from premem.errors import InputError

EXAMPLE = Example(3, "Tom has 2 apples and buys 1. How many?", "2 + 1 = 3.\n#### 3", "3")
PAIR = Example(4, "Q?", "good #### 1", "1", rejected="bad #### 2")

# A ChatML-style template, as instruct models ship (SmolLM2, Qwen): the end-of-turn token is eos.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(chat_template=CHATML):
    """A real word-level tokenizer trained here on a few sentences: no hub download."""
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=specials)
    tok.train_from_iterator([EXAMPLE.question, EXAMPLE.solution, "user assistant"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    fast.chat_template = chat_template
    return fast


def test_paper_template_matches_the_paper():
    template = get_template("paper")
    assert isinstance(template, PaperTemplate)
    assert template.render(EXAMPLE) == RenderedExample(
        prompt="Tom has 2 apples and buys 1. How many?\nAnswer:",
        target=" 2 + 1 = 3.\n#### 3\nDone.",
    )
    assert template.stop == ["\nDone."]
    assert template.render(EXAMPLE).target.endswith(template.stop[0])  # training teaches the model to stop


def test_paper_template_renders_the_rejected_response_alike():
    rendered = PaperTemplate().render(PAIR)
    assert rendered.target == " good #### 1\nDone." and rendered.rejected == " bad #### 2\nDone."


def test_chat_template_uses_the_tokenizers_template_and_eos():
    tokenizer = build_tokenizer()
    template = get_template("chat", tokenizer)
    assert isinstance(template, ChatTemplate)
    rendered = template.render(EXAMPLE)
    assert rendered.prompt == f"<|im_start|>user\n{EXAMPLE.question}<|im_end|>\n<|im_start|>assistant\n"
    assert rendered.target == EXAMPLE.solution + "<|im_end|>"
    assert template.stop == []
    # The target's last token is the eos id, the token generation stops on.
    ids = tokenizer(rendered.prompt + rendered.target, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert template.render(PAIR).rejected == "bad #### 2<|im_end|>"


def test_chat_without_tokenizer_or_chat_template():
    with pytest.raises(InputError, match="template 'chat' needs a tokenizer"):
        get_template("chat")
    with pytest.raises(InputError, match="has no chat template"):
        get_template("chat", build_tokenizer(chat_template=None))


def test_unknown_template_name():
    with pytest.raises(InputError, match=r"unknown template 'alpaca'; known: paper, chat"):
        get_template("alpaca")
