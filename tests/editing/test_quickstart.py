"""The edit quickstart: its generated requests, and (slow) the whole run meeting the issue's targets."""

import json

import pytest

from mmadapt.editing.requests import parse_requests
from mmadapt.quickstart import edit as quick


def test_world_and_requests():
    world = quick.make_world(0, n_subjects=30)
    assert len(world) == 30 and len({s.split()[1] for s in world}) == 30  # family names identify people
    lines = quick.corpus(world)
    assert len(lines) == 30 * 2 * 4 and lines[0].endswith(" .")
    subjects = list(world)
    batch, rest = subjects[:10], subjects[10:]
    requests = parse_requests(quick.edit_records(world, batch, rest, seed=0))
    for request in requests:
        assert request.target_new != request.target_true == world[request.subject]["city"]
        assert len(request.paraphrase_prompts) == 3
        assert all(p.split(" of ", 1)[1] in rest for p, _ in request.neighborhood)  # neighbours are never in the batch


@pytest.mark.slow
def test_quickstart_meets_its_targets(tmp_path):
    metrics = quick.run(tmp_path)
    assert metrics["efficacy"] >= 0.95 and metrics["paraphrase"] >= 0.7 and metrics["neighborhood"] >= 0.85
    assert metrics["revert_exact"] == 1.0 and metrics["base_knowledge"] >= 0.99
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "trace.png").is_file() and (tmp_path / "edited-memit" / "manifest.json").is_file()
