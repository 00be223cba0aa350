"""read_rows / read_table: every file type, and every way a file can be unreadable."""

import json

import datasets
import pandas as pd
import pytest

from premem.data.io import read_rows, read_table
from premem.errors import InputError

ROWS = [
    {"question": "How many apples?", "answer": "3 apples.\n#### 3", "idx": 10},
    {"question": "How many pears?", "answer": "5 pears.\n#### 5", "idx": 11},
]


def write_jsonl(path, rows, blank_lines=False):
    lines = [json.dumps(r) for r in rows]
    text = ("\n\n" if blank_lines else "\n").join(lines) + "\n"
    path.write_text(text)
    return path


def test_jsonl_rows_and_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS, blank_lines=True)
    table = read_table(path)
    assert table.rows == ROWS
    assert table.columns == ["question", "answer", "idx"]
    assert table.line_numbers == [1, 3]  # the blank line between rows is skipped, not counted as a row
    assert table.where(1) == f"{path} row 1 (line 3)"


def test_json_lines_and_json_array(tmp_path):
    lines = write_jsonl(tmp_path / "a.json", ROWS)
    array = tmp_path / "b.json"
    array.write_text(json.dumps(ROWS, indent=2))
    assert read_rows(lines) == ROWS
    assert read_rows(array) == ROWS


def test_jsonl_columns_are_the_union_over_rows(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, {"a": 2, "b": 3}])
    assert read_table(path).columns == ["a", "b"]


def test_parquet_gives_plain_python_values(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": text}], "n": n} for n, text in [(1, "hi"), (2, "yo")]]
    path = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    table = read_table(path)
    assert table.rows == rows
    assert isinstance(table.rows[0]["prompt"], list) and isinstance(table.rows[0]["n"], int)
    assert table.columns == ["prompt", "n"] and table.line_numbers is None


def test_csv_reads_everything_as_text(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("question,answer,idx\nWhat?,007,1\nWho?,NA,2\n")
    assert read_rows(path) == [
        {"question": "What?", "answer": "007", "idx": "1"},
        {"question": "Who?", "answer": "NA", "idx": "2"},
    ]


def test_hf_dataset_directory(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert read_rows(tmp_path / "ds") == ROWS


def test_hf_dataset_dict_picks_train_by_default_or_the_named_split(tmp_path):
    other = [{"question": "Q", "answer": "#### 1", "idx": 0}]
    splits = {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(other)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    assert read_rows(tmp_path / "dd") == ROWS
    assert read_rows(tmp_path / "dd", split="test") == other
    with pytest.raises(InputError, match=r"dd: no split 'validation'; splits: train, test"):
        read_rows(tmp_path / "dd", split="validation")


def test_hf_dataset_dict_without_train_split_lists_splits(tmp_path):
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"dd: no 'train' split; choose one with split= \(test\)"):
        read_rows(tmp_path / "dd")


def test_split_on_a_single_dataset_or_file_is_an_error(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(InputError, match="single Dataset"):
        read_rows(tmp_path / "ds", split="test")
    with pytest.raises(InputError, match="x.jsonl: split 'test' given"):
        read_rows(write_jsonl(tmp_path / "x.jsonl", ROWS), split="test")


def test_malformed_jsonl_line_is_reported_by_number(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"question": "a" "answer": "b"}\n')
    with pytest.raises(InputError) as e:
        read_rows(path)
    assert str(e.value) == f"{path} line 3: not valid JSON (Expecting ',' delimiter)"


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(InputError, match=r"train.jsonl line 2: expected a JSON object, got an array"):
        read_rows(path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError) as e:
        read_rows(tmp_path / "x.jsonl")
    assert str(e.value) == f"{tmp_path / 'x.jsonl'}: no such file or directory"


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("hello\n")
    with pytest.raises(InputError, match=r"train.txt: unknown file type '.txt'; expected .jsonl"):
        read_rows(path)


@pytest.mark.parametrize(
    "name,content", [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.csv", ""), ("e.csv", "a,b\n"), ("e.json", "[]")]
)
def test_empty_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=r"e\.(jsonl|csv|json): no rows"):
        read_rows(path)


def test_empty_parquet_and_dataset(tmp_path):
    pd.DataFrame({"question": pd.Series([], dtype=str)}).to_parquet(tmp_path / "e.parquet")
    datasets.Dataset.from_dict({"question": []}).save_to_disk(str(tmp_path / "eds"))
    for path in (tmp_path / "e.parquet", tmp_path / "eds"):
        with pytest.raises(InputError, match="no rows"):
            read_rows(path)


def test_corrupt_parquet_and_plain_directory(tmp_path):
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match=r"bad.parquet: not a readable Parquet file"):
        read_rows(tmp_path / "bad.parquet")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"plain: a directory, but not a Hugging Face dataset"):
        read_rows(tmp_path / "plain")


def test_jsonl_that_is_not_utf8(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"a": 1}\n\xff\xfe\x00')
    with pytest.raises(InputError, match=r"bin.jsonl: not UTF-8 text \(byte 9\)"):
        read_rows(path)


# -- JSON Lines: lines end at "\n" only; nesting too deep is one line -------------------------

# Every character str.splitlines() breaks at besides "\n" and "\r". The first three may stand raw
# in a JSON string (json.dumps(ensure_ascii=False) writes them so); the rest are escaped by it.
SEPARATORS = "\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e"


def test_jsonl_strings_may_hold_every_line_separator_but_newline(tmp_path):
    rows = [{"question": f"Before{c}after?", "answer": f"1{c}2\n#### 2"} for c in SEPARATORS]
    path = tmp_path / "train.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert "\u2028" in text and "\x85" in text  # raw in the file, as premem's own --out files have them
    path.write_text(text, encoding="utf-8")
    table = read_table(path)
    assert table.rows == rows and table.line_numbers == list(range(1, len(rows) + 1))
    path.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))  # CRLF line ends read the same
    assert read_rows(path) == rows


