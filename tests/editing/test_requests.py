"""Edit request parsing: bad requests are refused with the file and line named."""

import json

import pytest

from mmadapt.editing.requests import parse_request, parse_requests, read_requests
from mmadapt.errors import DataError

GOOD = {"prompt": "{} is located in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris",
        "paraphrase_prompts": ["Where is the Eiffel Tower? It is in"],
        "neighborhood_prompts": ["The Louvre is located in", {"prompt": "Big Ben is in", "target": "London"}]}
LOUVRE = {**GOOD, "subject": "Louvre", "target_new": "Oslo", "paraphrase_prompts": ["Where is the Louvre? In"]}


def write(tmp_path, records):
    path = tmp_path / "edits.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_reads_requests_with_their_lines(tmp_path):
    requests = read_requests(write(tmp_path, [GOOD, LOUVRE]))
    assert [r.where.rsplit(":", 1)[1] for r in requests] == ["1", "2"]
    first = requests[0]
    assert first.text == "Eiffel Tower is located in"
    assert first.neighborhood == [("The Louvre is located in", None), ("Big Ben is in", "London")]


def test_counterfact_records_are_accepted():
    record = {"case_id": 0, "requested_rewrite": {"prompt": "{} is located in", "subject": "Eiffel Tower",
                                                  "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
              "paraphrase_prompts": [], "neighborhood_prompts": ["The Louvre is located in"], "attribute_prompts": []}
    request = parse_request(record, "cf[0]")
    assert (request.target_new, request.target_true) == ("Rome", "Paris")


@pytest.mark.parametrize("change, needle", [
    ({"prompt": "Eiffel Tower is located in"}, "write it as '{} is located in'"),
    ({"prompt": "The tower is located in"}, "does not occur"),
    ({"prompt": "{} and {} are in"}, "exactly once"),
    ({"target_new": "  "}, "'target_new' must be a non-empty string"),
    ({"subject": ""}, "'subject' must be a non-empty string"),
    ({"paraphrase_prompts": ["It stands in"]}, "paraphrase_prompts[0] 'It stands in' does not contain the subject"),
    ({"target_true": "Rome"}, "nothing to edit"),
    ({"colour": "red"}, "unknown key"),
])
def test_bad_request_names_the_line(tmp_path, change, needle):
    path = write(tmp_path, [GOOD, {**GOOD, **change}])
    with pytest.raises(DataError) as err:
        read_requests(path)
    assert f"{path}:2:" in str(err.value)
    assert needle in str(err.value)


def test_same_subject_with_two_targets_names_both_lines(tmp_path):
    path = write(tmp_path, [GOOD, LOUVRE, {**GOOD, "target_new": "Lima"}])
    with pytest.raises(DataError) as err:
        read_requests(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3:") and f"{path}:1" in message and "'Rome'" in message and "'Lima'" in message


def test_same_subject_same_target_twice_is_fine():
    assert len(parse_requests([GOOD, {**GOOD, "prompt": "{} stands in"}])) == 2


def test_invalid_json_and_empty_file(tmp_path):
    path = write(tmp_path, [GOOD, "{not json"])
    with pytest.raises(DataError, match=r"edits.jsonl:2: invalid JSON"):
        read_requests(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no edit requests"):
        read_requests(empty)
