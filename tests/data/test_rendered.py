"""Rows that already carry the paper template: read without it, so that training and scoring render them once."""

import json

import pytest

from premem.data.examples import DataConfig, Example
from premem.errors import InputError
from tests.conftest import shared
from tests.data.test_examples import load_example_set_of, write_rows


def gsm8k_rows(tmp_path, n=40):
    """Every 100th row of the real GSM8K train file, as a JSONL of its own."""
    src = shared("gsm8k", "train.jsonl")  # skips, naming PREMEM_SHARED_DATA, where it is missing
    lines = src.read_text(encoding="utf-8").split("\n")[: 100 * n : 100]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def byte_tokenizer(texts):
    """A real byte-level BPE tokenizer trained here: its ids decode back to the exact text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"])
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_curates_prompt_completion_file_is_scored_as_the_rows_it_came_from(tmp_path):
    """premem curate writes question + "\\nAnswer:" / " " + solution + "\\nDone."; read back, premem must
    render and score exactly that text (not "\\nAnswer:\\nAnswer:"), the same as for the GSM8K rows."""
    from premem.curate.export import write_prompt_completion
    from premem.data.examples import load_example_set
    from premem.data.templates import get_template
    from premem.sampling.backend import SamplingParams
    from premem.sampling.encoding import encode

    original = load_example_set(DataConfig(path=str(gsm8k_rows(tmp_path))))
    exported = tmp_path / "train.prompt_completion.jsonl"
    write_prompt_completion(original.examples, exported)  # premem curate's own writer
    file_rows = [json.loads(line) for line in exported.read_text(encoding="utf-8").split("\n") if line]

    reread = load_example_set(DataConfig(path=str(exported), fields={"id": "example_id"}))
    assert (reread.format, reread.rendered) == ("prompt_completion", "paper")
    assert reread.examples == original.examples and reread.fingerprint == original.fingerprint

    paper = get_template("paper")
    for ex, row in zip(reread.examples, file_rows):
        rendered = paper.render(ex)
        assert (rendered.prompt, rendered.target) == (row["prompt"], row["completion"])
    # what `premem score` tokenizes: the same ids for both, decoding to the file's text byte for byte
    tokenizer = byte_tokenizer([r["prompt"] + r["completion"] for r in file_rows])
    ids = [encode(ds, paper, tokenizer, 4096, SamplingParams(), "train") for ds in (original, reread)]
    assert ids[0].prompt_ids == ids[1].prompt_ids and ids[0].target_ids == ids[1].target_ids
    for p, t, row in zip(ids[1].prompt_ids, ids[1].target_ids, file_rows):
        assert tokenizer.decode(p) == row["prompt"] and tokenizer.decode(t) == row["completion"]

    # the chat template gets the bare question and solution too, not the paper template inside a chat turn
    from tests.data.test_templates import build_tokenizer

    chat = get_template("chat", build_tokenizer())
    for ex, ori in zip(reread.examples, original.examples):
        assert chat.render(ex) == chat.render(ori) and "Answer:" not in chat.render(ex).prompt

    # asked for explicitly, rendered=none takes the text as it is, and the template goes on top
    raw = load_example_set(DataConfig(path=str(exported), rendered="none"))
    assert raw.rendered == "none" and paper.render(raw.examples[0]).prompt.endswith("\nAnswer:\nAnswer:")


def test_rendered_preference_rows_are_read_without_the_template(tmp_path):
    rows = [{"prompt": "Q?\nAnswer:", "chosen": " good #### 1\nDone.", "rejected": " bad #### 2\nDone."}]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    data = load_example_set_of(path)
    assert data.rendered == "paper" and data.examples == [Example(0, "Q?", "good #### 1", "1", "bad #### 2")]
    rows[0]["rejected"] = "bad #### 2"  # the rejected response is plain: half of the pair would be templated twice
    with pytest.raises(InputError, match=r"row 0 \(line 1\): carries the paper template only in part"):
        load_example_set_of(write_rows(path, rows))


def test_mixed_rendered_and_plain_rows_are_an_error_naming_the_row(tmp_path, capsys):
    from premem.cli import main

    rendered = [{"prompt": f"Q{i}?\nAnswer:", "completion": f" So {i}.\n#### {i}\nDone."} for i in range(6)]
    plain = [{"prompt": f"Q{i}?", "completion": f"So {i}.\n#### {i}"} for i in range(6)]
    path = tmp_path / "pc.jsonl"
    with pytest.raises(InputError, match=r"pc.jsonl row 4 \(line 5\): does not carry the paper template, while row 0 "
                                         r"carries it.*set data.rendered=none"):
        load_example_set_of(write_rows(path, rendered[:4] + plain[4:]))
    with pytest.raises(InputError, match=r"row 2 \(line 3\): carries the paper template.*while row 0 does not"):
        load_example_set_of(write_rows(path, plain[:2] + rendered[2:]))
    half = {"prompt": "Q?\nAnswer:", "completion": "So 1.\n#### 1"}  # the prompt only
    with pytest.raises(InputError, match=r"pc.jsonl row 0 \(line 1\): carries the paper template only in part"):
        load_example_set_of(write_rows(path, [half] + rendered))
    with pytest.raises(InputError, match=r"pc.jsonl row 0 \(line 1\): data.rendered=paper, but does not carry"):
        load_example_set_of(write_rows(path, plain), rendered="paper")
    with pytest.raises(InputError, match=r"row 0 \(line 1\): field 'prompt' is empty once the paper template"):
        load_example_set_of(write_rows(path, [{"prompt": "\nAnswer:", "completion": " #### 1\nDone."}]))
    # data check says which it did
    assert main(["data", "check", "--data", str(write_rows(path, rendered))]) == 0
    assert "rows already carry the paper template" in capsys.readouterr().out
    assert main(["data", "check", "--data", str(write_rows(path, plain))]) == 0
    assert "rows are plain text" in capsys.readouterr().out
