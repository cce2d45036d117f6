"""A short run of the demo path on the shipped bundled default."""

import json

import pytest
from typer.testing import CliRunner

from recursivemas.bundled import bundled_config, links_path
from recursivemas.cli import app

shipped = links_path("sequential").is_file() and (bundled_config("sequential").parent.parent / "zoo_models" / "llama-gqa").is_dir()


@pytest.mark.skipif(not shipped, reason="the bundled zoo and links are not in this checkout")
def test_demo_short_run_table_and_latent_talkers(tmp_path):
    out = CliRunner().invoke(
        app, ["demo", "--limit", "3", "--rounds", "1,2", "--modes", "single,text,latent", "--out", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    groups = {(g["mode"], g["rounds"]) for g in summary["groups"]}
    arms = {("single", 1), ("text", 1), ("text", 2), ("latent", 1), ("latent", 2)}
    probes = {("latent/shuffle", 1), ("latent/shuffle", 2), ("latent/zero", 1), ("latent/zero", 2), ("text/shuffle", 2), ("text/gold", 1)}
    assert groups == arms | probes
    # the first table puts every latent accuracy beside its channel test
    head = out.output.split("Every configuration")[0]
    assert "Accuracy beside its channel test" in head and "channel gain" in head and "Ceiling" in head
    for column in ("accuracy", "generated_tokens"):
        assert all(column in g for g in summary["groups"]), summary["groups"][0].keys()
    assert "speed-up" in out.output and "token" in out.output
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 11
    for rec in records:
        if rec["mode"] == "latent":
            talkers = [(s["agent"], s["round"]) for s in rec["usage"]["steps"] if s["generated_tokens"]]
            assert talkers == [("solver", rec["rounds"])]
    assert (tmp_path / "accuracy_by_rounds.png").is_file()


def test_bundled_systems_fit_the_budget():
    root = bundled_config("sequential").parent.parent
    # the zoo systems; the real system's links are budgeted on their own (tests/test_zoo.py)
    files = [p for p in (root / "zoo_models").rglob("*") if p.is_file()] + [p for p in (root / "configs").glob("*") if not p.name.startswith("real.")]
    assert sum(p.stat().st_size for p in files) <= 16_000_000
