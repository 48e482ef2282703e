"""Specs on real parts: every shipped spec loads; bad keys and values name their key path."""
from pathlib import Path

import pytest
import yaml

from harness.config import SpecError, load_spec, parse_override, resolved, spec_hash

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "runs" / "smoke.yaml"
# runs/accelerate/ holds Accelerate launcher configs (`accelerate launch --config_file`), not
# experiment specs, and runs/out/ holds outputs (specs written by benchmarks among them); every
# other YAML under runs/ must load as a spec.
NOT_SPECS = (ROOT / "runs" / "accelerate", ROOT / "runs" / "out")
SPECS = sorted(p for p in (ROOT / "runs").rglob("*.yaml")
               if not any(d in p.parents for d in NOT_SPECS))


def smoke_data() -> dict:
    return yaml.safe_load(SMOKE.read_text(encoding="utf-8"))


def write(tmp_path: Path, data: dict, name: str = "spec.yaml", sort_keys: bool = False) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=sort_keys), encoding="utf-8")
    return path


def error_of(path: Path, overrides=None) -> str:
    with pytest.raises(SpecError) as exc:
        load_spec(path, overrides)
    return str(exc.value)


def test_runs_folder_has_specs():
    assert SMOKE in SPECS and len(SPECS) >= 2


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(ROOT)) for p in SPECS])
def test_shipped_spec_loads(path):
    if "study" in yaml.safe_load(path.read_text(encoding="utf-8")):
        from harness.experiments.study import load_study
        settings, spec = load_study(path)
        assert len(settings.seeds) >= 3      # the study issue asks for at least 3 seeds
    else:
        spec = load_spec(path)
    assert spec.name
    assert len(spec_hash(spec)) == 12


ACCELERATE_CONFIGS = sorted(NOT_SPECS[0].glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS,
                         ids=[str(p.relative_to(ROOT)) for p in ACCELERATE_CONFIGS])
def test_shipped_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    if cfg.distributed_type == "FSDP":
        assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"


# --- unknown keys -------------------------------------------------------------------------

def test_typo_key_names_path_and_suggestion(tmp_path):
    data = smoke_data()
    data["train"]["lrr"] = data["train"].pop("lr")
    msg = error_of(write(tmp_path, data))
    assert "train.lrr" in msg
    assert "did you mean 'train.lr'" in msg
    assert str(tmp_path / "spec.yaml") in msg


def test_typo_key_by_override_names_path():
    msg = error_of(SMOKE, ["train.lrr=1"])
    assert "train.lrr" in msg and "'train.lr'" in msg


def test_unknown_key_in_methods_list(tmp_path):
    data = smoke_data()
    data["methods"][0]["nme"] = "oops"
    msg = error_of(write(tmp_path, data))
    assert "methods.0.nme" in msg
    assert "'methods.0.name'" in msg


def test_unknown_key_in_benchmark_list(tmp_path):
    data = smoke_data()
    data["eval"]["benchmarks"][1]["taskz"] = ["x"]
    msg = error_of(write(tmp_path, data))
    assert "eval.benchmarks.1.taskz" in msg and "'eval.benchmarks.1.tasks'" in msg


def test_unknown_top_level_section_lists_known(tmp_path):
    data = smoke_data()
    data["trian"] = {"lr": 1.0}
    msg = error_of(write(tmp_path, data))
    assert "trian" in msg and "'train'" in msg


def test_missing_required_key(tmp_path):
    data = smoke_data()
    del data["stages"]["target_length"]
    msg = error_of(write(tmp_path, data))
    assert "stages.target_length" in msg and "missing" in msg


# --- out-of-range values ------------------------------------------------------------------

@pytest.mark.parametrize("section,key,value,path", [
    ("screening", "epsilon", 1.5, "screening.epsilon"),
    ("eval", "lengths", [1024, 512, 2048], "eval.lengths"),
    ("eval", "lengths", [-512, 1024], "eval.lengths"),
    ("eval", "lengths", [], "eval.lengths"),
    ("train", "warmup_ratio", 1.0, "train.warmup_ratio"),
    ("retrieval", "index", "annoy", "retrieval.index"),
])
def test_out_of_range_names_key_path(tmp_path, section, key, value, path):
    data = smoke_data()
    data[section][key] = value
    msg = error_of(write(tmp_path, data))
    assert f"  {path}: " in msg, msg


def test_negative_eval_length_override():
    msg = error_of(SMOKE, ["eval.lengths=[-1, 2048]"])
    assert "eval.lengths" in msg and "positive" in msg


def test_cross_field_checks(tmp_path):
    data = smoke_data()
    data["screening"]["epsilon_neg"] = 0.5          # not below epsilon = 0.4
    assert "epsilon_neg" in error_of(write(tmp_path, data))
    data = smoke_data()
    data["methods"].append({"name": "standard"})    # duplicate label
    assert "duplicate" in error_of(write(tmp_path, data, "dup.yaml"))


# --- overrides ----------------------------------------------------------------------------

