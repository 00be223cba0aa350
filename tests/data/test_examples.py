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
