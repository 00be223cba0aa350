"""load_examples: every format from every file type, the real datasets, and every bad input."""

import json
import random
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from premem.config import load_config
from premem.data.examples import DataConfig, Example, dataset_fingerprint, detect_format, load_examples
from premem.errors import InputError
from tests.conftest import shared, shared_beside_repo

REPO = Path(__file__).resolve().parents[2]

# Two rows per format, all-string values so that every file type (CSV included) can hold them,
# and the examples they must become.
CASES = {
    "gsm8k": (
        [{"question": "Q0?", "answer": "2 + 1 = 3.\n#### 3"}, {"question": "Q1?", "answer": "Ten.\n#### 10"}],
        [Example(0, "Q0?", "2 + 1 = 3.\n#### 3", "3"), Example(1, "Q1?", "Ten.\n#### 10", "10")],
    ),
    "math": (
        # answer column wins when non-empty; an empty one falls back to the last \boxed{}
        [
            {"problem": "P0", "solution": "Half: $\\boxed{\\frac12}$.", "answer": "\\frac{1}{2}"},
            {"problem": "P1", "solution": "First \\boxed{2}, then \\boxed{7}.", "answer": ""},
        ],
        [
            Example(0, "P0", "Half: $\\boxed{\\frac12}$.", "\\frac{1}{2}"),
            Example(1, "P1", "First \\boxed{2}, then \\boxed{7}.", "7"),
        ],
    ),
    "prompt_completion": (
        [{"prompt": "P0", "completion": "So 4.\n#### 4"}, {"prompt": "P1", "completion": "So 5.\n#### 5"}],
        [Example(0, "P0", "So 4.\n#### 4", "4"), Example(1, "P1", "So 5.\n#### 5", "5")],
    ),
    "preference": (
        [
            {"prompt": "P0", "chosen": "Good.\n#### 1", "rejected": "Bad.\n#### 2"},
            {"prompt": "P1", "chosen": "Good.\n#### 3", "rejected": "Bad.\n#### 4", "answer": "3"},
        ],
        [
            Example(0, "P0", "Good.\n#### 1", "1", "Bad.\n#### 2"),
            Example(1, "P1", "Good.\n#### 3", "3", "Bad.\n#### 4"),
        ],
    ),
    "messages": (
        [
            {"messages": [{"role": "user", "content": "U0"}, {"role": "assistant", "content": "A0 #### 6"}]},
            {"messages": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1 #### 7"}]},
        ],
        [Example(0, "U0", "A0 #### 6", "6"), Example(1, "U1", "A1 #### 7", "7")],
    ),
}
FILE_KINDS = ["jsonl", "parquet", "csv", "hf", "hf_split"]


def write(kind, rows, tmp_path):
    """Save rows as one file type; return the DataConfig fields that read them back."""
    if kind == "jsonl":
        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "parquet":
        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind == "csv":
        path = tmp_path / "data.csv"
        pd.DataFrame(rows).fillna("").to_csv(path, index=False)
    elif kind == "hf":
        path = tmp_path / "ds"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:  # a DatasetDict: the rows are the "test" split, next to a train split that must not be read
        path = tmp_path / "dd"
        decoy = datasets.Dataset.from_list(rows[:1])
        datasets.DatasetDict({"train": decoy, "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
        return {"path": str(path), "split": "test"}
    return {"path": str(path)}


def jsonl(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# A CSV cell cannot hold a list of messages, so that one pair is left out.
@pytest.mark.parametrize("fmt,kind", [(f, k) for f in CASES for k in FILE_KINDS if (f, k) != ("messages", "csv")])
def test_every_format_from_every_file_type(tmp_path, fmt, kind):
    rows, expected = CASES[fmt]
    where = write(kind, rows, tmp_path)
    assert load_examples(DataConfig(format=fmt, **where)) == expected
    assert load_examples(DataConfig(**where)) == expected  # auto detection picks the same format


def test_auto_detection_order():
    assert detect_format(["prompt", "chosen", "rejected", "completion"]) == "preference"
    assert detect_format(["prompt", "completion", "problem", "solution"]) == "prompt_completion"
    assert detect_format(["problem", "solution", "question", "answer"]) == "math"
    assert detect_format(["question", "answer", "messages"]) == "gsm8k"  # a chat copy next to gsm8k columns
    assert detect_format(["messages", "prompt"]) == "messages"
    assert detect_format(["query", "response"], {"question": "query", "solution": "response"}) == "prompt_completion"
    assert detect_format(["text"]) is None


def test_auto_detection_failure_lists_the_columns(tmp_path):
    path = jsonl(tmp_path, [{"text": "a", "label": 1}])
    with pytest.raises(InputError, match=r"train.jsonl: cannot tell the data format from its columns \(text, label\)"):
        load_examples(DataConfig(path=path))


def test_trl_conversational_prompt_completion(tmp_path):
    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}],
            "completion": [{"role": "assistant", "content": "It is 8.\n#### 8"}],
        }
    ]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_examples(DataConfig(path=str(path))) == [Example(0, "Q?", "It is 8.\n#### 8", "8")]