def test_a_raw_control_character_is_invalid_json_on_its_own_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "a\x0cb", "answer": "#### 1"}\n')
    with pytest.raises(InputError, match=r"train.jsonl line 2: not valid JSON \(Invalid control character"):
        read_rows(path)


def test_deeply_nested_json_is_one_line_naming_file_and_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    lines = tmp_path / "train.jsonl"
    lines.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "q", "answer": "#### 1", "x": ' + deep + "}\n")
    with pytest.raises(InputError, match=r"^\S*train.jsonl line 2: JSON nested too deeply") as error:
        read_rows(lines)
    assert "\n" not in str(error.value)
    array = tmp_path / "train.json"
    array.write_text("[" + json.dumps(ROWS[0]) + ", " + deep + "]")
    with pytest.raises(InputError, match=r"train.json: JSON nested too deeply"):
        read_rows(array)


def test_premem_reads_its_own_data_check_output_back(tmp_path, capsys):
    from premem.cli import main

    rows = [{"question": f"Q{c}?", "answer": f"A{c}\n#### {i}"} for i, c in enumerate(SEPARATORS)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "canonical.jsonl"
    assert main(["data", "check", "--data", str(data), "--out", str(out), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert "\u2028" in out.read_text(encoding="utf-8")  # written raw (ensure_ascii=False)
    assert main(["data", "check", "--data", str(out), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["format"] == "canonical" and after["n_examples"] == len(rows)
    assert after["fingerprint"] == before["fingerprint"]  # the same examples, ids included


def test_curate_export_splits_jsonl_rows_as_they_are_read(tmp_path):
    """The curated subset is the selected rows' own lines: a U+2028 inside row 0 must not shift them."""
    from premem.curate.export import write_subset_like
    from premem.data import DataConfig

    rows = [{"question": f"Q{i}\u2028\u0085?", "answer": f"#### {i}"} for i in range(3)]
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\r\n" for r in rows]
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"".join(lines))
    dest = tmp_path / "subset.jsonl"
    write_subset_like(DataConfig(path=str(data)), [2, 0], dest)
    assert dest.read_bytes() == lines[2] + lines[0]