def test_overrides_change_values():
    base = load_spec(SMOKE)
    spec = load_spec(SMOKE, ["train.lr=2e-5", "screening.epsilon=0.5", "seed=7",
                             "methods.0.params.x=1", "methods.1.label=nx",
                             "eval.lengths=[256, 512]", "train.gradient_checkpointing=true",
                             "methods.2.params.name=foo", "model.dtype=bfloat16"])
    assert base.train.lr == pytest.approx(1e-4)
    assert spec.train.lr == pytest.approx(2e-5)
    assert spec.screening.epsilon == 0.5
    assert spec.seed == 7
    assert spec.methods[0].params == {"x": 1} and isinstance(spec.methods[0].params["x"], int)
    assert spec.methods[1].label == "nx"
    assert spec.eval.lengths == [256, 512]
    assert spec.train.gradient_checkpointing is True
    assert spec.methods[2].params == {"name": "foo"}
    assert spec.model.dtype == "bfloat16"
    # the rest is untouched
    assert spec.stages == base.stages and spec.methods[3] == base.methods[3]


def test_override_values_are_yaml_typed():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=1.5") == ("a.b", 1.5)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b={k: v}") == ("a.b", {"k": "v"})
    assert parse_override("a.b='1'") == ("a.b", "1")
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    # exponent without a dot is a float (YAML 1.2), not the string '1e-3' of YAML 1.1
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_override("a.b=-2E+4") == ("a.b", -2e4)
    spec = load_spec(SMOKE, ["methods.0.params.eps=1e-3"])
    assert spec.methods[0].params["eps"] == pytest.approx(1e-3)


def test_exponent_floats_in_files(tmp_path):
    data = smoke_data()
    path = write(tmp_path, data)
    text = path.read_text().replace("lr: 0.0001", "lr: 1e-4")
    assert "lr: 1e-4" in text
    path.write_text(text, encoding="utf-8")
    assert spec_hash(load_spec(path)) == spec_hash(load_spec(SMOKE))


@pytest.mark.parametrize("override,needle", [
    ("train.lr.x=1", "train.lr"),                 # a value, not a section
    ("methods.9.name=x", "methods.9"),            # index out of range
    ("methods.first.name=x", "methods.first"),    # not an index
    ("methods.0=x", "methods.0"),                 # a list entry must be a mapping
    ("nosuch.x=1", "nosuch"),                     # unknown section
    ("train.lr", "train.lr"),                     # no '='
])
def test_bad_override_path(override, needle):
    msg = error_of(SMOKE, [override])
    assert needle in msg, msg


# --- hashing ------------------------------------------------------------------------------

def test_spec_hash_stable_and_sensitive():
    h1 = spec_hash(load_spec(SMOKE))
    h2 = spec_hash(load_spec(SMOKE))
    assert h1 == h2 and len(h1) == 12
    assert spec_hash(load_spec(SMOKE, ["train.lr=2e-3"])) != h1
    assert spec_hash(load_spec(SMOKE, ["methods.0.params.x=1"])) != h1
    # writing a default explicitly resolves to the same config
    assert spec_hash(load_spec(SMOKE, ["train.seed=0"])) == h1


def test_spec_hash_independent_of_key_order(tmp_path):
    data = smoke_data()

    def reverse(node):
        if isinstance(node, dict):
            return {k: reverse(node[k]) for k in reversed(list(node))}
        if isinstance(node, list):
            return [reverse(x) for x in node]
        return node

    a = write(tmp_path, data, "a.yaml")
    b = write(tmp_path, reverse(data), "b.yaml")
    assert a.read_text() != b.read_text()
    assert spec_hash(load_spec(a)) == spec_hash(load_spec(b)) == spec_hash(load_spec(SMOKE))
    assert resolved(load_spec(a)) == resolved(load_spec(b))


# --- files --------------------------------------------------------------------------------

def test_missing_file_names_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = error_of(missing)
    assert str(missing) in msg and "not found" in msg


def test_invalid_yaml_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: smoke\ntrain: {lr: 1\n  - nope\n", encoding="utf-8")
    msg = error_of(bad)
    assert str(bad) in msg and "YAML" in msg


def test_non_mapping_yaml_names_file(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n", encoding="utf-8")
    assert str(bad) in error_of(bad)


def test_a_method_screening_override_is_validated_like_the_spec_screening():
    from harness.config import Spec
    from harness.experiments.tune import _check

    data = yaml.safe_load(SMOKE.read_text())
    data["methods"] = [{"name": "entropylong"},
                       {"name": "policylong", "screening": {"signl": "nll"}}]
    with pytest.raises(ValueError, match=r"methods\.1\.screening \(policylong\): signl"):
        Spec.model_validate(data)
    data["methods"][1]["screening"] = {"epsilon": 2.0}
    with pytest.raises(ValueError, match=r"methods\.1\.screening \(policylong\): epsilon"):
        Spec.model_validate(data)
    data["methods"][1]["screening"] = {"signal": "nll"}
    spec = Spec.model_validate(data)
    with pytest.raises(SpecError, match=r"sets its own screening \['signal'\]"):
        _check(spec.model_copy(update={"tune": spec.tune.model_copy(
            update={"method": "policylong"})}))
    assert spec.for_method("policylong").screening.signal == "nll"
    assert spec.for_method("entropylong").screening.signal == "entropy"
    with pytest.raises(KeyError, match="nextlong"):
        spec.for_method("nextlong")