def test_trl_conversational_preference(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": "Q?"}],
            "chosen": [{"role": "assistant", "content": "Yes #### 1"}],
            "rejected": [{"role": "assistant", "content": "No #### 2"}],
        }
    ]
    assert load_examples(DataConfig(path=jsonl(tmp_path, rows))) == [Example(0, "Q?", "Yes #### 1", "1", "No #### 2")]


def test_multi_turn_chat_keeps_the_last_exchange(tmp_path):
    chat = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first reply #### 1"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second reply #### 2"},
    ]
    # a multi-turn prompt (ends with a user turn) gives its last user turn
    prompt_rows = [{"prompt": chat[:4], "completion": "reply #### 3"}]
    assert load_examples(DataConfig(path=jsonl(tmp_path, [{"messages": chat}], "m.jsonl"))) == [
        Example(0, "second question", "second reply #### 2", "2")
    ]
    assert load_examples(DataConfig(path=jsonl(tmp_path, prompt_rows, "p.jsonl")))[0].question == "second question"


def test_answer_extracted_leniently_from_free_form_completions(tmp_path):
    rows = [{"prompt": "Q", "completion": "Adding up, the total is 42."}]
    [example] = load_examples(DataConfig(path=jsonl(tmp_path, rows)))
    assert example.answer == "42"


def test_field_overrides_and_ids(tmp_path):
    rows = [
        {"query": "Q0", "response": "R0", "final": "5", "idx": 7},
        {"query": "Q1", "response": "R1", "final": 6, "idx": "9"},  # int-like string id, numeric answer
    ]
    fields = {"question": "query", "solution": "response", "answer": "final", "id": "idx"}
    assert load_examples(DataConfig(path=jsonl(tmp_path, rows), fields=fields)) == [
        Example(7, "Q0", "R0", "5"),
        Example(9, "Q1", "R1", "6"),
    ]


def test_csv_ids_are_parsed_from_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,question,answer\n3,Q0,#### 1\n1,Q1,#### 2\n")
    examples = load_examples(DataConfig(path=str(path), fields={"id": "id"}))
    assert [e.example_id for e in examples] == [3, 1]


def test_limit_keeps_the_first_rows(tmp_path):
    rows, expected = CASES["gsm8k"]
    assert load_examples(DataConfig(path=jsonl(tmp_path, rows), limit=1)) == expected[:1]


def test_real_gsm8k_train():
    examples = load_examples(DataConfig(path=str(shared("gsm8k", "train.jsonl")), format="gsm8k"))
    assert len(examples) == 7473
    assert [e.example_id for e in examples] == list(range(7473))
    assert examples[0].answer == "72"
    assert examples[0].question.startswith("Natalia sold clips")


def test_shipped_configs_load_the_real_data(monkeypatch):
    monkeypatch.chdir(REPO)  # config paths are relative to the repository root
    shared_beside_repo()
    gsm8k = load_examples(load_config(DataConfig, "configs/data/gsm8k.yaml", ["limit=3"]))
    assert [e.answer for e in gsm8k] == ["72", "10", "5"]
    math = load_examples(load_config(DataConfig, "configs/data/math.yaml"))
    assert len(math) == 500
    first = json.loads(shared("math500", "test.jsonl").read_text().splitlines()[0])
    assert math[0] == Example(0, first["problem"], first["solution"], first["answer"])


def test_fingerprint_is_order_free_and_sees_every_field():
    _, examples = CASES["preference"]
    base = dataset_fingerprint(examples)
    assert len(base) == 64 and base == dataset_fingerprint(list(reversed(examples)))
    a = examples[0]
    for changed in (
        Example(5, a.question, a.solution, a.answer, a.rejected),
        Example(a.example_id, a.question + " ", a.solution, a.answer, a.rejected),
        Example(a.example_id, a.question, a.solution + ".", a.answer, a.rejected),
        Example(a.example_id, a.question, a.solution, "2", a.rejected),
        Example(a.example_id, a.question, a.solution, a.answer, None),
    ):
        assert dataset_fingerprint([changed, examples[1]]) != base
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    assert dataset_fingerprint(shuffled) == base


# --- bad input: each error names the file and the row/line/field -------------------------------


def expect_error(cfg, *fragments):
    with pytest.raises(InputError) as e:
        load_examples(cfg)
    for fragment in fragments:
        assert fragment in str(e.value), f"{fragment!r} not in {str(e.value)!r}"
    return str(e.value)


def test_gsm8k_row_without_final_answer(tmp_path):
    rows = [{"question": "Q0", "answer": "#### 1"}, {"question": "Q1", "answer": "no marker here"}]
    path = jsonl(tmp_path, rows)
    message = expect_error(DataConfig(path=path, format="gsm8k"))
    assert message == f"{path} row 1 (line 2): no final answer (no '####' in field 'answer')"


def test_math_row_without_boxed_answer(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "P", "solution": "no box", "answer": ""}]), path)
    message = expect_error(DataConfig(path=str(path)))
    assert message == f"{path} row 0: no final answer (field 'answer' empty and no \\boxed{{}} in field 'solution')"


