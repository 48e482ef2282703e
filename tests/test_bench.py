"""``policylong bench``'s plumbing (the benchmarks themselves print numbers and are not timed
here): the smoke spec it runs on, and the command's options."""
from harness.config import Spec


def test_bench_runs_the_smoke_spec_in_its_own_folder(tmp_path):
    from harness.tools.bench import _smoke_data

    d = _smoke_data("bench-x", tmp_path)
    spec = Spec.model_validate(d)                 # the shipped smoke spec, valid
    assert spec.name == "bench-x" and spec.output_dir.startswith(str(tmp_path))
    assert str(tmp_path) in spec.tracking.uri
    assert {m.name for m in spec.methods} >= {"entropylong", "policylong"}


def test_bench_screening_overrides_parse():
    from harness.cli import _kv, build_parser

    assert _kv("prefix_cache_mb=0") == ("prefix_cache_mb", 0)
    assert _kv("early_stop=true") == ("early_stop", True)
    args = build_parser().parse_args(["bench", "overhead", "--stages", "4", "--keep", "d",
                                      "--screening", "prefix_cache_mb=0"])
    assert (args.stages, args.keep, args.screening) == (4, "d", ["prefix_cache_mb=0"])


def test_more_stages_grow_the_world():
    from harness.tools.bench import SMOKE_WORLD_TOKENS, _smoke_data, with_stages

    d = _smoke_data()
    assert with_stages(d, 2).get("sandbox") == d.get("sandbox")      # the smoke world fits 2
    four = with_stages(d, 4)
    assert four["stages"]["count"] == 4
    grown = four["sandbox"]["n_entities"] / 1300
    assert grown * SMOKE_WORLD_TOKENS >= 4 * d["stages"]["tokens_per_stage"]


def test_bench_overhead_on_another_spec(tmp_path):
    """``--spec``: the study file's world and recipe, its study block dropped, outputs in the
    bench's folder; a bad value in that spec fails before any work, naming the file and key."""
    import pytest
    import yaml

    from harness.cli import build_parser
    from harness.config import SpecError
    from harness.tools.bench import _spec_data

    d = _spec_data("runs/study/sandbox.yaml", "bench-x", tmp_path)
    spec = Spec.model_validate(d)
    assert "study" not in d and spec.output_dir.startswith(str(tmp_path))
    study = yaml.safe_load(open("runs/study/sandbox.yaml"))
    assert spec.sandbox.n_entities == study["sandbox"]["n_entities"] != 1300
    assert spec.stages.count == study["stages"]["count"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**study, "stages": {**study["stages"], "count": "x"}}))
    with pytest.raises(SpecError, match=r"(?s)bad\.yaml.*stages\.count"):
        _spec_data(str(bad), "bench-x", tmp_path)
    args = build_parser().parse_args(["bench", "overhead", "--spec", "runs/study/sandbox.yaml"])
    assert args.spec == "runs/study/sandbox.yaml"
