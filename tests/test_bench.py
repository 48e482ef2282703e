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