def test_free_form_row_without_any_answer(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "Q", "completion": "no numbers at all"}])
    expect_error(DataConfig(path=path), f"{path} row 0 (line 1): no final answer", "'completion'")


@pytest.mark.parametrize(
    "row,fragment",
    [
        ({"answer": "#### 1"}, "field 'question' is missing or empty"),
        ({"question": "  ", "answer": "#### 1"}, "field 'question' is missing or empty"),
        ({"question": "Q", "answer": ""}, "field 'answer' is missing or empty"),
        ({"question": 5, "answer": "#### 1"}, "field 'question' is int, expected text"),
    ],
)
def test_missing_or_empty_text(tmp_path, row, fragment):
    rows = [{"question": "ok", "answer": "#### 1"}, row]
    expect_error(DataConfig(path=jsonl(tmp_path, rows), format="gsm8k"), "train.jsonl row 1 (line 2): " + fragment)


@pytest.mark.parametrize(
    "messages,fragment",
    [
        ([{"role": "user", "content": "Q"}], "field 'messages' has no assistant message"),
        ([{"role": "assistant", "content": "A #### 1"}], "field 'messages' has no user message"),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}],
            "field 'messages' has an empty assistant message",
        ),
        (["just", "strings"], "field 'messages' is a list but not of chat messages"),
    ],
)
def test_bad_conversations(tmp_path, messages, fragment):
    cfg = DataConfig(path=jsonl(tmp_path, [{"messages": messages}]), format="messages")
    expect_error(cfg, "train.jsonl row 0 (line 1): " + fragment)


def test_unknown_fields_key(tmp_path):
    path = jsonl(tmp_path, CASES["gsm8k"][0])
    message = expect_error(DataConfig(path=path, fields={"prompt": "question"}))
    assert message == "data.fields: unknown field 'prompt'; known: id, question, solution, answer, rejected"


def test_field_mapped_to_a_missing_column(tmp_path):
    path = jsonl(tmp_path, CASES["gsm8k"][0])
    expect_error(
        DataConfig(path=path, format="gsm8k", fields={"question": "query"}),
        path,
        "fields.question names column 'query'",
        "columns: question, answer",
    )


def test_explicit_format_needs_its_columns(tmp_path):
    path = jsonl(tmp_path, CASES["gsm8k"][0])
    expect_error(DataConfig(path=path, format="math"), path, "needs column 'problem'", "columns: question, answer")


def test_duplicate_ids_name_both_rows(tmp_path):
    rows = [{"question": f"Q{i}", "answer": "#### 1", "idx": i % 2} for i in range(3)]
    message = expect_error(DataConfig(path=jsonl(tmp_path, rows), fields={"id": "idx"}))
    assert message.endswith("train.jsonl rows 0 and 2 (lines 1 and 3): duplicate id 0 in field 'idx'")


@pytest.mark.parametrize("bad", ["abc", 1.5, None, True])
def test_non_integer_id(tmp_path, bad):
    rows = [{"question": "Q", "answer": "#### 1", "idx": 0}, {"question": "Q", "answer": "#### 1", "idx": bad}]
    cfg = DataConfig(path=jsonl(tmp_path, rows), fields={"id": "idx"})
    expect_error(cfg, "train.jsonl row 1 (line 2): id", "in field 'idx' is not an integer")


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"format": "alpaca"}, "unknown format 'alpaca'"),
        ({"grader": "chess"}, "data.grader: unknown grader 'chess'"),
        ({"limit": 0}, "data.limit: expected a positive integer"),
        ({"path": ""}, "no path given"),
    ],
)
def test_bad_config_values(tmp_path, overrides, fragment):
    cfg = DataConfig(path=jsonl(tmp_path, CASES["gsm8k"][0]))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    expect_error(cfg, fragment)


# -- rows that already carry the paper template ------------------------------------------------


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
    from premem.sampling.job import encode

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


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load_example_set_of(path, **kw):
    from premem.data.examples import load_example_set

    return load_example_set(DataConfig(path=str(path), **kw))


def test_canonical_rows_read_back_with_their_ids_grader_and_rejected_response(tmp_path):
    """What `premem data check --out` writes: example_id, question, solution, answer, rejected."""
    rows = [{"example_id": 7, "question": "Q?", "solution": "So $\\boxed{\\frac12}$.", "answer": "\\frac{1}{2}",
             "rejected": None},
            {"example_id": 3, "question": "R?", "solution": "Thus \\boxed{2}.", "answer": "2",
             "rejected": "No \\boxed{3}."}]
    data = load_example_set_of(write_rows(tmp_path / "canonical.jsonl", rows))
    assert (data.format, data.grader) == ("canonical", "math")  # the solutions carry \boxed{}, none '####'
    assert data.examples == [Example(7, "Q?", rows[0]["solution"], "\\frac{1}{2}"),
                             Example(3, "R?", rows[1]["solution"], "2", "No \\boxed{3}.")]
